"""False-positive rate of the block-structure test on null families, power on planted ones, cost at L = 80.

    PYTHONPATH=. python bench/null_calibration.py [--cases N] [--planted N] [--draws B] [--methods ...]

For every method: the share of null matrices (smooth drift of several shapes at several depths and
noise levels, flat noise matrices) on which ``find_subnetworks(k="auto")`` answers k ≥ 2 at
α = 0.05 (should be ≤ 0.05 up to the binomial margin printed beside it), the share of planted block
matrices (with and without drift inside the blocks, and weak blocks) found with ARI ≥ 0.95, and the
CPU seconds of one test at L = 80 (B null draws), and the same false-positive count on GW matrices
of residual nets whose blocks are all the same small update and of random-init GPT-2s. One BLAS
thread; CPU time via ``time.process_time``. ``jobs/experiments.py`` calls these functions for the
tables of docs/null_model.md (``null_*`` stages), including the drift nets at several null gains.
"""
from __future__ import annotations

import argparse
import contextlib
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
from gwray.graph import null_model  # noqa: E402
from gwray.graph.communities import METHODS  # noqa: E402
from test_null_model import _drift_net_layers, drift_matrix, planted  # noqa: E402

SHAPES = ("linear", "concave", "convex", "saturating", "sqrtlag", "flat")


