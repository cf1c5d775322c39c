"""The report's figures as PNG bytes: heatmap, GW beside its baselines, solver-certainty (gap)
view, dendrogram, timeline, co-assignment, cross-checkpoint matrices.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas directly (never pyplot), so
nothing depends on a display, a global backend or global figure state. Every function returns
the PNG file's bytes; the caller writes or embeds them.
"""
from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap, to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

DPI = 110
#: matrix kind → (what it is, whether high means similar); "gw" and gwray.gw.baselines.KINDS
MEANING = {"gw": ("GW distance", False), "cka": ("linear CKA (debiased)", True),
           "rsa": ("RSA: Spearman of cost matrices", True),
           "identity": ("identity-coupling distortion", False)}
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896")


#: L at or below which every matrix cell is labelled with its value
ANNOTATE_MAX = 24
_NORMALIZED = {"mean": "costs ÷ their mean", "max": "costs ÷ their max", "median": "costs ÷ their median",
               "none": "raw costs"}


def gw_label(normalize: str | None) -> str:
    """"GW distance" with how each layer's cost matrix was scaled (``costs.normalize``)."""
    return f"GW distance ({_NORMALIZED[normalize]})" if normalize in _NORMALIZED else "GW distance"


def group_color(g: int) -> str:
    """Colour of group id g (cycles after 14 groups)."""
    return _PALETTE[int(g) % len(_PALETTE)]


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # constrained layout: one draw, no "tight" re-draw
    return buf.getvalue()


def _ticks(ax, names, axis="both"):
    L = len(names)
    step = max(1, int(np.ceil(L / 40)))  # at most ~40 labels: long LLM stacks stay readable
    idx = np.arange(0, L, step)
    size = 8 if L <= 24 else 6
    if axis in ("both", "x"):
        ax.set_xticks(idx)
        ax.set_xticklabels([names[i] for i in idx], rotation=90, fontsize=size)
    if axis in ("both", "y"):
        ax.set_yticks(idx)
        ax.set_yticklabels([names[i] for i in idx], fontsize=size)


def _boundaries(labels) -> list[int]:
    """Positions i where layer i starts a new group in depth order (1 … L-1)."""
    lab = np.asarray(labels)
    return [i for i in range(1, len(lab)) if lab[i] != lab[i - 1]]


#: boundaries that fewer probe resamples than this share are drawn (and tabled) as uncertain
UNCERTAIN = 0.7


def boundary_styles(labels, confidence: dict | None = None) -> list[tuple[int, str]]:
    """``(position, line style)`` of each group boundary: position b = first layer of the new
    group; ``"--"`` when ``confidence`` (boundary index b − 1, i.e. layers b − 1 | b → share of
    probe resamples with that boundary, as in communities.json) is below ``UNCERTAIN``, else
    ``"-"``; boundaries without a confidence are drawn solid."""
    conf = confidence or {}
    return [(b, "--" if conf.get(b - 1, 1.0) < UNCERTAIN else "-") for b in _boundaries(labels)]


def _side(L: int, cap: float = 11.0) -> float:
    """Height in inches of an (L, L) matrix panel: grows with L up to ``cap``."""
    return min(cap, 3.2 + 0.28 * L)


def _annotate(ax, im, M: np.ndarray) -> None:
    """Write each cell's value in it (small matrices only), dark on light cells and vice versa."""
    if max(M.shape) > ANNOTATE_MAX:
        return
    size = 7 if max(M.shape) <= 12 else 5
    for (i, j), v in np.ndenumerate(M):
        if np.isfinite(v):
            r, g, b, _ = im.cmap(im.norm(v))
            ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=size, color=ink)


