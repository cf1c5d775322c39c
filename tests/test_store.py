"""Activation store: exact round trip, one layer reads only its partition, NaN aborts cleanly,
the dataset reads as one hive dataset in pandas, pyarrow.dataset and duckdb."""
from __future__ import annotations

import pickle
import re

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from gwray.activations.store import ActivationStore, ActivationWriter
from gwray.errors import GwrayDamagedError, GwrayInputError
from gwray.storage import Location


class CountingHandler(pafs.FileSystemHandler):
    """Local filesystem that records every file opened for reading."""

    def __init__(self):
        self.fs = pafs.LocalFileSystem()
        self.opened: list[str] = []

    def get_type_name(self):
        return "counting"

    def equals(self, other):
        return self is other

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        self.opened.append(path)
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        self.opened.append(path)
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)


def _write(root, dtype="float32", layers=("a", "b", "c"), n=10, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    data = {name: rng.standard_normal((n, 3 + i)).astype(np.float32) for i, name in enumerate(layers)}
    writer = ActivationWriter(root, "ck0", list(layers), dtype=dtype)
    order = rng.permutation(n)  # parts arrive out of order: the reader restores sample order
    for start in range(0, n, batch):
        ids = np.sort(order[start:start + batch])
        for name in layers:
            writer.write(name, ids, data[name][ids])
    manifest = writer.commit({"pooling": "mean", "probe_hash": "abc"})
    return data, manifest


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_exact(tmp_path, dtype):
    data, manifest = _write(tmp_path, dtype)
    store = ActivationStore(tmp_path)
    assert store.checkpoints() == ["ck0"]
    assert store.layer_names("ck0") == ["a", "b", "c"]
    assert manifest["dims"] == [3, 4, 5] and manifest["n_rows"] == 10 and manifest["pooling"] == "mean"
    np.testing.assert_array_equal(store.sample_ids("ck0"), np.arange(10))
    for k, name in enumerate(["a", "b", "c"]):
        got = store.read_layer("ck0", name)
        want = data[name] if dtype == "float32" else data[name].astype(np.float16).astype(np.float32)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(store.read_layer("ck0", k), got)
    part = next((tmp_path / "activations/checkpoint=ck0/layer=b").glob("*.parquet"))
    vtype = pq.read_schema(part).field("vector").type
    assert pa.types.is_list(vtype) and vtype.value_type == (pa.float32() if dtype == "float32" else pa.float16())


def test_one_layer_reads_only_its_partition(tmp_path):
    _write(tmp_path, layers=("a", "b", "c", "d"), n=40, batch=8)
    handler = CountingHandler()
    store = ActivationStore(Location(pafs.PyFileSystem(handler), str(tmp_path)))
    store.read_layer("ck0", "c")
    assert handler.opened, "nothing was read"
    others = [p for p in handler.opened if not (p.endswith("activation_manifests/ck0.json") or "/layer=c/" in p)]
    assert others == []
    assert len({p for p in handler.opened if "/layer=c/" in p}) == 5  # its five parts, nothing else


def test_nan_names_layer_and_sample_and_abort_leaves_nothing(tmp_path):
    writer = ActivationWriter(tmp_path, "ck0", ["x", "y"])
    writer.write("x", [0, 1], np.ones((2, 3)))
    bad = np.ones((2, 3))
    bad[1, 2] = np.inf
    with pytest.raises(GwrayInputError, match=r"^layer y: NaN or inf in the activation of sample 7$"):
        writer.write("y", [6, 7], bad)
    writer.abort()
    assert not (tmp_path / "activations/checkpoint=ck0").exists()
    assert ActivationStore(tmp_path).checkpoints() == []


def test_incomplete_checkpoint_is_not_readable_and_writer_is_picklable(tmp_path):
    writer = ActivationWriter(tmp_path, "ck1", ["x"])
    copy = pickle.loads(pickle.dumps(writer))  # what a Ray actor receives: it must not wipe the dir
    writer.write("x", [0, 1], np.zeros((2, 2)))
    copy.write("x", [2, 3], np.ones((2, 2)))
    store = ActivationStore(tmp_path)
    assert not store.is_complete("ck1") and store.checkpoints() == []
    with pytest.raises(GwrayInputError, match="checkpoint 'ck1': no complete activations"):
        store.read_layer("ck1", "x")
    writer.commit()
    np.testing.assert_array_equal(store.read_layer("ck1", "x")[2:], np.ones((2, 2)))
    ActivationWriter(tmp_path, "ck1", ["x"])  # a new writer rebuilds the checkpoint from nothing
    assert not (tmp_path / "activations/checkpoint=ck1").exists() and store.checkpoints() == []


LAYERS = ("embeddings", "encoder.layer.0", "head out/1")  # dots, a space and a slash in names


def _two_checkpoints(root):
    """ck0 and ck1 with the LAYERS (widths 3, 4, 5), 6 samples; returns {(ckpt, layer): (6, d)}."""
    rng, want = np.random.default_rng(1), {}
    for ckpt in ("ck0", "ck1"):
        writer = ActivationWriter(root, ckpt, list(LAYERS))
        for i, name in enumerate(LAYERS):
            want[ckpt, name] = rng.standard_normal((6, 3 + i)).astype(np.float32)
            writer.write(name, np.arange(3), want[ckpt, name][:3])
            writer.write(name, np.arange(3, 6), want[ckpt, name][3:])
        writer.commit()
    return want


def _check_rows(frame, want, layers=LAYERS):
    """Every (checkpoint, layer, sample) row of a pandas frame equals what was written."""
    assert len(frame) == 6 * len(layers) * 2
    for (ckpt, layer, sid), vec in zip(zip(frame["checkpoint"].astype(str), frame["layer"].astype(str),
                                           frame["sample_id"]), frame["vector"]):
        assert layer in layers
        np.testing.assert_array_equal(np.asarray(vec, dtype=np.float32), want[ckpt, layer][sid])


def test_dataset_reads_whole_and_by_layer_in_pandas_pyarrow_and_duckdb(tmp_path):
    import duckdb
    import pandas as pd
    import pyarrow.dataset as ds

    want = _two_checkpoints(tmp_path)
    root = tmp_path / "activations"
    assert {p.suffix for p in root.rglob("*") if p.is_file()} == {".parquet"}
    _check_rows(pd.read_parquet(root), want)
    _check_rows(ds.dataset(root, format="parquet", partitioning="hive").to_table().to_pandas(), want)
    sql = f"SELECT * FROM read_parquet('{root}/**', hive_partitioning = true)"
    _check_rows(duckdb.sql(sql).df(), want)

    one = "head out/1"
    _check_rows(pd.read_parquet(root, filters=[("layer", "==", one)]), want, [one])
    dataset = ds.dataset(root, format="parquet", partitioning="hive")
    _check_rows(dataset.to_table(filter=ds.field("layer") == one).to_pandas(), want, [one])
    _check_rows(duckdb.sql(f"{sql} WHERE layer = '{one}'").df(), want, [one])
    # the layer names join to pairs / gw_matrix, which name layers the same way
    assert set(pd.read_parquet(root)["layer"].astype(str)) == set(LAYERS)


def _cut(path):
    path.write_bytes(path.read_bytes()[:-30])


@pytest.mark.parametrize("damage, reason, error", [
    (lambda d: next((d / "activations/checkpoint=ck0/layer=b").glob("*.parquet")).unlink(),
     r"^layer b holds 1 of its 2 parts, [\d,]+ of [\d,]+ bytes$",
     r"^activation layer .*layer=b: 5 rows, the manifest says 10 \(a part is missing\); rerun"),
    (lambda d: _cut(next((d / "activations/checkpoint=ck0/layer=b").glob("*.parquet"))),
     r"^layer b holds 2 of its 2 parts, [\d,]+ of [\d,]+ bytes$",
     r"^activation part .*layer=b/part-\d+\.parquet: unreadable \(.*\); rerun `gwray run` to extract "
     r"checkpoint ck0 again$"),
    (lambda d: _cut(d / "activation_manifests/ck0.json"),
     r"^its manifest activation_manifests/ck0.json is damaged$",
     r"^.*activation_manifests/ck0.json: damaged, not JSON \(.*\); rerun `gwray run` to extract"),
], ids=["part-missing", "part-truncated", "manifest-damaged"])
def test_damaged_checkpoint_is_seen_in_a_listing_and_named_when_read(tmp_path, damage, reason, error):
    _write(tmp_path, n=10, batch=5)
    assert ActivationStore(tmp_path).damage("ck0") is None
    damage(tmp_path)
    store = ActivationStore(tmp_path)
    assert re.match(reason, store.damage("ck0")), store.damage("ck0")
    with pytest.raises(GwrayDamagedError) as err:
        store.read_layer("ck0", "b")
    assert re.match(error, str(err.value)) and err.value.piece == ("activations", "ck0"), str(err.value)
    assert pickle.loads(pickle.dumps(err.value)).piece == ("activations", "ck0")  # as from a Ray worker
