"""gwray.graph.stability + pairwise_gw on synthetic layers built in two regimes."""
import functools

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from gwray import find_subnetworks
from gwray.errors import GwrayInputError
from gwray.gw.pairwise import pairwise_gw
from gwray.graph.stability import stability


def regime_layers(n=32, d=6, sizes=(3, 5), noise=0.05, seed=0):
    """Layers in two regimes: each layer = a regime's nonlinear map of the same inputs, randomly
    rotated, plus noise. Within a regime layers are near-isometric; across regimes they are not."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    maps = [lambda z: np.tanh(0.5 * z), lambda z: np.sin(3.0 * z) * np.abs(z)]
    out = []
    for f, size in zip(maps, sizes):
        for _ in range(size):
            Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
            out.append(f(x) @ Q + noise * rng.normal(size=(n, d)))
    return out


def cost_gap(layers, gw_kwargs):
    """A cheap aligned-layer distance (mean-normalised cost matrices' mean squared gap)."""
    Cs = [cdist(x, x) / cdist(x, x).mean() for x in layers]
    return np.array([[np.mean((a - b) ** 2) for b in Cs] for a in Cs])


def test_stability_mechanics_on_clear_regimes():
    layers = regime_layers(noise=0.05)
    names = [f"L{i}" for i in range(8)]
    find = functools.partial(find_subnetworks, method="contiguous", names=names, n_null=0)
    res = stability(layers, find, fraction=0.7, resamples=6, seed=3, matrix_fn=cost_gap)
    assert res.co_assignment.shape == (8, 8) and np.allclose(np.diag(res.co_assignment), 1)
    assert res.labels.shape == (6, 8) and res.n_rows == round(0.7 * 32)
    assert res.mean_ari == 1.0 and list(res.reference) == [0, 0, 0, 1, 1, 1, 1, 1]
    assert res.co_assignment[0, 7] == 0.0 and res.co_assignment[3, 7] == 1.0
    d = res.to_dict()
    assert d["resamples"] == 6 and d["mean_ari"] == 1.0 and d["names"] == names
    again = stability(layers, find, fraction=0.7, resamples=6, seed=3, matrix_fn=cost_gap)
    assert (again.labels == res.labels).all()


def test_stability_drops_when_structure_is_noise():
    layers = regime_layers(noise=3.0)  # the noise swamps the regimes
    find = functools.partial(find_subnetworks, method="contiguous", n_null=0)
    res = stability(layers, find, fraction=0.5, resamples=5, seed=0, matrix_fn=cost_gap)
    assert res.mean_ari < 0.9


@pytest.mark.parametrize("kwargs, match", [
    (dict(fraction=0.0), "fraction: must be in"),
    (dict(fraction=0.05), "fraction: 0.05 of 32 samples leaves 2 rows"),
    (dict(resamples=0), "resamples: must be an integer >= 1"),
    (dict(layers=[np.zeros((32, 2)), np.zeros((31, 2))]), "layers: layer 1 has shape"),
    (dict(reference=[0, 1]), "reference: 2 labels for 8 layers"),
])
def test_stability_bad_input(kwargs, match):
    args = dict(layers=regime_layers(), find=find_subnetworks, matrix_fn=cost_gap) | kwargs
    with pytest.raises(GwrayInputError, match=match):
        stability(**args)


@pytest.mark.parametrize("seed", [0, 1])
def test_pairwise_gw_two_regimes_give_two_groups_at_the_boundary(seed):
    layers = regime_layers(sizes=(3, 5), seed=seed)
    res = pairwise_gw(layers)
    D = np.asarray(res)
    assert (res.lower_bound <= D + 1e-12).all()
    names = [f"block{i}" for i in range(8)]
    for method in ("contiguous", "louvain", "greedy", "spectral"):
        r = find_subnetworks(D, method=method, names=names, seed=seed)
        assert r.groups == [names[:3], names[3:]], (method, r.k_reason)


def test_stability_with_pairwise_gw():
    layers = regime_layers(n=24, sizes=(2, 3))
    find = functools.partial(find_subnetworks, method="contiguous", n_null=0)
    res = stability(layers, find, fraction=0.75, resamples=3, seed=0)
    assert res.mean_ari == 1.0 and list(res.reference) == [0, 0, 1, 1, 1]
