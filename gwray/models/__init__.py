"""Where networks come from: local HF directories, torch factories, toy models, shards."""
