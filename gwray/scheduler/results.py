"""The pair-results dataset ``OUT/pairs/`` and the GW matrices assembled from it.

Each finished batch becomes one whole Parquet file (written atomically through
:meth:`gwray.storage.Location.write_table`), so a killed driver leaves only complete files and a
restarted run skips every pair already on disk. Assembly checks that each planned pair is present
exactly once before it writes ``gw_matrix.parquet`` / ``gw_matrix.npy`` (and ``cross/``).
"""
from __future__ import annotations

import io
import re
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from gwray.errors import GwrayInputError
from gwray.scheduler.plan import PairTask, checkpoint_pairs
from gwray.storage import Location

if TYPE_CHECKING:  # the solver (numba, POT) is imported where a state is built, not by the driver
    from gwray.gw.warm import WarmState

PAIR_SCHEMA = pa.schema([
    ("checkpoint_a", pa.string()), ("layer_a", pa.string()),
    ("checkpoint_b", pa.string()), ("layer_b", pa.string()),
    ("gw", pa.float64()), ("lower_bound", pa.float64()), ("init", pa.string()),
    ("iterations", pa.int32()), ("marginal_error", pa.float64()), ("seconds", pa.float64()),
    ("n", pa.int32()), ("solver", pa.string()),
])
KEY_COLUMNS = ["checkpoint_a", "layer_a", "checkpoint_b", "layer_b"]
MATRIX_SCHEMA = pa.schema([("checkpoint", pa.string()), ("layer_i", pa.string()),
                           ("layer_j", pa.string()), ("gw", pa.float64()),
                           ("lower_bound", pa.float64())])
CROSS_SCHEMA = pa.schema([("checkpoint_a", pa.string()), ("checkpoint_b", pa.string())]
                         + [MATRIX_SCHEMA.field(k) for k in ("layer_i", "layer_j", "gw", "lower_bound")])


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
    """Append one batch of pair records to ``OUT/pairs/`` as a new whole Parquet file.

    Returns
    -------
    Location
        The file written (``pairs/part-<uuid>.parquet``); readers never see it half-written.
    """
    target = pairs_dir(out).child(f"part-{uuid.uuid4().hex}.parquet")
    target.write_table(records_table(records))
    return target


