"""Starts of the device engine: the serial :mod:`gwray.gw.starts`' named starts (identity, mixed,
product, entropic, random) for every pair of a batch, one block of problems per start, and the
O(n²) first-step screen of :func:`gwray.gw.problem.cg`."""
from __future__ import annotations

import numpy as np
import torch

from gwray.gw.device_assignment import auction, round_plan
from gwray.gw.device_cg import MIXED, PERMUTATION, PRODUCT, Pairs, State, line_search
from gwray.gw.device_entropic import entropic_plans
from gwray.gw.starts import (ALIGNED_ONLY, ENTROPIC_EPS, ENTROPIC_STEPS, ENTROPIC_TAIL, NAMED,
                             SINKHORN_ITERS, auto_random)

# the serial entropic start's schedule (:mod:`gwray.gw.starts`)
ENTROPIC = {"eps_range": ENTROPIC_EPS, "steps": ENTROPIC_STEPS, "tail": ENTROPIC_TAIL,
            "iters": SINKHORN_ITERS}


def start_names(starts, aligned: bool, n: int, lap: bool) -> list[str]:
    """The device batch's starts in the serial solver's order (the identity first, then as
    given), "random:K" / "random:auto" expanded to "random:0" … (permutation problems only: the
    serial solver's random vertices of a general transport polytope need an exact EMD); the
    identity and mixed starts only for aligned samples, the product standing in for none.

    Raises
    ------
    GwrayInputError
        A start that is none of :data:`gwray.gw.starts.NAMED` (one line naming it).
    """
    from gwray.errors import GwrayInputError

    names = []
    for s in [starts] if isinstance(starts, str) else list(starts):
        k = s.split(":", 1)[1] if isinstance(s, str) and s.startswith("random:") else None
        if k is not None and (k == "auto" or (k.isdigit() and int(k) >= 1)):
            names += [f"random:{r}" for r in range(auto_random(n) if k == "auto" else int(k))] if lap else []
        elif s in ("identity", "mixed", "product", "entropic"):
            names += [] if s in names or (s in ALIGNED_ONLY and not aligned) else [s]
        else:
            raise GwrayInputError(f"starts: {s!r} is not one of " + ", ".join(map(repr, NAMED)))
    names.sort(key=lambda s: s != "identity")
    return names or ["product"]


def _permutation_starts(P: Pairs, names, seed: int, entropic: dict | None) -> dict:
    """The starts of ``names`` that are permutations given up front, {name: (B, n) long}: the
    entropic plan's nearest vertex (the auction maximising ⟨T, P_σ⟩: by the last steps the plan is
    nearly one, as the serial start's exact assignment), and "random:r", the r-th
    ``numpy.random.default_rng(seed).permutation(n)`` of every pair — the serial solver's draws."""
    out, dev = {}, P.C1.device
    if "entropic" in names:
        out["entropic"] = auction(entropic_plans(P, **entropic), P.rel)[0]
    randoms = [s for s in names if s.startswith("random:")]
    if randoms:
        rng = np.random.default_rng(seed)
        draws = torch.as_tensor(np.stack([rng.permutation(P.n) for _ in randoms]), device=dev)
        out |= {name: draws[r].expand(P.B, P.n) for r, name in enumerate(randoms)}
    return out


