"""run_pairs on the embedded Ray: same matrices as the serial path, resume, bad files in pairs/."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from gwray.activations.store import ActivationStore, ActivationWriter
from gwray.config import load_config
from gwray.errors import GwrayInputError
from gwray.gw.solver import gromov_wasserstein
from gwray.scheduler import assemble_matrices, plan_for, plan_pairs, run_pairs
from gwray.scheduler.results import load_records, pairs_dir, row_keys, write_records

N, LAYERS = 24, 5


def _write_run(out, checkpoints=("early", "late"), n=N, layers=LAYERS, seed=0):
    """Synthetic activations: each layer a nonlinear map of the previous one, per checkpoint."""
    rng = np.random.default_rng(seed)
    data = {}
    base = rng.normal(size=(n, 6))
    for c in checkpoints:
        names = [f"block{i}" for i in range(layers)]
        writer = ActivationWriter(out, c, names)
        X = base
        for name in names:
            X = np.tanh(X @ rng.normal(size=(X.shape[1], 6)) + 0.1 * rng.normal(size=(n, 6)))
            writer.write(name, np.arange(n), X)
            data[c, name] = X.astype(np.float32)
        writer.commit({})
    return data


def _cfg(**resources):
    res = {"workers": 2, "batch_pairs": 3, **resources}
    return load_config({"resources": res, "compare": {"cross": "consecutive"},
                        "gw": {"starts": ["identity", "product"], "max_iter": 100}})


@pytest.fixture(scope="module")
def finished(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("sched")
    data = _write_run(out)
    table = run_pairs(_cfg(), ActivationStore(out), out, progress=True)
    return out, data, table


def test_matrices_equal_serial_pairwise_gw(finished):
    from gwray.gw.costs import cost_matrix
    from gwray.gw.pairwise import pairwise_gw
    from gwray.gw.solver import gromov_wasserstein

    out, data, table = finished
    plan = plan_for(ActivationStore(out), "consecutive")
    assert table.num_rows == len(plan) == 2 * 10 + 25
    mats = assemble_matrices(out, plan)
    names = [f"block{i}" for i in range(LAYERS)]
    for c in ("early", "late"):
        serial = pairwise_gw([data[c, n] for n in names], aligned=True,
                             starts=["identity", "product"], max_iter=100)
        np.testing.assert_allclose(mats["gw"][c], np.asarray(serial), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(mats["lower_bound"][c], serial.lower_bound, rtol=1e-9, atol=1e-12)
    cross = mats["cross"]["early", "late"]["gw"]
    for i in (0, 2, 4):
        for j in (1, 4):
            r = gromov_wasserstein(cost_matrix(data["early", names[i]]), cost_matrix(data["late", names[j]]),
                                   aligned=True, starts=["identity", "product"], max_iter=100)
            assert cross[i, j] == pytest.approx(r.value, rel=1e-9, abs=1e-12)
    on_disk = np.load(out / "gw_matrix.npy")
    assert on_disk.shape == (2, LAYERS, LAYERS)
    np.testing.assert_array_equal(on_disk[0], mats["gw"]["early"])
    long = pa.parquet.read_table(out / "gw_matrix.parquet")
    assert long.num_rows == 2 * LAYERS * LAYERS
    assert np.load(out / "cross" / "early__late.npy").shape == (LAYERS, LAYERS)


def test_records_are_complete_and_costs_computed_once(finished):
    out, _, table = finished
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert int(meta["solved"]) == 45 and int(meta["resumed"]) == 0
    assert int(meta["cost_matrices"]) == 2 * LAYERS  # once per (checkpoint, layer)
    assert table.column("n").to_pylist() == [N] * 45
    assert set(table.column("init").to_pylist()) <= {"identity", "product"}
    assert (table.column("gw").to_numpy() >= table.column("lower_bound").to_numpy() - 1e-12).all()
    assert (table.column("seconds").to_numpy() > 0).all()
    assert len(load_records(out)) == 45


def test_resume_skips_pairs_on_disk(finished, tmp_path):
    out, _, table = finished
    again = run_pairs(_cfg(), ActivationStore(out), out, progress=False)
    assert again.schema.metadata[b"solved"] == b"0" and again.num_rows == 45
    # drop one batch file: exactly its pairs are solved again, the matrix is unchanged
    victim = sorted((out / "pairs").glob("*.parquet"))[0]
    lost = pa.parquet.read_table(victim).num_rows
    before = np.load(out / "gw_matrix.npy")
    victim.unlink()
    third = run_pairs(_cfg(workers=1), ActivationStore(out), out, progress=False)
    assert int(third.schema.metadata[b"solved"]) == lost
    assert int(third.schema.metadata[b"cost_matrices"]) <= 2 * lost
    np.testing.assert_allclose(np.load(out / "gw_matrix.npy"), before, rtol=1e-12)


def test_compacted_run_equals_an_uncompacted_one(finished, tmp_path):
    """The finished run's 15 batches ended as one compacted file; a run that keeps one part file
    per batch gives the same records and matrices."""
    out, _, table = finished
    assert [loc.name.split("-")[0] for loc in pairs_dir(out).files()] == ["compacted"]
    other = tmp_path / "parts"
    _write_run(other)
    cfg = _cfg(pair_file_rows=0)
    parts = run_pairs(cfg, ActivationStore(other), other, progress=False, flush_seconds=0)
    assert len(pairs_dir(other).files()) == 15
    np.testing.assert_array_equal(np.load(out / "gw_matrix.npy"), np.load(other / "gw_matrix.npy"))
    gw = lambda t: dict(zip(row_keys(t), t.column("gw").to_pylist()))  # noqa: E731
    assert gw(parts) == gw(table)


@pytest.mark.parametrize("kind", ["garbage", "foreign", "columns"])
def test_bad_file_in_pairs_names_it(ray_local, tmp_path, kind):
    out = tmp_path / "run"
    _write_run(out, checkpoints=("only",), layers=3, n=12)
    pairs = out / "pairs"
    pairs.mkdir(parents=True)
    if kind == "garbage":
        bad = pairs / "part-0.parquet"
        bad.write_bytes(b"PAR1 this is not parquet")
    elif kind == "foreign":
        bad = pairs / "notes.txt"
        bad.write_text("hello")
    else:
        bad = pairs / "other.parquet"
        pa.parquet.write_table(pa.table({"layer_a": ["x"], "gw": [1.0]}), bad)
    with pytest.raises(GwrayInputError, match=str(bad)) as err:
        run_pairs(_cfg(), ActivationStore(out), out, progress=False)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in pairs.iterdir()) == [bad.name]  # nothing solved or written
    assert not (out / "gw_matrix.parquet").exists()


def test_duplicate_or_missing_pair_is_an_error(tmp_path):
    out = tmp_path / "run"
    plan = plan_pairs({"c": ["a", "b", "c"]}, "none")
    rec = {"gw": 1.0, "lower_bound": 0.5, "init": "product", "iterations": 3,
           "marginal_error": 0.0, "seconds": 0.1, "n": 4, "solver": "cg-lap"}
    rows = [{"checkpoint_a": t.checkpoint_a, "layer_a": t.layer_a, "checkpoint_b": t.checkpoint_b,
             "layer_b": t.layer_b, **rec} for t in plan]
    write_records(out, rows[:2])
    with pytest.raises(GwrayInputError, match="1 planned pairs missing, e.g. c/b/c/c"):
        assemble_matrices(out, plan)
    first = write_records(out, rows[1:])
    with pytest.raises(GwrayInputError, match="pair c/a/c/c also in") as err:
        assemble_matrices(out, plan)
    assert str(first) in str(err.value)
    assert not (out / "gw_matrix.parquet").exists()
    first.remove()
    write_records(out, rows[2:])
    mats = assemble_matrices(out, list(plan))  # a plain list of tasks works too
    np.testing.assert_array_equal(mats["gw"]["c"], np.ones((3, 3)) - np.eye(3))
    assert len(pairs_dir(out).files()) == 2


def test_a_worker_that_keeps_dying_is_a_named_error_and_the_rerun_resumes(finished, tmp_path):
    """A GW worker process that dies on every batch, as one out of memory does: the run stops
    after MAX_ATTEMPTS tries with an error naming the batch; with workers that live, the same
    call finishes with the undisturbed matrices."""
    import os
    import shutil

    from gwray.errors import GwrayComputeError
    from gwray.scheduler.pool import MAX_ATTEMPTS

    src, _, _ = finished
    out = tmp_path / "run"
    shutil.copytree(src / "activations", out / "activations")
    shutil.copytree(src / "activation_manifests", out / "activation_manifests")

    class Dying(ActivationStore):  # defined here: Ray ships it by value to the workers
        def read_layer(self, *args, **kwargs):
            os._exit(1)

    with pytest.raises(GwrayComputeError, match=rf"^GW batch \d+ \(\d+ pairs from \w+/block\d/\w+/block\d, "
                                                rf"n = {N}\): its worker died {MAX_ATTEMPTS} times \(out of memory\? "
                                                r".* then rerun: the solved pairs are kept$"):
        run_pairs(_cfg(workers=1), Dying(out), out, progress=False)
    assert not (out / "gw_matrix.parquet").exists()
    again = run_pairs(_cfg(workers=1), ActivationStore(out), out, progress=False)
    assert again.num_rows == 45
    np.testing.assert_allclose(np.load(out / "gw_matrix.npy"), np.load(src / "gw_matrix.npy"), rtol=1e-12)


def test_a_worker_that_dies_as_it_starts_is_a_named_error(finished, tmp_path):
    """A GW worker that dies every time as it starts, before it takes any work (Ray used to
    restart it without end, and the run waited): the run stops after MAX_ATTEMPTS new workers
    with an error naming the worker, and no pair is written."""
    import os
    import shutil

    from gwray.errors import GwrayComputeError
    from gwray.scheduler.pool import MAX_ATTEMPTS

    src, _, _ = finished
    out = tmp_path / "run"
    shutil.copytree(src / "activations", out / "activations")
    shutil.copytree(src / "activation_manifests", out / "activation_manifests")

    class DyingAtStart(ActivationStore):  # unpickled as each worker starts, never in the driver
        def __setstate__(self, state):
            os._exit(1)

    with pytest.raises(GwrayComputeError, match=rf"^GW worker 0: a new worker died {MAX_ATTEMPTS} times in a "
                                                r"row as it started, before taking any work .* then rerun"):
        run_pairs(_cfg(workers=1), DyingAtStart(out), out, progress=False)
    assert not (out / "pairs").exists() or not list((out / "pairs").glob("*.parquet"))


def test_batched_path_on_cpu(finished):
    """The GPU worker path (batched_gw) runs on the CPU too and returns full records; it builds
    its costs itself (CPU tensors here) equal to the host's cost_matrix."""
    import torch

    from gwray.gw.costs import cost_matrix
    from gwray.scheduler.batches import make_batches
    from gwray.scheduler.workers import GWWorker

    out, _, _ = finished
    store = ActivationStore(out)
    plan = plan_for(store, "none")
    batch = make_batches(plan[:3], {k: N for t in plan[:3] for k in t.cost_keys}, 3)[0]
    worker = GWWorker(store, "euclidean", "mean", ["identity", "product"], 100, 1e-9,
                      aligned=[("early", "early")], batched=True)
    records = worker.solve(batch, {})  # no cost references: built from the store's activations
    assert set(worker._device_data) == set(batch.cost_keys)  # bound data kept per layer
    cached = dict(worker._device_data)
    again = worker.solve(batch, {})
    assert all(worker._device_data[k] is cached[k] for k in cached)  # not computed again
    assert [r["gw"] for r in again] == [r["gw"] for r in records]
    for key in batch.cost_keys:
        assert isinstance(worker._cache[key], torch.Tensor)
        np.testing.assert_allclose(worker._cache[key].numpy(), cost_matrix(store.read_layer(*key)),
                                   rtol=1e-13, atol=0)
    assert [(r["layer_a"], r["layer_b"]) for r in records] == [(t.layer_a, t.layer_b) for t in batch.tasks]
    for rec in records:
        assert rec["solver"].startswith("batched") and rec["n"] == N
        assert np.isfinite(rec["gw"]) and rec["gw"] >= rec["lower_bound"] - 1e-12
        assert rec["marginal_error"] < 1e-6
    # the GPU path finds the same minima as the CPU path with the same starts (within 1 %)
    for rec, task in zip(records, batch.tasks):
        C1, C2 = (worker._cache[k].numpy() for k in task.cost_keys)
        serial = gromov_wasserstein(C1, C2, aligned=True, starts=["identity", "product"],
                                    max_iter=100, tol=1e-9).value
        assert rec["gw"] <= serial * 1.01 + 1e-12, (task.layer_a, task.layer_b, rec["gw"], serial)


