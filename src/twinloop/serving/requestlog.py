"""The request log: every answered request with the release that answered it.

Feedback names a request by its id; the learning loop keeps a snapshot of the request with
the feedback (``learning/feedback.py``), so it can be traced to a release and trained on
without reading this table. User ids are stored only as salted SHA-256 digests. Question and
answer are PII-redacted before they are written (nothing personal reaches storage), and
never appear in the process logs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from twinloop.kernel.clock import now_iso
from twinloop.kernel.db import Database
from twinloop.kernel.pii import PiiRedactor

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests(
    request_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    kind TEXT NOT NULL,
    user_hash TEXT,
    session_id TEXT,
    release_id TEXT NOT NULL,
    domains TEXT NOT NULL,
    adapter TEXT,
    query TEXT NOT NULL,
    answer TEXT,
    verified INTEGER,
    status TEXT,
    citations TEXT,
    latency_ms REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS requests_created ON requests(created_at)
"""


class RequestLog:
    """Append-mostly log of answered requests."""

    def __init__(self, db: Database, salt: str = "twinloop") -> None:
        self.db = db
        self.salt = salt
        self.redactor = PiiRedactor()
        db.ensure_schema("requestlog", SCHEMA)

    def _redact(self, text: str | None) -> str | None:
        return None if text is None else self.redactor.redact(text).text

    def user_hash(self, user_id: str | None) -> str | None:
        if not user_id:
            return None
        return hashlib.sha256(f"{self.salt}:{user_id}".encode()).hexdigest()[:32]

    def record(self, *, request_id: str, kind: str, query: str, release_id: str, domains: list[str],
               user_id: str | None = None, session_id: str | None = None, adapter: str | None = None,
               answer: str | None = None, verified: bool | None = None, status: str | None = None,
               citations: list[dict[str, Any]] | None = None, latency_ms: float | None = None,
               error: str | None = None) -> None:
        now = now_iso()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO requests(request_id, created_at, kind, user_hash, session_id, release_id,"
                " domains, adapter, query, answer, verified, status, citations, latency_ms, error)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (request_id, now, kind, self.user_hash(user_id), session_id, release_id, json.dumps(domains),
                 adapter, self._redact(query), self._redact(answer), None if verified is None else int(verified), status,
                 json.dumps(citations or []), latency_ms, error),
            )

    def get(self, request_id: str) -> dict[str, Any] | None:
        row = self.db.conn.execute("SELECT * FROM requests WHERE request_id=?", (request_id,)).fetchone()
        return dict(row) if row else None
