"""Log-domain Sinkhorn half-sweeps as Triton kernels (the entropic start's inner loop,
:mod:`gwray.gw.device_entropic`): each reads the batch's (B, n, m) kernel exponents E once, in
tiles, with an online log-sum-exp, where ``torch.logsumexp`` of ``E + v`` makes about four passes
and an (n, m) temporary. Their twins are the torch expressions in ``device_entropic``.

Imported only where torch sees CUDA and Triton is installed.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _half(E, other, log_w, out, N, M, KB: tl.constexpr, LB: tl.constexpr, ROWS: tl.constexpr):
    # kept index k (rows when ROWS, else columns) against reduced index l; the tile is E[k, l]
    # or E[l, k] as a (KB, LB) block, reduced along l with an online log-sum-exp
    b = tl.program_id(0)
    K = N if ROWS else M
    L = M if ROWS else N
    ks = tl.program_id(1) * KB + tl.arange(0, KB)
    kin = ks < K
    base = E + b.to(tl.int64) * N * M
    top = tl.full([KB], float("-inf"), tl.float32)
    total = tl.zeros([KB], tl.float32)
    for l0 in range(0, L, LB):
        ls = l0 + tl.arange(0, LB)
        lin = ls < L
        at = ks[:, None] * M + ls[None, :] if ROWS else ls[None, :] * M + ks[:, None]
        x = tl.load(base + at, mask=kin[:, None] & lin[None, :], other=float("-inf")).to(tl.float32)
        x += tl.load(other + b * L + ls, mask=lin, other=0.0).to(tl.float32)[None, :]
        new = tl.maximum(top, tl.max(x, axis=1))
        total = total * tl.exp(top - new) + tl.sum(tl.exp(x - new[:, None]), axis=1)
        top = new
    lse = top + tl.log(total)
    tl.store(out + b * K + ks, tl.load(log_w + b * K + ks, mask=kin, other=0.0) - lse, mask=kin)


def half_sweep(E, other, log_w, out, rows: bool) -> None:
    """out = log_w − logsumexp(E + other) over each row (``rows``: ``other`` is the column
    potential, (B, m)) or over each column (``other``: the row potential, (B, n)); float32
    contiguous CUDA tensors, E (B, n, m)."""
    B, n, m = E.shape
    KB, LB = (16, min(128, triton.next_power_of_2(m))) if rows else (min(128, triton.next_power_of_2(m)), 16)
    _half[(B, triton.cdiv(n if rows else m, KB))](E, other, log_w, out, n, m, KB=KB, LB=LB, ROWS=rows,
                                                 num_warps=4)
