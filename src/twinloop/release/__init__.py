"""Releases: content-addressed artifacts, release records, pointers (docs/DESIGN.md "Releasing")."""
