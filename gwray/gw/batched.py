"""GW for many pairs at once on an accelerator (or torch's CPU): the path GPU workers use.

The serial solver's algorithm (:mod:`gwray.gw.solver`: identity and product starts, conditional
gradient with exact line search and carried gradient, swap search, TLB) runs for B pairs of equal
sizes at once with every step on the device (:mod:`gwray.gw.device_cg`, ``device_assignment``,
``device_local_search``, ``device_bounds``); no host solver is called. The search runs in
float32 (TF32 matmuls on a GPU unless ``tf32=False``); every reported value is then recomputed in
float64 from the final plan (O(n²) for a permutation), and the lower bound is certified in float64
(a c-transform), so approximate steps can only cost quality, never correctness.

Host reads: every synchronisation goes through :func:`host_read` (a counter), one boolean every
few iterations inside the loops and the results at the end.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np
import torch

from gwray.errors import GwrayInputError
from gwray.gw.device_assignment import auction, final_epsilon, round_plan
from gwray.gw.device_bounds import certified_tlb, slb
from gwray.gw.device_cg import Pairs, State, cg, polish
from gwray.gw.device_local_search import permuted
from gwray.gw.device_starts import ALIGNED_ONLY, STARTS, first_step_value, start_state
from gwray.gw.solver import GWResult

__all__ = ["batched_gw", "plan_batch", "device_costs", "host_read", "HOST_READS"]

HOST_READS = {"count": 0}
"""How many times the engine synchronised with the device (tests bound it)."""


def host_read(x: torch.Tensor):
    """The engine's one way to read the device: a 0-d bool → bool, anything else → numpy."""
    HOST_READS["count"] += 1
    return bool(x) if x.dim() == 0 and x.dtype == torch.bool else x.cpu().numpy()


