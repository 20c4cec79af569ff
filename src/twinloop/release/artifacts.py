"""Content-addressed artifact folders (docs/DESIGN.md "State").

An artifact is a folder (an adapter in the standard PEFT format, with its EWC state and
training record) stored under ``<root>/<kind>/<digest>/``, where the digest is the SHA-256
of its manifest — the sorted list of (file name, file SHA-256). The same content always gets
the same address, so releases name artifacts by digest and never by a mutable path.

Writes are atomic (copy into a temporary folder, fsync, rename); every :meth:`get` checks
each file against the manifest, so a corrupt or edited artifact is refused, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from twinloop.kernel.atomic import fsync_dir, fsync_tree, sha256_file
from twinloop.kernel.errors import IntegrityError, InvalidInputError

MANIFEST = "manifest.json"
KINDS = ("adapter",)


@dataclass(frozen=True)
class Artifact:
    kind: str
    digest: str
    path: Path


def _files(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(folder).as_posix()] = sha256_file(p)
    return out


def _digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(files.items())).encode("utf-8")).hexdigest()


class ArtifactStore:
    """Folders stored by the SHA-256 of their content."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _check_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise InvalidInputError(f"unknown artifact kind {kind!r}; known: {', '.join(KINDS)}")

    def put_dir(self, src: Path, kind: str) -> Artifact:
        """Store a copy of ``src``; storing the same content again returns the same artifact."""
        self._check_kind(kind)
        src = Path(src)
        if not src.is_dir():
            raise InvalidInputError(f"artifact source is not a folder: {src}")
        files = _files(src)
        if not files:
            raise InvalidInputError(f"artifact source {src} holds no files")
        digest = _digest(files)
        final = self.root / kind / digest
        if final.exists():
            self.get(kind, digest)  # an existing copy must still verify
            return Artifact(kind, digest, final)
        tmp = self.root / kind / f".{digest[:16]}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copytree(src, tmp)
            (tmp / MANIFEST).write_text(json.dumps({"kind": kind, "files": files}, indent=2, sort_keys=True),
                                        encoding="utf-8")
            fsync_tree(tmp)
            if final.exists():  # another writer won the race with identical content
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.rename(tmp, final)
                fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Artifact(kind, digest, final)

    def get(self, kind: str, digest: str) -> Path:
        """The folder of an artifact, after checking every file's SHA-256.

        Raises:
            IntegrityError: Missing, edited, extra or corrupt files.
        """
        self._check_kind(kind)
        folder = self.root / kind / digest
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            expected: dict[str, str] = manifest["files"]
        except (OSError, ValueError, KeyError) as e:
            raise IntegrityError(f"artifact {kind}/{digest[:12]} is missing or has no readable manifest") from e
        if _digest(expected) != digest:
            raise IntegrityError(f"artifact {kind}/{digest[:12]}: manifest does not match its address")
        actual = _files(folder)
        if actual != expected:
            bad = sorted(set(actual.items()) ^ set(expected.items()))
            raise IntegrityError(f"artifact {kind}/{digest[:12]} fails its SHA-256 check ({bad[0][0]})")
        return folder

    def clean_temporaries(self) -> int:
        """Remove folders left by writes a crash interrupted; returns how many."""
        n = 0
        for kind in KINDS:
            for p in (self.root / kind).glob(".*.tmp-*"):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
        return n
