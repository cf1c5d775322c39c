"""Regenerate every table and figure of docs/results.md and docs/null_model.md with today's code.

    python jobs/experiments.py --all --out runs/results        # everything; stages resume
    python jobs/experiments.py --quick --out /tmp/results      # tiny sizes, two seeds (the test's run)
    python jobs/experiments.py --all --out runs/results --redo 'toy:digits_*'   # recompute some stages
    python jobs/experiments.py --docs --out runs/results       # write the tables and figures into docs/

The work is cut into stages (one training seed of one setup, one null family, ...), each a JSON file
OUT/stages/<stage>.json written atomically when the stage finishes; a rerun skips the finished
ones, and ``--jobs`` stages run at once (separate processes, one torch/BLAS thread each). At the
end OUT/results.json holds every stage's numbers (``stages``), the across-seed statistics every
table shows (``summary``) and how they were made (``meta``: command, commit, load average); the
tables are rendered from ``summary`` into OUT/tables.md, the figures into OUT/figures/.
``--docs`` replaces the generated blocks of docs/*.md (``<!-- BEGIN name -->`` … ``<!-- END name
-->``), copies the figures to docs/figures/ and writes docs/results.json (``meta`` + ``summary``),
from which ``tests/test_results_docs.py`` checks that the docs' tables are in sync.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import fnmatch
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "jobs"):
    sys.path.insert(0, str(_p))


#: the sizes of every experiment; the doc's setup tables are rendered from these
FULL = dict(
    seeds=5, alpha=0.05, null_draws=99, n_probe=128, heal_seeds=3, random_draws=10,
    wide_random=10, toy_ks=[2, 4, 6], heal_steps=50, val_fraction=0.1,
    minilm=dict(seeds=5, n_probe=256, max_tokens=64, drops=[1, 2, 3], n_eval=256),
    lm=dict(layers=6, width=64, vocab=2048, train_steps=500, lr=2e-3, batch=16, max_tokens=64, n_probe=256,
            drops=[2, 3], heal_steps=20, heal_lr=5e-4, n_eval=256, ft_steps=40, ft_lr=1e-3, ft_eval=128),
    null=dict(cases=36, planted=6, draws=39, nets=48, heldout_nets=48, deep_nets=24, gpt2=6, gains=[0.0, 1.0, 3.0],
              cost_draws=99, cost_L=80),
    demo=True,
)
QUICK = dict(
    FULL, seeds=2, null_draws=19, n_probe=32, heal_seeds=2, random_draws=2, wide_random=2, toy_ks=[2],
    heal_steps=5,
    minilm=dict(seeds=2, n_probe=32, max_tokens=16, drops=[1], n_eval=32, n_sentences=160),
    lm=dict(FULL["lm"], layers=3, width=32, vocab=300, train_steps=20, n_probe=32, drops=[1], heal_steps=2,
            n_eval=32, ft_steps=2, ft_eval=32, n_sentences=400),
    null=dict(cases=6, planted=3, draws=9, nets=4, heldout_nets=2, deep_nets=2, gpt2=1, gains=[0.0, 3.0],
              cost_draws=9, cost_L=20),
    demo=False, quick=True,
)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _load_average() -> list:
    return [round(x, 2) for x in os.getloadavg()]


def run_stage(module: str, fn: str, args: tuple, out: str, settings: dict, name: str) -> dict:
    """Compute one stage in this process and write OUT/stages/<name>.json (temp file, then rename)."""
    import importlib

    import torch

    torch.set_num_threads(1)  # a shared 2-core machine: more threads only oversubscribe it
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    wall, cpu, load = time.time(), time.process_time(), _load_average()
    ctx = Context(Path(out), settings)
    data = getattr(importlib.import_module(module), fn)(ctx, *args)
    data["_timing"] = {"commit": _commit(), "wall_s": round(time.time() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1),
                       "load_average_start": load, "load_average_end": _load_average()}
    path = ctx.stage_path(name)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, default=_json_default))
    tmp.replace(path)
    return data["_timing"]


def _json_default(x):
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON: {type(x).__name__}")


class Context:
    """What a stage sees: the output directory, the settings, finished stages' results."""

    def __init__(self, out: Path, settings: dict):
        self.out, self.s = out, settings
        (out / "stages").mkdir(parents=True, exist_ok=True)

    def stage_path(self, name: str) -> Path:
        return self.out / "stages" / (name.replace(":", "__") + ".json")

    def result(self, name: str) -> dict:
        return json.loads(self.stage_path(name).read_text())

    def dir(self, *parts) -> Path:
        path = self.out.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


def stage_list(s: dict) -> list[tuple[str, str, str, tuple, list]]:
    """Every stage: (name, module, function, args, dependencies), in the order they are started."""
    import exp_minilm
    import exp_null
    import exp_toy
    import prune_experiments

    stages = exp_toy.stages(s) + exp_minilm.stages(s) + prune_experiments.stages(s) + exp_null.stages(s)
    if s.get("demo"):
        stages.append(("demo", "exp_null", "demo_stage", (), []))
    return stages


