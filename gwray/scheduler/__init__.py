"""Which GW pairs to solve, the Ray workers that solve them, and the pair-results dataset.

``run_pairs`` is the stage entry point: plan the pairs of the checkpoints in the activation
dataset, skip those already in ``OUT/pairs/`` (read from its key columns), fan the rest out over
GW worker actors batch by batch as the plan is walked, write the finished records to
``OUT/pairs/`` (a part file every few seconds, compacted into files of a few thousand pairs:
:mod:`gwray.scheduler.compaction`), then assemble ``gw_matrix.parquet`` / ``.npy``. Killing the
driver and running the same command again resumes; Ray must already be initialised.
"""
from __future__ import annotations

import collections
import logging
import sys
import time

import numpy as np
import pyarrow as pa

from gwray.scheduler.assembly import assemble_matrices
from gwray.scheduler.compaction import FLUSH_SECONDS, PairSink
from gwray.scheduler.batches import plan_batches
from gwray.scheduler.plan import Plan, PairTask, plan_pairs, warm_sources
from gwray.scheduler.results import (done_pairs, key_positions, load_records,
                                     load_states, pairs_dir, RECORD_SCHEMA, warm_state)
from gwray.storage import Location

__all__ = ["run_pairs", "plan_for", "plan_pairs", "assemble_matrices", "PairTask", "Plan"]

log = logging.getLogger(__name__)


def _checkpoints(store) -> list[str]:
    complete = getattr(store, "is_complete", None)
    return [c for c in store.checkpoints() if complete is None or complete(c)]


def plan_for(store, cross: str, checkpoints: list[str] | None = None) -> Plan:
    """The plan of a run: its checkpoints in the activation dataset and their layers.

    Parameters
    ----------
    store : ActivationStore
        Anything with ``checkpoints()``, ``layer_names(checkpoint)`` and optionally
        ``is_complete(checkpoint)``.
    cross : str
        ``compare.cross``.
    checkpoints : list of str, optional
        The run's checkpoint ids in training order (``final`` means the last; ``consecutive``
        pairs neighbours in this order). Checkpoints on disk but not listed are not planned.
        Default: every complete checkpoint of ``store``, in ``store.checkpoints()`` order.

    Raises
    ------
    GwrayInputError
        A listed checkpoint without complete activations (raised by ``store.layer_names``), or
        a bad ``cross`` (:func:`plan_pairs`).
    """
    ids = _checkpoints(store) if checkpoints is None else checkpoints
    return plan_pairs({c: list(store.layer_names(c)) for c in ids}, cross)


class _Warm:
    """The driver's side of warm starts: which pair's solver state (plan, duals, starts' ends:
    :class:`~gwray.gw.warm.WarmState`) starts which pair, the states kept until every pair they
    start is handed out, and which batches must wait for a state still being solved."""

    def __init__(self, plan: Plan, todo: np.ndarray, ids: dict, out: Location):
        sizes = {c: len(v) for c, v in ids.items()}
        same = {(a, b) for a in ids for b in ids  # permutations carry over between these
                if sizes[a] == sizes[b] and np.array_equal(ids[a], ids[b])}
        self.sources = {k: src for k, src in warm_sources(plan).items()
                        if {(k[0], k[2]), (src[0][0], k[0]), (src[0][2], k[0])} <= same}
        todo_keys = {t.key for t, left in zip(plan, todo) if left}
        self.sources = {k: v for k, v in self.sources.items() if k in todo_keys}
        self.users: dict = {}  # source key → how many pairs not yet handed out start from it
        for src, _ in self.sources.values():
            self.users[src] = self.users.get(src, 0) + 1
        self.waiting = {src for src in self.users if src in todo_keys}  # not solved yet
        self.states = load_states(out, set(self.users) - self.waiting)  # solved by an earlier run

    def finished(self, records: list[dict]) -> None:
        for r in records:
            key = (r["checkpoint_a"], r["layer_a"], r["checkpoint_b"], r["layer_b"])
            self.waiting.discard(key)
            if self.users.get(key) and (state := warm_state(r)) is not None:
                self.states[key] = state

    def ready(self, batch) -> bool:
        """False while a pair of ``batch`` starts from a state that another batch still solves."""
        own = {t.key for t in batch.tasks}
        return not any(self.sources[t.key][0] in self.waiting and self.sources[t.key][0] not in own
                       for t in batch.tasks if t.key in self.sources)

    def payload(self, batch) -> dict:
        """``GWWorker.solve``'s ``warm`` argument for ``batch``; states no pair needs any more are
        dropped."""
        warm = {}
        for t in batch.tasks:
            if t.key not in self.sources:
                continue
            src, transposed = self.sources[t.key]
            warm[t.key] = (src, transposed, self.states.get(src))
            self.users[src] -= 1
            if not self.users[src]:
                self.states.pop(src, None)
        return warm


