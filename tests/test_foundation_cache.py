"""The de-quantised model cache: verified on load, rebuilt when corrupt, written atomically."""

from __future__ import annotations

import json

from twinloop.foundation import cache
from twinloop.foundation.tiny import tiny_model, tiny_tokenizer


def _entry(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_model(tok, layers=1, hidden=16)
    return cache.store(tmp_path, "ab" * 32, model, tok)


def test_store_then_lookup_verifies(tmp_path):
    entry = _entry(tmp_path)
    assert entry.path.name == ("ab" * 32)[:16]
    manifest = json.loads((entry.path / cache.MANIFEST).read_text())
    assert cache.WEIGHTS in manifest["files"] and "config.json" in manifest["files"]
    assert cache.lookup(tmp_path, "ab" * 32) == entry
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp folder left"


def test_corrupt_weights_are_detected_and_removed(tmp_path):
    entry = _entry(tmp_path)
    weights = entry.path / cache.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte deep in the tensor data
    weights.write_bytes(bytes(data))
    assert "does not match" in cache.verify(entry.path)
    assert cache.lookup(tmp_path, "ab" * 32) is None
    assert not entry.path.exists(), "a corrupt entry is removed so it is rebuilt, never loaded"


def test_missing_file_or_manifest_is_not_trusted(tmp_path):
    entry = _entry(tmp_path)
    (entry.path / "config.json").unlink()
    assert cache.verify(entry.path) == "config.json missing"
    entry = _entry(tmp_path)
    (entry.path / cache.MANIFEST).write_text("{not json")
    assert cache.verify(entry.path).startswith("manifest unreadable")
    (entry.path / cache.MANIFEST).unlink()
    assert cache.verify(entry.path) == "manifest missing"


def test_existing_entry_wins_over_a_concurrent_store(tmp_path):
    first = _entry(tmp_path)
    second = _entry(tmp_path)
    assert first.path == second.path
    assert cache.verify(first.path) is None
