"""Chunking: word windows with overlap, verbatim slices, never empty."""

from __future__ import annotations

import pytest

from twinloop.knowledge.chunking import chunk_text


def _words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


@pytest.mark.parametrize(
    ("n", "size", "overlap", "expected_chunks"),
    [(5, 10, 2, 1), (10, 10, 2, 1), (11, 10, 2, 2), (26, 10, 2, 3), (100, 10, 0, 10)],
)
def test_chunk_counts_and_coverage(n, size, overlap, expected_chunks):
    chunks = chunk_text(_words(n), size, overlap)
    assert len(chunks) == expected_chunks
    covered = {w for c in chunks for w in c.split()}
    assert covered == set(_words(n).split()), "every word lands in some chunk"
    assert all(len(c.split()) <= size for c in chunks)


def test_overlap_is_shared_between_neighbours():
    chunks = chunk_text(_words(30), 10, 3)
    for a, b in zip(chunks, chunks[1:]):
        assert set(a.split()[-3:]) <= set(b.split())


def test_chunks_are_verbatim_slices():
    text = "(1) Personal data shall be:\n  (a) processed lawfully,  fairly; and\n(b) collected."
    for c in chunk_text(text, 4, 1):
        assert c in text


def test_empty_and_bad_arguments():
    assert chunk_text("   \n ", 10, 2) == []
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("a b c", 3, 3)
