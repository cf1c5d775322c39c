"""Pairwise-swap local search on permutation plans for B pairs at once, on the device.

The device version of :mod:`gwray.gw.local_search` (same gain formula, same objective
Q(σ) = Σ_ik C1_ik C2_σ(i)σ(k), same swap set): every swap gain of a round is read off
W = C1 C2s, C2s = C2[σ][:, σ]. A round applies the greedy disjoint swap set of the serial search
when its exact joint gain is positive, else the single best swap, each only if the exact
(float64) Q rises; then C2s is gathered again from the layer stack and W recomputed by one
batched matmul. The three steps of a round that would otherwise take many small or large torch
passes (best partners, the greedy set, the exact gain) are one kernel launch each on CUDA
(:mod:`gwray.gw.swap_kernels`) and their twins elsewhere (:mod:`gwray.gw.swap_twin`).
"""
from __future__ import annotations

import torch

from gwray.gw import device_assignment, swap_twin
from gwray.gw.device_assignment import kernel_launch, triton_kernels

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


def best_swaps(C1: torch.Tensor, W: torch.Tensor, C2s: torch.Tensor):
    """Each position's best swap: (gain (B, n), partner (B, n) long), the lowest partner among
    ties; one kernel launch on CUDA (float32), :func:`swap_gains` maximised over rows elsewhere."""
    B, n = C1.shape[0], C1.shape[1]
    gain = torch.empty(B, n, dtype=C1.dtype, device=C1.device)
    partner = torch.empty(B, n, dtype=torch.long, device=C1.device)
    kern = triton_kernels(C1, "swap_kernels") if C1.dtype == torch.float32 else None
    with kernel_launch():
        if kern is not None:
            kern.best_swaps(C1, W, C2s, gain, partner)
        else:
            torch.max(swap_gains(C1, W, C2s), dim=2, out=(gain, partner))
    return gain, partner


def greedy_set(order, gain, partner, thresh, k: int) -> torch.Tensor:
    """The serial search's disjoint swap set (:func:`gwray.gw.swap_twin.greedy_set`), one kernel
    launch (its twin where there is no kernel). (B, n) → src (B, n) long."""
    src = torch.empty_like(partner)
    kern = triton_kernels(gain, "swap_kernels")
    with kernel_launch():
        if kern is not None:
            kern.greedy_set(order, gain, partner, thresh, k, src)
        else:
            src.copy_(torch.from_numpy(swap_twin.greedy_set(
                *device_assignment.host_arrays(order, gain, partner, thresh), k)))
    return src


def delta_q(P, cols: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Exact ΔQ (float64) of the moves ``src`` for the pairs of ``P``
    (:func:`gwray.gw.swap_twin.delta_q`), one kernel launch (its twin where there is no kernel)."""
    moved = src != torch.arange(src.shape[1], device=src.device)
    moved_rows = torch.argsort((~moved).to(torch.int8), dim=1, stable=True)  # moved rows first
    count, out = moved.sum(1), torch.empty(src.shape[0], dtype=torch.float64, device=src.device)
    kern = triton_kernels(cols, "swap_kernels")
    with kernel_launch():
        if kern is not None:
            kern.delta_q(P.Ca, P.Cb, P.ia, P.ib, cols, src, moved_rows, count, out)
        else:
            out.copy_(torch.from_numpy(swap_twin.delta_q(
                *device_assignment.host_arrays(P.Ca, P.Cb, P.ia, P.ib, cols, src))))
    return out


def swap_search(P, cols: torch.Tensor, active: torch.Tensor, max_rounds: int,
                check_every: int = 4):
    """Improve the permutations i → cols[b, i] of the ``active`` pairs of ``P``
    (:class:`gwray.gw.device_cg.Pairs`) by rounds of swaps, as the serial search.

    A round: every position's best swap from W = C1 C2[σ][:, σ] (search precision), the greedy
    set of disjoint improving swaps among the n/8 best positions, and its exact (float64) gain;
    the set is applied when that gain exceeds 1e-12 of Q, else the single best swap when its own
    does, else the pair stops. Every accepted move is a true improvement, so float32 noise can
    neither cycle nor raise the value.

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
    k = max(1, n // 8)
    ar = torch.arange(n, device=cols.device).expand(B, n)
    C2s = permuted(P.Xb, P.ib, cols)
    W = torch.bmm(P.C1, C2s)
    Q = exact_q(P.Ca, P.Cb, P.ia, P.ib, cols)
    changed = torch.zeros_like(active)
    for r in range(max_rounds):
        if n < 2 or (r % check_every == 0 and not P.read(active.any())):
            break
        thresh = 1e-12 * Q.abs().clamp_min(1e-300)
        gain, partner = best_swaps(P.C1, W, C2s)
        order = gain.argsort(dim=1, descending=True, stable=True)
        src = greedy_set(order, gain, partner, thresh, k)
        i = order[:, :1]
        single = ar.scatter(1, i, partner.gather(1, i)).scatter(1, partner.gather(1, i), i)
        gain_set, gain_one = delta_q(P, cols, src), delta_q(P, cols, single)
        set_ok = gain_set > thresh
        one_ok = (gain.gather(1, i)[:, 0] > thresh) & (gain_one > thresh)
        move = active & (set_ok | one_ok)
        src = torch.where(move[:, None], torch.where(set_ok[:, None], src, single), ar)
        Q = Q + torch.where(move, torch.where(set_ok, gain_set, gain_one), 0.0)
        cols = cols.gather(1, src)
        C2s = permuted(P.Xb, P.ib, cols)
        W = torch.bmm(P.C1, C2s)
        changed |= move
        active = active & move
    return cols, changed
