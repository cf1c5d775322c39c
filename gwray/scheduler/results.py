"""The pair-results dataset ``OUT/pairs/``: its schema, its files read and checked, what is done.

Finished pairs reach ``pairs/`` as whole Parquet files (written atomically through
:meth:`gwray.storage.Location.write_table`): ``part-*.parquet`` as they are solved, merged into
``compacted-*.parquet`` files of a few thousand pairs (:mod:`gwray.scheduler.compaction`). A
killed driver leaves only complete files, and a restarted run skips every pair already on disk,
reading the key columns only. The matrices are assembled from it by
:mod:`gwray.scheduler.assembly`.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from gwray.errors import GwrayInputError, damaged
from gwray.scheduler.plan import Plan
from gwray.storage import Location

if TYPE_CHECKING:  # the solver (numba, POT) is imported where a state is built, not by the driver
    from gwray.gw.warm import WarmState

PAIR_SCHEMA = pa.schema([
    ("checkpoint_a", pa.string()), ("layer_a", pa.string()),
    ("checkpoint_b", pa.string()), ("layer_b", pa.string()),
    ("gw", pa.float64()), ("lower_bound", pa.float64()), ("init", pa.string()),
    ("iterations", pa.int32()), ("marginal_error", pa.float64()), ("seconds", pa.float64()),
    ("n", pa.int32()), ("solver", pa.string()), ("runner_up_gap", pa.float64()),
])
KEY_COLUMNS = ["checkpoint_a", "layer_a", "checkpoint_b", "layer_b"]
LATER_COLUMNS = ("runner_up_gap",)
"""Pair-record columns added after the first release: read as null from files that lack them."""
RECORD_SCHEMA = PAIR_SCHEMA.append(pa.field("file", pa.string()))
"""What :func:`load_records` returns: the pair records and the file each came from."""
PART_PREFIX, COMPACTED_PREFIX = "part-", "compacted-"
"""File names in ``pairs/``: records as they were solved, and those merged by compaction."""
REPLACES = b"gwray.replaces"
"""Parquet metadata key of a compacted file: the JSON list of the file names it replaced."""


def pairs_dir(out: Location | str) -> Location:
    """``OUT/pairs``."""
    return Location.parse(out).child("pairs")


STATE_FIELDS = [pa.field("plan", pa.list_(pa.int32())), pa.field("duals", pa.list_(pa.float64())),
                pa.field("bound_duals", pa.list_(pa.float64())),
                pa.field("start_ends", pa.map_(pa.string(), pa.float64()))]
"""Optional columns of ``pairs/`` files (``gw.warm_start``): the pair's solver state
(:class:`gwray.gw.warm.WarmState`), the warm start of the same pair at the next checkpoint, also
after a resume. ``plan``: the plan as its permutation (``plan[i]`` = the sample of layer_b matched
to sample i of layer_a; null when the plan is not a permutation); ``duals`` / ``bound_duals``: the
column duals (n float64) of the last CG linear step and of the TLB's assignment (null when not
computed); ``start_ends``: each configured start's final value over the pair's best, at the last
checkpoint where the start ran (the pruning rule's input)."""


def records_table(records: Sequence[dict]) -> pa.Table:
    """Pair records (dicts with the :data:`PAIR_SCHEMA` fields, optionally the state fields) → a
    table with that schema, plus the :data:`STATE_FIELDS` columns when any record carries a plan."""
    with_plan = any(r.get("plan") is not None for r in records)
    schema = pa.schema([*PAIR_SCHEMA, *STATE_FIELDS]) if with_plan else PAIR_SCHEMA
    return pa.Table.from_pylist([{f: r.get(f) for f in schema.names} for r in records], schema=schema)


def write_records(out: Location | str, records: Sequence[dict]) -> Location:
    """Append pair records to ``OUT/pairs/`` as a new whole Parquet file.

    Returns
    -------
    Location
        The file written (``pairs/part-<uuid>.parquet``); readers never see it half-written.
    """
    target = pairs_dir(out).child(f"{PART_PREFIX}{uuid.uuid4().hex}.parquet")
    target.write_table(records_table(records))
    return target


def read_pairs(loc: Location, columns: Sequence[str] | None = None) -> pa.Table:
    """One file of ``pairs/``, checked: every :data:`PAIR_SCHEMA` column present with its type
    (cast), keys and ``gw`` without missing values, ``gw`` finite.

    Parameters
    ----------
    loc : Location
    columns : sequence of str, optional
        Read only these :data:`PAIR_SCHEMA` columns (the others' bytes are not read; the schema
        is still checked); default all of them, in schema order.

    Returns
    -------
    pyarrow.Table
        ``columns`` with the :data:`PAIR_SCHEMA` types; the schema metadata is the file's.

    Raises
    ------
    GwrayInputError
        Naming the file: not ``.parquet``, unreadable, missing columns, wrong types, missing or
        non-finite values; a :class:`~gwray.errors.GwrayDamagedError` for a file gwray wrote.
    """
    if not loc.name.endswith(".parquet"):
        raise GwrayInputError(f"pair results file {loc}: not a .parquet file (foreign file in pairs/)")
    columns = PAIR_SCHEMA.names if columns is None else list(columns)
    schema = _read_or_fail(loc, loc.read_schema)
    missing = [f for f in PAIR_SCHEMA.names if f not in schema.names and f not in LATER_COLUMNS]
    if missing:
        raise _bad_file(loc, f"not a pair-results file (missing columns {', '.join(missing)})")
    table = _read_or_fail(loc, lambda: loc.read_table(columns=[c for c in columns
                                                                if c in schema.names]))
    for c in columns:  # a file of an older gwray: its later columns are unknown (null)
        if c not in schema.names:
            table = table.append_column(c, pa.nulls(table.num_rows, PAIR_SCHEMA.field(c).type))
    table = table.select(columns)
    try:
        table = table.cast(pa.schema([PAIR_SCHEMA.field(c) for c in columns], schema.metadata))
    except (pa.ArrowException, ValueError) as exc:
        raise _bad_file(loc, f"wrong column types ({exc})") from None
    for name in [c for c in KEY_COLUMNS + ["gw"] if c in columns]:
        if table.column(name).null_count:
            raise _bad_file(loc, f"column {name} has missing values")
    if "gw" in columns and not np.all(np.isfinite(table.column("gw").to_numpy())):
        raise _bad_file(loc, "column gw has non-finite values")
    return table


def _bad_file(loc: Location, why: str) -> GwrayInputError:
    """The error for a bad file in ``pairs/``: one gwray wrote (``part-*``, ``compacted-*``) is
    damaged, and ``gwray run`` sets it aside and solves its pairs again
    (:class:`~gwray.errors.GwrayDamagedError`); any other file is the user's to fix."""
    what = f"pair results file {loc}: {why}"
    if loc.name.startswith((PART_PREFIX, COMPACTED_PREFIX)):
        return damaged(what, ("pairs", loc.path), "rerun `gwray run`: it sets the file aside and "
                                                  "solves its pairs again")
    return GwrayInputError(what)


def _read_or_fail(loc: Location, read):
    try:
        return read()
    except (pa.ArrowException, OSError) as exc:
        msg = str(exc).splitlines()[0].rsplit("': ", 1)[-1] if str(exc) else type(exc).__name__
        raise _bad_file(loc, f"unreadable Parquet ({msg})") from None


def pair_files(out: Location | str) -> list[Location]:
    """The files of ``OUT/pairs/``, after finishing any compaction a killed run left half done.

    A compacted file lists the files it replaced in its metadata (:data:`REPLACES`); those
    still present hold only pairs the compacted file holds too, and are removed here, so that
    every pair is on disk once.

    Raises
    ------
    GwrayInputError
        A compacted file that cannot be read (named).
    """
    files = pairs_dir(out).files()
    replaced: set[str] = set()
    for loc in files:
        if loc.name.startswith(COMPACTED_PREFIX) and loc.name.endswith(".parquet"):
            replaced |= set(replaced_by(loc))
    for loc in files:
        if loc.name in replaced:
            loc.remove()
    return [loc for loc in files if loc.name not in replaced]


def replaced_by(loc: Location) -> list[str]:
    """Names of the files a compacted file replaced (its :data:`REPLACES` metadata)."""
    meta = _read_or_fail(loc, loc.read_schema).metadata or {}
    return json.loads(meta.get(REPLACES, b"[]"))


def load_records(out: Location | str) -> pa.Table:
    """Every pair record in ``OUT/pairs/``, plus a ``file`` column saying where it came from.

    Raises
    ------
    GwrayInputError
        A file in ``pairs/`` that is not Parquet, cannot be read, lacks the pair-record columns,
        or has missing / non-finite values; the message names the file.
    """
    tables = []
    for loc in pair_files(out):
        table = read_pairs(loc).replace_schema_metadata(None)
        tables.append(table.append_column("file", pa.array([str(loc)] * table.num_rows, pa.string())))
    return pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()


def key_positions(plan: Plan, table: pa.Table) -> np.ndarray:
    """Plan position of each row of a table with the :data:`KEY_COLUMNS` (-1: not planned)."""
    return plan.positions(*(table.column(c) for c in KEY_COLUMNS))


def done_pairs(out: Location | str, plan: Plan) -> tuple[np.ndarray, list[tuple[Location, int]]]:
    """Which planned pairs ``OUT/pairs/`` holds, from the key columns.

    Every pair-record column (:data:`PAIR_SCHEMA`) is read, so that each of its pages' checksums
    is verified: a rerun skips the pairs stage only over files whose records are intact, also
    where the damage lies in a column this function does not need. The optional, large
    :data:`STATE_FIELDS` are left unread: they only start a solve, and :func:`load_states`
    skips a file whose state pages fail their checksums (those pairs start cold).

    Returns
    -------
    done : numpy.ndarray, (len(plan),) bool
    files : list of (Location, int)
        Every file of ``pairs/`` (:func:`pair_files`) and its row count.

    Raises
    ------
    GwrayInputError
        A bad file in ``pairs/`` (:func:`read_pairs`), named.
    """
    done, files = np.zeros(len(plan), dtype=bool), []
    for loc in pair_files(out):
        table = read_pairs(loc)
        pos = key_positions(plan, table)
        done[pos[pos >= 0]] = True
        files.append((loc, table.num_rows))
    return done, files


def warm_state(record: dict) -> WarmState | None:
    """The :class:`~gwray.gw.warm.WarmState` stored in a pair record (a row with the
    :data:`STATE_FIELDS`), or None when it has no plan."""
    from gwray.gw.warm import WarmState

    if record.get("plan") is None:
        return None
    duals, bound_duals, ends = (record.get(f) for f in ("duals", "bound_duals", "start_ends"))
    return WarmState(np.asarray(record["plan"], dtype=np.int32),
                     None if duals is None else np.asarray(duals, dtype=np.float64),
                     None if bound_duals is None else np.asarray(bound_duals, dtype=np.float64),
                     dict(ends or {}), float(record.get("gw", np.nan)))


def load_states(out: Location | str, keys: set) -> dict[tuple, WarmState]:
    """The stored solver states of the pairs ``keys`` in ``OUT/pairs/``: ``{key: WarmState}``;
    pairs stored without a plan are left out. Reads only the key and state columns, of the files
    that have them (a file of an older gwray with only ``plan`` gives plans without duals); the
    state's ``value`` is the record's ``gw``."""
    states: dict = {}
    for loc in pair_files(out):
        for columns in ([f.name for f in STATE_FIELDS], ["plan"]):
            try:
                table = loc.read_table(columns=KEY_COLUMNS + ["gw"] + columns)
                break
            except (pa.ArrowException, OSError, KeyError):
                continue
        else:
            continue  # no state columns: a run without warm starts
        for row in table.to_pylist():
            key = tuple(row[c] for c in KEY_COLUMNS)
            if key in keys and (state := warm_state(row)) is not None:
                states[key] = state
    return states


def row_keys(table: pa.Table) -> list[tuple[str, str, str, str]]:
    """The ``(checkpoint_a, layer_a, checkpoint_b, layer_b)`` key of each row, in row order."""
    return list(zip(*(table.column(c).to_pylist() for c in KEY_COLUMNS)))
