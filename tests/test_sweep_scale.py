"""``bench/sweep_scale.py --small`` end to end: a 6-checkpoint × 12-layer sweep through
``gwray compare`` (embedded Ray), a no-op rerun, kills (at half the pairs; between a compacted
file's write and its parts' removal) and resumes, and the same sweep uncompacted on a simulated
two-node Ray cluster: pairs/ compacted, every pair exactly once, the same matrices everywhere."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
BENCH = Path(__file__).resolve().parent.parent / "bench" / "sweep_scale.py"


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    proc = subprocess.run([sys.executable, str(BENCH), "--small", "--out", str(tmp / "work"),
                           "--json", str(tmp / "figures.json")], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp / "figures.json").read_text())


def test_finished_sweep_is_compacted_and_whole(figures):
    full, pairs = figures["full"], 6 * 66 + 5 * 144
    assert full["pairs"] == full["solved"] == pairs and full["resumed"] == 0
    assert full["files"] == 1 == full["file_bound"]  # 1,116 pairs < 5,000: one file
    assert full["missing"] == 0 and full["twice"] == 0
    assert figures["plan"]["pair_files"] == 1  # what `gwray plan` announced
    assert 0.5 < figures["plan"]["pairs_bytes"] / figures["plan"]["real_pairs_bytes"] < 2


def test_kills_lose_and_duplicate_nothing(figures):
    kill = figures["kill"]
    assert 558 <= kill["at"] < 6 * 66 + 5 * 144  # killed mid-sweep, what was written kept
    assert kill["replaced_left"] > 0  # the second kill left a compacted file beside its parts
    assert kill["last_stage"]["solved"] == 0  # the last run only finished the compaction
    assert kill["missing"] == 0 and kill["twice"] == 0 and kill["files"] == 1
    assert kill["same"]  # the matrices of the uninterrupted run


def test_uncompacted_multi_node_run_gives_the_same_matrices(figures):
    cluster = figures["cluster"]
    assert cluster["nodes"] == 2 and cluster["solved"] == cluster["pairs"]
    assert cluster["files"] > 1  # resources.pair_file_rows=0: every written file kept
    assert cluster["missing"] == 0 and cluster["twice"] == 0 and cluster["same"]


def test_noop_rerun_and_report(figures):
    assert figures["noop_s"] > 0 and figures["report_bytes"] > 0
    if figures["interactive"] == "chromium not installed":
        pytest.skip("no headless Chromium here")
    assert figures["interactive"] == "slider moved" and figures["interactive_ms"] > 0
