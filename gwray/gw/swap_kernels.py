"""The swap search's device kernels (Triton), one launch each per round for the whole batch; their
host twins and algorithms are in :mod:`gwray.gw.swap_twin` and
:func:`gwray.gw.device_local_search.swap_gains`.

* :func:`best_swaps`: every position's best swap gain and partner, G read off W, W^T, C1 and
  C2[σ][:, σ] tile by tile and reduced in registers: four reads of n² values per pair, where the
  torch expression makes ~15 passes and five n² temporaries.
* :func:`swap_round`: the rest of a round, one program per problem: the positions sorted by gain,
  the greedy disjoint swap set (its k = n/8 candidates in order, the taken marks in registers),
  the exact (float64) ΔQ of the set and of the single best swap over the moved rows only, and the
  move.
* :func:`permuted`: C2[σ][:, σ] gathered from the layer stack into a buffer, tile by tile.

Imported only where torch sees CUDA and Triton is installed.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _best_swaps(C1, W, C2s, gain_out, partner_out, N, R: tl.constexpr, BJ: tl.constexpr):
    b = tl.program_id(0)
    rows = tl.program_id(1) * R + tl.arange(0, R)
    rin = rows < N
    base = b.to(tl.int64) * N * N
    wi = tl.load(W + base + rows * (N + 1), mask=rin, other=0.0)
    di = tl.load(C1 + base + rows * (N + 1), mask=rin, other=0.0)
    ei = tl.load(C2s + base + rows * (N + 1), mask=rin, other=0.0)
    best = tl.full([R], float("-inf"), tl.float32)
    arg = tl.zeros([R], tl.int32)
    for j0 in range(0, N, BJ):
        cols = j0 + tl.arange(0, BJ)
        cin = cols < N
        m = rin[:, None] & cin[None, :]
        ij = rows[:, None] * N + cols[None, :]
        w_ij = tl.load(W + base + ij, mask=m, other=0.0)
        w_ji = tl.load(W + base + cols[None, :] * N + rows[:, None], mask=m, other=0.0)
        c1 = tl.load(C1 + base + ij, mask=m, other=0.0)
        c2 = tl.load(C2s + base + ij, mask=m, other=0.0)
        wj = tl.load(W + base + cols * (N + 1), mask=cin, other=0.0)
        dj = tl.load(C1 + base + cols * (N + 1), mask=cin, other=0.0)
        ej = tl.load(C2s + base + cols * (N + 1), mask=cin, other=0.0)
        G = 2.0 * (w_ij + w_ji - wi[:, None] - wj[None, :]) + 4.0 * c1 * c2
        G -= 2.0 * (di[:, None] * (c2 - ei[:, None]) + dj[None, :] * (c2 - ej[None, :])) \
            + 2.0 * c1 * (ei[:, None] + ej[None, :])
        G += (di[:, None] - dj[None, :]) * (ej[None, :] - ei[:, None])
        G = tl.where(m & (rows[:, None] != cols[None, :]), G, float("-inf"))
        top, at = tl.max(G, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = top > best
        best = tl.where(better, top, best)
        arg = tl.where(better, at + j0, arg)
    tl.store(gain_out + b * N + rows, best, mask=rin)
    tl.store(partner_out + b * N + rows, arg.to(tl.int64), mask=rin)


def best_swaps(C1, W, C2s, gain, partner) -> None:
    """Into gain (B, n) float32 and partner (B, n) long: the swap gains of
    :func:`~gwray.gw.device_local_search.swap_gains` maximised over each row (the lowest partner
    among ties), for contiguous float32 CUDA tensors."""
    B, n = C1.shape[0], C1.shape[1]
    R, BJ = 16, min(256, triton.next_power_of_2(n))
    _best_swaps[(B, triton.cdiv(n, R))](C1, W, C2s, gain, partner, n, R=R, BJ=BJ, num_warps=4)


@triton.jit
def _swap_round(gain, partner, K, Ca, Cb, ia, ib, cols, Q, active, changed, moved_rows, N,
                BLOCK: tl.constexpr):
    b = tl.program_id(0)
    if tl.load(active + b) != 0:
        row = b * N
        offs = tl.arange(0, BLOCK)
        inb = offs < N
        # positions by gain, largest first, lowest index first among ties: sort keys of the
        # order-preserving bits of −gain above the index (padding sorts last)
        neg = -tl.load(gain + row + offs, mask=inb, other=float("-inf"))
        bits = neg.to(tl.int32, bitcast=True)
        ordered = tl.where(bits < 0, ~bits, bits | -2147483648).to(tl.int64) & 0xFFFFFFFF
        order = tl.sort((ordered << 31) | offs.to(tl.int64)) & 0x7FFFFFFF
        q = tl.load(Q + b)
        thresh = 1e-12 * tl.maximum(tl.abs(q), 1e-300)
        sig = tl.load(cols + row + offs, mask=inb, other=0)
        new = sig
        taken = tl.zeros([BLOCK], tl.int32)
        moved = 0
        for t in range(0, K):  # the greedy disjoint set, taken marks in registers
            i = tl.sum(tl.where(offs == t, order, 0), axis=0)
            j = tl.load(partner + row + i)
            busy = tl.sum(tl.where((offs == i) | (offs == j), taken, 0), axis=0)
            if (tl.load(gain + row + i) > thresh) & (busy == 0):
                taken = tl.where((offs == i) | (offs == j), 1, taken)
                si = tl.load(cols + row + i)
                sj = tl.load(cols + row + j)
                new = tl.where(offs == i, sj, tl.where(offs == j, si, new))
                tl.store(moved_rows + row + moved, i)
                tl.store(moved_rows + row + moved + 1, j)
                moved += 2
        tl.debug_barrier()
        C1 = Ca + tl.load(ia + b) * N * N
        C2 = Cb + tl.load(ib + b) * N * N
        weight = tl.where(taken != 0, 1.0, 2.0).to(tl.float64)
        acc = tl.zeros([BLOCK], tl.float64)
        for t in range(0, moved):  # ΔQ of the set over the moved rows (pairs i, j stored together)
            i = tl.load(moved_rows + row + t)
            new_i = tl.load(cols + row + tl.load(moved_rows + row + (t ^ 1)))
            c1 = tl.load(C1 + i * N + offs, mask=inb, other=0.0)
            gain_new = tl.load(C2 + new_i * N + new, mask=inb, other=0.0)
            gain_old = tl.load(C2 + tl.load(cols + row + i) * N + sig, mask=inb, other=0.0)
            acc += c1 * (gain_new - gain_old) * weight
        d_set = tl.sum(acc, axis=0)
        i0 = tl.sum(tl.where(offs == 0, order, 0), axis=0)
        j0 = tl.load(partner + row + i0)
        si0 = tl.load(cols + row + i0)
        sj0 = tl.load(cols + row + j0)
        one = tl.where(offs == i0, sj0, tl.where(offs == j0, si0, sig))
        w1 = tl.where((offs == i0) | (offs == j0), 1.0, 2.0).to(tl.float64)
        d = tl.load(C1 + i0 * N + offs, mask=inb, other=0.0) * (
            tl.load(C2 + sj0 * N + one, mask=inb, other=0.0) - tl.load(C2 + si0 * N + sig, mask=inb, other=0.0))
        d += tl.load(C1 + j0 * N + offs, mask=inb, other=0.0) * (
            tl.load(C2 + si0 * N + one, mask=inb, other=0.0) - tl.load(C2 + sj0 * N + sig, mask=inb, other=0.0))
        d_one = tl.sum(d * w1, axis=0)
        if d_set > thresh:
            tl.store(cols + row + offs, new, mask=inb)
            tl.store(Q + b, q + d_set)
            tl.store(changed + b, 1)
        elif (tl.load(gain + row + i0) > thresh) & (d_one > thresh):
            tl.store(cols + row + offs, one, mask=inb)
            tl.store(Q + b, q + d_one)
            tl.store(changed + b, 1)
        else:
            tl.store(active + b, 0)


def swap_round(gain, partner, k: int, Ca, Cb, ia, ib, cols, Q, active, changed,
               moved_rows) -> None:
    """:func:`gwray.gw.swap_twin.swap_round` on CUDA tensors, plus a (B, n) int64 scratch array."""
    B, n = cols.shape
    _swap_round[(B,)](gain, partner, int(k), Ca, Cb, ia, ib, cols, Q, active, changed,
                      moved_rows, n, BLOCK=triton.next_power_of_2(n), num_warps=4)


@triton.jit
def _permuted(C, layer, cols, out, N, R: tl.constexpr, BJ: tl.constexpr):
    b = tl.program_id(0)
    rows = tl.program_id(1) * R + tl.arange(0, R)
    js = tl.program_id(2) * BJ + tl.arange(0, BJ)
    rin, jin = rows < N, js < N
    src_r = tl.load(cols + b * N + rows, mask=rin, other=0)
    src_c = tl.load(cols + b * N + js, mask=jin, other=0)
    base = tl.load(layer + b) * N * N
    m = rin[:, None] & jin[None, :]
    values = tl.load(C + base + src_r[:, None] * N + src_c[None, :], mask=m, other=0.0)
    tl.store(out + b.to(tl.int64) * N * N + rows[:, None] * N + js[None, :], values, mask=m)


def permuted(C, layer, cols, out) -> None:
    """out[b] = C[layer[b]][cols[b]][:, cols[b]] for contiguous CUDA tensors (one launch)."""
    B, n = cols.shape
    R, BJ = 16, min(256, triton.next_power_of_2(n))
    _permuted[(B, triton.cdiv(n, R), triton.cdiv(n, BJ))](C, layer, cols, out, n, R=R, BJ=BJ, num_warps=4)
