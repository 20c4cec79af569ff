"""Feedback intake: filter, then store accepted samples and quarantine rejections atomically.

Filters sit between intake and storage (paper §4.6), and accepted items are redacted before
they are stored anywhere. ``submit`` writes the ``training_samples`` rows and the quarantine
rows in one transaction, so a crash leaves both or neither; the ``UNIQUE(domain, sha256)``
constraint enforces dedup even when two intakes race.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from twinloop.kernel.clock import now_iso
from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError
from twinloop.knowledge.domains import DomainRegistry
from twinloop.learning.filters import FilterPipeline, Rejection
from twinloop.learning.quarantine import Quarantine
from twinloop.learning.sample import Sample

SCHEMA = """
CREATE TABLE IF NOT EXISTS training_samples(
    id INTEGER PRIMARY KEY,
    domain TEXT NOT NULL,
    prompt TEXT NOT NULL,
    target TEXT NOT NULL,
    source TEXT NOT NULL,
    request_id TEXT,
    score REAL,
    sha256 TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'used')),
    UNIQUE (domain, sha256)
);
CREATE INDEX IF NOT EXISTS training_samples_status ON training_samples(domain, status, id)
"""

Status = Literal["new", "used"]


@dataclass(frozen=True)
class IntakeReport:
    """What one ``submit`` did.

    Attributes:
        accepted: The stored (redacted) samples, in input order.
        rejected: The quarantined rejections, in input order.
        ids: ``training_samples`` row ids of ``accepted``, same order.
    """

    accepted: tuple[Sample, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class FeedbackSamples:
    """Samples made from feedback rows, and how many rows had nothing to train on, by why."""

    samples: tuple[Sample, ...] = ()
    skipped: dict[str, int] = field(default_factory=dict)


def samples_from_feedback(rows: Iterable[Mapping[str, Any]]) -> FeedbackSamples:
    """Turn stored feedback rows (:meth:`FeedbackDesk.list`) into samples.

    A correction → ``(query, correction)``, source "correction"; a positive score (> 0) without
    one → ``(query, answer)``, source "feedback". Skipped, and counted: a non-positive score
    without correction ("negative", "neutral": nothing to imitate), a positive one whose
    request has no answer ("no_answer"), and a request routed to no domain ("no_domain"). The
    domain is the request's first, the one whose adapter answered (serving/pipeline.py).
    """
    samples: list[Sample] = []
    skipped: Counter[str] = Counter()
    for row in rows:
        domains = row.get("domains") or []
        if isinstance(domains, str):
            domains = json.loads(domains)
        score = row.get("score")
        correction = row.get("correction")
        correction = correction if isinstance(correction, str) and correction.strip() else None
        if not domains:
            skipped["no_domain"] += 1
            continue
        meta = {k: row[k] for k in ("id", "release_id", "adapter") if row.get(k) is not None}
        if "id" in meta:
            meta["feedback_id"] = meta.pop("id")
        common = dict(domain=domains[0], prompt=row.get("query") or "", request_id=row.get("request_id"),
                      score=score, meta=meta)
        if correction is not None:
            samples.append(Sample(target=correction, source="correction", **common))
        elif score is not None and score > 0:
            if not row.get("answer"):
                skipped["no_answer"] += 1
                continue
            samples.append(Sample(target=row["answer"], source="feedback", **common))
        else:
            skipped["negative" if score is not None and score < 0 else "neutral"] += 1
    return FeedbackSamples(tuple(samples), dict(skipped))


class FeedbackIntake:
    """Filters samples and stores the result.

    Args:
        db: The metadata database.
        registry: Known domains; its current names are passed to the schema stage per call.
        pipeline: The filter stages (default :class:`FilterPipeline` with default stages).
        quarantine: Where rejections go (default: a :class:`Quarantine` on ``db`` sharing the
            pipeline's PII redactor).
    """

    def __init__(self, db: Database, registry: DomainRegistry, pipeline: FilterPipeline | None = None,
                 quarantine: Quarantine | None = None) -> None:
        self.db = db
        self.registry = registry
        self.pipeline = pipeline or FilterPipeline()
        self.quarantine = quarantine or Quarantine(db, self.pipeline.redactor)
        db.ensure_schema("training_samples", SCHEMA)

    from_feedback = staticmethod(samples_from_feedback)

    def _seen(self, domain: str, sha: str) -> bool:
        row = self.db.conn.execute("SELECT 1 FROM training_samples WHERE domain=? AND sha256=?",
                                   (domain, sha)).fetchone()
        return row is not None

    def submit(self, samples: Iterable[Sample],
               within: Callable[[sqlite3.Connection, IntakeReport], None] | None = None) -> IntakeReport:
        """Filter ``samples``; store the accepted and quarantine the rejected in one transaction.

        The filters run before the write lock is taken (a classifier may be slow); a sample
        another writer stored meanwhile loses on the UNIQUE constraint and is quarantined as a
        duplicate in the same transaction. ``within(conn, report)`` runs inside that
        transaction, so a caller's own record of the outcome (the feedback's status and its
        audit event) commits with it, or not at all.
        """
        result = self.pipeline.run(samples, domains=self.registry.names(), seen=self._seen)
        now = now_iso()
        accepted: list[Sample] = []
        ids: list[int] = []
        rejected = list(result.rejected)
        with self.db.transaction() as conn:
            for s in result.accepted:
                sha = s.sha256()
                cur = conn.execute(
                    "INSERT INTO training_samples(domain, prompt, target, source, request_id, score, sha256, meta,"
                    " created_at) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(domain, sha256) DO NOTHING",
                    (s.domain, s.prompt, s.target, s.source, s.request_id, s.score, sha, json.dumps(s.meta), now))
                if cur.rowcount == 0:
                    rejected.append(Rejection(s, "dedup", "duplicate",
                                              f"sha256 {sha[:12]} was stored for {s.domain!r} meanwhile"))
                    continue
                accepted.append(s)
                ids.append(int(cur.lastrowid))
            self.quarantine.add(conn, rejected)
            report = IntakeReport(tuple(accepted), tuple(rejected), tuple(ids))
            if within is not None:
                within(conn, report)
        return report


def list_samples(db: Database, domain: str | None = None, status: Status | None = None,
                 limit: int = 1000) -> list[dict[str, Any]]:
    """Stored training samples, oldest first (what Shadow trains on).

    Raises:
        InvalidInputError: ``status`` is not "new" or "used".
    """
    if status is not None and status not in ("new", "used"):
        raise InvalidInputError(f"status = {status!r}: must be 'new' or 'used'")
    db.ensure_schema("training_samples", SCHEMA)
    sql, where, params = "SELECT * FROM training_samples", [], []
    if domain is not None:
        where.append("domain = ?")
        params.append(domain)
    if status is not None:
        where.append("status = ?")
        params.append(status)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id LIMIT ?"
    return [dict(r) | {"meta": json.loads(r["meta"])} for r in db.conn.execute(sql, (*params, limit))]


def mark_used(conn: sqlite3.Connection, ids: Sequence[int]) -> int:
    """Mark samples as trained on, inside the caller's transaction (with the release record).

    Returns the number of rows changed.
    """
    if not ids:
        return 0
    marks = ",".join("?" * len(ids))
    return conn.execute(f"UPDATE training_samples SET status='used' WHERE id IN ({marks})", tuple(ids)).rowcount
