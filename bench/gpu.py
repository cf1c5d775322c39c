"""GPU benchmark of the device engine (batched_gw): pairs/s, achieved TFLOP/s, values, memory.

One command on a fresh Linux machine with an NVIDIA GPU (PyPI's Linux torch wheel is the CUDA
build), well under 5 minutes including the install:

    python3 -m venv /tmp/gw && /tmp/gw/bin/pip install -q torch -e . && /tmp/gw/bin/python bench/gpu.py

What it does, for the layers of a random residual tanh MLP (activations made on the device, cost
matrices built there, :func:`gwray.gw.batched.device_costs`):

1. for each n in ``--sizes`` (1,024 / 2,048 / 4,096 on a GPU): solves a batch of layer pairs
   (one device batch, sized by :func:`gwray.gw.batched.plan_batch` and capped by ``--pairs``)
   and prints pairs/s, the matmul TFLOP/s achieved over the whole solve (FLOPs of every
   ``torch.bmm`` the engine calls / wall time) against the device's dense TF32 peak (table below)
   and against a plain batched matmul measured in the same run, peak device memory, and the host
   reads per batch;
2. at the smallest n, solves ``--check`` of those pairs with the serial CPU solver and prints the
   value ratios (device / CPU: within 1 % or lower is the target) and lower bound ≤ value;
3. with ``--layers L`` (default 80 on a GPU), all L (L − 1) / 2 pairs at ``--full-n`` (2,048):
   the issue's target is 3,160 pairs in ≤ 60 s on one H100/H200-class GPU. It is skipped when
   step 1's rate predicts more than ``--budget`` seconds.

``--device cpu`` runs the same script anywhere with small sizes (defaults: n = 128, 256; 4 pairs).
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

from gwray.gw import batched
from gwray.gw.batched import batched_gw, device_costs, plan_batch
from gwray.gw.solver import gromov_wasserstein

# Dense TF32 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAK_TF32 = {"H200": 494.7, "H100 SXM": 494.7, "H100 PCIe": 378.0, "H100": 494.7, "A100": 156.0,
             "L40S": 183.0, "A10": 62.5, "L4": 60.0}


def layer_activations(n: int, layers: int, device, width: int = 256, seed: int = 0):
    """(n, width) activations of ``layers`` layers of a random residual tanh MLP, on ``device``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, width, generator=g).to(device)
    out = [x]
    for _ in range(layers - 1):
        W = torch.randn(width, width, generator=g).to(device) * (1.5 / math.sqrt(width))
        x = x + torch.tanh(x @ W)
        out.append(x)
    return out


def pair_list(layers: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(layers) for j in range(i + 1, layers)]


class FlopCounter:
    """Counts the FLOPs of every torch.bmm while active (2·B·n·k·m each)."""

    def __init__(self):
        self.flops, self._bmm = 0, torch.bmm

    def __enter__(self):
        def bmm(a, b):
            self.flops += 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
            return self._bmm(a, b)

        torch.bmm = bmm
        return self

    def __exit__(self, *exc):
        torch.bmm = self._bmm


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(n: int, B: int, device) -> float:
    """TFLOP/s of a plain float32 (TF32) batched matmul of the engine's shape, measured now."""
    a = torch.randn(B, n, n, device=device)
    torch.bmm(a, a)
    sync(device)
    t, reps = time.perf_counter(), 5
    for _ in range(reps):
        torch.bmm(a, a)
    sync(device)
    return reps * 2 * B * n ** 3 / (time.perf_counter() - t) / 1e12


