"""Pooling and hooks: pooled vectors equal pooling by hand on HF's output_hidden_states."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gwray.activations.capture import Pooler
from gwray.errors import GwrayInputError


def _batch(seed=0, b=3, t=5, d=4):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, t, d, generator=g)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    return h, right


def test_pooler_modes_right_and_left_padding():
    h, right = _batch()
    lengths = right.sum(1)
    left = torch.flip(right, dims=[1])
    h_left = torch.stack([torch.roll(h[i], int(5 - lengths[i]), dims=0) for i in range(3)])
    for mask, hh in ((right, h), (left, h_left)):
        real = [hh[i][mask[i].bool()] for i in range(3)]
        mean, sids = Pooler("mean")(hh, mask, [4, 5, 6])
        torch.testing.assert_close(mean, torch.stack([r.mean(0) for r in real]))
        assert sids.tolist() == [4, 5, 6] and sids.dtype == torch.int64
        torch.testing.assert_close(Pooler("last")(hh, mask, [0, 1, 2])[0], torch.stack([r[-1] for r in real]))
        torch.testing.assert_close(Pooler("first")(hh, mask, [0, 1, 2])[0], torch.stack([r[0] for r in real]))
    flat, _ = Pooler("flatten")(h, right, [0, 1, 2])
    assert flat.shape == (3, 20)
    torch.testing.assert_close(Pooler("mean")(h[:, 0], None, [0, 1, 2])[0], h[:, 0])  # (b, d): no pooling


def test_tokens_k_is_deterministic_per_sample_whatever_the_batching():
    h, right = _batch(b=3)
    pool = Pooler("tokens:4", seed=3)
    rows, sids = pool(h, right, [10, 11, 12])
    assert rows.shape == (12, 4) and sids.tolist() == [10] * 4 + [11] * 4 + [12] * 4
    one, _ = pool(h[1:2], right[1:2], [11])
    torch.testing.assert_close(one, rows[4:8])
    real_rows = {tuple(np.round(v, 6)) for v in h[0][:3].numpy()}  # sample 10 has 3 real tokens
    assert {tuple(np.round(v, 6)) for v in rows[:4].numpy()} <= real_rows
    other, _ = Pooler("tokens:4", seed=4)(h, right, [10, 11, 12])
    assert not torch.equal(other[4:8], rows[4:8])  # sample 11 has 5 tokens: another seed, another draw


def test_pooler_rejects_bad_mode():
    with pytest.raises(GwrayInputError, match="pooling 'median'"):
        Pooler("median")
