"""Layer-similarity graphs and community detection (sub-networks)."""
