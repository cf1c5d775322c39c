"""One run, stage by stage: activations → GW pairs + matrices → groups → report (DESIGN.md).

Wiring and bookkeeping only (no math, no model code). A stage is skipped when its output is in
``OUT/`` for the same *stage key* (a hash of the config sections it depends on, kept in
``OUT/run.json``) and redone, saying why, when they changed. Stages write atomically.

Damaged or missing pieces (docs/faults.md) are recomputed: a stage is skipped only when its output
is intact as well (the activation parts the manifest lists, readable matrices, every planned pair
in ``pairs/``), and a damaged piece found while a stage reads it (a part, a pair file) is
recomputed, then the stages go on. The activation manifests and ``pairs/_made_with.json`` record
the settings their data was made with, so that a lost ``run.json`` costs no recomputation of them.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import sys
import time

from gwray import __version__
from gwray.activations.store import ActivationStore
from gwray.config import RunConfig, load_config
from gwray.errors import GwrayDamagedError
from gwray.preflight import (check_inputs, check_layer_count, check_output_location,
                             check_run_owner, read_run_info, step_of)
from gwray.recovery import MADE_WITH, RECOVERIES, made_with, matrices_damage, read_json, recover
from gwray.result import RunResult, load_run, read_matrices
from gwray.storage import Location



class _Say:
    """Progress lines on stderr, stamped with the seconds since the run started."""

    def __init__(self, enabled: bool):
        self.enabled, self.t0 = enabled, time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[gwray {time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _quiet_libraries() -> None:
    """``-q``: no library chatter on stderr either (transformers' loading bar and warnings, Ray's
    and Ray Data's INFO/WARNING lines, the token-auth notice, Ray's Python warnings); a failure
    still raises and is reported. The environment reaches the processes an embedded Ray starts.
    Ray's C++ log is left alone: setting its level prints a line of its own, and its errors are
    kept for failures (a Ray Data actor pool, ``resources.extract_actors`` > 1, logs one about
    actor restarts, ray-project/ray#53727)."""
    import warnings

    from transformers.utils import logging as hf_logging

    os.environ.update(HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error",
                      RAY_DATA_LOG_LEVEL="ERROR")
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    for name in ("ray", "ray.data"):  # ray.data does not propagate to "ray"
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"ray\.")


def _ensure_ray(cfg: RunConfig, say: _Say) -> bool:
    """Make Ray usable; True when this call started it (the run then shuts it down). An
    initialised Ray (a Ray job, a test) is used as is; ``RAY_ADDRESS`` attaches to that cluster;
    else an embedded local Ray gets this machine's CPUs (at least what ``resources`` asks)."""
    import ray

    if ray.is_initialized():
        return False
    level = logging.INFO if say.enabled else logging.ERROR
    if os.environ.get("RAY_ADDRESS"):
        say(f"attaching to the Ray cluster at {os.environ['RAY_ADDRESS']}")
        ray.init(log_to_driver=False, logging_level=level)
    else:
        cpus = max(os.cpu_count() or 1, math.ceil(cfg.resources.workers * cfg.resources.cpus_per_worker))
        say(f"starting an embedded local Ray ({cpus} CPUs)")
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=1024**3, logging_level=level)
    return True


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _why(prev: dict | None, key: dict, what: dict) -> str:
    """Why a stage is redone: the parts of its key (named by ``what``) that differ from ``prev``,
    the key it last finished with; its output missing when none differs."""
    if not prev:
        return "not run before"
    changed = [what[k] for k in key if prev.get(k) != key[k]]
    return " and ".join(changed) + " changed" if changed else "its output is missing"


