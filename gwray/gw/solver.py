"""Square-loss Gromov-Wasserstein by conditional gradient (Frank-Wolfe), multi-start.

Objective (POT's convention): GW(T) = Σ_ijkl (C1_ik − C2_jl)² T_ij T_kl over couplings T of (p, q).
For symmetric C1, C2 and feasible T this is  const − 2⟨T, A⟩  with  A = C1 T C2  and
const = pᵀ(C1∘C1)p + qᵀ(C2∘C2)q, so the gradient is affine in T and A is carried between iterations:

* linear step: maximise ⟨A, S⟩ over couplings, an exact network-simplex EMD (a permutation
  vertex when p, q are uniform and n = m: a linear assignment);
* B = C1 S C2 is the iteration's only n³ product: for a permutation S = P/n it is C1 @ C2[σ] / n,
  for an EMD vertex (≤ n + m − 1 non-zeros) it is C1 @ (S @ C2) with a sparse S;
* exact line search: along T + α(S − T) the objective is a quadratic in α whose coefficients need
  only ⟨S, A⟩, ⟨S, B⟩ and ⟨T, A⟩ (⟨T, B⟩ = ⟨S, A⟩ by symmetry); then A ← A + α(B − A).

For distance-like costs GW is concave on the polytope, so CG walks vertex to vertex and stops at
a permutation that no single assignment step improves but a pairwise swap often does: a swap
search then alternates with CG. Every start ends at an exactly feasible plan, so ``value`` is a
true upper bound on GW; the TLB (:mod:`gwray.gw.bounds`) gives the lower bound.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import ot
from scipy.sparse import csr_matrix
from threadpoolctl import ThreadpoolController

from gwray.errors import GwrayInputError
from gwray.gw.assignment import linear_assignment
from gwray.gw.bounds import _is_uniform, _weights, ot_value, round_to_coupling, w2_cost
from gwray.gw.costs import check_cost
from gwray.gw.local_search import swap_search


@dataclass
class GWResult:
    """The outcome of one GW solve.

    Attributes
    ----------
    value : float
        GW objective of the returned feasible coupling (an upper bound on the GW minimum).
    lower_bound : float
        Certified lower bound (TLB, clipped to ≤ value); NaN when not computed.
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
        Final objective of every start that ran (when pruned, of the last plan it reached).
    permutation : numpy.ndarray of shape (n,), int32, or None
        The returned plan as ``i -> permutation[i]`` when it is a permutation plan (uniform
        weights, n = m): the compact form of the plan, a valid start for a later solve.
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
    permutation: np.ndarray | None = None

    def record(self) -> dict:
        """DESIGN.md's pair-record fields (gw, lower_bound, init, iterations, ..., n, solver)."""
        return {"gw": float(self.value), "lower_bound": float(self.lower_bound), "init": self.init,
                "iterations": int(self.iterations), "marginal_error": float(self.marginal_error),
                "seconds": float(self.seconds), "n": int(self.n), "solver": self.solver}


