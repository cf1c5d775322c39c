"""The CG solver against POT, against brute force, its invariances, starts and input errors."""
import itertools

import numpy as np
import ot
import pytest
import torch

from gwray.errors import GwrayInputError
from gwray.gw.costs import cost_matrix
from gwray.gw.bounds import round_to_coupling
from gwray.gw.local_search import best_swaps, swap_search
from gwray.gw.solver import GWResult, gromov_wasserstein


def _weights(rng, k):
    w = rng.random(k) + 0.2
    return w / w.sum()


def _residual_layers(rng, n, depth=4, width=8):
    """Layers of a small random residual MLP on shared inputs (structured, related pairs)."""
    x = rng.normal(size=(n, width))
    out = [x]
    for _ in range(depth - 1):
        x = x + np.maximum(x @ rng.normal(size=(width, width)) / np.sqrt(width), 0.0)
        out.append(x)
    return out


def _cases():
    """(name, C1, C2, p, q): random and structured, uniform and not, n = m and n ≠ m."""
    rng = np.random.default_rng(0)
    cases = []
    for n, m, d1, d2 in [(20, 20, 3, 3), (45, 45, 5, 2), (30, 24, 4, 4)]:
        C1, C2 = cost_matrix(rng.normal(size=(n, d1))), cost_matrix(rng.normal(size=(m, d2)))
        cases.append((f"random-{n}x{m}", C1, C2, None, None))
        cases.append((f"random-{n}x{m}-weighted", C1, C2, _weights(rng, n), _weights(rng, m)))
    layers = _residual_layers(rng, 40)
    cases.append(("residual-0-3", cost_matrix(layers[0]), cost_matrix(layers[3]), None, None))
    blobs = np.concatenate([rng.normal(size=(10, 3)) + 4 * rng.normal(size=3) for _ in range(4)])
    t = np.linspace(0.5, 9.0, 40)
    spiral = np.c_[t * np.cos(t), t * np.sin(t)] + 0.1 * rng.normal(size=(40, 2))
    cases.append(("blobs-vs-spiral", cost_matrix(blobs), cost_matrix(spiral), None, None))
    return cases


CASES = _cases()
# A circle: every row of its costs has the same mean, so the product start's first linear step
# is a tie (any permutation) and "same start, same path" has no meaning; kept for "never worse".
_rng = np.random.default_rng(11)
HARD = CASES + [("blobs-vs-circle",
                 cost_matrix(np.concatenate([_rng.normal(size=(10, 3)) + 4 * _rng.normal(size=3)
                                             for _ in range(4)])),
                 cost_matrix(np.c_[np.cos(np.arange(40)), np.sin(np.arange(40))]), None, None)]


def _pot(C1, C2, p, q, G0=None):
    p = ot.unif(len(C1)) if p is None else p
    q = ot.unif(len(C2)) if q is None else q
    return float(ot.gromov.gromov_wasserstein2(C1, C2, p, q, "square_loss", G0=G0))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_same_start_same_value_as_pot(case):
    _, C1, C2, p, q = case
    r = gromov_wasserstein(C1, C2, p, q, starts=["product"], swap_rounds=0)
    assert r.value == pytest.approx(_pot(C1, C2, p, q), rel=1e-6)
    # a given start: a random vertex (a permutation when uniform and square)
    rng = np.random.default_rng(1)
    pp = ot.unif(len(C1)) if p is None else p
    qq = ot.unif(len(C2)) if q is None else q
    G0 = ot.emd(pp, qq, rng.random((len(C1), len(C2))))
    r = gromov_wasserstein(C1, C2, p, q, starts=[G0], swap_rounds=0)
    assert r.init == "given"
    assert r.value == pytest.approx(_pot(C1, C2, p, q, G0=G0), rel=1e-6)


@pytest.mark.parametrize("case", HARD, ids=[c[0] for c in HARD])
def test_default_never_worse_than_pot_and_certified(case):
    _, C1, C2, p, q = case
    aligned = C1.shape == C2.shape and p is None
    r = gromov_wasserstein(C1, C2, p, q, aligned=aligned)
    assert r.value <= _pot(C1, C2, p, q) * (1 + 1e-9)
    assert 0.0 <= r.lower_bound <= r.value
    T = r.coupling
    pp = np.full(len(C1), 1 / len(C1)) if p is None else p
    qq = np.full(len(C2), 1 / len(C2)) if q is None else q
    assert r.marginal_error <= 1e-8 and T.min() >= 0.0
    assert np.abs(T.sum(1) - pp).sum() <= 1e-8 and np.abs(T.sum(0) - qq).sum() <= 1e-8
    L = (C1[:, None, :, None] - C2[None, :, None, :]) ** 2  # (i, j, k, l)
    direct = float(np.einsum("ijkl,ij,kl->", L, T, T))
    assert r.value == pytest.approx(direct, rel=1e-9, abs=1e-14)