def test_cost_tasks_run_while_the_worker_is_busy_solving(finished, tmp_path):
    """A cost another worker waits for must not queue behind this worker's solves: a solve blocked
    on a cost that is not there yet still lets the same actor compute and return another cost."""
    import ray

    from gwray.scheduler.batches import make_batches
    from gwray.scheduler.pool import WorkerPool

    out, _, _ = finished
    store = ActivationStore(out)
    plan = plan_for(store, "none")
    batch = make_batches(plan[:1], {k: N for k in plan[0].cost_keys}, 1)[0]
    release = tmp_path / "release"

    @ray.remote(num_cpus=0)
    def late_cost(path, C):
        import os
        import time
        while not os.path.exists(path):
            time.sleep(0.05)
        return C

    pool = WorkerPool(1, 1, 0, store=store, metric="euclidean", normalize="mean",
                      starts=["identity"], max_iter=50, tol=1e-9, aligned=[("early", "early")])
    actor = pool.slots[0].actor
    try:
        C = np.zeros((N, N))
        refs = {k: late_cost.remote(str(release), C) for k in batch.cost_keys}
        solving = actor.solve.remote(batch, refs)  # blocks in ray.get until `release` exists
        other = plan[-1].cost_keys[1]
        got = ray.get(actor.cost.remote(*other), timeout=60)
        assert got.shape == (N, N) and not ray.wait([solving], timeout=0)[0]
        release.touch()
        assert len(ray.get(solving, timeout=60)) == 1
    finally:
        release.touch()
        pool.shutdown()