def _matrix_panel(fig: Figure, ax, M: np.ndarray, names: list[str], label: str, labels=None,
                  confidence: dict | None = None, **imshow) -> None:
    """Draw the (L, L) matrix M on ax in depth order, with its colour bar and layer ticks; with
    L ≤ ``ANNOTATE_MAX`` each cell also carries its value.

    Given group ids ``labels`` (shape (L,)), white lines mark the boundaries where the group
    changes between consecutive layers (dashed where ``confidence`` says the boundary is
    uncertain, :func:`boundary_styles`), and a strip above the matrix, labelled "group", shows
    each layer's group colour with the group's number where a run of it starts (non-contiguous
    groups repeat). ``imshow`` goes to ``Axes.imshow`` (cmap, vmin, vmax).
    """
    im = ax.imshow(M, interpolation="nearest", **imshow)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
    _ticks(ax, names)
    _annotate(ax, im, M)
    if labels is None:
        return
    styles = boundary_styles(labels, confidence)
    for b, ls in styles:
        ax.axhline(b - 0.5, color="white", lw=2, ls=ls)
        ax.axvline(b - 0.5, color="white", lw=2, ls=ls)
    if any(ls == "--" for _, ls in styles):
        ax.set_xlabel(f"dashed: a boundary found in < {UNCERTAIN:.0%} of probe resamples", fontsize=7)
    for i, g in enumerate(labels):
        ax.add_patch(Rectangle((i - 0.5, -1.6), 1, 0.9, color=group_color(g), clip_on=False))
    for i in [0, *_boundaries(labels)]:
        ax.text(i - 0.4, -1.15, str(int(labels[i]) + 1), ha="left", va="center", fontsize=6, color="white",
                fontweight="bold", clip_on=False)
    ax.text(-0.6, -1.15, "group", ha="right", va="center", fontsize=7, clip_on=False)
    ax.set_ylim(len(names) - 0.5, -1.7)


def heatmap(D: np.ndarray, names: list[str], labels=None, title: str = "",
            normalize: str | None = None, confidence: dict | None = None) -> bytes:
    """The distance matrix in depth order, group boundaries as lines, group colours on a strip.

    Parameters
    ----------
    D : np.ndarray, shape (L, L)
        Layer distances (GW).
    names : list of str, length L
    labels : array_like, shape (L,), optional
        Group id per layer; boundaries are drawn where it changes between consecutive layers,
        and the strip shows the colour of each layer's group (non-contiguous groups repeat).
    title : str
    normalize : str, optional
        ``costs.normalize`` of the run, named on the colour bar (:func:`gw_label`).
    confidence : dict, optional
        Boundary index i (layers i | i + 1) → share of probe resamples with that boundary; those
        below ``UNCERTAIN`` are drawn dashed.

    Returns
    -------
    bytes
        PNG; with L ≤ ``ANNOTATE_MAX`` every cell carries its value.
    """
    side = _side(len(names))
    fig = Figure(figsize=(side + 1.4, side), layout="constrained")
    ax = fig.add_subplot(111)
    _matrix_panel(fig, ax, D, names, gw_label(normalize), labels, confidence, cmap="viridis")
    ax.set_title(title, fontsize=11, pad=4)
    return _png(fig)


def beside_baselines(D: np.ndarray, baselines: dict, names: list[str], labels=None,
                     title: str = "", normalize: str | None = None) -> bytes:
    """The GW matrix beside the baseline matrices of the same layers, one panel each.

    Every panel has the same layer order and the same group boundaries (the GW groups).
    Similarities (CKA, RSA) are drawn with the reversed colour map, so that dark means "alike"
    in every panel and the panels can be compared by eye; each panel's title says whether high
    values mean similar or distant.

    Parameters
    ----------
    D : np.ndarray, shape (L, L)
        GW distances.
    baselines : dict
        kind (a key of ``MEANING``: "cka", "rsa", "identity") → (L, L) matrix, as
        :func:`gwray.gw.baselines.baseline_matrices` returns (NaN cells are drawn blank).
    names : list of str, length L
    labels : array_like, shape (L,), optional
        Group id per layer.
    title : str
    normalize : str, optional
        ``costs.normalize`` of the run (:func:`gw_label`).

    Returns
    -------
    bytes
        PNG: two panels per row.
    """
    panels = [("gw", D), *baselines.items()]
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    side = _side(len(names), 6.0)
    fig = Figure(figsize=(ncols * (side + 1.4), nrows * side + 0.4), layout="constrained")
    for k, (kind, M) in enumerate(panels):
        what, similar = MEANING[kind]
        what = gw_label(normalize) if kind == "gw" else what
        ax = fig.add_subplot(nrows, ncols, k + 1)
        _matrix_panel(fig, ax, M, names, what, labels, cmap="viridis_r" if similar else "viridis")
        ax.set_title(f"{what} · high = {'similar' if similar else 'distant'}", fontsize=10, pad=4)
    fig.suptitle(f"{title} (dark = alike in every panel)" if title else "dark = alike in every panel",
                 fontsize=11)
    return _png(fig)


