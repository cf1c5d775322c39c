"""Square-loss Gromov-Wasserstein by conditional gradient (Frank-Wolfe), multi-start.

Objective (POT's convention): GW(T) = Σ_ijkl (C1_ik − C2_jl)² T_ij T_kl over couplings T of (p, q).
For symmetric C1, C2 and feasible T this is  const − 2⟨T, A⟩  with  A = C1 T C2  and
const = pᵀ(C1∘C1)p + qᵀ(C2∘C2)q, so the gradient is affine in T and A is carried between iterations:

* linear step: maximise ⟨A, S⟩ over couplings — a linear assignment (a permutation vertex) when p, q
  are uniform and n = m, an exact EMD otherwise;
* B = C1 S C2 is the iteration's only n³ product: for a permutation S = P/n it is C1 @ C2[σ] / n,
  for an EMD vertex (≤ n + m − 1 non-zeros) it is C1 @ (S @ C2) with a sparse S;
* exact line search: along T + α(S − T) the objective is a quadratic in α whose coefficients need
  only ⟨S, A⟩, ⟨S, B⟩ and ⟨T, A⟩ (⟨T, B⟩ = ⟨S, A⟩ by symmetry); then A ← A + α(B − A).

Every start ends at an exactly feasible plan, so ``value`` is a true upper bound on GW; the TLB
(:mod:`gwray.gw.bounds`) gives the lower bound.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix

from gwray.errors import GwrayInputError
from gwray.gw.bounds import _is_uniform, _weights, ot_value, w2_cost
from gwray.gw.costs import check_cost


@dataclass
class GWResult:
    """The outcome of one GW solve.

    Attributes
    ----------
    value : float
        GW objective of the returned feasible coupling (an upper bound on the GW minimum).
    lower_bound : float
        A certified lower bound (TLB, clipped to ≤ value); NaN when not computed.
    coupling : numpy.ndarray of shape (n, m), or None
        The best plan (None when ``keep_coupling=False``).
    init : str
        The start that won ("identity", "product", "random:3", "entropic", "given", ...).
    iterations : int
        CG iterations of the winning start.
    marginal_error : float
        max(‖T 1 − p‖₁, ‖Tᵀ 1 − q‖₁) of the returned plan.
    seconds : float
        Wall time of the whole solve (all starts and the bound).
    solver : str
        "cg-lap" (assignment linear step) or "cg-emd" (network-simplex linear step).
    n, m : int
        Sizes of C1 and C2.
    start_values : dict
        Final objective of every start that ran (diagnostics).
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

    def record(self) -> dict:
        """The pair-record fields of DESIGN.md: gw, lower_bound, init, iterations, marginal_error,
        seconds, n, solver."""
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

    def vertex(self, A):
        """argmax over couplings of ⟨A, S⟩ as (rows, cols, vals) of the sparse vertex S."""
        if self.lap:
            rows, cols = linear_sum_assignment(A, maximize=True)
            return rows, cols, np.full(self.n, 1.0 / self.n)
        import ot

        M = A.max() - A
        S = ot.emd(self.p, self.q, M, numItermax=max(100_000, 50 * self.n * self.m))
        rows, cols = np.nonzero(S)
        return rows, cols, S[rows, cols]

    def times_c(self, rows, cols, vals):
        """B = C1 S C2 for the sparse plan S: one n×n×m matmul."""
        if self.lap:  # S = P/n: S C2 is C2's rows permuted (cols[i] is σ(i)), divided by n
            return (self.C1 @ self.C2[cols]) * vals[0]
        S = csr_matrix((vals, (rows, cols)), shape=(self.n, self.m))
        return self.C1 @ np.asarray(S @ self.C2)

    def objective(self, T, A) -> float:
        return max(self.const - 2.0 * float(np.vdot(T, A)), 0.0)

    def marginal_error(self, T) -> float:
        return float(max(np.abs(T.sum(1) - self.p).sum(), np.abs(T.sum(0) - self.q).sum()))


def _cg(P: _Problem, T, A, max_iter: int, tol: float):
    """Conditional gradient from the feasible plan T (with A = C1 T C2). Returns T, A, value, its."""
    tA = float(np.vdot(T, A))
    value = P.const - 2.0 * tA
    it = 0
    while it < max_iter:
        it += 1
        rows, cols, vals = P.vertex(A)
        B = P.times_c(rows, cols, vals)
        sA = float(vals @ A[rows, cols])
        sB = float(vals @ B[rows, cols])
        dA = sA - tA                     # ⟨S − T, A⟩
        dBA = sB - 2.0 * sA + tA         # ⟨S − T, C1 (S − T) C2⟩
        a, b = -2.0 * dBA, -4.0 * dA     # value(α) = value + b α + a α²
        if a > 0:
            alpha = min(1.0, max(0.0, -b / (2.0 * a)))
        else:
            alpha = 1.0 if a + b < 0 else 0.0
        if alpha <= 0.0:
            break
        if alpha >= 1.0:
            T = np.zeros_like(T)
            A = B
        else:
            T *= 1.0 - alpha
            A *= 1.0 - alpha
            A += alpha * B
        T[rows, cols] += alpha * vals
        tA += 2.0 * alpha * dA + alpha * alpha * dBA
        new = P.const - 2.0 * tA
        delta = abs(value - new)
        value = new
        if delta < tol or (value != 0.0 and delta / abs(value) < tol):
            break
    return T, A, P.objective(T, A), it


