"""Sub-networks: groups of layers read from a layer-distance matrix, with scores and the choice of k.

Methods (``method=``; each a plain function in :mod:`gwray.graph.methods`):

- ``contiguous`` — exact DP segmentation of the depth order (:mod:`gwray.graph.segment`).
  ``k="auto"``: the k in 2 … K_max with the highest silhouette (precomputed distances).
- ``louvain`` — networkx Louvain on the similarity graph (:mod:`gwray.graph.build`), swept over
  resolutions γ ∈ geomspace(0.5, 2, 7) × 5 seeds; the non-trivial partition (not one group, not
  all singletons) found in the most runs — the widest plateau, the most stable — is kept. An
  integer k keeps the most frequent k-group one (if none, γ is doubled until a finer partition
  appears, whose closest groups by mean similarity are then merged down to k).
- ``greedy`` — networkx Clauset-Newman-Moore greedy modularity (``cutoff = best_n = k`` if given).
- ``spectral`` — scikit-learn SpectralClustering on the precomputed similarity. ``k="auto"``:
  largest eigengap λ_{k+1} − λ_k of the normalised Laplacian for k in 2 … K_max.
- ``all`` — every method above, plus their pairwise agreement (adjusted Rand index).

K_max = min(L − 1, 12). The partition each method picks is then *tested* against depth drift
(:mod:`gwray.graph.null_model`: the same method reruns on ``n_null`` matrices of fitted drift plus
resampled noise). With ``k="auto"`` the answer is one group (k = 1) holding every layer when the
structure is not significant at ``alpha`` (or the probe has fewer than ``MIN_SAMPLES`` samples);
the rejected partition stays in ``candidate``. A given k is always answered with k groups, the
test attached. ``k_reason`` also says "weak structure" when the silhouette is below 0.25. Group
ids are numbered by the first (shallowest) layer of each group.
"""
from __future__ import annotations

import itertools
import numbers
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from sklearn.metrics import adjusted_rand_score, silhouette_score

from gwray.errors import GwrayInputError
from gwray.graph.build import build_graph, check_distances
from gwray.graph.methods import RUN, canonical
from gwray.graph.null_model import BlockTest, block_test

METHODS = ("contiguous", "louvain", "greedy", "spectral")
#: below this silhouette the groups are reported with a "weak structure" note in ``k_reason``
#: (Kaufman & Rousseeuw read < 0.25 as "no substantial structure")
WEAK_SILHOUETTE = 0.25
#: fewer probe samples than this cannot tell groups from sampling noise: auto answers k = 1
MIN_SAMPLES = 16


@dataclass
class SubnetworkResult:
    """One grouping of L layers.

    Attributes
    ----------
    method : str
    names : list of str, length L
        Layer names in depth order.
    labels : np.ndarray, shape (L,), int
        Group id of each layer (0 … k-1, numbered by each group's shallowest layer).
    k : int
        Number of groups.
    k_reason : str
        Why this k (the stated rule and the numbers behind it).
    scores : dict
        ``modularity`` (on the similarity graph), ``silhouette`` (precomputed distances; None for
        k = 1 or k = L), ``within_between`` (mean within-group / mean between-group distance;
        None when undefined). Lower within/between and higher silhouette = clearer groups.
    params : dict
        Method settings that produced it (seed, resolution, sigma …).
    test : BlockTest or None
        The partition tested against depth drift (the candidate's test when the answer is
        k = 1); None when not run (``n_null=0``).
    candidate : SubnetworkResult or None
        The method's best partition before the test (k ≥ 2); None when there was none.
    boundary_confidence : dict or None
        Boundary index i (between layers i and i + 1) → share of probe resamples that have it;
        set from :func:`gwray.graph.stability.boundary_confidence`, None without resamples.
    """

    method: str
    names: list
    labels: np.ndarray
    k: int
    k_reason: str
    scores: dict
    params: dict = field(default_factory=dict)
    test: BlockTest | None = None
    candidate: "SubnetworkResult | None" = None
    boundary_confidence: dict | None = None

    @property
    def significant(self) -> bool:
        """True when the test rejected depth drift at its level (False when not tested)."""
        return self.test is not None and self.test.significant

    @property
    def boundaries(self) -> list[int]:
        """Indices i with layers i and i + 1 in different groups (depth order)."""
        return [int(i) for i in np.flatnonzero(self.labels[1:] != self.labels[:-1])]

    def boundary_list(self) -> list[dict]:
        """``[{after: layer name, index: i, confidence: float or None}]`` per boundary."""
        conf = self.boundary_confidence or {}
        return [{"after": self.names[i], "index": i, "confidence": conf.get(i)} for i in self.boundaries]

    @property
    def groups(self) -> list[list[str]]:
        """Layer names of each group, groups in label order, names in depth order."""
        return [[n for n, lab in zip(self.names, self.labels) if lab == g] for g in range(self.k)]

    @property
    def noncontiguous_groups(self) -> list[int]:
        """Ids of groups that are not one run of consecutive layers."""
        out = []
        for g in range(self.k):
            idx = np.flatnonzero(self.labels == g)
            if idx.size and idx[-1] - idx[0] + 1 != idx.size:
                out.append(g)
        return out

    @property
    def contiguous(self) -> bool:
        """True when every group is a contiguous range of depth."""
        return not self.noncontiguous_groups

    def to_dict(self) -> dict:
        """JSON-ready form (the per-method entry of ``communities.json``)."""
        cand = self.candidate
        return {"method": self.method, "k": int(self.k), "k_reason": self.k_reason,
                "groups": self.groups, "labels": [int(x) for x in self.labels],
                "names": list(self.names), "scores": dict(self.scores),
                "contiguous": self.contiguous, "noncontiguous_groups": self.noncontiguous_groups,
                "params": dict(self.params),
                "test": self.test.to_dict() if self.test is not None else None,
                "significant": self.significant, "boundaries": self.boundary_list(),
                "candidate": None if cand is None else {
                    "k": int(cand.k), "groups": cand.groups, "labels": [int(x) for x in cand.labels],
                    "scores": dict(cand.scores), "boundaries": cand.boundary_list()}}