def gap_view(gw: np.ndarray, lower_bound: np.ndarray, names: list[str], title: str = "") -> bytes:
    """The solver's certainty: relative gap (gw − lower bound)/gw per pair, and gw vs bound.

    Parameters
    ----------
    gw, lower_bound : np.ndarray, shape (L, L)
        Objective of the coupling found and a lower bound on the optimum (NaN where unknown).
    names : list of str, length L

    Returns
    -------
    bytes
        PNG: left, the relative-gap matrix (0 = certified optimal); right, each pair's bound
        against its value, with the line bound = value.
    """
    L = len(names)
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(gw > 0, (gw - lower_bound) / gw, 0.0)
    gap[np.eye(L, dtype=bool)] = np.nan
    side = _side(L, 8.0)
    fig = Figure(figsize=(2 * side + 1.5, side), layout="constrained")
    ax = fig.add_subplot(121)
    top = float(np.nanmax(gap)) if L > 1 else 1.0
    _matrix_panel(fig, ax, np.clip(gap, 0, 1), names, "(gw − lower bound) / gw", cmap="Reds", vmin=0,
                  vmax=max(1e-3, top))
    ax.set_title("relative gap per pair (0 = proven optimal)", fontsize=10)
    ax2 = fig.add_subplot(122)
    iu = np.triu_indices(L, 1)
    x, y = lower_bound[iu], gw[iu]
    ax2.scatter(x, y, s=14, alpha=0.75)
    hi = float(np.nanmax(np.concatenate([x, y]))) if x.size else 1.0
    ax2.plot([0, hi], [0, hi], color="k", lw=1, ls="--", label="bound = value")
    ax2.set_xlabel("lower bound (TLB)")
    ax2.set_ylabel("GW value found")
    ax2.set_title("every pair: value vs lower bound", fontsize=10)
    ax2.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.08), borderaxespad=0)  # above: covers no point
    ax2.set_box_aspect(1)
    if title:
        fig.suptitle(title, fontsize=11)
    return _png(fig)


def dendrogram(D: np.ndarray, names: list[str], labels=None, title: str = "",
               normalize: str | None = None) -> bytes:
    """Average-linkage dendrogram of the layers (scipy), leaf labels coloured by group.

    Parameters
    ----------
    D : np.ndarray, shape (L, L), L ≥ 2
    names : list of str, length L
    labels : array_like, shape (L,), optional
    normalize : str, optional
        ``costs.normalize`` of the run (:func:`gw_label`).

    Returns
    -------
    bytes
        PNG.
    """
    from scipy.cluster.hierarchy import dendrogram as scipy_dendrogram, linkage
    from scipy.spatial.distance import squareform

    L = len(names)
    fig = Figure(figsize=(min(12.0, 3.0 + 0.3 * L), 3.6), layout="constrained")
    ax = fig.add_subplot(111)
    Z = linkage(squareform(D, checks=False), method="average")
    scipy_dendrogram(Z, labels=list(names), ax=ax, color_threshold=0,
                            above_threshold_color="#555555", leaf_rotation=90,
                            leaf_font_size=8 if L <= 24 else 6)
    if labels is not None:
        where = {n: i for i, n in enumerate(names)}
        for tick in ax.get_xticklabels():
            tick.set_color(group_color(labels[where[tick.get_text()]]))
    ax.set_ylabel(f"{gw_label(normalize)}, average linkage")
    ax.set_title(title or f"hierarchy of {L} layers (leaf colour = group)", fontsize=10)
    return _png(fig)