def _read_one(loc: Location) -> pa.Table:
    if not loc.name.endswith(".parquet"):
        raise GwrayInputError(f"pair results file {loc}: not a .parquet file (foreign file in pairs/)")
    try:
        table = loc.read_table()
    except (pa.ArrowException, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GwrayInputError(f"pair results file {loc}: unreadable Parquet ({msg})") from None
    missing = [f for f in PAIR_SCHEMA.names if f not in table.column_names]
    if missing:
        raise GwrayInputError(f"pair results file {loc}: not a pair-results file "
                              f"(missing columns {', '.join(missing)})")
    try:
        table = table.select(PAIR_SCHEMA.names).cast(PAIR_SCHEMA)
    except (pa.ArrowException, ValueError) as exc:
        raise GwrayInputError(f"pair results file {loc}: wrong column types ({exc})") from None
    for name in KEY_COLUMNS + ["gw"]:
        if table.column(name).null_count:
            raise GwrayInputError(f"pair results file {loc}: column {name} has missing values")
    if not np.all(np.isfinite(table.column("gw").to_numpy())):
        raise GwrayInputError(f"pair results file {loc}: column gw has non-finite values")
    return table.append_column("file", pa.array([str(loc)] * table.num_rows, pa.string()))


def load_records(out: Location | str) -> pa.Table:
    """Every pair record in ``OUT/pairs/``, plus a ``file`` column saying where it came from.

    Raises
    ------
    GwrayInputError
        A file in ``pairs/`` that is not Parquet, cannot be read, lacks the pair-record columns,
        or has missing / non-finite values; the message names the file.
    """
    tables = [_read_one(loc) for loc in pairs_dir(out).files()]
    if not tables:
        return PAIR_SCHEMA.append(pa.field("file", pa.string())).empty_table()
    return pa.concat_tables(tables)


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
    for loc in pairs_dir(out).files():
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


def done_keys(table: pa.Table) -> set[tuple[str, str, str, str]]:
    """The pair keys present in ``table``."""
    return set(row_keys(table))


def _planned_rows(table: pa.Table, plan: Sequence[PairTask], where: Location) -> dict[tuple, dict]:
    """Planned key → its one record; errors on duplicates and on planned pairs that are missing."""
    planned = {t.key for t in plan}
    rows: dict[tuple, dict] = {}
    for rec in table.to_pylist():
        key = tuple(rec[c] for c in KEY_COLUMNS)
        if key not in planned:
            continue  # a pair of another plan (e.g. a different layer selection): not ours
        if key in rows:
            raise GwrayInputError(f"pair results file {rec['file']}: pair {'/'.join(key)} also in "
                                  f"{rows[key]['file']} (each pair must be present once)")
        rows[key] = rec
    missing = [k for k in (t.key for t in plan) if k not in rows]
    if missing:
        raise GwrayInputError(f"pair results {where}: {len(missing)} planned pairs "
                              f"missing, e.g. {'/'.join(missing[0])}")
    return rows


def _layer_order(plan: Sequence[PairTask]) -> dict[str, list[str]]:
    layers = getattr(plan, "layers", None)
    if layers is not None:
        return {c: list(v) for c, v in layers.items()}
    order: dict[str, list[str]] = {}
    for t in plan:  # canonical plan order lists each checkpoint's layers in depth order
        for c, layer in t.cost_keys:
            if layer not in order.setdefault(c, []):
                order[c].append(layer)
    return order


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def assemble_matrices(out: Location | str, plan: Sequence[PairTask], *,
                      records: pa.Table | None = None) -> dict:
    """Build the GW matrices of a finished run and write them next to ``OUT/pairs/``.

    Parameters
    ----------
    out : Location or str
        Run directory.
    plan : sequence of PairTask
        What should have been solved (a :class:`~gwray.scheduler.plan.Plan`, or its tasks in
        plan order).
    records : pyarrow.Table, optional
        :func:`load_records` of ``out`` when the caller already has it (saves a second read).

    Returns
    -------
    dict
        ``{"layers": {ckpt: names}, "gw": {ckpt: (L, L)}, "lower_bound": {ckpt: (L, L)},
        "cross": {(a, b): {"gw": (L_a, L_b), "lower_bound": (L_a, L_b)}}}``. Within-checkpoint
        matrices are symmetric with a zero diagonal; cross matrices have rows = layers of ``a``.

    Writes ``OUT/gw_matrix.parquet`` (``checkpoint, layer_i, layer_j, gw, lower_bound``, all
    ``L_c × L_c`` cells of each checkpoint), ``OUT/gw_matrix.npy`` ((L, L) for one checkpoint,
    (C, L, L) for C checkpoints of equal depth; not written — and removed if an earlier run left
    one — when depths differ), ``OUT/gw/<id>.npy`` ((L_c, L_c) per checkpoint, whenever there
    are several) and, with cross pairs, ``OUT/cross/gw_matrix.parquet`` (``checkpoint_a,
    checkpoint_b, layer_i, layer_j, gw, lower_bound``) plus ``OUT/cross/<a>__<b>.npy``.

    Raises
    ------
    GwrayInputError
        A bad file in ``pairs/``, a pair recorded twice, or a planned pair missing.
    """
    out = Location.parse(out)
    records = load_records(out) if records is None else records
    rows = _planned_rows(records, plan, pairs_dir(out))
    layers = _layer_order(plan)
    result: dict = {"layers": layers, "gw": {}, "lower_bound": {}, "cross": {}}
    long_rows, cross_rows = [], []
    for c, names in layers.items():
        size = len(names)
        gw, lb = np.zeros((size, size)), np.zeros((size, size))
        for i in range(size):
            for j in range(i + 1, size):
                rec = rows[(c, names[i], c, names[j])]
                gw[i, j] = gw[j, i] = rec["gw"]
                lb[i, j] = lb[j, i] = rec["lower_bound"] if rec["lower_bound"] is not None else np.nan
        result["gw"][c], result["lower_bound"][c] = gw, lb
        long_rows += [{"checkpoint": c, "layer_i": names[i], "layer_j": names[j],
                       "gw": float(gw[i, j]), "lower_bound": float(lb[i, j])}
                      for i in range(size) for j in range(size)]
    cross = getattr(plan, "cross", None)
    pairs = (checkpoint_pairs(list(layers), cross) if cross is not None else
             list(dict.fromkeys((t.checkpoint_a, t.checkpoint_b) for t in plan if not t.within)))
    for a, b in pairs:
        la, lb_names = layers[a], layers[b]
        gw, lb = np.zeros((len(la), len(lb_names))), np.zeros((len(la), len(lb_names)))
        for i, x in enumerate(la):
            for j, y in enumerate(lb_names):
                rec = rows[(a, x, b, y)]
                gw[i, j] = rec["gw"]
                lb[i, j] = rec["lower_bound"] if rec["lower_bound"] is not None else np.nan
                cross_rows.append({"checkpoint_a": a, "checkpoint_b": b, "layer_i": x,
                                   "layer_j": y, "gw": rec["gw"], "lower_bound": float(lb[i, j])})
        result["cross"][(a, b)] = {"gw": gw, "lower_bound": lb}
        out.child("cross", f"{_safe(a)}__{_safe(b)}.npy").write_bytes(_npy_bytes(gw))
    out.child("gw_matrix.parquet").write_table(pa.Table.from_pylist(long_rows, schema=MATRIX_SCHEMA))
    mats = list(result["gw"].values())
    if len(mats) == 1:
        out.child("gw_matrix.npy").write_bytes(_npy_bytes(mats[0]))
    elif mats and len({m.shape for m in mats}) == 1:
        out.child("gw_matrix.npy").write_bytes(_npy_bytes(np.stack(mats)))
    else:  # models of different depths: no stack exists; a stale one from an earlier run goes
        out.child("gw_matrix.npy").remove()
    if len(mats) > 1:
        for c, gw in result["gw"].items():
            out.child("gw", f"{_safe(c)}.npy").write_bytes(_npy_bytes(gw))
    if cross_rows:
        out.child("cross", "gw_matrix.parquet").write_table(
            pa.Table.from_pylist(cross_rows, schema=CROSS_SCHEMA))
    return result
