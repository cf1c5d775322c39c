"""All-pairs GW between the layers of one network, in process (no Ray).

Each layer's cost matrix and lower-bound data (:func:`gwray.gw.bounds.layer_summary`) are computed
once; every unordered pair is solved once and mirrored, so the result is exactly symmetric with a
zero diagonal.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from gwray.errors import GwrayInputError
from gwray.gw.bounds import layer_summary
from gwray.gw.costs import check_cost, cost_matrix
from gwray.gw.solver import gromov_wasserstein
from gwray.gw.starts import DEFAULT_STARTS


@dataclass
class PairwiseGW:
    """GW between every pair of L layers.

    Attributes
    ----------
    gw : numpy.ndarray, shape (L, L), float64
        Symmetric, zero diagonal; entry (i, j) is the GW value of a feasible coupling.
    lower_bound : numpy.ndarray, shape (L, L), float64
        Certified lower bounds (max of TLB and eigenvalue bound), symmetric, zero diagonal, ≤ ``gw``.
    records : list of dict
        One per solved pair i < j: ``i``, ``j`` and :meth:`GWResult.record` fields.
    """

    gw: np.ndarray
    lower_bound: np.ndarray
    records: list = field(default_factory=list)

    def __array__(self, dtype=None, copy=None):
        return self.gw if dtype is None else self.gw.astype(dtype)


def pairwise_gw(layers, *, precomputed: bool = False, metric: str = "euclidean",
                normalize: str = "mean", aligned: bool = True, starts=DEFAULT_STARTS,
                max_iter: int = 200, tol: float = 1e-9, progress: bool = False,
                **solver_kwargs) -> PairwiseGW:
    """GW distances between all pairs of layers.

    Parameters
    ----------
    layers : sequence of array-like, each (n_k, d_k) — or (n_k, n_k) costs when ``precomputed``
        Activations of L layers (numpy or torch), row i = probe sample i when ``aligned``.
    precomputed : bool
        ``layers`` are already cost matrices (validated with :func:`check_cost`).
    metric, normalize : str
        Passed to :func:`gwray.gw.costs.cost_matrix`.
    aligned : bool
        Rows are the same samples in every layer (enables the identity start).
    starts, max_iter, tol, **solver_kwargs
        Passed to :func:`gwray.gw.solver.gromov_wasserstein`.
    progress : bool
        Show a tqdm progress bar over the pairs.

    Returns
    -------
    PairwiseGW
        ``np.asarray(result)`` is the (L, L) GW matrix.

    Raises
    ------
    GwrayInputError
        No layers, a bad layer (named ``layers[k]``), or ``aligned`` with differing sample counts.
    """
    layers = list(layers)
    if not layers:
        raise GwrayInputError("layers is empty: need at least one layer")
    if precomputed:
        costs = [check_cost(C, f"layers[{k}]") for k, C in enumerate(layers)]
    else:
        # check_cost turns a torch result into numpy (the solver's CPU path)
        costs = [check_cost(cost_matrix(X, metric, normalize, name=f"layers[{k}]"), f"layers[{k}]")
                 for k, X in enumerate(layers)]
    sizes = {C.shape[0] for C in costs}
    if aligned and len(sizes) > 1:
        raise GwrayInputError(f"aligned=True needs the same number of samples in every layer, got "
                              f"{sorted(sizes)}")
    L = len(costs)
    gw, lb = np.zeros((L, L)), np.zeros((L, L))
    pairs = list(itertools.combinations(range(L), 2))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), desc="GW pairs", unit="pair")
    records = []
    # a layer takes part in L − 1 pairs: its bound data (uniform weights) is computed once
    summaries = {}
    shared = solver_kwargs.get("bound", True) and not {"p", "q"} & set(solver_kwargs)
    for i, j in pairs:
        if shared:
            for k in (i, j):
                summaries[k] = summaries.get(k) or layer_summary(costs[k])
            solver_kwargs["layer_data"] = (summaries[i], summaries[j])
        r = gromov_wasserstein(costs[i], costs[j], aligned=aligned, starts=starts,
                               max_iter=max_iter, tol=tol, keep_coupling=False, **solver_kwargs)
        gw[i, j] = gw[j, i] = r.value
        lb[i, j] = lb[j, i] = r.lower_bound
        records.append({"i": i, "j": j, **r.record()})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(gw=f"{r.value:.4g}")
    if bar is not None:
        bar.close()
    return PairwiseGW(gw=gw, lower_bound=lb, records=records)
