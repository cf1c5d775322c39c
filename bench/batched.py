"""Benchmark: the batched torch GW path against serial conditional gradient on the same pairs.

B layer pairs of a random deep tanh MLP (shared Gaussian inputs, n samples) are solved twice:
serially by :func:`gwray.gw.solver.gromov_wasserstein` (default starts, aligned=True) and at once
by :func:`gwray.gw.batched.batched_gw` (proximal loop + rounding + CG polish). Prints both times,
their ratio, the loop/polish split, and the value ratio batched / serial per pair (1.0 = same
value; < 1 = the batched path found a better plan).

Usage: python bench/batched.py [--n 256] [--pairs 8] [--epsilon 1.0] [--device cpu] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

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
    ap.add_argument("--epsilon", type=float, default=None)
    ap.add_argument("--max-iter", type=int, default=None)
    ap.add_argument("--polish-iter", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (on a loaded machine 1 is often faster than 2)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    costs = tanh_mlp_costs(args.n, depth=args.pairs)
    pairs = [(k, k + 1 + (k % 3)) for k in range(args.pairs)]
    pairs = [(i, min(j, len(costs) - 1)) for i, j in pairs]
    C1 = np.stack([costs[i] for i, _ in pairs])
    C2 = np.stack([costs[j] for _, j in pairs])

    t = time.perf_counter()
    serial = [gromov_wasserstein(a, b, aligned=True, keep_coupling=False) for a, b in zip(C1, C2)]
    t_serial = time.perf_counter() - t

    kwargs = {k: v for k, v in (("epsilon", args.epsilon), ("max_iter", args.max_iter),
                                ("polish_iter", args.polish_iter)) if v is not None}
    t = time.perf_counter()
    batched = batched_gw(C1, C2, device=args.device, keep_coupling=False, **kwargs)
    t_batched = time.perf_counter() - t
    kwargs["polish_iter"] = 0  # the loop alone: its plans rounded, not polished
    t = time.perf_counter()
    loop_only = batched_gw(C1, C2, device=args.device, keep_coupling=False, **kwargs)
    t_loop = time.perf_counter() - t

    print(f"B={len(pairs)} pairs, n={args.n}, device={args.device}, torch threads "
          f"{torch.get_num_threads()} (shared machine: figures taken under load)")
    print(f"{'pair':>8} {'serial':>10} {'batched':>10} {'ratio':>7} {'loop only':>10} "
          f"{'it ser':>6} {'it bat':>6}")
    ratios = []
    for (i, j), s, b, lo in zip(pairs, serial, batched, loop_only):
        ratios.append(b.value / s.value if s.value > 0 else 1.0)
        print(f"{i:>3}-{j:<4} {s.value:10.6f} {b.value:10.6f} {ratios[-1]:7.4f} {lo.value:10.6f} "
              f"{s.iterations:6d} {b.iterations:6d}")
    print(f"serial CG: {t_serial:.2f} s; batched: {t_batched:.2f} s (loop + rounding alone "
          f"{t_loop:.2f} s); time ratio batched/serial = {t_batched / t_serial:.2f}")
    print(f"value ratio batched/serial: min {min(ratios):.4f}, max {max(ratios):.4f}, "
          f"pairs within 1 %: {sum(abs(r - 1) <= 0.01 for r in ratios)}/{len(ratios)}")


if __name__ == "__main__":
    main()
