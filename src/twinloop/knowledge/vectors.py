"""Dense vectors of one domain in a FAISS index, persisted as a verified cache file.

The embeddings themselves live in SQLite (``kn_chunks.vector``), written in the same
transaction as their chunks; the FAISS file is derived data. On load it is used only if its
SHA-256 matches the manifest and it holds the same chunks as the database; otherwise it is
rebuilt from the stored embeddings, never trusted (docs/DESIGN.md "State"). Chunks committed by
another process after the file was written are added on the next :meth:`sync`.

Exact inner-product search (``IndexFlatIP`` on L2-normalised vectors = cosine) is used
rather than the paper's IVF (App. A): at tens of thousands of chunks it answers in about a
millisecond with perfect recall, and needs no training step that would have to be redone
as the corpus changes. Revision and as-of filtering use FAISS's ``IDSelectorBatch``, so the
top-k is exact within the allowed chunks.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import faiss
import numpy as np

from twinloop.kernel.atomic import (
    atomic_write_bytes,
    atomic_write_json,
    sha256_bytes,
    sha256_file,
)
from twinloop.kernel.db import Database

log = logging.getLogger(__name__)


class VectorIndex:
    """FAISS index of one domain's chunk vectors, keyed by chunk id."""

    def __init__(self, db: Database, domain: str, folder: Path, dimension: int) -> None:
        self.db = db
        self.domain = domain
        self.dimension = dimension
        self.file = folder / f"{domain}.faiss"
        self.manifest = folder / f"{domain}.json"
        self._lock = threading.RLock()
        self._index = self._load_or_rebuild()
        self.max_chunk_id = self._max_id_in_index()
        self.sync()

    # -- persistence -------------------------------------------------------------------------

    def _fresh(self) -> faiss.IndexIDMap2:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dimension))

    def _problem_with_file(self) -> str | None:
        if not self.file.is_file() or not self.manifest.is_file():
            return "file missing"
        try:
            meta = json.loads(self.manifest.read_text(encoding="utf-8"))
        except ValueError:
            return "manifest unreadable"
        if sha256_file(self.file) != meta.get("sha256"):
            return "SHA-256 mismatch"
        if meta.get("dimension") != self.dimension:
            return f"dimension {meta.get('dimension')} != {self.dimension}"
        return None

    def _load_or_rebuild(self) -> faiss.IndexIDMap2:
        problem = self._problem_with_file()
        if problem is None:
            try:
                index = faiss.deserialize_index(np.fromfile(self.file, dtype=np.uint8))
                if self._ids_match_db(index):
                    return index
                problem = "chunks differ from the database"
            except RuntimeError as e:
                problem = f"unreadable ({e})"
        if problem != "file missing" or self._db_count() > 0:
            log.warning("vector index %s: %s; rebuilding from stored embeddings", self.file.name, problem)
        return self._rebuild()

    def _db_count(self) -> int:
        row = self.db.conn.execute(
            "SELECT count(*) FROM kn_chunks WHERE domain=? AND vector IS NOT NULL", (self.domain,)
        ).fetchone()
        return int(row[0])

    def _ids_match_db(self, index: faiss.IndexIDMap2) -> bool:
        # The file may lag the database (crash after commit, other process) — sync() fixes
        # that — but it must never hold a chunk the database no longer has (erased).
        ids = faiss.vector_to_array(index.id_map)
        if len(ids) == 0:
            return True
        top = int(ids.max())
        row = self.db.conn.execute(
            "SELECT count(*) FROM kn_chunks WHERE domain=? AND vector IS NOT NULL AND id<=?",
            (self.domain, top),
        ).fetchone()
        return int(row[0]) == len(ids)

    def _rebuild(self) -> faiss.IndexIDMap2:
        index = self._fresh()
        ids, vecs = self._rows("SELECT id, vector FROM kn_chunks WHERE domain=? AND vector IS NOT NULL ORDER BY id",
                               (self.domain,))
        if len(ids):
            index.add_with_ids(vecs, ids)
        self._write(index)
        return index

    def _rows(self, sql: str, params: tuple) -> tuple[np.ndarray, np.ndarray]:
        rows = self.db.conn.execute(sql, params).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.dimension)
        return ids, np.ascontiguousarray(vecs)

    def _write(self, index: faiss.IndexIDMap2) -> None:
        data = faiss.serialize_index(index).tobytes()
        atomic_write_bytes(self.file, data)
        atomic_write_json(self.manifest, {"sha256": sha256_bytes(data), "dimension": self.dimension,
                                          "ntotal": int(index.ntotal)})

    def _max_id_in_index(self) -> int:
        ids = faiss.vector_to_array(self._index.id_map)
        return int(ids.max()) if len(ids) else 0

    def save(self) -> None:
        """Persist the index file (atomically, with its checksum)."""
        with self._lock:
            self._write(self._index)

    # -- updates -----------------------------------------------------------------------------

    def sync(self) -> int:
        """Add chunks committed to the database since the index last saw it; returns how many."""
        with self._lock:
            ids, vecs = self._rows(
                "SELECT id, vector FROM kn_chunks WHERE domain=? AND vector IS NOT NULL AND id>? ORDER BY id",
                (self.domain, self.max_chunk_id),
            )
            if len(ids):
                self._index.add_with_ids(vecs, ids)
                self.max_chunk_id = int(ids.max())
            return len(ids)

    def remove(self, chunk_ids: list[int]) -> None:
        """Drop erased chunks from the index."""
        if not chunk_ids:
            return
        with self._lock:
            self._index.remove_ids(faiss.IDSelectorBatch(np.asarray(chunk_ids, dtype=np.int64)))

    # -- queries -----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return int(self._index.ntotal)

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray) -> list[tuple[int, float]]:
        """Top-k (chunk id, cosine) among ``allowed`` chunk ids."""
        if k <= 0 or len(allowed) == 0:
            return []
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        with self._lock:
            scores, ids = self._index.search(query.reshape(1, -1).astype(np.float32), k, params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def vectors(self, chunk_ids: list[int]) -> dict[int, np.ndarray]:
        """Stored vectors of some chunks (for scoring lexical-only hits)."""
        out = {}
        with self._lock:
            for cid in chunk_ids:
                try:
                    out[cid] = self._index.reconstruct(int(cid))
                except RuntimeError:
                    continue
        return out
