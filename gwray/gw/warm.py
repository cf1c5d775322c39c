"""Warm-started GW across checkpoints: a pair's solver state at checkpoint t starts it at t + 1.

Consecutive checkpoints of a training run have nearly the same layer geometry, so what the
solver found for layer pair (i, j) at checkpoint t is a good start for (i, j) at t + 1. The
state kept per pair (:class:`WarmState`, O(n) numbers) is

- the best plan, as its permutation (n int32): the warm start;
- the column duals of the last CG linear step and of the TLB's assignment (n float64 each): the
  first linear step and the lower bound become warm-started exact assignments
  (:mod:`gwray.gw.assignment`) instead of two network-simplex EMDs, which dominated a solve from
  an already-good plan; the TLB is then reported as its dual objective, a valid lower bound for
  any duals (:func:`gwray.gw.bounds.assignment_bound`). Only while the pair drifted by at most
  :data:`DUALS_WITHIN` (below);
- the pair's best value and each configured start's end relative to it (``start_ends``).

The pruning rule: at t + 1 the warm plan runs, plus every configured start s with
``start_ends[s]`` − ``drift`` × d ≤ ``keep``, where d = |GW_{t+1}(warm plan) − best_t| / best_t
says how far the pair's landscape moved under the warm plan; a start never run yet always runs.
A start that runs gets ``start_ends[s]`` = its final value / the pair's best (a CG end the swap
search did not polish (with ``polish=k``) counts as its value / :data:`POLISH_GAIN`: the polish
might have won); a start skipped keeps its lowered ratio, so the gaps
close as the drift adds up over checkpoints.

Why this rule, and ``keep`` = 1.12, ``drift`` = 3 (measured on the toy digits checkpoints of
``bench/sweep.py``, 11 × 13 layers, n = 256, within and cross pairs): a warm-only solve left 20
of 780 within pairs 0.1-4.6 % above the cold solve — the landscape has many optima within a few
percent, and a start's basin can deepen beside the warm plan's — and in every such case the
cold start that won at t + 1 had ended within 2 % (identity) or 10.5 % (product) of the pair's
best at t. A start's gap at the untrained checkpoint (product: 1.7×) says little about its gap
a few checkpoints later: without the drift term 4 of 780 within pairs stayed above; with it and
``keep`` = 1.03, 4 of 2,470 pairs (product ends 1.06-1.10 at t, winning by 0.3-4 % at t + 1);
``keep`` = 1.12 left none there, but 10 of 936 on the bench's default run (n = 128), where
product ends 15-30 % above the best won at t + 1: CG ends the swap search had not polished, hence
:data:`POLISH_GAIN` (3 left, 0.6-5 %). The rule stays a heuristic: ``keep = inf`` prunes nothing.
No bound-based rule can prune instead: the certified lower bound is 30-84 % below the values.
``bench/sweep.py`` prints the savings and the values.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gwray.gw.problem import permutation_value
from gwray.gw.solver import GWResult, gromov_wasserstein

_POLISH = inspect.signature(gromov_wasserstein).parameters["polish"].default
KEEP = 1.12
"""Default ``keep`` of :func:`warm_gw` (``gw.warm_keep``)."""
DRIFT = 3.0
"""How fast a skipped start's ratio comes down with the pair's drift (:func:`warm_gw`)."""
POLISH_GAIN = 1.1
"""The most a swap search lowered a CG end on layer pairs (~10 %): a start's end that was not
polished counts as its value / this in ``start_ends``."""
DUALS_WITHIN = 0.25
"""The state's duals are used while the pair's drift is at most this: further, a warm-started
assignment from them cost 4-10 ms at n = 256, more than the two EMDs they replace (~3 ms each;
measured on the toy digits run's first checkpoints, drift 0.6-1.9, against 0.2-2 ms at ≤ 0.15)."""


@dataclass
class WarmState:
    """What a pair's solve at one checkpoint hands to the same pair's solve at the next.

    Attributes
    ----------
    plan : numpy.ndarray of shape (n,), int32
        The best plan, ``i -> plan[i]``.
    duals, bound_duals : numpy.ndarray of shape (n,), float64, or None
        :attr:`GWResult.duals` and :attr:`GWResult.bound_duals` of that solve.
    start_ends : dict of str to float
        Each configured start's final value over the pair's best value at the last checkpoint
        where the start ran, lowered by the drift since (the pruning rule's input).
    value : float
        The pair's best value (GW of ``plan``); NaN when unknown (no drift is measured then).
    """

    plan: np.ndarray
    duals: np.ndarray | None = None
    bound_duals: np.ndarray | None = None
    start_ends: dict = field(default_factory=dict)
    value: float = float("nan")

    def transposed(self) -> WarmState:
        """The state of the transposed pair (layer_b, layer_a): the inverse plan; the duals are
        dropped (they are the other side's) and the starts' ends kept (GW is symmetric)."""
        inverse = np.empty_like(self.plan)
        inverse[self.plan] = np.arange(self.plan.size, dtype=self.plan.dtype)
        return WarmState(inverse, None, None, dict(self.start_ends), self.value)


def _made_by(start: str, name: str) -> bool:
    """Whether the result's start ``name`` is the configured ``start`` ("random:K" runs as
    "random:0", "random:1", ...)."""
    return name == start or (start.startswith("random:") and name.startswith("random:"))


def _end(values: dict, start: str) -> float | None:
    """The best final value of the configured ``start`` in a result's ``start_values``, or None
    when it did not run."""
    ran = [v for k, v in values.items() if _made_by(start, k)]
    return min(ran) if ran else None


def _drift(C1, C2, state: WarmState) -> float:
    """|GW(C1, C2; the state's plan) − the state's value| / that value (0 when unknown)."""
    if not np.isfinite(state.value):
        return 0.0
    now = permutation_value(np.asarray(C1, dtype=np.float64), np.asarray(C2, dtype=np.float64),
                            state.plan)
    if state.value > 0:
        return abs(now - state.value) / state.value
    return 0.0 if now == 0 else np.inf


def warm_gw(C1, C2, state: WarmState | None, *, aligned: bool, starts: Sequence[str],
            keep: float = KEEP, drift: float = DRIFT,
            **solver_kwargs) -> tuple[GWResult, WarmState | None, int]:
    """GW from the warm state's plan and the configured starts the pruning rule keeps.

    Parameters
    ----------
    C1, C2 : numpy.ndarray of shape (n, n)
        Cost matrices (uniform weights; the warm plan needs n = m).
    state : WarmState or None
        The same pair's state at the previous checkpoint; None: a cold solve (every start runs).
    aligned : bool
    starts : sequence of str
        The configured starts; with a state, those whose ``start_ends`` ratio is above ``keep``
        are skipped.
    keep : float
        The pruning rule's threshold (≥ 1; ``inf`` runs every configured start).
    drift : float
        A skipped start's ratio is lowered by ``drift`` × the pair's relative drift.
    **solver_kwargs
        Passed to :func:`gwray.gw.solver.gromov_wasserstein` (max_iter, tol, keep_coupling, ...).

    Returns
    -------
    result : GWResult
        Its ``init`` is "given" when the warm plan won.
    state : WarmState or None
        This solve's state for the next checkpoint (None when the plan is no permutation).
    skipped : int
        Configured starts the rule skipped.
    """
    ends, moved = {} if state is None else dict(state.start_ends), 0.0
    if state is not None:  # the gaps close by as much as the pair moved under the warm plan
        moved = _drift(C1, C2, state)
        ends = {s: r - drift * moved for s, r in ends.items()}
    run = [s for s in starts if state is None or ends.get(s, 1.0) <= keep]
    chosen = [*run] if state is None else [state.plan, *run]
    # polish=None polishes every end; polish=k the k best CG ends: one more for the warm plan, so
    # the configured starts' ends are polished as in a cold solve however good the warm end is
    polish = solver_kwargs.pop("polish", _POLISH)
    polish = None if polish is None else polish + (state is not None)
    near = state is not None and moved <= DUALS_WITHIN
    result = gromov_wasserstein(
        C1, C2, aligned=aligned, starts=chosen, polish=polish,
        duals=state.duals if near else None, bound_duals=state.bound_duals if near else None,
        **solver_kwargs)
    if result.permutation is None:
        return result, None, len(starts) - len(run)
    best = result.value
    for s in run:
        v = _end(result.start_values, s)
        if v is not None:
            if not any(_made_by(s, k) for k in result.polished):
                v /= POLISH_GAIN  # an end the swap search did not polish: credit it the most
                # a swap search gains, so a start whose polish would have won is not dropped
            ends[s] = v / best if best > 0 else (1.0 if v <= 0 else np.inf)
    return (result, WarmState(result.permutation, result.duals, result.bound_duals, ends, best),
            len(starts) - len(run))
