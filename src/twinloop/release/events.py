"""The audit log: an append-only, hash-chained event store (docs/DESIGN.md "State").

Every action that changes what users get — ingest, filter decisions, training, QA, canary,
swap, rollback, approvals, configuration changes — and every failed authentication is one
event with actor, reason and time. Each event stores the SHA-256 of the one before it, so:

- an edited event no longer matches its own hash;
- a removed event breaks the chain (its successor's ``prev_hash`` names a hash that is gone,
  and the sequence numbers have a gap);
- a removed *last* event is caught by the head record (``event_head``: the newest sequence
  number and hash), written in the same transaction as the event itself.

SQLite triggers refuse UPDATE and DELETE on the table, so the log is append-only for every
client of the database; the chain catches what is done around them (an editor that drops
the triggers, a byte edit of the file). Events carry ids, digests and counts, never the text
of questions, corrections or documents, so the log holds no personal data to erase.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from twinloop.kernel.clock import now_iso
from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError

SCHEMA = """
CREATE TABLE IF NOT EXISTS events(
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT,
    reason TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_action ON events(action);
CREATE TABLE IF NOT EXISTS event_head(
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
)
"""
# Triggers hold ';' inside BEGIN … END, so they are created one statement at a time.
TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: events cannot be changed'); END",
    "CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: events cannot be deleted'); END",
)
GENESIS = "0" * 64
"""``prev_hash`` of the first event."""

ACTIONS = frozenset({
    "config.loaded", "domain.added", "auth.failed",
    "knowledge.ingested", "knowledge.removed",
    "feedback.accepted", "feedback.quarantined",
    "training.started", "training.finished", "training.failed",
    "release.created", "release.base", "release.approved", "release.pruned", "release.exported",
    "release.imported",
    "qa.passed", "qa.failed",
    "canary.started", "canary.promoted", "canary.aborted", "canary.stopped",
    "swap", "rollback", "rollback.automatic",
    "breaker.opened", "breaker.half_open", "breaker.closed", "fault.injected",
})
"""The closed set of actions; a typo in a caller fails loudly instead of writing a new kind."""


@dataclass(frozen=True)
class Event:
    seq: int
    at: str
    action: str
    actor: str
    subject: str | None
    reason: str
    data: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyReport:
    """What ``twinloop events --verify`` found."""

    ok: bool
    events: int
    head_seq: int | None
    problems: list[str] = field(default_factory=list)
    first_bad_seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _canon(seq: int, at: str, action: str, actor: str, subject: str | None, reason: str, data: str,
           prev_hash: str) -> bytes:
    return json.dumps([seq, at, action, actor, subject, reason, data, prev_hash], ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def event_hash(seq: int, at: str, action: str, actor: str, subject: str | None, reason: str, data: str,
               prev_hash: str) -> str:
    """SHA-256 over the event's fields (``data`` as its stored canonical JSON) and its predecessor's hash."""
    return hashlib.sha256(_canon(seq, at, action, actor, subject, reason, data, prev_hash)).hexdigest()


def _row(row: sqlite3.Row) -> Event:
    return Event(row["seq"], row["at"], row["action"], row["actor"], row["subject"], row["reason"],
                 json.loads(row["data"]), row["prev_hash"], row["hash"])


class EventStore:
    """Append, list, verify and export audit events."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure_schema("events", SCHEMA)
        for trigger in TRIGGERS:
            db.conn.execute(trigger)

    def append(self, action: str, *, actor: str | None, reason: str = "", subject: str | None = None,
               data: dict[str, Any] | None = None, conn: sqlite3.Connection | None = None) -> Event:
        """Append one event.

        Args:
            action: One of :data:`ACTIONS`.
            actor: Who did it (an API key id, ``cli:<user>``, ``system:<component>``).
            reason: Why, in words (an operator's note, a gate's failure, a trigger's value).
            subject: What it is about (a release id, a domain, a job id).
            data: Small JSON-able details: ids, digests, counts, figures — never user text.
            conn: A connection inside the caller's transaction, so the event commits (or
                not) with the change it records; default: a transaction of its own.
        """
        if action not in ACTIONS:
            raise InvalidInputError(f"unknown event action {action!r}")
        payload = json.dumps(data or {}, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
        if conn is None:
            with self.db.transaction() as own:
                return self._append(own, action, actor or "unknown", reason, subject, payload)
        return self._append(conn, action, actor or "unknown", reason, subject, payload)

    @staticmethod
    def _append(conn: sqlite3.Connection, action: str, actor: str, reason: str, subject: str | None,
                payload: str) -> Event:
        head = conn.execute("SELECT seq, hash FROM event_head WHERE id=1").fetchone()
        seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
        at = now_iso()
        digest = event_hash(seq, at, action, actor, subject, reason, payload, prev)
        conn.execute("INSERT INTO events(seq, at, action, actor, subject, reason, data, prev_hash, hash)"
                     " VALUES (?,?,?,?,?,?,?,?,?)", (seq, at, action, actor, subject, reason, payload, prev, digest))
        conn.execute("INSERT OR REPLACE INTO event_head(id, seq, hash) VALUES (1, ?, ?)", (seq, digest))
        return Event(seq, at, action, actor, subject, reason, json.loads(payload), prev, digest)

    def list(self, *, limit: int = 100, action: str | None = None, subject: str | None = None,
             since_seq: int = 0) -> list[Event]:
        """Events newest first, optionally of one action (or prefix ``canary.``) or subject."""
        sql, args = "SELECT * FROM events WHERE seq > ?", [since_seq]
        if action:
            if action.endswith("."):
                sql += " AND action LIKE ?"
                args.append(action + "%")
            else:
                sql += " AND action = ?"
                args.append(action)
        if subject:
            sql += " AND subject = ?"
            args.append(subject)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        return [_row(r) for r in self.db.conn.execute(sql, args).fetchall()]

    def iter_all(self) -> Iterator[Event]:
        """Every event, oldest first."""
        cur = self.db.conn.execute("SELECT * FROM events ORDER BY seq")
        for row in cur:
            yield _row(row)

    def verify(self) -> VerifyReport:
        """Recompute the chain; report every edited, removed or reordered event.

        Problems are described by sequence number; ``first_bad_seq`` is the earliest.
        """
        problems: list[str] = []
        bad: list[int] = []
        prev_hash, expected_seq, count = GENESIS, 1, 0
        cur = self.db.conn.execute("SELECT * FROM events ORDER BY seq")
        for row in cur:
            count += 1
            seq = row["seq"]
            if seq != expected_seq:
                problems.append(f"events {expected_seq}..{seq - 1} are missing (removed)")
                bad.append(expected_seq)
            if row["prev_hash"] != prev_hash:
                problems.append(f"event {seq} does not follow the event before it (chain broken)")
                bad.append(seq)
            recomputed = event_hash(seq, row["at"], row["action"], row["actor"], row["subject"], row["reason"],
                                    row["data"], row["prev_hash"])
            if recomputed != row["hash"]:
                problems.append(f"event {seq} ({row['action']}) was edited: its content does not match its hash")
                bad.append(seq)
            prev_hash, expected_seq = row["hash"], seq + 1
        head = self.db.conn.execute("SELECT seq, hash FROM event_head WHERE id=1").fetchone()
        head_seq = head[0] if head else None
        if head is None and count:
            problems.append("the head record is missing")
            bad.append(1)
        elif head is not None and (head[0] != expected_seq - 1 or head[1] != prev_hash):
            problems.append(f"the log ends at event {expected_seq - 1} but its head says {head[0]}: "
                            "events were removed from the end, or the head was edited")
            bad.append(min(head[0], expected_seq - 1) + 1)
        return VerifyReport(ok=not problems, events=count, head_seq=head_seq, problems=problems,
                            first_bad_seq=min(bad) if bad else None)

    def export_jsonl(self, out: IO[str], since_seq: int = 0) -> int:
        """Write events (oldest first) as JSON lines, each with its hashes; returns how many."""
        n = 0
        for ev in self.iter_all():
            if ev.seq <= since_seq:
                continue
            out.write(json.dumps(ev.to_dict(), ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
        return n

    def count(self) -> int:
        return self.db.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
