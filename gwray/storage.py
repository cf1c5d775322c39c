"""Where a run directory lives: a local path or an object-store URI, through ``pyarrow.fs``.

Every stage writes through :class:`Location`, so ``output: s3://bucket/run`` works the same as a
local folder. Writes are whole-file and atomic: a hidden temporary name in the same folder, then a
move (a rename locally, a server-side copy on object stores). Readers skip names that start with
``.`` or ``_`` so that a temporary file left by a killed writer is never read.

Faults: an object-store operation that fails with a transient error (a 5xx, throttling, a reset
connection) is retried whole, :data:`RETRIES` times in all with exponential backoff from
:data:`BACKOFF_S` (on top of the AWS SDK's own retries of each request). A failure that persists,
and a local write that fails for want of space, quota or permission, raise
:class:`~gwray.errors.GwrayStorageError` naming the file; the temporary file is removed, so
nothing half-written remains, and a rerun resumes from the finished files.
"""
from __future__ import annotations

import errno
import io
import json
import posixpath
import re
import time
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gwray.errors import GwrayInputError, GwrayStorageError

RETRIES = 5  # tries of one object-store operation: 0.5 + 1 + 2 + 4 = 7.5 s of waiting in all
BACKOFF_S = 0.5
#: Errors of an object store worth retrying: network failures, throttling, server errors (the
#: AWS SDK's names and curl's, as pyarrow reports them). Access, missing buckets etc. are not.
_TRANSIENT = re.compile(r"NETWORK_CONNECTION|SLOW_DOWN|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|"
                        r"REQUEST_TIMEOUT|THROTTL|HTTP status (?:5\d\d|429)|curlCode|"
                        r"[Cc]onnection (?:reset|refused|aborted)|[Tt]imed? ?out|"
                        r"UNAVAILABLE|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED", re.ASCII)