def round_to_coupling(T, p, q) -> np.ndarray:
    """Nearest-feasible rounding of a non-negative (n, m) plan (Altschuler et al., 2017).

    Returns a plan whose row sums are p and column sums are q up to float rounding; a feasible
    input comes back (almost) unchanged.
    """
    T = np.array(T, dtype=np.float64)
    r = T.sum(1)
    T *= np.minimum(p / np.where(r > 0, r, 1.0), 1.0)[:, None]
    c = T.sum(0)
    T *= np.minimum(q / np.where(c > 0, c, 1.0), 1.0)[None, :]
    er, ec = p - T.sum(1), q - T.sum(0)
    s = er.sum()
    if s > 0:
        T += np.outer(np.maximum(er, 0.0), np.maximum(ec, 0.0)) / s
    return T


def _entropic_plan(P: _Problem, seed: int) -> np.ndarray:
    """A smooth warm start: POT's entropic GW with ε at 2 % of the gradient's scale."""
    import warnings

    import ot

    eps = 0.02 * max(P.const, 1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        T = ot.gromov.entropic_gromov_wasserstein(P.C1, P.C2, P.p, P.q, "square_loss", epsilon=eps,
                                                  max_iter=100, tol=1e-7)
    T = np.nan_to_num(np.asarray(T, dtype=np.float64))
    if not T.any():
        T = np.outer(P.p, P.q)
    return round_to_coupling(T, P.p, P.q)


def _starts(P: _Problem, starts, aligned: bool, seed: int):
    """Yield (name, T, A) for every start; A = C1 T C2 is computed here (the cheap way)."""
    if isinstance(starts, (str, np.ndarray)) or hasattr(starts, "shape"):
        starts = [starts]
    rng = np.random.default_rng(seed)
    given = 0
    for s in starts:
        if not isinstance(s, str):
            T = np.asarray(s.detach().cpu().numpy() if hasattr(s, "detach") else s, dtype=np.float64)
            if T.shape != (P.n, P.m):
                raise GwrayInputError(f"starts: coupling shape {T.shape} != ({P.n}, {P.m})")
            if not np.all(np.isfinite(T)) or np.any(T < 0) or not T.any():
                raise GwrayInputError("starts: a given coupling must be finite, non-negative, non-zero")
            T = round_to_coupling(T, P.p, P.q)
            yield ("given" if given == 0 else f"given:{given}"), T, P.C1 @ (T @ P.C2)
            given += 1
        elif s == "identity":
            if aligned:
                T = np.diag(P.p)
                yield "identity", T, (P.C1 * P.p) @ P.C2
        elif s == "product":
            yield "product", np.outer(P.p, P.q), np.outer(P.C1 @ P.p, P.C2 @ P.q)
        elif s == "entropic":
            T = _entropic_plan(P, seed)
            yield "entropic", T, P.C1 @ (T @ P.C2)
        elif s.startswith("random:"):
            try:
                k = int(s.split(":", 1)[1])
            except ValueError:
                raise GwrayInputError(f"starts: {s!r} must be 'random:K' with an integer K") from None
            for r in range(k):
                if P.lap:
                    cols = rng.permutation(P.n)
                    rows, vals = np.arange(P.n), np.full(P.n, 1.0 / P.n)
                else:  # a random vertex of the transport polytope
                    rows, cols, vals = P.vertex(rng.random((P.n, P.m)))
                T = np.zeros((P.n, P.m))
                T[rows, cols] = vals
                yield f"random:{r}", T, P.times_c(rows, cols, vals)
        else:
            raise GwrayInputError(f"starts: unknown start {s!r} (identity, product, random:K, "
                                  "entropic or an (n, m) array)")


def gromov_wasserstein(C1, C2, p=None, q=None, *, aligned: bool = False,
                       starts=("identity", "product"), max_iter: int = 200, tol: float = 1e-9,
                       keep_coupling: bool = True, seed: int = 0, bound: bool = True) -> GWResult:
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
        "entropic" (entropic GW, rounded to feasibility) and (n, m) arrays (warm-start couplings,
        rounded to feasibility; init name "given"). The best final plan wins.
    max_iter : int
        CG iterations per start.
    tol : float
        Stop a start when its objective decreases by less than ``tol`` (absolute) or ``tol``
        relative to its value, as POT does.
    keep_coupling : bool
        Return the plan (n × m floats) in the result.
    seed : int
        Seed of the random starts.
    bound : bool
        Compute the TLB lower bound (about one more iteration's work).

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
    A1, A2 = check_cost(C1, "C1"), check_cost(C2, "C2")
    p, q = _weights(p, A1.shape[0], "p"), _weights(q, A2.shape[0], "q")
    if aligned and A1.shape != A2.shape:
        raise GwrayInputError(f"aligned=True needs n == m, got C1 {A1.shape} and C2 {A2.shape}")
    if aligned and not np.allclose(p, q, rtol=0, atol=1e-12):
        raise GwrayInputError("aligned=True needs p == q (the identity coupling must be feasible)")
    if max_iter < 0:
        raise GwrayInputError(f"max_iter must be >= 0, got {max_iter}")
    P = _Problem(A1, A2, p, q)
    best, values = None, {}
    runs = list(_starts(P, starts, aligned, seed))
    for name, T, A in runs or _starts(P, ["product"], aligned, seed):  # identity alone, unaligned
        T, A, value, its = _cg(P, T, A, max_iter, tol)
        values[name] = value
        if best is None or value < best[1]:
            best = (name, value, T, its)
    name, value, T, its = best
    lb = float("nan")
    if bound:
        lb = min(max(ot_value(w2_cost(A1, A2, p, q), p, q), 0.0), value)
    return GWResult(value=value, lower_bound=lb, coupling=T if keep_coupling else None, init=name,
                    iterations=its, marginal_error=P.marginal_error(T),
                    seconds=time.perf_counter() - t0, solver="cg-lap" if P.lap else "cg-emd",
                    n=P.n, m=P.m, start_values=values)
