"""The across-seed statistics every table of docs/results.md and docs/null_model.md shows.

:func:`summarize` turns the finished stages (``OUT/stages/*.json``) into ``results.json``'s
``summary``: per setup the block-structure test on every seed and the verdict (p < α on at least
4 of 5 seeds), the between-seed ARI with its bootstrap interval, the baselines, the solver
dependence, the linear probes, and the paired differences between pruning / fine-tuning rules with
95 % t intervals over model seeds (``gwray.prune.paired``). Missing stages are left out.
"""
from __future__ import annotations

import numpy as np

from gwray.graph.seeds import cross_agreement, seed_agreement, structure_verdict
from gwray.prune.paired import mean_interval, paired_difference

#: structure setups in table order: toy setups, then MiniLM (probe seeds), then the small LM
STRUCTURE = ("planted", "digits_mlp", "digits_cnn", "modular_joint", "modular_curriculum", "minilm", "lm")
GROUPINGS = ("gw", "cka", "rsa", "identity")
VARIANTS = ("gw_shuffled", "gw_wide", "gw_best")
ARI_RANGE = (-1.0, 1.0)


def _runs(stages: dict, setup: str) -> list[dict]:
    prefix = {"minilm": "minilm:", "lm": "lm_train:"}.get(setup, f"toy:{setup}:")
    runs = [v for k, v in stages.items() if k.startswith(prefix)]
    return sorted(runs, key=lambda r: r["seed"])


def _boundaries(labels, names) -> list[str]:
    return [names[i] for i in range(len(labels) - 1) if labels[i] != labels[i + 1]]


def grouping_summary(runs: list[dict], kind: str, alpha: float) -> dict:
    gs = [r["groupings"][kind] for r in runs]
    names = runs[0]["names"]
    out = {"p": [g["p"] for g in gs], "k": [g["k"] for g in gs], "candidate_k": [g["candidate_k"] for g in gs],
           "candidate_boundaries": [_boundaries(g["candidate"], names) for g in gs],
           "verdict": structure_verdict([g["p"] for g in gs], alpha)}
    if len(gs) > 1:
        out["agreement"] = seed_agreement([g["candidate"] for g in gs]).to_dict()
    return out


def structure(stages: dict, s: dict) -> dict:
    out = {}
    for setup in STRUCTURE:
        runs = _runs(stages, setup)
        if not runs:
            continue
        entry = {"seeds": [r["seed"] for r in runs], "names": runs[0]["names"], "n_probe": runs[0]["n_probe"],
                 "groupings": {k: grouping_summary(runs, k, s["alpha"]) for k in (*GROUPINGS, *VARIANTS)},
                 "ari_vs_gw": {k: mean_interval([r["ari_vs_gw"][k] for r in runs], bounds=ARI_RANGE)
                               for k in runs[0]["ari_vs_gw"]},
                 "ari_vs_cka": {k: mean_interval([r["ari_vs_cka"][k] for r in runs], bounds=ARI_RANGE)
                                for k in runs[0]["ari_vs_cka"]},
                 "solver": {v: {"rel_median": float(np.median([r["solver"][v]["rel_median"] for r in runs])),
                                "rel_min": float(min(r["solver"][v]["rel_min"] for r in runs)),
                                "rel_max": float(max(r["solver"][v]["rel_max"] for r in runs))}
                            for v in runs[0]["solver"]},
                 "gw_cpu_s": float(np.mean([r["gw_cpu_s"] for r in runs]))}
        if "accuracy" in runs[0]:
            entry["accuracy"] = {sp: mean_interval([r["accuracy"][sp] for r in runs]) | {
                "values": [r["accuracy"][sp] for r in runs]} for sp in runs[0]["accuracy"]}
            entry["weight_decay"] = runs[0]["weight_decay"]
        if "perplexity" in runs[0]:
            entry["perplexity"] = mean_interval([r["perplexity"] for r in runs]) | {
                "values": [r["perplexity"] for r in runs]}
        out[setup] = entry
    joint, cur = _runs(stages, "modular_joint"), _runs(stages, "modular_curriculum")
    if joint and cur:
        out["strategies"] = cross_agreement([r["groupings"]["gw"]["candidate"] for r in joint],
                                            [r["groupings"]["gw"]["candidate"] for r in cur])
    return out


