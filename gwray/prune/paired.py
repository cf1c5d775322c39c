"""Paired comparisons of two selection rules over model seeds (and healing seeds, random draws).

Rule A and rule B are scored on the same M models (training seeds, or probe seeds of one
pretrained model); on each model every rule may be scored several times (healing seeds, random
draws). The unit of replication is the model: each model's replicates are averaged first, the
per-model differences d_m = mean(A_m) − mean(B_m) then give the mean difference and its Student t
interval over the M models, d̄ ± t_{1−(1−level)/2, M−1} · sd(d) / √M. Replicates that share a
healing seed are paired by construction (same data order), so averaging them per model keeps the
pairing. Pure math: no I/O.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from gwray.errors import GwrayInputError


def unit_means(values) -> np.ndarray:
    """(M,) the mean of each model's replicates; ``values`` is a sequence of M sequences."""
    out = []
    for m, v in enumerate(values):
        v = np.asarray(v, dtype=np.float64).ravel()
        if v.size == 0:
            raise GwrayInputError(f"values: model {m} has no replicate")
        out.append(v.mean())
    return np.array(out)


def mean_interval(x, level: float = 0.95, bounds: tuple | None = None) -> dict:
    """Mean of ``x`` (M,) with its Student t interval; ``low`` = ``high`` = mean when M = 1 or sd = 0.

    ``bounds`` (low, high) clips the interval to the range the quantity can take (e.g. (−1, 1) for
    an adjusted Rand index).

    Returns
    -------
    dict
        ``mean``, ``low``, ``high``, ``sd``, ``n``, ``level``, ``excludes_zero`` (M ≥ 2 and the
        interval lies strictly on one side of 0; one model is no evidence either way).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        raise GwrayInputError("x: empty")
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    half = float(stats.t.ppf(0.5 + level / 2.0, x.size - 1) * sd / np.sqrt(x.size)) if x.size > 1 else 0.0
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"mean": mean, "low": low, "high": high, "sd": sd, "n": int(x.size), "level": float(level),
            "excludes_zero": bool(x.size > 1 and (low > 0 or high < 0))}


def paired_difference(a, b, level: float = 0.95) -> dict:
    """Mean paired difference A − B over models, with its t interval.

    Parameters
    ----------
    a, b : sequence of M sequences
        ``a[m]`` are rule A's scores on model m (its replicates: healing seeds, random draws);
        ``b[m]`` rule B's on the same model.
    level : float
        Coverage of the interval.

    Returns
    -------
    dict
        :func:`mean_interval` of the per-model differences.
    """
    if len(a) != len(b):
        raise GwrayInputError(f"a and b: scores of {len(a)} and {len(b)} models; pairs need the same models")
    return mean_interval(unit_means(a) - unit_means(b), level)