def test_brute_force_optimum_tiny():
    """n = 6 Euclidean costs: GW is concave on the polytope, so its minimum is a permutation."""
    rng = np.random.default_rng(5)
    found = 0
    for _ in range(6):
        C1, C2 = cost_matrix(rng.normal(size=(6, 2))), cost_matrix(rng.normal(size=(6, 3)))
        best = min(float(((C1 - C2[np.ix_(s, s)]) ** 2).sum()) / 36
                   for s in map(list, itertools.permutations(range(6))))
        r = gromov_wasserstein(C1, C2, starts=["product", "random:8"], polish=9)
        assert r.lower_bound <= best + 1e-12 and r.value >= best - 1e-12
        found += r.value <= best + 1e-12
    assert found == 6


def test_best_swaps_match_brute_force():
    rng = np.random.default_rng(2)
    n = 7
    for zero_diag in (True, False):
        A, B = rng.normal(size=(n, n)), rng.normal(size=(n, n))
        A, B = A + A.T, B + B.T
        if zero_diag:
            np.fill_diagonal(A, 0)
            np.fill_diagonal(B, 0)
        s = rng.permutation(n)
        partner, gain = best_swaps(A, A @ B[np.ix_(s, s)], B[np.ix_(s, s)])
        G = np.full((n, n), -np.inf)
        for i, j in itertools.permutations(range(n), 2):
            t = s.copy()
            t[i], t[j] = s[j], s[i]
            G[i, j] = (A * B[np.ix_(t, t)]).sum() - (A * B[np.ix_(s, s)]).sum()
        np.testing.assert_allclose(gain, G.max(axis=1), atol=1e-10)
        np.testing.assert_allclose(G[np.arange(n), partner], gain, atol=1e-10)
        # the search ends swap-stable, never worse, with W matching its permutation
        t, changed, W = swap_search(A, B, s, 100)
        assert changed and (A * B[np.ix_(t, t)]).sum() > (A * B[np.ix_(s, s)]).sum()
        np.testing.assert_allclose(W, A @ B[np.ix_(t, t)], atol=1e-10)
        assert best_swaps(A, W, B[np.ix_(t, t)])[1].max() <= 1e-9


def test_swaps_and_identity_improve_on_plain_cg():
    rng = np.random.default_rng(3)
    layers = _residual_layers(rng, 60, depth=5)
    C1, C2 = cost_matrix(layers[0]), cost_matrix(layers[4])
    plain = gromov_wasserstein(C1, C2, starts=["product"], swap_rounds=0)
    swaps = gromov_wasserstein(C1, C2, starts=["product"])
    every = gromov_wasserstein(C1, C2, aligned=True, polish=3)  # every CG end polished
    assert every.value <= swaps.value < plain.value
    # the default polishes only the best CG end: never above any start's plain CG (POT's path)
    ours = gromov_wasserstein(C1, C2, aligned=True)
    for start in ("identity", "mixed", "product"):
        cg_only = gromov_wasserstein(C1, C2, aligned=True, starts=[start], swap_rounds=0)
        assert ours.value <= cg_only.value * (1 + 1e-12)


