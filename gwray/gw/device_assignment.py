"""The linear step of conditional gradient on the device, for B problems at once.

Uniform weights, n = m (the step is an assignment problem): an ε-scaling auction
(:mod:`gwray.gw.auction_twin` states the algorithm and its guarantee: within n·ε of the optimal
total benefit), one Triton kernel launch per call on CUDA (:mod:`gwray.gw.auction_kernel`) and
its numba twin elsewhere. A later, nearby problem (CG's next gradient) starts from the previous
prices and keeps the previous edges that are still ε-optimal.

Other weights or n ≠ m: log-domain Sinkhorn on the benefit, rounded to an exactly feasible plan
(Altschuler, Weed and Rigollet 2017, Algorithm 2), batched.

Everything stays on the device (the twin works on host copies where there is no kernel); no call
here reads the device.
"""
from __future__ import annotations

import importlib
import os
from contextlib import contextmanager

import torch

from gwray.gw.auction_twin import auction_twin

# ε of a cold problem's first phase relative to the benefit's range, and the factor between
# phases (measured on CG gradients of MiniLM layers, n = 1,024: ~21 n bids for a cold problem;
# 1/32 .. 1/2 and factors 4 .. 16 are within 30 % of it)
_EPS_START, _EPS_STEP = 0.125, 6.0

KERNEL_LAUNCHES = {"count": 0, "inside": 0}
"""Custom kernel launches (their twins' calls where there is no kernel), and whether one is under
way: the engine's op counter counts each launch as one device operation and skips the torch ops
a twin dispatches in its place."""


@contextmanager
def kernel_launch():
    """The span of one custom kernel launch, or of its twin's call (see ``KERNEL_LAUNCHES``)."""
    KERNEL_LAUNCHES["count"] += 1
    KERNEL_LAUNCHES["inside"] += 1
    try:
        yield
    finally:
        KERNEL_LAUNCHES["inside"] -= 1


def triton_kernels(t: torch.Tensor, module: str):
    """The Triton kernel module ``gwray.gw.<module>`` where ``t`` lives on CUDA and Triton is
    installed (it ships with PyPI's CUDA torch), else None: the caller runs the host twin.
    With ``TRITON_INTERPRET=1`` (Triton's CPU interpreter, for checking the kernels on a machine
    without a GPU) CPU tensors take the kernels too."""
    if t.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return None
    try:
        return importlib.import_module(f"gwray.gw.{module}")
    except ImportError:
        return None


def final_epsilon(A: torch.Tensor, rel: float) -> torch.Tensor:
    """Per problem, the auction's final ε: ``rel`` × range(A) / n, but never so small that a bid
    increment vanishes in the auction's float64 prices (64 ulps of max |A| + range).

    Parameters
    ----------
    A : (B, n, n) tensor of benefits.
    rel : float, the wanted suboptimality of the permutation's mean benefit, relative to the range.

    Returns
    -------
    (B,) float64 tensor; the permutation's total benefit is within n·ε of the optimum.
    """
    lo, hi = torch.aminmax(A.reshape(A.shape[0], -1), dim=1)
    hi, lo = hi.double(), lo.double()
    span = (hi - lo).clamp_min(torch.finfo(A.dtype).tiny)
    floor = 64.0 * torch.finfo(torch.float64).eps * (hi.abs().maximum(lo.abs()) + span)
    return torch.maximum(rel * span / A.shape[1], floor)


def host_arrays(*tensors):
    """A twin's inputs as numpy arrays: views of CPU tensors (on CUDA without Triton, copies).
    Twins read their inputs only through this (the engine's read counter tests rely on it)."""
    return [t.cpu().numpy() for t in tensors]


def _run(A, prices, cols, lo, hi, params, warm, active, max_bids):
    """One launch of the auction kernel where the tensors live on CUDA, else its host twin
    (on host copies where a CUDA machine lacks Triton). Returns (bids, done) (B,) tensors."""
    B, n = cols.shape
    bids = torch.zeros(B, dtype=torch.int64, device=A.device)
    done = torch.zeros(B, dtype=torch.int32, device=A.device)
    kern = triton_kernels(A, "auction_kernel")
    with kernel_launch():
        if kern is not None:
            scratch = (torch.empty(B, n, dtype=torch.int32, device=A.device),
                       torch.empty(B, n, dtype=torch.float64, device=A.device))
            kern.auction_kernel(A, prices, cols, lo, hi, params, warm, active, _EPS_STEP, max_bids,
                                bids, done, *scratch)
        else:
            host = host_arrays(A, prices, cols, lo, hi, params, warm, active, bids, done)
            auction_twin(*host[:8], _EPS_STEP, max_bids, *host[8:])
            if A.device.type != "cpu":  # copies: write the results back
                for t, h in zip((prices, cols, bids, done), (host[1], host[2], host[8], host[9])):
                    t.copy_(torch.from_numpy(h))
    return bids, done