class SubnetworkSet(dict):
    """``method="all"``: a dict method → :class:`SubnetworkResult` plus ``.agreement``.

    ``agreement`` maps ``"a~b"`` (a, b methods) to the adjusted Rand index of their labels.
    """

    def __init__(self, results: dict):
        super().__init__(results)
        self.agreement = {f"{a}~{b}": float(adjusted_rand_score(results[a].labels, results[b].labels))
                          for a, b in itertools.combinations(results, 2)}

    def to_dict(self) -> dict:
        return {"methods": {m: r.to_dict() for m, r in self.items()}, "agreement": dict(self.agreement)}


def scores(D: np.ndarray, labels: np.ndarray, G: nx.Graph) -> dict:
    """Modularity, silhouette and within/between ratio of a grouping.

    Parameters
    ----------
    D : np.ndarray, shape (L, L)
        Checked distances.
    labels : np.ndarray, shape (L,), int
    G : networkx.Graph
        The complete similarity graph (weights used for modularity).

    Returns
    -------
    dict
        ``modularity``, ``silhouette``, ``within_between`` (floats or None when undefined).
    """
    L, k = len(labels), int(labels.max()) + 1
    comms = [set(np.flatnonzero(labels == g).tolist()) for g in range(k)]
    mod = float(nx.community.modularity(G, comms, weight="weight")) if G.number_of_edges() else None
    sil = float(silhouette_score(D, labels, metric="precomputed")) if 2 <= k <= L - 1 else None
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(L, dtype=bool)
    within, between = D[same & off], D[~same]
    ratio = None
    if within.size and between.size and between.mean() > 0:
        ratio = float(within.mean() / between.mean())
    return {"modularity": mod, "silhouette": sil, "within_between": ratio}


def _checked_k(k, L: int):
    if k == "auto":
        return k
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise GwrayInputError(f"k: must be 'auto' or an integer, got {k!r}")
    if not 1 <= k <= L:
        raise GwrayInputError(f"k: {k} is not in 1..{L} (the matrix has {L} layers)")
    return int(k)


def _partition(D, m, k, G, seed):
    """(canonical labels, reason, params) of method m on checked D with graph G."""
    if D.shape[0] == 1:
        return np.zeros(1, dtype=int), "one layer", {}
    labels, reason, params = RUN[m](D, k, G, seed)
    return canonical(labels), reason, params


