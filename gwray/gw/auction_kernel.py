"""The device auction as one Triton kernel: every problem of a batch is one program that runs all
its ε-phases and bids in a single launch (the algorithm, its guarantee and its host twin:
:mod:`gwray.gw.auction_twin`; a test checks kernel = twin bit for bit on CUDA).

One launch per linear step replaces the thousands of rounds of ~20 small torch ops that the
batched Jacobi auction needed (97 % of the engine's GPU time at n = 1,024-2,048, latency-bound).
A program keeps its problem's prices (float64), owners and assignment in registers; a bid reads
one row of A (n values) and makes four block reductions; the CS pass at the start of a phase
reads A in tiles of ``ROWS`` rows. Global memory is only the in/out arrays and a scratch owner
array used to invert the assignment (each write there is followed by a block barrier).

Imported only where torch sees CUDA and Triton is installed (Triton ships with PyPI's CUDA torch).
"""
from __future__ import annotations

import triton
import triton.language as tl

WARPS: int | None = None
"""Warps per program; None: one per 256 columns (1 to 16). ``bench/gpu.py`` times the choices."""


@triton.jit
def _auction(A, prices, cols, owner, viol, lo, hi, params, warm, active, bids_out, done_out,
             N, step, max_bids, BLOCK: tl.constexpr, ROWS: tl.constexpr):
    b = tl.program_id(0)
    if tl.load(active + b) != 0:
        offs = tl.arange(0, BLOCK)
        inb = offs < N
        rr = tl.arange(0, ROWS)
        A_b = A + b.to(tl.int64) * N * N
        base = b * N
        # the twin's epsilons(): final ε, a cold first ε (the cap), a warm first ε
        lo_b = tl.load(lo + b).to(tl.float64)
        hi_b = tl.load(hi + b).to(tl.float64)
        span = tl.maximum(hi_b - lo_b, tl.load(params + 1))
        eps1 = tl.maximum(tl.load(params) * span / N,
                          64.0 * 2.220446049250313e-16 * (tl.maximum(tl.abs(hi_b), tl.abs(lo_b)) + span))
        cap = tl.maximum(0.125 * span, eps1)
        is_warm = tl.load(warm + b) != 0
        eps = cap
        if is_warm:
            eps = tl.minimum(eps1 * tl.load(params + 2), cap)
        p = tl.load(prices + base + offs, mask=inb, other=0.0)
        p = tl.where(inb, tl.where(is_warm, p, 0.0), float("inf"))
        col = tl.load(cols + base + offs, mask=inb, other=-1)
        tl.store(owner + base + offs, -1, mask=inb)
        tl.debug_barrier()
        tl.store(owner + base + col, offs, mask=inb & (col >= 0))
        tl.debug_barrier()
        own = tl.load(owner + base + offs, mask=inb, other=-1)
        bids = 0
        done = 0
        first = 1
        phases = 1
        while phases != 0:
            if tl.max(col, axis=0) >= 0:  # the CS pass (a cold problem has nothing assigned)
                tl.store(cols + base + offs, col, mask=inb)
                tl.debug_barrier()
                for r0 in range(0, N, ROWS):
                    rows = r0 + rr
                    rin = rows < N
                    mine_col = tl.load(cols + base + rows, mask=rin, other=-1)
                    tile = tl.load(A_b + rows[:, None] * N + offs[None, :],
                                   mask=rin[:, None] & inb[None, :], other=float("-inf"))
                    v = tile.to(tl.float64) - p[None, :]
                    best = tl.max(v, axis=1)
                    mine = tl.sum(tl.where(offs[None, :] == mine_col[:, None], v, 0.0), axis=1)
                    tl.store(viol + base + rows, tl.where(mine_col >= 0, best - mine, float("-inf")),
                             mask=rin)
                tl.debug_barrier()
                rv = tl.load(viol + base + offs, mask=inb, other=float("-inf"))
                if first != 0:  # raise ε to the largest violation: stale prices get coarse phases
                    eps = tl.minimum(tl.maximum(tl.max(rv, axis=0), eps), cap)
                freed = inb & (rv > eps)
                tl.store(owner + base + offs, own, mask=inb)
                tl.debug_barrier()
                tl.store(owner + base + col, -1, mask=freed)
                tl.debug_barrier()
                own = tl.load(owner + base + offs, mask=inb, other=-1)
                col = tl.where(freed, -1, col)
            first = 0
            ptr = 0
            nxt = -1
            bidding = 1
            while bidding != 0:
                if nxt < 0:
                    nxt = tl.min(tl.where(inb & (col < 0) & (offs >= ptr), offs, BLOCK), axis=0)
                    ptr = nxt
                if nxt >= N:
                    bidding = 0
                elif bids >= max_bids:
                    bidding = 0
                    phases = 0
                else:
                    row = tl.load(A_b + nxt * N + offs, mask=inb, other=float("-inf"))
                    v = row.to(tl.float64) - p
                    v1, j1 = tl.max(v, axis=0, return_indices=True,
                                    return_indices_tie_break_left=True)
                    v2 = tl.max(tl.where(offs == j1, float("-inf"), v), axis=0)
                    if v2 == float("-inf"):
                        v2 = v1
                    pj = tl.sum(tl.where(offs == j1, p, 0.0), axis=0)
                    p = tl.where(offs == j1, pj + (v1 - v2) + eps, p)
                    evicted = tl.max(tl.where(offs == j1, own, -1), axis=0)
                    own = tl.where(offs == j1, nxt, own)
                    col = tl.where(offs == nxt, j1, col)
                    col = tl.where(offs == evicted, -1, col)
                    nxt = evicted
                    bids += 1
            if phases != 0:
                if eps <= eps1:
                    done = 1
                    phases = 0
                else:
                    eps = tl.maximum(eps / step, eps1)
        if done == 0:  # out of bids: the free rows get the free columns in index order
            free_col = inb & (own < 0)
            tl.store(owner + base + tl.cumsum(free_col.to(tl.int32), axis=0) - 1, offs, mask=free_col)
            tl.debug_barrier()
            free_row = inb & (col < 0)
            fill = tl.load(owner + base + tl.cumsum(free_row.to(tl.int32), axis=0) - 1, mask=free_row,
                           other=0)
            col = tl.where(free_row, fill, col)
        tl.store(prices + base + offs, p, mask=inb)
        tl.store(cols + base + offs, col, mask=inb)
        tl.store(bids_out + b, bids)
        tl.store(done_out + b, done)


def auction_kernel(A, prices, cols, lo, hi, params, warm, active, step: float, max_bids: int,
                   bids, done, owner, viol) -> None:
    """The kernel over a batch, in place; the contract of
    :func:`gwray.gw.auction_twin.auction_twin` on CUDA tensors, plus two (B, n) scratch arrays
    (``owner`` int32, ``viol`` float64)."""
    B, n = A.shape[0], A.shape[1]
    block = triton.next_power_of_2(n)
    _auction[(B,)](A, prices, cols, owner, viol, lo, hi, params, warm, active, bids, done,
                   n, float(step), int(max_bids), BLOCK=block, ROWS=max(1, 4096 // block),
                   num_warps=WARPS or max(1, min(16, block // 256)))
