"""The serial solver's portfolio for one device batch (:func:`gwray.gw.solver.gromov_wasserstein`'s
steps, batched): every start's CG, the exact value of every end, the polish of every end that is
a permutation (swap search and CG alternated, as the serial ``_polish``), and the certified lower
bound. One difference: the serial solver polishes two starts that ended at the same permutation
once; here each is polished (the batch's problems stay in place; same plans, more work).

All starts of all pairs advance together: start s of pair b is problem s·B + b of one
:class:`~gwray.gw.device_cg.State`, so a CG iteration is one auction launch and one matmul per
start for the whole batch. With ``prune`` the identity runs first and screens the others (the
serial solver's order), which takes a second, smaller pass.
"""
from __future__ import annotations

import math

import torch

from gwray.gw.device_assignment import auction, round_plan
from gwray.gw.device_bounds import LayerData, assignment_tlb, certified_tlb, eigen_bound, slb
from gwray.gw.device_cg import PERMUTATION, Pairs, State, cg
from gwray.gw.device_local_search import permutation_value, swap_search
from gwray.gw.device_starts import first_step_value, start_state


class End:
    """The ends of one pass over K blocks: per problem (K·B,) the exact value, marginal error,
    whether the plan is a permutation (and which), CG iterations and linear steps; ``dense``
    maps a problem index to its float64 plan where it is not a permutation."""

    def __init__(self, names, value, err, is_perm, perm, iters, linear, bids, dense, prices):
        self.names, self.value, self.err, self.is_perm, self.perm = names, value, err, is_perm, perm
        self.iters, self.linear, self.bids, self.dense = iters, linear, bids, dense
        self.prices = prices  # the auction's last prices where it ran (else None)


def _dense_value(P: Pairs, T: torch.Tensor, pairs: torch.Tensor):
    """Float64 value and marginal error of dense plans T (k, n, m) of the pairs ``pairs``."""
    p, q = P.p[pairs], P.q[pairs]
    T = round_plan(T, p, q)
    C1, C2 = P.Ca[P.ia[pairs]], P.Cb[P.ib[pairs]]
    value = P.const[pairs] - 2.0 * (T * torch.bmm(C1, torch.bmm(T, C2))).sum(dim=(1, 2))
    err = torch.maximum((T.sum(2) - p).abs().sum(1), (T.sum(1) - q).abs().sum(1))
    return value, err, T


def exact_ends(P: Pairs, S: State, names) -> End:
    """Every problem's plan valued exactly in float64 (the search's values never are reported):
    Σ (C1 − C2[σ][:, σ])² / n² for a permutation, const − 2⟨T, C1 T C2⟩ for a dense plan."""
    K, B = len(names), P.B
    pair = torch.arange(K * B, device=S.A.device) % B
    value = torch.full((K * B,), math.inf, dtype=torch.float64, device=S.A.device)
    err = torch.zeros(K * B, dtype=torch.float64, device=S.A.device)
    is_perm = S.is_perm if P.lap else torch.zeros_like(S.is_perm)
    if P.lap and P.read(is_perm.any()):
        value = torch.where(is_perm, permutation_value(P.Ca, P.Cb, P.ia[pair], P.ib[pair], S.perm), value)
    dense, idx = {}, P.read((~is_perm).nonzero())[:, 0].tolist()
    if idx:
        sel = torch.as_tensor(idx, device=S.A.device)
        v, e, T = _dense_value(P, _dense_of(P, S, sel), pair[sel])
        value[sel], err[sel] = v.clamp_min(0.0), e
        dense = dict(zip(idx, T))
    prices = None
    if P.lap:
        prices = torch.where(S.priced[:, None], S.prices, math.nan) if S.prices is not None else \
            torch.full_like(S.perm, math.nan, dtype=torch.float64)
    return End(names, value, err, is_perm, S.perm, S.iters, S.linear, S.bids, dense, prices)


def _dense_of(P: Pairs, S: State, sel: torch.Tensor) -> torch.Tensor:
    """The float64 plans of the problems ``sel`` (their implicit form composed where needed)."""
    pair = sel % P.B
    if S.T is not None:
        return S.T[sel].double()
    sub = State.__new__(State)
    sub.T, sub.kind, sub.perm0 = None, S.kind[sel], S.perm0[sel]
    sub.steps = [(c[sel], a[sel]) for c, a in S.steps]
    return sub.dense(P.p[pair], P.q[pair])


