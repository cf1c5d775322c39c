"""Checks a run makes before its expensive stages: where it writes, whose run it replaces, how
many layers it compares. Each raises :class:`~gwray.errors.GwrayInputError` with one line that
names the thing at fault, before a model loads or Ray starts.
"""
from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from pydantic import ValidationError

from gwray.config import RunConfig
from gwray.errors import GwrayInputError
from gwray.storage import Location

_STEP_RE = re.compile(r"(?:checkpoint|ckpt|step|iter|epoch)[-_=]?(\d+)", re.IGNORECASE)
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")
SINGLE = "main"  # checkpoint id of a run over one model


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
        ``(id, path)`` as :func:`resolve_checkpoints` gives them.
    """
    model = cfg.model
    return {"model": [model.source, model.path if model.checkpoints is None else None, model.factory],
            "checkpoints": [p for _, p in checkpoints], "probe": [cfg.probe.source, cfg.probe.field]}


def read_run_info(loc: Location) -> tuple[dict | None, str | None]:
    """``OUT/run.json``: ``(info, None)``, or ``(None, why)`` when it is ``"missing"`` or
    ``"damaged (…)"`` (cut short, not JSON, not a gwray run record)."""
    where = loc.child("run.json")
    if not where.exists():
        return None, "missing"
    try:
        info = where.read_json()
    except GwrayInputError:
        return None, "damaged (not JSON)"
    if not (isinstance(info, dict) and isinstance(info.get("stages", {}), dict)):
        return None, "damaged (not a gwray run record)"
    return info, None


def _manifest_identity(loc: Location) -> dict | None:
    """Whose run a directory without a readable run.json holds, from its activation manifests:
    ``{"models": {...}, "probes": {...}}``, or None when there is none."""
    from gwray.activations.store import ActivationStore

    store, models, probes = ActivationStore(loc), set(), set()
    for ckpt in store.checkpoints():
        try:
            manifest = store.manifest(ckpt)
        except GwrayInputError:  # damaged: the activations stage extracts it again
            continue
        models.add(manifest.get("model"))
        probes.add(manifest.get("probe_source"))
    return {"models": models, "probes": probes} if models else None


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

    Without a readable ``run.json`` the activation manifests tell whose run ``loc`` holds.

    Raises
    ------
    GwrayInputError
        ``loc`` holds another model's or probe's run and ``force`` is false.
    """
    info, problem = read_run_info(loc)
    new = run_identity(cfg, checkpoints)
    if info is None:  # none, or damaged: the activation manifests say whose run it holds
        found = _manifest_identity(loc)
        mine = {p for _, p in checkpoints if p} | {cfg.model.path, cfg.model.factory}
        if found is None or (found["probes"] == {cfg.probe.source} and found["models"] & mine):
            return None
        what = f"activations of {', '.join(sorted(map(str, found['models'])))} on probe " \
               f"{', '.join(sorted(map(str, found['probes'])))}"
        if not force:
            raise GwrayInputError(f"run directory {loc}: run.json is {problem} and it holds the {what}, "
                                  f"not {_describe(new)}; pass --force to replace it, or choose another "
                                  "`name`, `output:` or --out")
        return what
    try:
        old_cfg = RunConfig.model_validate(info["config"])
        old = run_identity(old_cfg, [(c["id"], c["path"]) for c in info["checkpoints"]])
    except (KeyError, TypeError, ValidationError):  # a run.json this version cannot read
        old = {"model": ["?", str(info.get("name", "?")), None], "checkpoints": [None], "probe": ["?", None]}
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


def step_of(name: str) -> int | None:
    """The training step a checkpoint name carries (``checkpoint-1000`` → 1000), else None."""
    return int(m.group(1)) if (m := _STEP_RE.search(name)) else None


def resolve_checkpoints(cfg: RunConfig) -> list[tuple[str, str | None]]:
    """The run's checkpoints as ``(id, path)`` in training order.

    ``model.checkpoints`` is a list of directories or a glob. A glob, and a list whose every
    name carries a step (``checkpoint-1000``, ``step1000``, ``step-000500``, ``ckpt_5``), are
    sorted by step; other lists keep their order (e.g. several fine-tunes). Ids are the directory
    names. Without checkpoints: ``[("main", None)]``.

    Raises
    ------
    GwrayInputError
        A glob that matches nothing, a listed directory that does not exist, repeated names.
    """
    spec, key = cfg.model.checkpoints, "config key model.checkpoints"
    if spec is None:
        return [(SINGLE, None)]
    if isinstance(spec, str):
        paths = sorted(glob.glob(os.path.expanduser(spec)))
        if not paths:
            raise GwrayInputError(f"{key}: glob {spec!r} matches nothing")
    else:
        paths = [os.path.expanduser(p) for p in spec]
        if not paths:
            raise GwrayInputError(f"{key}: empty list (omit the key for one model)")
    step = {p: step_of(Path(p.rstrip("/")).name) for p in paths}
    if isinstance(spec, str) or None not in step.values():
        paths = sorted(paths, key=lambda p: (step[p] is None, step[p] or 0, p))
    ids = [_UNSAFE_RE.sub("_", Path(p.rstrip("/")).name) for p in paths]
    if len(set(ids)) < len(ids):
        raise GwrayInputError(f"{key}: two checkpoints have the same directory name (their id)")
    return list(zip(ids, paths))


def check_inputs(cfg: RunConfig, min_checkpoints: int = 1) -> tuple[list, object]:
    """Check checkpoints, model and probe before anything is written or Ray is reached.

    Returns ``(checkpoints, probe)``: checkpoints as :func:`resolve_checkpoints` gives them, the
    :class:`~gwray.activations.probes.ProbeSet`.
    Raises GwrayInputError: fewer than ``min_checkpoints``; a missing model, checkpoint or probe.
    """
    from gwray.activations.probes import load_probe
    from gwray.models.loaders import resolve_model_path

    checkpoints = resolve_checkpoints(cfg)
    if len(checkpoints) < min_checkpoints:
        raise GwrayInputError(f"config key model.checkpoints: {min_checkpoints} or more checkpoints "
                              f"needed to compare, got {len(checkpoints)}")
    source = cfg.model.source
    for path in [cfg.model.path] if cfg.model.checkpoints is None else [p for _, p in checkpoints]:
        if path is None and source != "factory":
            raise GwrayInputError(f"config key model.path: required for model.source {source}")
        if source == "hf":
            resolve_model_path(path)
        elif source == "toy" and not os.path.exists(path):
            raise GwrayInputError(f"toy checkpoint {path}: not found (config key model.path)")
    return checkpoints, load_probe(cfg.probe)
