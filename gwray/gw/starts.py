"""The solver's starting plans: named starts, given plans and permutations, and their order.

Every start is a feasible coupling T with its gradient half A = C1 T C2 (search precision, see
:class:`gwray.gw.problem.Problem`). Where a start's first linear step is known without an
assignment (the product start's rank-one gradient; the mixed start's, warm from the identity's
duals) it comes with it, so the solver can screen the start in O(n²) before paying for its CG.
"""
from __future__ import annotations

import numpy as np

from gwray.errors import GwrayInputError
from gwray.gw.bounds import round_to_coupling
from gwray.gw.problem import Problem

NAMED = ("identity", "mixed", "product", "entropic", "random:K")
ALIGNED_ONLY = ("identity", "mixed")  # plans built on diag(p): only couplings of aligned samples


def entropic_plan(P: Problem, outer: int = 10, inner: int = 200) -> np.ndarray:
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
        A = P.X1 @ (T.astype(P.X2.dtype) @ P.X2)
    return round_to_coupling(T, P.p, P.q)


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
    "product" is p qᵀ; "entropic" a rounded entropic-GW plan; "random:K" K random vertices."""
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
            T = entropic_plan(P)
            yield "entropic", T, P.X1 @ (T.astype(P.X2.dtype) @ P.X2), None, None
        elif s.startswith("random:"):
            k = s.split(":", 1)[1]
            if not k.isdigit() or int(k) < 1:
                raise GwrayInputError(f"starts: {s!r} must be 'random:K' with an integer K >= 1")
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
                                  "random:K, entropic, an (n, m) plan or an (n,) permutation)")
