"""GW for many pairs at once on an accelerator (or torch's CPU): the path GPU workers use.

The serial solver's algorithm (:mod:`gwray.gw.solver`: the same portfolio of starts, conditional
gradient with exact line search and carried gradient, every permutation end polished by swap
search and CG, TLB and eigenvalue bound) runs for B pairs of equal sizes at once with every step on the device
(:mod:`gwray.gw.device_portfolio` and the ``device_*`` modules); no host solver is called. Every
start of every pair advances in the same launches, and each CG linear step is one auction kernel
launch for the whole batch (:mod:`gwray.gw.device_assignment`). The search runs in float32
(TF32 matmuls on a GPU unless ``tf32=False``); every reported value is then recomputed in float64
from the final plan (O(n²) for a permutation), and the lower bound is certified in float64 (a
c-transform), so approximate steps can only cost quality, never correctness.

Host reads: every synchronisation goes through :func:`host_read` (a counter), one boolean every
few iterations inside the loops and the results at the end. The engine's counters (linear steps
per pair, auction bids per linear step, dispatched device operations per batch) are on every
:class:`~gwray.gw.solver.GWResult` it returns.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gwray.errors import GwrayInputError
from gwray.gw.device_assignment import KERNEL_LAUNCHES
from gwray.gw.device_bounds import LayerData
from gwray.gw.device_cg import Pairs
from gwray.gw.device_portfolio import solve_batch
from gwray.gw.device_starts import start_names
from gwray.gw.solver import GWResult, runner_up_gap
from gwray.gw.starts import DEFAULT_STARTS

__all__ = ["batched_gw", "plan_batch", "device_costs", "host_read", "HOST_READS"]

HOST_READS = {"count": 0}
"""How many times the engine synchronised with the device (tests bound it)."""


def host_read(x: torch.Tensor):
    """The engine's one way to read the device: a 0-d bool → bool, anything else → numpy."""
    HOST_READS["count"] += 1
    return bool(x) if x.dim() == 0 and x.dtype == torch.bool else x.cpu().numpy()


