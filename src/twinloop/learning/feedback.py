"""Feedback: a user's rating or correction of one answered request, on its way to training.

Written once (docs/DESIGN.md "Follow one feedback item"): :meth:`FeedbackDesk.submit`
validates and PII-redacts once, then stores the row with status ``new`` together with a
snapshot of the request it rates (question, answer, domains, release, adapter — as the
request log stored them, already redacted). That commit is the acknowledgement: accepted
data from then on. Then :meth:`FeedbackDesk.process_pending` runs the learning filters and,
in one transaction, stores the training sample (or the quarantine row), the feedback's final
status (``accepted``, ``quarantined`` or ``not_trainable``) and the audit event.

A crash between the two steps leaves the row ``new``; ``process_pending`` runs again when a
server starts and before every training job, so accepted feedback is never silently left
untrained. Because the row carries its request snapshot, the learning loop never reads the
serving loop's tables.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twinloop.kernel.clock import now_iso
from twinloop.kernel.crashpoints import crash_point
from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError, UnknownRequestError
from twinloop.kernel.pii import PiiRedactor
from twinloop.learning.filters import FilterPipeline, feedback_stages
from twinloop.learning.intake import FeedbackIntake, IntakeReport, samples_from_feedback

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback(
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    score REAL NOT NULL,
    correction TEXT,
    actor TEXT,
    status TEXT NOT NULL DEFAULT 'new',
    request TEXT
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback(request_id);
CREATE INDEX IF NOT EXISTS feedback_status ON feedback(status, id)
"""

MAX_CORRECTION_CHARS = 8000
"""A correction longer than this is a paste, not a correction (same bound as a training target)."""

STATUSES = ("new", "accepted", "quarantined", "not_trainable")
"""``new``: stored, not yet filtered; then one of the three outcomes of the filters."""

REQUEST_FIELDS = ("query", "answer", "domains", "release_id", "adapter")
"""What the snapshot keeps of the rated request: all the learning loop needs from it."""


@dataclass(frozen=True)
class FeedbackRecord:
    """One stored feedback item, as the caller gets it back."""

    id: int
    request_id: str
    score: float
    correction: str | None
    created_at: str
    status: str = "new"


def check_feedback(score: Any, correction: Any) -> tuple[float, str | None]:
    """The one validation of a feedback item; returns ``(score, correction)``.

    Raises:
        InvalidInputError: A score that is not a finite number in [-1, 1], or a correction
            that is not text or is over :data:`MAX_CORRECTION_CHARS`.
    """
    if (isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score)
            or not -1.0 <= float(score) <= 1.0):
        raise InvalidInputError(f"score = {score!r}: must be a number from -1 (bad) to 1 (good)")
    if correction is not None and not isinstance(correction, str):
        raise InvalidInputError(f"correction = {correction!r}: must be text")
    if correction is not None and len(correction) > MAX_CORRECTION_CHARS:
        raise InvalidInputError(f"correction is {len(correction)} characters, over {MAX_CORRECTION_CHARS}")
    return float(score), correction