class _RecordedActor:
    """An actor handle that records every call the driver makes on it as (method, args)."""

    def __init__(self, actor, calls: list):
        self.actor, self.calls = actor, calls

    def __getattr__(self, name):
        method, calls = getattr(self.actor, name), self.calls

        class _Method:
            def remote(self, *args):
                calls.append((name, args))
                return method.remote(*args)
        return _Method()


def test_batched_workers_get_activations_not_costs(finished):
    """GPU workers (batched, here on CPU) read activations and build their costs themselves: the
    driver starts no cost task and hands out no cost reference (no n² array in the object store),
    and every pair's value is within the device engine's 1 % of the CPU solver's under the rule
    the device runs (or lower, but above the CPU workers' valid lower bound), with its own bound
    below the CPU workers' value."""
    from gwray.gw.costs import cost_matrix
    from gwray.scheduler.batches import make_batches
    from gwray.scheduler.pool import WorkerPool

    out, _, table = finished
    store = ActivationStore(out)
    plan = plan_for(store, "consecutive")
    cpu = {k: (gw, lb) for k, gw, lb in zip(row_keys(table), table.column("gw").to_pylist(),
                                             table.column("lower_bound").to_pylist())}
    pool = WorkerPool(2, 1, 0, store=store, metric="euclidean", normalize="mean",
                      starts=["identity", "product"], max_iter=100, tol=1e-9, batched=True,
                      aligned=[("early", "early"), ("late", "late"), ("early", "late")])
    calls, actors = [], [s.actor for s in pool.slots]
    for s in pool.slots:
        s.actor = _RecordedActor(s.actor, calls)
    records = []
    try:
        pool.run(make_batches(list(plan), {k: N for t in plan for k in t.cost_keys}, 3),
                 lambda batch, recs: records.extend(recs))
    finally:
        for s, actor in zip(pool.slots, actors):
            s.actor = actor
        pool.shutdown()
    assert {name for name, _ in calls} == {"solve"} and not pool.costs
    assert all(args[1] == {} for _, args in calls)  # (batch, cost refs, warm-start payload)
    assert 2 * LAYERS <= pool.cost_tasks <= 2 * 2 * LAYERS  # each layer built once per worker at most
    keys = row_keys(pa.Table.from_pylist(records))
    assert sorted(keys) == sorted(cpu)
    costs = {k: cost_matrix(store.read_layer(*k)) for t in plan for k in t.cost_keys}
    for key, rec in zip(keys, records):
        gw, lb = cpu[key]
        same_rule = gromov_wasserstein(costs[key[:2]], costs[key[2:]], aligned=True,
                                       starts=["identity", "product"], max_iter=100).value
        assert rec["solver"].startswith("batched")
        assert lb - 1e-12 <= rec["gw"] <= 1.01 * same_rule + 1e-12, (key, rec["gw"], same_rule)
        assert rec["lower_bound"] <= gw + 1e-12, (key, rec["lower_bound"], gw)


