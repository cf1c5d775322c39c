"""Uncertain group boundaries are drawn dashed on the heatmap (issue 13: a confidence for every boundary)."""
import numpy as np
from matplotlib.figure import Figure

from gwray.report import figures

LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2])  # boundaries at indices 2 (2|3) and 4 (4|5)
DEPTH = np.arange(8)
D = np.abs(np.subtract.outer(LABELS, LABELS)) + 0.01 * np.abs(np.subtract.outer(DEPTH, DEPTH))


def test_boundary_styles_follow_the_resampling_confidence():
    assert figures.boundary_styles(LABELS) == [(3, "-"), (5, "-")]
    assert figures.boundary_styles(LABELS, {2: 0.9, 4: 0.4}) == [(3, "-"), (5, "--")]
    assert figures.boundary_styles(LABELS, {2: figures.UNCERTAIN, 4: 0.0}) == [(3, "-"), (5, "--")]


def test_heatmap_draws_uncertain_boundaries_dashed_and_says_so():
    names = [f"l{i}" for i in range(8)]
    fig = Figure()
    ax = fig.add_subplot(111)
    figures._matrix_panel(fig, ax, D, names, "GW", LABELS, {2: 1.0, 4: 0.2}, cmap="viridis")
    dashed = sorted({round(max(ln.get_xdata()[0], ln.get_ydata()[0]), 2) for ln in ax.lines
                     if ln.get_linestyle() == "--"})
    solid = sorted({round(max(ln.get_xdata()[0], ln.get_ydata()[0]), 2) for ln in ax.lines
                    if ln.get_linestyle() == "-"})
    assert dashed == [4.5] and solid == [2.5]
    assert "dashed" in ax.get_xlabel()
    png = figures.heatmap(D, names, LABELS, "t", "mean", {2: 1.0, 4: 0.2})
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png != figures.heatmap(D, names, LABELS, "t", "mean", {2: 1.0, 4: 1.0})
