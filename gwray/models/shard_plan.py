"""Which blocks each shard of a sharded model holds: contiguous ranges balancing parameters.

Pure functions, shared by the shard actors (:mod:`gwray.models.sharded`) and ``gwray plan``
(:mod:`gwray.sizing`), which sizes shards without starting any.
"""
from __future__ import annotations

import numpy as np

from gwray.errors import GwrayInputError


def plan_blocks(weights: "list[int]", shards: int) -> list[tuple[int, int]]:
    """Split blocks into ``shards`` contiguous ranges minimising the heaviest range.

    Parameters
    ----------
    weights : list of int, length n_blocks
        Parameter count of each block (embeddings folded into the first, final norm into the last).
    shards : int

    Returns
    -------
    list of (start, stop) block ranges, one per shard, covering ``0..n_blocks`` in order.
    """
    n = len(weights)
    if shards > n:
        raise GwrayInputError(f"model.shards: {shards} shards for a model of {n} blocks (at most {n})")
    prefix = np.concatenate([[0], np.cumsum(weights)])
    # best[k][i]: smallest possible heaviest range when the first i blocks go to k shards.
    best = np.full((shards + 1, n + 1), np.inf)
    cut = np.zeros((shards + 1, n + 1), dtype=int)
    best[0][0] = 0
    for k in range(1, shards + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                cost = max(best[k - 1][j], prefix[i] - prefix[j])
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, j
    ranges, i = [], n
    for k in range(shards, 0, -1):
        ranges.append((int(cut[k][i]), int(i)))
        i = cut[k][i]
    return ranges[::-1]


def block_weights(base, family) -> list[int]:
    """Parameters each block brings to its shard (embeddings on block 0, final norm on the last)."""
    def count(name: str) -> int:
        return sum(p.numel() for p in base.get_submodule(name).parameters())

    weights = [count(family.block_name(i)) for i in range(family.n_blocks(base))]
    weights[0] += sum(count(name) for name in family.embeddings)
    if family.final_norm:
        weights[-1] += count(family.final_norm)
    return weights
