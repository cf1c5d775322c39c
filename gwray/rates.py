"""The rates that turn a run's size into time (``gwray plan``, :mod:`gwray.sizing`): a short
calibration on this machine (matrix-multiply FLOP/s, one GW pair solved on random data, one report
figure drawn), the device engine's pairs per second on a GPU, and the orchestration's cost a pair.
"""
from __future__ import annotations

import functools
import time

import numpy as np

from gwray.config import RunConfig

#: Rates a user may pass (``--rate NAME=VALUE``), measured on the hardware the run will use.
RATE_NAMES = {"forward_flops": "FLOP/s of one model replica or shard in the forward pass",
              "gw_pair_s": "seconds one GW worker takes for one pair at this run's n",
              "gpu_pair_s": "seconds one GPU worker takes per pair at this run's n (the device engine "
                            "on large calls; runs with resources.gpus_per_worker > 0)",
              "figure_s": "seconds the driver takes to draw one L x L figure of the report"}
_CAL_N = 160        # samples of the calibration GW pair (the time scales as n^3)

#: The device engine's pairs per second on one GPU by n, for ``gwray plan`` when no rate is given.
#: Not yet measured on a GPU: these are bench/gpu.py's CPU mode's modelled H200 figures for all
#: pairs of 80 layers (2026-12-04; bench/gpu_model.py states the assumptions); the first run of
#: bench/gpu.py on an H100/H200 replaces them.
GPU_PAIRS_PER_S = {1024: 265.0, 2048: 50.0, 4096: 8.0}
GPU_RATE_SOURCE = "modelled H200, bench/gpu.py --device cpu; not measured on a GPU yet"
ORCHESTRATION_S = 1.0e-3
"""Worker-seconds a pair beyond solving (scheduling, Ray, reads, writes): 2 × the pairs stage's
wall beyond solver-seconds / workers a pair that ``bench/sweep_scale.py`` measures (100
checkpoints × 80 layers on 2 workers)."""
DRIVER_S = 0.15e-3
"""The driver's CPU-seconds a pair (same measurement): the most pairs a second one driver hands out."""


def _matmul_flops() -> float:
    """float32 matrix-multiply FLOP/s of this process (torch's threads), over ~0.3 s."""
    import torch

    a, b = torch.randn(512, 1024), torch.randn(1024, 1024)
    a @ b  # warm-up
    t0, reps = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.3:
        a @ b
        reps += 1
    return 2 * 512 * 1024 * 1024 * reps / (time.perf_counter() - t0)


def _gw_pair_seconds(n: int, cfg: RunConfig) -> float:
    """One GW pair (random data, the run's costs and solver settings) at ``min(n, 160)`` samples,
    scaled to ``n`` as n^3."""
    from gwray.gw.costs import cost_matrix
    from gwray.gw.solver import gromov_wasserstein

    m, rng = min(n, _CAL_N), np.random.default_rng(0)
    x = rng.standard_normal((m, 32))
    costs = [cost_matrix(v, metric=cfg.costs.metric, normalize=cfg.costs.normalize)
             for v in (x, x @ rng.standard_normal((32, 32)) + 0.3 * rng.standard_normal((m, 32)))]
    solve = functools.partial(gromov_wasserstein, aligned=True, starts=tuple(cfg.gw.starts),
                              max_iter=cfg.gw.max_iter, tol=cfg.gw.tol)
    solve(*costs)  # compiles the numba kernels, warms the caches outside the timing
    t0, reps = time.perf_counter(), 0
    while not reps or time.perf_counter() - t0 < 0.3:  # a tiny n solves in milliseconds
        solve(*costs)
        reps += 1
    return (time.perf_counter() - t0) / reps * (n / m) ** 3


def _gpu_pair_seconds(n: int, cfg: RunConfig) -> float:
    """Seconds per pair of one GPU worker at ``n``: :data:`GPU_PAIRS_PER_S` interpolated (and
    extrapolated) as a power of n between its nearest sizes, for the worker's share of a GPU
    (a whole one when the config asks for none)."""
    sizes = sorted(GPU_PAIRS_PER_S)
    lo = max([s for s in sizes[:-1] if s <= n] or sizes[:1])
    hi = sizes[sizes.index(lo) + 1]
    slope = np.log(GPU_PAIRS_PER_S[hi] / GPU_PAIRS_PER_S[lo]) / np.log(hi / lo)
    rate = GPU_PAIRS_PER_S[lo] * (n / lo) ** slope
    return 1.0 / (rate * min(1.0, cfg.resources.gpus_per_worker or 1.0))


def _figure_seconds(n_layers: int) -> float:
    """One report heatmap of ``n_layers`` layers (after a first one: fonts, caches)."""
    from gwray.report.figures import heatmap

    draw = functools.partial(heatmap, np.random.default_rng(0).uniform(size=(n_layers, n_layers)),
                             [f"layer {i}" for i in range(n_layers)], np.arange(n_layers) // 3)
    draw()
    t0 = time.perf_counter()
    draw()
    return time.perf_counter() - t0


def calibrate(names, n: int, n_layers: int, cfg: RunConfig) -> dict:
    """This machine's rates of ``names`` (keys of ``RATE_NAMES``) for ``n`` samples and
    ``n_layers`` layers: under a second each."""
    measure = {"forward_flops": _matmul_flops, "gw_pair_s": lambda: _gw_pair_seconds(n, cfg),
               "gpu_pair_s": lambda: _gpu_pair_seconds(n, cfg), "figure_s": lambda: _figure_seconds(n_layers)}
    return {name: measure[name]() for name in names}