class _DeviceOps(TorchDispatchMode):
    """Counts the torch operations dispatched while active (each a kernel launch, a view or a
    host sync on a GPU); custom kernel launches are added from ``KERNEL_LAUNCHES``."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += KERNEL_LAUNCHES["inside"] == 0  # a twin's ops stand in for one launch
        return func(*args, **(kwargs or {}))


def _as_tensor(x, name: str, device, dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):  # contiguous: the kernels index the stacks as (L, n, n) blocks
        return x.detach().to(device=device, dtype=dtype).contiguous()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GwrayInputError(f"{name}: not a numeric array ({exc})") from exc
    return torch.as_tensor(arr, device=device).to(dtype).contiguous()


def _check_costs(C: torch.Tensor, name: str, item: str) -> None:
    if C.ndim != 3 or C.shape[1] != C.shape[2]:
        raise GwrayInputError(f"{name}: expected shape (B, n, n), got {tuple(C.shape)}")
    if C.shape[0] == 0 or C.shape[1] == 0:
        raise GwrayInputError(f"{name}: empty batch or empty layer, shape {tuple(C.shape)}")
    bad = ~torch.isfinite(C)
    if host_read(bad.any()):
        where = host_read(bad.nonzero()[0]).tolist()
        raise GwrayInputError(f"{name}: non-finite value (NaN or inf) at {item} {where[0]}, "
                              f"index {tuple(where[1:])}")
    asym = (C - C.transpose(1, 2)).abs().amax(dim=(1, 2))
    scale = C.abs().amax(dim=(1, 2)).clamp_min(1.0)
    bad = asym > 1e-8 * scale
    if host_read(bad.any()):
        b = int(host_read(bad.nonzero()[0, 0]))
        raise GwrayInputError(f"{name}: {item} {b} is not symmetric "
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


def plan_batch(n: int, m: int, device, budget_bytes: int | None = None, starts: int = 3,
               dense: bool = False) -> int:
    """How many pairs of sizes (n, m) fit in one batch on ``device``.

    Per pair the engine holds one search-precision copy of C1 (the left factor of its matmuls;
    the other costs stay in per-layer stacks) and, per start, the gradient A and the matmul's
    result, plus one start's gathered C2 rows: 4 (2 + 2 ``starts``) bytes per (i, j) in float32;
    the polish of every end holds per end a copy of C1 and, in its CG, A, the gathered rows and
    the matmul's result (16 bytes per start); the bound 36 at most; ``dense`` plans (other
    weights, n ≠ m) add the plan and Sinkhorn's work arrays, 12 bytes per start. Exact values and
    the bound's float64 passes work in chunks of at most 1 GiB.

    Parameters
    ----------
    n, m : int, the sizes of C1 and C2.
    device : torch.device or str.
    budget_bytes : int, optional. Default: 70 % of the free memory of a CUDA device (less 2 GiB
        for the chunked passes), or a quarter of the host's available memory for "cpu".
    starts : int, the starts run concurrently; dense : bool, plans are dense (not permutations).

    Returns
    -------
    int ≥ 1.
    """
    device = torch.device(device)
    if budget_bytes is None:
        if device.type == "cuda":
            budget_bytes = int(0.7 * torch.cuda.mem_get_info(device)[0]) - (2 << 30)
        else:
            budget_bytes = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    per_pair = max(4 * (2 + 2 * starts) + (12 * starts if dense else 0), 16 * starts, 36) * n * m
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


def batched_gw(C1, C2, *, pairs=None, p=None, q=None, aligned: bool = True,
               starts=DEFAULT_STARTS,
               max_iter: int = 200, tol: float = 1e-9, swap_rounds: int = 30, bound: bool = True,
               keep_coupling: bool = True, device=None, dtype=torch.float32, tf32: bool = True,
               batch_size: int | None = None, assignment_eps: float = 1e-5,
               prune: float | None = None, layer_data=None, seed: int = 0) -> list[GWResult]:
    """Square-loss GW for B pairs of equal sizes at once, every step on the device.

    Parameters
    ----------
    C1 : array or torch.Tensor, shape (B, n, n); C2 : shape (B, m, m)
        Symmetric intra-layer costs; pair ``b`` is ``(C1[b], C2[b])``. With ``pairs``: stacks of
        per-layer costs (L1, n, n) and (L2, m, m), each layer held once however many pairs use it.
    pairs : (B, 2) integer array, optional
        Pair b is ``(C1[pairs[b, 0]], C2[pairs[b, 1]])`` (e.g. every pair of a model's layers with
        ``C1 = C2`` the layer stack).
    p, q : array or torch.Tensor, shape (B, n) / (B, m) or (n,) / (m,), optional
        Positive marginals (uniform when omitted), each row summing to 1.
    aligned : bool
        Row i of both layers is the same sample: the identity plan is a start (needs n = m, p = q).
    starts : sequence of {"identity", "mixed", "product", "entropic", "random:K", "random:auto"}
        As the serial solver's (default :data:`gwray.gw.starts.DEFAULT_STARTS`): every start's CG
        runs (all starts of all pairs in the same launches), and every end that is a permutation
        is polished (swap search and CG alternated). Random starts only for uniform weights with
        n = m (the serial solver's random vertices of other polytopes need an exact EMD).
    prune : float or None
        As the serial solver's: the identity runs first and a later start is dropped for the
        pairs whose first step (an O(n²) screen) ends above ``prune`` × the identity's end; None
        runs every start.
    max_iter, tol : CG iterations per start and stopping tolerance (as the serial solver).
    swap_rounds : int
        Uniform weights, n = m: swap-search rounds per polish (0: plain CG).
    bound : bool
        Compute the certified lower bound (max of TLB and eigenvalue bound for uniform weights,
        n = m; TLB for n ≠ m; SLB for other weights).
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
    seed : int
        Seed of the random starts (the serial solver's: the same permutations for a pair).
    layer_data : (LayerData, LayerData), optional
        :class:`gwray.gw.device_bounds.LayerData` of C1's and C2's stacks, when the caller keeps
        it per layer (the bounds' sorted rows and spectra); computed here otherwise.

    Returns
    -------
    list[GWResult]
        One per pair: ``value`` (float64 objective of an exactly feasible plan), ``lower_bound``,
        ``init``, ``iterations`` (of the winning start), ``total_iterations``, ``start_values``
        (each start's final value), ``runner_up_gap`` (as the serial solver's),
        ``solver`` ("batched-cg-lap" or "batched-cg-sinkhorn"), ``seconds`` (the batch's time
        shared equally), ``marginal_error``, ``permutation`` (the plan as int32 ``i -> σ(i)``
        when it is a permutation plan), and the engine's counters ``linear_steps`` (auction
        calls of the pair's problems), ``rounds`` (bids per linear step, mean) and
        ``device_ops`` (torch operations dispatched plus kernel launches, for the pair's whole
        device batch).

    Raises
    ------
    GwrayInputError
        Bad shapes, NaN/inf or asymmetric costs, bad weights or pair indices, an unknown start or
        device, a bad parameter (one line naming it), before any solving.
    """
    t0 = time.perf_counter()
    if device is None:
        device = C1.device if isinstance(C1, torch.Tensor) else torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise GwrayInputError(f"device: {device!r} is not a torch device ({exc})") from None
    item = "pair" if pairs is None else "layer"
    C1d = _as_tensor(C1, "C1", device, torch.float64)
    _check_costs(C1d, "C1", item)
    C2d = C1d if C2 is C1 else _as_tensor(C2, "C2", device, torch.float64)
    if C2d is not C1d:
        _check_costs(C2d, "C2", item)
    n, m = C1d.shape[1], C2d.shape[1]
    ia, ib = _pair_index(pairs, C1d.shape[0], C2d.shape[0], device)
    if layer_data is not None and any(d.sorted_rows.shape != C.shape for d, C in zip(layer_data, (C1d, C2d))):
        raise GwrayInputError("layer_data: does not match the shapes of C1 and C2")
    B = ia.shape[0]
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
    uniform = host_read(((p64 - 1.0 / n).abs().amax() <= 1e-12) & ((q64 - 1.0 / m).abs().amax() <= 1e-12))
    lap = uniform and n == m
    names = start_names(starts, aligned, n, lap)
    size = batch_size or plan_batch(n, m, device, starts=len(names), dense=not lap)
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32 and device.type == "cuda"
    try:
        with _DeviceOps() as ops:
            launches = KERNEL_LAUNCHES["count"]
            X1 = C1d.to(dtype).contiguous()
            stacks = (X1, X1 if C2d is C1d else C2d.to(dtype).contiguous(), C1d, C2d)
            if bound and lap and layer_data is None:  # once per layer, not per pair
                D1 = LayerData(C1d)
                layer_data = (D1, D1 if C2d is C1d else LayerData(C2d))
            setup = ops.count + KERNEL_LAUNCHES["count"] - launches
            results = []
            for lo in range(0, B, size):
                sl = slice(lo, lo + size)
                t1, before = time.perf_counter(), ops.count + KERNEL_LAUNCHES["count"]
                P = Pairs(*stacks, ia[sl], ib[sl], p64[sl], q64[sl], uniform, lap, host_read,
                          assignment_eps)
                best, lb, ends = solve_batch(P, names, max_iter, tol, swap_rounds, bound, prune,
                                             layer_data, seed)
                n_ops = ops.count + KERNEL_LAUNCHES["count"] - before + (setup if lo == 0 else 0)
                results += _results(best, lb, ends, lap, P, keep_coupling,
                                    time.perf_counter() - t1 + (t1 - t0 if lo == 0 else 0.0), n_ops)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_before
    return results


def _pair_index(pairs, L1: int, L2: int, device):
    """(ia, ib) long tensors on ``device``: the layers of each pair (b, b without ``pairs``)."""
    if pairs is None:
        if L1 != L2:
            raise GwrayInputError(f"C2: shape has {L2} matrices, C1 has {L1} (pass pairs= to "
                                  "index stacks of layers)")
        ar = torch.arange(L1, device=device)
        return ar, ar
    idx = np.asarray(pairs)
    if idx.ndim != 2 or idx.shape[1] != 2 or idx.shape[0] == 0 or idx.dtype.kind not in "iu":
        raise GwrayInputError(f"pairs: expected a non-empty (B, 2) integer array, got shape "
                              f"{idx.shape} {idx.dtype}")
    for side, L in ((0, L1), (1, L2)):
        bad = (idx[:, side] < 0) | (idx[:, side] >= L)
        if bad.any():
            b = int(np.flatnonzero(bad)[0])
            raise GwrayInputError(f"pairs: pair {b} names layer {int(idx[b, side])} of C{side + 1}, "
                                  f"which has {L}")
    t = torch.as_tensor(idx, dtype=torch.long, device=device)
    return t[:, 0].contiguous(), t[:, 1].contiguous()


def _results(best, lb, ends, lap, P, keep_coupling, seconds, n_ops) -> list[GWResult]:
    """GWResults from one batch's device tensors (each end read back once)."""
    B, n, m = P.B, P.n, P.m
    best_h, lb_h = host_read(best), host_read(lb)
    winner, values, iters = [None] * B, [{} for _ in range(B)], [{} for _ in range(B)]
    linear, bids = np.zeros(B, np.int64), np.zeros(B, np.int64)
    won = np.full(B, np.inf)
    for e in ends:
        value_h, err_h, its_h, perm_ok = (host_read(t) for t in (e.value, e.err, e.iters, e.is_perm))
        linear += host_read(e.linear).reshape(-1, B).sum(0)
        bids += host_read(e.bids).reshape(-1, B).sum(0)
        perm_h = host_read(e.perm) if lap else None
        for k in range(value_h.shape[0]):
            b, name = k % B, e.names[k // B]
            if not np.isfinite(value_h[k]):  # a screened start
                continue
            values[b][name], iters[b][name] = float(value_h[k]), int(its_h[k])
            if value_h[k] < won[b]:  # the first start wins ties, as the serial solver's
                won[b] = value_h[k]
                T, cols = None, perm_h[k].astype(np.int32) if perm_ok[k] else None
                if keep_coupling and cols is not None:
                    T = np.zeros((n, m))
                    T[np.arange(n), cols] = 1.0 / n
                elif keep_coupling:
                    T = e.dense[k].cpu().numpy()
                winner[b] = (name, float(err_h[k]), T, cols)
    res = []
    for b in range(B):
        name, err, T, cols = winner[b]
        res.append(GWResult(value=float(best_h[b]), lower_bound=float(lb_h[b]), coupling=T,
                            init=name, iterations=iters[b][name], marginal_error=err,
                            seconds=seconds / B, solver="batched-cg-lap" if lap else "batched-cg-sinkhorn",
                            n=n, m=m, start_values=values[b], total_iterations=sum(iters[b].values()),
                            runner_up_gap=runner_up_gap(values[b], name),
                            permutation=cols, linear_steps=int(linear[b]),
                            rounds=float(bids[b] / linear[b]) if linear[b] else 0.0,
                            device_ops=int(n_ops)))
    return res
