"""Host twins of the swap search's device kernels (:mod:`gwray.gw.swap_kernels`): the same
algorithms in numba, run where there is no CUDA (CPU tests and CI); with CUDA a test checks the
kernels against them.

* :func:`greedy_set`: the serial search's disjoint swap set. Of the k = n/8 positions with the
  largest gains (in the given order), each improving one (gain > thresh) takes its best partner
  unless either is taken — :func:`gwray.gw.local_search.swap_search`'s greedy loop, per problem.
* :func:`delta_q`: the exact change of Q(σ) = Σ_ik C1_ik C2_σ(i)σ(k) (float64, from the float64
  costs) when position i takes the target of position src[i]: with M the moved positions and
  D_ik = C2_σ'(i)σ'(k) − C2_σ(i)σ(k), ΔQ = Σ_{i∈M} Σ_k C1_ik D_ik (2 − [k ∈ M]), O(|M| n)
  instead of the O(n²) of two full objectives.
"""
from __future__ import annotations

import numpy as np

from gwray.gw.jit import njit


@njit
def _greedy(order, gain, partner, thresh, k, src):
    B, n = gain.shape
    taken = np.zeros(n, np.bool_)
    for b in range(B):
        taken[:] = False
        for i in range(n):
            src[b, i] = i
        for t in range(k):
            i = order[b, t]
            j = partner[b, i]
            if gain[b, i] > thresh[b] and not taken[i] and not taken[j]:
                taken[i] = True
                taken[j] = True
                src[b, i] = j
                src[b, j] = i


def greedy_set(order: np.ndarray, gain: np.ndarray, partner: np.ndarray, thresh: np.ndarray,
               k: int) -> np.ndarray:
    """The greedy disjoint swap set per problem.

    Parameters
    ----------
    order : (B, n) int64, positions by gain, largest first; gain : (B, n) float; partner : (B, n)
    int64, each position's best swap partner; thresh : (B,) float64; k : int, positions tried.

    Returns
    -------
    src : (B, n) int64: position i takes the target of position src[i].
    """
    src = np.empty(gain.shape, np.int64)
    _greedy(order, gain, partner, thresh, int(k), src)
    return src


@njit
def _delta(Ca, Cb, ia, ib, cols, src, out):
    B, n = cols.shape
    moved = np.zeros(n, np.bool_)
    for b in range(B):
        C1, C2, s, sig = Ca[ia[b]], Cb[ib[b]], src[b], cols[b]
        for i in range(n):
            moved[i] = s[i] != i
        total = 0.0
        for i in range(n):
            if moved[i]:
                new_i, old_i = sig[s[i]], sig[i]
                row = 0.0
                for k in range(n):
                    d = C2[new_i, sig[s[k]]] - C2[old_i, sig[k]]
                    row += C1[i, k] * d * (1.0 if moved[k] else 2.0)
                total += row
        out[b] = total


def delta_q(Ca: np.ndarray, Cb: np.ndarray, ia: np.ndarray, ib: np.ndarray, cols: np.ndarray,
            src: np.ndarray) -> np.ndarray:
    """Exact ΔQ of the moves ``src`` for the permutations ``cols`` of pairs (Ca[ia[b]], Cb[ib[b]]).

    Parameters
    ----------
    Ca, Cb : (La, n, n), (Lb, n, n) float64 stacks; ia, ib : (B,) int64 layer indices;
    cols : (B, n) int64 permutations; src : (B, n) int64 products of disjoint transpositions.

    Returns
    -------
    (B,) float64 ndarray.
    """
    out = np.empty(cols.shape[0])
    _delta(Ca, Cb, ia, ib, cols, src, out)
    return out