def start_state(P: Pairs, names, seed: int = 0, entropic: dict = ENTROPIC) -> State:
    """One state holding the plans of the starts ``names`` (in that order) for every pair: problem
    s·B + b is start ``names[s]`` of pair b, with A = C1 T C2.

    "identity" is diag(p) (the permutation plan of the identity when uniform, n = m); "mixed" is
    ½ diag(p) + ½ p qᵀ (its A is half the identity's plus a rank-one term: no second matmul);
    "product" is p qᵀ, whose gradient is rank one, so its first vertex (the two eccentricity
    orders paired) is known without an assignment; "entropic" the entropic-GW plan
    (:mod:`gwray.gw.device_entropic`, parameters ``entropic``) — its nearest vertex for
    permutation problems, rounded to a coupling otherwise; "random:r" a random permutation
    (permutation problems only)."""
    B, n, dt, dev = P.B, P.n, P.dt, P.C1.device
    K = len(names)
    p, q = P.p.to(dt), P.q.to(dt)
    u = torch.einsum("bik,bk->bi", P.C1, p)
    v = torch.einsum("bjl,bl->bj", P.Xb[P.ib], q)
    ident = None
    if any(s in ALIGNED_ONLY for s in names):
        ident = (P.times_c(torch.arange(n, device=dev).expand(B, n)) if P.lap
                 else torch.bmm(P.C1 * p[:, None, :], P.Xb[P.ib]))
    given = _permutation_starts(P, names, seed, entropic) if P.lap else {}
    dense = ({"entropic": round_plan(entropic_plans(P, **entropic), P.p, P.q).to(dt)}
             if not P.lap and "entropic" in names else {})
    A = torch.empty(K * B, n, P.m, dtype=dt, device=dev)
    kind = torch.empty(K * B, dtype=torch.long, device=dev)
    perm0 = torch.arange(n, device=dev).repeat(K, 1).repeat_interleave(B, 0) if P.lap else None
    for s, name in enumerate(names):
        blk = slice(s * B, (s + 1) * B)
        if name == "identity":
            A[blk], kind[blk] = ident, PERMUTATION
        elif name == "mixed":  # in place: no n² temporaries
            A[blk].copy_(ident).mul_(0.5).addcmul_(u[:, :, None], v[:, None, :], value=0.5)
            kind[blk] = MIXED
        elif name in given:
            perm0[blk] = given[name]
            A[blk], kind[blk] = P.times_c(given[name]), PERMUTATION
        elif name in dense:
            A[blk], kind[blk] = P.times_dense(dense[name]), PRODUCT  # (kind: only read for permutations)
        else:
            torch.mul(u[:, :, None], v[:, None, :], out=A[blk])
            kind[blk] = PRODUCT
    if not P.lap:
        T = torch.empty_like(A)
        for s, name in enumerate(names):
            blk = T[s * B:(s + 1) * B]
            if name in dense:
                blk.copy_(dense[name])
                continue
            torch.mul(p[:, :, None], q[:, None, :], out=blk)
            if name in ALIGNED_ONLY:  # diag(p), or ½ diag(p) + ½ p qᵀ
                half = 0.5 if name == "mixed" else 0.0
                blk.mul_(half).diagonal(dim1=1, dim2=2).add_((1.0 - half) * p)
        S = State(A, kind, T=T)
    else:
        first = torch.empty(K * B, n, dtype=torch.long, device=dev)
        has_first = kind == PRODUCT
        if "product" in names:
            s = list(names).index("product")
            first[s * B:(s + 1) * B].scatter_(1, u.argsort(dim=1), v.argsort(dim=1))
        S = State(A, kind, perm0=perm0, first=first, has_first=has_first)
        S.last = torch.where(S.is_perm[:, None], perm0, -1)
    S.tA = (_start_inner(P, S) if P.lap else (S.T * A).sum(dim=(1, 2), dtype=torch.float64))
    return S


def _start_inner(P: Pairs, S: State) -> torch.Tensor:
    """⟨T, A⟩ of the implicit start plans (float64): A along the permutation for permutation
    starts, A's total for the product (T = 11ᵀ/n²), half the identity's and half the product's
    for the mixed start."""
    n = P.n
    along = S.A.gather(2, S.perm0[:, :, None]).sum(dim=(1, 2), dtype=torch.float64) / n
    total = S.A.sum(dim=(1, 2), dtype=torch.float64) / n ** 2
    return torch.where(S.kind == PERMUTATION, along, torch.where(S.kind == MIXED, 0.5 * (along + total), total))


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
