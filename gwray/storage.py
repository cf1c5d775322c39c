"""Where a run directory lives: a local path or an object-store URI, through ``pyarrow.fs``.

Every stage writes through :class:`Location`, so ``output: s3://bucket/run`` works the same as a
local folder. Writes are whole-file and atomic: a hidden temporary name in the same folder, then a
move (a rename locally, a server-side copy on object stores). Readers skip names that start with
``.`` or ``_`` so that a temporary file left by a killed writer is never read.
"""
from __future__ import annotations

import io
import json
import posixpath
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gwray.errors import GwrayInputError


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


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

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def mkdirs(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def files(self, suffix: str = "", recursive: bool = False) -> list["Location"]:
        """Visible files below this folder, sorted by path; [] when the folder does not exist."""
        if not self.exists():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=recursive))
        rel = lambda p: posixpath.relpath(p, self.path)  # noqa: E731
        return sorted(
            (Location(self.fs, i.path) for i in infos
             if i.type == pafs.FileType.File and i.path.endswith(suffix)
             and not any(_hidden(part) for part in rel(i.path).split("/"))),
            key=lambda loc: loc.path,
        )

    def remove(self) -> None:
        """Delete this file or folder (recursively); nothing if absent."""
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path)

    # -- whole-file reads and atomic writes ------------------------------------------------------
    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file atomically (a reader sees the old file, or the new one, never half)."""
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
            if self.fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                self.fs.delete_file(tmp)
            raise

    def read_json(self):
        return json.loads(self.read_bytes())

    def write_json(self, obj) -> None:
        self.write_bytes(json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        """Read one Parquet file (only ``columns``, when given: other columns' bytes are not read)."""
        return pq.read_table(self.path, filesystem=self.fs, columns=columns)

    def write_table(self, table: pa.Table, **parquet_options) -> None:
        """Write ``table`` as one Parquet file, atomically."""
        buf = io.BytesIO()
        pq.write_table(table, buf, **parquet_options)
        self.write_bytes(buf.getvalue())
