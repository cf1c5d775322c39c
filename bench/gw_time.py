"""Benchmark: where the default solve's CPU time goes, per phase, on real layer pairs.

For the layer sets of ``gw_solver.py --large`` (all-MiniLM-L6-v2 on the built-in probe, the toy
residual net on the modular task) at n samples, one line per pair: the value and winning start,
the total CPU time of ``gromov_wasserstein(C1, C2, aligned=True)`` (each layer's bound data
computed beforehand, as the workers cache it), each start's CG (seconds and iterations), each
polish (swap search + CG alternated) with the swap search's share, the entropic start's plan,
the lower bound, and every start's final value over the winner's. One BLAS thread; CPU time of
the process. The phases are timed by wrapping the solver's own functions (no copy of its logic).

Usage: python bench/gw_time.py [--n 2048] [--set MiniLM] [--pairs 5-6 0-6] [--cache DIR]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import gwray.gw.solver as solver
import gwray.gw.starts as starts
from gwray.gw.bounds import layer_summary
from gwray.gw.costs import cost_matrix

LOG: list[tuple[str, float, object]] = []  # (phase, CPU seconds, what the function returned)


def timed(module, name: str, phase: str) -> None:
    """Replace ``module.name`` by a wrapper that appends its CPU time to LOG."""
    f = getattr(module, name)

    def wrapper(*a, **k):
        c = time.process_time()
        out = f(*a, **k)
        LOG.append((phase, time.process_time() - c, out))
        return out

    setattr(module, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--set", default="MiniLM", help="layer sets whose title has this text")
    ap.add_argument("--pairs", nargs="+", default=["5-6", "0-6"], help="layer pairs, as i-j")
    ap.add_argument("--cache", default="/tmp/gwray-bench-cache")
    args = ap.parse_args()
    from gw_solver import real_layer_sets

    for module, name, phase in [(solver, "cg", "cg"), (solver, "_polish", "polish"),
                                (solver, "swap_search", "swap"), (solver, "_lower_bound", "bound"),
                                (starts, "entropic_plan", "entropic")]:
        timed(module, name, phase)
    with threadpool_limits(limits=1, user_api="blas"):
        for title, layers in real_layer_sets(args.n, args.cache):
            if args.set not in title:
                continue
            for i, j in (map(int, p.split("-")) for p in args.pairs):
                C1, C2 = np.asarray(cost_matrix(layers[i])), np.asarray(cost_matrix(layers[j]))
                data = (layer_summary(C1), layer_summary(C2))
                LOG.clear()
                c = time.process_time()
                r = solver.gromov_wasserstein(C1, C2, aligned=True, keep_coupling=False, layer_data=data)
                total = time.process_time() - c
                secs = {ph: sum(t for p, t, _ in LOG if p == ph) for ph in ("swap", "bound", "entropic")}
                # the starts' CG runs come first, one per start; the polishes' follow
                cgs = [(t, out[3]) for p, t, out in LOG if p == "cg"][:len(r.start_values)]
                polish = [t for p, t, _ in LOG if p == "polish"]
                print(f"{title}, {i}-{j}: value {r.value:.6f} ({r.init}), CPU {total:.1f} s | starts' CG "
                      + ", ".join(f"{s} {t:.1f} s/{k} it" for s, (t, k) in zip(r.start_values, cgs))
                      + f" | polish {' + '.join(f'{t:.1f}' for t in polish)} = {sum(polish):.1f} s "
                      f"(swap search {secs['swap']:.1f} s) | entropic plan {secs['entropic']:.1f} s | "
                      f"bound {secs['bound']:.1f} s | ends / value: "
                      + ", ".join(f"{s} {v / r.value:.4f}" for s, v in r.start_values.items()), flush=True)


if __name__ == "__main__":
    main()
