"""Releases: content-addressed artifacts, release records, pointers (issues 5 and 6)."""
