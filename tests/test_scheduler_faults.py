"""Fault tolerance on a two-node Ray cluster (ray.cluster_utils) on this machine.

A GW worker process killed mid-run, and a driver SIGKILLed mid-run then restarted with the same
command: both finish with every pair exactly once and the matrix of an undisturbed run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from gwray.activations.store import ActivationStore, ActivationWriter
from gwray.config import load_config
from gwray.scheduler import plan_for, run_pairs
from gwray.scheduler.results import load_records

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

N, LAYERS = 128, 10  # 45 pairs: long enough to interrupt, short enough for CI
CFG = {"resources": {"workers": 2, "cpus_per_worker": 1, "batch_pairs": 2},
       "compare": {"cross": "none"}, "gw": {"max_iter": 50}}
TOTAL = LAYERS * (LAYERS - 1) // 2
BATCHES = -(-TOTAL // CFG["resources"]["batch_pairs"])
STORE_MB = 200 * 1024**2

DRIVER = """
import sys, ray
from gwray.activations.store import ActivationStore
from gwray.config import load_config
from gwray.scheduler import run_pairs
address, out, cfg = sys.argv[1], sys.argv[2], eval(sys.argv[3])
ray.init(address=address, log_to_driver=False)
run_pairs(load_config(cfg), ActivationStore(out), out, progress=False, flush_seconds=0)
"""


def _write(out) -> None:
    rng = np.random.default_rng(7)
    names = [f"h{i}" for i in range(LAYERS)]
    writer = ActivationWriter(out, "main", names)
    X = rng.normal(size=(N, 8))
    for name in names:
        X = np.tanh(X @ rng.normal(size=(8, 8)))
        writer.write(name, np.arange(N), X)
    writer.commit({})


def _rows(out) -> int:
    return len(load_records(out))


def _files(out) -> int:
    return len(list((out / "pairs").glob("*.parquet"))) if (out / "pairs").exists() else 0


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": STORE_MB, "include_dashboard": False})
    worker_node = c.add_node(num_cpus=1, object_store_memory=STORE_MB)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, worker_node
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The undisturbed matrix: serial pairwise_gw on the same layers and solver settings
    (test_scheduler.py checks that an undisturbed run_pairs equals it)."""
    from gwray.gw.pairwise import pairwise_gw

    out = tmp_path_factory.mktemp("undisturbed")
    _write(out)
    store = ActivationStore(out)
    return np.asarray(pairwise_gw([store.read_layer("main", name) for name in store.layer_names("main")],
                                  aligned=True, max_iter=CFG["gw"]["max_iter"]))


def _gw_worker_pids(raylet_pid: int) -> list[int]:
    """GW worker actor processes started by one node's raylet (not other users' Ray workers)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if cmd.startswith("ray::GWWorker") and ppid == raylet_pid:
            pids.append(int(entry))
    return pids


def test_killed_worker_process_is_replaced(cluster, reference, tmp_path):
    _, worker_node = cluster
    raylet_pid = worker_node.all_processes["raylet"][0].process.pid
    out = tmp_path / "run"
    _write(out)
    killed: dict = {}

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "pid" not in killed:
            pids = _gw_worker_pids(raylet_pid)
            if pids and _files(out) >= 2:
                killed["files"] = _files(out)
                os.kill(pids[0], signal.SIGKILL)
                killed["pid"] = pids[0]
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    table = run_pairs(load_config(CFG), ActivationStore(out), out, progress=False, flush_seconds=0)
    thread.join()
    assert "pid" in killed, "no GW worker on the second node to kill"
    assert killed["files"] < BATCHES - 2, "the run finished before the kill"
    assert int(table.schema.metadata[b"solved"]) == TOTAL  # each pair solved and written once
    assert _rows(out) == TOTAL and table.num_rows == TOTAL
    np.testing.assert_allclose(np.load(out / "gw_matrix.npy"), reference, rtol=1e-9, atol=1e-15)


def test_killed_driver_resumes(cluster, reference, tmp_path):
    c, _ = cluster
    out = tmp_path / "run"
    _write(out)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    cmd = [sys.executable, str(script), c.address, str(out), repr(CFG)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _files(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"driver ended early: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = _rows(out)
    assert 0 < written < TOTAL
    # restart with the same command; nothing already written is solved again
    table = run_pairs(load_config(CFG), ActivationStore(out), out, progress=False)
    assert int(table.schema.metadata[b"resumed"]) == written
    assert int(table.schema.metadata[b"solved"]) == TOTAL - written
    assert _rows(out) == TOTAL == len(plan_for(ActivationStore(out), "none"))
    np.testing.assert_allclose(np.load(out / "gw_matrix.npy"), reference, rtol=1e-9, atol=1e-15)


def test_dead_node_batches_resubmitted(cluster, reference, tmp_path):
    """A whole node dies (raylet, object store, worker): its batches and lost costs are redone."""
    c, worker_node = cluster
    spare = c.add_node(num_cpus=1, object_store_memory=STORE_MB)  # room for the restarted actor
    c.wait_for_nodes()
    out = tmp_path / "run"
    _write(out)
    removed: dict = {}

    def remove_busy_node():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "files" not in removed:
            if _files(out) >= 2:
                for node in (worker_node, spare):
                    if _gw_worker_pids(node.all_processes["raylet"][0].process.pid):
                        removed["files"] = _files(out)
                        c.remove_node(node, allow_graceful=False)
                        break
            time.sleep(0.05)

    thread = threading.Thread(target=remove_busy_node, daemon=True)
    thread.start()
    table = run_pairs(load_config(CFG), ActivationStore(out), out, progress=False, flush_seconds=0)
    thread.join()
    assert removed.get("files", BATCHES) < BATCHES - 2, "no node removed before the run ended"
    assert int(table.schema.metadata[b"solved"]) == TOTAL
    assert _rows(out) == TOTAL
    np.testing.assert_allclose(np.load(out / "gw_matrix.npy"), reference, rtol=1e-9, atol=1e-15)

