"""One GW problem's state and its conditional-gradient (Frank-Wolfe) steps.

Objective (POT's convention): GW(T) = Σ_ijkl (C1_ik − C2_jl)² T_ij T_kl over couplings T of (p, q).
For symmetric C1, C2 and feasible T this is  const − 2⟨T, A⟩  with  A = C1 T C2  and
const = pᵀ(C1∘C1)p + qᵀ(C2∘C2)q, so the gradient is affine in T and A is carried between iterations:

* linear step (:meth:`Problem.vertex`): maximise ⟨A, S⟩ over couplings, an exact EMD (a
  permutation vertex when p, q are uniform and n = m: a linear assignment);
* B = C1 S C2 is the iteration's only n³ product (:meth:`Problem.times_c`): for a permutation
  S = P/n it is C1 @ C2[σ] / n, for an EMD vertex (≤ n + m − 1 non-zeros) C1 @ (S @ C2);
* exact line search (:func:`line_search`): along T + α(S − T) the objective is a quadratic in α
  whose coefficients need only ⟨S, A⟩, ⟨S, B⟩ and ⟨T, A⟩; then A ← A + α(B − A).

The search runs on copies of C1, C2 in ``search_dtype`` (float32 by default: BLAS is about twice
as fast and the assignment reads half the memory); every value the solver reports is recomputed
in float64 from the plan itself (:meth:`Problem.exact_value`), so the search precision can change
which plan is found, never the exactness of its value.
"""
from __future__ import annotations

import numpy as np
import ot
from scipy.sparse import csr_matrix

from gwray.gw.assignment import linear_assignment
from gwray.gw.bounds import _is_uniform


class Problem:
    """C1, C2 (float64, exact), their search-precision copies X1, X2, the weights and the
    linear-step oracle shared by every start.

    Parameters
    ----------
    C1, C2 : (n, n), (m, m) symmetric float64 ndarrays
    p, q : (n,), (m,) probability weights
    search_dtype : numpy dtype, float32 or float64
    """

    def __init__(self, C1, C2, p, q, search_dtype=np.float32):
        self.C1, self.C2, self.p, self.q = C1, C2, p, q
        self.X1, self.X2 = C1.astype(search_dtype, copy=False), C2.astype(search_dtype, copy=False)
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
        col_means = A.mean(axis=0, keepdims=True, dtype=np.float64)
        M = A.mean(axis=1, keepdims=True, dtype=np.float64) + col_means - A
        M -= M.min()
        S, log = ot.emd(self.p, self.q, M, numItermax=max(100_000, 50 * self.n * self.m), log=True)
        rows, cols = np.nonzero(S)
        if not self.lap:
            return rows, cols, S[rows, cols]
        self.duals = log["v"] - col_means[0]  # the potentials of −A, see gwray.gw.assignment
        self.last = cols if rows.size == self.n else None  # its edges are tight: kept as they are
        return self.vertex(A)

    def times_c(self, rows, cols, vals):
        """B = C1 S C2 for the sparse plan S: one n×n×m matmul (search precision)."""
        if self.lap:  # S = P/n: S C2 is C2's rows permuted (cols[i] is σ(i)), divided by n
            B = self.X1 @ self.X2[cols]
            B *= vals[0]
            return B
        S = csr_matrix((vals.astype(self.X2.dtype), (rows, cols)), shape=(self.n, self.m))
        return self.X1 @ np.asarray(S @ self.X2)

    def dense(self, cols) -> np.ndarray:
        """The (n, n) float64 plan T = P/n of the permutation i -> cols[i]."""
        T = np.zeros((self.n, self.n))
        T[np.arange(self.n), cols] = 1.0 / self.n
        return T

    def perm_gradient(self, cols, W=None):
        """A = C1 T C2 for T = P/n, the permutation i -> cols[i] (from W = C1 C2[σ][:, σ] if known)."""
        if W is None:
            return self.times_c(None, cols, np.full(1, 1.0 / self.n))
        A = np.empty_like(W)
        A[:, cols] = W / self.n  # A[:, σ(j)] = W[:, j] / n
        return A

    def inner(self, T, A, perm=None) -> float:
        """⟨T, A⟩ in float64 (O(n) when T is the permutation plan of ``perm``)."""
        if perm is not None:
            return float(A[np.arange(self.n), perm].sum(dtype=np.float64)) / self.n
        return float(np.vdot(T, A))

    def exact_value(self, T, perm=None) -> float:
        """GW(T) in float64 from the plan alone: Σ (C1 − C2[σ][:, σ])² / n² (O(n²), no
        cancellation) for the permutation plan of ``perm``, else const − 2⟨T, C1 T C2⟩."""
        if perm is not None:
            return permutation_value(self.C1, self.C2, perm)
        S = csr_matrix(T)
        A = self.C1 @ np.asarray(S @ self.C2) if S.nnz < T.size // 4 else self.C1 @ (T @ self.C2)
        return max(self.const - 2.0 * float(np.vdot(T, A)), 0.0)

    def marginal_error(self, T) -> float:
        return float(max(np.abs(T.sum(1) - self.p).sum(), np.abs(T.sum(0) - self.q).sum()))


