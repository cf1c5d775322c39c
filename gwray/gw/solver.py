"""Square-loss Gromov-Wasserstein by conditional gradient (Frank-Wolfe), multi-start.

The problem and its CG steps live in :mod:`gwray.gw.problem`, the starting plans in
:mod:`gwray.gw.starts`, the swap search in :mod:`gwray.gw.local_search` and the bounds in
:mod:`gwray.gw.bounds`; this module runs them: every start's CG, a swap search polishing the
ends that could win, the best exactly evaluated plan, and the lower bound.

For distance-like costs GW is concave on the polytope, so CG walks vertex to vertex and stops at
a permutation that no single assignment step improves but a pairwise swap often does: a swap
search then alternates with CG. The search runs in float32 by default; every start ends at an
exactly feasible plan whose objective is recomputed in float64, so ``value`` is a true upper
bound on GW, and ``lower_bound`` is the larger of the TLB and the eigenvalue bound.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import ThreadpoolController

from gwray.errors import GwrayInputError
from gwray.gw.bounds import (LayerSummary, _is_uniform, _weights, assignment_bound, eigen_bound,
                             layer_summary, ot_value, w2_cost, w2_cost_sorted)
from gwray.gw.costs import check_cost
from gwray.gw.local_search import swap_search
from gwray.gw.problem import Problem, cg
from gwray.gw.starts import (ALIGNED_ONLY, DEFAULT_STARTS, as_permutation, expand_auto,
                             iter_starts)


@dataclass
class GWResult:
    """The outcome of one GW solve.

    Attributes
    ----------
    value : float
        GW objective of the returned feasible coupling (an upper bound on the GW minimum).
    lower_bound : float
        Certified lower bound: the larger of the TLB and, for uniform weights and n = m, the
        eigenvalue bound (clipped to ≤ value); NaN when not computed.
    coupling : numpy.ndarray of shape (n, m), or None
        The best plan (None when ``keep_coupling=False``).
    init : str
        The start that won ("identity", "product", "random:3", "entropic", "given", ...).
    iterations, total_iterations : int
        CG iterations of the winning start, and summed over all starts.
    marginal_error : float
        max(‖T 1 − p‖₁, ‖Tᵀ 1 − q‖₁) of the returned plan.
    seconds : float
        Wall time of the whole solve (all starts and the bound).
    solver : str
        "cg-lap" (uniform weights, n = m: permutation vertices, swap search) or "cg-emd".
    n, m : int
        Sizes of C1 and C2.
    start_values : dict
        Final objective of every start that ran: exact (float64) for every end that could win,
        in search precision for a start that ended clearly above the best (e.g. pruned).
    polished : tuple of str
        The starts whose CG ends the swap search polished (the others' ``start_values`` are CG
        ends, which a swap search lowers by up to ~10 % on layer pairs).
    permutation : numpy.ndarray of shape (n,), int32, or None
        The returned plan as ``i -> permutation[i]`` when it is a permutation plan (uniform
        weights, n = m): the compact form of the plan, a valid start for a later solve.
    duals : numpy.ndarray of shape (n,), float64, or None
        Column duals of the solve's last linear step (uniform weights, n = m): the ``duals`` of a
        later solve of a nearby problem (e.g. the same layer pair one checkpoint later).
    bound_duals : numpy.ndarray of shape (n,), float64, or None
        Column duals of the TLB's assignment (uniform weights, n = m, ``bound=True``): the
        ``bound_duals`` of a later solve of a nearby problem.
    linear_steps, rounds, device_ops : int, float, int
        The device engine's counters (:func:`gwray.gw.batched.batched_gw`; 0 for the serial
        solver): the pair's linear steps (auction calls), the auction's bids per linear step
        (mean), and the operations its device batch dispatched (torch ops and kernel launches).
    runner_up_gap : float
        How settled the value is, next to the lower bound: (v₂ − value) / value, where v₂ is the
        lowest final value of any *other* start (after its polish): 0 when a second start
        reached the same value, large when one start alone found it (a wider search may then
        find lower); NaN when one start ran. Any engine that runs a portfolio of starts fills it
        the same way.
    """

    value: float
    lower_bound: float
    coupling: np.ndarray | None
    init: str
    iterations: int
    marginal_error: float
    seconds: float
    solver: str
    n: int
    m: int
    start_values: dict = field(default_factory=dict)
    total_iterations: int = 0
    polished: tuple = ()
    permutation: np.ndarray | None = None
    duals: np.ndarray | None = None
    bound_duals: np.ndarray | None = None
    linear_steps: int = 0
    rounds: float = 0.0
    device_ops: int = 0
    runner_up_gap: float = float("nan")

    def record(self) -> dict:
        """DESIGN.md's pair-record fields (gw, lower_bound, init, iterations, ..., n, solver,
        runner_up_gap)."""
        return {"gw": float(self.value), "lower_bound": float(self.lower_bound), "init": self.init,
                "iterations": int(self.iterations), "marginal_error": float(self.marginal_error),
                "seconds": float(self.seconds), "n": int(self.n), "solver": self.solver,
                "runner_up_gap": float(self.runner_up_gap)}



_BLAS: ThreadpoolController | None = None
_POLISH_WITHIN = 2.0  # polish=k: polish starts whose CG value is within 2x the best value
_EXACT_WITHIN = 1.01  # a non-permutation end this close to the best gets its exact value


def _polish(P: Problem, perm, A, max_iter: int, tol: float, swap_rounds: int):
    """Alternate swap search and CG from the permutation ``perm`` (A = C1 T C2 of its plan) until
    the permutation is both swap-stable and CG-stationary.

    Returns (T, permutation or None, iterations) or None when the swap search finds nothing."""
    its, out = 0, None
    # W = C1 C2[σ][:, σ] is A's columns in σ order, times n: the swap search needs no matmul
    W = A[:, perm] * P.n
    while True:
        perm, changed, W = swap_search(P.X1, P.X2, perm, swap_rounds, W)
        if not changed:
            return out
        T, A, _, k, after = cg(P, None, P.perm_gradient(perm, W), max_iter, tol, perm=perm)
        its += k
        out = (T, after, its)
        if after is None:
            return out
        if not np.array_equal(after, perm):  # CG moved: W of its permutation (no matmul)
            perm, W = after, A[:, after] * P.n
        # else the swap search stopped at its round limit, not at a swap-stable plan: go on


def gromov_wasserstein(C1, C2, p=None, q=None, *, aligned: bool = False,
                       starts=DEFAULT_STARTS, max_iter: int = 200, tol: float = 1e-9,
                       keep_coupling: bool = True, seed: int = 0, bound: bool = True,
                       swap_rounds: int = 30, prune: float | None = None, polish: int | None = None,
                       blas_threads: int | None = 1, search_dtype: str = "float32",
                       layer_data: tuple[LayerSummary, LayerSummary] | None = None,
                       duals=None, bound_duals=None) -> GWResult:
    """Square-loss GW between two cost matrices, best of several conditional-gradient starts.

    Parameters
    ----------
    C1 : array-like or torch.Tensor, shape (n, n)
        Symmetric intra-layer costs of the first layer (e.g. :func:`gwray.gw.costs.cost_matrix`).
    C2 : array-like or torch.Tensor, shape (m, m)
        Symmetric intra-layer costs of the second layer.
    p, q : array-like, shapes (n,) and (m,), optional
        Sample weights summing to 1 (uniform when omitted).
    aligned : bool
        Row i of both layers is the same probe sample: the identity coupling is feasible and is
        used as a start (needs n = m and p = q).
    starts : sequence
        Any of "identity" and "mixed" (½ identity + ½ product, POT users' near-identity start;
        both only used when ``aligned``), "product", "random:K" (K random vertices),
        "random:auto" (:func:`gwray.gw.starts.auto_random` random vertices: 24 up to n = 256,
        none from n = 1,024), "entropic" (entropic GW by ε-scaling, rounded to a vertex: it finds
        distant layers' basins without alignment), (n, m) arrays (warm-start couplings, rounded
        to feasibility) and (n,) integer permutations ``i -> s[i]`` (a permutation plan, n = m;
        e.g. a previous result's ``permutation``); given starts are named "given", "given:1",
        ... in order and run first (then "identity"). The best final plan wins.
    max_iter, tol : int, float
        Per start: at most ``max_iter`` CG iterations; stop when the objective decreases by less
        than ``tol`` (absolute) or ``tol`` relative to its value, as POT does.
    keep_coupling, seed, bound : bool, int, bool
        Return the (n, m) plan; seed of the random starts; compute the lower bound.
    swap_rounds : int
        Uniform weights, n = m: each polished CG end (a permutation) gets rounds of pairwise-swap
        local search, up to this many before CG resumes, alternating until the plan is both
        swap-stable and CG-stationary; 0 turns it off (plain CG, as POT).
    prune : float or None
        Abandon a start whose first step (O(n²), no matmul) ends above ``prune`` × the best CG end
        so far. None (default) runs every start's CG to convergence: on a trained toy net's
        neighbouring layers the product start begins 10x above the identity's end and ends 15 %
        below it, so no first-step screen is safe.
    polish : int or None
        None (default): the swap search polishes every start's CG end (starts that ended at the
        same permutation share one search). k: only the k best CG ends within 2x the best (a
        screen that can skip the end that would win after polishing).
    blas_threads : int or None
        BLAS threads during the solve. 1 (default) suits Ray workers that own one core each and
        loaded machines (a 2-thread 256² matmul measured 95 ms vs 0.5 ms single-threaded under
        load); None keeps the library's setting.
    search_dtype : {"float32", "float64"}
        Precision of the search (matmuls, assignments, swap gains). float32 is about twice as
        fast; every reported value is recomputed in float64 from its plan either way.
    layer_data : (LayerSummary, LayerSummary), optional
        :func:`gwray.gw.bounds.layer_summary` of C1 and C2, when the caller caches it per layer
        (uniform weights only); computed here otherwise.
    duals, bound_duals : array-like of shape (n,), optional
        Uniform weights, n = m: a previous result's ``duals`` / ``bound_duals`` for a nearby
        problem (warm starts across checkpoints). ``duals`` make the first linear step a
        warm-started assignment instead of a network-simplex EMD (best when the first start is
        that result's ``permutation``); ``bound_duals`` do the same for the TLB, reported then as
        its dual objective (:func:`gwray.gw.bounds.assignment_bound`, a valid bound for any
        duals). Ignored otherwise; neither changes which plans the search can reach.

    Returns
    -------
    GWResult
        ``value`` is the float64 objective of an exactly feasible plan (marginal error ≤ 1e-8).

    Raises
    ------
    GwrayInputError
        Bad costs or weights, an unknown start, ``aligned`` with n ≠ m or p ≠ q, or a bad
        ``search_dtype``.
    """
    t0 = time.perf_counter()
    if search_dtype not in ("float32", "float64"):
        raise GwrayInputError(f"search_dtype must be 'float32' or 'float64', got {search_dtype!r}")
    args = (C1, C2, p, q, aligned, starts, max_iter, tol, keep_coupling, seed, bound, swap_rounds,
            prune, polish, np.dtype(search_dtype), layer_data, duals, bound_duals, t0)
    if blas_threads is None:
        return _solve(*args)
    global _BLAS
    _BLAS = _BLAS or ThreadpoolController()  # scanning the loaded libraries costs ~20 ms: once
    with _BLAS.limit(limits=blas_threads, user_api="blas"):
        return _solve(*args)


def runner_up_gap(values: dict, winner: str) -> float:
    """:attr:`GWResult.runner_up_gap` from each start's final value (``start_values``)."""
    others = [v for k, v in values.items() if k != winner]
    if not others:
        return float("nan")
    best = values[winner]
    return (min(others) - best) / best if best > 0 else 0.0  # GW >= 0: a zero value is optimal


def _lower_bound(P: Problem, layer_data, bound_duals):
    """(max(TLB, eigenvalue bound), the TLB assignment's column duals or None) — the eigenvalue
    bound and the duals only for uniform weights and n = m."""
    if not (_is_uniform(P.p) and _is_uniform(P.q)):
        return ot_value(w2_cost(P.C1, P.C2, P.p, P.q), P.p, P.q), None
    S1, S2 = layer_data or (layer_summary(P.C1), layer_summary(P.C2))
    if S1.sorted_rows.shape != P.C1.shape or S2.sorted_rows.shape != P.C2.shape:
        raise GwrayInputError("layer_data does not match C1 and C2 (shapes differ)")
    G = w2_cost_sorted(S1.sorted_rows, S2.sorted_rows)
    if not P.lap:
        return ot_value(G, P.p, P.q), None
    if bound_duals is None:
        tlb, v = ot_value(G, P.p, P.q, duals=True)
    else:
        tlb, v = assignment_bound(G, bound_duals)
    return max(tlb, eigen_bound(S1, S2)), v


def _duals(v, n: int, name: str) -> np.ndarray:
    v = np.array(v, dtype=np.float64)
    if v.shape != (n,) or not np.all(np.isfinite(v)):
        raise GwrayInputError(f"{name} must be ({n},) finite floats, got {v.shape}")
    return v


def _solve(C1, C2, p, q, aligned, starts, max_iter, tol, keep_coupling, seed, bound, swap_rounds,
           prune, polish, dtype, layer_data, duals, bound_duals, t0) -> GWResult:
    A1, A2 = check_cost(C1, "C1"), check_cost(C2, "C2")
    p, q = _weights(p, A1.shape[0], "p"), _weights(q, A2.shape[0], "q")
    if aligned and A1.shape != A2.shape:
        raise GwrayInputError(f"aligned=True needs n == m, got C1 {A1.shape} and C2 {A2.shape}")
    if aligned and not np.allclose(p, q, rtol=0, atol=1e-12):
        raise GwrayInputError("aligned=True needs p == q (the identity coupling must be feasible)")
    if max_iter < 0:
        raise GwrayInputError(f"max_iter must be >= 0, got {max_iter}")
    if polish is not None and polish < 0:
        raise GwrayInputError(f"polish must be >= 0, got {polish}")
    P = Problem(A1, A2, p, q, dtype)
    if P.lap and duals is not None:
        P.duals = _duals(duals, P.n, "duals")
    if P.lap and bound_duals is not None:
        bound_duals = _duals(bound_duals, P.n, "bound_duals")
    starts = [starts] if isinstance(starts, str) or hasattr(starts, "shape") else list(starts)
    if not starts:
        raise GwrayInputError("starts is empty: name at least one start (e.g. 'product')")
    starts = expand_auto(starts, P.n)
    if not aligned:  # identity and mixed are no couplings of unaligned samples; product stands in
        starts = [s for s in starts if not (isinstance(s, str) and s in ALIGNED_ONLY)]
    starts = starts or ["product"]
    # given plans (warm starts: their first assignment is the one ``duals`` are closest to) run
    # first, then the identity, the strongest named start on aligned layers: their values prune
    starts.sort(key=lambda s: 0 if not isinstance(s, str) else 1 if s == "identity" else 2)
    values, total, ends, best = {}, 0, [], np.inf
    for start, T0, A, first, perm in iter_starts(P, starts, seed):
        cutoff = np.inf if prune is None else prune * best
        T0, A, v, k, perm = cg(P, T0, A, max_iter, tol, first, cutoff, perm)
        total += k
        if perm is not None or v <= _EXACT_WITHIN * best:
            v = P.exact_value(T0, perm)
        values[start], best = v, min(best, v)
        ends.append([v, start, k, T0, A, perm])
    ends.sort(key=lambda e: e[0])
    # every end is polished by default: a CG end's rank says little about its polish's (polishing
    # only the best CG end ended above polishing them all on 8 of 21 MiniLM and 14 of 60 toy-net
    # pairs, by up to 9.5 %, n = 256); ``polish=k`` polishes the k best CG ends within 2x the best
    names = []  # the starts polished
    if swap_rounds > 0 and max_iter > 0:
        polished = []  # (CG end, its polish): starts that ended at the same permutation (a warm
        # plan and the start it came from, often) share one swap search
        for end in ends if polish is None else ends[:polish]:
            v, start, k, _, A, perm = end
            if perm is None or (polish is not None and v > _POLISH_WITHIN * ends[0][0]):
                continue
            twin = [out for other, out in polished if np.array_equal(perm, other)]
            names.append(start)
            out = twin[0] if twin else _polish(P, perm, A, max_iter, tol, swap_rounds)
            if not twin:
                polished.append((perm, out))
                total += out[2] if out is not None else 0
            if out is not None:
                better = P.exact_value(out[0], out[1])
                if better < v:  # float32 search: keep the better plan by its exact value
                    end[:] = [better, start, k + out[2], out[0], None, out[1]]
                    values[start] = better
    value, name, its, T, _, perm = min(ends, key=lambda e: e[0])
    T = P.dense(perm) if T is None else T
    lb = float("nan")
    if bound:
        lb, bound_duals = _lower_bound(P, layer_data, bound_duals)
        lb = min(max(lb, 0.0), value)
    return GWResult(value=value, lower_bound=lb, coupling=T if keep_coupling else None, init=name,
                    runner_up_gap=runner_up_gap(values, name),
                    iterations=its, marginal_error=P.marginal_error(T),
                    seconds=time.perf_counter() - t0, solver="cg-lap" if P.lap else "cg-emd",
                    n=P.n, m=P.m, start_values=values, total_iterations=total,
                    polished=tuple(names),
                    permutation=as_permutation(T, P.n) if P.lap else None,
                    duals=P.duals if P.lap else None, bound_duals=bound_duals if bound else None)
