"""Shadow's learning loop (DESIGN.md "Learning", issue 5): filters, replay, EWC, training."""
