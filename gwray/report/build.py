"""``build_report(out)``: every report file of a run, rebuilt from the run directory alone."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gwray.report import figures
from gwray.report.html import render_html
from gwray.report.rundir import load_run_dir
from gwray.storage import Location

#: cross-checkpoint matrices drawn in the report (consecutive checkpoints first)
MAX_CROSS = 8
#: up to this many checkpoints each get a full section; beyond, only the last one does (the
#: slider section shows every checkpoint's matrix and groups)
MAX_SECTIONS = 4


def build_report(out: Location | str) -> Path | str:
    """Rebuild the report files of a finished (or partly finished) run.

    Reads ``run.json``, ``gw_matrix.parquet`` and, when present, ``communities.json``,
    ``pairs/*.parquet`` and ``cross/gw_matrix.parquet`` (see :mod:`gwray.report.rundir`).
    Writes, each atomically:

    - ``heatmap.png`` — the last checkpoint's GW matrix with its group boundaries and layer names;
    - ``gap.png`` — its solver certainty (relative gap to the lower bound, value vs bound);
    - ``dendrogram.png`` — its average-linkage hierarchy, leaves coloured by group;
    - ``timeline.png`` — with two or more checkpoints: group boundaries per checkpoint, step order;
    - ``report.html`` — self-contained: with several checkpoints, a slider over all of them (GW
      matrix, groups, hover values, boundary timeline; :mod:`gwray.report.interactive`); all of
      the above embedded as base64 for every checkpoint (the last one only beyond
      ``MAX_SECTIONS`` checkpoints),
      the GW matrix beside the baseline matrices (CKA, RSA, identity distortion) of each
      checkpoint that has them in communities.json, the boundary movement between consecutive
      checkpoints, up to ``MAX_CROSS`` cross-checkpoint layer matrices, tables of groups and
      scores per method, stability, solver quality, run settings.

    Parameters
    ----------
    out : Location or str
        The run directory: local path or ``file://`` / ``s3://`` / ``gs://`` URI.

    Returns
    -------
    pathlib.Path or str
        ``report.html``: a Path for a local run, the URI string otherwise.

    Raises
    ------
    GwrayInputError
        The run directory lacks run.json or gw_matrix.parquet, or they disagree (see
        :func:`gwray.report.rundir.load_run_dir`). Nothing is written then.
    """
    data = load_run_dir(out)
    norm = ((data.info.get("config") or {}).get("costs") or {}).get("normalize")  # on every GW axis
    images: dict = {}
    full = data.checkpoints if len(data.checkpoints) <= MAX_SECTIONS else data.checkpoints[-1:]
    for ckpt in full:
        res, D = data.result(ckpt), data.gw[ckpt]
        names, labels = res["names"], np.asarray(res["labels"])
        conf = {x["index"]: x["confidence"] for x in res.get("boundaries") or []
                if x.get("confidence") is not None}  # uncertain boundaries are drawn dashed
        imgs = {"heatmap": figures.heatmap(D, names, labels, f"GW distances between layers · {ckpt} · "
                                           f"{res['k']} groups ({data.method})", norm, conf),
                "gap": figures.gap_view(D, data.lower_bound[ckpt], names, f"solver certainty · {ckpt}")}
        imgs["dendrogram"] = (figures.dendrogram(D, names, labels, normalize=norm) if len(names) > 1
                              else imgs["heatmap"])
        if data.baselines.get(ckpt):
            imgs["baselines"] = figures.beside_baselines(D, data.baselines[ckpt], names, labels,
                                                         f"GW beside the baselines · {ckpt}", norm)
        st = (data.communities.get("stability") or {}).get(ckpt)
        if st and st.get("co_assignment"):
            imgs["coassignment"] = figures.coassignment(np.asarray(st["co_assignment"]), names,
                                                        float(st.get("mean_ari", float("nan"))))
        images[ckpt] = imgs
    if len(data.checkpoints) > 1:
        deepest = max(data.checkpoints, key=lambda c: len(data.layers[c]))
        images["timeline"] = figures.timeline(
            data.checkpoints, data.result(deepest)["names"],
            {c: data.result(c)["labels"] for c in data.checkpoints}, data.steps)
    order = {c: i for i, c in enumerate(data.checkpoints)}
    shown = sorted((k for k in data.cross if k[0] in order and k[1] in order),
                   key=lambda k: (order[k[1]] - order[k[0]] != 1, order[k[0]], order[k[1]]))
    images["cross"] = {(a, b): figures.cross_heatmap(data.cross[(a, b)], data.layers[a], data.layers[b], a, b,
                                                     norm)
                       for a, b in shown[:MAX_CROSS]}
    html = render_html(data, images, figures.group_color)
    last = images[data.checkpoints[-1]]
    for name, png in (("heatmap.png", last["heatmap"]), ("gap.png", last["gap"]),
                      ("dendrogram.png", last["dendrogram"])):
        data.loc.child(name).write_bytes(png)
    if "timeline" in images:
        data.loc.child("timeline.png").write_bytes(images["timeline"])
    target = data.loc.child("report.html")
    target.write_bytes(html.encode("utf-8"))
    return Path(target.path) if target.is_local else str(target)
