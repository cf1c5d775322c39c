import pyarrow as pa
import pytest

from gwray.errors import GwrayInputError
from gwray.storage import Location


def test_atomic_write_and_listing_skips_temporaries(tmp_path):
    root = Location.parse(tmp_path / "run")
    root.child("pairs", "a.parquet").write_table(pa.table({"x": [1, 2]}))
    root.child("pairs", ".b.parquet.123.tmp").write_bytes(b"half")  # a killed writer's leftover
    root.child("pairs", "c.json").write_json({"k": 1})
    names = [f.name for f in root.child("pairs").files(".parquet")]
    assert names == ["a.parquet"]
    assert root.child("pairs", "a.parquet").read_table().column("x").to_pylist() == [1, 2]
    assert root.child("pairs", "c.json").read_json() == {"k": 1}
    # no temporary file is left next to the real ones
    assert sorted(p.name for p in (tmp_path / "run" / "pairs").iterdir()) == [
        ".b.parquet.123.tmp", "a.parquet", "c.json"]


def test_failed_write_leaves_nothing(tmp_path):
    loc = Location.parse(tmp_path / "x.bin")

    with pytest.raises(TypeError):  # fails after the temporary file was opened
        loc.write_bytes(object())
    assert list(tmp_path.iterdir()) == []


def test_column_projection_reads_one_column(tmp_path):
    loc = Location.parse(tmp_path / "t.parquet")
    loc.write_table(pa.table({"a": list(range(1000)), "b": [1.0] * 1000}))
    assert loc.read_table(columns=["b"]).column_names == ["b"]


def test_bad_uri_is_named():
    with pytest.raises(GwrayInputError, match="nosuch://x"):
        Location.parse("nosuch://x")


def test_s3_writes_are_whole_and_leave_no_temporary(s3_bucket):
    client, _, fs = s3_bucket
    root = Location(fs, "gwray-runs/storage-test")
    root.child("pairs", "a.parquet").write_table(pa.table({"x": [1, 2]}))
    with pytest.raises(TypeError):  # an interrupted write: nothing may reach the real key
        root.child("pairs", "b.parquet").write_bytes(object())
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="gwray-runs",
                                                     Prefix="storage-test/").get("Contents", [])]
    assert [k for k in keys if not k.endswith("/")] == ["storage-test/pairs/a.parquet"]
    assert [f.name for f in root.child("pairs").files(".parquet")] == ["a.parquet"]
    assert root.child("pairs", "a.parquet").read_table().column("x").to_pylist() == [1, 2]
