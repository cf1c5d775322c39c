"""What a run found, in a few lines: the CLI's stdout summary (text or JSON) and the report's headline.

Reads ``communities.json``'s per-method entries (``SubnetworkResult.to_dict()``: ``k``,
``groups``, ``names``, ``test``, ``significant``, ``candidate``, ``boundaries``, ``k_reason``)
and the pair records' ``gw``, ``lower_bound`` and ``runner_up_gap`` (the solver line).
"""
from __future__ import annotations

import json
import math


def _group_range(group: list, names: list) -> str:
    """'first – last' for a contiguous run of layers (one name for one layer), else the names."""
    idx = [names.index(n) for n in group]
    if idx == list(range(idx[0], idx[0] + len(idx))):
        return group[0] if len(group) == 1 else f"{group[0]} – {group[-1]}"
    return ", ".join(group)


def _boundaries(bounds: list) -> str:
    parts = [b["after"] + ("" if b.get("confidence") is None else f" (confidence {b['confidence']:.2f})")
             for b in bounds]
    return "boundaries after " + ", ".join(parts) if parts else "no boundary"


def headline(res: dict) -> str:
    """One sentence on one checkpoint's grouping (a ``communities.json`` per-method entry).

    "no significant sub-network structure (p = 0.41 > α = 0.05); best candidate: 2 groups,
    boundaries after blocks.3" or "3 groups (p = 0.01), boundaries after blocks.3 (confidence
    0.80), blocks.7 (confidence 1.00)".
    """
    test = res.get("test") or {}
    p, alpha = test.get("p_value"), test.get("alpha")
    cand = res.get("candidate")
    if res["k"] == 1:
        if "too few probe samples" in res.get("k_reason", ""):
            text = "no sub-network claimed: " + res["k_reason"].split("auto: ", 1)[-1].split(";")[0]
        elif p is not None:
            text = f"no significant sub-network structure (p = {p:.2g} > α = {alpha:g})"
        else:
            return "one group of all layers (no partition to test)"
        if cand:
            text += f"; best candidate: {cand['k']} groups, {_boundaries(cand['boundaries'])}"
        return text
    if p is None:
        verdict = "not tested against depth drift"
    elif res.get("significant"):
        verdict = f"p = {p:.2g}"
    else:
        verdict = f"as requested; p = {p:.2g}, not significant at α = {alpha:g}"
    return f"{res['k']} groups ({verdict}), {_boundaries(res.get('boundaries') or [])}"


def power_sentence(res: dict) -> str:
    """What a k = 1 answer could have seen (its ``power`` entry, :func:`gwray.graph.power.detectable_jump`);
    "" when there is none."""
    pw = res.get("power")
    if res.get("k") != 1 or not pw or not pw.get("tried"):
        return ""
    L = len(res["names"])
    if pw["jump"] is None:
        return (f"the test has little power here: even a jump of {pw['tried'][-1]:g}× the median "
                f"layer-to-layer distance across the candidate's boundaries was not detected at this "
                f"depth ({L} layers) and noise")
    return (f"what the test could have seen: the candidate's boundaries, had each been a jump of "
            f"≥ {pw['jump']:g}× the median layer-to-layer distance ({pw['jump'] * pw['unit']:.3g}), would "
            f"have been detected at α = {pw['alpha']:g} at this depth ({L} layers) and noise; smaller "
            f"steps between groups read as depth drift")


def solver_line(pairs) -> dict:
    """How settled one checkpoint's GW values are, from its pair records (dicts with ``gw``,
    ``lower_bound``, ``runner_up_gap``): ``pairs``, ``settled`` (a second solver start reached
    the value within 1 %), ``known`` (records with a runner-up gap), ``bound_median`` (median
    lower bound / value) and the ``text`` the CLI prints."""
    gaps = [r["runner_up_gap"] for r in pairs if r.get("runner_up_gap") is not None
            and math.isfinite(r["runner_up_gap"])]
    ratios = sorted(r["lower_bound"] / r["gw"] for r in pairs
                    if r.get("lower_bound") is not None and r["gw"] > 0)
    out = {"pairs": len(pairs), "known": len(gaps), "settled": sum(g <= 0.01 for g in gaps),
           "bound_median": ratios[len(ratios) // 2] if ratios else None}
    text = f"solver: {len(pairs)} pairs"
    if gaps:
        text += f", a second start reached the value within 1 % on {out['settled']} of {len(gaps)}"
    if ratios:
        text += f", lower bound at {out['bound_median']:.0%} of the value (median)"
    return out | {"text": text}


def run_summary(result) -> dict:
    """The JSON summary of a finished run.

    Parameters
    ----------
    result : gwray.result.RunResult

    Returns
    -------
    dict
        ``run_directory``, ``report``, ``method`` and ``checkpoints``: [{``id``, ``layers`` (count),
        ``k``, ``significant``, ``p_value``, ``alpha``, ``groups`` (layer ranges as text),
        ``boundaries`` [{after, index, confidence}], ``candidate`` ({k, groups, boundaries} or
        None), ``headline``, ``power`` (:func:`power_sentence` for k = 1, else None), ``solver``
        (:func:`solver_line` of its within-checkpoint pairs)}] in training order; ``name`` is the
        run's name.
    """
    comm = result.communities
    method = comm["method"]
    records = result.pairs.select(["checkpoint_a", "checkpoint_b", "gw", "lower_bound",
                                   "runner_up_gap"]).to_pylist()
    within = {c: [] for c in result.checkpoints}  # one pass: a sweep holds ~10⁶ records
    for r in records:
        if r["checkpoint_a"] == r["checkpoint_b"]:
            within[r["checkpoint_a"]].append(r)
    out = []
    for c in result.checkpoints:
        res = comm["checkpoints"][c]["methods"][method]
        test, cand = res.get("test") or {}, res.get("candidate")
        out.append({
            "id": c, "layers": len(res["names"]), "k": res["k"], "significant": res.get("significant"),
            "p_value": test.get("p_value"), "alpha": test.get("alpha"),
            "groups": [_group_range(g, res["names"]) for g in res["groups"]],
            "boundaries": res.get("boundaries") or [],
            "candidate": None if not cand else {
                "k": cand["k"], "groups": [_group_range(g, res["names"]) for g in cand["groups"]],
                "boundaries": cand["boundaries"]},
            "headline": headline(res), "power": power_sentence(res) or None,
            "solver": solver_line(within[c])})
    return {"name": result.config.name, "run_directory": str(result.out), "report": result.report,
            "method": method, "checkpoints": out}


def format_summary(summary: dict, as_json: bool = False) -> str:
    """The stdout text of :func:`run_summary`: one block per checkpoint, then where things are."""
    if as_json:
        return json.dumps(summary, indent=2)
    lines = []
    for c in summary["checkpoints"]:
        lines.append(f"{c['id']} ({c['layers']} layers, {summary['method']}): {c['headline']}")
        if c["k"] > 1:
            lines += [f"  group {g + 1}: {text}" for g, text in enumerate(c["groups"])]
        if c.get("power"):
            lines.append(f"  {c['power']}")
        if c["solver"]["pairs"]:
            lines.append(f"  {c['solver']['text']}")
    lines.append(f"run directory: {summary['run_directory']}")
    if summary["report"] is not None:
        lines.append(f"report: {summary['report']}")
    return "\n".join(lines)
