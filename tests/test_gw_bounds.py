"""TLB (lower bound) and identity cost (upper bound) in POT's square-loss convention."""
import itertools

import numpy as np
import ot
import pytest

from gwray.errors import GwrayInputError
from gwray.gw.bounds import identity_cost, tlb, w2_cost
from gwray.gw.costs import cost_matrix
from gwray.gw.solver import gromov_wasserstein


def _w(rng, k):
    w = rng.random(k) + 0.1
    return w / w.sum()


@pytest.mark.parametrize("n,m,uniform", [(7, 7, True), (7, 5, True), (6, 6, False), (5, 8, False)])
def test_w2_cost_matches_pot_1d(n, m, uniform):
    rng = np.random.default_rng(n * m)
    C1, C2 = cost_matrix(rng.normal(size=(n, 3))), cost_matrix(rng.normal(size=(m, 3)))
    p, q = (ot.unif(n), ot.unif(m)) if uniform else (_w(rng, n), _w(rng, m))
    ref = np.array([[ot.wasserstein_1d(C1[i], C2[j], p, q, p=2) for j in range(m)] for i in range(n)])
    np.testing.assert_allclose(w2_cost(C1, C2, p, q), ref, atol=1e-12)


def test_tlb_below_brute_force_optimum():
    """n = 6 Euclidean costs: GW is concave on the polytope, so the exact optimum is a permutation."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        C1, C2 = cost_matrix(rng.normal(size=(6, 2))), cost_matrix(rng.normal(size=(6, 4)))
        best = min(float(((C1 - C2[np.ix_(s, s)]) ** 2).mean())
                   for s in map(list, itertools.permutations(range(6))))
        assert 0.0 < tlb(C1, C2) <= best


@pytest.mark.parametrize("n,m,uniform", [(30, 30, True), (25, 18, True), (20, 20, False), (16, 22, False)])
def test_tlb_below_pot_and_ours(n, m, uniform):
    rng = np.random.default_rng(n + m)
    C1, C2 = cost_matrix(rng.normal(size=(n, 4))), cost_matrix(rng.normal(size=(m, 2)))
    p, q = (ot.unif(n), ot.unif(m)) if uniform else (_w(rng, n), _w(rng, m))
    bound = tlb(C1, C2, p, q)
    assert 0.0 < bound <= ot.gromov.gromov_wasserstein2(C1, C2, p, q, "square_loss")
    r = gromov_wasserstein(C1, C2, p, q)
    assert r.lower_bound == pytest.approx(bound, rel=1e-12) and r.lower_bound <= r.value


def test_tlb_is_zero_on_equal_inputs_and_symmetric():
    rng = np.random.default_rng(1)
    C1, C2 = cost_matrix(rng.normal(size=(20, 3))), cost_matrix(rng.normal(size=(20, 5)))
    assert tlb(C1, C1) <= 1e-14
    assert tlb(C1, C2) == pytest.approx(tlb(C2, C1), rel=1e-10)
    perm = rng.permutation(20)
    assert tlb(C1, C2[np.ix_(perm, perm)]) == pytest.approx(tlb(C1, C2), rel=1e-10)


def test_identity_cost():
    rng = np.random.default_rng(2)
    C1, C2 = cost_matrix(rng.normal(size=(12, 3))), cost_matrix(rng.normal(size=(12, 3)))
    p = _w(rng, 12)
    T = np.diag(p)
    direct = np.einsum("ijkl,ij,kl->", (C1[:, None, :, None] - C2[None, :, None, :]) ** 2, T, T)
    assert identity_cost(C1, C2, p) == pytest.approx(direct, rel=1e-12)
    r = gromov_wasserstein(C1, C2, aligned=True)
    assert r.lower_bound <= r.value <= identity_cost(C1, C2) + 1e-15
    with pytest.raises(GwrayInputError, match="^identity coupling needs equal sizes"):
        identity_cost(C1, C2[:5, :5])
    with pytest.raises(GwrayInputError, match="^p must sum to 1"):
        identity_cost(C1, C2, np.ones(12))
