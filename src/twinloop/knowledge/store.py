"""Append-only, revisioned document storage per domain.

Rows are never edited to change what a view sees: every document records the revision that
added it (``added_rev``) and the one that removed it (``removed_rev``). A view pinned to
revision R sees exactly the documents with ``added_rev <= R`` and no removal at or before R,
however much is ingested after it; that is how Shadow ingests ahead of Active and a release
names "index revision R" (DESIGN.md "Index revision").

The one exception is erasure (right to be forgotten): ``remove(..., erase=True)`` also wipes
the text, its chunks, their FTS rows and vectors, so no view — even an old pinned one — can
return it again. The row and its hash stay, so the audit trail shows something was erased.

An ingest is one SQLite transaction (revision + documents + chunks + FTS rows + vectors), so
a crash leaves either all of it or none; the FAISS file is refreshed after the commit and is
rebuilt from the stored vectors if it is stale or corrupt (vectors.py).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from twinloop.kernel.clock import now_iso
from twinloop.kernel.config import RetrievalConfig
from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError, UnknownDomainError
from twinloop.knowledge.chunking import chunk_text
from twinloop.knowledge.document import Document, article_ref
from twinloop.knowledge.corrections import CORRECTION_CODE
from twinloop.knowledge.vectors import VectorIndex

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS kn_revisions(
    rev INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    domain TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('ingest', 'remove', 'erase')),
    note TEXT,
    added INTEGER NOT NULL DEFAULT 0,
    removed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS kn_documents(
    id INTEGER PRIMARY KEY,
    domain TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    text TEXT NOT NULL,
    meta TEXT NOT NULL,
    jurisdiction TEXT,
    code TEXT,
    article TEXT,
    part TEXT,
    clause TEXT,
    uri TEXT,
    edition_date TEXT,
    in_force_from TEXT,
    valid_to TEXT,
    added_rev INTEGER NOT NULL REFERENCES kn_revisions(rev),
    removed_rev INTEGER REFERENCES kn_revisions(rev),
    erased INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS kn_documents_dedup ON kn_documents(domain, dedup_key);
CREATE INDEX IF NOT EXISTS kn_documents_rev ON kn_documents(domain, added_rev, removed_rev);
CREATE INDEX IF NOT EXISTS kn_documents_uri ON kn_documents(domain, uri);
CREATE TABLE IF NOT EXISTS kn_chunks(
    id INTEGER PRIMARY KEY,
    doc_id INTEGER NOT NULL REFERENCES kn_documents(id),
    domain TEXT NOT NULL,
    seq INTEGER NOT NULL,
    text TEXT NOT NULL,
    vector BLOB
);
CREATE INDEX IF NOT EXISTS kn_chunks_doc ON kn_chunks(doc_id);
CREATE INDEX IF NOT EXISTS kn_chunks_domain ON kn_chunks(domain, id);
CREATE VIRTUAL TABLE IF NOT EXISTS kn_fts USING fts5(
    body, tokenize = 'porter unicode61 remove_diacritics 2'
)
"""


@dataclass(frozen=True)
class IngestReport:
    """What one ingest did."""

    domain: str
    revision: int | None
    """The new revision, or None when every document was a duplicate (nothing changed)."""
    added: int
    skipped_duplicates: int
    chunks: int
    seconds: float


@dataclass(frozen=True)
class RemoveReport:
    domain: str
    revision: int | None
    removed: int
    erased: bool


@dataclass
class StoredDocument:
    """A document row as stored, with its revision bounds."""

    id: int
    domain: str
    document: Document
    added_rev: int
    removed_rev: int | None
    erased: bool
    extra: dict = field(default_factory=dict)


def _dedup_key(doc: Document) -> str:
    # Same text under the same citation is a duplicate; the same text in another edition is
    # not (most articles of a law are unchanged between editions, and each edition must
    # still be complete when asked "as of" its dates).
    ident = [doc.code, doc.article, doc.part, doc.clause, doc.edition_date, doc.in_force_from, doc.valid_to]
    return doc.sha256 + "|" + "|".join("" if v is None else str(v) for v in ident)


def search_header(doc: Document) -> str:
    """Citation words searched with every chunk (so "GDPR Article 17" finds Art. 17)."""
    article = article_ref(doc.article, doc.jurisdiction).replace("Art.", "Article") if doc.article else ""
    bits = [doc.code or "", article, doc.title or ""]
    return " ".join(b for b in bits if b)