def solve_pairs(costs, pairs, device, chunk: int):
    """Solve ``pairs`` of ``costs`` (L, n, n) in device batches of ``chunk``; returns the results,
    wall seconds, bmm FLOPs and host reads per batch."""
    results, reads = [], []
    sync(device)
    t = time.perf_counter()
    with FlopCounter() as fc:
        for lo in range(0, len(pairs), chunk):
            sel = pairs[lo:lo + chunk]
            i = torch.tensor([a for a, _ in sel], device=device)
            j = torch.tensor([b for _, b in sel], device=device)
            before = batched.HOST_READS["count"]
            results += batched_gw(costs[i], costs[j], keep_coupling=False, batch_size=len(sel))
            reads.append(batched.HOST_READS["count"] - before)
    sync(device)
    return results, time.perf_counter() - t, fc.flops, reads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--pairs", type=int, default=None, help="pairs per size (default: one batch)")
    ap.add_argument("--check", type=int, default=None, help="pairs checked against the CPU solver")
    ap.add_argument("--layers", type=int, default=None, help="all pairs of this many layers")
    ap.add_argument("--full-n", type=int, default=2048)
    ap.add_argument("--budget", type=float, default=150.0, help="skip step 3 above this estimate (s)")
    args = ap.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    sizes = args.sizes or ([1024, 2048, 4096] if gpu else [128, 256])
    check = args.check if args.check is not None else 4
    layers = args.layers if args.layers is not None else (80 if gpu else 0)
    if not gpu:
        torch.set_num_threads(1)
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    peak = next((v for k, v in PEAK_TF32.items() if k in name), None)
    print(f"device {name}; torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'n':>6} {'pairs':>6} {'s':>8} {'pairs/s':>8} {'TFLOP/s':>8} {'of peak':>8} "
          f"{'of bmm':>7} {'peak GiB':>9} {'reads':>6}")
    warm = device_costs(layer_activations(64, 3, device), device)  # CUDA context, kernels
    batched_gw(warm[:2], warm[1:], keep_coupling=False)
    rates = {}
    for n in sizes:
        L = 12
        costs = device_costs(layer_activations(n, L, device), device)
        pairs = pair_list(L)
        chunk = min(plan_batch(n, n, device), len(pairs), args.pairs or (8 if not gpu else 10 ** 9))
        pairs = pairs[:chunk]
        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        res, wall, flops, reads = solve_pairs(costs, pairs, device, chunk)
        mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if gpu else float("nan")
        tflops = flops / wall / 1e12
        mm = matmul_peak(n, min(chunk, 16), device)
        rates[n] = len(pairs) / wall
        of_peak = f"{tflops / peak:8.1%}" if peak else f"{'n/a':>8}"
        print(f"{n:>6} {len(pairs):>6} {wall:8.2f} {rates[n]:8.2f} {tflops:8.2f} {of_peak} "
              f"{tflops / mm:7.1%} {mem:9.2f} {max(reads):>6}")
        if n == sizes[0] and check:
            ratios, ok = [], True
            for (a, b), r in zip(pairs[:check], res):
                ref = gromov_wasserstein(costs[a].cpu().numpy(), costs[b].cpu().numpy(), aligned=True,
                                         keep_coupling=False)
                ratios.append(r.value / ref.value if ref.value > 0 else 1.0)
                ok &= r.lower_bound <= r.value
            print(f"       values vs CPU solver on {len(ratios)} pairs at n={n}: ratio min "
                  f"{min(ratios):.4f} max {max(ratios):.4f}; lower bound <= value: {ok}")
        del costs
    if layers:
        n = args.full_n
        total = layers * (layers - 1) // 2
        est = total / rates[n] if n in rates else float("nan")
        if not est <= args.budget:
            print(f"all {total} pairs of {layers} layers at n={n}: skipped (estimate {est:.0f} s)")
            return
        costs = device_costs(layer_activations(n, layers, device), device)
        chunk = min(plan_batch(n, n, device), total)
        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        res, wall, flops, reads = solve_pairs(costs, pair_list(layers), device, chunk)
        mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if gpu else float("nan")
        bad = sum(not (r.lower_bound <= r.value) for r in res)
        print(f"all {total} pairs of {layers} layers at n={n}: {wall:.1f} s ({total / wall:.1f} "
              f"pairs/s, target <= 60 s), batches of {chunk}, {flops / wall / 1e12:.1f} TFLOP/s, "
              f"peak {mem:.1f} GiB, lower bound > value on {bad} pairs, "
              f"mean GW {np.mean([r.value for r in res]):.5f}")


if __name__ == "__main__":
    main()
