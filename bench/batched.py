"""Benchmark: the device engine (batched_gw) against the serial solver on the same pairs, on CPU.

B layer pairs of a random deep tanh MLP (shared Gaussian inputs, n samples) are solved serially by
:func:`gwray.gw.solver.gromov_wasserstein` (default starts, aligned=True) and at once by
:func:`gwray.gw.batched.batched_gw`, interleaved ``--repeats`` times with one BLAS / torch thread,
timed by process CPU time (robust to a shared machine's load). Prints the CPU-time ratio
batched / serial (the anchor is the serial solver's best use: one thread per process), the value
ratio per pair (1.0 = same value, < 1 = the batched engine found a better plan), and the host
reads. On CPU the device engine is expected to be slower than the serial solver (torch ops over
dense arrays instead of sparse numba kernels); its purpose is the GPU (see bench/gpu.py).

Usage: python bench/batched.py [--n 256] [--pairs 8] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from gwray.gw import batched
from gwray.gw.batched import batched_gw
from gwray.gw.costs import cost_matrix
from gwray.gw.solver import gromov_wasserstein


def tanh_mlp_costs(n: int, depth: int, width: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Euclidean cost matrices (mean-normalised) of the layers of a random tanh MLP; (n, n) each."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, width))
    out = [cost_matrix(x)]
    for _ in range(depth):
        x = np.tanh(x @ rng.normal(size=(width, width)) * (1.5 / np.sqrt(width)))
        out.append(cost_matrix(x))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    costs = tanh_mlp_costs(args.n, depth=args.pairs)
    pairs = [(k, min(k + 1 + (k % 3), len(costs) - 1)) for k in range(args.pairs)]
    C1 = np.stack([costs[i] for i, _ in pairs])
    C2 = np.stack([costs[j] for _, j in pairs])
    t_serial, t_batched = [], []
    with threadpool_limits(1):
        for _ in range(args.repeats):
            t = time.process_time()
            serial = [gromov_wasserstein(a, b, aligned=True, keep_coupling=False) for a, b in zip(C1, C2)]
            t_serial.append(time.process_time() - t)
            reads = batched.HOST_READS["count"]
            t = time.process_time()
            device = batched_gw(C1, C2, keep_coupling=False, device="cpu")
            t_batched.append(time.process_time() - t)
            reads = batched.HOST_READS["count"] - reads
    print(f"B={len(pairs)} pairs, n={args.n}, 1 thread, load average {os.getloadavg()[0]:.2f}")
    print(f"{'pair':>8} {'serial':>10} {'batched':>10} {'ratio':>7} {'lb ser':>9} {'lb bat':>9}")
    ratios = []
    for (i, j), s, b in zip(pairs, serial, device):
        ratios.append(b.value / s.value if s.value > 0 else 1.0)
        print(f"{i:>3}-{j:<4} {s.value:10.6f} {b.value:10.6f} {ratios[-1]:7.4f} "
              f"{s.lower_bound:9.6f} {b.lower_bound:9.6f}")
    print(f"CPU s (best of {args.repeats}): serial {min(t_serial):.2f}, batched {min(t_batched):.2f}; "
          f"ratio batched/serial {min(t_batched) / min(t_serial):.2f}; host reads per batch {reads}")
    print(f"value ratio batched/serial: min {min(ratios):.4f}, max {max(ratios):.4f}, "
          f"pairs within 1 % or lower: {sum(r <= 1.01 for r in ratios)}/{len(ratios)}")


if __name__ == "__main__":
    main()
