"""Pairwise-swap local search for square-loss GW on permutation plans (uniform weights, n = m).

For a permutation σ (plan T = P_σ / n) the GW objective is  const − 2 Q(σ) / n²  with
Q(σ) = Σ_ik C1_ik C2_σ(i)σ(k). Conditional gradient stops at a permutation that no single
assignment step improves; swapping two targets often still does, because the swap sees the
quadratic term that the linearisation drops. Every swap gain is read off W = C1 C2[σ][:, σ] in
O(n²), so a round costs no more than one matmul.
"""
from __future__ import annotations

import numpy as np


def swap_gain(C1: np.ndarray, W: np.ndarray, C2s: np.ndarray) -> np.ndarray:
    """Gain in Q of swapping σ(i) and σ(j), for every pair (i, j).

    Parameters
    ----------
    C1 : (n, n) symmetric float64 ndarray
    W : (n, n) ndarray, ``C1 @ C2s``
    C2s : (n, n) ndarray, ``C2[σ][:, σ]`` (symmetric)

    Returns
    -------
    (n, n) ndarray G with G[i, j] = Q(σ ∘ (i j)) − Q(σ), symmetric; −inf on the diagonal.
    """
    w = np.diagonal(W)
    G = W + W.T  # in place from here on: each n² temporary costs as much as the arithmetic
    G -= w[:, None]
    G -= w[None, :]
    G *= 2.0
    H = np.multiply(C1, C2s)
    H *= 4.0
    G += H
    d1, e = np.diagonal(C1), np.diagonal(C2s)
    if d1.any() or e.any():  # terms that vanish with zero diagonals (checked by brute force)
        G -= 2.0 * (d1[:, None] * (C2s - e[:, None]) + d1[None, :] * (C2s - e[None, :]))
        G -= 2.0 * C1 * (e[:, None] + e[None, :])
        G += (d1[:, None] - d1[None, :]) * (e[None, :] - e[:, None])
    np.fill_diagonal(G, -np.inf)
    return G


def swap_search(C1: np.ndarray, C2: np.ndarray, cols: np.ndarray, max_rounds: int,
                W: np.ndarray | None = None):
    """Improve the permutation i -> cols[i] by rounds of disjoint improving swaps.

    Each round takes every position's best partner, picks a greedy set of k ≤ n/8 disjoint
    improving swaps and checks their exact joint gain in O(nk) (else tries the best single swap).
    An accepted set moves 2k rows and columns of C2[σ][:, σ] in place and gives W a rank-4k update
    (half a matmul at most).

    Parameters
    ----------
    C1, C2 : (n, n) symmetric float64 ndarrays
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
        G = swap_gain(C1, W, C2s)
        thresh = 1e-12 * max(abs(Q), 1e-300)
        best = G.argmax(axis=1)  # each position's best partner: O(n²), no sort of all pairs
        gain = G[np.arange(n), best]
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
            dQ = 2.0 * float(np.vdot(C1[M], D)) - float(np.vdot(C1[np.ix_(M, M)], D[:, M]))
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
