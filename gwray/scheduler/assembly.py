"""The GW matrices of a run, assembled from ``OUT/pairs/``: file by file, the key, ``gw`` and
``lower_bound`` columns only, each planned pair checked to be present exactly once before
``gw_matrix.parquet`` / ``gw_matrix.npy`` (and ``gw/``, ``cross/``) are written."""
from __future__ import annotations

import io
import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from gwray.errors import GwrayInputError
from gwray.scheduler.plan import PairTask, Plan
from gwray.scheduler.results import KEY_COLUMNS, key_positions, pair_files, pairs_dir, read_pairs
from gwray.storage import Location

MATRIX_SCHEMA = pa.schema([("checkpoint", pa.string()), ("layer_i", pa.string()),
                           ("layer_j", pa.string()), ("gw", pa.float64()),
                           ("lower_bound", pa.float64())])
CROSS_SCHEMA = pa.schema([("checkpoint_a", pa.string()), ("checkpoint_b", pa.string())]
                         + [MATRIX_SCHEMA.field(k) for k in ("layer_i", "layer_j", "gw", "lower_bound")])


def _planned_values(out: Location, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """``gw`` and ``lower_bound`` (NaN where missing) of every planned pair, by plan position,
    read file by file (keys and those two columns only); errors on a pair present twice and on
    planned pairs that are missing."""
    gw, lb = np.full(len(plan), np.nan), np.full(len(plan), np.nan)
    source = np.full(len(plan), -1, dtype=np.int32)  # which file holds each pair
    files = pair_files(out)
    for k, loc in enumerate(files):
        table = read_pairs(loc, KEY_COLUMNS + ["gw", "lower_bound"])
        pos = key_positions(plan, table)
        mine = pos >= 0
        pos = pos[mine]
        order = np.sort(pos)
        twice = order[1:][order[1:] == order[:-1]]  # in this file twice
        earlier = pos[source[pos] >= 0]  # in an earlier file
        if twice.size or earlier.size:
            p = int(twice[0]) if twice.size else int(earlier[0])
            other = loc if twice.size else files[source[p]]
            raise GwrayInputError(f"pair results file {loc}: pair {'/'.join(plan[p].key)} also in "
                                  f"{other} (each pair must be present once)")
        source[pos] = k
        gw[pos] = table.column("gw").to_numpy()[mine]
        lb[pos] = table.column("lower_bound").to_numpy(zero_copy_only=False)[mine]
    missing = np.flatnonzero(source < 0)
    if missing.size:
        raise GwrayInputError(f"pair results {pairs_dir(out)}: {missing.size} planned pairs "
                              f"missing, e.g. {'/'.join(plan[int(missing[0])].key)}")
    return gw, lb


def as_plan(plan: Sequence[PairTask]) -> Plan:
    """``plan`` itself when it is a :class:`~gwray.scheduler.plan.Plan`; else the plan of a list
    of tasks in plan order (its checkpoints, layers and checkpoint pairs in first-seen order)."""
    if isinstance(plan, Plan):
        return plan
    layers: dict[str, list[str]] = {}
    for t in plan:
        for c, layer in t.cost_keys:
            if layer not in layers.setdefault(c, []):
                layers[c].append(layer)
    pairs = list(dict.fromkeys((t.checkpoint_a, t.checkpoint_b) for t in plan if not t.within))
    return Plan(layers, getattr(plan, "cross", "none"), pairs)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _long(names_i: list[str], names_j: list[str], gw: np.ndarray, lb: np.ndarray) -> dict:
    """Columns ``layer_i, layer_j, gw, lower_bound`` of every cell of a matrix, row-major."""
    i, j = np.divmod(np.arange(gw.size), gw.shape[1])
    return {"layer_i": pa.array(names_i).take(i), "layer_j": pa.array(names_j).take(j),
            "gw": pa.array(gw.ravel()), "lower_bound": pa.array(lb.ravel())}


def matrix_files(plan: Sequence[PairTask]) -> dict[str, tuple[str, object]]:
    """The ``.npy`` files :func:`assemble_matrices` writes for ``plan``: path under ``OUT`` →
    ``(kind, key)``: ``("cross", (a, b))``, ``("gw", checkpoint)`` or ``("stack", None)`` for
    ``gw_matrix.npy`` (one checkpoint, or checkpoints of equal depth)."""
    plan = as_plan(plan)
    files: dict[str, tuple[str, object]] = {f"cross/{_safe(b.a)}__{_safe(b.b)}.npy": ("cross", (b.a, b.b))
                                            for b in plan.blocks if not b.within}
    depths = {len(names) for names in plan.layers.values()}
    if len(depths) == 1:
        files["gw_matrix.npy"] = ("stack", None)
    if len(plan.layers) > 1:
        files.update({f"gw/{_safe(c)}.npy": ("gw", c) for c in plan.layers})
    return files


def assemble_matrices(out: Location | str, plan: Sequence[PairTask]) -> dict:
    """Build the GW matrices of a finished run and write them next to ``OUT/pairs/``.

    Parameters
    ----------
    out : Location or str
        Run directory.
    plan : sequence of PairTask
        What should have been solved (a :class:`~gwray.scheduler.plan.Plan`, or its tasks in
        plan order).

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
    out, plan = Location.parse(out), as_plan(plan)
    values, bounds = _planned_values(out, plan)
    layers = plan.layers
    result: dict = {"layers": layers, "gw": {}, "lower_bound": {}, "cross": {}}
    long_parts, cross_parts = [], []
    for block in plan.blocks:
        cut = slice(block.offset, block.offset + block.size)
        if block.within:
            gw, lb = np.zeros((block.rows, block.rows)), np.zeros((block.rows, block.rows))
            i, j = block.ij()
            gw[i, j] = gw[j, i] = values[cut]
            lb[i, j] = lb[j, i] = bounds[cut]
            result["gw"][block.a], result["lower_bound"][block.a] = gw, lb
            names = layers[block.a]
            long_parts.append(pa.table({"checkpoint": pa.array([block.a] * gw.size, pa.string()),
                                        **_long(names, names, gw, lb)}, schema=MATRIX_SCHEMA))
        else:
            gw, lb = values[cut].reshape(block.rows, block.cols), bounds[cut].reshape(block.rows, block.cols)
            result["cross"][(block.a, block.b)] = {"gw": gw, "lower_bound": lb}
            cross_parts.append(pa.table({"checkpoint_a": pa.array([block.a] * gw.size, pa.string()),
                                         "checkpoint_b": pa.array([block.b] * gw.size, pa.string()),
                                         **_long(layers[block.a], layers[block.b], gw, lb)},
                                        schema=CROSS_SCHEMA))
    files = matrix_files(plan)
    for name, (kind, key) in files.items():
        if kind == "cross":
            array = result["cross"][key]["gw"]
        else:
            mats = list(result["gw"].values())
            array = result["gw"][key] if kind == "gw" else mats[0] if len(mats) == 1 else np.stack(mats)
        out.child(*name.split("/")).write_bytes(_npy_bytes(array))
    if "gw_matrix.npy" not in files:  # models of different depths: a stale stack from an earlier run goes
        out.child("gw_matrix.npy").remove()
    out.child("gw_matrix.parquet").write_table(pa.concat_tables(long_parts) if long_parts
                                               else MATRIX_SCHEMA.empty_table())
    if cross_parts:
        out.child("cross", "gw_matrix.parquet").write_table(pa.concat_tables(cross_parts))
    return result
