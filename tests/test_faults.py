"""Faults of a run directory, a disk that fills, an object store that fails (docs/faults.md).

Each test creates the fault in a copy of a finished run (or during a run), checks the named
error or the recovery, that nothing half-written is left, and that the run, once the fault is
gone, gives the matrices of the undisturbed run.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from gwray.errors import GwrayInputError, GwrayStorageError
from gwray.pipeline import load_run, run
from gwray.storage import Location

pytestmark = pytest.mark.slow
LAYER = "transformer.h.1"


@pytest.fixture(scope="module")
def config(tiny_hf_model):
    return {"name": "faults", "model": {"path": str(tiny_hf_model("gpt2", layers=3, hidden=32))},
            "probe": {"n_samples": 16, "max_tokens": 8, "batch_size": 8},
            "gw": {"max_iter": 50}, "resources": {"workers": 1, "batch_pairs": 2},
            "graph": {"null_draws": 0}, "stability": {"resamples": 0}}


@pytest.fixture(scope="module")
def undisturbed(ray_local, config, tmp_path_factory):
    out = tmp_path_factory.mktemp("undisturbed") / "run"
    return out, run(config, out=out, progress=False).matrix


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _temporaries(root: Path) -> list[str]:
    return [f for f in _files(root) if os.path.basename(f).startswith(".")]


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path, at: int | None = None) -> None:
    """Damage 16 bytes inside the file from byte ``at`` (default: a third in), keeping its size
    (a bad sector, a faulty copy)."""
    data = bytearray(path.read_bytes())
    at = len(data) // 3 if at is None else at
    for k in range(at, at + 16):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


def _part(out: Path) -> Path:
    return next((out / "activations" / "checkpoint=main" / f"layer={LAYER}").glob("*.parquet"))


def _pair_file(out: Path) -> Path:
    return next((out / "pairs").glob("*.parquet"))


def _flip_last_column(path: Path) -> None:
    """Damage the middle of the last column's data: a column the pairs stage does not need to
    decide that every pair is done, so only a check of every page finds it."""
    import pyarrow.parquet as pq

    group = pq.ParquetFile(path).metadata.row_group(0)
    chunk = group.column(group.num_columns - 1)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    _flip(path, start + chunk.total_compressed_size // 2 - 8)


def _flip_part_and_drop_pairs(out: Path) -> None:
    _flip(_part(out))
    shutil.rmtree(out / "pairs")  # so that the pairs are solved again, reading the layer


DAMAGE = {  # id: (damage, what gwray says, the stages that run again)
    "activation-part-missing": (lambda o: _part(o).unlink(),
                                f"activations of main: layer {LAYER} holds 1 of its 2 parts", {"activations"}),
    "activation-part-cut-short": (lambda o: _cut(_part(o)),
                                  f"activations of main: layer {LAYER} holds 2 of its 2 parts,", {"activations"}),
    "activation-part-corrupted-found-while-solving": (
        _flip_part_and_drop_pairs, "unreadable (could not verify page integrity, CRC checksum verification "
                                   "failed for page_ordinal 0): extracting checkpoint main again",
        {"activations", "pairs"}),
    "manifest-missing": (lambda o: (o / "activation_manifests" / "main.json").unlink(),
                         "activations of main: no complete activations yet", {"activations"}),
    "manifest-damaged": (lambda o: _cut(o / "activation_manifests" / "main.json"),
                         "activations of main: its manifest activation_manifests/main.json is damaged",
                         {"activations"}),
    "pair-file-missing": (lambda o: _pair_file(o).unlink(), "pairs missing from pairs/", {"pairs"}),
    "pair-file-cut-short": (lambda o: _cut(_pair_file(o)), ": moved to", {"pairs"}),
    "pair-file-corrupted": (lambda o: _flip(_pair_file(o)), ": moved to", {"pairs"}),
    "pair-file-corrupted-in-its-last-column": (lambda o: _flip_last_column(_pair_file(o)), ": moved to",
                                               {"pairs"}),
    "run-json-missing": (lambda o: (o / "run.json").unlink(), "run.json is missing: rebuilding it",
                         {"pairs", "communities", "report"}),
    "run-json-damaged": (lambda o: _cut(o / "run.json"), "run.json is damaged (not JSON): rebuilding it",
                         {"pairs", "communities", "report"}),
    "gw-matrix-cut-short": (lambda o: _cut(o / "gw_matrix.parquet"),
                            "every pair is in pairs/: assembling the matrices", {"pairs"}),
    "gw-matrix-npy-missing": (lambda o: (o / "gw_matrix.npy").unlink(),
                              "pairs: gw_matrix.npy is missing or damaged, every pair is in pairs/", {"pairs"}),
    "communities-damaged": (lambda o: _cut(o / "communities.json"), "communities: communities.json is damaged",
                            {"communities"}),
    "report-missing": (lambda o: (o / "report.html").unlink(), "report: its output is missing", {"report"}),
}


@pytest.mark.parametrize("fault", list(DAMAGE))
def test_a_damaged_or_missing_piece_is_recomputed(undisturbed, config, tmp_path, capsys, fault):
    damage, said, again = DAMAGE[fault]
    src, matrix = undisturbed
    out = tmp_path / "run"
    shutil.copytree(src, out)
    damage(out)
    capsys.readouterr()
    result = run(config, out=out)
    err = capsys.readouterr().err
    assert said in err, err
    assert {s for s, how in result.stages.items() if how == "ran"} == again
    np.testing.assert_array_equal(result.matrix, matrix)  # the undisturbed run's matrices
    assert _temporaries(out) == [] and load_run(out).pairs.num_rows == 6
    assert [f for f in _files(out) if "_damaged" in f] == (["pairs/_damaged/" + _pair_file(src).name]
                                                          if fault.startswith("pair-file-c") else [])
    again = run(config, out=out, progress=False)  # and the next run has nothing to redo
    assert set(again.stages.values()) == {"skipped"}


def test_parts_a_kill_left_after_the_last_pair_are_compacted_without_solving(undisturbed, config, tmp_path,
                                                                           capsys):
    """The driver killed after writing its last part file, before merging the parts: the rerun
    finds every pair done and still leaves pairs/ one file (a finished sweep's file count)."""
    import pyarrow.parquet as pq

    src, matrix = undisturbed
    out = tmp_path / "run"
    shutil.copytree(src, out)
    table = pq.read_table(_pair_file(out))
    _pair_file(out).unlink()
    for k in range(3):
        pq.write_table(table.slice(2 * k, 2), out / "pairs" / f"part-{k}.parquet")
    (out / "gw_matrix.npy").unlink()  # the kill came before the matrices
    capsys.readouterr()
    result = run(config, out=out)
    assert "every pair is in pairs/: assembling the matrices" in capsys.readouterr().err
    assert [p.name.split("-")[0] for p in (out / "pairs").glob("*.parquet")] == ["compacted"]
    np.testing.assert_array_equal(result.matrix, matrix)
    assert load_run(out).pairs.num_rows == 6


@pytest.mark.parametrize("name, said", [("communities.json", "communities.json: damaged, not JSON ("),
                                        ("gw_matrix.parquet", "gw_matrix.parquet: unreadable (")])
def test_reading_a_damaged_run_names_the_file(undisturbed, tmp_path, capsys, name, said):
    from gwray.cli import main

    src, _ = undisturbed
    out = tmp_path / "run"
    shutil.copytree(src, out)
    _cut(out / name)
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gwray: error: {out}/{said}") and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("fault", ["weights-cut-short", "probe-line-in-latin-1"])
def test_on_the_command_line_a_fault_is_one_named_line_exit_2_and_leaves_nothing(config, tmp_path, capsys,
                                                                               fault):
    import yaml

    from gwray.cli import main

    model, probe, out = tmp_path / "model", tmp_path / "probe.txt", tmp_path / "run"
    shutil.copytree(config["model"]["path"], model)
    probe.write_text("".join(f"sentence number {i}\n" for i in range(20)))
    if fault == "weights-cut-short":
        _cut(model / "model.safetensors")
        named = f"model weights {model / 'model.safetensors'}: damaged, "
    else:
        probe.write_bytes(probe.read_bytes() + "café au lait\n".encode("latin-1"))
        named = f"probe file {probe}: line 21 is not UTF-8"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({**config, "model": {"path": str(model)},
                                   "probe": {**config["probe"], "source": str(probe)}}))
    capsys.readouterr()
    code = main(["run", str(cfg), "--out", str(out), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"gwray: error: {named}") and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_without_run_json_another_models_activations_are_not_replaced(undisturbed, config, tiny_hf_model,
                                                                      tmp_path):
    src, _ = undisturbed
    out = tmp_path / "run"
    shutil.copytree(src, out)
    (out / "run.json").unlink()
    before = _files(out)
    other = {**config, "model": {"path": str(tiny_hf_model("gpt2", layers=2, hidden=32, seed=1))}}
    with pytest.raises(GwrayInputError, match=rf"^run directory {out}: run.json is missing and it holds the "
                                              rf"activations of {config['model']['path']} on probe builtin:english"):
        run(other, out=out, progress=False)
    assert _files(out) == before


WRITE_ONCE = Location._write_once


def _disk_of(monkeypatch, full_disk, free: int, log: list | None = None):
    """Every write of the run (all in this process) goes through a disk with ``free`` bytes
    left; ``log`` collects ``(path, bytes)`` of each write."""
    fs, disk = full_disk(free)

    def write_once(self, data):
        if log is not None:
            log.append((self.path, len(data)))
        return WRITE_ONCE(Location(fs, self.path), data)

    monkeypatch.setattr(Location, "_write_once", write_once)
    return disk


@pytest.fixture(scope="module")
def writes(undisturbed, config, full_disk, tmp_path_factory):
    """``(path, bytes)`` of each write of an undisturbed run, in order."""
    log = []
    with pytest.MonkeyPatch.context() as mp:
        _disk_of(mp, full_disk, 10**12, log)
        out = tmp_path_factory.mktemp("sizing") / "run"
        run(config, out=out, progress=False)
    return [(os.path.relpath(path, out), size) for path, size in log]


@pytest.mark.parametrize("stage, first", [("activations", "activations/"), ("pairs", "pairs/part-"),
                                          ("report", "heatmap.png")])
def test_a_full_disk_stops_with_a_named_error_and_the_rerun_finishes(undisturbed, config, writes, tmp_path,
                                                                     monkeypatch, full_disk, stage, first):
    """The disk fills in the middle of the stage's first file."""
    _, matrix = undisturbed
    k = next(k for k, (path, _) in enumerate(writes) if path.startswith(first))
    out = tmp_path / "run"
    disk = _disk_of(monkeypatch, full_disk, sum(size for _, size in writes[:k]) + writes[k][1] // 2)
    with pytest.raises(GwrayStorageError) as err:
        run(config, out=out, progress=False)
    msg = str(err.value)
    assert msg.startswith(f"disk full writing {out}/{first}") and "make room" in msg and "\n" not in msg
    assert _temporaries(out) == []  # nothing half-written
    manifests = list((out / "activation_manifests").glob("*.json")) if out.exists() else []
    assert (out / "activations" / "checkpoint=main").exists() == bool(manifests)  # whole or none
    disk.free = 10**12  # room again
    result = run(config, out=out, progress=False)
    np.testing.assert_array_equal(result.matrix, matrix)
    done_before = {"activations": set(), "pairs": {"activations"}, "report": {"activations", "pairs", "communities"}}
    assert {s for s, how in result.stages.items() if how == "skipped"} == done_before[stage]


def _s3_run(flaky_s3, name: str) -> Location:
    return Location(flaky_s3.fs, f"gwray-runs/{name}")


def test_s3_transient_failures_are_retried_and_the_run_finishes(undisturbed, config, flaky_s3, fast_retries):
    _, matrix = undisturbed
    seen, failing = [0], {9: "503", 30: "reset", 61: "500", 95: "503", 140: "reset", 190: "500"}

    def a_handful(method, path):  # 5xx and resets on writes, spread over the run's stages
        if method in ("PUT", "POST"):
            seen[0] += 1
            return failing.get(seen[0])
        return None

    flaky_s3.fault = a_handful
    result = run(config, out=_s3_run(flaky_s3, "faults-transient"), progress=False)
    assert len(flaky_s3.failed) == len(failing) < seen[0]
    np.testing.assert_array_equal(result.matrix, matrix)


def test_s3_persistent_failure_stops_named_and_the_rerun_resumes(s3_bucket, undisturbed, config, flaky_s3,
                                                                 fast_retries):
    client, _, _ = s3_bucket
    _, matrix = undisturbed
    loc = _s3_run(flaky_s3, "faults-persistent")
    flaky_s3.fail("503", "PUT", prefix=f"{loc.path}/pairs/part-")  # the store fails once pairs are written
    with pytest.raises(GwrayStorageError, match=rf"^storage failed writing s3://{loc.path}/pairs/part-\w+"
                                                r"\.parquet after \d+ tries \(.*HTTP status 503"):
        run(config, out=loc, progress=False)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="gwray-runs", Prefix="faults-persistent/")["Contents"]]
    assert not [k for k in keys if "/pairs/part-" in k]  # no pair file, half or whole
    flaky_s3.heal()
    result = run(config, out=loc)
    assert result.stages["activations"] == "skipped" and result.stages["pairs"] == "ran"
    np.testing.assert_array_equal(result.matrix, matrix)


def test_every_test_the_fault_inventory_names_exists():
    import re

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "faults.md").read_text()
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)", text)
    assert len(named) > 30
    missing = [f"{f}::{t}" for f, t in named
               if not re.search(rf"^def {t}\(", (root / "tests" / f).read_text(), re.MULTILINE)]
    assert missing == []