class _Problem:
    """C1, C2, weights and the linear-step oracle shared by every start."""

    def __init__(self, C1, C2, p, q):
        self.C1, self.C2, self.p, self.q = C1, C2, p, q
        self.n, self.m = C1.shape[0], C2.shape[0]
        self.lap = self.n == self.m and _is_uniform(p) and _is_uniform(q)
        self.const = float(p @ (C1 * C1) @ p + q @ (C2 * C2) @ q)
        self.duals, self.last = None, None  # the last assignment's column duals and permutation

    def vertex(self, A):
        """argmax over couplings of ⟨A, S⟩ as (rows, cols, vals) of the sparse vertex S.

        Uniform weights, n = m (a permutation vertex): the first call is a network-simplex EMD
        with row and column means taken out (same argmax; 2-3x faster than without, 5x faster
        than linear_sum_assignment on real layer gradients), whose column potentials then
        warm-start an exact shortest-augmenting-path assignment for every later call
        (:mod:`gwray.gw.assignment`, ~10x faster again). Otherwise an exact EMD."""
        if self.lap and self.duals is not None:
            cols, self.duals = linear_assignment(A, self.duals, self.last)
            self.last = cols
            return np.arange(self.n), cols, np.full(self.n, 1.0 / self.n)
        col_means = A.mean(axis=0, keepdims=True)
        M = A.mean(axis=1, keepdims=True) + col_means - A
        M -= M.min()
        S, log = ot.emd(self.p, self.q, M, numItermax=max(100_000, 50 * self.n * self.m), log=True)
        rows, cols = np.nonzero(S)
        if not self.lap:
            return rows, cols, S[rows, cols]
        self.duals = log["v"] - col_means[0]  # the potentials of −A, see gwray.gw.assignment
        self.last = cols if rows.size == self.n else None  # its edges are tight: kept as they are
        return self.vertex(A)

    def times_c(self, rows, cols, vals):
        """B = C1 S C2 for the sparse plan S: one n×n×m matmul."""
        if self.lap:  # S = P/n: S C2 is C2's rows permuted (cols[i] is σ(i)), divided by n
            return (self.C1 @ self.C2[cols]) * vals[0]
        S = csr_matrix((vals, (rows, cols)), shape=(self.n, self.m))
        return self.C1 @ np.asarray(S @ self.C2)

    def perm_plan(self, cols, W=None):
        """T = P/n and A = C1 T C2 for the permutation i -> cols[i] (W = C1 C2[σ][:, σ] if known)."""
        T = np.zeros((self.n, self.n))
        T[np.arange(self.n), cols] = 1.0 / self.n
        if W is None:
            return T, (self.C1 @ self.C2[cols]) / self.n
        A = np.empty_like(W)
        A[:, cols] = W / self.n  # A[:, σ(j)] = W[:, j] / n
        return T, A

    def objective(self, T, A) -> float:
        return max(self.const - 2.0 * float(np.vdot(T, A)), 0.0)

    def marginal_error(self, T) -> float:
        return float(max(np.abs(T.sum(1) - self.p).sum(), np.abs(T.sum(0) - self.q).sum()))


def _line_search(tA: float, sA: float, sB: float):
    """Exact step along T + α(S − T) from ⟨T, A⟩, ⟨S, A⟩ and ⟨S, B⟩ (⟨T, B⟩ = ⟨S, A⟩).

    Returns α in [0, 1], ⟨S − T, A⟩ and ⟨S − T, C1 (S − T) C2⟩."""
    dA = sA - tA                     # ⟨S − T, A⟩
    dBA = sB - 2.0 * sA + tA         # ⟨S − T, C1 (S − T) C2⟩
    a, b = -2.0 * dBA, -4.0 * dA     # value(α) = value + b α + a α²
    if a > 0:
        return min(1.0, max(0.0, -b / (2.0 * a))), dA, dBA
    return (1.0 if a + b < 0 else 0.0), dA, dBA


def _cg(P: _Problem, T, A, max_iter: int, tol: float, first=None, cutoff=np.inf, perm=None):
    """Conditional gradient from the feasible plan T (with A = C1 T C2).

    ``first`` is a known linear-step vertex for the first iteration (skips the oracle); the start
    is abandoned once its value exceeds ``cutoff``; ``perm`` says T is the permutation plan of
    ``perm``. Returns T, A, value, iterations and that permutation at the end (None if T is not
    a permutation plan).
    """
    tA = float(np.vdot(T, A))
    value, it = P.const - 2.0 * tA, 0
    if first is not None and P.lap and cutoff < np.inf and max_iter > 0:
        # for a permutation vertex ⟨S, C1 S C2⟩ = Σ C1 ∘ C2[σ][:, σ] / n², O(n²): a start whose
        # first step cannot get under the cutoff is dropped before that step's matmul
        rows, cols, vals = first
        sB = float(np.vdot(P.C1, P.C2[np.ix_(cols, cols)])) / P.n ** 2
        alpha, dA, dBA = _line_search(tA, float(vals @ A[rows, cols]), sB)
        if P.const - 2.0 * (tA + 2.0 * alpha * dA + alpha * alpha * dBA) > cutoff:
            return T, A, P.objective(T, A), 1, perm
    while it < max_iter:
        it += 1
        rows, cols, vals = first if (it == 1 and first is not None) else P.vertex(A)
        B = P.times_c(rows, cols, vals)
        alpha, dA, dBA = _line_search(tA, float(vals @ A[rows, cols]), float(vals @ B[rows, cols]))
        if alpha <= 0.0:
            break
        if alpha >= 1.0:
            T, A = np.zeros_like(T), B
            perm = cols if P.lap else None
        else:
            T *= 1.0 - alpha
            A *= 1.0 - alpha
            A += alpha * B
            perm = None
        T[rows, cols] += alpha * vals
        tA += 2.0 * alpha * dA + alpha * alpha * dBA
        new = P.const - 2.0 * tA
        delta = abs(value - new)
        value = new
        if delta < tol or (value != 0.0 and delta / abs(value) < tol) or value > cutoff:
            break
    return T, A, P.objective(T, A), it, perm


