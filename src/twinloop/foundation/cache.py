"""A verified, de-quantised copy of a GGUF base model inside the data directory.

De-quantising SmolLM2's GGUF takes ~17 s on this machine (docs/DESIGN.md "Facts measured here");
loading float safetensors takes ~2 s. The first load writes the copy; later loads use it
only after every file matches the SHA-256 recorded in its manifest, and rebuild it otherwise:
a corrupt cache file is detected and rebuilt, never loaded (docs/DESIGN.md "State").

Layout: ``<cache>/<first 16 hex of the GGUF's SHA-256>/`` holding ``config.json``,
``model.safetensors``, the tokenizer files and ``manifest.json`` (written last).
``save_pretrained`` refuses GGUF-loaded models, so weights go through
``safetensors.torch.save_model``, which also keeps tied embeddings tied.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from twinloop.kernel.atomic import fsync_dir, fsync_tree, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class CacheEntry:
    """A verified cache folder for one GGUF file."""

    path: Path
    source_sha256: str


def cache_key(gguf_path: Path) -> str:
    """SHA-256 of the GGUF file: a new or changed model gets its own cache folder."""
    return sha256_file(gguf_path)


def verify(folder: Path) -> str | None:
    """Check a cache folder against its manifest.

    Returns:
        None when every listed file exists with its recorded SHA-256, else the reason.
    """
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return "manifest missing"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files: dict[str, str] = manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"manifest unreadable ({e})"
    if WEIGHTS not in files:
        return f"manifest lists no {WEIGHTS}"
    for name, expected in files.items():
        f = folder / name
        if not f.is_file():
            return f"{name} missing"
        actual = sha256_file(f)
        if actual != expected:
            return f"{name} SHA-256 {actual[:12]}… does not match manifest {expected[:12]}…"
    return None


def lookup(cache_root: Path, source_sha256: str) -> CacheEntry | None:
    """The verified cache entry for a GGUF, or None; a corrupt entry is removed."""
    folder = cache_root / source_sha256[:16]
    if not folder.exists():
        return None
    problem = verify(folder)
    if problem is None:
        return CacheEntry(folder, source_sha256)
    log.warning("model cache %s is corrupt (%s); rebuilding it from the GGUF", folder, problem)
    shutil.rmtree(folder, ignore_errors=True)
    return None


def store(cache_root: Path, source_sha256: str, model, tokenizer) -> CacheEntry:
    """Write a de-quantised model and its tokenizer as a new cache entry, atomically.

    The folder is built under a temporary name, fsynced, then renamed into place, so a crash
    leaves either no entry or a complete one.
    """
    import safetensors.torch

    final = cache_root / source_sha256[:16]
    tmp = cache_root / f".{source_sha256[:16]}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir(parents=True)
    try:
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        safetensors.torch.save_model(model, str(tmp / WEIGHTS))
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(
            json.dumps({"source_sha256": source_sha256, "files": files}, indent=2, sort_keys=True),
            encoding="utf-8",
        )
        fsync_tree(tmp)
        if final.exists():
            # Another process finished first; its verified copy is as good as ours.
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.rename(tmp, final)
            fsync_dir(cache_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CacheEntry(final, source_sha256)
