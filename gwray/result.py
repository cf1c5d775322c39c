"""A finished run read back: :class:`RunResult` (what :func:`gwray.pipeline.run` returns) and
:func:`load_run` (the same from the run directory alone)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gwray.config import RunConfig
from gwray.errors import GwrayInputError
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
    communities, pairs : dict, pyarrow.Table
        ``communities.json`` (groups per checkpoint and method, boundaries, movement,
        stability); every pair record of ``OUT/pairs`` (DESIGN.md schema).
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
    pairs: object
    report: str | None = None
    stages: dict = field(default_factory=dict)

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


def read_matrices(loc: Location, layers: dict):
    """(gw, lower_bound, cross) matrices from gw_matrix.parquet and cross/gw_matrix.parquet."""
    index = {c: {n: i for i, n in enumerate(names)} for c, names in layers.items()}
    gw, lb = ({c: np.zeros((len(n), len(n))) for c, n in layers.items()} for _ in range(2))
    for row in loc.child("gw_matrix.parquet").read_table().to_pylist():
        c = row["checkpoint"]
        ij = index[c][row["layer_i"]], index[c][row["layer_j"]]
        gw[c][ij], lb[c][ij] = row["gw"], row["lower_bound"]
    cross, where = {}, loc.child("cross", "gw_matrix.parquet")
    for row in where.read_table().to_pylist() if where.exists() else []:
        a, b = row["checkpoint_a"], row["checkpoint_b"]
        m = cross.setdefault((a, b), np.zeros((len(layers[a]), len(layers[b]))))
        m[index[a][row["layer_i"]], index[b][row["layer_j"]]] = row["gw"]
    return gw, lb, cross


def load_run(out) -> RunResult:
    """Read a finished run back (config, layer names, matrices, groups, pair records) from the
    run directory or URI ``out``; GwrayInputError when ``out`` holds no finished run."""
    from gwray.scheduler.results import load_records

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
                     communities=loc.child("communities.json").read_json(), pairs=load_records(loc),
                     report=str(html) if html.exists() else None)