def test_gpu_workers_take_large_calls():
    """GPU workers get ``resources.gpu_batch_pairs`` per call (one device engine run), CPU workers
    ``resources.batch_pairs``."""
    from gwray.config import RunConfig
    from gwray.scheduler import worker_batch_pairs

    cpu = RunConfig.model_validate({"resources": {"batch_pairs": 3}})
    gpu = RunConfig.model_validate({"resources": {"batch_pairs": 3, "gpus_per_worker": 0.5}})
    assert worker_batch_pairs(cpu) == 3 and worker_batch_pairs(gpu) == 512


def test_cost_matrices_are_released_once_no_pair_needs_them(finished):
    """A checkpoint's cost references go when its last pair is done (the object store frees them),
    not at the end of the sweep; none is computed twice."""
    from gwray.scheduler.batches import plan_batches
    from gwray.scheduler.pool import WorkerPool

    out, _, _ = finished
    store = ActivationStore(out)
    plan = plan_for(store, "none")  # early's 10 pairs, then late's 10
    todo = np.ones(len(plan), dtype=bool)
    needs = {"early": 10, "late": 10}
    seen = []

    def on_result(batch, records):
        held = {k[0] for k in pool.costs}
        seen.append((dict(needs), held))
        assert not any(needs[c] == 0 and c in held for c in needs), (needs, held)

    pool = WorkerPool(1, 1, 0, store=store, metric="euclidean", normalize="mean",  # batches in order
                      starts=["identity"], max_iter=50, tol=1e-9, aligned=[("early", "early"), ("late", "late")])
    try:
        pool.run(plan_batches(plan, todo, {k: N for t in plan for k in t.cost_keys}, 3), on_result,
                 needs=needs)
    finally:
        pool.shutdown()
    assert needs == {"early": 0, "late": 0} and not pool.costs
    assert any(n["early"] == 0 and "late" in held for n, held in seen)  # released mid-sweep
    assert pool.cost_tasks == 2 * LAYERS  # each cost matrix computed once
