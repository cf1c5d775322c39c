"""Which GW pairs a run solves (:class:`Plan`), and which earlier pair's plan warm-starts each.

A run compares the layers of each checkpoint with each other (``i < j``: GW is symmetric and the
diagonal is 0 by definition) and, as ``compare.cross`` says, every layer of checkpoint A with every
layer of checkpoint B. :mod:`gwray.scheduler.batches` groups the pairs into batches for the workers.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


@dataclass(frozen=True)
class Block:
    """The pairs of one checkpoint pair, a contiguous range of the plan.

    Attributes
    ----------
    a, b : str
        Checkpoint ids; ``a == b``: the layer pairs ``i < j`` of ``a``; else every layer of ``a``
        (rows) against every layer of ``b`` (columns).
    offset : int
        Plan position of the block's first pair.
    rows, cols : int
        Layers of ``a`` and of ``b``.
    """

    a: str
    b: str
    offset: int
    rows: int
    cols: int

    @property
    def within(self) -> bool:
        return self.a == self.b

    @property
    def size(self) -> int:
        """Pairs in the block: ``L (L - 1) / 2`` within a checkpoint, ``L_a L_b`` across."""
        return self.rows * (self.rows - 1) // 2 if self.within else self.rows * self.cols

    def ij(self) -> tuple[np.ndarray, np.ndarray]:
        """Layer positions ``(i, j)`` of the block's pairs in plan order, each (size,) int64."""
        return _block_ij(self.rows, self.cols, self.within)


@functools.lru_cache(maxsize=16)
def _block_ij(rows: int, cols: int, within: bool) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(rows, 1) if within else np.divmod(np.arange(rows * cols), cols)
    i, j = i.astype(np.int64), j.astype(np.int64)
    i.flags.writeable = j.flags.writeable = False  # shared by every block of this shape
    return i, j


