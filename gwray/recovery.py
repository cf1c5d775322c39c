"""Damaged or missing pieces of a run directory, and how ``gwray run`` recomputes them.

The pipeline skips a stage only when its output is intact, and a piece found damaged while a
stage reads it (:class:`~gwray.errors.GwrayDamagedError`) is made recomputable here, after which
the stages run again (docs/faults.md lists every fault and what gwray does):

- a checkpoint's activations: removed, so that the activations stage extracts them again;
- a file of ``pairs/`` that gwray wrote: moved to ``pairs/_damaged/`` (kept for a look, read by
  nothing), so that the pairs stage solves its pairs again;
- ``gw_matrix.parquet``: removed, so that the pairs stage assembles it again from ``pairs/``.

Each dataset records the settings it was made with next to its data (the manifests' ``stage_key``,
``pairs/_made_with.json``), so that a lost or damaged ``run.json`` costs no recomputation of them.
"""
from __future__ import annotations

import io

import numpy as np

from gwray.activations.store import ActivationStore
from gwray.errors import GwrayDamagedError, GwrayInputError
from gwray.result import read_matrices
from gwray.storage import Location

MADE_WITH = "_made_with.json"
"""In ``pairs/``: ``{"solve": key, "activations": {checkpoint: key}}`` of the pairs it holds,
written before any pair is solved (a hidden name: readers of the dataset skip it)."""
RECOVERIES = 3
"""Damaged pieces recomputed in one run before the damage is reported (exit 2)."""


def read_json(where: Location):
    """A JSON file's content; None when it is missing or damaged."""
    try:
        return where.read_json() if where.exists() else None
    except ValueError:  # JSONDecodeError, bad UTF-8
        return None


def made_with(store: ActivationStore, checkpoint: str) -> str | None:
    """The activations stage key a complete checkpoint's manifest records (None: incomplete,
    damaged, or written by an older gwray that recorded none)."""
    try:
        return store.manifest(checkpoint).get("stage_key") if store.is_complete(checkpoint) else None
    except GwrayDamagedError:
        return None


def matrices_damage(loc: Location, layers: dict, plan) -> str | None:
    """What is missing or damaged among a run's matrices, or None: ``gw_matrix.parquet`` (and
    ``cross/gw_matrix.parquet``) readable with every cell, each ``.npy`` file of ``plan`` there
    and readable.

    Parameters
    ----------
    loc : Location
        The run directory.
    layers : dict
        Checkpoint id → layer names (run.json's ``layers``).
    plan : gwray.scheduler.plan.Plan
    """
    from gwray.scheduler.assembly import matrix_files

    try:
        read_matrices(loc, layers)
    except GwrayInputError as exc:  # GwrayDamagedError too
        return getattr(exc, "what", "") or str(exc)
    for name in matrix_files(plan):
        try:
            np.load(io.BytesIO(loc.child(*name.split("/")).read_bytes()))
        except (OSError, ValueError, EOFError):  # missing, or cut short
            return f"{name} is missing or damaged"
    return None


def recover(loc: Location, exc: GwrayDamagedError, say) -> bool:
    """Make the damaged piece ``exc.piece`` of run directory ``loc`` recomputable (see the
    module docstring), saying what it does; False for a piece it does not know."""
    kind, which = exc.piece
    if kind == "activations":
        say(f"{exc.what}: extracting checkpoint {which} again")
        ActivationStore(loc).remove(which)
    elif kind == "pairs":
        damaged = Location(loc.fs, which)
        aside = loc.child("pairs", "_damaged", damaged.name)
        say(f"{exc.what}: moved to {aside}, its pairs are solved again")
        damaged.move_to(aside)
    elif kind == "matrices":
        say(f"{exc.what}: assembling the matrices again")
        loc.child("gw_matrix.parquet").remove()
    else:
        return False
    return True
