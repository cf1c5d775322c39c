"""Checks a run makes before its expensive stages: where it writes, whose run it replaces, how
many layers it compares. Each raises :class:`~gwray.errors.GwrayInputError` with one line that
names the thing at fault, before a model loads or Ray starts.
"""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from gwray.config import RunConfig
from gwray.errors import GwrayInputError
from gwray.storage import Location


def check_output_location(loc: Location) -> None:
    """A local run directory must be a directory (or creatable) where this process may write.

    Object-store URIs are not probed (credentials and buckets are checked by the first write).

    Raises
    ------
    GwrayInputError
        ``loc`` or a folder above it is a file; the nearest existing folder is not writable
        (permissions or a read-only filesystem).
    """
    if not loc.is_local:
        return
    path = Path(loc.path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"{existing} is a file"
        raise GwrayInputError(f"run directory {path}: {where} (choose another with --out or `output:`)")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "is" if existing == path else f"{existing} is"
        raise GwrayInputError(f"run directory {path}: {where} not writable (read-only or no "
                              "permission; choose another with --out or `output:`)")


def run_identity(cfg: RunConfig, checkpoints: list) -> dict:
    """What makes a run directory another experiment's: the model (or its checkpoints) and the probe.
    Two runs are the same experiment when model source, path (or factory) and probe agree and,
    for checkpoint runs, they share a checkpoint (a training run that gained or lost some).

    Parameters
    ----------
    cfg : RunConfig
    checkpoints : list of (str, str or None)
        ``(id, path)`` as :func:`gwray.pipeline.resolve_checkpoints` gives them.
    """
    model = cfg.model
    return {"model": [model.source, model.path if model.checkpoints is None else None, model.factory],
            "checkpoints": [p for _, p in checkpoints], "probe": [cfg.probe.source, cfg.probe.field]}


def _describe(identity: dict) -> str:
    source, path, factory = identity["model"]
    ckpts = [p for p in identity["checkpoints"] if p]
    what = (factory or path or source if not ckpts else ckpts[0] if len(ckpts) == 1
            else f"{len(ckpts)} checkpoints from {ckpts[0]}")
    return f"{what} on probe {identity['probe'][0]}"


def check_run_owner(loc: Location, cfg: RunConfig, checkpoints: list, force: bool) -> str | None:
    """Refuse to replace another model's or probe's run unless ``force``.

    Changing anything else (layers, pooling, costs, GW, graph, ...) on the same model and probe
    is an ordinary rerun that redoes the stages it affects.

    Returns
    -------
    str or None
        With ``force`` and another run in ``loc``: a description of that run (the caller removes
        the directory); None when ``loc`` holds no run or this one.

    Raises
    ------
    GwrayInputError
        ``loc`` holds another model's or probe's run and ``force`` is false.
    """
    info_file = loc.child("run.json")
    if not info_file.exists():
        return None
    info = info_file.read_json()
    try:
        old_cfg = RunConfig.model_validate(info["config"])
        old = run_identity(old_cfg, [(c["id"], c["path"]) for c in info["checkpoints"]])
    except (KeyError, TypeError, ValidationError):  # a run.json this version cannot read
        old = {"model": ["?", str(info.get("name", "?")), None], "checkpoints": [None], "probe": ["?", None]}
    new = run_identity(cfg, checkpoints)
    same_checkpoints = (old["checkpoints"] == new["checkpoints"]
                        or bool(set(old["checkpoints"]) & set(new["checkpoints"]) - {None}))
    if old["model"] == new["model"] and old["probe"] == new["probe"] and same_checkpoints:
        return None
    if not force:
        raise GwrayInputError(f"run directory {loc}: holds the run of {_describe(old)}, not "
                              f"{_describe(new)}; pass --force to replace it, or choose another "
                              "`name`, `output:` or --out")
    return _describe(old)


def check_layer_count(cfg: RunConfig, checkpoint: str, names: list[str]) -> None:
    """At least 2 layers, and ``graph.k`` no more than the layers of ``checkpoint``.

    Raises
    ------
    GwrayInputError
        Naming ``layers.select`` or ``graph.k`` and the checkpoint's layer count.
    """
    if len(names) < 2:
        raise GwrayInputError(f"config key layers.select: selects {len(names)} layer(s) of checkpoint "
                              f"{checkpoint} ({', '.join(names) or 'none'}); GW compares 2 or more")
    k = cfg.graph.k
    if isinstance(k, int) and k > len(names):
        raise GwrayInputError(f"config key graph.k: {k} groups, but checkpoint {checkpoint} has "
                              f"{len(names)} layers")
