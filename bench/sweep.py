"""Benchmark: warm starts across the checkpoints of a training run (``gw.warm_start``).

Trains a toy residual MLP on scikit-learn's digits (offline) and keeps K checkpoints (or takes
``--ckpts DIR`` with ``step-*`` checkpoint directories of :mod:`gwray.models.toy`), runs a
held-out probe through each, and solves every pair a ``compare.cross: consecutive`` run plans —
each checkpoint's L (L - 1) / 2 within pairs and the L² cross pairs against the previous
checkpoint — twice, interleaved pair by pair (which one runs first alternates):

- cold: the configured starts (identity + product), as with ``gw.warm_start: false``;
- warm: :func:`gwray.gw.warm.warm_gw` from the solver state the warm sweep found for the pair's
  source (:func:`gwray.scheduler.plan.warm_sources`: the same pair one checkpoint earlier): its
  plan and duals, and only the configured starts the pruning rule keeps (``--keep``, as
  ``gw.warm_keep``) — exactly what the scheduler's workers do.

Then, within the last checkpoint, each pair (i, k) at distance k - i ≥ 2 is solved cold and
cold + the composition of the plans of (i, k - 1) and (k - 1, k) (the issue's composed start;
aligned samples make it a feasible plan), by distance: how often it wins, by how much, at what
time ratio.

Solver time is CPU time of the solving thread (``time.thread_time``, 1 BLAS thread); the lower
bound's per-layer data is computed once per layer for both. Prints per checkpoint the
solver-seconds cold and warm, their ratio, how many pairs were offered a warm plan and won by it,
how many configured starts were pruned, and the range of (warm − cold) / cold; then the totals
over checkpoints 2..K. Issue targets: ratio ≤ 0.35, every warm value ≤ cold × 1.001.

Usage: python bench/sweep.py [--ckpts DIR] [--checkpoints 9] [--steps 400] [--depth 8]
                             [--n 128] [--keep 1.06] [--out runs/bench-sweep]
(``--ckpts runs/toy-digits/ckpts --n 256``: the checkpoints of configs/checkpoints.yaml.)
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from gwray.gw.bounds import assignment_bound, layer_summary
from gwray.gw.costs import cost_matrix
from gwray.gw.solver import gromov_wasserstein
from gwray.gw.warm import KEEP, warm_gw
from gwray.models.toy import load_toy, train_toy
from gwray.scheduler.plan import plan_pairs, warm_sources

STARTS = ["identity", "product"]


def checkpoints(args) -> list[Path]:
    root = Path(args.ckpts or os.path.join(args.out, f"digits-d{args.depth}-s{args.steps}"))
    found = sorted(root.glob("step-*"))
    if not found:
        every = max(args.steps // (args.checkpoints - 1), 1)
        print(f"training the digits toy ({args.steps} steps, depth {args.depth}) into {root}")
        found = train_toy("digits", root, save_every=every, steps=args.steps, depth=args.depth)
    return found


def layer_costs(paths: list[Path], n: int) -> dict:
    probe = np.load(paths[0].parent / "probe.npy")[:n]
    costs = {}
    torch.set_num_threads(1)
    for path in paths:
        model, names = load_toy(path)
        with torch.no_grad():
            states = model.hidden_states(torch.as_tensor(probe))
        costs[path.name] = {name: cost_matrix(h.numpy().astype(np.float64)) for name, h in zip(names, states)}
    return costs


def sweep(costs: dict, keep: float) -> list[dict]:
    # per-layer bound data, computed once per layer as a worker would cache it, for both sweeps
    summaries = {c: {k: layer_summary(C) for k, C in layers.items()} for c, layers in costs.items()}
    first = list(next(iter(costs.values())).values())
    gromov_wasserstein(first[0], first[1], aligned=True)  # compile the numba kernels first
    assignment_bound(first[0], np.zeros(len(first[0])))  # and the float64 assignment's
    plan = plan_pairs({c: list(layers) for c, layers in costs.items()}, "consecutive")
    sources, states, rows = warm_sources(plan), {}, []
    for k, t in enumerate(plan):
        C1, C2 = costs[t.checkpoint_a][t.layer_a], costs[t.checkpoint_b][t.layer_b]
        data = (summaries[t.checkpoint_a][t.layer_a], summaries[t.checkpoint_b][t.layer_b])
        src, transposed = sources.get(t.key, (None, False))
        state = states.get(src)
        if state is not None and transposed:  # the source's plan runs layer_b -> layer_a
            state = state.transposed()
        runs = {}
        for which in (("cold", "warm") if k % 2 else ("warm", "cold")):
            t0 = time.thread_time()
            if which == "cold":
                out = gromov_wasserstein(C1, C2, aligned=True, starts=STARTS, keep_coupling=False,
                                         layer_data=data), None, 0
            else:
                out = warm_gw(C1, C2, state, aligned=True, starts=STARTS, keep=keep,
                              keep_coupling=False, layer_data=data)
            runs[which] = (*out, time.thread_time() - t0)
        (cold, _, _, tc), (warm, states[t.key], pruned, tw) = runs["cold"], runs["warm"]
        assert warm.lower_bound <= warm.value
        rows.append({"key": t.key, "checkpoint": t.checkpoint_b, "cold": cold.value, "warm": warm.value,
                     "cold_s": tc, "warm_s": tw, "offered": state is not None,
                     "won": warm.init == "given", "pruned": pruned, "cold_init": cold.init,
                     "ends": None if state is None else dict(state.start_ends),
                     "lb_diff": abs(warm.lower_bound - cold.lower_bound),
                     "lb": cold.lower_bound})
    return rows


def report(rows: list[dict], order: list[str]) -> dict:
    print(f"{'checkpoint':>12} {'pairs':>6} {'cold s':>8} {'warm s':>8} {'ratio':>6} {'warm':>5} "
          f"{'won':>5} {'pruned':>6} {'max rel diff':>13} {'min rel diff':>13}")
    totals = {"cold_s": 0.0, "warm_s": 0.0, "pairs": 0, "offered": 0, "won": 0, "pruned": 0,
              "worst": -np.inf, "best": np.inf, "above": 0}
    for c in order:
        mine = [r for r in rows if r["checkpoint"] == c]
        cs, ws = sum(r["cold_s"] for r in mine), sum(r["warm_s"] for r in mine)
        rel = [(r["warm"] - r["cold"]) / r["cold"] for r in mine if r["cold"] > 0]
        counts = [sum(r[k] for r in mine) for k in ("offered", "won", "pruned")]
        print(f"{c:>12} {len(mine):>6} {cs:8.2f} {ws:8.2f} {ws / cs:6.3f} {counts[0]:>5} "
              f"{counts[1]:>5} {counts[2]:>6} {max(rel):13.2e} {min(rel):13.2e}")
        if c != order[0]:
            totals["cold_s"] += cs
            totals["warm_s"] += ws
            totals["pairs"] += len(mine)
            totals["offered"] += counts[0]
            totals["won"] += counts[1]
            totals["pruned"] += counts[2]
            totals["above"] += sum(x > 1e-3 for x in rel)
            totals["worst"], totals["best"] = max(totals["worst"], max(rel)), min(totals["best"], min(rel))
    totals["ratio"] = totals["warm_s"] / totals["cold_s"]
    # pairs of near-equal layers (GW < 1e-8) carry float64 noise far above 1e-9 of their bound
    totals["lb_rel"] = max(r["lb_diff"] / r["lb"] for r in rows if r["cold"] > 1e-8)
    totals["lb_abs"] = max(r["lb_diff"] for r in rows)
    return totals


def composed(costs: dict, summaries: dict) -> list[dict]:
    """Within one checkpoint: (i, k) solved cold and cold + the composed plan of (i, k-1) and
    (k-1, k) (each from the composed sweep), pairs in order of distance k - i."""
    names, rows, perms = list(costs), [], {}
    for d in range(1, len(names)):
        for i in range(len(names) - d):
            k = i + d
            C1, C2 = costs[names[i]], costs[names[k]]
            data = (summaries[names[i]], summaries[names[k]])
            # i -> k-1 then k-1 -> k: sample a of layer i goes to σ2[σ1[a]] of layer k
            start = [] if d == 1 else [perms[k - 1, k][perms[i, k - 1]]]
            runs = {}
            for which in (("cold", "composed") if (i + d) % 2 else ("composed", "cold")):
                extra = start if which == "composed" else []
                t0 = time.thread_time()  # one more polished end for the extra start, as warm_gw
                runs[which] = (gromov_wasserstein(C1, C2, aligned=True, starts=[*STARTS, *extra],
                                                  polish=1 + len(extra), keep_coupling=False,
                                                  layer_data=data), time.thread_time() - t0)
            (cold, tc), (comp, tw) = runs["cold"], runs["composed"]
            perms[i, k] = comp.permutation
            rows.append({"distance": d, "cold": cold.value, "composed": comp.value, "cold_s": tc,
                         "composed_s": tw, "won": comp.value < cold.value * (1 - 1e-9)})
    return rows


def report_composed(rows: list[dict]) -> None:
    print(f"\ncomposed plans (i -> k-1 -> k) within the last checkpoint\n{'distance':>8} {'pairs':>6} "
          f"{'won':>5} {'time ratio':>10} {'min rel diff':>13} {'max rel diff':>13}")
    for d in sorted({r["distance"] for r in rows if r["distance"] > 1}):
        mine = [r for r in rows if r["distance"] == d]
        rel = [(r["composed"] - r["cold"]) / r["cold"] for r in mine]
        ratio = sum(r["composed_s"] for r in mine) / sum(r["cold_s"] for r in mine)
        print(f"{d:>8} {len(mine):>6} {sum(r['won'] for r in mine):>5} {ratio:10.3f} "
              f"{min(rel):13.2e} {max(rel):13.2e}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpts", help="directory of step-* toy checkpoints (default: train them)")
    ap.add_argument("--checkpoints", type=int, default=9, help="checkpoints to train (>= 8)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--n", type=int, default=128, help="probe samples")
    ap.add_argument("--keep", type=float, default=KEEP, help="the pruning rule's gw.warm_keep")
    ap.add_argument("--out", default="runs/bench-sweep", help="where trained checkpoints are kept")
    args = ap.parse_args(argv)
    paths = checkpoints(args)
    costs = layer_costs(paths, args.n)
    order = list(costs)
    L = len(next(iter(costs.values())))
    print(f"{len(order)} checkpoints x {L} layers, n = {args.n}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = sweep(costs, args.keep)
    tot = report(rows, order)
    print(f"checkpoints 2..{len(order)}: {tot['pairs']} pairs, solver CPU-s cold {tot['cold_s']:.2f}, "
          f"warm {tot['warm_s']:.2f}: ratio {tot['ratio']:.3f} (target <= 0.35); warm plan offered "
          f"{tot['offered']}, won {tot['won']}, {tot['pruned']} starts pruned (keep {args.keep}); "
          f"(warm - cold) / cold from {tot['best']:.2e} to {tot['worst']:.2e}, {tot['above']} "
          f"pairs above 1e-3 (target: 0); lower bounds warm vs cold within {tot['lb_rel']:.1e} "
          f"relative where GW > 1e-8, {tot['lb_abs']:.1e} absolute")
    for r in rows:
        if r["warm"] > r["cold"] * (1 + 1e-3):
            print(f"  above: {'/'.join(r['key'])} by {r['warm'] / r['cold'] - 1:.2%}, cold won by "
                  f"{r['cold_init']}; starts' ends at the source {r['ends']}")
    last = order[-1]
    report_composed(composed(costs[last], {k: layer_summary(C) for k, C in costs[last].items()}))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