def timeline(checkpoints: list[str], names: list[str], labels: dict, steps: dict | None = None) -> bytes:
    """Group boundaries per checkpoint, checkpoints in step order (top = earliest).

    Parameters
    ----------
    checkpoints : list of str
        Checkpoint ids in step order.
    names : list of str, length L
        Layer names of the x axis (the deepest checkpoint's, when depths differ).
    labels : dict
        checkpoint id → group ids, shape (L_c,).
    steps : dict, optional
        checkpoint id → training step (shown in the row label).

    Returns
    -------
    bytes
        PNG: one row per checkpoint, each layer a cell in its group's colour, a black bar at
        every group boundary.
    """
    C, L = len(checkpoints), len(names)
    # one row per checkpoint, 0.45 inch each up to 40 rows, then the rows share 18 inches
    fig = Figure(figsize=(min(13.0, 3.5 + 0.32 * L), 1.2 + min(0.45 * C, max(18.0, 0.45 * 40))),
                 layout="constrained")
    ax = fig.add_subplot(111)
    cells, bars = np.ones((C, L, 4)), []  # RGBA per (checkpoint, layer): one image, not C×L patches
    cells[..., 3] = 0.0
    for r, ckpt in enumerate(checkpoints):
        lab = np.asarray(labels[ckpt])
        cells[r, :len(lab)] = [to_rgba(group_color(g), 0.85) for g in lab]
        bars += [[(b, r - 0.1), (b, r + 0.9)] for b in _boundaries(lab)]
        if C <= 40:
            ax.text(len(lab) + 0.2, r + 0.4, f"k={int(lab.max()) + 1}", va="center", fontsize=8)
    ax.imshow(cells, extent=(0, L, C - 0.1, -0.1), aspect="auto", interpolation="nearest")
    ax.add_collection(LineCollection(bars, colors="black", linewidths=2.5 if C <= 40 else 1.0))
    ax.set_xlim(0, L + 1.2)
    ax.set_ylim(C - 0.1, -0.1)
    ax.set_xticks(np.arange(L) + 0.5)
    ax.set_xticklabels(names, rotation=90, fontsize=8 if L <= 24 else 6)
    ax.set_yticks(np.arange(C) + 0.4)
    steps = steps or {}
    ax.set_yticklabels([f"{c} (step {steps[c]})" if steps.get(c) is not None else c for c in checkpoints],
                       fontsize=8)
    ax.set_title("sub-network boundaries across checkpoints (top = earliest)", fontsize=10)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _png(fig)


def coassignment(co: np.ndarray, names: list[str], mean_ari: float) -> bytes:
    """Stability: how often two layers share a group across resamples.

    Parameters
    ----------
    co : np.ndarray, shape (L, L)
        Co-assignment fractions in [0, 1].
    names : list of str, length L
    mean_ari : float
        Mean ARI of the resampled groupings to the full-data grouping (in the title).

    Returns
    -------
    bytes
        PNG.
    """
    side = _side(len(names), 9.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot(111)
    _matrix_panel(fig, ax, co, names, "share of resamples in the same group",
                  cmap=ListedColormap(np.linspace([1, 1, 1], [0.1, 0.3, 0.7], 256)), vmin=0, vmax=1)
    ax.set_title(f"co-assignment over resamples (mean ARI to full data {mean_ari:.2f})", fontsize=10)
    return _png(fig)


def cross_heatmap(M: np.ndarray, names_a: list[str], names_b: list[str], a: str, b: str,
                  normalize: str | None = None) -> bytes:
    """Layers of checkpoint a (rows) against layers of checkpoint b (columns).

    Parameters
    ----------
    M : np.ndarray, shape (L_a, L_b)
        Cross-checkpoint GW distances.
    names_a, names_b : list of str
    a, b : str
        Checkpoint ids.
    normalize : str, optional
        ``costs.normalize`` of the run (:func:`gw_label`).

    Returns
    -------
    bytes
        PNG; a white dot marks each row's closest layer in b (where that layer "went").
    """
    La, Lb = M.shape
    side = _side(max(La, Lb), 9.0)
    fig = Figure(figsize=(side + 1.2, side * La / max(La, Lb) + 0.8), layout="constrained")
    ax = fig.add_subplot(111)
    im = ax.imshow(M, cmap="viridis", interpolation="nearest", aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=gw_label(normalize))
    _annotate(ax, im, M)
    best = np.nanargmin(np.where(np.isnan(M), np.inf, M), axis=1)
    ax.scatter(best, np.arange(La), s=18, color="white", edgecolors="black", linewidths=0.5)
    _ticks(ax, names_b, "x")
    _ticks(ax, names_a, "y")
    ax.set_xlabel(f"layers of {b}")
    ax.set_ylabel(f"layers of {a}")
    ax.set_title(f"{a} → {b} (dot = closest layer)", fontsize=10)
    return _png(fig)
