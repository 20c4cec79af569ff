"""The quarantine: rejected samples kept for audit, never trained on (paper §4.6).

Paper §4.6: "Filtered samples are logged for audit but not used in training." Each row keeps
the stage and reason that rejected the sample and a redacted copy of its text — PII redaction
runs again here whatever stage rejected it, because the schema and dedup stages run on text PII
has not yet been taken out of, and PII must never reach storage, quarantine included.

A row marked ``review`` is a sample that may be right — a correction contradicting an indexed
source that may itself be outdated (learning/contradiction.py): it waits for a person, where the
other rows only wait for an auditor (docs/DESIGN.md "Learning").
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from twinloop.kernel.clock import now_iso
from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError
from twinloop.kernel.pii import PiiRedactor
from twinloop.learning.filters import Rejection

SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine(
    id INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    domain TEXT NOT NULL,
    stage TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL,
    request_id TEXT,
    prompt TEXT NOT NULL,
    target TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    review INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS quarantine_domain ON quarantine(domain, id)
"""

_MAX_STORED_CHARS = 20_000
# An oversize sample is quarantined for being oversize; keeping all of it would let one
# rejected paste bloat the database. The cut is marked.


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_STORED_CHARS else text[:_MAX_STORED_CHARS] + " […]"


def _str(value: Any) -> str:
    # Schema rejects wrong types, and those rejections land here too.
    return value if isinstance(value, str) else repr(value)


class Quarantine:
    """Writes and reads the ``quarantine`` table.

    Args:
        db: The metadata database.
        redactor: Redacts text before it is stored; default patterns (plus Presidio if
            installed). Pass the pipeline's so both agree.
    """

    def __init__(self, db: Database, redactor: PiiRedactor | None = None) -> None:
        self.db = db
        self.redactor = redactor or PiiRedactor()
        db.ensure_schema("quarantine", SCHEMA)
        _add_review_column(db)

    def add(self, conn: sqlite3.Connection, rejections: Iterable[Rejection]) -> list[int]:
        """Insert rejections inside the caller's transaction (so intake commits them atomically
        with the accepted samples). Returns the new row ids."""
        now = now_iso()
        ids = []
        for r in rejections:
            s = r.sample
            meta = s.meta if isinstance(s.meta, dict) else {}
            try:
                meta_json = json.dumps(meta)
            except (TypeError, ValueError):
                meta_json = "{}"
            row = (now, _str(s.domain), r.stage, r.reason, self.redactor.redact(r.detail).text, _str(s.source),
                   s.request_id if isinstance(s.request_id, str) else None,
                   _clip(self.redactor.redact(_str(s.prompt)).text), _clip(self.redactor.redact(_str(s.target)).text),
                   self.redactor.redact(meta_json).text, int(bool(getattr(r, "review", False))))
            cur = conn.execute(
                "INSERT INTO quarantine(created_at, domain, stage, reason, detail, source, request_id, prompt,"
                " target, meta, review) VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
            ids.append(int(cur.lastrowid))
        return ids

    def record(self, rejections: Iterable[Rejection]) -> list[int]:
        """Insert rejections in a transaction of their own."""
        with self.db.transaction() as conn:
            return self.add(conn, rejections)

    def list(self, domain: str | None = None, limit: int = 100, *, review: bool | None = None) -> list[dict[str, Any]]:
        """Newest first; ``domain`` narrows to one domain, ``review`` to rows marked (True) or
        not marked (False) for review.

        Raises:
            InvalidInputError: ``limit`` is not a positive integer.
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InvalidInputError(f"limit = {limit!r}: must be a positive integer")
        sql, where, params = "SELECT * FROM quarantine", [], []
        if domain is not None:
            where.append("domain = ?")
            params.append(domain)
        if review is not None:
            where.append("review = ?")
            params.append(int(review))
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        rows = self.db.conn.execute(sql, (*params, limit)).fetchall()
        return [dict(r) | {"meta": json.loads(r["meta"]), "review": bool(r["review"])} for r in rows]

    def for_review(self, domain: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Rows waiting for a person (:attr:`Rejection.review`), newest first."""
        return self.list(domain, limit, review=True)

    def count(self, domain: str | None = None) -> dict[str, int]:
        """Rows per ``stage:reason`` (the filter-effectiveness metric of paper §4.6)."""
        sql, params = "SELECT stage, reason, COUNT(*) AS n FROM quarantine", []
        if domain is not None:
            sql += " WHERE domain = ?"
            params.append(domain)
        sql += " GROUP BY stage, reason ORDER BY stage, reason"
        return {f"{r['stage']}:{r['reason']}": int(r["n"]) for r in self.db.conn.execute(sql, params)}


def _add_review_column(db: Database) -> None:
    # A table made before rows could be marked for review lacks the column; the default (0)
    # is right for every row it holds. Read first: listing must not take the write lock.
    def has_column(conn) -> bool:
        return any(r["name"] == "review" for r in conn.execute("PRAGMA table_info(quarantine)"))

    if has_column(db.conn):
        return
    with db.transaction() as conn:
        if not has_column(conn):  # another process may have added it meanwhile
            conn.execute("ALTER TABLE quarantine ADD COLUMN review INTEGER NOT NULL DEFAULT 0")


def list_quarantine(db: Database, domain: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Quarantined samples, newest first, for ``twinloop quarantine`` and the admin API.

    Args:
        db: The metadata database.
        domain: Only this domain's rows (not validated: a removed domain's rows stay listable).
        limit: At most this many rows.

    Returns:
        Dicts with id, created_at, domain, stage, reason, detail, source, request_id, prompt,
        target (both redacted), meta and review.
    """
    return Quarantine(db).list(domain, limit)