def selection(stages: dict) -> dict:
    return {k.split(":", 1)[1]: v for k, v in stages.items() if k.startswith("toy_select:")}


def probes(stages: dict) -> dict:
    """Per setup and target: accuracy per layer (mean, min, max over seeds) and, per seed with a
    candidate of ≥ 2 groups, the gain of each target inside the first group and after it."""
    out = {}
    for setup in ("digits_mlp", "digits_cnn", "modular_joint", "modular_curriculum"):
        runs = [r for r in _runs(stages, setup) if "probes" in r]
        if not runs:
            continue
        entry = {}
        for target in runs[0]["probes"]:
            acc = np.array([r["probes"][target] for r in runs])
            first, rest = [], []
            for r in runs:
                lab, a = r["groupings"]["gw"]["candidate"], r["probes"][target]
                if max(lab) >= 1:
                    b = lab.index(1)  # first layer of the second group
                    first.append(a[b - 1] - a[0])
                    rest.append(a[-1] - a[b - 1])
            entry[target] = {"mean": acc.mean(0).tolist(), "min": acc.min(0).tolist(), "max": acc.max(0).tolist(),
                             "gain_first_group": mean_interval(first) if first else None,
                             "gain_after": mean_interval(rest) if rest else None}
        out[setup] = entry
    if "minilm_probes" in stages:
        out["minilm"] = {k: stages["minilm_probes"][k] for k in ("names", "probes", "chance", "n_train", "n_test")}
    return out


def rule_comparison(rows: list[dict], unit_key: str, metric: str, units: list, comparisons, ks,
                    diff_scale=None) -> dict:
    """Per k: each rule's mean over units, and paired differences A − B over units (random: the
    mean of the draws on that unit, or of all draws when they do not depend on the unit).
    ``diff_scale`` maps values before differencing (e.g. 100 · ln perplexity: differences ≈ %)."""
    out = {}
    for k in ks:
        def values(rule, f=lambda v: v):
            per = []
            for u in units:
                v = [f(r[metric]) for r in rows if r["rule"] == rule and r["k"] == k and r.get(unit_key) == u]
                if not v and rule == "random":  # draws shared by every unit (MiniLM)
                    v = [f(r[metric]) for r in rows if r["rule"] == rule and r["k"] == k]
                per.append(v)
            return per if all(per) else None

        rules = sorted({r["rule"] for r in rows if r["k"] == k})
        entry = {"rules": {rule: mean_interval([np.mean(v) for v in values(rule)]) for rule in rules if values(rule)}}
        scale = diff_scale or (lambda v: v)
        entry["diffs"] = {f"{a} - {b}": paired_difference(values(a, scale), values(b, scale))
                          for a, b in comparisons if values(a) and values(b)}
        out[str(k)] = entry
    return out


COMPARISONS = [("groups", "gw_io"), ("groups", "cka_groups"), ("groups", "bi"), ("groups", "angular"),
               ("groups", "random"), ("bi", "random")]


def _tag(stages, prefix, unit="unit"):
    rows = []
    for key, v in stages.items():
        if key.startswith(prefix):
            rows += [dict(r, **{unit: v["seed"]}) for r in v["rows"]]
    return rows


def compression(stages: dict, s: dict) -> dict:
    out = {}
    for setup in ("digits_mlp", "modular_joint"):
        rows = _tag(stages, f"compress:{setup}:")
        if not rows:
            continue
        units = sorted({r["unit"] for r in rows})
        ks = sorted({r["k"] for r in rows if r["k"] > 0})
        out[setup] = {m: rule_comparison(rows, "unit", m, units, COMPARISONS, ks) for m in ("accuracy", "healed")}
        out[setup]["unpruned"] = {m: mean_interval([np.mean([r[m] for r in rows if r["rule"] == "unpruned"
                                                              and r["unit"] == u]) for u in units])
                                  for m in ("accuracy", "healed")}
        out[setup]["models"] = len(units)
    rows = _tag(stages, "lm_prune:")
    if rows:
        units = sorted({r["unit"] for r in rows})
        ks = sorted({r["k"] for r in rows if r["k"] > 0})
        out["lm"] = {m: rule_comparison(rows, "unit", m, units, COMPARISONS, ks, diff_scale=lambda v: 100 * np.log(v))
                     for m in ("perplexity", "healed")}
        out["lm"]["unpruned"] = {m: mean_interval([np.mean([r[m] for r in rows if r["rule"] == "unpruned"
                                                            and r["unit"] == u]) for u in units])
                                 for m in ("perplexity", "healed")}
        out["lm"]["models"] = len(units)
    if "minilm_prune" in stages:
        out["minilm"] = per_sentence_comparison(stages["minilm_prune"])
    return out