def _polish(P: _Problem, perm, A, max_iter: int, tol: float, swap_rounds: int):
    """Alternate swap search and CG from the permutation ``perm`` (A = C1 T C2 of its plan) while
    either improves.

    Returns (T, value, iterations) or None when the swap search finds nothing."""
    its, out = 0, None
    # W = C1 C2[σ][:, σ] is A's columns in σ order, times n: the swap search needs no matmul
    W = A[:, perm] * P.n
    while True:
        perm, changed, W = swap_search(P.C1, P.C2, perm, swap_rounds, W)
        if not changed:
            return out
        T, A = P.perm_plan(perm, W)
        T, A, value, k, after = _cg(P, T, A, max_iter, tol, perm=perm)
        its += k
        out = (T, value, its)
        if after is None or np.array_equal(after, perm):
            return out
        perm = after
        W = A[:, perm] * P.n


def _entropic_plan(P: _Problem, outer: int = 10, inner: int = 200) -> np.ndarray:
    """Entropic GW (mirror descent, Peyré et al. 2016; Sinkhorn with ε at 5 % of the gradient's
    range, so exp() neither under- nor overflows), rounded to feasibility: a smooth warm start."""
    T, A = np.outer(P.p, P.q), np.outer(P.C1 @ P.p, P.C2 @ P.q)
    for _ in range(outer):
        M = 2.0 * A
        eps = 0.05 * (float(M.max() - M.min()) or 1.0)
        K = np.exp((M - M.max()) / eps)
        u, v = np.ones(P.n), np.ones(P.m)
        for k in range(inner):
            u = P.p / np.maximum(K @ v, 1e-300)
            v = P.q / np.maximum(K.T @ u, 1e-300)
            if k % 10 == 9 and np.abs(u * (K @ v) - P.p).sum() < 1e-9:
                break
        T = u[:, None] * K * v[None, :]
        A = P.C1 @ (T @ P.C2)
    return round_to_coupling(T, P.p, P.q)


