"""Which GW pairs a run solves, and how they are grouped into batches for the workers.

A run compares the layers of each checkpoint with each other (``i < j``: GW is symmetric and the
diagonal is 0 by definition) and, as ``compare.cross`` says, every layer of checkpoint A with every
layer of checkpoint B. Pairs are then grouped into batches of equal problem size so that the
batched GPU solver can stack them, and ordered tile by tile so that consecutive batches touch few
distinct layers: a worker that solved one batch already holds most cost matrices of the next.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gwray.errors import GwrayInputError

CROSS_MODES = ("none", "consecutive", "all", "final")

LayerKey = tuple[str, str]
"""``(checkpoint id, layer name)``: what one cost matrix belongs to."""
PairKey = tuple[str, str, str, str]
"""``(checkpoint_a, layer_a, checkpoint_b, layer_b)``: one GW pair."""


@dataclass(frozen=True)
class PairTask:
    """One GW problem: layer ``layer_a`` of ``checkpoint_a`` against ``layer_b`` of ``checkpoint_b``.

    ``i`` and ``j`` are the layers' positions in their checkpoints (used for ordering only; a
    pair's identity is its four names, which is also how the pair-results dataset stores it).
    """

    checkpoint_a: str
    layer_a: str
    checkpoint_b: str
    layer_b: str
    i: int = field(default=0, compare=False)
    j: int = field(default=0, compare=False)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """``(checkpoint_a, layer_a, checkpoint_b, layer_b)``, the pair's identity."""
        return (self.checkpoint_a, self.layer_a, self.checkpoint_b, self.layer_b)

    @property
    def within(self) -> bool:
        """True when both layers belong to the same checkpoint."""
        return self.checkpoint_a == self.checkpoint_b

    @property
    def cost_keys(self) -> tuple[LayerKey, LayerKey]:
        """The two cost matrices the pair needs."""
        return (self.checkpoint_a, self.layer_a), (self.checkpoint_b, self.layer_b)


class Plan(list):
    """The planned pairs: a ``list[PairTask]`` that also remembers what it was planned from.

    Attributes
    ----------
    layers : dict[str, list[str]]
        Checkpoint ids in order → their layer names in depth order.
    cross : str
        The ``compare.cross`` mode.
    """

    def __init__(self, tasks: Sequence[PairTask], layers: Mapping[str, Sequence[str]], cross: str):
        super().__init__(tasks)
        self.layers = {c: list(names) for c, names in layers.items()}
        self.cross = cross

    def checkpoint_pairs(self) -> list[tuple[str, str]]:
        """The ``(a, b)`` checkpoint pairs that get a cross-checkpoint matrix, in plan order."""
        return checkpoint_pairs(list(self.layers), self.cross)


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

    @property
    def cost_keys(self) -> set[LayerKey]:
        """Every (checkpoint, layer) whose cost matrix the batch needs."""
        return {k for t in self.tasks for k in t.cost_keys}

    def __len__(self) -> int:
        return len(self.tasks)


def checkpoint_pairs(checkpoints: Sequence[str], cross: str) -> list[tuple[str, str]]:
    """Ordered checkpoint pairs compared layer by layer under ``compare.cross = cross``.

    ``none``: no pair; ``consecutive``: (c0, c1), (c1, c2), …; ``all``: every (ck, cl) with k < l;
    ``final``: every earlier checkpoint against the last one.
    """
    if cross not in CROSS_MODES:
        raise GwrayInputError(f"compare.cross: must be one of {', '.join(CROSS_MODES)} (got {cross!r})")
    ids = list(checkpoints)
    if cross == "consecutive":
        return list(zip(ids, ids[1:]))
    if cross == "all":
        return [(a, b) for k, a in enumerate(ids) for b in ids[k + 1:]]
    if cross == "final":
        return [(a, ids[-1]) for a in ids[:-1]]
    return []