_STORE_ERROR = re.compile(r"AWS Error|google::cloud")  # the store answered: a named storage error
_ROOM, _RIGHTS = "make room", "make it writable or choose another --out"
_LOCAL_FAULTS = {errno.ENOSPC: ("disk full", _ROOM), errno.EDQUOT: ("disk quota exceeded", _ROOM),
                 errno.EROFS: ("read-only filesystem", _RIGHTS),
                 errno.EACCES: ("permission denied", _RIGHTS), errno.EPERM: ("permission denied", _RIGHTS),
                 errno.EIO: ("I/O error", "check the disk")}


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class Location:
    """A file or folder on some filesystem.

    Parameters
    ----------
    fs : pyarrow.fs.FileSystem
    path : str
        Path inside ``fs`` (no scheme).
    """

    fs: pafs.FileSystem
    path: str

    @classmethod
    def parse(cls, where: "str | Location") -> "Location":
        """A local path, ``file://``, ``s3://`` or ``gs://`` URI (query options as pyarrow takes them)."""
        if isinstance(where, Location):
            return where
        where = str(where)
        if "://" not in where:
            import os

            return cls(pafs.LocalFileSystem(), os.path.abspath(where))
        try:
            fs, path = pafs.FileSystem.from_uri(where)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise GwrayInputError(f"output location {where!r}: {exc}") from exc
        return cls(fs, path.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    def __str__(self) -> str:
        return self.path if self.is_local else f"{self.fs.type_name}://{self.path}"

    def child(self, *parts: str) -> "Location":
        return Location(self.fs, posixpath.join(self.path, *parts))

    def _io(self, what: str, fn):
        """``fn()``, retried with backoff while an object store fails transiently; a persistent
        failure, and a local one of space, quota, permission or the device, become a
        :class:`GwrayStorageError` naming this location and ``what`` was being done."""
        for attempt in range(1, RETRIES + 1):
            try:
                return fn()
            except OSError as exc:
                if exc.errno in _LOCAL_FAULTS:
                    fault, fix = _LOCAL_FAULTS[exc.errno]
                    raise GwrayStorageError(f"{fault} {what} {self} ({_first_line(exc)}): {fix}, then "
                                            "rerun; finished stages and solved pairs are kept") from exc
                transient = _TRANSIENT.search(str(exc))
                if self.is_local or not (transient or _STORE_ERROR.search(str(exc))):
                    raise  # not the store failing (e.g. a damaged file): the caller names it
                if attempt == RETRIES or not transient:
                    tries = f"after {attempt} tries " if attempt > 1 else ""
                    raise GwrayStorageError(
                        f"storage failed {what} {self} {tries}({_first_line(exc)}); check the "
                        "endpoint, bucket and credentials, then rerun: finished work is kept") from exc
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))

    def _info(self) -> pafs.FileInfo:
        return self._io("reading", lambda: self.fs.get_file_info(self.path))

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def mkdirs(self) -> None:
        self._io("creating", lambda: self.fs.create_dir(self.path, recursive=True))

    def files(self, suffix: str = "", recursive: bool = False) -> list["Location"]:
        """Visible files below this folder, sorted by path; [] when the folder does not exist."""
        return [Location(self.fs, path) for path in self.file_sizes(suffix, recursive)]

    def file_sizes(self, suffix: str = "", recursive: bool = False) -> dict[str, int]:
        """Path → bytes of the visible files below this folder, sorted by path (one listing)."""
        if not self.exists():
            return {}
        selector = pafs.FileSelector(self.path, recursive=recursive)
        infos = self._io("listing", lambda: self.fs.get_file_info(selector))
        rel = lambda p: posixpath.relpath(p, self.path)  # noqa: E731
        return dict(sorted((i.path, i.size) for i in infos
                           if i.type == pafs.FileType.File and i.path.endswith(suffix)
                           and not any(_hidden(part) for part in rel(i.path).split("/"))))

    def remove(self) -> None:
        """Delete this file or folder (recursively); nothing if absent."""
        info = self._info()
        if info.type == pafs.FileType.Directory:
            self._io("deleting", lambda: self.fs.delete_dir(self.path))
        elif info.type == pafs.FileType.File:
            self._io("deleting", lambda: self.fs.delete_file(self.path))

    def move_to(self, target: "Location") -> None:
        """Move this file to ``target`` on the same filesystem (its folder is created)."""
        def move():
            self.fs.create_dir(posixpath.dirname(target.path), recursive=True)
            self.fs.move(self.path, target.path)
        self._io("moving", move)

    # -- whole-file reads and atomic writes ------------------------------------------------------
    def read_bytes(self) -> bytes:
        def read():
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        return self._io("reading", read)

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file atomically (a reader sees the old file, or the new one, never half).

        Raises
        ------
        GwrayStorageError
            No space, quota or permission (local), or the object store failed after retries;
            no temporary file is left where it could be removed.
        """
        self._io("writing", lambda: self._write_once(data))

    def _write_once(self, data: bytes) -> None:
        parent = posixpath.dirname(self.path)
        self.fs.create_dir(parent, recursive=True)
        # Object stores too get a hidden temporary key: closing an interrupted upload stream
        # (a killed job unwinding) completes it with whatever was written, so only a finished
        # write may reach the real name. The move is a server-side copy there, a rename here.
        tmp = posixpath.join(parent, f".{self.name}.{uuid.uuid4().hex}.tmp")
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, self.path)
        except BaseException:
            try:
                if self.fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                    self.fs.delete_file(tmp)
            except OSError:  # the store is down: a hidden name, skipped by every reader
                pass
            raise

    def read_json(self):
        """The file's JSON; a file that is not JSON (cut short, overwritten) is a GwrayInputError
        naming it."""
        try:
            return json.loads(self.read_bytes())
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise GwrayInputError(f"{self}: damaged, not JSON ({exc})") from None

    def write_json(self, obj) -> None:
        self.write_bytes(json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        """Read one Parquet file (only ``columns``, when given: other columns' bytes are not read).
        Pages written with a checksum are verified: a damaged page is an ``OSError``, never
        silently different numbers."""
        return self._io("reading", lambda: pq.read_table(self.path, filesystem=self.fs, columns=columns,
                                                         page_checksum_verification=True))

    def read_schema(self) -> pa.Schema:
        """The schema (and key-value metadata) of one Parquet file, from its footer alone."""
        return self._io("reading", lambda: pq.read_schema(self.path, filesystem=self.fs))

    def write_table(self, table: pa.Table, **parquet_options) -> None:
        """Write ``table`` as one Parquet file, atomically, each page with a CRC checksum."""
        buf = io.BytesIO()
        pq.write_table(table, buf, **{"write_page_checksum": True, **parquet_options})
        self.write_bytes(buf.getvalue())
