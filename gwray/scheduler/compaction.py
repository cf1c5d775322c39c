"""Writing finished pairs to ``OUT/pairs/`` as few files, without ever losing or duplicating one.

Records are buffered for up to :data:`FLUSH_SECONDS` and written as one ``part-*.parquet`` file
(atomically), so a killed driver loses at most those seconds of solving. Once the part files hold
R = ``resources.pair_file_rows`` pairs they are merged into one ``compacted-*.parquet`` file whose
metadata lists the parts it replaced (:data:`~gwray.scheduler.results.REPLACES`); the parts are
removed only after it is written. A kill between the two leaves every pair twice on disk, and the
next reader (:func:`~gwray.scheduler.results.pair_files`) finishes the removal first. At the end
of a run the parts and the compacted files smaller than R are merged into one, so a finished sweep
of P pairs has at most ``⌊P / R⌋ + 1`` files.
"""
from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Sequence

import pyarrow as pa

from gwray.scheduler.results import (COMPACTED_PREFIX, PART_PREFIX, REPLACES, pairs_dir,
                                     records_table)
from gwray.storage import Location

FLUSH_SECONDS = 2.0
"""Finished records wait at most this long (plus one batch) in the driver before a part file."""
KILL_HOOK = "GWRAY_TEST_KILL"
"""Test hook: when this environment variable is ``compaction`` the driver SIGKILLs itself between
writing a compacted file and removing the files it replaced; ``pairs:N``, once this run has solved
N pairs or more (their part file written first). For tests and ``bench/sweep_scale.py``."""


def _hooked(point: str, solved: int = 0) -> bool:
    """True when the :data:`KILL_HOOK` asks for the driver to die at ``point``."""
    want = os.environ.get(KILL_HOOK, "")
    return want == point or (point == "pairs" and want.startswith("pairs:") and solved >= int(want[6:]))


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class PairSink:
    """The driver's writer of ``OUT/pairs/``: buffers records, writes parts, compacts them.

    Parameters
    ----------
    out : Location or str
        Run directory.
    files : sequence of (Location, int)
        The files already in ``pairs/`` and their row counts
        (:func:`~gwray.scheduler.results.done_pairs`): parts of a killed run are compacted with
        the new ones, small compacted files merged at :meth:`close`.
    compact_rows : int
        Pairs per compacted file (``resources.pair_file_rows``: 5,000 makes a sweep of 950,000
        pairs ~190 files of ~0.15 MB); 0 never compacts (every flush stays its own part file).
    flush_seconds : float
        :data:`FLUSH_SECONDS`; 0 writes every :meth:`add` at once.
    """

    def __init__(self, out: Location | str, files: Sequence[tuple[Location, int]], compact_rows: int,
                 flush_seconds: float = FLUSH_SECONDS):
        self.dir = pairs_dir(out)
        self.compact_rows, self.flush_seconds = compact_rows, flush_seconds
        self.buffer: list[dict] = []
        # part files not compacted yet: (where, its table when this run wrote it, rows)
        self.parts = [(loc, None, rows) for loc, rows in files if loc.name.startswith(PART_PREFIX)]
        self.small = [(loc, None, rows) for loc, rows in files  # merged at close
                      if not loc.name.startswith(PART_PREFIX) and rows < compact_rows]
        self.written, self.last = 0, time.monotonic()

    def add(self, records: list[dict]) -> None:
        """Buffer one batch's records; write them (and compact) when :meth:`due`."""
        self.buffer += records
        if _hooked("pairs", self.written + len(self.buffer)):
            self.flush()
            _kill()
        if self.due():
            self.flush()

    def due(self) -> bool:
        """True when buffered records have waited ``flush_seconds``."""
        return bool(self.buffer) and time.monotonic() - self.last >= self.flush_seconds

    def flush(self) -> None:
        """Write the buffered records as one part file; compact the parts once they hold
        ``compact_rows`` pairs."""
        self.last = time.monotonic()
        if self.buffer:
            table = records_table(self.buffer)
            loc = self.dir.child(f"{PART_PREFIX}{uuid.uuid4().hex}.parquet")
            loc.write_table(table)
            self.parts.append((loc, table, table.num_rows))
            self.buffer = []
            self.written += table.num_rows
        if self.compact_rows and sum(rows for _, _, rows in self.parts) >= self.compact_rows:
            self._merge(self.parts)
            self.parts = []

    def close(self) -> None:
        """Write what is buffered, then merge the parts and the small compacted files into one."""
        self.flush()
        if self.compact_rows and len(self.parts) + len(self.small) > 1:
            self._merge(self.parts + self.small)
            self.parts, self.small = [], []

    def _merge(self, sources: list[tuple[Location, pa.Table | None, int]]) -> None:
        """One compacted file of ``sources``' rows; the sources are removed once it is written."""
        tables = [table if table is not None else loc.read_table() for loc, table, _ in sources]
        merged = pa.concat_tables([t.replace_schema_metadata(None) for t in tables],
                                  promote_options="default")
        names = [loc.name for loc, _, _ in sources]
        target = self.dir.child(f"{COMPACTED_PREFIX}{uuid.uuid4().hex}.parquet")
        target.write_table(merged.replace_schema_metadata({REPLACES: json.dumps(names).encode()}))
        if _hooked("compaction"):
            _kill()
        for loc, _, _ in sources:
            loc.remove()
