"""``bench/gw_solver.py --wide``: how far the default solve is from the best the solver can find.

For real layer pairs (all-MiniLM-L6-v2 on the built-in probe, the toy residual net on the modular
task and a toy net on scikit-learn's digits; see :func:`gw_solver.real_layer_sets`) at each
``--sizes`` n, per pair:

- the default solve (``gromov_wasserstein(C1, C2, aligned=True)``: its value, winning start,
  runner-up gap and CPU time);
- the wide search: the lowest value of (a) the default starts plus ``random:R`` (other seeds than
  the default's), aligned, and (b) the same pair with layer b's samples shuffled, solved unaligned
  from ``product``, ``entropic`` and ``random:R``; every start's end polished. Target: default
  <= 1.01 x wide on every pair;
- invariance: the default solve of the shuffled pair, unaligned (identity and mixed drop out),
  over the aligned default value. Targets: median <= 1.05, max <= 1.15 on the MiniLM pairs.

``--speed-sizes`` (default 2048 4096) then runs ``--large``'s table against POT at those sizes.
Usage: python bench/gw_solver.py --wide [--sizes 128 256 512] [--wide-pairs 21] [--random 30]
"""
from __future__ import annotations

import itertools
import os
import time

import numpy as np

from gwray.gw.costs import cost_matrix
from gwray.gw.solver import gromov_wasserstein
from gwray.gw.starts import DEFAULT_STARTS


def layer_sets(n: int, cache: str) -> list[tuple[str, list[np.ndarray]]]:
    """(title, cost matrices) of every real layer set that has n samples: those of
    ``--large`` and a toy net trained on the digits task (1,797 images, depth 12)."""
    from pathlib import Path

    from gw_solver import real_layer_sets, toy_states

    from gwray.models import toy

    sets = [(t, [np.asarray(cost_matrix(X)) for X in L]) for t, L in real_layer_sets(n, cache)]
    digits = toy_states(Path(cache) / "toy-digits.npy", toy.default_meta("digits"))
    if n <= digits.shape[1]:
        sets.append((f"toy net (digits, depth 12), n={n}",
                     [np.asarray(cost_matrix(X[:n].astype(np.float64))) for X in digits]))
    return sets


def wide_value(C1, C2, shuffle: np.ndarray, random: int) -> tuple[float, float]:
    """(lowest value of the wide search, its CPU seconds): the default starts plus random:R,
    aligned, and product, entropic and random:R on the pair with C2's samples shuffled."""
    c = time.process_time()
    al = gromov_wasserstein(C1, C2, aligned=True, starts=[*DEFAULT_STARTS, f"random:{random}"], seed=1,
                            bound=False, keep_coupling=False)
    un = gromov_wasserstein(C1, C2[np.ix_(shuffle, shuffle)], starts=["product", "entropic",
                            f"random:{random}"], seed=2, bound=False, keep_coupling=False)
    return min(al.value, un.value), time.process_time() - c


def run_set(title: str, costs: list[np.ndarray], max_pairs: int, random: int) -> dict:
    """One line per pair: default, wide, gap, invariance; returns the set's figures."""
    pairs = list(itertools.combinations(range(len(costs)), 2))
    if len(pairs) > max_pairs:  # neighbours, the most distant pair, then an even spread
        keep = np.unique(np.linspace(0, len(pairs) - 1, max_pairs).round().astype(int))
        pairs = [pairs[k] for k in keep]
    n = costs[0].shape[0]
    print(f"\n== {title}: {len(pairs)} pairs; wide = default starts + random:{random} aligned, "
          f"product + entropic + random:{random} shuffled and unaligned")
    print(f"{'pair':>6} {'default':>9} {'wide':>9} {'gap %':>6} {'init':>9} {'runner-up %':>11} "
          f"{'unal/al':>7} {'dflt s':>6} {'wide s':>6}", flush=True)
    rng = np.random.default_rng(0)
    gaps, inv, secs = [], [], []
    for i, j in pairs:
        shuffle = rng.permutation(n)
        c = time.process_time()
        r = gromov_wasserstein(costs[i], costs[j], aligned=True, keep_coupling=False)
        secs.append(time.process_time() - c)
        un = gromov_wasserstein(costs[i], costs[j][np.ix_(shuffle, shuffle)], keep_coupling=False,
                                bound=False)
        wide, t_wide = wide_value(costs[i], costs[j], shuffle, random)
        wide = min(wide, r.value, un.value)  # every value found is a feasible plan's
        gaps.append(r.value / wide - 1.0)
        inv.append(un.value / r.value)
        print(f"{i:>2}-{j:<3} {r.value:9.6f} {wide:9.6f} {100 * gaps[-1]:6.2f} {r.init:>9} "
              f"{100 * r.runner_up_gap:11.2f} {inv[-1]:7.3f} {secs[-1]:6.2f} {t_wide:6.1f}", flush=True)
    g, v = 100 * np.array(gaps), np.array(inv)
    print(f"-- default <= 1.01 x wide on {(g <= 1).sum()}/{len(g)} pairs (gap median {np.median(g):.2f} %, "
          f"max {g.max():.2f} %); unaligned/aligned median {np.median(v):.3f}, max {v.max():.3f}; "
          f"default CPU {sum(secs):.1f} s")
    return {"title": title, "gaps": g, "inv": v}


def run_wide(args) -> None:
    print(f"load average at start: {os.getloadavg()}; 1 BLAS thread; CPU time per process")
    sets = []
    for n in args.sizes:
        for title, costs in layer_sets(n, args.cache):
            sets.append(run_set(title, costs, args.wide_pairs, args.random))
    g = np.concatenate([s["gaps"] for s in sets])
    print(f"\n== overall: default <= 1.01 x wide on {(g <= 1).sum()}/{g.size} pairs (max gap "
          f"{g.max():.2f} %)")
    for s in sets:
        if s["title"].startswith("all-MiniLM"):
            print(f"   invariance {s['title']}: unaligned/aligned median {np.median(s['inv']):.3f}, "
                  f"max {s['inv'].max():.3f} (targets 1.05 / 1.15)")
    print(f"load average at end: {os.getloadavg()}")
