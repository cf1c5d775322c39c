"""Pairwise-swap local search on permutation plans for B pairs at once, on the device.

The device version of :mod:`gwray.gw.local_search` (same gain formula, same objective
Q(σ) = Σ_ik C1_ik C2_σ(i)σ(k), same swap set): every swap gain of a round is read off
W = C1 C2s, C2s = C2[σ][:, σ]. A round applies the greedy disjoint swap set of the serial search
when its exact joint gain is positive, else the single best swap, each only if the exact
(float64) Q rises; then C2s is gathered again from the layer stack and W gets the serial search's
rank update over the moved rows and columns (:func:`update_w`). The three steps of a round that would otherwise take many small or large torch
passes are two kernel launches on CUDA (:mod:`gwray.gw.swap_kernels`: the best partners; the
greedy set, its exact gain and the move) and their twins elsewhere (:mod:`gwray.gw.swap_twin`).
"""
from __future__ import annotations

import torch

from gwray.gw import device_assignment, swap_twin
from gwray.gw.device_assignment import kernel_launch, triton_kernels

EXACT_BYTES = 1 << 30
"""Float64 work arrays of one exact-objective pass at most (it runs in chunks of pairs)."""


def permuted(C: torch.Tensor, layer: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """C[layer[b]][cols[b]][:, cols[b]] for every b: (L, n, n), (B,) (or its (B, 1, 1) view),
    (B, n) → (B, n, n)."""
    return C[layer.view(-1, 1, 1), cols[:, :, None], cols[:, None, :]]


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


def best_swaps(C1: torch.Tensor, W: torch.Tensor, C2s: torch.Tensor, gain: torch.Tensor,
               partner: torch.Tensor) -> None:
    """Each position's best swap, into ``gain`` (B, n) (C1's dtype) and ``partner`` (B, n) long,
    the lowest partner among ties; one kernel launch on CUDA (float32), :func:`swap_gains`
    maximised over rows elsewhere."""
    kern = triton_kernels(C1, "swap_kernels") if C1.dtype == torch.float32 else None
    with kernel_launch():
        if kern is not None:
            kern.best_swaps(C1, W, C2s, gain, partner)
        else:
            torch.max(swap_gains(C1, W, C2s), dim=2, out=(gain, partner))


def permuted_into(C: torch.Tensor, layer: torch.Tensor, cols: torch.Tensor, out: torch.Tensor) -> None:
    """:func:`permuted` into ``out`` (B, n, n): one kernel launch on CUDA, the torch gather
    elsewhere."""
    kern = triton_kernels(cols, "swap_kernels")
    with kernel_launch():
        if kern is not None:
            kern.permuted(C, layer, cols, out)
        else:
            out.copy_(permuted(C, layer, cols))


def swap_round(P, gain, partner, k: int, cols, Q, active, changed) -> None:
    """One round of the swap search (:func:`gwray.gw.swap_twin.swap_round`: the greedy swap set,
    its exact gain and the single swap's, the move) for every active pair of ``P``, in place on
    ``cols`` (long), ``Q`` (float64), ``active`` and ``changed`` (int32); one kernel launch (its
    twin where there is no kernel)."""
    kern = triton_kernels(cols, "swap_kernels")
    with kernel_launch():
        if kern is not None:
            kern.swap_round(gain, partner, k, P.Ca, P.Cb, P.ia, P.ib, cols, Q, active, changed,
                            torch.empty_like(cols))
        else:
            out = (cols, Q, active, changed)
            host = device_assignment.host_arrays(gain, partner, P.Ca, P.Cb, P.ia, P.ib, *out)
            swap_twin.swap_round(*host[:2], k, *host[2:])
            if cols.device.type != "cpu":  # copies: write the results back
                for t, h in zip(out, host[6:]):
                    t.copy_(torch.from_numpy(h))


def swap_search(P, cols: torch.Tensor, active: torch.Tensor, max_rounds: int,
                check_every: int = 4):
    """Improve the permutations i → cols[b, i] of the ``active`` pairs of ``P``
    (:class:`gwray.gw.device_cg.Pairs`) by rounds of swaps, as the serial search.

    A round: every position's best swap from W = C1 C2[σ][:, σ] (search precision), then
    :func:`swap_round` (the greedy set of disjoint improving swaps among the n/8 best positions,
    applied when its exact float64 gain exceeds 1e-12 of Q, else the single best swap when its
    own does, else the pair stops), then C2[σ][:, σ] gathered again and W updated over the
    moved rows and columns (one host read per round: their most in a pair). Every
    accepted move is a true improvement, so float32 noise can neither cycle nor raise the value.

    Parameters
    ----------
    P : Pairs; cols : (B, n) long tensor; active : (B,) bool tensor.
    max_rounds : int.
    check_every : int; every ``check_every`` rounds ``P.read`` gives the pairs still improving;
        once half of them stopped the search goes on with the others alone (most pairs stop
        long before the slowest).

    Returns
    -------
    cols : (B, n) the improved permutations; changed : (B,) bool, which pairs moved.
    """
    B, n = cols.shape
    out_cols, out_changed = cols.contiguous().clone(), torch.zeros(B, dtype=torch.int32, device=cols.device)
    where = torch.arange(B, device=cols.device)
    work, cols, live, changed = P, out_cols.clone(), active.to(torch.int32), out_changed.clone()
    Q = exact_q(P.Ca, P.Cb, P.ia, P.ib, cols)
    C2s = permuted(P.Xb, P.ib, cols)
    W = torch.bmm(P.C1, C2s)
    for r in range(max_rounds):
        if n < 2:
            break
        if r % check_every == 0:
            keep = P.read(live.nonzero())[:, 0]
            if keep.size == 0:
                break
            # the stopped pairs leave: all at first, then by halves of at least 8 (a compaction
            # costs ~16 small ops; smaller sets are not worth it)
            if r == 0 or 2 * keep.size <= live.shape[0] and live.shape[0] - keep.size >= 8:
                out_cols[where], out_changed[where] = cols, changed
                keep = torch.as_tensor(keep, device=cols.device)
                where, work = where[keep], work.subset(keep)
                cols, Q, live, changed = cols[keep], Q[keep], live[keep], changed[keep]
                C2s, W = C2s[keep], W[keep]
                gain = torch.empty(keep.shape[0], n, dtype=W.dtype, device=W.device)
                partner = torch.empty_like(cols)
        best_swaps(work.C1, W, C2s, gain, partner)
        before = cols.clone()
        swap_round(work, gain, partner, max(1, n // 8), cols, Q, live, changed)
        moved = cols != before
        K = int(P.read(moved.sum(dim=1).amax()))  # the most positions a pair moved
        if K == 0:
            continue
        if 2 * K >= n:  # (tiny n) the update would cost more than the matmul
            permuted_into(work.Xb, work.ib, cols, C2s)
            torch.bmm(work.C1, C2s, out=W)
            continue
        # each pair's moved positions first (stable: the rest pads to K with unmoved ones)
        M = moved.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :K]
        rows_at = M[:, :, None].expand(-1, -1, n)
        D = C2s.gather(1, rows_at)
        permuted_into(work.Xb, work.ib, cols, C2s)
        D = C2s.gather(1, rows_at).sub_(D).mul_(moved.gather(1, M)[:, :, None])
        update_w(work.C1, W, M, D, moved)
    out_cols[where], out_changed[where] = cols, changed
    return out_cols, out_changed.bool()


def update_w(C1: torch.Tensor, W: torch.Tensor, M: torch.Tensor, D: torch.Tensor,
             moved: torch.Tensor) -> None:
    """W = C1 C2s after C2s changed in the rows and columns ``M`` only, in place: the serial
    search's rank-4k update (:func:`gwray.gw.local_search.swap_search`), 4·K·n² FLOPs instead of a
    matmul's 2n³.

    C1, W : (B, n, n); M : (B, K) long, the moved positions (padded with unmoved ones);
    D : (B, K, n), the rows M of C2s new minus old (zero at padding); moved : (B, n) bool.
    The change of C2s is D in rows M plus Dᵀ in columns M (C2s is symmetric); the columns' part
    leaves out rows M, already counted by the rows' part."""
    n = W.shape[1]
    W.baddbmm_(C1.gather(2, M[:, None, :].expand(-1, n, -1)), D)
    E = D.transpose(1, 2) * (~moved)[:, :, None]
    W.scatter_add_(2, M[:, None, :].expand(-1, n, -1), torch.bmm(C1, E))
