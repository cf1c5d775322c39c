"""pairs/ compaction: few files, and every pair exactly once, also after a kill mid-compaction."""
from __future__ import annotations

import numpy as np
import pytest

from gwray.scheduler import compaction
from gwray.scheduler.assembly import assemble_matrices
from gwray.scheduler.compaction import PairSink
from gwray.scheduler.plan import plan_pairs
from gwray.scheduler.results import (COMPACTED_PREFIX, PART_PREFIX, done_pairs,
                                     load_records, pairs_dir, replaced_by, row_keys)

PLAN = plan_pairs({"s0": [f"L{i}" for i in range(6)], "s1": [f"L{i}" for i in range(6)]}, "consecutive")


def _records(tasks):
    return [{"checkpoint_a": t.checkpoint_a, "layer_a": t.layer_a, "checkpoint_b": t.checkpoint_b,
             "layer_b": t.layer_b, "gw": 1.0 + t.i + 10 * t.j, "lower_bound": 0.5, "init": "product",
             "iterations": 3, "marginal_error": 0.0, "seconds": 0.01, "n": 8, "solver": "cg-lap"}
            for t in tasks]


def _names(out):
    return sorted(loc.name.split("-")[0] for loc in pairs_dir(out).files())


def test_parts_are_merged_into_few_files_with_every_pair_once(tmp_path):
    tasks = list(PLAN)  # 15 + 36 + 15 = 66 pairs
    sink = PairSink(tmp_path, (), compact_rows=20, flush_seconds=0)
    for k in range(0, len(tasks), 4):
        sink.add(_records(tasks[k:k + 4]))
    # 3 compactions of 5 parts (20 rows each) so far, 1 part of 6 rows left
    assert _names(tmp_path) == ["compacted"] * 3 + ["part"] * 2
    sink.close()  # the parts and the small compacted files become one
    files = pairs_dir(tmp_path).files()
    assert len(files) == 4 and len(files) <= len(tasks) // 20 + 1
    table = load_records(tmp_path)
    assert sorted(row_keys(table)) == sorted(t.key for t in tasks)
    mats = assemble_matrices(tmp_path, PLAN)
    assert mats["gw"]["s1"][2, 4] == 1 + 2 + 40 and mats["cross"][("s0", "s1")]["gw"][5, 0] == 1 + 5


def test_a_kill_between_compacted_write_and_part_removal_loses_and_duplicates_nothing(tmp_path, monkeypatch):
    class Killed(BaseException):
        pass

    def stop():
        raise Killed

    tasks = list(PLAN)
    monkeypatch.setenv(compaction.KILL_HOOK, "compaction")
    monkeypatch.setattr(compaction, "_kill", stop)
    sink = PairSink(tmp_path, (), compact_rows=20, flush_seconds=0)
    with pytest.raises(Killed):
        for k in range(0, len(tasks), 4):
            sink.add(_records(tasks[k:k + 4]))
    # the compacted file is whole and its 5 parts are still there: every pair of them twice
    compacted = [loc for loc in pairs_dir(tmp_path).files() if loc.name.startswith(COMPACTED_PREFIX)]
    assert len(compacted) == 1 and len(replaced_by(compacted[0])) == 5
    assert all((tmp_path / "pairs" / name).exists() for name in replaced_by(compacted[0]))
    # the next reader finishes the compaction first: each pair once, the parts gone
    done, files = done_pairs(tmp_path, PLAN)
    assert done.sum() == 20 and [loc.name for loc, _ in files] == [compacted[0].name]
    monkeypatch.undo()
    sink = PairSink(tmp_path, files, compact_rows=20, flush_seconds=0)  # the resumed run
    sink.add(_records([t for t, d in zip(tasks, done) if not d]))
    sink.close()
    assert sorted(row_keys(load_records(tmp_path))) == sorted(t.key for t in tasks)
    assemble_matrices(tmp_path, PLAN)  # raises on a pair present twice or missing


def test_resumed_parts_join_the_next_compaction(tmp_path):
    """Part files a killed run left are merged with the new ones; compact_rows=0 keeps parts."""
    tasks = list(PLAN)
    first = PairSink(tmp_path, (), compact_rows=0, flush_seconds=0)
    for k in range(0, 30, 3):
        first.add(_records(tasks[k:k + 3]))
    first.close()
    assert _names(tmp_path) == ["part"] * 10
    done, files = done_pairs(tmp_path, PLAN)
    sink = PairSink(tmp_path, files, compact_rows=100, flush_seconds=3600)
    sink.add(_records(tasks[30:]))
    assert _names(tmp_path) == ["part"] * 10  # buffered: not due yet
    sink.close()
    assert _names(tmp_path) == ["compacted"] and done.sum() == 30
    assert np.array_equal(np.sort(PLAN.positions(*zip(*row_keys(load_records(tmp_path))))),
                          np.arange(len(PLAN)))
    assert all(not name.startswith(PART_PREFIX) for name in _names(tmp_path))
