"""A finished run read back: :class:`RunResult` (what :func:`gwray.pipeline.run` returns) and
:func:`load_run` (the same from the run directory alone)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from gwray.config import RunConfig
from gwray.errors import GwrayInputError, damaged
from gwray.storage import Location


@dataclass
class RunResult:
    """What a run produced, as returned by :func:`run` and :func:`load_run`.

    Attributes
    ----------
    out, config, report : str, RunConfig, str or None
        The run directory (path or URI), the resolved config, ``report.html``.
    checkpoints, layers : list of str, dict
        Checkpoint ids in order (``["main"]`` for one model); id → layer names in depth order.
    gw, lower_bound : dict
        Checkpoint (or model) id → its (L_id, L_id) float64 GW distances / lower bounds; depths
        may differ between ids (models of different sizes).
    cross : dict
        ``(checkpoint_a, checkpoint_b)`` → (L_a, L_b) float64 GW, rows = layers of a
        (rectangular when depths differ).
    communities : dict
        ``communities.json`` (groups per checkpoint and method, boundaries, movement,
        stability).
    pairs : pyarrow.Table
        Every pair record of ``OUT/pairs`` (DESIGN.md schema, plus ``file``), read when first
        asked for: a sweep's million records cost nothing until then.
    stages : dict
        Stage → ``"ran"`` or ``"skipped"`` (empty when read back by :func:`load_run`).
    """

    out: str
    config: RunConfig
    checkpoints: list
    layers: dict
    gw: dict
    lower_bound: dict
    cross: dict
    communities: dict
    report: str | None = None
    stages: dict = field(default_factory=dict)
    where: Location | None = field(default=None, repr=False)  # ``out`` with its filesystem options
    _pairs: object = field(default=None, repr=False)

    @property
    def pairs(self):
        if self._pairs is None:
            from gwray.scheduler.results import load_records

            self._pairs = load_records(self.where or self.out)
        return self._pairs

    @property
    def matrix(self) -> np.ndarray:
        """The (L, L) GW matrix of a one-model run; with several checkpoints (or models) there is
        no single matrix: ``ValueError`` naming ``gw[id]``, each one's (L_id, L_id) matrix."""
        if len(self.checkpoints) > 1:
            raise ValueError(f"this run has {len(self.checkpoints)} checkpoints/models: use "
                             f"result.gw[id] (ids {', '.join(self.checkpoints)}) and "
                             "result.cross[(a, b)]")
        return self.gw[self.checkpoints[0]]

    def correspondence(self, a: str, b: str) -> dict:
        """For each layer of ``a``, the layer of ``b`` at the smallest GW distance: the argmin of
        each row of ``cross[(a, b)]`` (``cross[(b, a)]``'s columns when only that was solved).
        KeyError when no cross matrix of ``a`` and ``b`` was solved (``compare.cross``)."""
        M = self.cross[(a, b)] if (a, b) in self.cross else self.cross[(b, a)].T
        return {name: self.layers[b][int(k)] for name, k in zip(self.layers[a], M.argmin(axis=1))}

    @property
    def groups(self) -> dict:
        """Checkpoint id → groups (lists of layer names) of the configured method."""
        comm = self.communities
        return {c: comm["checkpoints"][c]["methods"][comm["method"]]["groups"] for c in self.checkpoints}


def read_matrices(loc: Location, layers: dict) -> tuple[dict, dict, dict]:
    """The GW matrices of a run directory: ``gw_matrix.parquet`` and ``cross/gw_matrix.parquet``.

    Parameters
    ----------
    loc : Location
        The run directory.
    layers : dict
        Checkpoint id → layer names in depth order (``run.json``'s ``layers``).

    Returns
    -------
    gw, lower_bound : dict
        Checkpoint id → (L, L) float64, symmetric, zero diagonal.
    cross : dict
        ``(a, b)`` → (L_a, L_b) float64 GW, rows = layers of ``a`` (NaN where a cell is absent).

    Raises
    ------
    GwrayInputError
        No ``gw_matrix.parquet`` or missing columns; a checkpoint or layer that ``layers`` does not
        know; a cell of a checkpoint's matrix without a value. The message names the file.
    """
    where = loc.child("gw_matrix.parquet")
    if not where.exists():
        raise GwrayInputError(f"run directory {loc}: no gw_matrix.parquet")
    table = _read_matrix_file(where)
    need = {"layer_i", "layer_j", "gw", "lower_bound"}
    if not need <= set(table.column_names):
        raise GwrayInputError(f"{where}: missing columns {', '.join(sorted(need - set(table.column_names)))}")
    ids = list(layers)
    ckpts = (table.column("checkpoint") if "checkpoint" in table.column_names
             else pa.array([ids[0]] * table.num_rows, pa.string()))  # a one-model run's older file
    c, i = _positions(layers, ckpts, table.column("layer_i"), where)
    _, j = _positions(layers, ckpts, table.column("layer_j"), where)
    values = table.column("gw").to_numpy(zero_copy_only=False)
    bounds = table.column("lower_bound").to_numpy(zero_copy_only=False)
    gw, lb = {}, {}
    for k, cid in enumerate(ids):
        sel, size = c == k, len(layers[cid])
        for out, v in ((gw, values), (lb, bounds)):
            m = np.full((size, size), np.nan)
            m[i[sel], j[sel]] = m[j[sel], i[sel]] = v[sel]
            np.fill_diagonal(m, 0.0)
            out[cid] = m
        if np.isnan(gw[cid]).any():
            a, b = np.argwhere(np.isnan(gw[cid]))[0]
            raise GwrayInputError(f"{where}: no gw value for checkpoint {cid!r} pair "
                                  f"({layers[cid][a]}, {layers[cid][b]})")
    return gw, lb, _read_cross(loc, layers)