def solve_batch(P: Pairs, names, max_iter: int, tol: float, swap_rounds: int, bound: bool,
                prune: float | None, layer_data=None, seed: int = 0):
    """The portfolio for the B pairs of ``P``.

    Returns
    -------
    best : (B,) float64 best exact values; lb : (B,) float64 lower bounds (NaN without ``bound``);
    ends : list of :class:`End` (one per pass, then the polish's, named by each pair's start).
    """
    B, dev = P.B, P.C1.device
    stages = ([names[:1], names[1:]] if prune is not None and names[0] == "identity"
              and len(names) > 1 and P.lap and max_iter > 0 else [names])
    best = torch.full((B,), math.inf, dtype=torch.float64, device=dev)
    ends = []
    for stage in stages:
        K = len(stage)
        S = start_state(P, stage, seed)
        active = torch.ones(K * B, dtype=torch.bool, device=dev)
        cutoff = None
        if stage is not stages[0]:  # the O(n²) screen against the identity's end
            ask = ~S.has_first
            cols, S.prices, _, bids = auction(S.A, P.rel, active=ask)
            S.priced = ask
            S.linear += ask
            S.bids += bids
            S.first = torch.where(S.has_first[:, None], S.first, cols)
            S.has_first = torch.ones_like(S.has_first)
            cutoff = prune * best.repeat(K)
            active = first_step_value(P, S) <= cutoff
        S = cg(P, S, active, max_iter, tol, cutoff=cutoff)
        end = exact_ends(P, S, stage)
        del S  # its gradients: the polish and the bound need the memory
        end.value = torch.where(active, end.value, math.inf)  # screened out: never ran
        best = torch.minimum(best, end.value.view(K, B).amin(0))
        ends.append(end)
    if P.lap and swap_rounds > 0 and max_iter > 0:
        _polish(P, ends, max_iter, tol, swap_rounds)
        best = torch.stack([e.value.view(-1, B).amin(0) for e in ends]).amin(0)
    lb = torch.full((B,), math.nan, dtype=torch.float64, device=dev)
    if bound:
        lb = _lower_bound(P, layer_data).minimum(best)
    return best, lb, ends


def _lower_bound(P: Pairs, layer_data) -> torch.Tensor:
    """max(TLB, eigenvalue bound) for assignment problems (the serial solver's), the certified
    TLB for other uniform problems, the SLB otherwise."""
    if P.lap:
        Sa, Sb = layer_data or (LayerData(P.Ca), LayerData(P.Cb))
        lb = assignment_tlb(Sa, Sb, P.ia, P.ib, dtype=P.dt)
        if Sa.kappa is not None and Sb.kappa is not None:
            lb = torch.maximum(lb, eigen_bound(Sa, Sb, P.ia, P.ib))
        return lb.clamp_min(0.0)
    C1, C2 = P.Ca[P.ia], P.Cb[P.ib]
    uniform = P.read(((P.p - 1.0 / P.n).abs().amax() <= 1e-12) & ((P.q - 1.0 / P.m).abs().amax() <= 1e-12))
    return certified_tlb(C1, C2, P.p, P.q, dtype=P.dt) if uniform else slb(C1, C2, P.p, P.q)