def _starts(P: _Problem, starts: list, seed: int):
    """Yield (name, T, A = C1 T C2, first vertex or None, permutation or None) for every start."""
    rng = np.random.default_rng(seed)
    given = 0
    for s in starts:
        if not isinstance(s, str) and np.ndim(s) == 1:  # a permutation i -> s[i]: no dense plan
            cols = _check_permutation(s, P.n, P.m)
            T, A = P.perm_plan(cols)
            if not P.lap:  # non-uniform weights: the nearest coupling to that matching
                T = round_to_coupling(T, P.p, P.q)
                A, cols = P.C1 @ (T @ P.C2), None
            yield ("given" if given == 0 else f"given:{given}"), T, A, None, cols
            given += 1
        elif not isinstance(s, str):
            T = np.asarray(s.detach().cpu().numpy() if hasattr(s, "detach") else s, dtype=np.float64)
            if T.shape != (P.n, P.m):
                raise GwrayInputError(f"starts: coupling shape {T.shape} != ({P.n}, {P.m})")
            if not np.all(np.isfinite(T)) or np.any(T < 0) or not T.any():
                raise GwrayInputError("starts: a given coupling must be finite, non-negative, non-zero")
            T = round_to_coupling(T, P.p, P.q)
            rows, cols = np.nonzero(T)
            perm = cols if P.lap and rows.size == P.n and np.all(T[rows, cols] == 1.0 / P.n) else None
            yield ("given" if given == 0 else f"given:{given}"), T, P.C1 @ (T @ P.C2), None, perm
            given += 1
        elif s == "identity":
            perm = np.arange(P.n) if P.lap else None
            yield "identity", np.diag(P.p), (P.C1 * P.p) @ P.C2, None, perm
        elif s == "product":
            u, v = P.C1 @ P.p, P.C2 @ P.q
            first = None
            if P.lap:  # the gradient is rank one: the best assignment pairs the sorted orders
                cols = np.empty(P.n, dtype=np.int64)
                cols[np.argsort(u)] = np.argsort(v)
                first = (np.arange(P.n), cols, np.full(P.n, 1.0 / P.n))
            yield "product", np.outer(P.p, P.q), np.outer(u, v), first, None
        elif s == "entropic":
            T = _entropic_plan(P)
            yield "entropic", T, P.C1 @ (T @ P.C2), None, None
        elif s.startswith("random:"):
            k = s.split(":", 1)[1]
            if not k.isdigit() or int(k) < 1:
                raise GwrayInputError(f"starts: {s!r} must be 'random:K' with an integer K >= 1")
            k = int(k)
            for r in range(k):
                if P.lap:
                    cols = rng.permutation(P.n)
                    rows, vals = np.arange(P.n), np.full(P.n, 1.0 / P.n)
                else:  # a random vertex of the transport polytope
                    rows, cols, vals = P.vertex(rng.random((P.n, P.m)))
                T = np.zeros((P.n, P.m))
                T[rows, cols] = vals
                yield f"random:{r}", T, P.times_c(rows, cols, vals), None, (cols if P.lap else None)
        else:
            raise GwrayInputError(f"starts: unknown start {s!r} (identity, product, random:K, "
                                  "entropic or an (n, m) array)")


def _check_permutation(s, n: int, m: int) -> np.ndarray:
    cols = np.asarray(s)
    if n != m or cols.shape != (n,) or cols.dtype.kind not in "iu":
        raise GwrayInputError(f"starts: a permutation start must be ({n},) integers with n == m "
                              f"(got {cols.shape} {cols.dtype}, m = {m})")
    cols = cols.astype(np.int64)
    if not np.array_equal(np.sort(cols), np.arange(n)):
        raise GwrayInputError("starts: a 1-D start must be a permutation of 0..n-1")
    return cols


def _as_permutation(T: np.ndarray, n: int) -> np.ndarray | None:
    """``cols`` with T = P_cols / n when T is a permutation plan, else None."""
    rows, cols = np.nonzero(T)
    if rows.size != n or not np.array_equal(rows, np.arange(n)) or np.unique(cols).size != n:
        return None
    return cols.astype(np.int32)


_BLAS: ThreadpoolController | None = None
_POLISH_WITHIN = 2.0  # polish starts whose CG value is within 2x the best value so far


