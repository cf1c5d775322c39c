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


# ---- hooks on real models -----------------------------------------------------------------------
from gwray.activations.capture import LayerCapture, select_layers  # noqa: E402
from gwray.config import ModelConfig  # noqa: E402
from gwray.models.loaders import load_model  # noqa: E402

TEXTS = ["The cat sat.", "A rather longer sentence about the weather in the hills today.",
         "Short one", "Gromov and Wasserstein walk into a bar, and the bartender says nothing at all."]


def _hand_pool(h, mask, mode):
    m = mask.float()
    if mode == "mean":
        return (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    pos = torch.arange(h.shape[1])
    idx = (m * (pos + 1)).argmax(1) if mode == "last" else m.argmax(1)
    return h[torch.arange(h.shape[0]), idx]


def _capture(loaded, select, mode, enc, runner=None, strict=True):
    specs = select_layers(loaded, select)
    with torch.no_grad(), LayerCapture(loaded.module, specs, Pooler(mode)) as cap:
        cap.batch(enc["attention_mask"], list(range(len(enc["input_ids"]))))
        (runner or loaded.runner)(**enc)
        return specs, cap.pop(strict=strict)


@pytest.fixture(scope="module")
def minilm():
    return load_model(ModelConfig(path="minilm"), device="cpu")


@pytest.mark.parametrize("mode", ["mean", "first", "last"])
def test_minilm_matches_output_hidden_states(minilm, mode):
    enc = minilm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = minilm.module(**enc, output_hidden_states=True).hidden_states
    specs, got = _capture(minilm, "blocks", mode, enc)
    assert len(specs) == 7 == len(ref) and specs[0].name == "embeddings"
    for spec, h in zip(specs, ref):
        rows, sids = got[spec.name]
        assert sids.tolist() == [0, 1, 2, 3]
        torch.testing.assert_close(rows, _hand_pool(h, enc["attention_mask"], mode), atol=1e-5, rtol=0)


def test_globs_all_and_unknown_layer(tiny_hf_model):
    loaded = load_model(ModelConfig(path=str(tiny_hf_model("gpt2", layers=3))), device="cpu")
    specs = select_layers(loaded, ["transformer.h.*.mlp", "transformer.ln_f"])
    assert [s.name for s in specs] == [f"transformer.h.{i}.mlp" for i in range(3)] + ["transformer.ln_f"]
    enc = loaded.tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    _, got = _capture(loaded, ["transformer.h.*.mlp"], "tokens:3", enc, runner=loaded.module)
    assert got["transformer.h.2.mlp"][0].shape == (6, 32)
    all_names = [s.name for s in select_layers(loaded, "all")]
    assert "lm_head" in all_names and "transformer.h.1.attn" in all_names
    with pytest.raises(GwrayInputError) as exc:
        select_layers(loaded, ["transformer.h.9"])
    msg = str(exc.value)
    assert "\n" not in msg and "'transformer.h.9'" in msg and "close matches: transformer.h." in msg


def test_all_modules_of_minilm_pool(minilm):
    enc = minilm.tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    specs, got = _capture(minilm, "all", "mean", enc, runner=minilm.module, strict=False)
    assert len(got) > 50 and "encoder" in got and "pooler" in got  # ModelOutput, (b, d) alike
    assert "encoder.layer" not in [s.name for s in specs]  # containers are never called
    uncalled = {type(dict(minilm.module.named_modules())[s.name]).__name__ for s in specs if s.name not in got}
    assert uncalled <= {"Dropout"}  # attention dropout lives inside the fused SDPA kernel
    torch.testing.assert_close(got["encoder"][0], got["encoder.layer.5"][0])
    assert all(rows.shape[0] == 2 for rows, _ in got.values())
    with pytest.raises(GwrayInputError, match="the forward pass never produced it"):
        _capture(minilm, "all", "mean", enc, runner=minilm.module)
