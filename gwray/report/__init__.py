"""Heatmaps, timelines and the self-contained HTML report of a run directory.

``build_report(out)`` is the entry point (``gwray report OUT`` calls it); what it reads and
writes is listed in :mod:`gwray.report.build` and :mod:`gwray.report.rundir`. No Ray here.
"""
from gwray.report.build import build_report

__all__ = ["build_report"]