def run_all(out: Path, s: dict, jobs: int, only: list[str], redo: list[str]) -> list[str]:
    """Run the stages that are missing (or match ``redo``); returns the names that failed."""
    stages = stage_list(s)
    ctx = Context(out, s)
    pick = [n for n, *_ in stages if not only or any(fnmatch.fnmatch(n, p) for p in only)]
    for name in pick:
        if any(fnmatch.fnmatch(name, p) for p in redo) and ctx.stage_path(name).exists():
            ctx.stage_path(name).unlink()
    spec = {n: (m, f, a, d) for n, m, f, a, d in stages}
    needed, todo = set(), list(pick)
    while todo:  # a picked stage pulls in its dependencies
        n = todo.pop()
        if n not in needed:
            needed.add(n)
            todo += spec[n][3]
    done = {n for n in needed if ctx.stage_path(n).exists()}
    waiting = [n for n, *_ in stages if n in needed and n not in done]
    say(f"{len(needed)} stages, {len(done)} already done, {len(waiting)} to run on {jobs} processes → {out}")
    failed, running = [], {}
    pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
    with pool:
        while waiting or running:
            for n in list(waiting):
                if len(running) >= jobs:
                    break
                deps = spec[n][3]
                if any(d in failed for d in deps):
                    waiting.remove(n)
                    failed.append(n)
                    say(f"skip {n}: a dependency failed")
                elif all(d in done for d in deps):
                    waiting.remove(n)
                    m, f, a, _ = spec[n]
                    running[pool.submit(run_stage, m, f, a, str(out), s, n)] = (n, time.time())
                    say(f"start {n}")
            if not running:
                break
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                n, t0 = running.pop(fut)
                try:
                    timing = fut.result()
                    done.add(n)
                    say(f"done {n}: {timing['wall_s']:.0f} s wall, {timing['cpu_s']:.0f} CPU-s "
                        f"({len(done)}/{len(needed)})")
                except Exception:  # noqa: BLE001 - report, keep the other stages going
                    failed.append(n)
                    say(f"FAILED {n}:\n{traceback.format_exc()}")
    return failed


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def collect(out: Path, s: dict, command: str, started: float) -> dict:
    """OUT/results.json: every finished stage, the summary the tables show, and how it was made."""
    import exp_render

    ctx = Context(out, s)
    stages = {n: ctx.result(n) for n, *_ in stage_list(s) if ctx.stage_path(n).exists()}
    ends = {n: ctx.stage_path(n).stat().st_mtime for n in stages}  # a stage's file is written as it ends
    span = max(ends.values()) - min(ends[n] - d["_timing"]["wall_s"] for n, d in stages.items()) if stages else 0
    meta = {"command": command, "commit": _commit(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "load_average": _load_average(), "wall_s_this_invocation": round(time.time() - started),
            "stages_wall_span_s": round(span),
            "stage_wall_s": {n: d["_timing"]["wall_s"] for n, d in stages.items()},
            "stage_cpu_s": {n: d["_timing"]["cpu_s"] for n, d in stages.items()},
            "stage_commits": sorted({d["_timing"].get("commit", "unknown") for d in stages.values()}),
            "settings": s}
    results = {"meta": meta, "summary": exp_render.summarize(stages, s), "stages": stages}
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(results, default=_json_default))
    tmp.replace(out / "results.json")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/results")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--all", action="store_true", help="every stage at full size")
    mode.add_argument("--quick", action="store_true", help="tiny sizes, two seeds: checks the pipeline, not the numbers")
    ap.add_argument("--only", default="", help="comma-separated stage names or globs (and their dependencies)")
    ap.add_argument("--redo", default="", help="comma-separated stage names or globs to recompute")
    ap.add_argument("--jobs", type=int, default=2, help="stages run at once (default 2)")
    ap.add_argument("--docs", action="store_true",
                    help="write the tables into docs/*.md, the figures into docs/figures/, docs/results.json")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    s = QUICK if args.quick else FULL
    if args.jobs < 1:
        ap.error("--jobs: must be at least 1")
    names = {n for n, *_ in stage_list(s)}
    for pattern in filter(None, (args.only + "," + args.redo).split(",")):
        if not any(fnmatch.fnmatch(n, pattern) for n in names):
            ap.error(f"--only/--redo: no stage matches {pattern!r} (stages: {', '.join(sorted(names))})")
    started = time.time()
    failed = []
    if args.all or args.quick or args.only or args.redo:
        failed = run_all(out, s, args.jobs, [p for p in args.only.split(",") if p],
                         [p for p in args.redo.split(",") if p])
    if not (out / "stages").is_dir():
        ap.error(f"--out {out}: no stages computed yet (run with --all or --quick first)")
    command = "python jobs/experiments.py " + ("--quick" if args.quick else "--all") + f" --out {args.out}"
    results = collect(out, s, command, started)
    import exp_render

    exp_render.write_outputs(results, out)
    if args.docs:
        if args.quick:
            ap.error("--docs: the docs take the full run's numbers, not --quick's")
        exp_render.write_docs(results, out, REPO / "docs")
        say(f"wrote docs/*.md tables, docs/figures/, docs/results.json from {out / 'results.json'}")
    say(f"wrote {out / 'results.json'}, {out / 'tables.md'}, {out / 'figures'}"
        + (f"; FAILED stages: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
