"""Default domain packs (pack.yaml, seed corpus) and evaluation sets; data only."""
