"""The shared kernel: what both loops and the release bridge stand on.

Settings, the data directory, SQLite, atomic writes, errors, text normalisation, PII
redaction, toxicity scoring, one percentile and one clock. Nothing here imports anything
above it (``tests/test_layers.py`` checks), so any layer may use it (docs/DESIGN.md "Map").
"""
