import errno
import os

import pyarrow as pa
import pytest

import gwray.storage
from gwray.errors import GwrayInputError, GwrayStorageError
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


@pytest.mark.parametrize("error, named, advice", [(errno.ENOSPC, "disk full", "make room"),
                                                  (errno.EDQUOT, "disk quota exceeded", "make room"),
                                                  (errno.EROFS, "read-only filesystem", "make it writable")])
def test_disk_full_is_named_and_leaves_the_old_file(tmp_path, full_disk, error, named, advice):
    fs, disk = full_disk(1000, error)
    loc = Location(fs, str(tmp_path / "run" / "pairs" / "part-1.parquet"))
    loc.write_bytes(b"old" * 100)
    with pytest.raises(GwrayStorageError) as err:
        loc.write_bytes(b"new" * 1000)
    msg = str(err.value)
    assert msg.startswith(f"{named} writing {loc} (") and advice in msg and "\n" not in msg
    assert os.listdir(tmp_path / "run" / "pairs") == ["part-1.parquet"]  # no temporary left
    assert loc.read_bytes() == b"old" * 100
    disk.free = 10**6  # room again: the same write goes through
    loc.write_bytes(b"new" * 1000)
    assert loc.read_bytes() == b"new" * 1000


@pytest.mark.parametrize("kind", ["503", "reset"])
def test_s3_transient_failures_are_retried(flaky_s3, fast_retries, kind):
    root = Location(flaky_s3.fs, f"gwray-runs/transient-{kind}")
    flaky_s3.fail(kind, "PUT", count=3)  # 3 failed tries of the first write, then it goes through
    root.child("pairs", "a.parquet").write_table(pa.table({"x": [1, 2]}))
    assert len(flaky_s3.failed) == 3 and all(f[2] == kind for f in flaky_s3.failed)
    flaky_s3.fail(kind, "GET", count=2)
    assert root.child("pairs", "a.parquet").read_table().column("x").to_pylist() == [1, 2]
    assert len(flaky_s3.failed) == 2


def test_s3_persistent_failure_is_named_and_nothing_reaches_the_key(s3_bucket, flaky_s3, fast_retries):
    client = s3_bucket[0]
    loc = Location(flaky_s3.fs, "gwray-runs/persistent/pairs/a.parquet")
    flaky_s3.fail("503", "PUT")
    with pytest.raises(GwrayStorageError) as err:
        loc.write_table(pa.table({"x": [1]}))
    msg = str(err.value)
    assert msg.startswith(f"storage failed writing s3://{loc.path} after {gwray.storage.RETRIES} tries (")
    assert "HTTP status 503" in msg and "rerun" in msg and "\n" not in msg
    assert len(flaky_s3.failed) == gwray.storage.RETRIES
    flaky_s3.heal()
    listed = client.list_objects_v2(Bucket="gwray-runs", Prefix="persistent/").get("Contents", [])
    assert [o["Key"] for o in listed if not o["Key"].endswith("/")] == []


def test_s3_access_denied_is_not_retried(flaky_s3, fast_retries):
    flaky_s3.fail("403", "HEAD")
    with pytest.raises(GwrayStorageError, match=r"^storage failed reading s3://gwray-runs/denied \(.*ACCESS_DENIED"):
        Location(flaky_s3.fs, "gwray-runs/denied").read_bytes()
    assert len(flaky_s3.failed) == 1