class _Run:
    """One run's state: config, location, stage keys (run.json), progress and Ray."""

    def __init__(self, cfg: RunConfig, loc: Location, checkpoints, probe, say: _Say):
        self.cfg, self.loc, self.ckpts, self.say, self.n_samples = cfg, loc, checkpoints, say, len(probe)
        self.ray_started = False
        info, problem = read_run_info(loc)
        if info is None and problem != "missing" or info is None and loc.child("pairs").exists():
            say(f"run.json is {problem}: rebuilding it, each stage checked against its output")
        self.prev = (info or {}).get("stages", {})
        # Old keys stay until their stage ends again: a run that died mid-stage redoes it whole.
        self.info = {"gwray_version": __version__, "name": cfg.name,
                     "config": cfg.model_dump(mode="json"), "probe_hash": probe.hash,
                     "checkpoints": [{"id": c, "path": p, "step": step_of(c)} for c, p in checkpoints],
                     "layers": {}, "stages": dict(self.prev)}
        self.status: dict[str, str] = {}

    def ray(self) -> None:
        self.ray_started |= _ensure_ray(self.cfg, self.say)

    def done(self, stage: str, key, ran: bool) -> None:
        """Record a finished stage in run.json (atomically) so that a rerun can skip it."""
        self.info["stages"][stage] = key
        # a stage redone after a recovery (run()) keeps the "ran" of its first pass
        self.status[stage] = "ran" if ran or self.status.get(stage) == "ran" else "skipped"
        self.loc.child("run.json").write_json(self.info)
        if not ran:
            self.say(f"{stage}: up to date, skipped")

    def activations(self) -> ActivationStore:
        from gwray.activations.extract import extract, layer_names  # Ray Data / in process

        store = ActivationStore(self.loc)
        model = self.cfg.model.model_dump(mode="json", exclude={"checkpoints", "shards"})
        keys, old, ran = {}, self.prev.get("activations") or {}, False
        # Ray Data where it adds workers (or on a cluster); in process: same output, no start-up
        use_ray = (max(self.cfg.model.shards, self.cfg.resources.extract_actors) > 1
                   or bool(os.environ.get("RAY_ADDRESS")))
        for ckpt, path in self.ckpts:
            keys[ckpt] = _key(model, path, self.cfg.hash("probe", "layers"))
            made = made_with(store, ckpt) or old.get(ckpt)  # the manifest's key outlives run.json
            if made == keys[ckpt] and store.is_complete(ckpt):
                why = store.damage(ckpt)
                if why is None:
                    continue
            else:
                why = ("model/probe/layers config changed" if made not in (None, keys[ckpt])
                       else "no complete activations yet")
            if self.cfg.layers.select != "all":  # "all" keeps the modules a forward pass calls
                check_layer_count(self.cfg, ckpt, layer_names(self.cfg, path))
            self.say(f"activations of {ckpt}: {why}, extracting {self.n_samples} probe samples")
            store.remove(ckpt)
            if use_ray:
                self.ray()
            try:
                extract(self.cfg, self.loc, ckpt, checkpoint_path=path, use_ray=use_ray,
                        progress=self.say.enabled, stage_key=keys[ckpt])
            finally:
                if not store.is_complete(ckpt):  # never leave a half checkpoint behind
                    store.remove(ckpt)
            ran = True
        self.info["layers"] = {c: store.layer_names(c) for c, _ in self.ckpts}
        for ckpt, names in self.info["layers"].items():  # before any pair is solved
            check_layer_count(self.cfg, ckpt, names)
        self.done("activations", keys, ran)
        return store

    def pairs(self, store) -> None:
        from gwray.scheduler import plan_for, run_pairs
        from gwray.scheduler.compaction import PairSink
        from gwray.scheduler.assembly import assemble_matrices
        from gwray.scheduler.results import done_pairs

        acts = self.info["stages"]["activations"]  # gw.baselines: no GW, the communities stage
        solve = _key(self.cfg.costs.model_dump(), self.cfg.gw.model_dump(exclude={"baselines"}))
        ids = [c for c, _ in self.ckpts]
        key = {"solve": solve, "activations": acts, "compare": self.cfg.hash("compare"), "order": ids}
        prev, pairs = self.prev.get("pairs") or {}, self.loc.child("pairs")
        why = _why(prev, key, {"solve": "costs/gw config", "activations": "activations",
                               "compare": "compare.cross", "order": "checkpoint order"})
        # What the pairs on disk were solved with (run.json's record for runs of older gwray).
        made = read_json(pairs.child(MADE_WITH)) or ({k: prev[k] for k in ("solve", "activations")}
                                                      if "solve" in prev else None)
        kept = made is not None and made["solve"] == solve and all(
            made["activations"].get(c, k) == k for c, k in acts.items())
        cleared = bool(pairs.files()) and not kept
        if cleared:
            self.say(f"pairs: {why}, solving every pair again"
                     + ("" if made else " (no record of the settings the pairs on disk were solved with)"))
            pairs.remove()
        # This run's ids in training order: by name, checkpoint-1000 would pair with -200, and
        # checkpoints an earlier config left in OUT would be planned too.
        plan = plan_for(store, self.cfg.compare.cross, ids)
        done, files = done_pairs(self.loc, plan)  # a damaged file: GwrayDamagedError, recovered in run()
        if done.all():  # nothing to solve: the matrices are checked, or assembled without Ray
            damage = matrices_damage(self.loc, self.info["layers"], plan)
            if prev == key and damage is None:
                return self.done("pairs", key, False)
            self.say(f"pairs: {damage if prev == key else why}, every pair is in pairs/: assembling the matrices")
            PairSink(self.loc, files, self.cfg.resources.pair_file_rows).close()  # parts a kill left
            assemble_matrices(self.loc, plan)
            return self.done("pairs", key, True)
        if prev == key:
            why = f"{int((~done).sum())} of {len(plan)} pairs missing from pairs/"
        if done.any():
            self.say(f"pairs: resuming ({why}), the pairs already solved are kept")
        elif not cleared:
            self.say(f"pairs: {why}")
        recorded = {**made["activations"], **acts} if kept else acts  # other checkpoints' pairs stay valid
        pairs.child(MADE_WITH).write_json({"solve": solve, "activations": recorded})
        self.ray()
        self.say(f"pairs: GW of every layer pair on {self.cfg.resources.workers} workers")
        run_pairs(self.cfg, store, self.loc, progress=self.say.enabled, checkpoints=ids, records=False,
                  on_disk=(done, files))
        self.done("pairs", key, True)

    def communities(self, store) -> None:
        key = {"pairs": self.info["stages"]["pairs"], "graph": self.cfg.hash("graph", "stability"),
               "baselines": self.cfg.gw.baselines}
        intact = isinstance(read_json(self.loc.child("communities.json")), dict)
        if self.prev.get("communities") == key and intact:
            return self.done("communities", key, False)
        why = _why(self.prev.get("communities"), key, {"pairs": "GW matrices", "graph": "graph/stability config",
                                                        "baselines": "gw.baselines"})
        if self.prev.get("communities") == key and self.loc.child("communities.json").exists():
            why = "communities.json is damaged"
        self.say(f"communities: {why}, {self.cfg.graph.method} on {len(self.ckpts)} checkpoint(s)")
        gw, _, _ = read_matrices(self.loc, self.info["layers"])
        self.loc.child("communities.json").write_json(
            _find_groups(self.cfg, gw, self.info["layers"], store, self.say))
        self.done("communities", key, True)

    def report(self) -> Location:
        from gwray.report import build_report

        key, html = {"communities": self.info["stages"]["communities"]}, self.loc.child("report.html")
        stale = self.prev.get("report") != key or not html.exists()
        if stale:
            why = _why(self.prev.get("report"), key, {"communities": "groups"})
            self.say(f"report: {why}, heatmap, groups" + (", timeline" if len(self.ckpts) > 1 else ""))
            build_report(self.loc.path if self.loc.is_local else self.loc)
        self.done("report", key, stale)
        return html


