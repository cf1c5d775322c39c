"""Which GW pairs to solve, the Ray workers that solve them, and the pair-results dataset."""