def _read_matrix_file(where: Location, columns: list[str] | None = None) -> pa.Table:
    """A matrix Parquet file; one that cannot be read is a GwrayDamagedError naming it."""
    try:
        return where.read_table(columns=columns)
    except (pa.ArrowException, OSError) as exc:
        why = str(exc).strip().splitlines()[0].rsplit("': ", 1)[-1] if str(exc).strip() else type(exc).__name__
        raise damaged(f"{where}: unreadable ({why})", ("matrices", None),
                      "rerun `gwray run` to assemble it again from pairs/") from None


def _positions(layers: dict, ckpts, names, where: Location) -> tuple[np.ndarray, np.ndarray]:
    """Checkpoint index and layer position per row; an unknown one is an error naming it."""
    from gwray.scheduler.plan import layer_positions

    c, pos = layer_positions(layers, ckpts, names)
    bad = np.flatnonzero(pos < 0)
    if bad.size:
        ckpt, name = ckpts[int(bad[0])].as_py(), names[int(bad[0])].as_py()
        if ckpt not in layers:
            raise GwrayInputError(f"{where}: checkpoint {ckpt!r} is not in run.json")
        raise GwrayInputError(f"{where}: layer {name!r} of checkpoint {ckpt!r} is not in run.json")
    return c, pos


def _read_cross(loc: Location, layers: dict) -> dict:
    from gwray.scheduler.plan import layer_positions

    where = loc.child("cross", "gw_matrix.parquet")
    if not where.exists():
        return {}
    t = _read_matrix_file(where, ["checkpoint_a", "checkpoint_b", "layer_i", "layer_j", "gw"])
    ca, i = layer_positions(layers, t.column("checkpoint_a"), t.column("layer_i"))
    cb, j = layer_positions(layers, t.column("checkpoint_b"), t.column("layer_j"))
    bad = np.flatnonzero((i < 0) | (j < 0))
    if bad.size:
        r = {k: t.column(k)[int(bad[0])].as_py() for k in t.column_names}
        raise GwrayInputError(f"{where}: layer {r['layer_i']!r} of {r['checkpoint_a']!r} or "
                              f"{r['layer_j']!r} of {r['checkpoint_b']!r} is not in run.json")
    ids, values, cross = list(layers), t.column("gw").to_numpy(zero_copy_only=False), {}
    pair = ca * len(ids) + cb
    for p in np.unique(pair):
        a, b = ids[p // len(ids)], ids[p % len(ids)]
        sel = pair == p
        m = cross[(a, b)] = np.full((len(layers[a]), len(layers[b])), np.nan)
        m[i[sel], j[sel]] = values[sel]
    return cross


def load_run(out) -> RunResult:
    """Read a finished run back (config, layer names, matrices, groups, pair records) from the
    run directory or URI ``out``; GwrayInputError when ``out`` holds no finished run."""
    loc = Location.parse(out)
    for name in ("run.json", "gw_matrix.parquet", "communities.json"):
        if not loc.child(name).exists():
            raise GwrayInputError(f"run directory {loc}: no {name} (not a finished gwray run)")
    info = loc.child("run.json").read_json()
    layers = {c["id"]: info["layers"][c["id"]] for c in info["checkpoints"]}
    gw, lb, cross = read_matrices(loc, layers)
    html = loc.child("report.html")  # absent while a rerun rebuilds it
    return RunResult(out=str(loc), config=RunConfig.model_validate(info["config"]),
                     checkpoints=list(layers), layers=layers, gw=gw, lower_bound=lb, cross=cross,
                     communities=loc.child("communities.json").read_json(),
                     report=str(html) if html.exists() else None, where=loc)