def test_pruning_keeps_the_value_and_drops_a_far_product_start(monkeypatch):
    """Identity first, product dropped before its first matmul when far above; same value as
    running every start to the end."""
    from gwray.gw import problem

    rng = np.random.default_rng(8)
    layers = _residual_layers(rng, 50, depth=5)
    for a, b in [(0, 1), (0, 4), (2, 3)]:
        C1, C2 = cost_matrix(layers[a]), cost_matrix(layers[b])
        full = gromov_wasserstein(C1, C2, aligned=True, prune=None, starts=["product", "identity"])
        fast = gromov_wasserstein(C1, C2, aligned=True, prune=1.5, starts=["product", "identity"])
        assert fast.value == pytest.approx(full.value, rel=1e-12)
        assert list(fast.start_values) == ["identity", "product"]  # identity ran first
    # neighbours: the product start cannot come within 2x, so it costs no n³ product at all
    C1, C2 = cost_matrix(layers[3]), cost_matrix(layers[4])
    calls, times_c = [], problem.Problem.times_c
    monkeypatch.setattr(problem.Problem, "times_c",
                        lambda self, *a: calls.append(1) or times_c(self, *a))
    r = gromov_wasserstein(C1, C2, aligned=True, starts=["identity", "product"], swap_rounds=0,
                           prune=1.5)
    both = len(calls)
    ident = gromov_wasserstein(C1, C2, aligned=True, starts=["identity"], swap_rounds=0)
    assert r.init == "identity" and r.start_values["product"] > 1.5 * r.value
    # the identity's matmuls only (its last step, back to its own vertex, needs none)
    assert r.total_iterations == ident.total_iterations + 1 and both == len(calls) - both
    assert both == ident.iterations - 1


def test_swap_search_with_given_w_matches_fresh():
    rng = np.random.default_rng(9)
    A = cost_matrix(rng.normal(size=(40, 3)))
    B = cost_matrix(rng.normal(size=(40, 3)))
    s = rng.permutation(40)
    t1, c1, W1 = swap_search(A, B, s, 20)
    t2, c2, W2 = swap_search(A, B, s, 20, W=A @ B[np.ix_(s, s)])
    assert c1 and c2 and np.array_equal(t1, t2)
    np.testing.assert_allclose(W2, A @ B[np.ix_(t2, t2)], rtol=1e-10, atol=1e-10)


def test_self_distance_is_zero_and_symmetric():
    rng = np.random.default_rng(4)
    C1, C2 = cost_matrix(rng.normal(size=(30, 4))), cost_matrix(rng.normal(size=(30, 6)))
    assert gromov_wasserstein(C1, C1, aligned=True).value <= 1e-14
    a, b = gromov_wasserstein(C1, C2, aligned=True), gromov_wasserstein(C2, C1, aligned=True)
    assert a.value == pytest.approx(b.value, rel=1e-9)
    assert a.lower_bound == pytest.approx(b.lower_bound, rel=1e-9)


def test_invariant_to_rigid_motion_and_scale():
    rng = np.random.default_rng(6)
    X, Y = rng.normal(size=(35, 5)), rng.normal(size=(35, 3))
    R, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    base = gromov_wasserstein(cost_matrix(X), cost_matrix(Y), aligned=True)
    moved = gromov_wasserstein(cost_matrix(7.0 * X @ R + 3.0), cost_matrix(0.1 * Y - 2.0), aligned=True)
    assert moved.value == pytest.approx(base.value, rel=1e-8)


def test_starts_and_result_fields():
    rng = np.random.default_rng(7)
    C1, C2 = cost_matrix(rng.normal(size=(25, 3))), cost_matrix(rng.normal(size=(25, 3)))
    r = gromov_wasserstein(C1, C2, starts=["random:3", "entropic", "product"], prune=None,
                           keep_coupling=False)
    assert set(r.start_values) == {"random:0", "random:1", "random:2", "entropic", "product"}
    assert r.value == min(r.start_values.values()) and r.coupling is None
    assert r.total_iterations >= r.iterations >= 0 and r.solver == "cg-lap"
    rec = r.record()
    assert set(rec) == {"gw", "lower_bound", "init", "iterations", "marginal_error", "seconds", "n",
                        "solver", "runner_up_gap"}
    assert rec["n"] == 25 and isinstance(rec["gw"], float) and isinstance(rec["init"], str)
    # an infeasible warm start (e.g. from an entropic solver) is rounded to an exact coupling
    T0 = torch.tensor(rng.random((25, 25)))
    g = gromov_wasserstein(C1, C2, starts=[T0, T0.numpy()])
    assert set(g.start_values) == {"given", "given:1"} and g.marginal_error <= 1e-8
    # max_iter=0 evaluates the starts only (no CG, no swaps)
    from gwray.gw.bounds import identity_cost

    r0 = gromov_wasserstein(C1, C2, aligned=True, starts=["identity"], max_iter=0)
    assert r0.value == pytest.approx(identity_cost(C1, C2), rel=1e-12) and r0.iterations == 0
    # unaligned: identity is skipped and the product stands in
    assert set(gromov_wasserstein(C1, C2, starts=["identity"]).start_values) == {"product"}
    assert isinstance(r, GWResult)