def _as_tensor(x, name: str, device, dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GwrayInputError(f"{name}: not a numeric array ({exc})") from exc
    return torch.as_tensor(arr, device=device).to(dtype)


def _check_costs(C: torch.Tensor, name: str) -> None:
    if C.ndim != 3 or C.shape[1] != C.shape[2]:
        raise GwrayInputError(f"{name}: expected shape (B, n, n), got {tuple(C.shape)}")
    if C.shape[0] == 0 or C.shape[1] == 0:
        raise GwrayInputError(f"{name}: empty batch or empty layer, shape {tuple(C.shape)}")
    bad = ~torch.isfinite(C)
    if host_read(bad.any()):
        where = host_read(bad.nonzero()[0]).tolist()
        raise GwrayInputError(f"{name}: non-finite value (NaN or inf) at pair {where[0]}, "
                              f"index {tuple(where[1:])}")
    asym = (C - C.transpose(1, 2)).abs().amax(dim=(1, 2))
    scale = C.abs().amax(dim=(1, 2)).clamp_min(1.0)
    bad = asym > 1e-8 * scale
    if host_read(bad.any()):
        b = int(host_read(bad.nonzero()[0, 0]))
        raise GwrayInputError(f"{name}: pair {b} is not symmetric "
                              f"(max |C - C^T| = {float(host_read(asym[b])):.3g})")


def _weights(w, name: str, B: int, n: int, device) -> torch.Tensor:
    if w is None:
        return torch.full((B, n), 1.0 / n, device=device, dtype=torch.float64)
    w = _as_tensor(w, name, device, torch.float64)
    if w.ndim == 1:
        w = w.expand(B, -1)
    if tuple(w.shape) != (B, n):
        raise GwrayInputError(f"{name}: expected shape ({B}, {n}) or ({n},), got {tuple(w.shape)}")
    if not host_read(torch.isfinite(w).all()):
        raise GwrayInputError(f"{name}: non-finite weight (NaN or inf)")
    if host_read((w <= 0).any()):
        raise GwrayInputError(f"{name}: weights must be positive (Sinkhorn's log domain needs it)")
    err = (w.sum(dim=1) - 1.0).abs()
    if host_read((err > 1e-6).any()):
        b = int(host_read(err.argmax()))
        raise GwrayInputError(f"{name}: weights of pair {b} sum to {float(host_read(w[b].sum())):.9g}, not 1")
    return (w / w.sum(dim=1, keepdim=True)).contiguous()


def plan_batch(n: int, m: int, device, budget_bytes: int | None = None) -> int:
    """How many pairs of sizes (n, m) fit in one batch on ``device``.

    Per pair the engine holds the float64 costs (kept for the exact values) and their float32
    copies, and at its peak about 128 bytes per (i, j) of work arrays: T and A in float32 plus
    either the swap search's gains and float64 acceptance test, the auction's float64 check pass,
    or the bound's sorted rows, quantiles and Γ in float64 (measured: a batch of 8 pairs at
    n = 512 raised the peak RSS by 136 bytes per entry and pair, inputs excluded).

    Parameters
    ----------
    n, m : int, the sizes of C1 and C2.
    device : torch.device or str.
    budget_bytes : int, optional. Default: 70 % of the free memory of a CUDA device, or a quarter
        of the host's available memory for "cpu".

    Returns
    -------
    int ≥ 1.
    """
    device = torch.device(device)
    if budget_bytes is None:
        if device.type == "cuda":
            budget_bytes = int(0.7 * torch.cuda.mem_get_info(device)[0])
        else:
            budget_bytes = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    per_pair = 12 * (n * n + m * m) + 128 * n * m
    return max(1, int(budget_bytes // per_pair))


def device_costs(layers, device, metric: str = "euclidean", normalize: str = "mean") -> torch.Tensor:
    """Cost matrices built on the device from activations (ship (n, d) activations, not n² costs).

    Parameters
    ----------
    layers : sequence of (n, d_k) arrays or tensors (equal n).
    device : where to build them; metric, normalize : see :func:`gwray.gw.costs.cost_matrix`.

    Returns
    -------
    (L, n, n) float64 tensor on ``device``.
    """
    from gwray.gw.costs import cost_matrix

    return torch.stack([cost_matrix(torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor)
                                                    else X).to(device), metric, normalize,
                                    name=f"layer {k}") for k, X in enumerate(layers)])


def _exact(S: State, P: Pairs, lap: bool):
    """Float64 value and marginal error of each final plan; the dense float64 plans where they
    are not permutations (None when all are)."""
    (C1d, C2d), p, q, const = P.exact, P.p, P.q, P.const
    B, n = C1d.shape[0], C1d.shape[1]
    value = torch.empty(B, dtype=torch.float64, device=C1d.device)
    err = torch.empty(B, dtype=torch.float64, device=C1d.device)
    perm = S.is_perm if lap else torch.zeros(B, dtype=torch.bool, device=C1d.device)
    T64 = None
    if lap and host_read(perm.any()):
        Q = (C1d * permuted(C2d, S.perm)).sum(dim=(1, 2))
        value = torch.where(perm, const - 2.0 * Q / n ** 2, value)
        hits = torch.zeros(B, n, dtype=torch.float64, device=C1d.device)
        hits.scatter_add_(1, S.perm, torch.ones_like(hits))  # each column once: row sums are 1/n
        err = torch.where(perm, (hits - 1.0).abs().sum(1) / n, err)
    if host_read((~perm).any()):
        T64 = round_plan(S.T.double(), p, q)
        dense = const - 2.0 * (T64 * torch.bmm(C1d, torch.bmm(T64, C2d))).sum(dim=(1, 2))
        value = torch.where(perm, value, dense)
        dense_err = torch.maximum((T64.sum(2) - p).abs().sum(1), (T64.sum(1) - q).abs().sum(1))
        err = torch.where(perm, err, dense_err)
    return value.clamp_min(0.0), err, perm, T64


def _solve_chunk(C1d, C2d, p, q, names, dtype, max_iter, tol, swap_rounds, bound, assignment_eps,
                 prune):
    """The serial solver's portfolio for one device batch: every start's CG (with ``prune``, a
    start is dropped for the pairs whose first step ends above ``prune`` × the best CG end so far,
    and abandoned above it), then the swap search polishes each pair's best CG end. Returns the best values,
    lower bounds, the ends [(start, pair index, value, marginal error, is_perm, perm, dense plan,
    iterations)] and whether the pairs are assignment problems."""
    B, n, m = C1d.shape[0], C1d.shape[1], C2d.shape[1]
    dev = C1d.device
    uniform = host_read(((p - 1.0 / n).abs().amax() <= 1e-12) & ((q - 1.0 / m).abs().amax() <= 1e-12))
    lap = n == m and uniform
    const = (torch.einsum("bi,bik,bk->b", p, C1d * C1d, p) + torch.einsum("bj,bjl,bl->b", q, C2d * C2d, q))
    P = Pairs(C1d.to(dtype), C2d.to(dtype), p, q, const, lap, host_read, assignment_eps, (C1d, C2d))
    best = torch.full((B,), math.inf, dtype=torch.float64, device=dev)
    ends, cache = [], {}
    for k, name in enumerate(names):
        S, idx = start_state(P, name, cache), torch.arange(B, device=dev)
        if lap and k > 0 and max_iter > 0 and prune is not None:  # the O(n²) screen
            if S.first is None:
                S.first, S.prices, _ = auction(S.A, final_epsilon(S.A, P.rel), read=host_read)
            keep = first_step_value(P, S) <= prune * best
            if not host_read(keep.any()):
                continue
            idx = torch.as_tensor(host_read(keep.nonzero()[:, 0]), device=dev)
        Pk, Sk = (P, S) if len(idx) == B else (P.subset(idx), S.subset(idx))
        Sk = cg(Pk, Sk, torch.ones(len(idx), dtype=torch.bool, device=dev), max_iter, tol,
                cutoff=prune * best[idx] if k > 0 and prune is not None else None)
        value, err, is_perm, T64 = _exact(Sk, Pk, lap)
        best[idx] = torch.minimum(best[idx], value)
        ends.append((name, idx, value, err, is_perm, Sk.perm, T64, Sk.iters))
    if lap and swap_rounds > 0 and max_iter > 0:
        ends.append(_polish_best(P, ends, best, max_iter, tol, swap_rounds))
        best = torch.minimum(best, ends[-1][2])
    lb = torch.full((B,), math.nan, dtype=torch.float64, device=dev)
    if bound:
        lb = certified_tlb(C1d, C2d, p, q, dtype=dtype) if uniform else slb(C1d, C2d, p, q)
        lb = torch.minimum(lb, best)
    return best, lb, ends, lap


def _polish_best(P: Pairs, ends, best, max_iter, tol, swap_rounds):
    """Swap search + CG from each pair's best CG end (when it is a permutation); an end whose
    exact value is not lower is reported as +inf, so it never wins."""
    B, dev = P.B, P.C1.device
    perm = torch.zeros(B, P.n, dtype=torch.long, device=dev)
    is_perm, its = torch.zeros(B, dtype=torch.bool, device=dev), torch.zeros(B, dtype=torch.long, device=dev)
    start = torch.full((B,), -1, dtype=torch.long, device=dev)
    won = torch.full((B,), math.inf, dtype=torch.float64, device=dev)
    for k, (_, idx, value, _, end_perm, cols, _, iters) in enumerate(ends):
        better = value < won[idx]  # the first start wins ties, as the serial solver's sort
        won[idx] = torch.where(better, value, won[idx])
        start[idx] = torch.where(better, k, start[idx])
        is_perm[idx] = torch.where(better, end_perm, is_perm[idx])
        its[idx] = torch.where(better, iters, its[idx])
        if cols is not None:
            perm[idx] = torch.where((better & end_perm)[:, None], cols, perm[idx])
    perm = torch.where(is_perm[:, None], perm, torch.arange(P.n, device=dev))
    S = State(*P.perm_plan(perm), perm, is_perm.clone())
    S = polish(P, S, is_perm, max_iter, tol, swap_rounds)
    value, err, end_perm, _ = _exact(S, P, True)
    value = torch.where(is_perm & end_perm & (value < best), value, math.inf)
    return (start, torch.arange(B, device=dev), value, err, end_perm, S.perm, None, its + S.iters)


def batched_gw(C1, C2, *, p=None, q=None, aligned: bool = True, starts=STARTS, max_iter: int = 200,
               tol: float = 1e-9, swap_rounds: int = 30, bound: bool = True,
               keep_coupling: bool = True, device=None, dtype=torch.float32, tf32: bool = True,
               batch_size: int | None = None, assignment_eps: float = 1e-5,
               prune: float | None = None) -> list[GWResult]:
    """Square-loss GW for B pairs of equal sizes at once, every step on the device.

    Parameters
    ----------
    C1 : array or torch.Tensor, shape (B, n, n); C2 : shape (B, m, m)
        Symmetric intra-layer costs; pair ``b`` is ``(C1[b], C2[b])``.
    p, q : array or torch.Tensor, shape (B, n) / (B, m) or (n,) / (m,), optional
        Positive marginals (uniform when omitted), each row summing to 1.
    aligned : bool
        Row i of both layers is the same sample: the identity plan is a start (needs n = m, p = q).
    starts : sequence of {"identity", "mixed", "product"}
        As the serial solver's: the identity runs first, every start's CG runs, and the swap
        search polishes each pair's best CG end.
    prune : float or None
        As the serial solver's: a later start is dropped for the pairs whose first step (an
        O(n²) screen) ends above ``prune`` × the best CG end so far; None runs every start.
    max_iter, tol : CG iterations per start and stopping tolerance (as the serial solver).
    swap_rounds : int
        Uniform weights, n = m: swap-search rounds per polish (0: plain CG).
    bound : bool
        Compute the certified lower bound (TLB for uniform weights, SLB otherwise).
    keep_coupling : bool
        Return each (n, m) float64 plan.
    device : str or torch.device, optional
        Defaults to C1's device for a tensor, else "cpu".
    dtype : torch.dtype
        Search precision (float32; float64 for a reference run). Values are always float64.
    tf32 : bool
        Allow TF32 matmuls on CUDA during the search.
    batch_size : int, optional
        Pairs per device batch (default: :func:`plan_batch` for the device).
    assignment_eps : float
        The auction's final ε relative to the gradient's range / n (see
        :func:`gwray.gw.device_assignment.final_epsilon`).

    Returns
    -------
    list[GWResult]
        One per pair: ``value`` (float64 objective of an exactly feasible plan), ``lower_bound``,
        ``init``, ``iterations`` (of the winning start), ``total_iterations``, ``start_values``,
        ``solver`` ("batched-cg-lap" or "batched-cg-sinkhorn"), ``seconds`` (the batch's time
        shared equally), ``marginal_error``, ``permutation`` (the plan as int32 ``i -> σ(i)``
        when it is a permutation plan).

    Raises
    ------
    GwrayInputError
        Bad shapes, NaN/inf or asymmetric costs, bad weights, an unknown start or device, a bad
        parameter (one line naming it), before any solving.
    """
    t0 = time.perf_counter()
    if device is None:
        device = C1.device if isinstance(C1, torch.Tensor) else torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise GwrayInputError(f"device: {device!r} is not a torch device ({exc})") from None
    C1d = _as_tensor(C1, "C1", device, torch.float64)
    C2d = _as_tensor(C2, "C2", device, torch.float64)
    _check_costs(C1d, "C1")
    _check_costs(C2d, "C2")
    B, n, m = C1d.shape[0], C1d.shape[1], C2d.shape[1]
    if C2d.shape[0] != B:
        raise GwrayInputError(f"C2: shape {tuple(C2d.shape)} has another batch size than C1's "
                              f"{tuple(C1d.shape)}")
    for name, val in (("tol", tol), ("assignment_eps", assignment_eps)):
        if not (isinstance(val, (int, float)) and math.isfinite(val) and val > 0):
            raise GwrayInputError(f"{name}: must be a positive number, got {val!r}")
    for name, val in (("max_iter", max_iter), ("swap_rounds", swap_rounds)):
        if not (isinstance(val, int) and val >= 0):
            raise GwrayInputError(f"{name}: must be an integer >= 0, got {val!r}")
    if prune is not None and not (isinstance(prune, (int, float)) and prune >= 1):
        raise GwrayInputError(f"prune: None or a number >= 1, got {prune!r}")
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
        raise GwrayInputError(f"batch_size: must be a positive integer, got {batch_size!r}")
    if dtype not in (torch.float32, torch.float64):
        raise GwrayInputError(f"dtype: float32 or float64, got {dtype}")
    p64, q64 = _weights(p, "p", B, n, device), _weights(q, "q", B, m, device)
    if aligned and (n != m or host_read((p64 - q64).abs().amax() > 1e-12)):
        raise GwrayInputError("aligned: the identity plan needs n == m and p == q; pass aligned=False")
    starts = [starts] if isinstance(starts, str) else list(starts)
    unknown = [s for s in starts if s not in STARTS]
    if unknown or not starts:
        raise GwrayInputError(f"starts: {unknown or starts!r} not a non-empty list of "
                              "'identity', 'mixed' and 'product'")
    # as the serial solver: identity first (it prunes the rest); identity and mixed are no
    # couplings of unaligned samples
    names = [s for s in STARTS if s in starts and (aligned or s not in ALIGNED_ONLY)] or ["product"]
    size = batch_size or plan_batch(n, m, device)
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32 and device.type == "cuda"
    try:
        results = []
        for lo in range(0, B, size):
            sl = slice(lo, lo + size)
            t1 = time.perf_counter()
            chunk = _solve_chunk(C1d[sl], C2d[sl], p64[sl], q64[sl], names, dtype, max_iter, tol,
                                 swap_rounds, bound, assignment_eps, prune)
            results += _results(*chunk, p64[sl], q64[sl], keep_coupling,
                                time.perf_counter() - t1 + (t1 - t0 if lo == 0 else 0.0))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_before
    return results


def _results(best, lb, ends, lap, p, q, keep_coupling, seconds) -> list[GWResult]:
    """GWResults from one chunk's device tensors (each end read back once)."""
    B, n, m = p.shape[0], p.shape[1], q.shape[1]
    best_h, lb_h = host_read(best), host_read(lb)
    names = [e[0] for e in ends if isinstance(e[0], str)]
    winner, values, iters = [None] * B, [{} for _ in range(B)], [{} for _ in range(B)]
    won = np.full(B, np.inf)
    for start, idx, value, err, is_perm, perm, T64, its in ends:
        idx_h, value_h, err_h, its_h, is_perm_h = (host_read(t) for t in (idx, value, err, its, is_perm))
        start_h = host_read(start) if not isinstance(start, str) else None
        perm_h = host_read(perm) if lap else None
        T_h = host_read(T64) if T64 is not None and keep_coupling else None
        for k, b in enumerate(idx_h):
            if not np.isfinite(value_h[k]):  # a polish that found nothing lower
                continue
            name = start if start_h is None else names[start_h[k]]
            values[b][name], iters[b][name] = float(value_h[k]), int(its_h[k])
            if value_h[k] < won[b]:
                won[b] = value_h[k]
                T, cols = None, perm_h[k].astype(np.int32) if is_perm_h[k] else None
                if keep_coupling and cols is not None:
                    T = np.zeros((n, m))
                    T[np.arange(n), cols] = 1.0 / n
                elif keep_coupling:
                    T = T_h[k]
                winner[b] = (name, float(err_h[k]), T, cols)
    res = []
    for b in range(B):
        name, err, T, cols = winner[b]
        res.append(GWResult(value=float(best_h[b]), lower_bound=float(lb_h[b]), coupling=T,
                            init=name, iterations=iters[b][name], marginal_error=err,
                            seconds=seconds / B, solver="batched-cg-lap" if lap else "batched-cg-sinkhorn",
                            n=n, m=m, start_values=values[b], total_iterations=sum(iters[b].values()),
                            permutation=cols))
    return res
