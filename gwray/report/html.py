"""The self-contained ``report.html``: every image embedded as base64, no external resource.

A person opens it from the run directory or attaches it to a ticket; it says which layers form
which sub-networks, how clear and how stable the groups are, how certain the solver is, and the
settings of the run.
"""
from __future__ import annotations

import base64
import json
from html import escape

import numpy as np

from gwray.report.figures import MEANING, UNCERTAIN
from gwray.report.interactive import sweep_section
from gwray.report.rundir import RunData, solver_quality
from gwray.report.summary import headline, power_sentence

SUMMARY_LINES = 4
"""Checkpoints whose one-line summary is listed; earlier ones are folded away (and named)."""

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0 1.2em}td,th{border:1px solid #ddd;padding:.3em .6em;
text-align:left;vertical-align:top;font-size:.92em}th{background:#f4f4f4}
img{max-width:100%;height:auto;display:block;margin:.5em 0}.meta{color:#666}
.swatch{display:inline-block;width:.9em;height:.9em;border-radius:2px;margin-right:.4em;vertical-align:middle}
.warn{color:#a33}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}
"""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _num(x, fmt="{:.3f}") -> str:
    return "–" if x is None else fmt.format(x)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def describe_group(group: list[str], names: list[str]) -> str:
    """'first – last' for a contiguous run of layers, else the names; escaped HTML."""
    idx = [names.index(n) for n in group]
    if len(group) > 1 and idx == list(range(idx[0], idx[0] + len(idx))):
        return f"{escape(group[0])} – {escape(group[-1])}"
    return ", ".join(escape(n) for n in group)


def _groups_table(res: dict, color) -> str:
    noncont = set(res.get("noncontiguous_groups", []))
    rows = [[f'<span class="swatch" style="background:{color(g)}"></span>{g + 1}',
             str(len(members)), describe_group(members, res["names"]),
             "no (split in depth)" if g in noncont else "yes"]
            for g, members in enumerate(res["groups"])]
    return _table(["group", "layers", "members", "contiguous"], rows)


def _scores_table(methods: dict) -> str:
    rows = []
    for m, r in methods.items():
        s = r["scores"]
        flag = "yes" if r["contiguous"] else '<span class="warn">no</span>'
        rows.append([escape(m), str(r["k"]), escape(r["k_reason"]), _num(s.get("modularity")),
                     _num(s.get("silhouette")), _num(s.get("within_between")), flag])
    return _table(["method", "k", "why this k", "modularity", "silhouette", "within/between",
                   "all groups contiguous"], rows)


def _quality(q: dict) -> str:
    rows = [["pairs", str(q["pairs"])],
            ["pairs proven optimal (gap ≤ 1e-6)", str(q["proven"])],
            ["median relative gap (gw − lower bound)/gw", _num(q["median_gap"], "{:.2%}")],
            ["largest relative gap", _num(q["max_gap"], "{:.2%}")]]
    if "records" in q:
        inits = ", ".join(f"{escape(str(k))}: {v}" for k, v in sorted(q["inits"].items()))
        rows += [["start that won (per pair)", inits or "–"],
                 ["iterations (median / max)", f"{_num(q['iterations_median'], '{:.0f}')} / {q['iterations_max']}"],
                 ["largest marginal error", _num(q["max_marginal_error"], "{:.2e}")],
                 ["solver seconds (sum over pairs)", _num(q["seconds"], "{:.1f}")],
                 ["solver", escape(", ".join(q["solvers"])) or "–"],
                 ["samples per layer (n)", ", ".join(map(str, q["n"])) or "–"]]
        if q["runner_up_known"]:
            rows.append(["a second start within 1 % of the value (settled pairs)",
                         f"{q['settled']} of {q['runner_up_known']}"])
    return _table(["solver quality", "value"], rows)




def _boundaries_table(res: dict) -> str:
    """Each boundary with its resampling confidence; the test against depth drift below it."""
    test, rows = res.get("test") or {}, []
    for b in res.get("boundaries") or []:
        c = b.get("confidence")
        mark = ("–" if c is None else f"{c:.2f}" if c >= UNCERTAIN
                else f"<span class='warn'>{c:.2f} (uncertain)</span>")
        rows.append([f"after {escape(b['after'])}", mark])
    out = _table(["boundary", f"confidence (share of probe resamples; &lt; {UNCERTAIN} uncertain)"],
                 rows) if rows else ""
    if test.get("p_value") is not None:
        out += (f"<p class='meta'>Test of block structure against depth drift: statistic "
                f"{test['statistic']:.3g}, p = {test['p_value']:.3g} ({test['n_null']} null "
                f"matrices, α = {test['alpha']:g}). Null: {escape(test['null'])}.</p>")
    cand = res.get("candidate")
    if res["k"] == 1 and cand:
        out += ("<details><summary>the rejected candidate partition</summary>"
                + _groups_table(cand | {"names": res["names"]}, lambda g: "#bbb") + "</details>")
    return out


def _stability(st: dict | None, res: dict) -> str:
    if not st:
        return ("<p class='meta'>Stability not computed (<code>stability.resamples: auto</code> "
                "skips large runs; set an integer &gt; 0 to recompute the matrix on random subsets "
                "of the probe).</p>")
    where = (f"On {st.get('resamples')} random subsets of {_num(st.get('fraction'), '{:.0%}')} of the probe "
             f"({st.get('n_rows')} samples each)")
    cand = res.get("candidate")
    if res["k"] == 1 and cand:  # the resamples were compared with the partition the test rejected
        return (f"<p>{where}, the <b>rejected candidate</b> ({cand['k']} groups) recurred with mean ARI "
                f"<b>{_num(st.get('mean_ari'))}</b> (min {_num(st.get('min_ari'))}). This measures where the "
                f"candidate would cut, not whether the cuts are real: the test above could not tell them "
                f"from depth drift, so a high ARI here does not make them sub-networks.</p>")
    return (f"<p>{where}, the grouping matched the full-data one with mean ARI "
            f"<b>{_num(st.get('mean_ari'))}</b> (min {_num(st.get('min_ari'))}).</p>")


def _baselines_key(kinds: list[str]) -> str:
    rows = [[f"<code>{escape(k)}</code>", escape(MEANING[k][0]),
             "similar" if MEANING[k][1] else "distant"] for k in ("gw", *kinds)]
    return ("<p>The same layers, in the same order and with the same group boundaries, compared by "
            "the usual measures computed on the same activations. Similarities are drawn with the "
            "colour map reversed: dark means alike in every panel.</p>"
            + _table(["panel", "what it is", "high values mean"], rows))


def _correspondence(data: RunData, a: str, b: str) -> str:
    """For each layer of a, its closest layer of b (the row minimum of the cross matrix)."""
    M, nb = data.cross[(a, b)], data.layers[b]
    rows = [[escape(name), escape(nb[int(np.argmin(row))]), _num(float(np.min(row)), "{:.4g}")]
            for name, row in zip(data.layers[a], M)]
    return _table([f"layer of {escape(a)}", f"closest layer of {escape(b)}", "GW"], rows)


def _summary_line(data: RunData, ckpt: str) -> str:
    r = data.result(ckpt)
    line = escape(headline(r))
    if r["k"] > 1:
        line += ": " + "; ".join(describe_group(g, r["names"]) for g in r["groups"])
    elif text := power_sentence(r):
        line += ". " + escape(text[0].upper() + text[1:])
    flag = "" if r["contiguous"] else " <span class='warn'>— some groups are not contiguous in depth</span>"
    return f"<li><b>{escape(ckpt)}</b>: {line}{flag}</li>"


def _span(ids: list[str]) -> str:
    """'a' or 'a, b' or 'first – last' for consecutive checkpoint ids in training order."""
    return ", ".join(map(escape, ids)) if len(ids) <= 2 else f"{escape(ids[0])} – {escape(ids[-1])}"


def _folding(data: RunData, shown: list[str]) -> str:
    """What the summary and the sections leave out with many checkpoints, named (nothing for few)."""
    ids = data.checkpoints
    if len(ids) <= SUMMARY_LINES and len(shown) == len(ids):
        return ""
    lines, sections = ids[-SUMMARY_LINES:], [c for c in ids if c not in shown]
    text = (f"{len(ids)} checkpoints. Listed here: the last {len(lines)} ({_span(lines)}); the "
            f"{len(ids) - len(lines)} before them ({_span(ids[:-len(lines)])}) are folded below the "
            "list." if len(ids) > len(lines) else f"{len(ids)} checkpoints.")
    if sections:
        text += (f" Full sections (heatmap, groups, stability, solver certainty): "
                 f"{_span(shown)}; the {len(sections)} others ({_span(sections)}) are in the slider "
                 "and the timeline.")
    return f"<p class='meta'>{text}</p>"


def _certainty_sentence(q: dict) -> str:
    """What the solver's gap means for reading the matrix, in one sentence."""
    gap = q.get("max_gap")
    if gap is None:
        return ""
    if gap <= 1e-6:
        text = "Every GW value is proven optimal: the matrix is exact, its pattern is the data's."
    else:
        text = (f"Each GW value is the exact cost of a feasible alignment (an upper bound) and its "
                f"true distance lies at most {gap:.1%} below it (median {q['median_gap']:.1%}): "
                f"differences between cells smaller than that may be the solver's, larger ones "
                f"are the data's.")
    known = q.get("runner_up_known")
    if known:
        text += (f" On {q['settled']} of {known} pairs a second solver start reached the value "
                 f"within 1 % (settled)")
        text += ("." if q["settled"] == known else
                 f"; on the others one start alone found it and the next start ended up to "
                 f"{q['runner_up_max']:.0%} above, so a wider search may still lower them.")
    return f"<p>{text}</p>"


def render_html(data: RunData, images: dict, color) -> str:
    """The report as one HTML string.

    Parameters
    ----------
    data : RunData
    images : dict
        ``{"timeline": png or None, "cross": {(a, b): png}, "<ckpt>": {"heatmap", "gap",
        "dendrogram", "coassignment"?, "baselines"?: png bytes}}``.
    color : callable
        group id → CSS colour (the figures' palette).

    Returns
    -------
    str
    """
    info, method = data.info, data.method
    name = escape(str(info.get("name") or data.loc.name))
    shown = [c for c in data.checkpoints if c in images]  # checkpoints with a full section
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>gwray report: {name}"
           f"</title><style>{CSS}</style></head><body>",
           f"<h1>Sub-networks of {name}</h1>",
           f"<p class='meta'>gwray {escape(str(info.get('gwray_version', '?')))} · probe hash "
           f"{escape(str(info.get('probe_hash', '?')))} · {len(data.checkpoints)} checkpoint(s) · "
           f"grouping method <b>{escape(method)}</b> · groups from {escape(data.communities_source)}</p>",
           "<h2>Summary</h2>", _folding(data, shown), "<ul>",
           *(_summary_line(data, c) for c in data.checkpoints[-SUMMARY_LINES:]), "</ul>"]
    if len(data.checkpoints) > SUMMARY_LINES:  # the latest first; a long list would push the slider off screen
        out += [f"<details><summary>the other {len(data.checkpoints) - SUMMARY_LINES} checkpoints"
                "</summary><ul>", *(_summary_line(data, c) for c in data.checkpoints[:-SUMMARY_LINES]),
                "</ul></details>"]
    if len(data.checkpoints) > 1:
        out.append(sweep_section(data.checkpoints, data.steps, data.layers, data.gw,
                                 {c: data.result(c)["labels"] for c in data.checkpoints}))
    if images.get("timeline"):
        out += ["<h2>Across checkpoints</h2>", _img(images["timeline"], "timeline of group boundaries")]
        moves = data.communities.get("movement") or []
        if moves:
            out.append(_table(["from", "to", "new boundaries before", "boundaries gone before"],
                              [[escape(m["from"]), escape(m["to"]),
                                escape(", ".join(m["added"])) or "–", escape(", ".join(m["removed"])) or "–"]
                               for m in moves]))
    if images.get("cross"):
        out.append("<h2>Layer correspondence across checkpoints</h2>")
        for (a, b), png in images["cross"].items():
            out.append(_img(png, f"cross-checkpoint GW matrix {a} to {b}"))
            if data.layers[a] != data.layers[b]:  # different models: say which layer matches which
                out.append(_correspondence(data, a, b))
    for ckpt in shown:
        entry, imgs = data.communities["checkpoints"][ckpt], images[ckpt]
        out += [f"<h2 id='ckpt-{escape(ckpt)}'>Checkpoint {escape(ckpt)}</h2>",
                _img(imgs["heatmap"], f"GW distance heatmap of {ckpt}")]
        if imgs.get("baselines"):
            kinds = list(data.baselines[ckpt])
            out += ["<h3>GW beside the baselines</h3>", _baselines_key(kinds),
                    _img(imgs["baselines"], f"GW matrix of {ckpt} beside {', '.join(kinds)}")]
        out += [f"<h3>Groups ({escape(method)})</h3>", _groups_table(data.result(ckpt), color),
                _boundaries_table(data.result(ckpt)),
                "<h3>Scores per method</h3>", _scores_table(entry["methods"])]
        if entry.get("agreement"):
            out.append(_table(["methods", "agreement (adjusted Rand index)"],
                              [[escape(k.replace("~", " vs ")), _num(v)] for k, v in entry["agreement"].items()]))
        for m, r in entry["methods"].items():
            if m != method:
                out += [f"<details><summary>groups found by {escape(m)}</summary>",
                        _groups_table(r, color), "</details>"]
        st = (data.communities.get("stability") or {}).get(ckpt)
        out += ["<h3>Stability</h3>", _stability(st, data.result(ckpt))]
        if imgs.get("coassignment"):
            out.append(_img(imgs["coassignment"], f"co-assignment of {ckpt}"))
        quality = solver_quality(data, ckpt)
        out += ["<h3>Solver certainty</h3>", _certainty_sentence(quality), _quality(quality),
                _img(imgs["gap"], f"lower bound and gap view of {ckpt}"),
                "<h3>Hierarchy</h3>", _img(imgs["dendrogram"], f"dendrogram of {ckpt}")]
    settings = json.dumps(info.get("config", {}), indent=2, sort_keys=True, default=str)
    out += ["<h2>Run settings</h2>",
            f"<p class='meta'>Read from {escape(str(data.loc))}: run.json, gw_matrix.parquet, "
            f"communities.json, pairs/*.parquet.</p>", f"<pre>{escape(settings)}</pre>",
            "</body></html>"]
    return "\n".join(out)
