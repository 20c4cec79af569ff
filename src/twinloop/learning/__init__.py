"""Shadow's learning loop (docs/DESIGN.md "Learning"): filters, replay, EWC, training."""