def test_non_uniform_solver_name_and_rounding():
    rng = np.random.default_rng(8)
    p, q = _weights(rng, 12), _weights(rng, 9)
    T = round_to_coupling(rng.random((12, 9)), p, q)
    assert np.abs(T.sum(1) - p).max() < 1e-15 and np.abs(T.sum(0) - q).max() < 1e-15
    r = gromov_wasserstein(cost_matrix(rng.normal(size=(12, 2))), cost_matrix(rng.normal(size=(9, 2))),
                           p, q, starts=["product", "random:2"])
    assert r.solver == "cg-emd" and r.marginal_error <= 1e-8 and r.lower_bound <= r.value


@pytest.fixture
def costs():
    rng = np.random.default_rng(9)
    return cost_matrix(rng.normal(size=(8, 2))), cost_matrix(rng.normal(size=(6, 2)))


@pytest.mark.parametrize("kwargs,msg", [
    (dict(aligned=True), "^aligned=True needs n == m"),
    (dict(p=np.full(8, 0.2)), "^p must sum to 1, sums to 1.6$"),
    (dict(q=np.full(5, 0.2)), r"^q must have shape \(6,\), got \(5,\)$"),
    (dict(p=np.r_[-0.1, np.full(7, 1.1 / 7)]), "^p must be finite and non-negative$"),
    (dict(starts=["warm"]), "^starts: unknown start 'warm'"),
    (dict(starts=["random:x"]), "^starts: 'random:x' must be"),
    (dict(starts=["random:0"]), "^starts: 'random:0' must be"),
    (dict(starts=[]), "^starts is empty"),
    (dict(starts=[np.ones((6, 8))]), r"^starts: coupling shape \(6, 8\) != \(8, 6\)$"),
])
def test_bad_arguments(costs, kwargs, msg):
    with pytest.raises(GwrayInputError, match=msg):
        gromov_wasserstein(*costs, **kwargs)


def test_bad_costs(costs):
    C1, C2 = costs
    bad = C1.copy()
    bad[2, 5] = np.inf
    with pytest.raises(GwrayInputError, match="^C1 row 2 col 5 is inf$"):
        gromov_wasserstein(bad, C2)
    with pytest.raises(GwrayInputError, match="^C2 must be square"):
        gromov_wasserstein(C1, C2[:, :4])
    asym = C2.copy()
    asym[0, 3] += 0.5
    with pytest.raises(GwrayInputError, match=r"^C2 is not symmetric: C2\[0,3\]"):
        gromov_wasserstein(C1, asym)
    with pytest.raises(GwrayInputError, match="^C1 is empty"):
        gromov_wasserstein(np.zeros((0, 0)), C2)
    with pytest.raises(GwrayInputError, match="^aligned=True needs p == q"):
        p = _weights(np.random.default_rng(0), 8)
        gromov_wasserstein(C1, C1, p, np.full(8, 1 / 8), aligned=True)


def test_float32_search_reports_exact_float64_values():
    """The float32 search may pick another plan than float64, never an inexact value: the
    reported value is the float64 objective of the returned plan, recomputed here."""
    rng = np.random.default_rng(12)
    layers = _residual_layers(rng, 150, depth=4, width=16)
    for a, b in [(0, 1), (0, 3)]:
        C1, C2 = cost_matrix(layers[a]), cost_matrix(layers[b])
        r32 = gromov_wasserstein(C1, C2, aligned=True, starts=["identity", "mixed", "product"])
        r64 = gromov_wasserstein(C1, C2, aligned=True, starts=["identity", "mixed", "product"],
                                 search_dtype="float64")
        for r in (r32, r64):
            T = r.coupling
            exact = float(np.vdot(C1 * C1, np.outer(T.sum(1), T.sum(1))) + np.vdot(
                C2 * C2, np.outer(T.sum(0), T.sum(0))) - 2.0 * np.vdot(T, C1 @ T @ C2))
            assert r.value == pytest.approx(exact, rel=1e-12, abs=1e-15)
            s = r.permutation
            assert r.value == pytest.approx(((C1 - C2[np.ix_(s, s)]) ** 2).mean(), rel=1e-12)
            assert r.start_values[r.init] == r.value
        assert r32.value == pytest.approx(r64.value, rel=1e-2)  # same basins, either precision
    with pytest.raises(GwrayInputError, match="^search_dtype must be"):
        gromov_wasserstein(C1, C2, search_dtype="float16")
