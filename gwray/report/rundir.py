"""Read what the report needs from a run directory (local path or URI), and nothing else.

Files read (DESIGN.md "On-disk contracts"), all through :class:`gwray.storage.Location`:

- ``run.json`` (required): ``checkpoints`` = [{id, path, step}] in training order, ``layers`` =
  {id: [layer names in depth order]}, ``config`` (resolved RunConfig dict), ``name``,
  ``gwray_version``, ``probe_hash``.
- ``gw_matrix.parquet`` (required): ``checkpoint, layer_i, layer_j, gw, lower_bound``, long format.
- ``communities.json`` (optional): as ``pipeline.py`` writes it — ``method``, ``checkpoints`` {id:
  {methods: {m: SubnetworkResult.to_dict()}, agreement}}, ``stability`` {id: ...}, ``movement``
  [{from, to, added, removed}], ``baselines`` {id: {kind: (L, L) nested list}} with kinds of
  :data:`gwray.gw.baselines.KINDS` (empty or absent unless ``gw.baselines`` was set).
  When absent, groups are computed here in memory with ``config.graph`` (never written).
- ``pairs/*.parquet`` (optional): the pair records, for the solver-quality table.
- ``cross/gw_matrix.parquet`` (optional): ``checkpoint_a, checkpoint_b, layer_i, layer_j, gw``,
  the cross-checkpoint layer matrices (rows = layers of ``checkpoint_a``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from gwray.errors import GwrayInputError
from gwray.gw.baselines import KINDS
from gwray.result import read_matrices
from gwray.storage import Location

PAIR_COLUMNS = ("checkpoint_a", "layer_a", "checkpoint_b", "layer_b", "gw", "lower_bound", "init",
                "iterations", "marginal_error", "seconds", "n", "solver", "runner_up_gap")


@dataclass
class RunData:
    """Everything the report shows. Matrices are (L_c, L_c) float64 per checkpoint id."""

    loc: Location
    info: dict
    checkpoints: list  # ids in step order
    steps: dict
    layers: dict
    gw: dict
    lower_bound: dict
    communities: dict
    communities_source: str
    cross: dict  # (ckpt_a, ckpt_b) → (L_a, L_b) GW matrix, rows = layers of ckpt_a
    baselines: dict  # ckpt → {kind: (L_c, L_c) float64}; only checkpoints that have them

    @property
    def method(self) -> str:
        return self.communities["method"]

    def result(self, ckpt: str, method: str | None = None) -> dict:
        """``SubnetworkResult.to_dict()`` of one checkpoint and method (default: the run's)."""
        return self.communities["checkpoints"][ckpt]["methods"][method or self.method]

    def pairs(self, ckpt: str) -> list[dict]:
        """The records in ``pairs/`` of ``ckpt``'s pairs of layers (dicts of the
        :data:`PAIR_COLUMNS` a file has; [] without ``pairs/``), read when asked: a sweep's
        other checkpoints' records never become Python objects."""
        out = []
        for f in self.loc.child("pairs").files(".parquet"):
            try:
                t = f.read_table()
            except Exception as exc:  # pyarrow raises several types for a corrupt file
                raise GwrayInputError(f"{f}: not a readable Parquet file ({type(exc).__name__})") from None
            if not {"checkpoint_a", "checkpoint_b"} <= set(t.column_names):
                continue
            mine = pc.and_(pc.equal(t.column("checkpoint_a"), ckpt), pc.equal(t.column("checkpoint_b"), ckpt))
            out += t.select([c for c in PAIR_COLUMNS if c in t.column_names]).filter(mine).to_pylist()
        return out


def _checkpoints(info: dict, where: Location) -> tuple[list, dict]:
    entries = info.get("checkpoints")
    if not isinstance(entries, list) or not entries:
        raise GwrayInputError(f"{where}: no 'checkpoints' list")
    ids = [e["id"] if isinstance(e, dict) else str(e) for e in entries]
    steps = {e["id"]: e.get("step") for e in entries if isinstance(e, dict)}
    if all(steps.get(c) is not None for c in ids):  # step order when every step is known
        ids = sorted(ids, key=lambda c: (steps[c], ids.index(c)))
    return ids, steps


def _baselines(where: Location, comm: dict, layers: dict) -> dict:
    out: dict = {}
    for c, mats in (comm.get("baselines") or {}).items():
        if c not in layers:
            raise GwrayInputError(f"{where}: baselines for checkpoint {c!r}, which is not in run.json")
        L, out[c] = len(layers[c]), {}
        for kind, M in mats.items():
            if kind not in KINDS:
                raise GwrayInputError(f"{where}: unknown baseline {kind!r} for checkpoint {c!r} "
                                      f"(expected one of {', '.join(KINDS)})")
            try:
                out[c][kind] = np.asarray(M, dtype=np.float64)
            except (TypeError, ValueError):
                raise GwrayInputError(f"{where}: baseline {kind!r} of checkpoint {c!r} is not a numeric matrix") from None
            if out[c][kind].shape != (L, L):
                raise GwrayInputError(f"{where}: baseline {kind!r} of checkpoint {c!r} has shape "
                                      f"{out[c][kind].shape}, expected ({L}, {L}) for its layers")
    return out


def _computed_communities(info: dict, ckpts: list, layers: dict, gw: dict) -> dict:
    from gwray.graph.communities import find_subnetworks

    graph = (info.get("config") or {}).get("graph") or {}
    method, k = graph.get("method", "contiguous"), graph.get("k", "auto")
    out = {"method": "contiguous" if method == "all" else method, "checkpoints": {}, "stability": {}}
    for c in ckpts:
        found = find_subnetworks(gw[c], method=method, k=k, names=layers[c],
                                 alpha=graph.get("alpha", 0.05), n_null=graph.get("null_draws", 99))
        out["checkpoints"][c] = (found.to_dict() if method == "all" else
                                 {"methods": {method: found.to_dict()}, "agreement": {}})
    return out


def load_run_dir(out: Location | str) -> RunData:
    """Read a run directory for the report.

    Parameters
    ----------
    out : Location or str
        Local path, ``file://``, ``s3://`` or ``gs://`` URI of the run.

    Returns
    -------
    RunData

    Raises
    ------
    GwrayInputError
        No run.json / gw_matrix.parquet, a checkpoint or layer unknown to run.json, a missing
        matrix cell, communities.json naming a checkpoint without a matrix, or a baseline matrix
        of an unknown kind or a shape other than its checkpoint's (L, L).
    """
    loc = Location.parse(out)
    rj = loc.child("run.json")
    if not rj.exists():
        raise GwrayInputError(f"run directory {loc}: no run.json (not a gwray run)")
    info = rj.read_json()
    ckpts, steps = _checkpoints(info, rj)
    layers = info.get("layers") or {}
    for c in ckpts:
        if not layers.get(c):
            raise GwrayInputError(f"{rj}: no layer names for checkpoint {c!r} under 'layers'")
    gw, lb, cross = read_matrices(loc, {c: layers[c] for c in ckpts})
    cj = loc.child("communities.json")
    if cj.exists():
        comm, source = cj.read_json(), "communities.json"
        method = comm.get("method")
        for c in ckpts:
            if method not in comm.get("checkpoints", {}).get(c, {}).get("methods", {}):
                raise GwrayInputError(f"{cj}: no {method!r} groups for checkpoint {c!r}")
    else:
        comm = _computed_communities(info, ckpts, layers, gw)
        source = "computed by the report (no communities.json in the run directory)"
    return RunData(loc, info, ckpts, steps, layers, gw, lb, comm, source, cross,
                   _baselines(cj, comm, layers))


def solver_quality(data: RunData, ckpt: str) -> dict:
    """How certain the GW values of one checkpoint are.

    Parameters
    ----------
    data : RunData
    ckpt : str

    Returns
    -------
    dict
        ``pairs``; ``median_gap`` / ``max_gap`` of (gw − lower bound)/gw over pairs with gw > 0;
        ``proven`` = pairs whose gap ≤ 1e-6; and, when pair records exist: ``inits`` {init: wins},
        ``iterations_median``, ``iterations_max``, ``max_marginal_error``, ``seconds`` (sum),
        ``solvers``, ``n`` (sample counts seen), ``runner_up_known`` (pairs whose record has a
        :attr:`~gwray.gw.solver.GWResult.runner_up_gap`), ``settled`` (of those, a second start
        within 1 % of the value), ``runner_up_max``.
    """
    gw, lb = data.gw[ckpt], data.lower_bound[ckpt]
    iu = np.triu_indices(gw.shape[0], 1)
    g, b = gw[iu], lb[iu]
    ok = (g > 0) & np.isfinite(b)
    gap = (g[ok] - b[ok]) / g[ok]
    q = {"pairs": int(g.size), "median_gap": float(np.median(gap)) if gap.size else None,
         "max_gap": float(gap.max()) if gap.size else None,
         "proven": int((gap <= 1e-6).sum() + (g == 0).sum())}
    recs = data.pairs(ckpt)
    if recs:
        col = lambda k: [r[k] for r in recs if r.get(k) is not None]  # noqa: E731
        inits: dict = {}
        for name in col("init"):
            inits[name] = inits.get(name, 0) + 1
        its = col("iterations")
        q.update(records=len(recs), inits=inits,
                 iterations_median=float(np.median(its)) if its else None,
                 iterations_max=int(max(its)) if its else None,
                 max_marginal_error=float(max(col("marginal_error"), default=np.nan)),
                 seconds=float(sum(col("seconds"))), solvers=sorted(set(col("solver"))),
                 n=sorted({int(x) for x in col("n")}))
        gaps = np.array([x for x in col("runner_up_gap") if np.isfinite(x)])
        q.update(runner_up_known=int(gaps.size), settled=int((gaps <= 0.01).sum()),
                 runner_up_max=float(gaps.max()) if gaps.size else None)
    return q
