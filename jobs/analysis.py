"""What every experiment computes on one network's layers (toy nets, MiniLM, the small LM).

- the GW matrix with gwray's default solver settings, its groups and their block-structure test;
- the baselines (debiased linear CKA, RSA, identity distortion) and the same grouping of each;
- solver dependence: the GW matrix solved again with a wide search (the default starts plus
  ``random:R`` more, drawn with another seed; every end polished, as by default) and the same
  without the identity and mixed starts (every layer's rows shuffled by its own permutation,
  ``aligned=False``), and the groups each gives;
- drop orders of the rules that use the groups (``gwray.prune.scores``).
"""
from __future__ import annotations

import time

import numpy as np
from sklearn.metrics import adjusted_rand_score

from gwray.graph.communities import find_subnetworks
from gwray.gw.baselines import baseline_matrices
from gwray.gw.pairwise import pairwise_gw
from gwray.prune import scores

def default_starts() -> tuple:
    """gwray's default starts (``pairwise_gw``'s, ``gw.starts``'), the ones every reported matrix uses."""
    import inspect

    return tuple(inspect.signature(pairwise_gw).parameters["starts"].default)


def grouping(D, names, s: dict, n_samples: int) -> dict:
    """The contiguous groups of distance matrix D (k auto, tested against depth drift)."""
    r = find_subnetworks(np.asarray(D), method="contiguous", k="auto", names=names, alpha=s["alpha"],
                         n_null=s["null_draws"], n_samples=n_samples)
    cand = r.candidate or r
    return {"k": r.k, "p": None if r.test is None else r.test.p_value,
            "statistic": None if r.test is None else r.test.statistic, "significant": r.significant,
            "labels": r.labels.tolist(), "candidate": cand.labels.tolist(), "candidate_k": cand.k,
            "candidate_groups": cand.groups, "silhouette": cand.scores.get("silhouette")}


def ari(a, b) -> float:
    return float(adjusted_rand_score(a, b))


def _distance(kind: str, M: np.ndarray) -> np.ndarray:
    D = 1.0 - np.clip(M, 0.0, 1.0) if kind in ("cka", "rsa") else np.asarray(M)
    D = (D + D.T) / 2.0
    np.fill_diagonal(D, 0.0)
    return D


def solver_variants(layers, D: np.ndarray, s: dict, seed: int) -> dict:
    """GW values solved without the identity start (shuffled rows, unaligned) and by a wide search.

    Returns the two matrices, their element-wise minimum with the default values (``best``: the
    lowest feasible value found for each pair), and for each the relative change of the values.
    """
    starts = (*default_starts(), f"random:{s['wide_random']}")
    out = {}
    t = time.process_time()
    wide = pairwise_gw(layers, starts=starts, seed=1 + seed)  # not the default's random draws
    out["wide"] = {"gw": wide.gw, "cpu_s": time.process_time() - t}
    rng = np.random.default_rng(10_000 + seed)
    shuffled = [X[rng.permutation(len(X))] for X in layers]
    t = time.process_time()
    unaligned = pairwise_gw(shuffled, aligned=False, starts=tuple(x for x in starts if x not in ("identity", "mixed")),
                            seed=1 + seed)
    out["shuffled"] = {"gw": unaligned.gw, "cpu_s": time.process_time() - t}
    out["best"] = {"gw": np.minimum(D, np.minimum(wide.gw, unaligned.gw))}
    iu = np.triu_indices(len(D), 1)
    for v in out.values():
        rel = (v["gw"][iu] - D[iu]) / np.maximum(D[iu], 1e-300)
        v.update(rel_median=float(np.median(rel)), rel_min=float(rel.min()), rel_max=float(rel.max()))
    return out


def analyse_layers(layers, names, s: dict, seed: int) -> dict:
    """GW matrix, groups, baselines, solver dependence of one network's layers (each (n, d))."""
    n = len(layers[0])
    t = time.process_time()
    pw = pairwise_gw(layers)
    gw_cpu = time.process_time() - t
    D = pw.gw
    out = {"names": list(names), "n_probe": n, "gw_cpu_s": gw_cpu,
           "matrices": {"gw": D, "lower_bound": pw.lower_bound}, "groupings": {"gw": grouping(D, names, s, n)}}
    base = baseline_matrices(layers)
    for kind in ("cka", "rsa", "identity"):
        out["matrices"][kind] = base[kind]
        out["groupings"][kind] = grouping(_distance(kind, base[kind]), names, s, n)
    variants = solver_variants(layers, D, s, seed)
    out["solver"] = {}
    for kind, v in variants.items():
        g = grouping(v["gw"], names, s, n)
        out["matrices"][f"gw_{kind}"] = v.pop("gw")
        out["groupings"][f"gw_{kind}"] = g
        out["solver"][kind] = v
    ref = out["groupings"]["gw"]["candidate"]
    out["ari_vs_gw"] = {k: ari(g["candidate"], ref) for k, g in out["groupings"].items() if k != "gw"}
    cka = out["groupings"]["cka"]["candidate"]
    out["ari_vs_cka"] = {k: ari(g["candidate"], cka) for k, g in out["groupings"].items()
                         if k == "gw" or k.startswith("gw_")}
    return out


def rule_orders(result: dict, names) -> dict:
    """Drop orders (block indices) of the rules that read the analysis: ``groups`` (the GW
    groups, the rejected candidate when k = 1, as ``gwray prune`` does), ``gw_io`` (GW(input,
    output) alone: one group) and ``cka_groups`` (the 1 − CKA groups, ranked by 1 − CKA(in, out))."""
    D = np.asarray(result["matrices"]["gw"])
    names = list(names)
    groups = result["groupings"]["gw"]["candidate_groups"]
    cka = result["groupings"]["cka"]["candidate_groups"]
    return {"groups": scores.group_order(groups, D, names), "gw_io": scores.group_order([names], D, names),
            "cka_groups": scores.group_order(cka, _distance("cka", np.asarray(result["matrices"]["cka"])), names)}


def probe_accuracy(X_train, y_train, X_test, y_test) -> float:
    """Held-out accuracy of a linear probe: ridge classifier on standardised features."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), RidgeClassifier(alpha=1.0)).fit(X_train, y_train)
    return float(clf.score(X_test, y_test))