def synthetic_nulls(n: int) -> list[tuple[str, np.ndarray]]:
    """(family, matrix): drift shapes × L ∈ {8, 16, 32, 64} × noise 1 %, 5 % or 20 % (heteroscedastic)."""
    out = []
    for c in range(n):
        rng = np.random.default_rng(c)
        shape, L = SHAPES[c % len(SHAPES)], (8, 16, 32, 64)[(c // len(SHAPES)) % 4]
        noise, het = [(0.01, False), (0.05, False), (0.2, True)][int(rng.integers(3))]
        out.append((shape if shape != "flat" else "noise", drift_matrix(L, shape, noise, c, het)))
    return out


def drift_net_matrix(seed: int, depth: int = 8) -> np.ndarray:
    """GW matrix of a random residual net whose every block is the same kind of small update."""
    from gwray.gw.pairwise import pairwise_gw

    return np.asarray(pairwise_gw(_drift_net_layers(seed, depth=depth)))


def random_gpt2_matrix(seed: int, n: int = 96) -> np.ndarray:
    """GW matrix of the mean-pooled hidden states (13 layers) of a random-init 12-block GPT-2 on
    random tokens."""
    import torch
    from transformers import GPT2Config, GPT2Model

    from gwray.gw.pairwise import pairwise_gw

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=12, n_embd=128, n_head=4, vocab_size=1000, n_positions=64,
                     bos_token_id=0, eos_token_id=0)
    ids = torch.randint(0, 1000, (n, 16), generator=torch.Generator().manual_seed(100 + seed))
    with torch.no_grad():
        states = GPT2Model(cfg).eval()(ids, output_hidden_states=True).hidden_states
    return np.asarray(pairwise_gw([h.mean(1).double().numpy() for h in states]))


def planted_cases(n: int):
    """(family, labels, matrix): 3 blocks at L = 12, 24, 40 with heavy noise, blocks with drift
    inside, and weak blocks (6-6-6 in a drift of 1.0, each boundary a jump of 0.1 ≈ 1.7 mean
    layer steps, noise 0.1)."""
    out = []
    for s in range(n):
        L = (12, 24, 40)[s % 3]
        lab = np.sort(np.random.default_rng(s).integers(0, 3, L))
        drift = 0.8 if s % 2 else 0.0
        out.append(("drift-inside" if drift else "blocks", lab,
                    planted(lab, within=0.2 if not drift else 0.0, between=1.0 if not drift else 0.6,
                            noise=0.5 if not drift else 0.2, drift=drift, seed=s)))
    weak = np.repeat(np.arange(3), 6)
    for s in range(max(2, n // 2)):
        out.append(("weak-jump-0.1", weak, planted(weak, within=0.0, between=0.1, noise=0.1, drift=1.0, seed=s)))
    return out


@contextlib.contextmanager
def step_gain(gain: float):
    """Run the test with the null's log-step spread at ``gain`` × the observed spread (0: even steps)."""
    saved = null_model.STEP_SD_GAIN
    null_model.STEP_SD_GAIN = gain
    try:
        yield
    finally:
        null_model.STEP_SD_GAIN = saved


def rejections(matrices, method: str, draws: int) -> list[bool]:
    """k ≥ 2 at α = 0.05 (a false positive on null matrices), matrix i tested with seed i."""
    with threadpool_limits(1):
        return [find_subnetworks(D, method=method, n_null=draws, seed=i).k > 1 for i, D in enumerate(matrices)]


def power(plants, method: str, draws: int) -> dict:
    """family → [found with ARI ≥ 0.95] on the planted matrices."""
    found: dict = {}
    with threadpool_limits(1):
        for fam, lab, D in plants:
            r = find_subnetworks(D, method=method, n_null=draws)
            found.setdefault(fam, []).append(bool(r.k > 1 and adjusted_rand_score(lab, r.labels) >= 0.95))
    return found


def cost(method: str, L: int, draws: int) -> dict:
    """CPU seconds of one test at depth L on a drift matrix and on a planted 4-block matrix, against
    the partition alone."""
    lab = np.repeat(np.arange(4), L // 4)
    out = {}
    with threadpool_limits(1):
        for name, D in (("null", drift_matrix(L, "concave", 0.05, 0)), ("planted", planted(lab, noise=0.3, seed=0))):
            t0 = time.process_time()
            r = find_subnetworks(D, method=method, n_null=draws)
            t_test = time.process_time() - t0
            t0 = time.process_time()
            find_subnetworks(D, method=method, n_null=0)
            out[name] = {"test_cpu_s": t_test, "partition_cpu_s": time.process_time() - t0,
                         "draws": r.test.n_null if r.test else 0, "p": r.test.p_value if r.test else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=60, help="null matrices of the drift families")
    ap.add_argument("--planted", type=int, default=12, help="planted matrices")
    ap.add_argument("--nets", type=int, default=6, help="GW matrices of drift nets (and half as many GPT-2s)")
    ap.add_argument("--draws", type=int, default=99, help="null draws B per test")
    ap.add_argument("--cost-draws", type=int, default=99, help="null draws of the L = 80 cost test")
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
          f"B = {args.draws}, alpha = 0.05", flush=True)
    nulls = synthetic_nulls(args.cases)
    nulls += [("gw-drift-net", drift_net_matrix(100 + s)) for s in range(args.nets)]
    nulls += [("gw-random-gpt2", random_gpt2_matrix(s)) for s in range(max(1, args.nets // 2))]
    plants = planted_cases(args.planted)
    for m in args.methods.split(","):
        hits = rejections([D for _, D in nulls], m, args.draws)
        by_family: dict = {}
        for (fam, _), hit in zip(nulls, hits):
            by_family.setdefault(fam, []).append(hit)
        n = len(hits)
        fams = ", ".join(f"{f} {sum(v)}/{len(v)}" for f, v in by_family.items())
        print(f"{m:10s} FPR {sum(hits)}/{n} = {sum(hits) / n:.3f} (99 % binomial bound at 0.05: "
              f"{binom.ppf(0.99, n, 0.05) / n:.3f}) [{fams}]", flush=True)
        print(f"{'':10s} power (ARI >= 0.95): " + ", ".join(
            f"{f} {sum(v)}/{len(v)}" for f, v in power(plants, m, args.draws).items()), flush=True)
        for name, c in cost(m, 80, args.cost_draws).items():
            print(f"{'':10s} L=80 {name}: {c['test_cpu_s']:.2f} s CPU with the test ({c['draws']} draws, "
                  f"p = {c['p']}) vs {c['partition_cpu_s']:.3f} s without "
                  f"(x{c['test_cpu_s'] / max(c['partition_cpu_s'], 1e-9):.0f})", flush=True)


if __name__ == "__main__":
    main()
