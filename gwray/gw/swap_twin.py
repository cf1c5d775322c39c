"""Host twin of the swap search's round kernel (:mod:`gwray.gw.swap_kernels`): the same algorithm
in numba, run where there is no CUDA (CPU tests and CI); with CUDA a test checks the kernel
against it.

One round for each active problem b, given every position's best swap (gain, partner):

1. the positions ordered by gain, largest first (the lowest index first among equal gains);
   the serial search's disjoint swap set (:func:`gwray.gw.local_search.swap_search`'s greedy
   loop): of the first k = n/8 positions in that order, each improving one (gain > 1e-12 |Q|)
   takes its best partner unless either is already taken;
2. its exact gain in float64, from the float64 costs: with M the moved positions and
   D_ik = C2_σ'(i)σ'(k) − C2_σ(i)σ(k), ΔQ = Σ_{i∈M} Σ_k C1_ik D_ik (2 − [k ∈ M]) (C1 and D are
   symmetric), O(|M| n) instead of two O(n²) objectives; the same for the single best swap;
3. the set is applied when its ΔQ exceeds 1e-12 |Q|, else the single swap when its own does,
   else the problem stops (``active`` cleared). Q(σ) = Σ_ik C1_ik C2_σ(i)σ(k) follows the moves.
"""
from __future__ import annotations

import numpy as np

from gwray.gw.jit import njit


@njit
def _delta(C1, C2, sig, new, moved, rows):
    """ΔQ of moving from σ to σ' = ``new`` (the moved positions ``rows``, mask ``moved``)."""
    n, total = sig.shape[0], 0.0
    for i in rows:
        row = 0.0
        for k in range(n):
            d = C2[new[i], new[k]] - C2[sig[i], sig[k]]
            row += C1[i, k] * d * (1.0 if moved[k] else 2.0)
        total += row
    return total


@njit
def _round(gain, partner, k, Ca, Cb, ia, ib, cols, Q, active, changed):
    B, n = gain.shape
    taken = np.zeros(n, np.bool_)
    single = np.zeros(n, np.bool_)
    for b in range(B):
        if not active[b]:
            continue
        thresh = 1e-12 * max(abs(Q[b]), 1e-300)
        order = np.argsort(-gain[b], kind="mergesort")
        sig, C1, C2 = cols[b], Ca[ia[b]], Cb[ib[b]]
        new = sig.copy()
        taken[:] = False
        rows = []
        for t in range(k):
            i = order[t]
            j = partner[b, i]
            if gain[b, i] > thresh and not taken[i] and not taken[j]:
                taken[i] = True
                taken[j] = True
                new[i], new[j] = sig[j], sig[i]
                rows.append(i)
                rows.append(j)
        d_set = _delta(C1, C2, sig, new, taken, np.array(rows, np.int64)) if len(rows) else 0.0
        i0 = order[0]
        j0 = partner[b, i0]
        one = sig.copy()
        one[i0], one[j0] = sig[j0], sig[i0]
        single[:] = False
        single[i0] = single[j0] = True
        d_one = _delta(C1, C2, sig, one, single, np.array([i0, j0], np.int64))
        if d_set > thresh:
            cols[b] = new
            Q[b] += d_set
            changed[b] = 1
        elif gain[b, i0] > thresh and d_one > thresh:
            cols[b] = one
            Q[b] += d_one
            changed[b] = 1
        else:
            active[b] = 0


def swap_round(gain, partner, k: int, Ca, Cb, ia, ib, cols, Q, active, changed) -> None:
    """One swap-search round for every active problem, in place on ``cols``, ``Q``, ``active``
    and ``changed``.

    Parameters
    ----------
    gain : (B, n) float32, each position's best swap gain; partner : (B, n) int64, its best
    partner; k : int, positions tried.
    Ca, Cb : (La, n, n), (Lb, n, n) float64 stacks; ia, ib : (B,) int64 layers of each pair.
    cols : (B, n) int64 permutations; Q : (B,) float64, Q(cols) (both updated by a move).
    active : (B,) int32 (cleared where nothing improves); changed : (B,) int32 (set by a move).
    """
    _round(gain, partner, int(k), Ca, Cb, ia, ib, cols, Q, active, changed)
