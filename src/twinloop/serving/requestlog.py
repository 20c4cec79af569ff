"""The request log and user feedback, joined by request id (issue 4 point 5).

Every answered request is recorded with the release that answered it, so feedback on it can
later be traced to a release and used by Shadow (issue 5) together with the question and
the answer. User ids are stored only as salted SHA-256 digests. Question, answer and
correction text are PII-redacted before they are written (issue 5: nothing personal reaches
storage), and never appear in the process logs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from twinloop.kernel.clock import now_iso
from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError, TwinLoopError
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
CREATE INDEX IF NOT EXISTS requests_created ON requests(created_at);
CREATE TABLE IF NOT EXISTS feedback(
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES requests(request_id),
    created_at TEXT NOT NULL,
    score REAL NOT NULL,
    correction TEXT,
    actor TEXT,
    status TEXT NOT NULL DEFAULT 'new'
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback(request_id)
"""

MAX_CORRECTION_CHARS = 8000


class UnknownRequestError(TwinLoopError):
    """Feedback names a request id that was never logged."""


@dataclass(frozen=True)
class FeedbackRecord:
    id: int
    request_id: str
    score: float
    correction: str | None
    created_at: str


class RequestLog:
    """Append-mostly log of answered requests and the feedback on them."""

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

    def add_feedback(self, request_id: str, score: float, correction: str | None = None,
                     actor: str | None = None) -> FeedbackRecord:
        """Store feedback on a logged request.

        Raises:
            UnknownRequestError: ``request_id`` was never answered here.
            InvalidInputError: Score outside [-1, 1] or an over-long correction.
        """
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not -1.0 <= float(score) <= 1.0:
            raise InvalidInputError(f"score = {score!r}: must be a number from -1 (bad) to 1 (good)")
        if correction is not None and len(correction) > MAX_CORRECTION_CHARS:
            raise InvalidInputError(f"correction is {len(correction)} characters, over {MAX_CORRECTION_CHARS}")
        correction = self._redact(correction)
        now = now_iso()
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM requests WHERE request_id=?", (request_id,)).fetchone() is None:
                raise UnknownRequestError(f"unknown request_id {request_id!r}")
            fid = conn.execute(
                "INSERT INTO feedback(request_id, created_at, score, correction, actor) VALUES (?,?,?,?,?)",
                (request_id, now, float(score), correction, actor),
            ).lastrowid
        return FeedbackRecord(int(fid), request_id, float(score), correction, now)

    def feedback_joined(self, status: str | None = None, limit: int = 1000,
                        feedback_id: int | None = None) -> list[dict[str, Any]]:
        """Feedback rows with their request's question, answer, domains and release."""
        sql = ("SELECT f.id, f.request_id, f.created_at, f.score, f.correction, f.status, r.query, r.answer,"
               " r.domains, r.release_id, r.adapter FROM feedback f JOIN requests r USING (request_id)")
        conds, params = [], []
        if status is not None:
            conds.append("f.status = ?")
            params.append(status)
        if feedback_id is not None:
            conds.append("f.id = ?")
            params.append(feedback_id)
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        sql += " ORDER BY f.id LIMIT ?"
        rows = self.db.conn.execute(sql, (*params, limit)).fetchall()
        return [dict(r) | {"domains": json.loads(r["domains"])} for r in rows]

    def set_feedback_status(self, feedback_id: int, status: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE feedback SET status=? WHERE id=?", (status, feedback_id))