def _find_groups(cfg: RunConfig, gw: dict, layers: dict, store, say: _Say) -> dict:
    """communities.json: groups per checkpoint and method (each tested against depth
    drift, k = 1 when not significant, with the jump the test would have detected), stability with boundary confidences and GW resampling
    intervals, baselines (CKA, RSA, ... as (L, L) lists, on the same activations), and how group
    boundaries move between checkpoints."""
    from tqdm.auto import tqdm

    from gwray.graph.communities import find_subnetworks
    from gwray.graph.power import POWER_DRAWS, detectable_jump
    from gwray.graph.stability import AUTO_BUDGET, resamples_for, stability
    from gwray.gw.baselines import baseline_matrices

    method, costs, g = cfg.graph.method, dict(metric=cfg.costs.metric, normalize=cfg.costs.normalize), cfg.graph
    main = "contiguous" if method == "all" else method  # whose boundaries the summary follows
    out: dict = {"method": main, "checkpoints": {}, "stability": {}, "baselines": {}}
    # a sweep's 100 checkpoints of 80 layers take minutes (the test of each against depth drift)
    for ckpt, D in tqdm(gw.items(), desc="groups", unit="checkpoint", file=sys.stderr,
                        disable=not say.enabled or len(gw) < 2):
        n_rows = len(store.sample_ids(ckpt))
        found = find_subnetworks(D, method=method, k=g.k, names=layers[ckpt], alpha=g.alpha,
                                 n_null=g.null_draws, n_samples=n_rows)
        resamples = resamples_for(cfg.stability.resamples, len(D), n_rows, cfg.stability.fraction)
        if resamples or cfg.gw.baselines:
            arrays = [store.read_layer(ckpt, n) for n in layers[ckpt]]
        if cfg.gw.baselines:
            out["baselines"][ckpt] = {kind: m.tolist() for kind, m in baseline_matrices(
                arrays, cfg.gw.baselines, **costs).items()}
        if resamples:
            say(f"communities: stability of {ckpt} on {resamples} probe resamples "
                f"({len(D) * (len(D) - 1) // 2} GW pairs each at n={round(cfg.stability.fraction * n_rows)}, "
                f"in process{', stability.resamples: auto' if cfg.stability.resamples == 'auto' else ''})")
            # resamples give the method's partition untested (the test ran once, on all samples)
            find = functools.partial(find_subnetworks, method=main, k=g.k, names=layers[ckpt], n_null=0)
            gw_kwargs = dict(costs, starts=tuple(cfg.gw.starts), max_iter=cfg.gw.max_iter, tol=cfg.gw.tol)
            chosen = found[main] if method == "all" else found
            st = stability(arrays, find, cfg.stability.fraction, resamples, cfg.stability.seed,
                           gw_kwargs, reference=chosen.candidate or chosen)
            for res in (chosen, chosen.candidate):
                if res is not None:
                    res.boundary_confidence = st.boundary_confidence(res.labels)
            out["stability"][ckpt] = st.to_dict()
        elif cfg.stability.resamples == "auto":
            say(f"communities: no stability resamples for {ckpt} (stability.resamples: auto is off "
                f"above {AUTO_BUDGET:,} pairs × samples²; set it to an integer to compute them)")
        out["checkpoints"][ckpt] = (found.to_dict() if method == "all" else
                                    {"methods": {method: found.to_dict()}, "agreement": {}})
        entry = out["checkpoints"][ckpt]["methods"][main]
        if entry["k"] == 1 and entry["candidate"] and (entry["test"] or {}).get("p_value") is not None:
            # what the test could have seen: the jump across the candidate's boundaries it detects
            entry["power"] = detectable_jump(D, entry["candidate"]["labels"], method=main, alpha=g.alpha,
                                             n_null=min(g.null_draws, POWER_DRAWS))
    # Boundaries: the first layer of each group after the first, in depth order; movement: which
    # boundaries appear and disappear from one checkpoint to the next.
    bounds = {}
    for ckpt, found in out["checkpoints"].items():
        group_of = {n: g for g, names in enumerate(found["methods"][main]["groups"]) for n in names}
        bounds[ckpt] = [b for a, b in zip(layers[ckpt], layers[ckpt][1:]) if group_of[a] != group_of[b]]
    out["boundaries"], ids = bounds, list(bounds)
    out["movement"] = [{"from": a, "to": b, "added": [n for n in bounds[b] if n not in bounds[a]],
                        "removed": [n for n in bounds[a] if n not in bounds[b]]}
                       for a, b in zip(ids, ids[1:])]
    return out


