"""How sure are the groups? Recompute the layer matrix on random subsets of the probe samples.

Each resample draws ``round(fraction · n)`` of the n probe samples without replacement (the same
rows for every layer, so the layers stay aligned), recomputes the L×L GW matrix on those rows,
reruns the grouping, and compares it with the full-data grouping. Reported: the co-assignment
matrix (how often two layers land in the same group), the adjusted Rand index of each resample to
the full-data grouping (mean, min), each GW value's resampling interval (the 5th and 95th
percentiles over resamples) and each boundary's confidence (the share of resamples in which two
neighbouring layers fall in different groups). Pure math: no Ray, no I/O.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import adjusted_rand_score

from gwray.errors import GwrayInputError

#: ``stability.resamples: auto`` runs AUTO_RESAMPLES resamples when pairs × n² ≤ AUTO_BUDGET: the
#: demo's 21 pairs at n = 512 fit (measured: 61 s in process on 2 cores, its GW stage 11 s on 2 workers)
AUTO_RESAMPLES, AUTO_BUDGET = 5, 6_000_000


def auto_resamples(n_layers: int, n_rows: int, fraction: float) -> int:
    """Resamples of ``stability.resamples: auto``: ``AUTO_RESAMPLES`` when L(L−1)/2 pairs × n²
    samples ≤ ``AUTO_BUDGET`` and a resample keeps ≥ 3 rows, else 0."""
    small = n_layers * (n_layers - 1) // 2 * n_rows**2 <= AUTO_BUDGET
    return AUTO_RESAMPLES if small and round(fraction * n_rows) >= 3 else 0


def resamples_for(setting, n_layers: int, n_rows: int, fraction: float) -> int:
    """The resample count of ``stability.resamples`` (``"auto"`` or an int) for one checkpoint."""
    return auto_resamples(n_layers, n_rows, fraction) if setting == "auto" else int(setting)


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
    matrices : np.ndarray, shape (resamples, L, L)
        Each resample's GW matrix.
    """

    co_assignment: np.ndarray
    ari: np.ndarray
    labels: np.ndarray
    reference: np.ndarray
    fraction: float
    n_rows: int
    seed: int
    names: list = field(default_factory=list)
    matrices: np.ndarray | None = None

    def interval(self, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """Resampling interval of every GW value: (low, high), each (L, L), the central ``level``."""
        q = (1.0 - level) / 2.0
        return (np.quantile(self.matrices, q, axis=0), np.quantile(self.matrices, 1.0 - q, axis=0))

    def boundary_confidence(self, labels=None) -> dict[int, float]:
        """Boundary index i (layers i | i + 1) → share of resamples with a boundary there.

        Parameters
        ----------
        labels : array_like, shape (L,), optional
            The grouping whose boundaries are scored (default: ``reference``).
        """
        lab = np.asarray(self.reference if labels is None else labels)
        cut = self.labels[:, 1:] != self.labels[:, :-1]  # (resamples, L - 1)
        return {int(i): float(cut[:, i].mean()) for i in np.flatnonzero(lab[1:] != lab[:-1])}

    @property
    def mean_ari(self) -> float:
        return float(self.ari.mean())

    def to_dict(self) -> dict:
        """JSON-ready form (the ``stability`` entry of ``communities.json``)."""
        return {"resamples": int(len(self.ari)), "fraction": self.fraction, "n_rows": self.n_rows,
                "seed": self.seed, "mean_ari": self.mean_ari, "min_ari": float(self.ari.min()),
                "ari": [float(a) for a in self.ari], "names": list(self.names),
                "co_assignment": np.round(self.co_assignment, 6).tolist(),
                "reference": [int(x) for x in self.reference],
                **({} if self.matrices is None else {"gw_interval": {
                    "level": 0.9, "low": self.interval()[0].tolist(), "high": self.interval()[1].tolist()}})}


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
        ``functools.partial(find_subnetworks, method="contiguous", names=names, n_null=0)``
        (``n_null=0``: each resample's partition, untested; the test runs once, on all samples).
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
    all_labels, mats = np.empty((resamples, L), dtype=int), np.empty((resamples, L, L))
    for r in range(resamples):
        rows = np.sort(np.random.default_rng([seed, r]).choice(n, size=m, replace=False))
        mats[r] = matrix_fn(subset(rows), gw_kwargs)
        all_labels[r] = np.asarray(find(mats[r]).labels)
    co = (all_labels[:, :, None] == all_labels[:, None, :]).mean(axis=0)
    ari = np.array([adjusted_rand_score(ref, lab) for lab in all_labels])
    return StabilityResult(co, ari, all_labels, ref, float(fraction), m, int(seed), names, mats)