def per_sentence_comparison(stage: dict) -> dict:
    """MiniLM (one pretrained model): each rule's per-sentence score (its choices on every probe
    seed, or the random draws, averaged), mean and paired differences with t intervals over the
    held-out sentences."""
    rows, per = stage["rows"], {k: np.asarray(v) for k, v in stage["per_sentence"].items()}
    out = {}
    for k in sorted({r["k"] for r in rows}):
        score = {rule: np.mean([per[r["key"]] for r in rows if r["rule"] == rule and r["k"] == k], axis=0)
                 for rule in sorted({r["rule"] for r in rows if r["k"] == k})}
        out[str(k)] = {"rules": {rule: mean_interval(v) for rule, v in score.items()},
                       "diffs": {f"{a} - {b}": mean_interval(score[a] - score[b]) for a, b in COMPARISONS
                                 if a in score and b in score},
                       "blocks": {rule: sorted({tuple(r["blocks"]) for r in rows if r["rule"] == rule and r["k"] == k})
                                  for rule in score if rule != "random"}}
    return {"knn10_kept": out, "n_eval": stage["n_eval"],
            "probe_seeds": len({r["unit"] for r in rows if r["unit"] is not None})}


def finetune(stages: dict) -> dict:
    runs = sorted((v for k, v in stages.items() if k.startswith("lm_finetune:")), key=lambda r: r["seed"])
    if not runs:
        return {}
    out = {"models": len(runs), "conditions": {}, "diffs": {}, "groups": [r["gw_groups"] for r in runs],
           "cka_groups": [r["cka_groups"] for r in runs], "sizes": runs[0]["sizes"]}
    labels = dict.fromkeys(r["condition"] for run in runs for r in run["rows"] if not r["condition"].startswith("random"))

    def per_model(run, pred, metric):
        return [r[metric] for r in run["rows"] if pred(r)]

    for metric in ("domain_loss", "botchan_loss"):
        for label in labels:
            vals = [per_model(run, lambda r: r["condition"] == label, metric) for run in runs]
            if all(vals):
                out["conditions"].setdefault(label, {})[metric] = mean_interval([np.mean(v) for v in vals])
        for g in (1, 2):
            gw = [per_model(run, lambda r: r["condition"] == f"gw group {g}", metric) for run in runs]
            cka = [per_model(run, lambda r: r["condition"] == f"cka group {g}", metric) for run in runs]
            rnd = [per_model(run, lambda r, run=run: r["condition"] == f"random {len(run['gw_groups'][g - 1])}", metric)
                   if len(run["gw_groups"]) >= g else [] for run in runs]
            if all(gw) and all(rnd):
                out["diffs"].setdefault(f"gw group {g} - random same size", {})[metric] = paired_difference(gw, rnd)
            if all(gw) and all(cka):
                out["diffs"].setdefault(f"gw group {g} - cka group {g}", {})[metric] = paired_difference(gw, cka)
    return out


def null(stages: dict) -> dict:
    out = {}
    for key, v in stages.items():
        if key.startswith("null_synthetic:"):
            out.setdefault(v["method"], {})["synthetic"] = {
                "false_positives": v["false_positives"], "cases": v["cases"], "draws": v["draws"],
                "power": {f: [sum(x), len(x)] for f, x in v["power"].items()}, "cost": v["cost"], "cost_L": v["cost_L"]}
        elif key.startswith("null_nets:"):
            out.setdefault(v["method"], {})["nets"] = {k: v[k] for k in ("calibration", "heldout", "deep", "gpt2",
                                                                          "counts", "draws")}
    return out


def summarize(stages: dict, s: dict) -> dict:
    out = {"structure": structure(stages, s), "selection": selection(stages), "probes": probes(stages),
           "compression": compression(stages, s), "finetune": finetune(stages), "null": null(stages)}
    if "demo" in stages:
        out["demo"] = stages["demo"]["summaries"]
    return out
