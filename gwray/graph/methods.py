"""The four grouping methods, each a plain function (D, k, G, seed) → (labels, reason, params).

``D`` is a checked (L, L) distance matrix, ``k`` is "auto" or an integer, ``G`` the similarity
graph (:mod:`gwray.graph.build`). Each method's rule for ``k="auto"`` is stated in
:mod:`gwray.graph.communities`, which runs them, scores them and tests them against drift.
"""
from __future__ import annotations

import itertools
from collections import Counter

import networkx as nx
import numpy as np
from scipy.sparse.csgraph import laplacian
from sklearn.cluster import SpectralClustering
from sklearn.metrics import silhouette_score

from gwray.graph.build import similarity
from gwray.graph.segment import segmentations

#: the largest k an "auto" rule considers is min(L − 1, KMAX)
KMAX = 12
LOUVAIN_RESOLUTIONS = tuple(float(g) for g in np.geomspace(0.5, 2.0, 7))
LOUVAIN_SEEDS = 5


def canonical(labels) -> np.ndarray:
    """Relabel groups 0 … k-1 in order of their first layer. labels: (L,) → (L,) int."""
    mapping: dict = {}
    return np.array([mapping.setdefault(x, len(mapping)) for x in np.asarray(labels).tolist()], dtype=int)


def _kmax(L: int) -> int:
    return max(1, min(L - 1, KMAX))


def _contiguous(D, k, G, seed):
    L = D.shape[0]
    if k != "auto":
        return segmentations(D, k)[k][0], f"given k={k}", {}
    if L < 3:
        return np.zeros(L, dtype=int), f"auto: L={L} < 3 layers, one group", {}
    segs = segmentations(D, _kmax(L))
    sil = {kk: float(silhouette_score(D, segs[kk][0], metric="precomputed")) for kk in range(2, _kmax(L) + 1)}
    best = max(sil, key=lambda kk: (sil[kk], -kk))
    return segs[best][0], (f"auto: highest silhouette {sil[best]:.3f} over k=2..{_kmax(L)} "
                           f"of the optimal segmentations"), {"silhouette_by_k": sil}


def _louvain(D, k, G, seed):
    L = D.shape[0]

    def sweep(gammas):
        return [(g, canonical(_partition_labels(nx.community.louvain_communities(
            G, weight="weight", resolution=g, seed=seed + s), L)))
            for g in gammas for s in range(LOUVAIN_SEEDS)]

    runs = sweep(LOUVAIN_RESOLUTIONS)
    gamma = LOUVAIN_RESOLUTIONS[-1]
    while k != "auto" and max(int(lab.max()) + 1 for _, lab in runs) < k and gamma < 1e6:
        gamma *= 2.0  # finer partitions until some run has at least k groups
        runs += sweep([gamma])
    counts = Counter(tuple(lab.tolist()) for _, lab in runs)
    nk = {p: max(p) + 1 for p in counts}
    if k == "auto":  # one group or all singletons say nothing: kept only if nothing else was found
        pool = [p for p in counts if 1 < nk[p] < L] or list(counts)
    else:
        pool = [p for p in counts if nk[p] == k] or [p for p in counts if nk[p] == min(
            n for n in nk.values() if n > k)]
    mod = {p: nx.community.modularity(G, _comms(p), weight="weight") for p in pool}
    best = max(pool, key=lambda p: (counts[p], mod[p]))
    found = counts[best]
    gammas = sorted({g for g, lab in runs if tuple(lab.tolist()) == best})
    note = ""
    labels = np.array(best)
    if k != "auto" and nk[best] != k:
        labels = _merge_to_k(labels, similarity(D, G.graph["sigma"]), k)
        note = f"; no run gave {k} groups: the most stable {nk[best]}-group one merged down"
    reason = (f"{'auto' if k == 'auto' else f'given k={k}'}: most stable partition, found in "
              f"{found}/{len(runs)} runs (resolution {LOUVAIN_RESOLUTIONS[0]:g}–{gamma:g} × "
              f"{LOUVAIN_SEEDS} seeds){note}")
    return labels, reason, {"resolutions": gammas, "runs": len(runs), "found_in": found}


def _merge_to_k(labels: np.ndarray, S: np.ndarray, k: int) -> np.ndarray:
    """Merge the two groups of highest mean similarity until k remain. labels (L,), S (L, L)."""
    labels = canonical(labels)
    while labels.max() + 1 > k:
        n = labels.max() + 1
        pairs = [(S[np.ix_(labels == a, labels == b)].mean(), a, b)
                 for a, b in itertools.combinations(range(n), 2)]
        _, a, b = max(pairs)
        labels = canonical(np.where(labels == b, a, labels))
    return labels


def _greedy(D, k, G, seed):
    if k == "auto":
        comms = nx.community.greedy_modularity_communities(G, weight="weight")
        reason = "auto: maximum modularity (Clauset-Newman-Moore greedy merging)"
    else:
        comms = nx.community.greedy_modularity_communities(G, weight="weight", cutoff=k, best_n=k)
        reason = f"given k={k}"
    return _partition_labels(comms, D.shape[0]), reason, {}


def _spectral(D, k, G, seed):
    L = D.shape[0]
    S = similarity(D, G.graph["sigma"])
    params = {}
    if k == "auto":
        if L < 3:
            return np.zeros(L, dtype=int), f"auto: L={L} < 3 layers, one group", {}
        A = S.copy()
        np.fill_diagonal(A, 0.0)
        lam = np.linalg.eigvalsh(laplacian(A, normed=True))
        gaps = {kk: float(lam[kk] - lam[kk - 1]) for kk in range(2, _kmax(L) + 1)}
        k = max(gaps, key=lambda kk: (gaps[kk], -kk))
        reason = (f"auto: largest eigengap λ{k + 1}−λ{k} = {gaps[k]:.3f} of the normalised "
                  f"Laplacian over k=2..{_kmax(L)}")
        params["eigenvalues"] = [float(x) for x in lam[: _kmax(L) + 1]]
    else:
        reason = f"given k={k}"
    if k == 1:
        return np.zeros(L, dtype=int), reason, params
    if k == L:
        return np.arange(L), reason, params
    sc = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed,
                            assign_labels="cluster_qr")
    return sc.fit_predict(S), reason, params


def _comms(labels):
    labels = np.asarray(labels)
    return [set(np.flatnonzero(labels == g).tolist()) for g in range(int(labels.max()) + 1)]


def _partition_labels(communities, L: int) -> np.ndarray:
    labels = np.empty(L, dtype=int)
    for g, members in enumerate(communities):
        labels[list(members)] = g
    return labels


#: method name → runner(D, k, G, seed) -> (labels, reason, params)
RUN = {"contiguous": _contiguous, "louvain": _louvain, "greedy": _greedy, "spectral": _spectral}
