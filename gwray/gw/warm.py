"""Warm-started GW: plans found for neighbouring problems as extra starts after the cold ones.

Consecutive checkpoints of a training run have nearly the same layer geometry, so the plan of
layer pair (i, j) at checkpoint t is a good start for (i, j) at t + 1; a plan is kept as its
permutation (n int32). The warm plans run *after* the configured (cold) starts, and the swap
search polishes one more CG end per warm plan, so every cold start runs and is polished as in a
cold solve and the result is not worse than the cold solve's: value = min(cold value, warm
values) — up to the solver's screen, which skips polishing CG ends more than 2× the best end
(a warm end that good wins anyway) — and float32 search noise between runs (~1e-7).

Why the cold starts are never skipped (measured on the toy digits run of ``bench/sweep.py``,
11 checkpoints × 13 layers, n = 256): the certified lower bound is 30-84 % below the values, so
no bound-based rule can show a warm plan is within 0.1 % of the best; and rules that skip the
cold starts when the warm plan's (and the identity plan's) objective barely moved between
checkpoints left values up to 0.3 % (drift 0.5 %) to 5 % (n = 20) above the cold solve's — the
landscape has many optima within a few percent, and a warm plan can keep its value while the
identity's basin deepens beside it. A warm-only solve also costs 0.8-1.0× a cold one with this
solver (its first linear step and the lower bound, two network-simplex EMDs, dominate).
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np

from gwray.gw.solver import GWResult, gromov_wasserstein

_POLISH = inspect.signature(gromov_wasserstein).parameters["polish"].default


def warm_gw(C1, C2, warm: Sequence[np.ndarray], *, aligned: bool, starts: Sequence[str],
            **solver_kwargs) -> GWResult:
    """GW from the configured starts, then from warm permutations; the best plan wins.

    Parameters
    ----------
    C1, C2 : numpy.ndarray of shape (n, n)
        Cost matrices (uniform weights; permutation starts need n = m).
    warm : sequence of numpy.ndarray of shape (n,)
        Permutation starts ``i -> warm[k][i]``; their init names are "given", "given:1", ...
    aligned : bool
    starts : sequence of str
        The configured (cold) starts, run first and exactly as without warm starts.
    **solver_kwargs
        Passed to :func:`gwray.gw.solver.gromov_wasserstein` (max_iter, tol, keep_coupling, ...).

    Returns
    -------
    GWResult
        ``value`` ≤ the value of the same call without ``warm`` (the warm starts only add
        candidates after the cold ones have run and been polished as usual).
    """
    chosen = [*starts, *(np.asarray(w) for w in warm)]
    # the swap search polishes the best `polish` CG ends: one more per warm start, so every cold
    # end the cold solve polishes is still polished, however good the warm ends are
    polish = solver_kwargs.pop("polish", _POLISH) + len(warm)
    return gromov_wasserstein(C1, C2, aligned=aligned, starts=chosen, polish=polish, **solver_kwargs)
