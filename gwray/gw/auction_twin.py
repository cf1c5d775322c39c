"""The host twin of the device auction kernel (:mod:`gwray.gw.auction_kernel`): the same
algorithm, the same order of bids and the same float64 arithmetic, run by numba over B problems.

The CPU tests and CI run this twin; with CUDA present a test checks that the kernel returns the
twin's permutations and prices bit for bit. The algorithm (Bertsekas 1988, Gauss-Seidel forward
auction with ε-scaling), per problem b:

* a phase at ε first frees every assigned row that is not ε-optimal at the current prices
  (ε-complementary slackness, CS): its violation best_i − (A_i,col(i) − p_col(i)) exceeds ε.
  In the first phase ε is raised to the largest violation (capped at ``eps_cap``): warm prices
  that are far from the new problem's then get the coarse phases they need, instead of a price
  war at a tiny ε (on CG gradients of MiniLM layers this cut a warm sequence's bids 3.5×);
* then one row bids at a time: the row just evicted, else the lowest-index free row. It takes its
  best column j1 (value v1 = A_ij − p_j, the lowest index among ties) and raises p_j1 by
  v1 − v2 + ε (v2: its second-best value; v1 when n = 1), evicting j1's owner;
* when no row is free the phase ends; ε ← max(ε / step, ε_final) until ε_final is done.

At the end every row is within ε_final of its best column (the bid keeps CS with prices that only
rise), so the permutation's total benefit is within n·ε_final of the optimum (Bertsekas, "Linear
network optimization", Prop. 7.1). ``max_bids`` caps the bids of one call: a problem that hits it
returns with ``done`` False and its free rows given the free columns in index order.
"""
from __future__ import annotations

import numpy as np

from gwray.gw.jit import njit


@njit
def epsilons(lo, hi, n, rel, tiny, warm_factor, warm):
    """(first ε, cap, final ε) of one problem, float64, from its benefits' range [lo, hi]:
    ε_final = max(rel · span / n, 64 ulps of max |A| + span) (the bound n·ε_final), a cold
    first ε of span / 8 (also the cap of a warm one), a warm first ε of ε_final · warm_factor."""
    lo, hi = np.float64(lo), np.float64(hi)
    span = max(hi - lo, tiny)
    eps_final = max(rel * span / n, 64.0 * 2.220446049250313e-16 * (max(abs(hi), abs(lo)) + span))
    cap = max(0.125 * span, eps_final)
    return (min(eps_final * warm_factor, cap) if warm else cap), cap, eps_final


@njit
def _complete(col, owner):
    """The free rows get the free columns in index order (after the bid budget ran out)."""
    n, j = col.shape[0], 0
    for i in range(n):
        if col[i] < 0:
            while owner[j] >= 0:
                j += 1
            col[i] = j
            owner[j] = i


@njit
def _solve_one(A, p, col, owner, viol, eps, eps_cap, eps_final, step, max_bids):
    """One problem in place (``col`` row → column, −1 free; ``p`` float64 prices); returns
    (bids, done)."""
    n = A.shape[0]
    owner[:] = -1
    for i in range(n):
        if col[i] >= 0:
            owner[col[i]] = i
    bids, first = 0, True
    while True:
        worst = -np.inf
        for i in range(n):  # the CS pass: each assigned row's violation
            j = col[i]
            viol[i] = -np.inf
            if j >= 0:
                best = -np.inf
                for k in range(n):
                    best = max(best, np.float64(A[i, k]) - p[k])
                viol[i] = best - (np.float64(A[i, j]) - p[j])
                worst = max(worst, viol[i])
        if first:
            eps = min(max(worst, eps), eps_cap)
            first = False
        for i in range(n):  # free the rows that are not ε-optimal
            if viol[i] > eps:
                owner[col[i]] = -1
                col[i] = -1
        ptr, nxt = 0, -1
        while True:
            if nxt < 0:
                while ptr < n and col[ptr] >= 0:
                    ptr += 1
                if ptr >= n:
                    break
                nxt = ptr
            if bids >= max_bids:
                _complete(col, owner)
                return bids, False
            i = nxt
            v1, v2, j1 = -np.inf, -np.inf, -1
            for k in range(n):
                v = np.float64(A[i, k]) - p[k]
                if v > v1:
                    v2, v1, j1 = v1, v, k
                elif v > v2:
                    v2 = v
            if v2 == -np.inf:
                v2 = v1
            p[j1] = p[j1] + (v1 - v2) + eps
            nxt = owner[j1]
            owner[j1] = i
            col[i] = j1
            if nxt >= 0:
                col[nxt] = -1
            bids += 1
        if eps <= eps_final:
            return bids, True
        eps = max(eps / step, eps_final)


@njit
def _solve_all(A, prices, cols, lo, hi, params, warm, active, step, max_bids, bids, done):
    n = A.shape[1]
    owner = np.empty(n, np.int32)
    viol = np.empty(n, np.float64)
    for b in range(A.shape[0]):
        if active[b]:
            start, cap, final = epsilons(lo[b], hi[b], n, params[0], params[1], params[2], warm[b])
            if not warm[b]:
                prices[b, :] = 0.0
            bids[b], done[b] = _solve_one(A[b], prices[b], cols[b], owner, viol, start, cap, final,
                                          step, max_bids)


def auction_twin(A: np.ndarray, prices: np.ndarray, cols: np.ndarray, lo: np.ndarray,
                 hi: np.ndarray, params: np.ndarray, warm: np.ndarray, active: np.ndarray,
                 step: float, max_bids: int, bids: np.ndarray, done: np.ndarray) -> None:
    """Run the auction on the ``active`` problems, in place on ``prices``, ``cols``, ``bids`` and
    ``done``.

    Parameters
    ----------
    A : (B, n, n) float32 or float64 ndarray, benefits (row i of problem b gets cols[b, i]).
    prices : (B, n) float64 ndarray, column prices (a warm start where ``warm``; else zeroed).
    cols : (B, n) int32 ndarray, the previous assignment (−1: none), kept where ε-optimal.
    lo, hi : (B,) ndarrays in A's dtype, each problem's smallest and largest benefit.
    params : (3,) float64 ndarray: ``rel`` (the final ε relative to the range / n), the smallest
        positive value of A's dtype, and a warm problem's first ε over its last (see
        :func:`epsilons`; a warm first ε is then raised to the largest CS violation of ``cols``
        at ``prices``, at most a cold problem's).
    warm, active : (B,) int32 ndarrays (non-zero: warm-started, solved).
    step : float > 1, ε's factor between phases; max_bids : int, bids per problem at most (then
        the free rows get the free columns in index order and ``done`` is 0).
    bids : (B,) int64 ndarray, out: bids made (left as given for inactive problems).
    done : (B,) int32 ndarray, out: 1 where the last phase finished (left as given for inactive
        problems).
    """
    _solve_all(A, prices, cols, lo, hi, params, warm, active, float(step), int(max_bids), bids, done)
