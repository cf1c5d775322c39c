"""Exact segmentation of the depth order into contiguous groups (dynamic programming).

A segment [a, b) of layers costs its within-segment scatter

    cost(a, b) = Σ_{a ≤ i < j < b} D_ij / (b - a)

which is the k-means sum of squares when D holds squared Euclidean distances, and is 0 for a
single layer. For every k the DP returns the segmentation of 0 … L-1 into k contiguous,
non-empty segments with the least total cost — exactly, in O(k L²). Pure math: no Ray, no I/O.
"""
from __future__ import annotations

import numpy as np


def segment_costs(D: np.ndarray) -> np.ndarray:
    """Cost of every segment.

    Parameters
    ----------
    D : np.ndarray, shape (L, L)
        Symmetric distances with a zero diagonal.

    Returns
    -------
    np.ndarray, shape (L + 1, L + 1)
        ``C[a, b]`` = cost of segment [a, b) for a < b (inf elsewhere).
    """
    L = D.shape[0]
    P = np.zeros((L + 1, L + 1))
    P[1:, 1:] = D.cumsum(0).cumsum(1)  # P[a, b] = Σ_{i<a, j<b} D_ij
    a = np.arange(L + 1)[:, None]
    b = np.arange(L + 1)[None, :]
    block = P[b, b] - P[a, b] - P[b, a] + P[a, a]  # Σ over [a,b)×[a,b), both orders
    with np.errstate(divide="ignore", invalid="ignore"):
        C = np.where(b > a, block / 2.0 / np.maximum(b - a, 1), np.inf)
    return C


def segmentations(D: np.ndarray, kmax: int) -> dict[int, tuple[np.ndarray, float]]:
    """Optimal contiguous segmentations for k = 1 … kmax.

    Parameters
    ----------
    D : np.ndarray, shape (L, L)
        Symmetric distances with a zero diagonal.
    kmax : int
        Largest number of segments, 1 ≤ kmax ≤ L.

    Returns
    -------
    dict
        ``{k: (labels, cost)}``: labels, shape (L,), int — segment index of each layer in depth
        order; cost — the minimal total within-segment cost.
    """
    L = D.shape[0]
    C = segment_costs(D)
    best = np.full((kmax + 1, L + 1), np.inf)  # best[k, b]: layers [0, b) in k segments
    arg = np.zeros((kmax + 1, L + 1), dtype=int)  # start of the last segment
    best[0, 0] = 0.0
    for k in range(1, kmax + 1):
        for b in range(k, L + 1):
            cand = best[k - 1, :b] + C[:b, b]
            a = int(np.argmin(cand))
            best[k, b], arg[k, b] = cand[a], a
    out = {}
    for k in range(1, kmax + 1):
        labels = np.empty(L, dtype=int)
        b = L
        for seg in range(k, 0, -1):
            a = arg[seg, b]
            labels[a:b] = seg - 1
            b = a
        out[k] = (labels, float(best[k, L]))
    return out
