"""The swap search's device kernels (Triton), one launch each per round for the whole batch; their
host twins and algorithms are in :mod:`gwray.gw.swap_twin` and
:func:`gwray.gw.device_local_search.swap_gains`.

* :func:`best_swaps`: every position's best swap gain and partner, G read off W, W^T, C1 and
  C2[σ][:, σ] tile by tile and reduced in registers: four reads of n² values per pair, where the
  torch expression makes ~15 passes and five n² temporaries.
* :func:`greedy_set`: the greedy disjoint swap set, one program per problem (its k = n/8
  candidates in order, the taken marks in registers).
* :func:`delta_q`: the exact (float64) ΔQ of a move, one program per problem looping over the
  moved rows only.

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
def _greedy(order, gain, partner, thresh, src, N, K, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    taken = tl.zeros([BLOCK], tl.int32)
    s = offs.to(tl.int64)
    th = tl.load(thresh + b)
    for t in range(0, K):
        i = tl.load(order + b * N + t)
        j = tl.load(partner + b * N + i)
        g = tl.load(gain + b * N + i)
        busy = tl.sum(tl.where((offs == i) | (offs == j), taken, 0), axis=0)
        if (g > th) & (busy == 0):
            taken = tl.where((offs == i) | (offs == j), 1, taken)
            s = tl.where(offs == i, j, tl.where(offs == j, i, s))
    tl.store(src + b * N + offs, s, mask=offs < N)


def greedy_set(order, gain, partner, thresh, k: int, src) -> None:
    """:func:`gwray.gw.swap_twin.greedy_set` on CUDA tensors, into ``src``."""
    B, n = gain.shape
    _greedy[(B,)](order, gain, partner, thresh, src, n, int(k), BLOCK=triton.next_power_of_2(n),
                  num_warps=4)


@triton.jit
def _delta(Ca, Cb, ia, ib, cols, src, moved_rows, count, out, N, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    inb = offs < N
    C1 = Ca + tl.load(ia + b) * N * N
    C2 = Cb + tl.load(ib + b) * N * N
    row = b * N
    sig = tl.load(cols + row + offs, mask=inb, other=0)
    s = tl.load(src + row + offs, mask=inb, other=0)
    sig_new = tl.load(cols + row + s, mask=inb, other=0)
    weight = tl.where(s != offs, 1.0, 2.0).to(tl.float64)
    acc = tl.zeros([BLOCK], tl.float64)
    for t in range(0, tl.load(count + b)):
        i = tl.load(moved_rows + row + t)
        c1 = tl.load(C1 + i * N + offs, mask=inb, other=0.0)
        new = tl.load(C2 + tl.load(cols + row + tl.load(src + row + i)) * N + sig_new, mask=inb, other=0.0)
        old = tl.load(C2 + tl.load(cols + row + i) * N + sig, mask=inb, other=0.0)
        acc += c1 * (new - old) * weight
    tl.store(out + b, tl.sum(acc, axis=0))


def delta_q(Ca, Cb, ia, ib, cols, src, moved_rows, count, out) -> None:
    """:func:`gwray.gw.swap_twin.delta_q` on CUDA tensors, into ``out`` (B,) float64; the moved
    rows of each problem come first in ``moved_rows`` (B, n), ``count`` (B,) of them."""
    B, n = cols.shape
    _delta[(B,)](Ca, Cb, ia, ib, cols, src, moved_rows, count, out, n,
                 BLOCK=triton.next_power_of_2(n), num_warps=4)
