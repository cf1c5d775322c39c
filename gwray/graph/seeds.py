"""Groupings across training seeds: is the structure there on (almost) every seed, and is it the same?

A grouping found on one trained network says little about the training recipe: another seed may
give other groups, or none. Given one grouping per seed (labels and the block-structure test's
p-value), :func:`structure_verdict` says whether the structure is *established* (significant, p ≤ α
as the test decides, on at least ``min_share`` of the seeds, e.g. 4 of 5) and :func:`seed_agreement` measures how alike the seeds'
partitions are: the adjusted Rand index (ARI) of every pair of seeds, its mean, and a bootstrap
interval over seeds. Pure math: no I/O.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import adjusted_rand_score

from gwray.errors import GwrayInputError


@dataclass
class SeedAgreement:
    """Pairwise agreement of S partitions of the same L layers.

    Attributes
    ----------
    ari : np.ndarray, shape (S, S)
        ARI of every pair of seeds (1 on the diagonal).
    mean : float
        Mean ARI over the S(S − 1)/2 pairs of distinct seeds.
    interval : tuple of float
        Percentile bootstrap interval of ``mean`` over seeds (``level``): seeds are redrawn with
        replacement and the mean is taken over pairs of distinct draws that are distinct seeds.
    level : float
    """

    ari: np.ndarray
    mean: float
    interval: tuple
    level: float

    def to_dict(self) -> dict:
        return {"ari": self.ari.tolist(), "mean": self.mean, "interval": list(self.interval),
                "level": self.level}


def seed_agreement(labels, level: float = 0.95, draws: int = 2000, seed: int = 0) -> SeedAgreement:
    """How alike are the partitions of the same layers found on different seeds?

    Parameters
    ----------
    labels : sequence of S array_like, each shape (L,)
        One partition (group id per layer) per seed; S ≥ 2.
    level : float in (0, 1)
        Coverage of the bootstrap interval.
    draws : int
        Bootstrap draws.
    seed : int
        Seed of the bootstrap.

    Returns
    -------
    SeedAgreement
        Identical partitions on every seed give mean 1 and interval (1, 1).
    """
    labels = [np.asarray(x) for x in labels]
    S = len(labels)
    if S < 2:
        raise GwrayInputError(f"labels: need partitions from at least 2 seeds, got {S}")
    if len({x.shape for x in labels}) != 1:
        raise GwrayInputError("labels: every seed's partition must cover the same layers")
    A = np.eye(S)
    for a, b in itertools.combinations(range(S), 2):
        A[a, b] = A[b, a] = adjusted_rand_score(labels[a], labels[b])
    iu = np.triu_indices(S, 1)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(draws):
        pick = rng.integers(0, S, S)
        sub = A[np.ix_(pick, pick)][iu]
        distinct = pick[iu[0]] != pick[iu[1]]
        if distinct.any():
            boot.append(sub[distinct].mean())
    q = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [q, 1.0 - q])
    return SeedAgreement(A, float(A[iu].mean()), (float(low), float(high)), float(level))


def cross_agreement(labels_a, labels_b, level: float = 0.95, draws: int = 2000, seed: int = 0) -> dict:
    """Mean ARI between the partitions of two sets of seeds (e.g. two training strategies).

    Every pair (seed of A, seed of B) is compared; the interval redraws the seeds of A and of B
    with replacement (percentile bootstrap). Returns ``mean``, ``interval``, ``level``.
    """
    a, b = [np.asarray(x) for x in labels_a], [np.asarray(x) for x in labels_b]
    if not a or not b:
        raise GwrayInputError("labels_a, labels_b: need at least one partition each")
    A = np.array([[adjusted_rand_score(x, y) for y in b] for x in a])
    rng = np.random.default_rng(seed)
    boot = [A[np.ix_(rng.integers(0, len(a), len(a)), rng.integers(0, len(b), len(b)))].mean() for _ in range(draws)]
    q = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [q, 1.0 - q])
    return {"mean": float(A.mean()), "interval": [float(low), float(high)], "level": float(level)}


def structure_verdict(p_values, alpha: float = 0.05, min_share: float = 0.8) -> dict:
    """Is block structure established across seeds? Significant on at least ``min_share`` of them.

    A seed is significant when p ≤ α, the rule of :class:`gwray.graph.null_model.BlockTest` (a
    Monte Carlo p-value (1 + #exceedances) / (1 + B) ≤ α is a level-α test).

    Parameters
    ----------
    p_values : sequence of float or None
        The block-structure test's p-value per seed (None: no partition to test, i.e. k = 1
        before any test; counts as not significant).
    alpha : float
    min_share : float in (0, 1]
        Share of seeds that must be significant (0.8: 4 of 5).

    Returns
    -------
    dict
        ``significant`` (count), ``seeds``, ``needed`` (ceil(min_share · seeds)), ``established``
        (bool), ``alpha``.
    """
    p = list(p_values)
    if not p:
        raise GwrayInputError("p_values: empty")
    hits = sum(1 for x in p if x is not None and x <= alpha)
    needed = int(np.ceil(min_share * len(p) - 1e-9))
    return {"significant": hits, "seeds": len(p), "needed": needed, "established": hits >= needed,
            "alpha": float(alpha)}
