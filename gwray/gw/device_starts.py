"""Starts of the device engine for B pairs at once: the serial :mod:`gwray.gw.starts`' identity,
mixed and product plans, and the O(n²) first-step screen of :func:`gwray.gw.problem.cg`."""
from __future__ import annotations

import torch

from gwray.gw.device_cg import Pairs, State, line_search
from gwray.gw.device_local_search import permuted

STARTS = ("identity", "mixed", "product")
ALIGNED_ONLY = ("identity", "mixed")


def start_state(P: Pairs, name: str, cache: dict) -> State:
    """The plan of start ``name`` for every pair, with A = C1 T C2 (``cache`` keeps the identity's
    A, which the mixed start reuses: no second matmul).

    "identity" is diag(p) (the permutation plan of the identity when uniform, n = m); "mixed" is
    ½ diag(p) + ½ p qᵀ; "product" is p qᵀ, whose gradient is rank one, so its first vertex (the
    two eccentricity orders paired) is known without an assignment."""
    B, n, dt, dev = P.B, P.n, P.dt, P.C1.device
    p, q = P.p.to(dt), P.q.to(dt)
    if name in ALIGNED_ONLY and "identity" not in cache:
        if P.lap:
            cache["perm"] = torch.arange(n, device=dev).expand(B, n).contiguous()
            cache["T"], cache["identity"] = P.perm_plan(cache["perm"])
        else:
            cache["T"], cache["identity"] = torch.diag_embed(p), torch.bmm(P.C1 * p[:, None, :], P.C2)
    if name == "identity":
        if P.lap:
            return State(cache["T"], cache["identity"], cache["perm"],
                         torch.ones(B, dtype=torch.bool, device=dev))
        return State(cache["T"], cache["identity"])
    u = torch.einsum("bik,bk->bi", P.C1, p)
    v = torch.einsum("bjl,bl->bj", P.C2, q)
    T, A = p[:, :, None] * q[:, None, :], u[:, :, None] * v[:, None, :]
    if name == "mixed":
        return State(0.5 * torch.diag_embed(p) + 0.5 * T, 0.5 * cache["identity"] + 0.5 * A)
    first = None
    if P.lap:
        first = torch.empty(B, n, dtype=torch.long, device=dev)
        first.scatter_(1, u.argsort(dim=1), v.argsort(dim=1))
    return State(T, A, first=first)


def first_step_value(P: Pairs, S: State) -> torch.Tensor:
    """(B,) search-precision objective after one line-searched step towards the permutation
    ``S.first``, in O(n²): ⟨S, C1 S C2⟩ = Σ C1 ∘ C2[σ][:, σ] / n², no matmul."""
    sA = S.A.gather(2, S.first[:, :, None]).sum(dim=(1, 2)).double() / P.n
    sB = (P.C1 * permuted(P.C2, S.first)).sum(dim=(1, 2)).double() / P.n ** 2
    alpha, dA, dBA = line_search(S.tA, sA, sB)
    return P.const - 2.0 * (S.tA + 2.0 * alpha * dA + alpha * alpha * dBA)