def auction(A: torch.Tensor, rel: float, prices: torch.Tensor | None = None,
            prev: torch.Tensor | None = None, active: torch.Tensor | None = None,
            warm: torch.Tensor | None = None, warm_phases: int = 1, max_bids: int | None = None):
    """Maximum-benefit assignment of B square problems by ε-scaling auction, one kernel launch.

    The algorithm (a Gauss-Seidel forward auction, each problem in its own program) and its
    guarantee are :mod:`gwray.gw.auction_twin`'s: the result is within n·ε_final of the optimal
    total benefit, ε_final = :func:`final_epsilon` (A, rel). On CUDA it runs as the Triton kernel
    :mod:`gwray.gw.auction_kernel`, elsewhere as its numba twin; both give the same permutations
    and prices, and compute every ε themselves (no torch pass but A's range).

    Parameters
    ----------
    A : (B, n, n) float32 or float64 tensor
        Benefits; row i of problem b is assigned column cols[b, i], maximising Σ_i A[b, i, cols].
    rel : float
        The final ε relative to the benefit's range / n.
    prices : (B, n) float64 tensor, optional
        Column prices of a nearby problem (a warm start); without them the prices start at 0 and
        ε at 1/8 of the benefit's range.
    prev : (B, n) long tensor, optional
        A previous assignment: its edges that are ε-optimal at ``prices`` are kept.
    active : (B,) bool tensor, optional
        Only these problems are solved; the others keep their prices (and ``prev``, or any
        permutation).
    warm : (B,) bool tensor, optional
        With ``prices``: the problems whose prices are a warm start (default all); the others
        start cold.
    warm_phases : int
        A warm problem's first ε is ε_final × 6^warm_phases at least, raised to the largest
        ε-CS violation of ``prev`` at its prices (see :mod:`gwray.gw.auction_twin`).
    max_bids : int, optional
        Bids per problem at most (default 1,000 n: ~50× what a cold problem needs); a problem
        that runs out gets the free columns for its free rows (``done`` False, bound lost).

    Returns
    -------
    cols : (B, n) long tensor, the permutations.
    prices : (B, n) float64 tensor, the final prices (to warm-start the next call).
    done : (B,) bool tensor, False where the bid budget ran out (the bound n·ε then fails).
    bids : (B,) int64 tensor, bids made per problem.
    """
    B, n, _ = A.shape
    dev = A.device
    ones = torch.ones(B, dtype=torch.int32, device=dev)
    active = ones if active is None else active.to(torch.int32)
    warm = (ones if warm is None else warm.to(torch.int32)) if prices is not None else ones * 0
    cols = (torch.full((B, n), -1, dtype=torch.int32, device=dev) if prev is None
            else prev.to(torch.int32, copy=True))
    prices = (torch.zeros(B, n, dtype=torch.float64, device=dev) if prices is None
              else prices.to(torch.float64, copy=True))
    lo, hi = torch.aminmax(A.reshape(B, -1), dim=1)
    params = torch.tensor([rel, torch.finfo(A.dtype).tiny, _EPS_STEP ** warm_phases],
                          dtype=torch.float64, device=dev)
    bids, done = _run(A.contiguous(), prices, cols, lo, hi, params, warm, active, max_bids or 1000 * n)
    return cols.long(), prices, done.bool(), bids


def round_plan(T: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Batched nearest-feasible rounding (Altschuler et al. 2017): (B, n, m) → row sums p, column
    sums q (up to float rounding), entries ≥ 0; shapes p (B, n), q (B, m)."""
    r = T.sum(2)
    T = T * torch.clamp(p / torch.where(r > 0, r, 1.0), max=1.0)[:, :, None]
    c = T.sum(1)
    T = T * torch.clamp(q / torch.where(c > 0, c, 1.0), max=1.0)[:, None, :]
    er, ec = (p - T.sum(2)).clamp_min(0), (q - T.sum(1)).clamp_min(0)
    s = er.sum(1).clamp_min(torch.finfo(T.dtype).tiny)
    return T + er[:, :, None] * ec[:, None, :] / s[:, None, None]


def sinkhorn(M: torch.Tensor, p: torch.Tensor, q: torch.Tensor, eps: torch.Tensor, iters: int,
             stages: int = 1, eps_start: torch.Tensor | None = None):
    """Log-domain Sinkhorn for min ⟨M, T⟩ + ε KL over couplings of (p, q), batched, with
    potentials in cost units (so ε can be annealed without rescaling them).

    Parameters
    ----------
    M : (B, n, m) costs; p (B, n), q (B, m) positive weights; eps (B,) final regularisation.
    iters : (row, column) sweeps per stage.
    stages, eps_start : ε goes geometrically from ``eps_start`` (B,) to ``eps`` over ``stages``
        stages (one stage at ``eps`` when ``eps_start`` is None).

    Returns
    -------
    T : (B, n, m) plan at the last ε (column sums exact, row sums approximate),
    g : (B, m) column potentials (cost units).
    """
    logp, logq = p.log(), q.log()
    f, g = torch.zeros_like(p), torch.zeros_like(q)
    for s in range(stages):
        e = eps if eps_start is None or stages == 1 else eps_start * (eps / eps_start) ** (s / (stages - 1))
        e = e[:, None]
        for _ in range(iters):
            f = e * (logp - torch.logsumexp((g[:, None, :] - M) / e[:, :, None], dim=2))
            g = e * (logq - torch.logsumexp((f[:, :, None] - M) / e[:, :, None], dim=1))
    return ((f[:, :, None] + g[:, None, :] - M) / e[:, :, None]).exp(), g


def transport_vertex(A: torch.Tensor, p: torch.Tensor, q: torch.Tensor, rel: float = 1e-3,
                     stages: int = 4, iters: int = 50) -> torch.Tensor:
    """An exactly feasible, near-maximal plan for ⟨A, S⟩ over couplings of (p, q), batched:
    Sinkhorn with ε annealed from 10 % to ``rel`` × range(A), then :func:`round_plan`.
    (B, n, m) → (B, n, m)."""
    span = (A.amax(dim=(1, 2)) - A.amin(dim=(1, 2))).clamp_min(torch.finfo(A.dtype).tiny)
    M = A.amax(dim=(1, 2), keepdim=True) - A
    T, _ = sinkhorn(M, p, q, rel * span, iters, stages, 0.1 * span)
    return round_plan(T, p, q)