class KnowledgeStore:
    """Documents, chunks, lexical and dense indexes of every domain, with revisions.

    Args:
        db: The metadata database.
        index_dir: Folder for the FAISS files.
        embedder: Anything with ``encode(list[str]) -> (n, dim) float32`` and ``dimension``.
        config: Chunking and retrieval settings.
        domains: Names accepted by :meth:`ingest`; None accepts any.
    """

    def __init__(self, db: Database, index_dir: Path, embedder, config: RetrievalConfig,
                 domains: Iterable[str] | None = None) -> None:
        self.db = db
        self.embedder = embedder
        self.config = config
        self.index_dir = index_dir
        self.domains = set(domains) if domains is not None else None
        db.ensure_schema("knowledge", SCHEMA)
        self._vectors: dict[str, VectorIndex] = {}
        self._vectors_lock = threading.Lock()
        self._write_lock = threading.Lock()

    # -- revisions ---------------------------------------------------------------------------

    def current_revision(self) -> int:
        """The newest revision (0 for an empty store)."""
        row = self.db.conn.execute("SELECT coalesce(max(rev), 0) FROM kn_revisions").fetchone()
        return int(row[0])

    def revisions(self, limit: int = 50) -> list[dict]:
        rows = self.db.conn.execute(
            "SELECT * FROM kn_revisions ORDER BY rev DESC LIMIT ?", (limit,)
        ).fetchall()
        return [dict(r) for r in rows]

    def check_domain(self, domain: str) -> str:
        if self.domains is not None and domain not in self.domains:
            raise UnknownDomainError(f"unknown domain {domain!r}; known: {', '.join(sorted(self.domains))}")
        return domain

    def vectors(self, domain: str) -> VectorIndex:
        """The domain's FAISS index, loaded (or rebuilt) on first use and kept in sync."""
        with self._vectors_lock:
            vi = self._vectors.get(domain)
            if vi is None:
                self.index_dir.mkdir(parents=True, exist_ok=True)
                vi = VectorIndex(self.db, domain, self.index_dir, self.embedder.dimension)
                self._vectors[domain] = vi
        return vi

    # -- writes ------------------------------------------------------------------------------

    def ingest(self, domain: str, documents: Iterable[Document | dict], note: str | None = None) -> IngestReport:
        """Add documents to a domain as one new revision; duplicates are skipped.

        Every document is validated before anything is written, so a bad one rejects the
        whole batch with a message naming it, and nothing already stored is touched.
        """
        import time

        start = time.perf_counter()
        self.check_domain(domain)
        docs = [Document.parse(d, f"document {i}") for i, d in enumerate(documents)]
        # Dedup within the batch first, then against what the domain already holds.
        unique: dict[str, Document] = {}
        for d in docs:
            unique.setdefault(_dedup_key(d), d)
        with self._write_lock:
            existing = self._existing_keys(domain, list(unique))
            new = [(k, d) for k, d in unique.items() if k not in existing]
            skipped = len(docs) - len(new)
            if not new:
                return IngestReport(domain, None, 0, skipped, 0, time.perf_counter() - start)
            pieces: list[tuple[int, int, str, str]] = []  # (doc index, seq, chunk text, search text)
            for i, (_k, d) in enumerate(new):
                header = search_header(d)
                for seq, text in enumerate(chunk_text(d.text, self.config.chunk_words, self.config.chunk_overlap)):
                    pieces.append((i, seq, text, f"{header}\n{text}" if header else text))
            # Embedding is the slow part; it runs before the transaction so readers and other
            # writers are not blocked by it.
            vecs = self.embedder.encode([p[3] for p in pieces])  # (chunks, dim)
            vi = self.vectors(domain)  # opened before the commit, so it then only syncs
            rev = self._commit_ingest(domain, new, pieces, vecs, note)
        vi.sync()
        vi.save()
        return IngestReport(domain, rev, len(new), skipped, len(pieces), time.perf_counter() - start)

    def _existing_keys(self, domain: str, keys: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            batch = keys[i : i + 500]
            rows = self.db.conn.execute(
                f"SELECT dedup_key FROM kn_documents WHERE domain=? AND removed_rev IS NULL "
                f"AND dedup_key IN ({','.join('?' * len(batch))})",
                (domain, *batch),
            ).fetchall()
            found.update(r[0] for r in rows)
        return found

    def _commit_ingest(self, domain, new, pieces, vecs: np.ndarray, note) -> int:
        now = now_iso()
        with self.db.transaction() as conn:
            rev = conn.execute(
                "INSERT INTO kn_revisions(created_at, domain, action, note, added) VALUES (?,?,?,?,?)",
                (now, domain, "ingest", note, len(new)),
            ).lastrowid
            doc_ids = []
            for key, d in new:
                c = d.citation()
                doc_ids.append(conn.execute(
                    "INSERT INTO kn_documents(domain, sha256, dedup_key, text, meta, jurisdiction, code, article,"
                    " part, clause, uri, edition_date, in_force_from, valid_to, added_rev)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (domain, d.sha256, key, d.text, json.dumps(c, sort_keys=True), d.jurisdiction, d.code,
                     d.article, d.part, d.clause, d.uri, c["edition_date"],
                     d.in_force_from.isoformat() if d.in_force_from else None, c["valid_to"], rev),
                ).lastrowid)
            for (i, seq, text, body), vec in zip(pieces, vecs):
                cid = conn.execute(
                    "INSERT INTO kn_chunks(doc_id, domain, seq, text, vector) VALUES (?,?,?,?,?)",
                    (doc_ids[i], domain, seq, text, vec.astype(np.float32).tobytes()),
                ).lastrowid
                if new[i][1].code != CORRECTION_CODE:  # never searched, so BM25's statistics stay the sources'
                    conn.execute("INSERT INTO kn_fts(rowid, body) VALUES (?, ?)", (cid, body))
        return int(rev)

    def remove(self, domain: str, *, doc_ids: Sequence[int] = (), uris: Sequence[str] = (),
               sha256s: Sequence[str] = (), erase: bool = False, note: str | None = None) -> RemoveReport:
        """Remove documents as a new revision; with ``erase`` also wipe their text for good.

        Raises:
            InvalidInputError: No selector given.
        """
        self.check_domain(domain)
        if not (doc_ids or uris or sha256s):
            raise InvalidInputError("remove needs at least one document id, uri or sha256")
        with self._write_lock:
            conds, params = [], []
            for col, vals in (("id", doc_ids), ("uri", uris), ("sha256", sha256s)):
                if vals:
                    conds.append(f"{col} IN ({','.join('?' * len(vals))})")
                    params.extend(vals)
            where = f"domain=? AND erased=0 AND ({' OR '.join(conds)})"
            rows = self.db.conn.execute(
                f"SELECT id, removed_rev FROM kn_documents WHERE {where}", (domain, *params)
            ).fetchall()
            targets = [r["id"] for r in rows if r["removed_rev"] is None or erase]
            if not targets:
                return RemoveReport(domain, None, 0, erase)
            now = now_iso()
            marks = ",".join("?" * len(targets))
            with self.db.transaction() as conn:
                rev = conn.execute(
                    "INSERT INTO kn_revisions(created_at, domain, action, note, removed) VALUES (?,?,?,?,?)",
                    (now, domain, "erase" if erase else "remove", note, len(targets)),
                ).lastrowid
                conn.execute(f"UPDATE kn_documents SET removed_rev=? WHERE removed_rev IS NULL AND id IN ({marks})",
                             (rev, *targets))
                erased_chunks: list[int] = []
                if erase:
                    erased_chunks = [r[0] for r in conn.execute(
                        f"SELECT id FROM kn_chunks WHERE doc_id IN ({marks})", targets)]
                    cmarks = ",".join("?" * len(erased_chunks))
                    if erased_chunks:
                        conn.execute(f"DELETE FROM kn_fts WHERE rowid IN ({cmarks})", erased_chunks)
                        conn.execute(f"UPDATE kn_chunks SET text='', vector=NULL WHERE id IN ({cmarks})",
                                     erased_chunks)
                    conn.execute(f"UPDATE kn_documents SET text='', meta='{{}}', erased=1 WHERE id IN ({marks})",
                                 targets)
        if erase:
            vi = self.vectors(domain)
            vi.remove(erased_chunks)
            vi.save()
        return RemoveReport(domain, int(rev), len(targets), erase)

    # -- reads -------------------------------------------------------------------------------

    def get_document(self, doc_id: int) -> StoredDocument:
        row = self.db.conn.execute("SELECT * FROM kn_documents WHERE id=?", (doc_id,)).fetchone()
        if row is None:
            raise InvalidInputError(f"no document with id {doc_id}")
        meta = json.loads(row["meta"])
        doc = None if row["erased"] else Document.parse(
            {"text": row["text"], **{k: v for k, v in meta.items() if k != "sha256"}}, f"stored document {doc_id}")
        return StoredDocument(row["id"], row["domain"], doc, row["added_rev"], row["removed_rev"], bool(row["erased"]))

    def stats(self) -> dict[str, dict[str, int]]:
        """Per domain: visible documents and chunks now, and all rows ever stored."""
        out: dict[str, dict[str, int]] = {}
        for r in self.db.conn.execute(
            "SELECT domain, count(*) AS docs, sum(removed_rev IS NULL) AS visible FROM kn_documents GROUP BY domain"
        ):
            out[r["domain"]] = {"documents": int(r["visible"] or 0), "documents_ever": int(r["docs"])}
        for r in self.db.conn.execute(
            "SELECT c.domain, count(*) AS n FROM kn_chunks c JOIN kn_documents d ON d.id=c.doc_id "
            "WHERE d.removed_rev IS NULL GROUP BY c.domain"
        ):
            out.setdefault(r["domain"], {})["chunks"] = int(r["n"])
        return out
