"""How sure are the groups? Recompute the layer matrix on random subsets of the probe samples.

Each resample draws ``round(fraction · n)`` of the n probe samples without replacement (the same
rows for every layer, so the layers stay aligned), recomputes the L×L GW matrix on those rows,
reruns the grouping, and compares it with the full-data grouping. Reported: the co-assignment
matrix (how often two layers land in the same group) and the adjusted Rand index of each
resample to the full-data grouping (mean, min). Pure math: no Ray, no I/O.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import adjusted_rand_score

from gwray.errors import GwrayInputError


@dataclass
class StabilityResult:
    """Agreement of resampled groupings with the full-data grouping.

    Attributes
    ----------
    co_assignment : np.ndarray, shape (L, L)
        Fraction of resamples in which layers i and j share a group (1 on the diagonal).
    ari : np.ndarray, shape (resamples,)
        Adjusted Rand index of each resample's labels to the full-data labels.
    labels : np.ndarray, shape (resamples, L), int
        Each resample's group labels.
    reference : np.ndarray, shape (L,), int
        The full-data labels compared against.
    fraction : float
    n_rows : int
        Probe samples per resample.
    seed : int
    names : list of str, length L
    """

    co_assignment: np.ndarray
    ari: np.ndarray
    labels: np.ndarray
    reference: np.ndarray
    fraction: float
    n_rows: int
    seed: int
    names: list = field(default_factory=list)

    @property
    def mean_ari(self) -> float:
        return float(self.ari.mean())

    def to_dict(self) -> dict:
        """JSON-ready form (the ``stability`` entry of ``communities.json``)."""
        return {"resamples": int(len(self.ari)), "fraction": self.fraction, "n_rows": self.n_rows,
                "seed": self.seed, "mean_ari": self.mean_ari, "min_ari": float(self.ari.min()),
                "ari": [float(a) for a in self.ari], "names": list(self.names),
                "co_assignment": np.round(self.co_assignment, 6).tolist(),
                "reference": [int(x) for x in self.reference]}


def _default_matrix(layers, gw_kwargs):
    from gwray.gw.pairwise import pairwise_gw  # the GW engine; imported when first needed

    return np.asarray(pairwise_gw(layers, **gw_kwargs))


def stability(layers: Sequence, find: Callable, fraction: float = 0.8, resamples: int = 10,
              seed: int = 0, gw_kwargs: dict | None = None, *, reference=None,
              matrix_fn: Callable | None = None) -> StabilityResult:
    """Co-assignment and ARI of groupings recomputed on random subsets of the probe samples.

    Parameters
    ----------
    layers : sequence of L arrays
        Each (n, d_l) activations with aligned rows (row r = probe sample r in every layer), or
        (n, n) cost matrices when ``gw_kwargs["precomputed"]`` is true (rows and columns are then
        both subset).
    find : callable
        ``find(D) -> SubnetworkResult`` for D of shape (L, L), e.g.
        ``functools.partial(find_subnetworks, method="contiguous", names=names)``.
    fraction : float in (0, 1]
        Share of the n samples in each resample.
    resamples : int ≥ 1
    seed : int
        Seed of the row draws (resample r uses ``default_rng([seed, r])``).
    gw_kwargs : dict, optional
        Keyword arguments of ``gwray.gw.pairwise.pairwise_gw`` (metric, normalize, starts …).
    reference : SubnetworkResult or array_like (L,), optional
        The full-data grouping; default: ``find`` on the full-data matrix (one more GW matrix).
    matrix_fn : callable, optional
        ``matrix_fn(layers_subset, gw_kwargs) -> (L, L)`` replacing ``pairwise_gw`` (e.g. the
        Ray scheduler for large runs).

    Returns
    -------
    StabilityResult

    Raises
    ------
    GwrayInputError
        fraction, resamples, or layers (count < 1, row counts differ, too few rows) at fault.
    """
    gw_kwargs = dict(gw_kwargs or {})
    matrix_fn = matrix_fn or _default_matrix
    if not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise GwrayInputError(f"fraction: must be in (0, 1], got {fraction!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, numbers.Integral) or resamples < 1:
        raise GwrayInputError(f"resamples: must be an integer >= 1, got {resamples!r}")
    if len(layers) < 1:
        raise GwrayInputError("layers: at least one layer is needed")
    layers = [np.asarray(x) for x in layers]
    n = layers[0].shape[0]
    for i, x in enumerate(layers):
        if x.ndim != 2 or x.shape[0] != n:
            raise GwrayInputError(f"layers: layer {i} has shape {x.shape}; every layer needs {n} aligned rows")
    m = int(round(fraction * n))
    if m < 3:
        raise GwrayInputError(f"fraction: {fraction} of {n} samples leaves {m} rows; need at least 3")
    precomputed = bool(gw_kwargs.get("precomputed", False))

    def subset(rows):
        return [x[np.ix_(rows, rows)] if precomputed else x[rows] for x in layers]

    if reference is None:
        reference = find(matrix_fn(layers, gw_kwargs))
    ref = np.asarray(getattr(reference, "labels", reference), dtype=int)
    names = list(getattr(reference, "names", [str(i) for i in range(len(layers))]))
    L = len(layers)
    if ref.shape != (L,):
        raise GwrayInputError(f"reference: {ref.shape[0]} labels for {L} layers")
    all_labels = np.empty((resamples, L), dtype=int)
    for r in range(resamples):
        rows = np.sort(np.random.default_rng([seed, r]).choice(n, size=m, replace=False))
        all_labels[r] = np.asarray(find(matrix_fn(subset(rows), gw_kwargs)).labels)
    co = (all_labels[:, :, None] == all_labels[:, None, :]).mean(axis=0)
    ari = np.array([adjusted_rand_score(ref, lab) for lab in all_labels])
    return StabilityResult(co, ari, all_labels, ref, float(fraction), m, int(seed), names)