def find_subnetworks(D, method: str = "contiguous", k="auto", names=None, seed: int = 0,
                     *, knn: int | None = None, alpha: float = 0.05, n_null: int = 99,
                     n_samples: int | None = None):
    """Group the layers of one network into sub-networks, tested against depth drift.

    Parameters
    ----------
    D : array_like, shape (L, L)
        Layer distances (GW values): finite, ≥ 0, symmetric (up to 1e-6 relative).
    method : {"contiguous", "louvain", "greedy", "spectral", "all"}
    k : "auto" or int in 1 … L
        Number of groups; "auto" applies the method's stated rule (module docstring), then the
        test: not significant → k = 1. An integer is answered as given, the test attached.
    names : sequence of str, length L, optional
        Layer names in depth order (default "0" … "L-1").
    seed : int
        Seed of Louvain, of spectral label assignment and of the null draws (deterministic).
    knn : int, optional
        Sparsify the similarity graph to each layer's knn nearest neighbours (graph methods).
    alpha : float in (0, 1)
        Level of the test of block structure against depth drift.
    n_null : int ≥ 0
        Null matrices of the test (p-values ≥ 1/(n_null + 1)); 0 skips the test (auto then
        keeps the method's partition, as in gwray < 0.2).
    n_samples : int, optional
        Probe samples behind D; below ``MIN_SAMPLES`` auto answers k = 1 ("too few samples").

    Returns
    -------
    SubnetworkResult, or SubnetworkSet (dict method → result, ``.agreement``) for "all".

    Raises
    ------
    GwrayInputError
        Bad D, names of the wrong length, unknown method, k not "auto" or not in 1 … L, alpha
        not in (0, 1), n_null < 0.
    """
    D, names = check_distances(D, names)
    L = D.shape[0]
    if method != "all" and method not in METHODS:
        raise GwrayInputError(f"method: {method!r} is not one of {', '.join(METHODS + ('all',))}")
    k = _checked_k(k, L)
    if not isinstance(seed, numbers.Integral):
        raise GwrayInputError(f"seed: must be an integer, got {seed!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < 1:
        raise GwrayInputError(f"alpha: must be in (0, 1), got {alpha!r}")
    if isinstance(n_null, bool) or not isinstance(n_null, numbers.Integral) or n_null < 0:
        raise GwrayInputError(f"n_null: must be an integer >= 0, got {n_null!r}")

    def graphs(M):
        full = build_graph(M, names)
        return full, (build_graph(M, names, knn=knn) if knn is not None else full)

    G_full, G = graphs(D)
    results = {}
    for m in METHODS if method == "all" else (method,):
        labels, reason, params = _partition(D, m, k, G, int(seed))
        params = {"seed": int(seed), "sigma": G.graph["sigma"], "knn": knn, **params}
        found = _result(m, names, labels, reason, D, G_full, params)
        if n_null and found.k >= 2:
            found.test = block_test(D, labels, lambda M, m=m: _partition(M, m, k, graphs(M)[1], int(seed))[0],
                                    n_null=int(n_null), alpha=float(alpha), seed=int(seed))
            found.k_reason += _test_note(found.test)
        found.candidate = found if found.k >= 2 else None
        few = n_samples is not None and n_samples < MIN_SAMPLES
        if k == "auto" and found.k >= 2 and (few or (found.test is not None and not found.significant)):
            why = (f"too few probe samples ({n_samples} < {MIN_SAMPLES}) to tell groups from sampling "
                   "noise" if few else "no significant block structure beyond depth drift")
            cand = found
            found = _result(m, names, np.zeros(L, dtype=int), f"auto: {why}{_test_note(cand.test)}; "
                            f"the candidate had {cand.k} groups", D, G_full, params)
            found.test, found.candidate = cand.test, cand
        results[m] = found
    return SubnetworkSet(results) if method == "all" else results[method]


def _result(m, names, labels, reason, D, G_full, params) -> SubnetworkResult:
    sc = scores(D, labels, G_full)
    if sc["silhouette"] is not None and sc["silhouette"] < WEAK_SILHOUETTE:
        reason += f"; weak structure (silhouette {sc['silhouette']:.2f} < {WEAK_SILHOUETTE})"
    return SubnetworkResult(m, list(names), labels, int(labels.max()) + 1, reason, sc, dict(params))


def _test_note(test: BlockTest | None) -> str:
    if test is None or test.p_value is None:
        return ""
    return (f"; test vs depth drift: T = {test.statistic:.3f}, p = {test.p_value:.3g} "
            f"({test.n_null} null draws, α = {test.alpha:g})")
