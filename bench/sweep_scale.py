"""Benchmark: the orchestration of a K checkpoints × L layers sweep at tiny n (issue 25).

Makes K checkpoints of a small random residual MLP (``model.source: toy``, depth L − 1, so L
layers; each checkpoint a small random step away from the previous one, as in training) and an
n-row probe, then runs the real ``gwray compare`` (``compare.cross: consecutive``: K L (L − 1) / 2
within pairs plus (K − 1) L² cross pairs) as a subprocess on the embedded Ray, watched from
outside (its stderr, /proc). At tiny n the solver is cheap, so what is measured is everything
around it (at tiny n the cost matrices are small enough for Ray to pass inline, so the object
store stays nearly empty; ``--n 128`` puts them in it). ``gw.starts`` is pinned to
:data:`STARTS` (``--starts``): the default portfolio's entropic and random starts make a pair at
n = 16 ~10× costlier (13 ms, not 1.3 ms), solver time the figures subtract but ~1.7 hours more
wall at 100 × 80 on 2 workers. Prints:

1. the pairs stage: wall, solver-seconds (the ``seconds`` of the pair records), wall beyond
   solver-seconds / workers a pair (target ≤ 1 ms), the driver's CPU-seconds a pair (it never
   solves), driver peak RSS (VmHWM; target ≤ 2 GiB), object-store peak (Ray's plasma use,
   sampled every 5 s in the driver), files in ``pairs/`` (target ≤ ⌊pairs / 5000⌋ + 1), every pair exactly once;
2. a no-op rerun of the finished sweep (target ≤ 30 s), the assembly alone, the report's size
   (target ≤ 10 MiB) and the milliseconds until its slider moves the matrix in headless Chromium
   (target ≤ 2,000; Debian's ``chromium``); what ``gwray plan`` said about the storage;
3. the driver killed at half the pairs (SIGKILL, by the compaction
   module's test hook), its resume killed between writing a compacted file and removing the parts
   it replaced, and a last run: when the first resume was planned and solving again (target
   ≤ 30 s), then every pair exactly once and the uninterrupted run's matrices;
4. the pairs stage on a Ray cluster of N = ``--nodes`` nodes simulated on this machine
   (:class:`ray.cluster_utils.Cluster`, ``workers / N`` CPUs each), with ``pairs/`` uncompacted
   (``resources.pair_file_rows: 0``): the same matrices as the compacted single-node run.

Every run finds its groups without the null model (``graph.null_draws: 0``: its test takes
~9 s a checkpoint at 32 layers here, a quarter of an hour for 100 checkpoints, and is not what
is measured).

Usage: python bench/sweep_scale.py [--checkpoints 100] [--layers 80] [--n 16] [--workers 2]
                                   [--batch-pairs 8] [--starts identity,mixed,product] [--nodes 2]
                                   [--phases 1234] [--out DIR]
                                   [--json FILE]
       python bench/sweep_scale.py --small     (6 × 12: what tests/test_sweep_scale.py runs)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from watched_compare import killed_run, pairs_stage, progress_after, run_compare  # noqa: E402


STARTS = ["identity", "mixed", "product"]
"""The bench's ``gw.starts``: the portfolio under which the issue's baseline was measured."""


def make_sweep(root: Path, checkpoints: int, layers: int, n: int, workers: int, batch_pairs: int,
               starts: list[str] = STARTS, seed: int = 0) -> Path:
    """K toy checkpoints (``root/ckpts/step-*``), an n-row probe and ``root/sweep.yaml``.

    Checkpoint k's weights are checkpoint k − 1's plus Gaussian noise of 2 % of each tensor's
    scale: a random walk, so consecutive checkpoints are alike (as in training)."""
    import torch

    from gwray.models.toy import build_model, default_meta, save_toy

    meta = default_meta("digits", depth=layers - 1, width=16, hidden=16, seed=seed, steps=checkpoints)
    model, gen = build_model(meta), torch.Generator().manual_seed(seed)
    ckpts = root / "ckpts"
    for k in range(checkpoints):
        if k:
            with torch.no_grad():
                for p in model.parameters():
                    p += 0.02 * (p.std() if p.numel() > 1 else 1.0) * torch.randn(p.shape, generator=gen)
        if not (ckpts / f"step-{k:06d}").exists():
            save_toy(model, {**meta, "step": k}, ckpts / f"step-{k:06d}")
    np.save(root / "probe.npy", np.random.default_rng(seed).standard_normal((n, 64)).astype(np.float32))
    config = {
        "name": f"sweep-{checkpoints}x{layers}",
        "model": {"source": "toy", "checkpoints": str(ckpts / "step-*")},
        "probe": {"source": str(root / "probe.npy"), "n_samples": n},
        "layers": {"select": "blocks", "pooling": "flatten"},
        "compare": {"cross": "consecutive"},
        "gw": {"starts": list(starts)},
        "resources": {"workers": workers, "cpus_per_worker": 1, "batch_pairs": batch_pairs},
        # the orchestration is measured: no in-process stability resamples of 3,160 pairs each
        "stability": {"resamples": 0},
        "graph": {"null_draws": 0},
    }
    (root / "sweep.yaml").write_text(json.dumps(config, indent=1))  # JSON is YAML
    return root / "sweep.yaml"


def on_disk(out: Path, config: Path, matrices: bool = True) -> dict:
    """Every planned pair on disk exactly once? The matrices, read back (when ``matrices``)."""
    from gwray.activations.store import ActivationStore
    from gwray.config import load_config
    from gwray.result import read_matrices
    from gwray.scheduler import plan_for
    from gwray.scheduler.results import KEY_COLUMNS, key_positions, pairs_dir
    from gwray.storage import Location

    cfg = load_config(str(config))
    plan = plan_for(ActivationStore(out), cfg.compare.cross)
    counts = np.zeros(len(plan), dtype=np.int64)
    files = pairs_dir(out).files()
    for loc in files:
        pos = key_positions(plan, loc.read_table(columns=KEY_COLUMNS))
        np.add.at(counts, pos[pos >= 0], 1)
    gw, _, cross = read_matrices(Location.parse(str(out)), plan.layers) if matrices else ({}, {}, {})
    return {"pairs": len(plan), "missing": int((counts == 0).sum()), "twice": int((counts > 1).sum()),
            "files": len(files), "gw": gw, "cross": cross, "plan": plan}


def same_matrices(a: dict, b: dict) -> bool:
    return (a["gw"].keys() == b["gw"].keys() and a["cross"].keys() == b["cross"].keys()
            and all(np.array_equal(a["gw"][k], b["gw"][k]) for k in a["gw"])
            and all(np.array_equal(a["cross"][k], b["cross"][k], equal_nan=True) for k in a["cross"]))


PROBE_JS = """<script>(function(){const s=document.getElementById('sweep-slider'),
m=document.getElementById('sweep-matrix');const before=m.dataset.checkpoint;s.value='0';
s.dispatchEvent(new Event('input'));document.title='interactive '+(m.dataset.checkpoint!==before)
+' '+performance.now().toFixed(0);})();</script>"""


def chromium_interactive(report: Path) -> tuple[float | None, str]:
    """Milliseconds from navigation start until the report's slider has moved the matrix to the
    first checkpoint (a copy of the page with a probe script after the report's own scripts),
    in headless Chromium; None without Chromium."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return None, "chromium not installed"
    with tempfile.TemporaryDirectory(prefix="gwray-chromium-") as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(report.read_text().replace("</body>", PROBE_JS + "</body>"))
        dom = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              "--disable-background-networking", "--disable-component-update",
                              "--disable-sync", f"--user-data-dir={tmp}/profile", "--window-size=1200,1600",
                              "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=300).stdout
    m = re.search(r"<title>interactive (true|false) (\d+)</title>", dom)
    if not m:
        return None, "the probe script did not run"
    return (float(m[2]) if m[1] == "true" else None), "slider moved" if m[1] == "true" else "slider did nothing"


def copy_inputs(src: Path, dst: Path) -> None:
    """A run directory with ``src``'s activations and run.json only: its pairs stage starts afresh."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for name in ("activations", "activation_manifests"):
        shutil.copytree(src / name, dst / name)
    shutil.copy(src / "run.json", dst / "run.json")


def start_cluster(nodes: int, workers: int):
    """A Ray cluster of ``nodes`` nodes on this machine (the head one of them), sharing
    ``workers`` CPUs: each GW worker gets a CPU on some node, costs travel between the nodes'
    object stores."""
    from ray.cluster_utils import Cluster

    cpus = max(1, workers // nodes)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": cpus, "object_store_memory": 256 * 1024**2, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus, object_store_memory=256 * 1024**2)
    cluster.wait_for_nodes()
    return cluster


def _mib(x: float) -> str:
    return f"{x / 2**20:.1f} MiB" if x >= 2**20 else f"{x / 1024:.1f} KiB"


def phase_full(config: Path, root: Path) -> dict:
    """1. The whole sweep, uninterrupted."""
    full = run_compare(config, root / "full")
    st = pairs_stage(full)
    ref = on_disk(root / "full", config)
    f = {**st, "beyond_ms": (st["wall"] - st["solver"] / st["workers"]) / st["pairs"] * 1e3,
         "driver_cpu_ms": st["driver_cpu"] / st["pairs"] * 1e3, "driver_peak_rss": full.peak_rss,
         "store_peak": full.store_peak, "total_wall": full.lines[-1][0], "stages": full.stages(),
         "missing": ref["missing"], "twice": ref["twice"], "file_bound": st["pairs"] // 5000 + 1}
    print(f"\n1. gwray compare, {st['pairs']} pairs: pairs stage {st['wall']:.1f} s wall, "
          f"{st['solver']:.1f} solver-s on {st['workers']} workers")
    print(f"   wall beyond solver-s / workers: {f['beyond_ms']:.3f} ms a pair (target <= 1)")
    print(f"   driver: {f['driver_cpu_ms']:.3f} CPU-ms a pair, peak RSS {_mib(st['driver_peak_pairs'])} "
          f"by the end of the pairs stage, {_mib(f['driver_peak_rss'])} in all (target <= 2048 MiB); "
          f"object store peak {_mib(f['store_peak'])}")
    print(f"   pairs/: {st['files']} files (target <= {f['file_bound']}); missing {f['missing']}, "
          f"twice {f['twice']}; whole command {f['total_wall']:.1f} s (stages, s: {f['stages']})",
          flush=True)
    return f


def phase_rerun(config: Path, root: Path, ref: dict) -> dict:
    """2. A no-op rerun, the assembly alone, the report, what `gwray plan` said."""
    from gwray.config import load_config
    from gwray.scheduler.assembly import assemble_matrices
    from gwray.sizing import size_run

    done, fig = root / "full", {}
    t = time.perf_counter()
    run_compare(config, done)
    fig["noop_s"] = time.perf_counter() - t
    t = time.perf_counter()
    assemble_matrices(done, ref["plan"])
    fig["assembly_s"] = time.perf_counter() - t
    fig["report_bytes"] = (done / "report.html").stat().st_size
    fig["interactive_ms"], fig["interactive"] = chromium_interactive(done / "report.html")
    print(f"\n2. no-op rerun {fig['noop_s']:.1f} s (target <= 30); assembly {fig['assembly_s']:.1f} s; "
          f"report {_mib(fig['report_bytes'])} (target <= 10 MiB), interactive in headless Chromium "
          f"after {fig['interactive_ms']} ms (target <= 2000; {fig['interactive']})")
    size = size_run(load_config(str(config)), calibrate_here=False)
    matrices = [done / "gw_matrix.parquet", done / "gw_matrix.npy", *(done / "gw").glob("*.npy"),
                *(done / "cross").glob("*")]
    fig["plan"] = p = {"pairs_bytes": size.pairs_bytes, "pair_files": size.pair_files,
                       "matrix_bytes": size.matrix_bytes,
                       "real_pairs_bytes": sum(f.stat().st_size for f in (done / "pairs").glob("*.parquet")),
                       "real_pair_files": len(list((done / "pairs").glob("*.parquet"))),
                       "real_matrix_bytes": sum(f.stat().st_size for f in matrices if f.exists())}
    print(f"   gwray plan said: pair records {_mib(p['pairs_bytes'])} in {p['pair_files']} files, GW "
          f"matrices {_mib(p['matrix_bytes'])}; the run wrote {_mib(p['real_pairs_bytes'])} in "
          f"{p['real_pair_files']} files, {_mib(p['real_matrix_bytes'])}", flush=True)
    return fig


def phase_kill(config: Path, root: Path, ref: dict) -> dict:
    """3. Killed at half the pairs, its resume killed mid-compaction, resumed to the end."""
    from gwray.scheduler.results import COMPACTED_PREFIX, pairs_dir, replaced_by

    out = root / "killed"
    copy_inputs(root / "full", out)
    killed_run(config, out, f"pairs:{ref['pairs'] // 2}")
    before = on_disk(out, config, matrices=False)
    written = before["pairs"] - before["missing"]
    second = killed_run(config, out, "compaction")
    pending = sum((out / "pairs" / name).exists() for loc in pairs_dir(out).files()
                  if loc.name.startswith(COMPACTED_PREFIX) for name in replaced_by(loc))
    planned = second.first(r"GW pairs:.*?(\d+)/(\d+) \[")
    final = run_compare(config, out)
    after = on_disk(out, config)
    k = {"at": written, "resume_solving_s": progress_after(second, written), "replaced_left": pending,
         "resume_planned_s": planned[0] if planned else None, "missing": after["missing"],
         "twice": after["twice"], "files": after["files"], "same": same_matrices(ref, after),
         "last_stage": pairs_stage(final)}
    print(f"\n3. driver killed at {written} of {ref['pairs']} pairs, its resume killed between a "
          f"compacted write and the parts' removal ({pending} replaced files left beside it), "
          f"resumed again: the first resume planned after {k['resume_planned_s']:.1f} s and solved "
          f"again after {k['resume_solving_s']:.1f} s (target <= 30); at the end missing "
          f"{k['missing']}, twice {k['twice']}, {k['files']} files, matrices equal the "
          f"uninterrupted run's: {k['same']}", flush=True)
    return k


def phase_cluster(config: Path, root: Path, ref: dict, nodes: int, workers: int) -> dict:
    """4. The pairs stage on a multi-node Ray cluster simulated on this machine, uncompacted."""
    import ray

    cluster = start_cluster(nodes, workers)
    try:
        out = root / "cluster"
        copy_inputs(root / "full", out)
        d = run_compare(config, out, address=cluster.address, sets=["resources.pair_file_rows=0"])
    finally:
        ray.shutdown()
        cluster.shutdown()
    cst, got = pairs_stage(d), on_disk(out, config)
    c = {**cst, "nodes": nodes, "beyond_ms": (cst["wall"] - cst["solver"] / cst["workers"]) / cst["pairs"] * 1e3,
         "driver_peak_rss": d.peak_rss, "store_peak": d.store_peak, "missing": got["missing"],
         "twice": got["twice"], "same": same_matrices(ref, got)}
    print(f"\n4. on a {nodes}-node Ray cluster ({workers} worker CPUs), pairs/ not compacted: pairs "
          f"stage {cst['wall']:.1f} s wall, {cst['solver']:.1f} solver-s, beyond {c['beyond_ms']:.3f} "
          f"ms a pair; driver peak RSS {_mib(c['driver_peak_rss'])}, object stores' peak "
          f"{_mib(c['store_peak'])}; {cst['files']} files; missing {c['missing']}, twice "
          f"{c['twice']}; matrices equal the compacted single-node run's: {c['same']}", flush=True)
    return c


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, default=100)
    ap.add_argument("--layers", type=int, default=80)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-pairs", type=int, default=8, help="resources.batch_pairs (its default)")
    ap.add_argument("--starts", default=",".join(STARTS),
                    help="gw.starts, comma-separated (pinned: what is measured is the orchestration)")
    ap.add_argument("--nodes", type=int, default=2, help="nodes of the simulated cluster")
    ap.add_argument("--phases", default="1234",
                    help="which of 1-4 to run (2-4 without 1 reuse the finished run in --out)")
    ap.add_argument("--small", action="store_true", help="6 checkpoints x 12 layers (the test)")
    ap.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.small:
        args.checkpoints, args.layers = 6, 12
    root = Path(args.out or tempfile.mkdtemp(prefix="gwray-sweep-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    starts = args.starts.split(",")
    config = make_sweep(root, args.checkpoints, args.layers, args.n, args.workers, args.batch_pairs,
                        starts)
    load = os.getloadavg()
    print(f"sweep: {args.checkpoints} checkpoints x {args.layers} layers, n = {args.n}, "
          f"{args.workers} workers, batch_pairs = {args.batch_pairs}, gw.starts pinned to "
          f"{', '.join(starts)}; {os.cpu_count()} CPUs, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start", flush=True)
    fig: dict = {"checkpoints": args.checkpoints, "layers": args.layers, "n": args.n,
                 "workers": args.workers, "batch_pairs": args.batch_pairs, "starts": starts,
                 "load_start": load}
    if "1" in args.phases:
        fig["full"] = phase_full(config, root)
    ref = on_disk(root / "full", config)  # the uninterrupted run's matrices
    if "2" in args.phases:
        fig.update(phase_rerun(config, root, ref))
    if "3" in args.phases:
        fig["kill"] = phase_kill(config, root, ref)
    if "4" in args.phases:
        fig["cluster"] = phase_cluster(config, root, ref, args.nodes, args.workers)
    fig["load_end"] = os.getloadavg()
    print(f"\nload average at the end {fig['load_end'][0]:.2f} {fig['load_end'][1]:.2f} "
          f"{fig['load_end'][2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1, default=float))
    if not args.out:
        shutil.rmtree(root, ignore_errors=True)
    return fig


if __name__ == "__main__":
    main()
