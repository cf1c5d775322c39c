"""False-positive rate of the block-structure test on null families, power on planted ones, cost at L = 80.

    PYTHONPATH=. python bench/null_calibration.py [--cases N] [--planted N] [--draws B] [--methods ...]

For every method: the share of null matrices (smooth drift of several shapes at several depths and
noise levels, flat noise matrices, GW matrices of residual nets whose blocks are all the same
small update, GW matrices of random-init GPT-2s) on which ``find_subnetworks(k="auto")`` answers k ≥ 2 at α = 0.05 (should be ≤ 0.05
up to the binomial margin printed beside it), the share of planted block matrices (with and
without drift inside the blocks) found with ARI ≥ 0.95, and the CPU seconds of one test at
L = 80 (B null draws). One BLAS thread; CPU time via ``time.process_time``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
from scipy.stats import binom  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from gwray import find_subnetworks  # noqa: E402
from gwray.graph.communities import METHODS  # noqa: E402
from test_null_model import _drift_net_layers, drift_matrix, planted  # noqa: E402

SHAPES = ("linear", "concave", "convex", "saturating", "sqrtlag", "flat")


def null_cases(n: int):
    """(family, matrix) pairs: drift shapes × L ∈ {8, 16, 32, 64} × noise levels, then GW drift nets."""
    from gwray.gw.pairwise import pairwise_gw

    out = []
    for c in range(n):
        rng = np.random.default_rng(c)
        shape, L = SHAPES[c % len(SHAPES)], (8, 16, 32, 64)[(c // len(SHAPES)) % 4]
        noise, het = [(0.01, False), (0.05, False), (0.2, True)][int(rng.integers(3))]
        out.append((shape if shape != "flat" else "noise", drift_matrix(L, shape, noise, c, het)))
    for s in range(max(4, n // 6)):
        out.append(("gw-drift-net", np.asarray(pairwise_gw(_drift_net_layers(100 + s)))))
    for s in range(max(2, n // 12)):
        out.append(("gw-random-gpt2", np.asarray(pairwise_gw(_random_gpt2_layers(s)))))
    return out


def _random_gpt2_layers(seed: int, n: int = 96) -> list[np.ndarray]:
    """Mean-pooled hidden states (13 layers) of a random-init 12-block GPT-2 on random tokens."""
    import torch
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=12, n_embd=128, n_head=4, vocab_size=1000, n_positions=64,
                     bos_token_id=0, eos_token_id=0)
    ids = torch.randint(0, 1000, (n, 16), generator=torch.Generator().manual_seed(100 + seed))
    with torch.no_grad():
        states = GPT2Model(cfg).eval()(ids, output_hidden_states=True).hidden_states
    return [h.mean(1).double().numpy() for h in states]


def planted_cases(n: int):
    out = []
    for s in range(n):
        L = (12, 24, 40)[s % 3]
        lab = np.sort(np.random.default_rng(s).integers(0, 3, L))
        drift = 0.8 if s % 2 else 0.0
        out.append(("drift-inside" if drift else "blocks", lab,
                    planted(lab, within=0.2 if not drift else 0.0, between=1.0 if not drift else 0.6,
                            noise=0.5 if not drift else 0.2, drift=drift, seed=s)))
    # weak blocks: a boundary jump of 0.1 of the total drift (~1.7 mean layer steps), 6-6-6
    weak = np.repeat(np.arange(3), 6)
    for s in range(max(2, n // 2)):
        out.append(("weak-jump-0.1", weak, planted(weak, within=0.0, between=0.1, noise=0.1,
                                                   drift=1.0, seed=s)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=60, help="null matrices of the drift families")
    ap.add_argument("--planted", type=int, default=12, help="planted matrices")
    ap.add_argument("--draws", type=int, default=99, help="null draws B per test")
    ap.add_argument("--cost-draws", type=int, default=99, help="null draws of the L = 80 cost test")
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
          f"B = {args.draws}, alpha = 0.05", flush=True)
    nulls, plants = null_cases(args.cases), planted_cases(args.planted)
    with threadpool_limits(1):
        for m in args.methods.split(","):
            by_family: dict = {}
            for fam, D in nulls:
                r = find_subnetworks(D, method=m, n_null=args.draws, seed=len(by_family.get(fam, [])))
                by_family.setdefault(fam, []).append(r.k > 1)
            total = sum(sum(v) for v in by_family.values())
            n = sum(len(v) for v in by_family.values())
            fams = ", ".join(f"{f} {sum(v)}/{len(v)}" for f, v in by_family.items())
            print(f"{m:10s} FPR {total}/{n} = {total / n:.3f} (99 % binomial bound at 0.05: "
                  f"{binom.ppf(0.99, n, 0.05) / n:.3f}) [{fams}]", flush=True)
            found = {}
            for fam, lab, D in plants:
                r = find_subnetworks(D, method=m, n_null=args.draws)
                found.setdefault(fam, []).append(r.k > 1 and adjusted_rand_score(lab, r.labels) >= 0.95)
            print(f"{'':10s} power (ARI >= 0.95): " + ", ".join(
                f"{f} {sum(v)}/{len(v)}" for f, v in found.items()), flush=True)
            D80 = drift_matrix(80, "concave", 0.05, 0)
            lab = np.repeat([0, 1, 2, 3], 20)
            B80 = planted(lab, noise=0.3, seed=0)
            for name, D in (("null", D80), ("planted", B80)):
                t0 = time.process_time()
                r = find_subnetworks(D, method=m, n_null=args.cost_draws)
                t_test = time.process_time() - t0
                t0 = time.process_time()
                find_subnetworks(D, method=m, n_null=0)
                t_part = time.process_time() - t0
                print(f"{'':10s} L=80 {name}: {t_test:.2f} s CPU with the test ({r.test.n_null if r.test else 0} "
                      f"draws, p = {r.test.p_value if r.test else None}) vs {t_part:.3f} s without "
                      f"(x{t_test / max(t_part, 1e-9):.0f})", flush=True)


if __name__ == "__main__":
    main()
