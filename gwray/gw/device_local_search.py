"""Pairwise-swap local search on permutation plans for B pairs at once, on the device.

The device version of :mod:`gwray.gw.local_search` (same gain formula, same objective
Q(σ) = Σ_ik C1_ik C2_σ(i)σ(k)): every swap gain of a round is read off W = C1 C2s,
C2s = C2[σ][:, σ], as one (B, n, n) elementwise expression. A round applies the disjoint
swap set of the serial search (:func:`greedy_swaps`) when its joint exact gain is positive, else
the single best swap, each only if the exact (float64) Q rises; then C2s is gathered again from
the layer stack and W recomputed by one batched matmul.
"""
from __future__ import annotations

import torch

EXACT_BYTES = 1 << 30
"""Float64 work arrays of one exact-objective pass at most (it runs in chunks of pairs)."""


def permuted(C: torch.Tensor, layer: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """C[layer[b]][cols[b]][:, cols[b]] for every b: (L, n, n), (B,), (B, n) → (B, n, n)."""
    return C[layer[:, None, None], cols[:, :, None], cols[:, None, :]]


def _chunks(B: int, n: int):
    step = max(1, EXACT_BYTES // (3 * 8 * n * n))
    return [slice(lo, min(B, lo + step)) for lo in range(0, B, step)]


def exact_q(Ca, Cb, ia, ib, cols) -> torch.Tensor:
    """Q(σ) = Σ_ik C1_ik C2_σ(i)σ(k) in float64 for (Ca[ia[b]], Cb[ib[b]], cols[b]), (B,)."""
    n = cols.shape[1]
    return torch.cat([(Ca[ia[c]] * permuted(Cb, ib[c], cols[c])).sum(dim=(1, 2))
                      for c in _chunks(cols.shape[0], n)])


def permutation_value(Ca, Cb, ia, ib, cols) -> torch.Tensor:
    """GW of the permutation plans i → cols[b, i] (uniform weights), float64 and free of
    cancellation: Σ (C1 − C2[σ][:, σ])² / n², as the serial :func:`gwray.gw.problem.permutation_value`."""
    n = cols.shape[1]
    out = []
    for c in _chunks(cols.shape[0], n):
        D = permuted(Cb, ib[c], cols[c]).sub_(Ca[ia[c]])
        out.append((D * D).sum(dim=(1, 2)) / n ** 2)
    return torch.cat(out)


def swap_gains(C1: torch.Tensor, W: torch.Tensor, C2s: torch.Tensor) -> torch.Tensor:
    """G_ij = Q(σ ∘ (i j)) − Q(σ) for every i ≠ j (−inf on the diagonal), (B, n, n).

    The same expression as :func:`gwray.gw.local_search.best_swaps`, including the diagonal terms
    d = diag C1, e = diag C2s (zero for distance costs)."""
    w, d, e = W.diagonal(dim1=1, dim2=2), C1.diagonal(dim1=1, dim2=2), C2s.diagonal(dim1=1, dim2=2)
    G = 2.0 * (W + W.transpose(1, 2) - w[:, :, None] - w[:, None, :]) + 4.0 * C1 * C2s
    di, dj, ei, ej = d[:, :, None], d[:, None, :], e[:, :, None], e[:, None, :]
    G -= 2.0 * (di * (C2s - ei) + dj * (C2s - ej)) + 2.0 * C1 * (ei + ej)
    G += (di - dj) * (ej - ei)
    return G.diagonal_scatter(torch.full_like(w, -torch.inf), dim1=1, dim2=2)


def greedy_swaps(gain: torch.Tensor, partner: torch.Tensor, thresh: torch.Tensor,
                 passes: int = 8) -> torch.Tensor:
    """The serial search's swap set, in parallel: of the k = n/8 positions with the largest gains,
    in order of gain, each takes its best partner unless either is already taken.

    Greedy matching is the same as repeatedly taking the locally dominant edges (those ranked
    first among the remaining edges at both ends) and dropping the edges that touch them; after
    ``passes`` such passes (no host read) the edges still undecided are left out, so the set is
    a subset of the greedy one, and always disjoint.

    Parameters
    ----------
    gain, partner : (B, n) each position's best swap gain and partner; thresh : (B,).

    Returns
    -------
    src : (B, n) long tensor: position i takes the target of position src[i] (a product of
    disjoint transpositions).
    """
    B, n = gain.shape
    k = max(1, n // 8)
    top, i = gain.topk(k, dim=1)
    j = partner.gather(1, i)
    rank = torch.arange(k, device=gain.device).expand(B, k)
    live = top > thresh[:, None]
    src = torch.arange(n + 1, device=gain.device).repeat(B, 1)  # slot n: a dump
    taken = torch.zeros(B, n + 1, dtype=torch.bool, device=gain.device)
    for _ in range(passes):
        first = torch.full((B, n + 1), k, dtype=torch.long, device=gain.device)
        r = torch.where(live, rank, k)
        first.scatter_reduce_(1, torch.where(live, i, n), r, "amin")
        first.scatter_reduce_(1, torch.where(live, j, n), r, "amin")
        win = live & (first.gather(1, i) == rank) & (first.gather(1, j) == rank)
        src.scatter_(1, torch.where(win, i, n), j)
        src.scatter_(1, torch.where(win, j, n), i)
        taken.scatter_(1, torch.where(win, i, n), True)
        taken.scatter_(1, torch.where(win, j, n), True)
        live &= ~(taken.gather(1, i) | taken.gather(1, j))
    return src[:, :n]


def swap_search(P, cols: torch.Tensor, active: torch.Tensor, max_rounds: int,
                check_every: int = 4):
    """Improve the permutations i → cols[b, i] of the ``active`` pairs of ``P``
    (:class:`gwray.gw.device_cg.Pairs`) by rounds of swaps.

    Gains come from the search-precision W; a move is only made when the exact Q (float64, O(n²)
    per candidate) rises by more than 1e-12 relative, as in the serial search: every accepted
    move is a true improvement, so float32 noise can neither cycle nor raise the value.

    Parameters
    ----------
    P : Pairs; cols : (B, n) long tensor; active : (B,) bool tensor.
    max_rounds : int.
    check_every : int; ``P.read`` is asked every ``check_every`` rounds whether any pair still
        improves.

    Returns
    -------
    cols : (B, n) the improved permutations; changed : (B,) bool, which pairs moved.
    """
    B, n = cols.shape
    ar = torch.arange(n, device=cols.device).expand(B, n)
    exact = (P.Ca, P.Cb, P.ia, P.ib)
    C2s = permuted(P.Xb, P.ib, cols)
    W = torch.bmm(P.C1, C2s)
    Q = exact_q(*exact, cols)
    changed = torch.zeros_like(active)
    for r in range(max_rounds):
        if n < 2 or (r % check_every == 0 and not P.read(active.any())):
            break
        thresh = 1e-12 * Q.abs().clamp_min(1e-300)
        gain, partner = swap_gains(P.C1, W, C2s).max(dim=2)
        top, i = gain.max(dim=1)
        j = partner.gather(1, i[:, None])[:, 0]
        single = ar.clone()
        single.scatter_(1, i[:, None], j[:, None]).scatter_(1, j[:, None], i[:, None])
        src = greedy_swaps(gain, partner, torch.zeros_like(top))
        Q_set = exact_q(*exact, cols.gather(1, src))
        Q_one = exact_q(*exact, cols.gather(1, single))
        set_ok = Q_set > Q + thresh
        move = active & (set_ok | (Q_one > Q + thresh))
        src = torch.where(move[:, None], torch.where(set_ok[:, None], src, single), ar)
        Q = torch.where(move, torch.where(set_ok, Q_set, Q_one), Q)
        cols = cols.gather(1, src)
        C2s = permuted(P.Xb, P.ib, cols)
        W = torch.bmm(P.C1, C2s)
        changed |= move
        active = active & move
    return cols, changed
