"""The solver's starting plans: named starts, given plans and permutations, and their order.

Every start is a feasible coupling T with its gradient half A = C1 T C2 (search precision, see
:class:`gwray.gw.problem.Problem`). Where a start's first linear step is known without an
assignment (the product start's rank-one gradient; the mixed start's, warm from the identity's
duals) it comes with it, so the solver can screen the start in O(n²) before paying for its CG.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from gwray.errors import GwrayInputError
from gwray.gw.bounds import round_to_coupling
from gwray.gw.problem import Problem

NAMED = ("identity", "mixed", "product", "entropic", "random:K", "random:auto")
DEFAULT_STARTS = ("identity", "mixed", "product", "entropic", "random:auto")
"""The solver's default portfolio (``gw.starts``); every start's end is polished."""
ALIGNED_ONLY = ("identity", "mixed")  # plans built on diag(p): only couplings of aligned samples


# ε-scaling of the entropic start, in units of (pᵀC1p)(qᵀC2q) so that it follows the costs' scale:
# 5e-3 -> 1.25e-4 (POT's epsilon 2e-2 -> 5e-4 on mean-normalized costs) over 30 steps, then 5 more
# at the last. Measured on MiniLM and toy-net layer pairs solved unaligned (n = 1,024): starting
# at 2.5e-3 left toy pairs 9-25 % above this schedule, stopping at 5e-4 MiniLM neighbours 3-8 %,
# 12-20 steps up to 1-3 %.
ENTROPIC_EPS = (5e-3, 1.25e-4)
ENTROPIC_STEPS, ENTROPIC_TAIL = 30, 5
SINKHORN_ITERS = 30  # per step, warm-started: 100 gave the same values within 0.1 % (n = 256)


def _sinkhorn(A, f, g, eps: float, p, q, iters: int):
    """The entropic plan of the linear problem max ⟨A, T⟩ + ε H(T) over couplings of (p, q), by
    Sinkhorn from the potentials (f, g), which the result's scalings are absorbed into, so the
    kernel stays representable however small ε. In float64: the step's change of A over ε
    exceeds float32's exponent range (e^±88) at the last steps, which left whole rows of the
    kernel at zero and the plan wrong (measured: a different plan, values 2-7 % higher).

    A : (n, m) array; f, g : (n,), (m,) float64. Returns (T (n, m) float64, f, g)."""
    E = A + f[:, None]
    E += g[None, :]
    E -= E.max()
    E /= eps
    K = np.exp(E, out=E)
    u, v = np.ones(p.size), np.ones(q.size)
    for k in range(iters):
        u = p / np.maximum(K @ v, 1e-300)
        v = q / np.maximum(K.T @ u, 1e-300)
        if k % 5 == 4 and np.abs(u * (K @ v) - p).sum() < 1e-3 / p.size:
            break
    K *= u[:, None]
    K *= v[None, :]
    return K, f + eps * np.log(np.maximum(u, 1e-300)), g + eps * np.log(np.maximum(v, 1e-300))


def entropic_plan(P: Problem) -> np.ndarray:
    """Entropic GW by ε-scaling (mirror descent, Peyré et al. 2016, with ε lowered geometrically
    from step to step and each Sinkhorn warm-started from the last step's potentials): a smooth
    path to a deep basin that needs no alignment of the samples.

    Each step costs one gradient (two (n, n) x (n, m) matmuls in search precision) and at most
    :data:`SINKHORN_ITERS` Sinkhorn sweeps (O(nm) each). Returns the (n, m) float64 plan, not yet
    feasible (rounded by the caller)."""
    scale = float(P.p @ P.C1 @ P.p) * float(P.q @ P.C2 @ P.q)
    T = np.outer(P.p, P.q)
    if scale <= 0:  # all-zero costs: every plan is optimal
        return T
    f, g = np.zeros(P.n), np.zeros(P.m)
    hi, lo = ENTROPIC_EPS
    for eps in [*np.geomspace(hi, lo, ENTROPIC_STEPS), *[lo] * ENTROPIC_TAIL]:
        A = (P.X1 @ (T.astype(P.X2.dtype) @ P.X2)).astype(np.float64)
        T, f, g = _sinkhorn(A, f - f.mean(), g - g.mean(), eps * scale, P.p, P.q, SINKHORN_ITERS)
    return T


def _entropic(P: Problem):
    """The "entropic" start: (T, A, permutation or None). A permutation problem starts at the
    permutation nearest the entropic plan (the assignment maximising ⟨T, P_σ⟩: by the last steps
    the plan is nearly one already), so CG starts at a vertex; otherwise the plan rounded to a
    coupling."""
    T = entropic_plan(P)
    if P.lap:
        cols = linear_sum_assignment(T, maximize=True)[1]
        return P.dense(cols), P.perm_gradient(cols), cols
    T = round_to_coupling(T, P.p, P.q)
    return T, P.X1 @ (T.astype(P.X2.dtype) @ P.X2), None


def auto_random(n: int) -> int:
    """How many random starts "random:auto" runs on n samples: 24 up to n = 256, then
    24 (256/n)³ (a random start's CG and polish cost ~n³, so their total stays flat): 7 at 384,
    3 at 512, 1 at 724, none from 1,024 on.

    Why (wide searches on MiniLM, toy-net and digits-net layer pairs, as ``bench/gw_solver.py
    --wide``): below n = 512 the landscape is rugged and polished random starts beat every
    structured start on some distant pairs (n = 128: by up to 6.5 % on 9 of 81 pairs without
    them); from n = 512 on they rarely do (never on 40 pairs at 512; 2 of 14 pairs at 1,024, by
    1.2-1.4 %, both with the toy net's last, class-clustered layer), while each costs ~n³."""
    return 24 if n <= 256 else int(round(24 * (256 / n) ** 3))


def expand_auto(starts: list, n: int) -> list:
    """``starts`` with "random:auto" replaced by "random:K" (K = :func:`auto_random`; dropped
    when K = 0)."""
    k, out = auto_random(n), []
    for s in starts:
        if not (isinstance(s, str) and s == "random:auto"):
            out.append(s)
        elif k:
            out.append(f"random:{k}")
    return out


def check_permutation(s, n: int, m: int) -> np.ndarray:
    """A 1-D start as int64 ``cols`` (i -> cols[i]); GwrayInputError unless a permutation."""
    cols = np.asarray(s)
    if n != m or cols.shape != (n,) or cols.dtype.kind not in "iu":
        raise GwrayInputError(f"starts: a permutation start must be ({n},) integers with n == m "
                              f"(got {cols.shape} {cols.dtype}, m = {m})")
    cols = cols.astype(np.int64)
    if not np.array_equal(np.sort(cols), np.arange(n)):
        raise GwrayInputError("starts: a 1-D start must be a permutation of 0..n-1")
    return cols


def as_permutation(T: np.ndarray, n: int) -> np.ndarray | None:
    """``cols`` with T = P_cols / n when T is a permutation plan, else None."""
    rows, cols = np.nonzero(T)
    if rows.size != n or not np.array_equal(rows, np.arange(n)) or np.unique(cols).size != n:
        return None
    return cols.astype(np.int32)


def _given(P: Problem, s):
    """A given (n, m) plan (rounded to a coupling) or (n,) permutation: (T, A, perm or None)."""
    if np.ndim(s) == 1:  # a permutation i -> s[i]: no dense plan needed
        cols = check_permutation(s, P.n, P.m)
        T, A = P.dense(cols), P.perm_gradient(cols)
        if not P.lap:  # non-uniform weights: the nearest coupling to that matching
            T = round_to_coupling(T, P.p, P.q)
            A, cols = P.X1 @ (T.astype(P.X2.dtype) @ P.X2), None
        return T, A, cols
    T = np.asarray(s.detach().cpu().numpy() if hasattr(s, "detach") else s, dtype=np.float64)
    if T.shape != (P.n, P.m):
        raise GwrayInputError(f"starts: coupling shape {T.shape} != ({P.n}, {P.m})")
    if not np.all(np.isfinite(T)) or np.any(T < 0) or not T.any():
        raise GwrayInputError("starts: a given coupling must be finite, non-negative, non-zero")
    T = round_to_coupling(T, P.p, P.q)
    rows, cols = np.nonzero(T)
    perm = cols if P.lap and rows.size == P.n and np.all(T[rows, cols] == 1.0 / P.n) else None
    return T, P.X1 @ (T.astype(P.X2.dtype) @ P.X2), perm


def iter_starts(P: Problem, starts: list, seed: int):
    """Yield (name, T, A = C1 T C2, first vertex or None, permutation or None) for every start.

    "identity" is diag(p); "mixed" is POT users' near-identity start ½ diag(p) + ½ p qᵀ (its
    gradient is ½ the identity's plus a rank-one term: no matmul once the identity's is known);
    "product" is p qᵀ; "entropic" an entropic-GW plan rounded to a vertex (:func:`_entropic`); "random:K" K random vertices."""
    rng = np.random.default_rng(seed)
    given, ident = 0, None

    def identity_a():
        nonlocal ident
        if ident is None:
            ident = (P.X1 * P.p.astype(P.X1.dtype)) @ P.X2
        return ident

    for s in starts:
        if not isinstance(s, str):
            T, A, perm = _given(P, s)
            yield ("given" if given == 0 else f"given:{given}"), T, A, None, perm
            given += 1
        elif s == "identity":
            perm = np.arange(P.n) if P.lap else None
            yield "identity", np.diag(P.p), identity_a(), None, perm
        elif s == "mixed":
            u, v = (P.C1 @ P.p).astype(P.X1.dtype), (P.C2 @ P.q).astype(P.X1.dtype)
            A = 0.5 * identity_a() + np.outer(0.5 * u, v)
            yield "mixed", 0.5 * np.diag(P.p) + 0.5 * np.outer(P.p, P.q), A, None, None
        elif s == "product":
            u, v = P.C1 @ P.p, P.C2 @ P.q
            first = None
            if P.lap:  # the gradient is rank one: the best assignment pairs the sorted orders
                cols = np.empty(P.n, dtype=np.int64)
                cols[np.argsort(u)] = np.argsort(v)
                first = (np.arange(P.n), cols, np.full(P.n, 1.0 / P.n))
            A = np.outer(u.astype(P.X1.dtype), v.astype(P.X1.dtype))
            yield "product", np.outer(P.p, P.q), A, first, None
        elif s == "entropic":
            T, A, perm = _entropic(P)
            yield "entropic", T, A, None, perm
        elif s.startswith("random:"):
            k = s.split(":", 1)[1]
            if not k.isdigit() or int(k) < 1:
                raise GwrayInputError(f"starts: {s!r} must be 'random:K' with an integer K >= 1 "
                                      "or 'random:auto'")
            for r in range(int(k)):
                if P.lap:
                    cols = rng.permutation(P.n)
                    rows, vals = np.arange(P.n), np.full(P.n, 1.0 / P.n)
                else:  # a random vertex of the transport polytope
                    rows, cols, vals = P.vertex(rng.random((P.n, P.m)))
                T = np.zeros((P.n, P.m))
                T[rows, cols] = vals
                yield f"random:{r}", T, P.times_c(rows, cols, vals), None, (cols if P.lap else None)
        else:
            raise GwrayInputError(f"starts: unknown start {s!r} (identity, mixed, product, "
                                  "random:K, random:auto, entropic, an (n, m) plan or an (n,) "
                                  "permutation)")
