"""Pairwise-swap local search for square-loss GW on permutation plans (uniform weights, n = m).

For a permutation σ (plan T = P_σ / n) the GW objective is  const − 2 Q(σ) / n²  with
Q(σ) = Σ_ik C1_ik C2_σ(i)σ(k). Conditional gradient stops at a permutation that no single
assignment step improves; swapping two targets often still does, because the swap sees the
quadratic term that the linearisation drops. Every swap gain is read off W = C1 C2[σ][:, σ] in
O(n²), so a round costs no more than one matmul.
"""
from __future__ import annotations

import numpy as np

from gwray.gw.jit import njit


@njit
def best_swaps(C1: np.ndarray, W: np.ndarray, C2s: np.ndarray):
    """Every position's best swap partner and the gain in Q of that swap, in one O(n²) pass.

    The gain of swapping σ(i) and σ(j) is
    G_ij = 2 (W_ij + W_ji − W_ii − W_jj) + 4 C1_ij C2s_ij  (+ terms in the diagonals d = diag C1,
    e = diag C2s, which vanish for distance costs). G is symmetric, so each tile of the upper
    triangle updates the best of its rows and of its columns; tiles keep W's transposed reads in
    cache and no n² temporary is made (numpy's version spent more time allocating than adding).

    Parameters
    ----------
    C1 : (n, n) symmetric float64 or float32 ndarray
    W : (n, n) ndarray, ``C1 @ C2s``
    C2s : (n, n) ndarray, ``C2[σ][:, σ]`` (symmetric)

    Returns
    -------
    partner : (n,) int64 ndarray, the j maximising G_ij (−1 when n = 1)
    gain : (n,) float64 ndarray, G_i,partner(i) = Q(σ ∘ (i partner(i))) − Q(σ)
    """
    n = C1.shape[0]
    partner = np.full(n, -1, np.int64)
    gain = np.full(n, -np.inf)
    diag = False
    for i in range(n):
        diag = diag or C1[i, i] != 0.0 or C2s[i, i] != 0.0
    tile = 64
    for i0 in range(0, n, tile):
        for j0 in range(i0, n, tile):
            for i in range(i0, min(i0 + tile, n)):
                wi, di, ei = W[i, i], C1[i, i], C2s[i, i]
                for j in range(max(j0, i + 1), min(j0 + tile, n)):
                    g = 2.0 * (W[i, j] + W[j, i] - wi - W[j, j]) + 4.0 * C1[i, j] * C2s[i, j]
                    if diag:
                        dj, ej, c = C1[j, j], C2s[j, j], C2s[i, j]
                        g -= 2.0 * (di * (c - ei) + dj * (c - ej)) + 2.0 * C1[i, j] * (ei + ej)
                        g += (di - dj) * (ej - ei)
                    if g > gain[i]:
                        gain[i], partner[i] = g, j
                    if g > gain[j]:
                        gain[j], partner[j] = g, i
    return partner, gain


def _dot64(a: np.ndarray, b: np.ndarray) -> float:
    """Σ a ∘ b accumulated in float64 (O(size); float32 BLAS dots would sum in float32)."""
    return float(np.einsum("ij,ij->", a, b, dtype=np.float64))


def swap_search(C1: np.ndarray, C2: np.ndarray, cols: np.ndarray, max_rounds: int,
                W: np.ndarray | None = None):
    """Improve the permutation i -> cols[i] by rounds of disjoint improving swaps.

    Each round takes every position's best partner, picks a greedy set of k ≤ n/8 disjoint
    improving swaps and checks their exact joint gain in O(nk) (else tries the best single swap).
    An accepted set moves 2k rows and columns of C2[σ][:, σ] in place and gives W a rank-4k update
    (half a matmul at most).

    Parameters
    ----------
    C1, C2 : (n, n) symmetric float64 or float32 ndarrays (the search precision)
    cols : (n,) int ndarray, the permutation
    max_rounds : int
    W : (n, n) ndarray, optional
        ``C1 @ C2[cols][:, cols]`` when the caller has it (CG's gradient does), saving a matmul;
        it is updated in place.

    Returns
    -------
    cols : (n,) the improved permutation (a copy)
    changed : bool
    W : (n, n) ndarray, ``C1 @ C2[cols][:, cols]`` for the returned permutation
    """
    n = C1.shape[0]
    cols = cols.copy()
    C2s = C2[np.ix_(cols, cols)]
    W = C1 @ C2s if W is None else W
    Q, changed = float(np.trace(W)), False
    for _ in range(max_rounds):
        best, gain = best_swaps(C1, W, C2s)  # O(n²), no sort of all pairs
        thresh = 1e-12 * max(abs(Q), 1e-300)
        todo = np.flatnonzero(gain > thresh)
        if todo.size == 0:
            break
        # at most n/8 swaps a round: smaller batches interact less and end lower (measured), and
        # W's update stays a rank-(n/2) product, half a matmul
        used, pairs = np.zeros(n, bool), []
        for i in todo[np.argsort(gain[todo])[::-1]][: max(1, n // 8)]:
            j = best[i]
            if not (used[i] or used[j]):
                used[i] = used[j] = True
                pairs.append((i, j))
        for subset in (pairs, pairs[:1]):
            a, b = np.array(subset).T
            M, src = np.concatenate((a, b)), np.concatenate((b, a))  # position M[t] gets src[t]'s
            pi = np.arange(n)
            pi[M] = src
            # the new C2[σ][:, σ] differs from C2s only in rows and columns M: D = new − C2s
            rows = C2s[src][:, pi]
            D = rows - C2s[M]
            # summed in float64 whatever the search precision: the check decides acceptance
            dQ = 2.0 * _dot64(C1[M], D) - _dot64(C1[np.ix_(M, M)], D[:, M])
            if dQ > thresh:
                E = D.T.copy()  # D's columns M, less rows M (already in C1[:, M] @ D)
                E[M] = 0.0
                W += C1[:, M] @ D
                W[:, M] += C1 @ E
                C2s[M] = rows
                C2s[:, M] = rows.T
                cols[M] = cols[src]
                Q, changed = float(np.trace(W)), True
                break
        else:
            break
    return cols, changed, W
