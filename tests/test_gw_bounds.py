"""TLB and eigenvalue lower bounds and the identity cost (upper bound), POT's square-loss convention."""
import itertools

import numpy as np
import ot
import pytest

from gwray.errors import GwrayInputError
from gwray.gw.bounds import (assignment_bound, eigen_bound, identity_cost, layer_summary, ot_value,
                             tlb, w2_cost)
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
    # the solver's bound is the larger of the TLB and (uniform, n = m only) the eigenvalue bound
    best = max(bound, eigen_bound(layer_summary(C1), layer_summary(C2))) if uniform and n == m else bound
    assert r.lower_bound == pytest.approx(best, rel=1e-12) and r.lower_bound <= r.value


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


def _brute_min(C1, C2):
    n = len(C1)
    return min(float(((C1 - C2[np.ix_(s, s)]) ** 2).sum()) / n ** 2
               for s in map(list, itertools.permutations(range(n))))


def _non_cnd(rng, n):
    """Symmetric, zero diagonal, non-negative, but not conditionally negative definite."""
    A = rng.random((n, n)) ** 4 * 3.0
    A = A + A.T
    np.fill_diagonal(A, 0.0)
    return A


def test_eigen_bound_below_brute_force_optimum():
    """n ≤ 8: Euclidean costs (the minimum over couplings is a permutation, GW being concave) and
    costs that are not conditionally negative definite (the shifted bound still holds)."""
    rng = np.random.default_rng(3)
    shifted = 0
    for n in (5, 7, 8):
        for kind in ("euclidean", "non-cnd"):
            if kind == "euclidean":
                C1, C2 = cost_matrix(rng.normal(size=(n, 2))), cost_matrix(rng.normal(size=(n, 3)))
            else:
                C1, C2 = _non_cnd(rng, n), _non_cnd(rng, n)
            S1, S2 = layer_summary(C1), layer_summary(C2)
            bound = eigen_bound(S1, S2)
            shifted += min(S1.kappa[0], S2.kappa[0]) < -1e-9
            assert bound <= _brute_min(C1, C2) + 1e-12
            # for non-CND costs GW may be lowest inside the polytope: the bound stays below
            # every feasible plan the solver reaches from many starts
            r = gromov_wasserstein(C1, C2, starts=["product", "random:6"], prune=None)
            assert bound <= r.value + 1e-12 and r.lower_bound >= bound - 1e-15
    assert shifted >= 2  # the shift was exercised


def test_eigen_bound_beats_tlb_on_structured_pairs_and_refuses_n_ne_m():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 6))
    layers = [x]
    for _ in range(3):
        x = x + np.maximum(x @ rng.normal(size=(6, 6)), 0.0)
        layers.append(x)
    costs = [cost_matrix(X) for X in layers]
    wins = 0
    for a, b in itertools.combinations(range(4), 2):
        bound = eigen_bound(layer_summary(costs[a]), layer_summary(costs[b]))
        r = gromov_wasserstein(costs[a], costs[b], aligned=True)
        assert 0.0 <= bound <= r.value and r.lower_bound >= bound - 1e-15
        wins += bound > tlb(costs[a], costs[b])
    assert wins >= 1
    # validity conditions: n = m (refused otherwise) and uniform weights (the solver falls back)
    assert np.isnan(eigen_bound(layer_summary(costs[0]), layer_summary(costs[1][:30, :30])))
    p = _w(rng, 40)
    r = gromov_wasserstein(costs[0], costs[3], p, p)
    assert r.lower_bound == pytest.approx(min(tlb(costs[0], costs[3], p, p), r.value), rel=1e-12)
    with pytest.raises(GwrayInputError, match="^layer_data does not match"):
        gromov_wasserstein(costs[0], costs[3], layer_data=(layer_summary(costs[0]),
                                                           layer_summary(costs[1][:30, :30])))


@pytest.fixture(scope="module")
def minilm_costs(minilm_costs_of):
    """Costs of the 7 hidden states of the packaged all-MiniLM-L6-v2 on 48 built-in sentences."""
    return minilm_costs_of(48)


def test_bounds_below_values_on_real_minilm_pairs(minilm_costs):
    """All 21 hidden-state pairs of the packaged all-MiniLM-L6-v2 on 48 built-in probe sentences:
    both bounds stay below the solver's value (checked unclipped) and the solver reports their max."""
    costs = minilm_costs
    summaries = [layer_summary(C) for C in costs]
    for a, b in itertools.combinations(range(len(costs)), 2):
        r = gromov_wasserstein(costs[a], costs[b], aligned=True, layer_data=(summaries[a], summaries[b]))
        eig, t = eigen_bound(summaries[a], summaries[b]), tlb(costs[a], costs[b])
        assert 0.0 < eig <= r.value and 0.0 < t <= r.value
        assert r.lower_bound == pytest.approx(max(eig, t), rel=1e-12)


def test_dual_tlb_is_a_valid_bound_on_real_minilm_pairs(minilm_costs):
    """The TLB from warm-started duals (its dual objective) never exceeds the exact assignment
    optimum (EMD), equals it within 1e-9 when the duals come from a neighbouring pair, and stays
    a bound from arbitrary duals."""
    n = len(minilm_costs[0])
    p = np.full(n, 1.0 / n)
    G = [w2_cost(minilm_costs[0], C, p, p) for C in minilm_costs[1:]]
    rng = np.random.default_rng(0)
    for prev, cur in zip(G, G[1:]):  # (0, k) warm-starts (0, k + 1), as checkpoints would
        exact = ot_value(cur, p, p)
        _, v = ot_value(prev, p, p, duals=True)
        bound, v_new = assignment_bound(cur, v)
        assert bound <= exact and bound == pytest.approx(exact, rel=1e-9)
        assert assignment_bound(cur, v_new)[0] == pytest.approx(exact, rel=1e-9)
        noisy = assignment_bound(cur, rng.normal(scale=float(cur.max()), size=n))[0]
        assert noisy <= exact and noisy == pytest.approx(exact, rel=1e-9)
        # weak duality: the dual objective of the neighbour's duals as they are is a bound too
        u = (cur - v[None, :]).min(axis=1)
        assert (u.sum() + v.sum()) / n <= exact
