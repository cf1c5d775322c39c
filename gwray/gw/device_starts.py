"""Starts of the device engine: the serial :mod:`gwray.gw.starts`' identity, mixed and product
plans for every pair of a batch, one block of problems per start, and the O(n²) first-step
screen of :func:`gwray.gw.problem.cg`."""
from __future__ import annotations

import torch

from gwray.gw.device_cg import MIXED, PERMUTATION, PRODUCT, Pairs, State, line_search

STARTS = ("identity", "mixed", "product")
ALIGNED_ONLY = ("identity", "mixed")


def start_state(P: Pairs, names) -> State:
    """One state holding the plans of the starts ``names`` (in that order) for every pair: problem
    s·B + b is start ``names[s]`` of pair b, with A = C1 T C2.

    "identity" is diag(p) (the permutation plan of the identity when uniform, n = m); "mixed" is
    ½ diag(p) + ½ p qᵀ (its A is half the identity's plus a rank-one term: no second matmul);
    "product" is p qᵀ, whose gradient is rank one, so its first vertex (the two eccentricity
    orders paired) is known without an assignment."""
    B, n, dt, dev = P.B, P.n, P.dt, P.C1.device
    K = len(names)
    p, q = P.p.to(dt), P.q.to(dt)
    u = torch.einsum("bik,bk->bi", P.C1, p)
    v = torch.einsum("bjl,bl->bj", P.Xb[P.ib], q)
    ident = None
    if any(s in ALIGNED_ONLY for s in names):
        ident = (P.times_c(torch.arange(n, device=dev).expand(B, n)) if P.lap
                 else torch.bmm(P.C1 * p[:, None, :], P.Xb[P.ib]))
    A = torch.empty(K * B, n, P.m, dtype=dt, device=dev)
    kind = torch.empty(K * B, dtype=torch.long, device=dev)
    for s, name in enumerate(names):
        blk = slice(s * B, (s + 1) * B)
        if name == "identity":
            A[blk], kind[blk] = ident, PERMUTATION
        elif name == "mixed":  # in place: no n² temporaries
            A[blk].copy_(ident).mul_(0.5).addcmul_(u[:, :, None], v[:, None, :], value=0.5)
            kind[blk] = MIXED
        else:
            torch.mul(u[:, :, None], v[:, None, :], out=A[blk])
            kind[blk] = PRODUCT
    if not P.lap:
        T = torch.empty_like(A)
        for s, name in enumerate(names):
            blk = T[s * B:(s + 1) * B]
            torch.mul(p[:, :, None], q[:, None, :], out=blk)
            if name in ALIGNED_ONLY:  # diag(p), or ½ diag(p) + ½ p qᵀ
                half = 0.5 if name == "mixed" else 0.0
                blk.mul_(half).diagonal(dim1=1, dim2=2).add_((1.0 - half) * p)
        S = State(A, kind, T=T)
    else:
        ar = torch.arange(n, device=dev).expand(K * B, n)
        first = torch.empty(K * B, n, dtype=torch.long, device=dev)
        has_first = kind == PRODUCT
        if "product" in names:
            s = list(names).index("product")
            first[s * B:(s + 1) * B].scatter_(1, u.argsort(dim=1), v.argsort(dim=1))
        S = State(A, kind, perm0=ar.contiguous(), first=first, has_first=has_first)
        S.last = torch.where(S.is_perm[:, None], ar, -1)
    S.tA = (_start_inner(P, S, names) if P.lap else (S.T * A).sum(dim=(1, 2), dtype=torch.float64))
    return S


def _start_inner(P: Pairs, S: State, names) -> torch.Tensor:
    """⟨T, A⟩ of the implicit start plans (float64): the diagonal sum for the identity, A's total
    for the product (T = 11ᵀ/n²), half of each for the mixed start."""
    n = P.n
    diag = S.A.diagonal(dim1=1, dim2=2).sum(1, dtype=torch.float64) / n
    total = S.A.sum(dim=(1, 2), dtype=torch.float64) / n ** 2
    return torch.where(S.kind == PERMUTATION, diag, torch.where(S.kind == MIXED, 0.5 * (diag + total), total))


def first_step_value(P: Pairs, S: State) -> torch.Tensor:
    """(K·B,) search-precision objective after one line-searched step towards the permutation
    ``S.first``, in O(n²): ⟨S, C1 S C2⟩ = Σ C1 ∘ C2[σ][:, σ] / n², no matmul."""
    from gwray.gw.device_local_search import permuted

    K = S.A.shape[0] // P.B
    sA = S.A.gather(2, S.first[:, :, None]).sum(dim=(1, 2), dtype=torch.float64) / P.n
    sB = (P.C1.repeat(K, 1, 1) * permuted(P.Xb, P.blocks(K), S.first)).sum(
        dim=(1, 2), dtype=torch.float64) / P.n ** 2
    alpha, dA, dBA = line_search(S.tA, sA, sB)
    return P.const.repeat(K) - 2.0 * (S.tA + 2.0 * alpha * dA + alpha * alpha * dBA)
