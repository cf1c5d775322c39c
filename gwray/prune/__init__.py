"""Act on the groups: drop blocks of a Hugging Face causal LM and measure what it costs.

- :mod:`gwray.prune.scores` — the selection rules (groups, ShortGPT's BI, the angular distance,
  random) as functions over arrays;
- :mod:`gwray.prune.hf` — the probe's hidden states of an HF causal LM, dropping blocks, writing
  the pruned model;
- :mod:`gwray.prune.evaluate` — held-out text, perplexity and healing;
- :mod:`gwray.prune.command` — ``gwray prune RUN_DIR ...``;
- :mod:`gwray.prune.toy` — the same rules on the toy residual nets of :mod:`gwray.models.toy`
  (drop blocks, accuracy before and after healing).
"""