def gromov_wasserstein(C1, C2, p=None, q=None, *, aligned: bool = False,
                       starts=("identity", "product"), max_iter: int = 200, tol: float = 1e-9,
                       keep_coupling: bool = True, seed: int = 0, bound: bool = True,
                       swap_rounds: int = 30, prune: float | None = 2.0,
                       blas_threads: int | None = 1) -> GWResult:
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
        Any of "identity" (only used when ``aligned``), "product", "random:K" (K random vertices),
        "entropic" (entropic GW, rounded to feasibility), (n, m) arrays (warm-start couplings,
        rounded to feasibility) and (n,) integer permutations ``i -> s[i]`` (a permutation plan,
        n = m; e.g. a previous result's ``permutation``); given starts are named "given",
        "given:1", ... in order. The best final plan wins.
    max_iter, tol : int, float
        Per start: at most ``max_iter`` CG iterations; stop when the objective decreases by less
        than ``tol`` (absolute) or ``tol`` relative to its value, as POT does.
    keep_coupling, seed, bound : bool, int, bool
        Return the (n, m) plan; seed of the random starts; compute the TLB lower bound.
    swap_rounds : int
        Uniform weights, n = m: every start whose CG ends at a permutation within 2x the best
        value so far gets up to this many rounds of pairwise-swap local search, then CG resumes
        (repeated while either improves); 0 turns it off (plain CG, as POT).
    prune : float or None
        Abandon a start once its value exceeds ``prune`` × the best (polished) value so far. With
        ``aligned`` the identity runs first; every start is polished before the next begins, so
        the product start is usually dropped after its first, matmul-only iteration (on the
        bench's layer pairs it never ends below a polished identity when it starts above 2x of
        it). None runs every start to convergence.
    blas_threads : int or None
        BLAS threads during the solve. 1 (default) suits Ray workers that own one core each and
        loaded machines (a 2-thread 256² matmul measured 95 ms vs 0.5 ms single-threaded under
        load); None keeps the library's setting.

    Returns
    -------
    GWResult
        ``value`` is the objective of an exactly feasible plan (marginal error ≤ 1e-8).

    Raises
    ------
    GwrayInputError
        Bad costs or weights, an unknown start, or ``aligned`` with n ≠ m or p ≠ q.
    """
    t0 = time.perf_counter()
    if blas_threads is None:
        return _solve(C1, C2, p, q, aligned, starts, max_iter, tol, keep_coupling, seed, bound,
                      swap_rounds, prune, t0)
    global _BLAS
    _BLAS = _BLAS or ThreadpoolController()  # scanning the loaded libraries costs ~20 ms: once
    with _BLAS.limit(limits=blas_threads, user_api="blas"):
        return _solve(C1, C2, p, q, aligned, starts, max_iter, tol, keep_coupling, seed, bound,
                      swap_rounds, prune, t0)


def _solve(C1, C2, p, q, aligned, starts, max_iter, tol, keep_coupling, seed, bound, swap_rounds,
           prune, t0) -> GWResult:
    A1, A2 = check_cost(C1, "C1"), check_cost(C2, "C2")
    p, q = _weights(p, A1.shape[0], "p"), _weights(q, A2.shape[0], "q")
    if aligned and A1.shape != A2.shape:
        raise GwrayInputError(f"aligned=True needs n == m, got C1 {A1.shape} and C2 {A2.shape}")
    if aligned and not np.allclose(p, q, rtol=0, atol=1e-12):
        raise GwrayInputError("aligned=True needs p == q (the identity coupling must be feasible)")
    if max_iter < 0:
        raise GwrayInputError(f"max_iter must be >= 0, got {max_iter}")
    P = _Problem(A1, A2, p, q)
    starts = [starts] if isinstance(starts, str) or hasattr(starts, "shape") else list(starts)
    if not starts:
        raise GwrayInputError("starts is empty: name at least one start (e.g. 'product')")
    if aligned:  # the identity is the strongest start on aligned layers: its value prunes the rest
        starts.sort(key=lambda s: not (isinstance(s, str) and s == "identity"))
    else:  # the identity is no coupling of unaligned samples; product stands in
        starts = [s for s in starts if not (isinstance(s, str) and s == "identity")] or ["product"]
    values, total = {}, 0
    value, name, its, T = np.inf, None, 0, None
    for start, T0, A, first, perm in _starts(P, starts, seed):
        cutoff = np.inf if prune is None else prune * value
        T0, A, v, k, perm = _cg(P, T0, A, max_iter, tol, first, cutoff, perm)
        total += k
        # swaps lower a CG end by up to ~10 % on layer pairs: polish only ends that could win
        if swap_rounds > 0 and max_iter > 0 and perm is not None and v <= _POLISH_WITHIN * value:
            out = _polish(P, perm, A, max_iter, tol, swap_rounds)
            if out is not None:
                T0, v, k = out[0], out[1], k + out[2]
                total += out[2]
        values[start] = v
        if v < value:
            value, name, its, T = v, start, k, T0
    lb = float("nan")
    if bound:
        lb = min(max(ot_value(w2_cost(A1, A2, p, q), p, q), 0.0), value)
    return GWResult(value=value, lower_bound=lb, coupling=T if keep_coupling else None, init=name,
                    iterations=its, marginal_error=P.marginal_error(T),
                    seconds=time.perf_counter() - t0, solver="cg-lap" if P.lap else "cg-emd",
                    n=P.n, m=P.m, start_values=values, total_iterations=total,
                    permutation=_as_permutation(T, P.n) if P.lap else None)
