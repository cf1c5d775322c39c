"""Benchmark: `gwray run` end to end against the naive script, in the same run.

Both analyse the packaged all-MiniLM-L6-v2 on the same n probe sentences (builtin:english,
n = 1,024 by default), mean-pooled over real tokens, 7 layers (embeddings + 6 blocks), 21 pairs:

- naive: Hugging Face ``output_hidden_states=True`` in one process, euclidean cost matrices
  divided by their mean, then a serial loop of POT's ``ot.gromov.gromov_wasserstein2`` (square
  loss, uniform weights, its default product start) over the pairs;
- gwray: the ``gwray run`` command (a fresh process: imports, embedded Ray start, extraction,
  GW workers, groups, report) with configs/minilm.yaml.

Prints both walls and their ratio (target: gwray ≥ 3× faster), then GW per pair side by side
(target: gwray's value ≤ POT's on every pair; both are objectives of feasible couplings of the
same problem), and how far the two sets of activations differ (so that the problems are the same).

Usage: python bench/end_to_end.py [--n 1024] [--workers 2] [--out /tmp/gwray-bench]
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def naive(n: int, max_tokens: int = 64, batch: int = 32):
    """The naive script; returns (wall seconds, layer activations, {(i, j): GW}, seconds in GW)."""
    import ot
    import torch
    from scipy.spatial.distance import cdist
    from transformers import AutoModel, AutoTokenizer

    from gwray.activations.probes import load_probe  # only to read the same n sentences
    from gwray.config import ProbeConfig
    from gwray.models.loaders import resolve_model_path

    t0 = time.perf_counter()
    texts = load_probe(ProbeConfig(n_samples=n, max_tokens=max_tokens)).texts
    path = resolve_model_path("minilm")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    pooled: list[list[np.ndarray]] = []
    with torch.no_grad():
        for s in range(0, n, batch):
            enc = tok(texts[s:s + batch], padding=True, truncation=True, max_length=max_tokens,
                      return_tensors="pt")
            hidden = model(**enc, output_hidden_states=True).hidden_states
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled.append([((h * mask).sum(1) / mask.sum(1)).numpy() for h in hidden])
    layers = [np.concatenate([p[k] for p in pooled]).astype(np.float64) for k in range(len(pooled[0]))]
    costs = []
    for X in layers:
        C = cdist(X, X)
        costs.append(C / C.mean())
    p = np.full(n, 1.0 / n)
    values, t_gw = {}, time.perf_counter()
    for i, j in itertools.combinations(range(len(costs)), 2):
        values[(i, j)] = float(ot.gromov.gromov_wasserstein2(costs[i], costs[j], p, p, loss_fun="square_loss"))
        print(f"  naive pair ({i}, {j}): {values[(i, j)]:.6g}", file=sys.stderr, flush=True)
    return time.perf_counter() - t0, layers, values, time.perf_counter() - t_gw


def gwray_cli(n: int, workers: int, out: Path) -> tuple[float, dict]:
    """Wall seconds of `gwray run configs/minilm.yaml` at n samples (a fresh run directory), and
    the seconds each stage took, read from the run's progress lines."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "gwray.cli", "run", str(REPO / "configs" / "minilm.yaml"),
           "--out", str(out), "--set", f"probe.n_samples={n}", "--set", f"resources.workers={workers}",
           "--set", "gw.baselines=[]", "--set", "graph.method=contiguous"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), text=True,
                          stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    sys.stderr.write(proc.stderr)
    if proc.returncode:
        raise SystemExit(f"gwray run failed with exit code {proc.returncode}")
    stamps = [(float(t), what) for t, what in re.findall(r"\[gwray\s+([\d.]+)s\] (\w+)", proc.stderr)]
    stages: dict = {}
    for (t, what), (t_next, _) in zip(stamps, stamps[1:]):
        label = {"starting": "Ray start", "run": "start"}.get(what, what)
        stages[label] = stages.get(label, 0.0) + t_next - t
    return wall, stages


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="probe samples (default 1024)")
    ap.add_argument("--workers", type=int, default=2, help="gwray GW workers (default 2)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "gwray-bench-e2e")
    args = ap.parse_args(argv)

    from gwray.activations.store import ActivationStore
    from gwray.pipeline import load_run

    print(f"end to end, all-MiniLM-L6-v2, n = {args.n}, 21 layer pairs, {os.cpu_count()} CPUs "
          "(shared machine: figures taken under load)")
    t_gwray, stages = gwray_cli(args.n, args.workers, args.out)
    t_naive, acts, pot, t_pot = naive(args.n)
    run = load_run(args.out)
    names, G = run.layers["main"], run.matrix
    store = ActivationStore(args.out)
    diff = max(float(np.abs(store.read_layer("main", name) - X).max() / np.abs(X).max())
               for name, X in zip(names, acts))

    print(f"\nwall: naive {t_naive:.1f} s (of which serial POT GW {t_pot:.1f} s), "
          f"gwray run {t_gwray:.1f} s  →  {t_naive / t_gwray:.2f}× faster (target ≥ 3×)")
    print("gwray stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items())
          + f"; POT loop / gwray GW stage = {t_pot / stages.get('pairs', float('nan')):.2f}×")
    print(f"activations: max relative difference gwray vs naive {diff:.2e} (same problems)")
    print(f"\n{'layer i':>16} {'layer j':>16} {'POT':>12} {'gwray':>12} {'gwray/POT':>10}")
    lower = 0
    for (i, j), v in pot.items():
        g = float(G[i, j])
        lower += g <= v * (1 + 1e-9)
        print(f"{names[i]:>16} {names[j]:>16} {v:12.6g} {g:12.6g} {g / v if v else float('nan'):10.4f}")
    ratios = [G[i, j] / v for (i, j), v in pot.items() if v > 0]
    print(f"\ngwray ≤ POT on {lower}/{len(pot)} pairs (target: all); gwray/POT median "
          f"{np.median(ratios):.4f}, min {min(ratios):.4f}, max {max(ratios):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
