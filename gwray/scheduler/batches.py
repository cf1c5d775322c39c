"""How a plan's pairs are grouped into batches for the workers.

Pairs are grouped into batches of equal problem size so that the batched GPU solver can stack
them, and ordered tile by tile so that consecutive batches touch few distinct layers: a worker that
solved one batch already holds most cost matrices of the next.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gwray.errors import GwrayInputError
from gwray.scheduler.plan import LayerKey, PairTask, Plan


@dataclass(frozen=True)
class Batch:
    """Pairs solved by one worker call; all have the same problem size ``n = (n_a, n_b)``.

    Attributes
    ----------
    index : int
        Position in the batch list (stable for a given plan and batch size).
    tasks : tuple[PairTask, ...]
    n : tuple[int, int]
        Rows of the layer-A and layer-B activations (cost matrices are (n_a, n_a), (n_b, n_b)).
    """

    index: int
    tasks: tuple[PairTask, ...]
    n: tuple[int, int]

    @functools.cached_property
    def cost_keys(self) -> frozenset[LayerKey]:
        """Every (checkpoint, layer) whose cost matrix the batch needs (computed once: the pool
        asks for it on every placement decision)."""
        return frozenset(k for t in self.tasks for k in t.cost_keys)

    def __len__(self) -> int:
        return len(self.tasks)


def make_batches(tasks: Sequence[PairTask], sizes: Mapping[LayerKey, int],
                 batch_pairs: int) -> list[Batch]:
    """Group pairs into batches of equal problem size, ordered for cost-matrix reuse.

    Within a checkpoint pair the ``i × j`` grid is cut into bands of ``w = ⌊√batch_pairs⌋`` rows
    and walked column by column, so a batch of ``B`` pairs needs about ``w + B / w ≈ 2√B`` cost
    matrices (not ``2B``) and the next batch shares the band's ``w`` rows with it. Checkpoint
    pairs follow each other in the order they first appear in ``tasks``; a batch may run on
    into the next one.

    Parameters
    ----------
    tasks : sequence of PairTask
        Pairs to solve (a plan, or what is left of one).
    sizes : mapping of (checkpoint, layer) to int
        Rows ``n`` of each layer's activations.
    batch_pairs : int
        Maximum pairs per batch (``resources.batch_pairs``); the last batch of each problem
        size may be smaller.

    Returns
    -------
    list of Batch
    """
    _check_batch_pairs(batch_pairs)
    for t in tasks:
        for key in t.cost_keys:
            if key not in sizes:
                raise GwrayInputError(f"checkpoint {key[0]!r}: layer {key[1]!r} has no activations")
    blocks: dict[tuple[str, str], list[PairTask]] = {}
    for t in tasks:
        blocks.setdefault((t.checkpoint_a, t.checkpoint_b), []).append(t)
    return list(_batches(blocks.values(), sizes, batch_pairs))


def plan_batches(plan: Plan, todo: np.ndarray, sizes: Mapping[LayerKey, int],
                 batch_pairs: int) -> Iterator[Batch]:
    """:func:`make_batches` of the plan's pairs where ``todo`` is True, made as they are consumed:
    one block's tasks at a time, never the whole plan's.

    Parameters
    ----------
    plan : Plan
    todo : numpy.ndarray, (len(plan),) bool
        Which pairs to solve.
    sizes, batch_pairs
        As :func:`make_batches`; ``sizes`` must hold every layer of the plan.
    """
    _check_batch_pairs(batch_pairs)
    blocks = (plan.tasks(b, np.flatnonzero(todo[b.offset:b.offset + b.size])) for b in plan.blocks)
    return _batches(blocks, sizes, batch_pairs)


def _check_batch_pairs(batch_pairs: int) -> None:
    if batch_pairs < 1:
        raise GwrayInputError(f"resources.batch_pairs: must be >= 1 (got {batch_pairs})")


def _batches(blocks: Iterable[list[PairTask]], sizes: Mapping[LayerKey, int],
             batch_pairs: int) -> Iterator[Batch]:
    """Batches of the tasks of each block (one checkpoint pair's tasks) in band order; tasks of
    one problem size wait for the next block to fill their batch."""
    width = max(1, math.isqrt(batch_pairs))
    open_: dict[tuple[int, int], list[PairTask]] = {}  # problem size → tasks not yet batched
    count = 0
    for tasks in blocks:
        for t in sorted(tasks, key=lambda t: (t.i // width, t.j, t.i)):
            n = (sizes[t.cost_keys[0]], sizes[t.cost_keys[1]])
            members = open_.setdefault(n, [])
            members.append(t)
            if len(members) == batch_pairs:
                yield Batch(count, tuple(members), n)
                count += 1
                del open_[n]
    for n, members in open_.items():
        yield Batch(count, tuple(members), n)
        count += 1