def worker_batch_pairs(cfg) -> int:
    """Pairs per worker call: ``resources.batch_pairs`` for CPU workers; a GPU worker's call is
    one device engine run, and ``resources.gpu_batch_pairs`` (large) keeps the device full (the
    engine splits a call into device batches itself)."""
    res = cfg.resources
    return res.gpu_batch_pairs if res.gpus_per_worker > 0 else res.batch_pairs


def run_pairs(cfg, store, out: Location | str, *, progress: bool = True,
              checkpoints: list[str] | None = None, records: bool = True,
              flush_seconds: float = FLUSH_SECONDS, on_disk: tuple | None = None) -> pa.Table:
    """Solve every planned GW pair of a run on Ray workers, resuming from ``OUT/pairs/``.

    Parameters
    ----------
    cfg : RunConfig
        Uses ``costs`` (metric, normalize), ``gw`` (starts, max_iter, tol, warm_start and
        warm_keep: each pair starts from its :func:`~gwray.scheduler.plan.warm_sources` pair's
        solver state, its batch waiting until that state is solved, and runs only the configured
        starts :func:`gwray.gw.warm.warm_gw`'s rule keeps), ``compare.cross`` and
        ``resources`` (workers, cpus_per_worker, gpus_per_worker, batch_pairs; with
        ``gpus_per_worker > 0`` the workers use the device engine on calls of
        ``gpu_batch_pairs``; pair_file_rows: the records per compacted file of ``pairs/``, 0 for
        none).
    store : ActivationStore
        The activation dataset: ``checkpoints()``, ``layer_names(c)``, ``sample_ids(c)`` (n,)
        and ``read_layer(c, layer)`` (n, d); it is shipped to the workers, which read the layers.
    out : Location or str
        Run directory; records go to ``OUT/pairs/``, matrices to ``OUT/gw_matrix.*``.
    progress : bool
        Show a tqdm bar (pairs done / total, rate, ETA) and a final totals line on stderr.
    checkpoints : list of str, optional
        The run's checkpoint ids in training order (see :func:`plan_for`); default: every
        complete checkpoint of ``store``.
    records : bool
        Return the pair records; False returns an empty table with the same metadata (a
        pipeline that does not need the records does not read them back).
    flush_seconds : float
        Finished records wait at most this long before they are written as a part file
        (:data:`~gwray.scheduler.compaction.FLUSH_SECONDS`); 0: one part file per batch.
    on_disk : tuple, optional
        :func:`~gwray.scheduler.results.done_pairs` of this plan, when the caller has just read
        it (``pairs/`` is not listed and read twice).

    Returns
    -------
    pyarrow.Table
        One row per planned pair (DESIGN.md pair-record columns, plus ``file``). Schema metadata
        ``solved`` / ``resumed`` / ``cost_matrices`` count pairs solved in this call, pairs found
        on disk and cost matrices computed; ``warm_starts`` / ``warm_won`` the pairs offered a
        warm plan and those it won, ``starts_pruned`` the configured starts the rule skipped;
        ``plan_seconds`` (planning and reading what is done), ``startup_seconds`` (until the
        first records came back, less their solving), ``assembly_seconds`` and ``files`` (in
        ``pairs/`` at the end).

    Raises
    ------
    GwrayInputError
        A bad file in ``OUT/pairs/``, a bad layer, a listed checkpoint without activations, or
        bad config values.
    """
    import ray
    from tqdm.auto import tqdm

    from gwray.scheduler.pool import WorkerPool

    out, t0 = Location.parse(out), time.perf_counter()
    plan = plan_for(store, cfg.compare.cross, checkpoints)
    done, files = on_disk or done_pairs(out, plan)
    todo = ~done
    left = int(todo.sum())
    stats = {"solved": 0, "resumed": len(plan) - left, "cost_matrices": 0, "solver_seconds": 0.0,
             "plan_seconds": time.perf_counter() - t0, "startup_seconds": 0.0, "wall_seconds": 0.0,
             "assembly_seconds": 0.0, "warm_starts": 0, "warm_won": 0, "starts_pruned": 0}
    workers = 0
    sink = PairSink(out, files, compact_rows=cfg.resources.pair_file_rows, flush_seconds=flush_seconds)
    if left and not ray.is_initialized():  # every pair on disk: the matrices need no Ray
        raise RuntimeError("run_pairs needs Ray to be initialised (pipeline.py / jobs do it)")
    if left:
        ids = {c: np.asarray(store.sample_ids(c)) for c in plan.layers}
        sizes = {(c, layer): len(ids[c]) for c, names in plan.layers.items() for layer in names}
        aligned = {(c, c) for c in ids} | {
            (a, b) for a, b in plan.checkpoint_pairs() if np.array_equal(ids[a], ids[b])}
        batch_pairs = worker_batch_pairs(cfg)
        workers = min(cfg.resources.workers, -(-left // batch_pairs))
        warm = _Warm(plan, todo, ids, out) if cfg.gw.warm_start else None
        bar = tqdm(total=len(plan), initial=len(plan) - left, unit="pair", desc="GW pairs",
                   disable=not progress, file=sys.stderr, smoothing=0.1)

        needs = collections.Counter()  # pairs left per checkpoint
        for b in plan.blocks:
            for c in {b.a, b.b}:
                needs[c] += int(todo[b.offset:b.offset + b.size].sum())

        def on_result(batch, records):
            if not stats["solved"]:  # actor start-up, first reads and costs: before any solving
                stats["startup_seconds"] = (time.perf_counter() - t0
                                            - sum(r["seconds"] for r in records))
            sink.add(records)
            if warm is not None:
                warm.finished(records)
            stats["solved"] += len(records)
            stats["solver_seconds"] += sum(r["seconds"] for r in records)
            stats["warm_starts"] += sum(bool(r.get("warm")) for r in records)
            stats["warm_won"] += sum(r["init"] == "warm" for r in records)
            stats["starts_pruned"] += sum(r.get("starts_pruned", 0) for r in records)
            bar.update(len(records))

        def on_idle():
            if sink.due():
                sink.flush()

        pool = WorkerPool(workers, cfg.resources.cpus_per_worker, cfg.resources.gpus_per_worker,
                          store=store, metric=cfg.costs.metric, normalize=cfg.costs.normalize,
                          starts=list(cfg.gw.starts), max_iter=cfg.gw.max_iter, tol=cfg.gw.tol,
                          aligned=sorted(aligned), batched=cfg.resources.gpus_per_worker > 0,
                          keep_plans=warm is not None, warm_keep=cfg.gw.warm_keep)
        try:
            pool.run(plan_batches(plan, todo, sizes, batch_pairs), on_result,
                     ready=warm and warm.ready, payload=warm and warm.payload,
                     on_idle=on_idle, idle_seconds=max(flush_seconds, 0.1), needs=needs)
        finally:
            try:
                sink.flush()  # what was solved is kept, also when a worker error stops the run
            finally:  # and the workers go, also when that write fails (a full disk)
                stats["cost_matrices"] = pool.cost_tasks
                pool.shutdown()
                bar.close()
    sink.close()
    t1 = time.perf_counter()
    assemble_matrices(out, plan)
    stats["assembly_seconds"] = time.perf_counter() - t1
    stats["files"] = len(pairs_dir(out).files())
    wall = stats["wall_seconds"] = time.perf_counter() - t0
    line = (f"GW pairs: {len(plan)} total, {stats['solved']} solved, {stats['resumed']} already "
            f"on disk, {stats['cost_matrices']} cost matrices; {wall:.1f} s wall, "
            f"{stats['solver_seconds']:.1f} solver-s on {workers} workers; {stats['files']} files "
            f"in pairs/")
    if stats["warm_starts"]:
        line += (f"; {stats['warm_starts']} started from the previous checkpoint's plans (the "
                 f"warm plan won {stats['warm_won']}, {stats['starts_pruned']} starts pruned)")
    if progress:
        print(line, file=sys.stderr)
    log.info(line)
    table = load_records(out) if records else RECORD_SCHEMA.empty_table()
    if records:
        table = table.filter(pa.array(key_positions(plan, table) >= 0, pa.bool_()))
    return table.replace_schema_metadata({k: str(v) for k, v in stats.items()})
