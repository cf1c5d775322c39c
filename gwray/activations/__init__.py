"""Probe sets, capture hooks and pooling, the activation dataset, and extraction."""