def plan_pairs(layers: Mapping[str, Sequence[str]], cross: str = "none") -> Plan:
    """Every GW pair of a run, each once, in a canonical order.

    Parameters
    ----------
    layers : mapping of str to sequence of str
        Checkpoint ids in order (the dict order; ``final`` means the last) → layer names.
    cross : {"none", "consecutive", "all", "final"}
        Which checkpoint pairs get a full layer-by-layer cross matrix.

    Returns
    -------
    Plan
        A list of :class:`PairTask` in training order: per checkpoint ``c`` its ``L (L - 1) / 2``
        pairs ``i < j``, then, per checkpoint pair ``(A, c)`` ending at ``c``, the ``L_A × L_c``
        pairs (including equal positions ``i == j``). Warm starts (:func:`warm_sources`) rely on
        this order: a pair's source is always planned before it.

    Raises
    ------
    GwrayInputError
        Unknown ``cross`` mode, or a checkpoint that lists a layer name twice.
    """
    for ckpt, names in layers.items():
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise GwrayInputError(f"checkpoint {ckpt!r}: layer {name!r} listed twice")
            seen.add(name)
    tasks, pairs = [], checkpoint_pairs(list(layers), cross)
    for c, names in layers.items():  # training order: all of c's pairs before the next one's
        tasks += [PairTask(c, names[i], c, names[j], i, j)
                  for i in range(len(names)) for j in range(i + 1, len(names))]
        for a, b in (p for p in pairs if p[1] == c):
            tasks += [PairTask(a, la, b, lb, i, j)
                      for i, la in enumerate(layers[a]) for j, lb in enumerate(layers[b])]
    return Plan(tasks, layers, cross)


def warm_sources(plan: Plan) -> dict[PairKey, tuple[PairKey, bool]]:
    """The planned pair whose plan is the warm start of each pair, and whether it is transposed.

    A pair's source always comes earlier in ``plan`` (training order):

    - within ``(c, x, c, y)``: the same layers at the previous checkpoint, ``(c', x, c', y)``;
    - cross ``(a, x, b, y)``: the same layers one checkpoint earlier on both sides
      ``(a', x, b', y)`` (``consecutive``, ``all``), else on the earlier side ``(a', x, b, y)``
      (``final``), else the within pair ``(a, x, a, y)`` of ``a`` — transposed (its plan runs
      y → x) when y precedes x; a pair of a layer with itself (x = y) then has none (the
      identity start is already the natural one).

    Where layer names differ (models of different depths), a source exists only for names both
    have. Returns ``{pair key: (source key, transposed)}`` for the pairs that have a source.
    """
    keys = {t.key for t in plan}
    order = list(plan.layers)
    prev = {c: order[k - 1] for k, c in enumerate(order) if k}
    out: dict[PairKey, tuple[PairKey, bool]] = {}
    for t in plan:
        a, x, b, y = t.key
        if t.within:
            cands = [((prev.get(a), x, prev.get(a), y), False)]
        else:
            cands = [((prev.get(a), x, prev.get(b), y), False), ((prev.get(a), x, b, y), False),
                     ((a, x, a, y), False), ((a, y, a, x), True)]
        for key, transposed in cands:
            if key in keys:
                out[t.key] = (key, transposed)
                break
    return out


def make_batches(tasks: Sequence[PairTask], sizes: Mapping[LayerKey, int],
                 batch_pairs: int) -> list[Batch]:
    """Group pairs into batches of equal problem size, ordered for cost-matrix reuse.

    Within a checkpoint pair the ``i × j`` grid is cut into bands of ``w = ⌊√batch_pairs⌋`` rows
    and walked column by column, so a batch of ``B`` pairs needs about ``w + B / w ≈ 2√B`` cost
    matrices (not ``2B``) and the next batch shares the band's ``w`` rows with it.

    Parameters
    ----------
    tasks : sequence of PairTask
        Pairs to solve (a plan, or what is left of one).
    sizes : mapping of (checkpoint, layer) to int
        Rows ``n`` of each layer's activations.
    batch_pairs : int
        Maximum pairs per batch (``resources.batch_pairs``); the last batch of a size group
        may be smaller.

    Returns
    -------
    list of Batch
    """
    if batch_pairs < 1:
        raise GwrayInputError(f"resources.batch_pairs: must be >= 1 (got {batch_pairs})")
    for t in tasks:
        for key in t.cost_keys:
            if key not in sizes:
                raise GwrayInputError(f"checkpoint {key[0]!r}: layer {key[1]!r} has no activations")
    width = max(1, math.isqrt(batch_pairs))
    blocks: dict[tuple[str, str], int] = {}
    groups: dict[tuple[int, int], list[PairTask]] = {}
    for t in tasks:
        blocks.setdefault((t.checkpoint_a, t.checkpoint_b), len(blocks))
        groups.setdefault((sizes[t.cost_keys[0]], sizes[t.cost_keys[1]]), []).append(t)
    batches: list[Batch] = []
    for n, members in groups.items():
        members.sort(key=lambda t: (blocks[t.checkpoint_a, t.checkpoint_b], t.i // width, t.j, t.i))
        for start in range(0, len(members), batch_pairs):
            batches.append(Batch(len(batches), tuple(members[start:start + batch_pairs]), n))
    return batches