def run(config, out=None, overrides=None, *, progress: bool = True,
        min_checkpoints: int = 1, force: bool = False) -> RunResult:
    """Run the whole pipeline for one config, reusing every stage already done for it.

    Raises GwrayInputError on a bad config, an output location that is a file or not writable,
    a run directory holding another model's or probe's run (without ``force``), a missing model,
    checkpoint or probe, fewer than 2 layers or more ``graph.k`` groups than layers, or bad data
    found by a stage; nothing half written is left, and a failed first run leaves no directory.

    Parameters
    ----------
    config : str, Path, dict or RunConfig
        A YAML file, a dict of config keys or a validated config.
    out : str or Path, optional
        Run directory or URI (default: the config's ``output``, else ``runs/<name>``).
    overrides : list of str or dict, optional
        ``["probe.n_samples=256", ...]`` or a nested dict, applied over ``config``.
    progress : bool
        Progress lines on stderr.
    min_checkpoints : int
        Fewer checkpoints is an input error (``gwray compare`` asks for 2).
    force : bool
        Replace (delete) a run of another model or probe found in the run directory.
    """
    cfg = load_config(config, overrides)
    loc = Location.parse(out or cfg.output or os.path.join("runs", cfg.name))
    check_output_location(loc)
    if not progress:
        _quiet_libraries()
    checkpoints, probe = check_inputs(cfg, min_checkpoints)
    replaced, say = check_run_owner(loc, cfg, checkpoints, force), _Say(progress)
    if replaced:
        say(f"--force: deleting {loc}, which held the run of {replaced}")
        loc.remove()
    say(f"run {cfg.name!r} → {loc}")
    fresh, state = not loc.exists(), _Run(cfg, loc, checkpoints, probe, say)
    try:
        for attempt in range(RECOVERIES + 1):
            try:
                store = state.activations()
                state.pairs(store)
                state.communities(store)
                result = load_run(loc)  # reads every pair record: damage there is recovered too
                report = state.report()
                break
            except GwrayDamagedError as exc:  # found while reading: recompute it, then go on
                if attempt == RECOVERIES or not recover(loc, exc, say):
                    raise
    except BaseException:
        if fresh and loc.exists() and not loc.files(recursive=True):
            loc.remove()  # a first run that failed before any stage finished leaves nothing
        raise
    finally:
        if state.ray_started:
            sys.modules["ray"].shutdown()
    say("done: " + ", ".join(f"{s} {v}" for s, v in state.status.items()))
    result.stages, result.report = dict(state.status), str(report)
    return result