def permutation_value(C1: np.ndarray, C2: np.ndarray, perm: np.ndarray) -> float:
    """GW of the permutation plan i -> perm[i] (uniform weights): Σ (C1 − C2[σ][:, σ])² / n² in
    float64, O(n²) and free of cancellation. C1, C2: (n, n) float64; perm: (n,) ints."""
    D = C2[np.ix_(perm, perm)]
    np.subtract(C1, D, out=D)
    # einsum, not BLAS: callers outside the solver's one-BLAS-thread limit (warm.py) would get a
    # multi-threaded dot, ~10x slower than this on a loaded machine
    return float(np.einsum("ij,ij->", D, D)) / C1.shape[0] ** 2


def line_search(tA: float, sA: float, sB: float):
    """Exact step along T + α(S − T) from ⟨T, A⟩, ⟨S, A⟩ and ⟨S, B⟩ (⟨T, B⟩ = ⟨S, A⟩).

    Returns α in [0, 1], ⟨S − T, A⟩ and ⟨S − T, C1 (S − T) C2⟩."""
    dA = sA - tA                     # ⟨S − T, A⟩
    dBA = sB - 2.0 * sA + tA         # ⟨S − T, C1 (S − T) C2⟩
    a, b = -2.0 * dBA, -4.0 * dA     # value(α) = value + b α + a α²
    if a > 0:
        return min(1.0, max(0.0, -b / (2.0 * a))), dA, dBA
    return (1.0 if a + b < 0 else 0.0), dA, dBA


def first_step_value(P: Problem, T, A, first, perm=None) -> float:
    """The (search-precision) value after one line-searched step towards the permutation vertex
    ``first``, in O(n²) and without a matmul: ⟨S, C1 S C2⟩ = Σ C1 ∘ C2[σ][:, σ] / n²."""
    rows, cols, vals = first
    sB = float(np.vdot(P.X1, P.X2[np.ix_(cols, cols)])) / P.n ** 2
    tA = P.inner(T, A, perm)
    alpha, dA, dBA = line_search(tA, float(vals @ A[rows, cols]), sB)
    return P.const - 2.0 * (tA + 2.0 * alpha * dA + alpha * alpha * dBA)


def cg(P: Problem, T, A, max_iter: int, tol: float, first=None, cutoff=np.inf, perm=None):
    """Conditional gradient from the feasible plan T (with A = C1 T C2).

    ``first`` is a known linear-step vertex for the first iteration (skips the oracle); the start
    is abandoned once its value exceeds ``cutoff``; ``perm`` says T is the permutation plan of
    ``perm``. Returns T, A, search value, iterations and that permutation at the end (None if T
    is not a permutation plan; T is None when it is one, see :meth:`Problem.dense`).
    """
    tA = P.inner(T, A, perm)
    value, it = P.const - 2.0 * tA, 0
    if P.lap and cutoff < np.inf and max_iter > 0:
        # the screen: a start whose first step cannot get under the cutoff is dropped before
        # that step's matmul (its vertex is known, or one warm assignment away)
        first = P.vertex(A) if first is None else first
        if first_step_value(P, T, A, first, perm) > cutoff:
            return T, A, value, 1, perm
    while it < max_iter:
        it += 1
        rows, cols, vals = first if (it == 1 and first is not None) else P.vertex(A)
        if perm is not None and np.array_equal(cols, perm):
            break  # the plan is its own best vertex: a stationary point, no step (nor matmul)
        B = P.times_c(rows, cols, vals)
        alpha, dA, dBA = line_search(tA, float(vals @ A[rows, cols]), float(vals @ B[rows, cols]))
        if alpha <= 0.0:
            break
        if alpha >= 1.0:  # a vertex: a permutation plan stays implicit (no n² fill per step)
            A, perm, T = B, (cols if P.lap else None), (None if P.lap else np.zeros_like(T))
            if T is not None:
                T[rows, cols] = vals
        else:
            T = P.dense(perm) if T is None else T
            T *= 1.0 - alpha
            A *= 1.0 - alpha
            A += alpha * B
            T[rows, cols] += alpha * vals
            perm = None
        tA += 2.0 * alpha * dA + alpha * alpha * dBA
        new = P.const - 2.0 * tA
        delta = abs(value - new)
        value = new
        if delta < tol or (value != 0.0 and delta / abs(value) < tol) or value > cutoff:
            break
    return T, A, value, it, perm
