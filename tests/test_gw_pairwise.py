"""pairwise_gw: all layer pairs, symmetric, certified, from activations or precomputed costs."""
import numpy as np
import pytest
import torch

from gwray.errors import GwrayInputError
from gwray.gw.costs import cost_matrix
from gwray.gw.pairwise import PairwiseGW, pairwise_gw
from gwray.gw.solver import gromov_wasserstein


@pytest.fixture(scope="module")
def layers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6))
    out = [x]
    for _ in range(3):
        x = x + 0.7 * np.tanh(x @ rng.normal(size=(6, 6)))
        out.append(x)
    return out


def test_matrix_properties(layers):
    r = pairwise_gw(layers)
    assert isinstance(r, PairwiseGW) and r.gw.shape == (4, 4)
    assert np.array_equal(r.gw, r.gw.T) and np.array_equal(r.lower_bound, r.lower_bound.T)
    assert not np.diagonal(r.gw).any() and not np.diagonal(r.lower_bound).any()
    assert np.all(r.lower_bound <= r.gw) and np.all(r.gw[~np.eye(4, dtype=bool)] > 0)
    assert np.array_equal(np.asarray(r), r.gw)
    assert [(d["i"], d["j"]) for d in r.records] == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert {"gw", "lower_bound", "init", "iterations", "marginal_error", "seconds", "n",
            "solver"} <= set(r.records[0])
    one = gromov_wasserstein(cost_matrix(layers[1]), cost_matrix(layers[3]), aligned=True)
    assert r.gw[1, 3] == pytest.approx(one.value, rel=1e-12)
    # depth structure: a layer is closer to its neighbour than to the far end
    assert r.gw[0, 1] < r.gw[0, 3]


def test_precomputed_torch_and_progress(layers, capsys):
    costs = [cost_matrix(X, "cosine") for X in layers]
    a = pairwise_gw(costs, precomputed=True, progress=True)
    b = pairwise_gw([torch.tensor(X) for X in layers], metric="cosine")
    np.testing.assert_allclose(a.gw, b.gw, rtol=1e-10, atol=1e-15)
    assert "GW pairs" in capsys.readouterr().err


def test_unaligned_different_sizes(layers):
    r = pairwise_gw([layers[0], layers[1][:20]], aligned=False)
    assert r.records[0]["init"] != "identity" and r.gw[0, 1] > 0


def test_bad_inputs(layers):
    with pytest.raises(GwrayInputError, match="^layers is empty"):
        pairwise_gw([])
    bad = layers[2].copy()
    bad[4, 1] = np.nan
    with pytest.raises(GwrayInputError, match=r"^layers\[1\] row 4 col 1 is nan$"):
        pairwise_gw([layers[0], bad])
    with pytest.raises(GwrayInputError, match="^aligned=True needs the same number of samples"):
        pairwise_gw([layers[0], layers[1][:20]])
    with pytest.raises(GwrayInputError, match=r"^layers\[0\] must be square"):
        pairwise_gw([layers[0]], precomputed=True)
    with pytest.raises(GwrayInputError, match=r"^layers\[1\] is empty"):
        pairwise_gw([layers[0], np.zeros((0, 6))])
