"""docs/null_model.md: calibration and power of the block-structure test, and what ``gwray demo`` says.

Stages (run by ``jobs/experiments.py``; the functions are ``bench/null_calibration.py``'s):

- ``null_synthetic:<method>`` — false positives on synthetic drift matrices, power on planted
  blocks, the CPU cost of one test at depth ``cost_L``.
- ``null_matrices`` — GW matrices of random residual "drift nets" (9 layers: the calibration set,
  seeds 0…, and held-out seeds 200…; 17 layers: seeds 300…) and of random-init GPT-2s.
- ``null_nets:<method>`` — how many of those the test calls significant, at several gains of the
  null's step unevenness (0 = even steps; 3 = the shipped ``STEP_SD_GAIN``).
- ``demo`` — ``gwray demo`` (both nets) through the product into OUT/demo and OUT/demo-planted,
  with their stdout summaries as JSON.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import null_calibration as nc  # noqa: E402

METHODS = ("contiguous", "spectral", "greedy", "louvain")
#: Louvain reruns a 35-run resolution sweep per null draw: only at the shipped gain
SHIPPED_GAIN = 3.0


def stages(s: dict) -> list:
    out = [(f"null_synthetic:{m}", "exp_null", "synthetic_stage", (m,), []) for m in METHODS]
    out.append(("null_matrices", "exp_null", "matrices_stage", (), []))
    out += [(f"null_nets:{m}", "exp_null", "nets_stage", (m,), ["null_matrices"]) for m in METHODS]
    return out


def synthetic_stage(ctx, method: str) -> dict:
    n = ctx.s["null"]
    cases = nc.synthetic_nulls(n["cases"])
    hits = nc.rejections([D for _, D in cases], method, n["draws"])
    fams: dict = {}
    for (fam, D), hit in zip(cases, hits):
        fams.setdefault(fam, []).append({"L": len(D), "rejected": hit})
    return {"method": method, "draws": n["draws"], "false_positives": sum(hits), "cases": len(hits),
            "families": fams, "power": nc.power(nc.planted_cases(n["planted"]), method, n["draws"]),
            "cost": nc.cost(method, n["cost_L"], n["cost_draws"]), "cost_L": n["cost_L"]}


def matrices_stage(ctx) -> dict:
    n = ctx.s["null"]
    return {"calibration": [nc.drift_net_matrix(s) for s in range(n["nets"])],
            "heldout": [nc.drift_net_matrix(200 + s) for s in range(n["heldout_nets"])],
            "deep": [nc.drift_net_matrix(300 + s, depth=16) for s in range(n["deep_nets"])],
            "gpt2": [nc.random_gpt2_matrix(s) for s in range(n["gpt2"])]}


def nets_stage(ctx, method: str) -> dict:
    import numpy as np

    n, mats = ctx.s["null"], ctx.result("null_matrices")
    out = {"method": method, "draws": n["draws"], "calibration": {}}
    for gain in n["gains"]:
        if method == "louvain" and gain != SHIPPED_GAIN:
            continue
        with nc.step_gain(gain):
            out["calibration"][f"{gain:g}"] = sum(nc.rejections([np.array(D) for D in mats["calibration"]], method,
                                                                n["draws"]))
    with nc.step_gain(SHIPPED_GAIN):
        for family in ("heldout", "deep", "gpt2"):
            out[family] = sum(nc.rejections([np.array(D) for D in mats[family]], method, n["draws"]))
    out["counts"] = {f: len(mats[f]) for f in ("calibration", "heldout", "deep", "gpt2")}
    return out


def demo_stage(ctx) -> dict:
    """``gwray demo --json`` (the MiniLM and the planted net) into OUT/demo; its summaries."""
    import contextlib
    import io

    from gwray.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["demo", "--json", "-q", "--out", str(ctx.out / "demo")])
    if code != 0:
        raise RuntimeError(f"gwray demo exited with {code}")
    return {"summaries": json.loads(buf.getvalue())}