class Plan(Sequence):
    """The planned pairs, a read-only sequence of :class:`PairTask` in plan order, held as blocks
    (one per checkpoint pair) rather than as task objects: a 100-checkpoint × 80-layer sweep's
    950,000 pairs cost a few arrays, and a task is made when it is read.

    Attributes
    ----------
    layers : dict[str, list[str]]
        Checkpoint ids in order → their layer names in depth order.
    cross : str
        The ``compare.cross`` mode.
    blocks : list of Block
        In plan order (see :func:`plan_pairs`).
    """

    def __init__(self, layers: Mapping[str, Sequence[str]], cross: str,
                 pairs: Sequence[tuple[str, str]] | None = None):
        self.layers = {c: list(names) for c, names in layers.items()}
        self.cross = cross
        pairs = checkpoint_pairs(list(self.layers), cross) if pairs is None else list(pairs)
        self.blocks: list[Block] = []
        offset = 0
        for c, names in self.layers.items():  # training order: all of c's pairs before the next one's
            for a, b in [(c, c)] + [p for p in pairs if p[1] == c and p[0] != c]:
                block = Block(a, b, offset, len(self.layers[a]), len(names))
                self.blocks.append(block)
                offset += block.size
        self._len = offset
        self._starts = np.array([b.offset for b in self.blocks], dtype=np.int64)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self._task(p) for p in range(*k.indices(self._len))]
        k = int(k) + (self._len if k < 0 else 0)
        if not 0 <= k < self._len:
            raise IndexError("plan position out of range")
        return self._task(k)

    def __iter__(self):
        for block in self.blocks:
            yield from self.tasks(block)

    def _task(self, position: int) -> PairTask:
        block = self.blocks[int(np.searchsorted(self._starts, position, side="right")) - 1]
        i, j = block.ij()
        k = position - block.offset
        return PairTask(block.a, self.layers[block.a][i[k]], block.b, self.layers[block.b][j[k]],
                        int(i[k]), int(j[k]))

    def tasks(self, block: Block, local: np.ndarray | None = None) -> list[PairTask]:
        """The block's tasks (only those at block positions ``local``, when given), in plan order."""
        i, j = block.ij()
        if local is not None:
            i, j = i[local], j[local]
        na, nb = self.layers[block.a], self.layers[block.b]
        return [PairTask(block.a, na[x], block.b, nb[y], x, y) for x, y in zip(i.tolist(), j.tolist())]

    @property
    def within_pairs(self) -> int:
        """Pairs inside checkpoints (the rest are across checkpoints)."""
        return sum(b.size for b in self.blocks if b.within)

    def checkpoint_pairs(self) -> list[tuple[str, str]]:
        """The ``(a, b)`` checkpoint pairs that get a cross-checkpoint matrix, in plan order."""
        return [(b.a, b.b) for b in self.blocks if not b.within]

    def positions(self, checkpoint_a, layer_a, checkpoint_b, layer_b) -> np.ndarray:
        """Plan position of each pair given as four equal-length columns of names.

        Parameters
        ----------
        checkpoint_a, layer_a, checkpoint_b, layer_b : pyarrow array, chunked array or sequence of str
            Pair keys, e.g. the key columns of a pair-results file.

        Returns
        -------
        numpy.ndarray, (rows,) int64
            The position in the plan, or -1 for a pair the plan does not hold (another checkpoint,
            layer or checkpoint pair, or a within pair stored as ``i >= j``).
        """
        ca, ia = layer_positions(self.layers, checkpoint_a, layer_a)
        cb, ib = layer_positions(self.layers, checkpoint_b, layer_b)
        index = {c: k for k, c in enumerate(self.layers)}
        table = np.full((len(index) + 1, len(index) + 1), -1, dtype=np.int64)  # row/col -1: unknown
        for k, block in enumerate(self.blocks):
            table[index[block.a], index[block.b]] = k
        blk = table[ca, cb]
        ok = (blk >= 0) & (ia >= 0) & (ib >= 0)
        blk = np.where(ok, blk, 0)
        rows = np.array([b.rows for b in self.blocks], dtype=np.int64)[blk]
        cols = np.array([b.cols for b in self.blocks], dtype=np.int64)[blk]
        within = np.array([b.within for b in self.blocks], dtype=bool)[blk]
        ok &= ~within | (ia < ib)
        local = np.where(within, ia * rows - ia * (ia + 1) // 2 + (ib - ia - 1), ia * cols + ib)
        return np.where(ok, self._starts[blk] + local, -1)


def layer_positions(layers: Mapping[str, Sequence[str]], checkpoints, names) -> tuple[np.ndarray, np.ndarray]:
    """Where each row's layer is: its checkpoint's index in ``layers`` and the layer's position in
    that checkpoint, vectorised (Arrow), for columns of millions of rows.

    Parameters
    ----------
    layers : mapping of str to sequence of str
        Checkpoint ids in order → layer names in depth order.
    checkpoints, names : pyarrow array, chunked array or sequence of str
        One checkpoint id and one layer name per row.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray), each (rows,) int64
        -1 in both where the checkpoint or the layer is unknown.
    """
    known = pa.array([f"{c}\0{n}" for c, ns in layers.items() for n in ns], pa.string())
    # the index and depth of each known (checkpoint, layer), and -1 last: where unknown rows go
    ckpt = np.array([k for k, ns in enumerate(layers.values()) for _ in ns] + [-1], dtype=np.int64)
    depth = np.array([p for ns in layers.values() for p in range(len(ns))] + [-1], dtype=np.int64)
    joined = pc.binary_join_element_wise(_strings(checkpoints), _strings(names), "\0")
    found = pc.fill_null(pc.index_in(joined, value_set=known), -1).to_numpy(zero_copy_only=False)
    return ckpt[found], depth[found]


def _strings(values):
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.cast(pa.string()) if pa.types.is_dictionary(values.type) else values
    return pa.array(list(values), pa.string())


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
        A sequence of :class:`PairTask` in training order: per checkpoint ``c`` its
        ``L (L - 1) / 2`` pairs ``i < j`` (row by row), then, per checkpoint pair ``(A, c)`` ending
        at ``c``, the ``L_A × L_c`` pairs (row by row, including equal positions ``i == j``).
        Warm starts (:func:`warm_sources`) rely on this order: a pair's source is always planned
        before it.

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
    return Plan(layers, cross)


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
