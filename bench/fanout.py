"""Benchmark: how well ``run_pairs`` fans GW pairs out over Ray workers.

Writes L synthetic layers (n rows each, a residual tanh-MLP so neighbouring layers are similar) to
a real activation dataset, then runs ``gwray.scheduler.run_pairs`` on the L (L - 1) / 2 pairs with
1 and with W workers. Anchors measured in the same run: the solver's own per-pair seconds (summed
from the pair records) divided by the worker count, and the 1-worker wall time.

Prints per worker count: wall, start-up (time before the first batch began solving: actor
processes, imports, first layer reads and cost matrices), solver-s, wall / (solver-s / workers)
(target ≤ 1.15 at W = 2: scheduling, cost matrices, Parquet writes and start-up add at most 15 %),
the same ratio without the start-up (a fixed cost that small runs cannot amortise), and the
speed-up of W workers over 1.

Usage: python bench/fanout.py [--layers 80] [--n 256] [--workers 2] [--batch-pairs 8]
                              [--max-iter 200] [--skip-single]
Default = the issue's setting (80 layers = 3,160 pairs at n = 256); ``--layers 20 --n 128`` is quick.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from gwray.activations.store import ActivationStore, ActivationWriter
from gwray.config import load_config
from gwray.scheduler import run_pairs


def write_layers(root: str, layers: int, n: int, d: int = 32, seed: int = 0) -> ActivationStore:
    """L layers of a residual tanh network on n Gaussian inputs, as checkpoint ``bench``."""
    rng = np.random.default_rng(seed)
    names = [f"layer{k:03d}" for k in range(layers)]
    writer = ActivationWriter(root, "bench", names)
    X = rng.normal(size=(n, d))
    for name in names:
        X = X + 0.5 * np.tanh(X @ rng.normal(scale=1 / np.sqrt(d), size=(d, d)))
        writer.write(name, np.arange(n), X)
    writer.commit({"source": "bench/fanout.py"})
    return ActivationStore(root)


def one_run(store: ActivationStore, out: str, workers: int, batch_pairs: int, max_iter: int) -> dict:
    cfg = load_config({"resources": {"workers": workers, "cpus_per_worker": 1,
                                     "batch_pairs": batch_pairs},
                       "compare": {"cross": "none"}, "gw": {"max_iter": max_iter}})
    t0 = time.perf_counter()
    table = run_pairs(cfg, store, out, progress=True)
    wall = time.perf_counter() - t0
    solver = float(np.sum(table.column("seconds").to_numpy()))
    startup = float(table.schema.metadata[b"startup_seconds"])
    return {"workers": workers, "pairs": table.num_rows, "wall": wall, "solver": solver,
            "startup": startup, "ratio": wall / (solver / workers),
            "steady": (wall - startup) / (solver / workers),
            "gw": np.load(os.path.join(out, "gw_matrix.npy"))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=80)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-pairs", type=int, default=8)
    ap.add_argument("--max-iter", type=int, default=200)
    ap.add_argument("--skip-single", action="store_true", help="no 1-worker run (halves the time)")
    args = ap.parse_args(argv)

    import ray

    ray.init(address="local", num_cpus=args.workers, object_store_memory=500 * 1024**2,
             include_dashboard=False, log_to_driver=False)
    counts = [args.workers] if args.skip_single or args.workers == 1 else [1, args.workers]
    runs = []
    with tempfile.TemporaryDirectory(prefix="gwray-fanout-") as tmp:
        store = write_layers(os.path.join(tmp, "data"), args.layers, args.n)
        for w in counts:
            runs.append(one_run(store, os.path.join(tmp, f"w{w}"), w, args.batch_pairs, args.max_iter))
    ray.shutdown()

    print(f"\nfanout: {args.layers} layers, {runs[0]['pairs']} pairs, n = {args.n}, "
          f"batch_pairs = {args.batch_pairs}, cpus = {os.cpu_count()} (shared machine: figures under load)")
    print(f"{'workers':>8} {'wall s':>8} {'start-up s':>11} {'solver s':>9} {'solver s/workers':>17} "
          f"{'wall/that':>10} {'(wall-start-up)/that':>21} {'speed-up vs 1':>14}")
    for r in runs:
        speedup = f"{runs[0]['wall'] / r['wall']:.2f}" if counts[0] == 1 else "n/a"
        print(f"{r['workers']:>8} {r['wall']:>8.1f} {r['startup']:>11.1f} {r['solver']:>9.1f} "
              f"{r['solver'] / r['workers']:>17.1f} {r['ratio']:>10.3f} {r['steady']:>21.3f} "
              f"{speedup:>14}")
    last = runs[-1]
    verdict = "meets" if last["ratio"] <= 1.15 else "misses"
    print(f"target wall <= 1.15 x solver-s / workers at {last['workers']} workers: "
          f"{last['ratio']:.3f} ({verdict}); without start-up {last['steady']:.3f}")
    if len(runs) > 1:
        same = np.allclose(runs[0]["gw"], runs[-1]["gw"], rtol=1e-12, atol=0)
        print(f"matrices of the 1- and {last['workers']}-worker runs identical: {same}")


if __name__ == "__main__":
    main()
