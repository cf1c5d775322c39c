"""gwray.graph.communities: planted groups are recovered by every method (and pass the test against
smooth drift, 19 null draws), k="auto", flags, errors."""
import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from gwray import find_subnetworks
from gwray.errors import GwrayInputError
from gwray.graph.communities import METHODS, SubnetworkSet
from gwray.graph.segment import segmentations


def planted(labels, within=0.1, between=1.0, noise=0.0, seed=0):
    """(L, L) distances: `within` inside a planted group, `between` across, + symmetric noise ≥ 0."""
    lab = np.asarray(labels)
    D = np.where(lab[:, None] == lab[None, :], within, between)
    N = np.random.default_rng(seed).uniform(0, noise, D.shape)
    D = D + (N + N.T) / 2
    np.fill_diagonal(D, 0.0)
    return D


CONTIGUOUS = [np.repeat([0, 1, 2], [4, 4, 4]), np.repeat([0, 1, 2, 3], [2, 3, 4, 3]),
              np.repeat([0, 1], [6, 6]), np.repeat([0, 1, 2], [5, 2, 5])]


@pytest.mark.parametrize("lab", CONTIGUOUS, ids=lambda lab: "-".join(map(str, np.bincount(lab))))
def test_exact_planted_contiguous_every_method_auto_k(lab):
    names = [f"layer{i}" for i in range(len(lab))]
    res = find_subnetworks(planted(lab), method="all", names=names)
    assert isinstance(res, SubnetworkSet) and set(res) == set(METHODS)
    for m, r in res.items():
        assert adjusted_rand_score(lab, r.labels) == 1.0, m
        assert r.k == lab.max() + 1, (m, r.k_reason)
        assert r.contiguous and r.noncontiguous_groups == []
        assert r.groups[0][0] == "layer0" and sum(map(len, r.groups)) == len(lab)
        assert r.scores["silhouette"] > 0.8 and r.scores["within_between"] == pytest.approx(0.1)
    assert all(v == 1.0 for v in res.agreement.values()) and len(res.agreement) == 6


NOISY = [np.repeat([0, 1, 2], [4, 4, 4]), np.repeat([0, 1, 2], [3, 5, 4]),
         np.repeat([0, 1, 2, 3], [3, 3, 3, 3]), np.repeat([0, 1], [6, 6])]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("lab", NOISY, ids=lambda lab: "-".join(map(str, np.bincount(lab))))
def test_noisy_planted_contiguous(lab, seed):
    # within 0.2–0.6 vs between 1.0–1.4: the groups overlap in spread, not in value
    D = planted(lab, within=0.2, noise=0.4, seed=seed)
    for m in METHODS:
        assert adjusted_rand_score(lab, find_subnetworks(D, method=m, seed=seed).labels) >= 0.9, m


@pytest.mark.parametrize("seed", range(4))
def test_noisy_two_layer_group_found_by_dp_and_louvain(seed):
    # A 2-layer group under heavy noise: modularity at γ=1 (greedy) and the eigengap (spectral)
    # may merge it (resolution limit); the DP and the Louvain sweep keep it.
    lab = np.repeat([0, 1, 2, 3], [2, 3, 4, 3])
    D = planted(lab, within=0.2, noise=0.5, seed=seed)
    for m in ("contiguous", "louvain"):
        assert adjusted_rand_score(lab, find_subnetworks(D, method=m, seed=seed).labels) >= 0.9, m


def test_noncontiguous_recovered_and_flagged():
    lab = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1])
    D = planted(lab, noise=0.1)
    for m in ("louvain", "spectral", "greedy"):
        r = find_subnetworks(D, method=m, n_null=19)
        assert adjusted_rand_score(lab, r.labels) == 1.0, m
        assert not r.contiguous and r.noncontiguous_groups == [0, 1]
        assert r.to_dict()["contiguous"] is False
    seg = find_subnetworks(D, method="contiguous", n_null=19)
    assert seg.contiguous  # the DP can only cut the depth order


def test_given_k_and_reason():
    lab = CONTIGUOUS[0]
    D = planted(lab)
    for m in METHODS:
        r = find_subnetworks(D, method=m, k=2, n_null=19)
        assert r.k == 2 and r.k_reason.startswith("given k=2"), m
    r = find_subnetworks(D, method="spectral", n_null=19)
    assert "eigengap" in r.k_reason
    assert find_subnetworks(D, method="contiguous", k=1).groups == [[str(i) for i in range(12)]]
    assert find_subnetworks(D, method="spectral", k=12, n_null=19).k == 12


def test_structureless_matrix_is_one_group_and_its_candidate_weak():
    D = np.ones((6, 6)) - np.eye(6)
    for m in ("contiguous", "spectral"):
        r = find_subnetworks(D, method=m)
        assert r.k == 1 and "no significant block structure" in r.k_reason, m
        assert "weak structure" in r.candidate.k_reason and r.candidate.scores["silhouette"] < 0.25, m
        assert find_subnetworks(D, method=m, n_null=0).k == r.candidate.k  # untested: as before
    assert "weak" not in find_subnetworks(planted(CONTIGUOUS[0]), method="contiguous", n_null=19).k_reason


def test_dp_is_exact_against_brute_force():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(8, 2)).cumsum(0)
    D = ((X[:, None] - X[None]) ** 2).sum(-1)
    segs = segmentations(D, 4)
    from itertools import combinations

    def cost(cuts):
        b = [0, *cuts, 8]
        return sum(D[a:c, a:c].sum() / 2 / (c - a) for a, c in zip(b, b[1:]))
    for k in range(1, 5):
        brute = min(cost(c) for c in combinations(range(1, 8), k - 1))
        assert segs[k][1] == pytest.approx(brute)


def test_deterministic_and_json_ready():
    D = planted(CONTIGUOUS[1], within=0.2, noise=0.5)
    a = find_subnetworks(D, method="all", seed=7, n_null=19)
    b = find_subnetworks(D, method="all", seed=7, n_null=19)
    assert json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)
    d = a["louvain"].to_dict()
    assert set(d) >= {"groups", "labels", "k", "k_reason", "scores", "contiguous", "method", "test",
                      "significant", "candidate", "boundaries"}
    assert set(d["scores"]) == {"modularity", "silhouette", "within_between"}


@pytest.mark.parametrize("kwargs, match", [
    (dict(D=np.zeros((2, 3))), "D: must be a non-empty square"),
    (dict(D=np.array([[0, 1.0], [0.5, 0]])), "D: not symmetric"),
    (dict(D=np.array([[0, -2.0], [-2.0, 0]])), "D: negative distance"),
    (dict(D=np.array([[0, np.inf], [np.inf, 0]])), "D: non-finite"),
    (dict(names=["a", "b"]), "names: 2 names for a 4×4"),
    (dict(k=5), "k: 5 is not in 1..4"),
    (dict(k=0), "k: 0 is not in 1..4"),
    (dict(k="three"), "k: must be 'auto' or an integer"),
    (dict(method="kmeans"), "method: 'kmeans' is not one of"),
])
def test_bad_input(kwargs, match):
    args = {"D": planted([0, 0, 1, 1])} | kwargs
    with pytest.raises(GwrayInputError, match=match) as e:
        find_subnetworks(**args)
    assert "\n" not in str(e.value)