def _polish(P: Pairs, ends, max_iter: int, tol: float, swap_rounds: int) -> None:
    """Every end that is a permutation, polished (the serial solver's ``_polish``, for all of them
    at once): swap search, then CG from the new permutation, repeated until the swap search finds
    nothing (a CG that moves goes on from its permutation; one that does not, after a swap
    search cut by its round limit, lets the search go on; one that leaves the permutations ends
    the polish with its dense plan). A polished plan replaces its end in ``ends`` where its exact
    value is lower, as the serial solver keeps the better plan by its exact value. Starts of a
    pair that ended at the same permutation share one polish, as the serial solver's."""
    B, n, dev = P.B, P.n, P.C1.device
    flat = lambda name: torch.cat([getattr(e, name) for e in ends])  # noqa: E731
    value, cur, prices = flat("value"), flat("perm").clone(), flat("prices")
    pair = torch.arange(value.shape[0], device=dev) % B
    eligible = flat("is_perm") & torch.isfinite(value)
    twin = _twins(cur, eligible, B)
    dup = twin != torch.arange(value.shape[0], device=dev)
    eligible &= ~dup
    touched = torch.zeros_like(eligible)
    iters, linear, bids = (torch.zeros(value.shape[0], dtype=torch.long, device=dev) for _ in range(3))
    dense = {}  # problem → (value, error, plan) of a polish that left the permutations
    while True:
        sel = P.read(eligible.nonzero())[:, 0]
        if sel.size == 0:
            break
        sel = torch.as_tensor(sel, device=dev)
        Q = P.subset(pair[sel])
        cols, changed = swap_search(Q, cur[sel], torch.ones_like(sel, dtype=torch.bool), swap_rounds)
        moved = P.read(changed.nonzero())[:, 0]
        eligible.zero_()
        if moved.size == 0:
            break
        moved = torch.as_tensor(moved, device=dev)
        idx, Qm, start = sel[moved], Q.subset(moved), cols[moved]
        del Q
        S = State(Qm.times_c(start), torch.full((idx.shape[0],), PERMUTATION, device=dev), perm0=start)
        S.tA = S.A.gather(2, start[:, :, None]).sum(dim=(1, 2), dtype=torch.float64) / n
        S.priced = ~prices[idx].isnan().any(dim=1)  # the end's auction prices warm-start its CG
        S.prices = torch.nan_to_num(prices[idx], nan=0.0)
        S = cg(Qm, S, torch.ones_like(S.priced), max_iter, tol)
        iters[idx] += S.iters
        linear[idx] += S.linear
        bids[idx] += S.bids
        touched[idx] = True
        cur[idx] = torch.where(S.is_perm[:, None], S.perm, start)
        eligible[idx] = S.is_perm
        prices[idx] = torch.where(S.priced[:, None], S.prices, prices[idx])
        left = P.read((~S.is_perm).nonzero())[:, 0]
        if left.size:  # CG left the permutations: the polish ends at its dense plan
            lsel = torch.as_tensor(left, device=dev)
            v, e, T = _dense_value(Qm, _dense_of(Qm, S, lsel), lsel)
            dense |= {int(idx[k]): (v[j], e[j], T[j]) for j, k in enumerate(left)}
    touched |= dup & touched[twin]  # a shared polish: its twin's plan
    cur = torch.where(dup[:, None], cur[twin], cur)
    iters = torch.where(dup, iters[twin], iters)
    if dense:
        dup_h, twin_h = P.read(dup), P.read(twin)
        dense |= {k: dense[int(twin_h[k])] for k in dup_h.nonzero()[0] if int(twin_h[k]) in dense}
    polished = torch.full_like(value, math.inf)
    if P.read(touched.any()):
        polished = torch.where(touched, permutation_value(P.Ca, P.Cb, P.ia[pair], P.ib[pair], cur), polished)
    for k, (v, _, _) in dense.items():
        polished[k] = v
    better = polished < value
    better_h = P.read(better) if dense else None
    lo = 0
    for e in ends:  # each end keeps the better of its CG end and its polish
        hi = lo + e.value.shape[0]
        b = better[lo:hi]
        e.value = torch.where(b, polished[lo:hi], e.value)
        e.perm = torch.where(b[:, None], cur[lo:hi], e.perm)
        e.iters = e.iters + torch.where(b, iters[lo:hi], 0)
        e.linear, e.bids = e.linear + linear[lo:hi], e.bids + bids[lo:hi]
        e.err = torch.where(b, 0.0, e.err)
        for k, (_, err, T) in dense.items():
            if lo <= k < hi and better_h[k]:  # a polish that ended at a dense plan
                e.is_perm[k - lo], e.err[k - lo], e.dense[k - lo] = False, err, T
        lo = hi


def _twins(perm: torch.Tensor, ok: torch.Tensor, B: int) -> torch.Tensor:
    """(K·B,) long: for each problem, the first problem of the same pair (index ≡ b mod B) whose
    end is the same permutation, itself when none is (or when it is not ``ok``)."""
    N, n = perm.shape
    K = N // B
    per_pair, ok_pp = perm.view(K, B, n).transpose(0, 1), ok.view(K, B).t()  # (B, K, n), (B, K)
    first = torch.empty(B, K, dtype=torch.long, device=perm.device)
    for s in range(K):  # one start against all: (B, K, n) at a time
        same = (per_pair == per_pair[:, s:s + 1]).all(dim=2) & ok_pp & ok_pp[:, s:s + 1]
        first[:, s] = torch.where(same.any(dim=1), same.int().argmax(dim=1), s)
    own = torch.arange(N, device=perm.device)
    return torch.where(ok, (first.t() * B + torch.arange(B, device=perm.device)).reshape(N), own)