class FeedbackDesk:
    """Takes feedback in, and turns stored feedback into samples or quarantine rows.

    Args:
        db: The metadata database (the ``feedback`` table, samples and quarantine).
        intake: Filters and stores samples; by default one whose pipeline has no PII stage,
            because feedback text is redacted here, once, before it is stored.
        events: The audit log (``feedback.accepted`` / ``feedback.quarantined``); None: no events.
        redactor: Redacts the correction before it is stored.
    """

    def __init__(self, db: Database, domains, *, events=None, intake: FeedbackIntake | None = None,
                 redactor: PiiRedactor | None = None) -> None:
        self.db = db
        self.events = events
        self.redactor = redactor or PiiRedactor()
        if intake is None:
            intake = FeedbackIntake(db, domains, pipeline=FilterPipeline(feedback_stages()))
        self.intake = intake
        _ensure_schema(db)

    def submit(self, request_id: str, score: Any, correction: Any = None, actor: str | None = None, *,
               request: Mapping[str, Any] | None) -> FeedbackRecord:
        """Store feedback on ``request`` (the logged request ``request_id`` names), then filter it.

        Returns:
            The stored record with its final status.

        Raises:
            UnknownRequestError: ``request`` is None: the id was never answered here.
            InvalidInputError: See :func:`check_feedback`.
        """
        score, correction = check_feedback(score, correction)
        if request is None:
            raise UnknownRequestError(f"unknown request_id {request_id!r}")
        correction = None if correction is None else self.redactor.redact(correction).text
        snapshot = {k: request.get(k) for k in REQUEST_FIELDS}
        if isinstance(snapshot["domains"], str):
            snapshot["domains"] = json.loads(snapshot["domains"])
        now = now_iso()
        with self.db.transaction() as conn:
            fid = int(conn.execute(
                "INSERT INTO feedback(request_id, created_at, score, correction, actor, status, request)"
                " VALUES (?,?,?,?,?,'new',?)",
                (request_id, now, score, correction, actor, json.dumps(snapshot))).lastrowid)
        crash_point("feedback.after_store")
        try:
            self.process_pending(ids=[fid])
        except Exception:  # stored and acknowledged: it stays 'new' and is filtered on the next pickup
            log.exception("feedback %s stored; filtering it failed and is retried later", fid)
        return self.get(fid)

    def get(self, feedback_id: int) -> FeedbackRecord:
        """One stored feedback item.

        Raises:
            InvalidInputError: No feedback with that id.
        """
        row = self.db.conn.execute("SELECT * FROM feedback WHERE id=?", (feedback_id,)).fetchone()
        if row is None:
            raise InvalidInputError(f"unknown feedback id {feedback_id!r}")
        return FeedbackRecord(row["id"], row["request_id"], row["score"], row["correction"], row["created_at"],
                              row["status"])

    def list(self, status: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Stored feedback, oldest first, with the request snapshot's fields merged in.

        Raises:
            InvalidInputError: ``status`` is not one of :data:`STATUSES`.
        """
        if status is not None and status not in STATUSES:
            raise InvalidInputError(f"status = {status!r}: must be one of {', '.join(STATUSES)}")
        sql, params = "SELECT * FROM feedback", []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        rows = self.db.conn.execute(sql + " ORDER BY id LIMIT ?", (*params, limit)).fetchall()
        return [_joined(r) for r in rows]

    def process_pending(self, ids: Sequence[int] | None = None, limit: int = 1000) -> dict[str, int]:
        """Filter stored feedback still at ``new`` (all of it, or only ``ids``); returns counts
        by outcome. Safe to run at any time and from several processes: a row another process
        finished meanwhile is skipped (its status is no longer ``new`` inside the write)."""
        counts = {"accepted": 0, "quarantined": 0, "not_trainable": 0}
        while True:
            sql = "SELECT * FROM feedback WHERE status='new'"
            params: list[Any] = []
            if ids is not None:
                if not ids:
                    return counts
                sql += f" AND id IN ({','.join('?' * len(ids))})"
                params += list(ids)
            rows = [_joined(r) for r in self.db.conn.execute(sql + " ORDER BY id LIMIT ?", (*params, limit))]
            if not rows:
                return counts
            for outcome, n in self._process(rows).items():
                counts[outcome] += n
            if ids is not None or len(rows) < limit:
                return counts

    def _process(self, rows: list[dict[str, Any]]) -> dict[str, int]:
        made = samples_from_feedback(rows)
        by_id = {r["id"]: r for r in rows}
        outcome = {fid: "not_trainable" for fid in by_id}  # a bare rating is not a filter decision
        reasons: dict[int, list[str]] = {}

        def record(conn: sqlite3.Connection, report: IntakeReport) -> None:
            for s in report.accepted:
                outcome[s.meta["feedback_id"]] = "accepted"
            for r in report.rejected:
                fid = r.sample.meta["feedback_id"]
                outcome[fid] = "quarantined"
                reasons.setdefault(fid, []).append(f"{r.stage}: {r.reason}")
            done = []
            for fid, status in outcome.items():
                # Only rows still 'new' inside this write: another process may have finished one.
                cur = conn.execute("UPDATE feedback SET status=? WHERE id=? AND status='new'", (status, fid))
                if cur.rowcount == 1:
                    done.append(fid)
            for fid in done:
                status, row = outcome[fid], by_id[fid]
                if status != "not_trainable" and self.events is not None:
                    self.events.append(f"feedback.{status}", actor=row.get("actor"), subject=row["request_id"],
                                       reason="; ".join(reasons.get(fid, []))[:300],
                                       data={"feedback_id": fid, "score": row["score"]}, conn=conn)

        self.intake.submit(made.samples, within=record)
        counts = {"accepted": 0, "quarantined": 0, "not_trainable": 0}
        for status in outcome.values():
            counts[status] += 1
        return counts


def _joined(row: sqlite3.Row) -> dict[str, Any]:
    """A feedback row with its request snapshot's fields beside its own (``id`` is the feedback's)."""
    doc = dict(row)
    snapshot = json.loads(doc.pop("request") or "{}")
    return {**{k: snapshot.get(k) for k in REQUEST_FIELDS}, **doc,
            "domains": snapshot.get("domains") or []}


def _ensure_schema(db: Database) -> None:
    """Create the table; bring a table made by an earlier version up to date.

    Earlier versions kept no request snapshot on the row (the serving loop's request log was
    joined instead); the column is added and filled once from that log, so feedback stored
    before an upgrade can still be processed.
    """
    db.ensure_schema("feedback", SCHEMA)
    conn = db.conn
    columns = {r["name"] for r in conn.execute("PRAGMA table_info(feedback)")}
    if "request" in columns:
        return
    with db.transaction() as tx:
        tx.execute("ALTER TABLE feedback ADD COLUMN request TEXT")
        has_requests = tx.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='requests'").fetchone()
        if has_requests:
            for r in tx.execute("SELECT f.id, q.query, q.answer, q.domains, q.release_id, q.adapter FROM feedback f"
                                " JOIN requests q USING (request_id)").fetchall():
                snap = {k: r[k] for k in REQUEST_FIELDS} | {"domains": json.loads(r["domains"] or "[]")}
                tx.execute("UPDATE feedback SET request=? WHERE id=?", (json.dumps(snap), r["id"]))
