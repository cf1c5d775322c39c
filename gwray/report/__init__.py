"""Heatmaps, timelines and the self-contained HTML report."""
