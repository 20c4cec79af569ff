"""Release records and the Active/Shadow pointers (docs/DESIGN.md "Releasing").

A release is immutable: its id is derived from its content (parent, adapter digests, index
revision, router configuration, lineage), so the same candidate is never recorded twice and
a snapshot is the release itself. *Active* and *Shadow* are pointers, moved in one SQLite
transaction each, together with the audit event that records the move,
so the log and the pointers can never disagree after a crash.

Besides the immutable content a release has mutable *metadata*: its status (where it is in
the release flow), the reports of its gates (QA, canary), approvals, and the history of
pointer moves from which "the previous release" of a rollback is read (paper §5.4).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from twinloop.kernel.clock import now_iso
from twinloop.kernel.crashpoints import crash_point
from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError
from twinloop.release.artifacts import ArtifactStore
from twinloop.release.events import EventStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS releases(
    id TEXT PRIMARY KEY,
    parent TEXT REFERENCES releases(id),
    created_at TEXT NOT NULL,
    status TEXT NOT NULL,
    adapters TEXT NOT NULL,
    index_revision INTEGER NOT NULL,
    router_json TEXT NOT NULL,
    lineage TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS release_pointers(
    name TEXT PRIMARY KEY CHECK (name IN ('active', 'shadow')),
    release_id TEXT NOT NULL REFERENCES releases(id),
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pointer_moves(
    seq INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    release_id TEXT NOT NULL,
    previous TEXT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS release_reports(
    id INTEGER PRIMARY KEY,
    release_id TEXT NOT NULL REFERENCES releases(id),
    kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    passed INTEGER NOT NULL,
    report TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS release_reports_release ON release_reports(release_id, kind);
CREATE TABLE IF NOT EXISTS release_approvals(
    release_id TEXT NOT NULL REFERENCES releases(id),
    actor TEXT NOT NULL,
    at TEXT NOT NULL,
    note TEXT NOT NULL,
    PRIMARY KEY (release_id, actor)
)
"""
POINTERS = ("active", "shadow")
STATUSES = ("candidate", "qa_passed", "qa_failed", "canary", "canary_passed", "canary_aborted", "active",
            "superseded", "rolled_back", "base", "pruned")
"""Where a release is in the flow: candidate → qa_passed|qa_failed → canary → canary_passed|
canary_aborted → active → superseded (a newer one was swapped in) | rolled_back; ``pruned``: a
lineage record whose adapters retention removed (never served again)."""
REPORT_KINDS = ("qa", "canary")



@dataclass(frozen=True)
class Release:
    id: str
    parent: str | None
    created_at: str
    status: str
    adapters: dict[str, str]
    """Domain → adapter artifact digest."""
    index_revision: int
    router_json: str
    lineage: dict[str, Any] = field(default_factory=dict)
    """Training data hashes, hyper-parameters, seed and metrics that produced it."""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "parent": self.parent, "created_at": self.created_at, "status": self.status,
                "adapters": self.adapters, "index_revision": self.index_revision,
                "router_digest": hashlib.sha256(self.router_json.encode()).hexdigest(), "lineage": self.lineage}


def release_id(parent: str | None, adapters: dict[str, str], index_revision: int, router_json: str,
               lineage: dict[str, Any]) -> str:
    """Content address of a release: the same inputs always give the same id."""
    canon = json.dumps({"parent": parent, "adapters": adapters, "index_revision": index_revision,
                        "router": hashlib.sha256(router_json.encode()).hexdigest(), "lineage": lineage},
                       sort_keys=True, separators=(",", ":"), default=str)
    return "rel_" + hashlib.sha256(canon.encode()).hexdigest()[:16]


class ReleaseRegistry:
    """Releases in SQLite; their adapters in the artifact store; every move in the audit log."""

    def __init__(self, db: Database, artifacts: ArtifactStore, events: EventStore | None = None) -> None:
        self.db = db
        self.artifacts = artifacts
        self.events = events or EventStore(db)
        db.ensure_schema("releases", SCHEMA)

    # -- records -----------------------------------------------------------------------------

    def create_candidate(self, parent: str | None, adapters: dict[str, str], index_revision: int,
                         router_json: str, lineage: dict[str, Any], *, actor: str = "system:shadow",
                         status: str = "candidate") -> Release:
        """Record a candidate release; every adapter it names must exist and verify."""
        for digest in adapters.values():
            self.artifacts.get("adapter", digest)  # IntegrityError if missing or corrupt
        if parent is not None:
            self.get(parent)
        rid = release_id(parent, adapters, index_revision, router_json, lineage)
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO releases(id, parent, created_at, status, adapters, index_revision,"
                " router_json, lineage) VALUES (?,?,?,?,?,?,?,?)",
                (rid, parent, now_iso(), status, json.dumps(adapters, sort_keys=True), index_revision, router_json,
                 json.dumps(lineage, sort_keys=True, default=str)),
            )
            if cur.rowcount:
                self.events.append("release.base" if status == "base" else "release.created", actor=actor,
                                   subject=rid, reason="", conn=conn,
                                   data={"parent": parent, "adapters": adapters, "index_revision": index_revision,
                                         "job_id": lineage.get("job_id")})
        return self.get(rid)

    def ensure_base(self, router_json: str, index_revision: int, model: str) -> Release:
        """The root release (no adapters) that Active starts on when nothing was ever promoted.

        Made Active in the same transaction as it is recorded, so a fresh data directory has a
        committed Active release from the first start of a server.
        """
        current = self.pointer("active")
        if current is not None:
            return self.get(current)
        rel = self.create_candidate(None, {}, index_revision, router_json, {"kind": "base", "model": model},
                                    actor="system", status="base")
        self.set_pointer("active", rel.id, actor="system", reason="first start: the base model, no adapters")
        return self.get(rel.id)

    def get(self, rid: str) -> Release:
        row = self.db.conn.execute("SELECT * FROM releases WHERE id=?", (rid,)).fetchone()
        if row is None:
            raise InvalidInputError(f"unknown release {rid!r}")
        return Release(row["id"], row["parent"], row["created_at"], row["status"], json.loads(row["adapters"]),
                       row["index_revision"], row["router_json"], json.loads(row["lineage"]))

    def exists(self, rid: str) -> bool:
        return self.db.conn.execute("SELECT 1 FROM releases WHERE id=?", (rid,)).fetchone() is not None

    def list(self, limit: int = 50) -> list[Release]:
        rows = self.db.conn.execute("SELECT id FROM releases ORDER BY created_at DESC, rowid DESC LIMIT ?",
                                    (limit,)).fetchall()
        return [self.get(r[0]) for r in rows]

    def adapter_digests(self, prefix: str) -> dict[str, list[str]]:
        """Adapter artifact digests starting with ``prefix`` that some release names, each with
        the ids of those releases (oldest first): how an operator's digest is resolved, so only
        artifacts the registry knows can be loaded by digest (docs/DESIGN.md "State").

        Raises:
            InvalidInputError: ``prefix`` is not 1–64 lowercase hex digits.
        """
        if not isinstance(prefix, str) or not re.fullmatch(r"[0-9a-f]{1,64}", prefix):
            raise InvalidInputError(f"adapter digest {prefix!r} is not 1-64 lowercase hex digits")
        rows = self.db.conn.execute("SELECT id, adapters FROM releases WHERE adapters LIKE ? "
                                    "ORDER BY created_at, rowid", (f'%"{prefix}%',)).fetchall()
        found: dict[str, list[str]] = {}
        for row in rows:
            for digest in json.loads(row["adapters"]).values():
                if digest.startswith(prefix) and row["id"] not in found.get(digest, []):
                    found.setdefault(digest, []).append(row["id"])
        return found

    def set_status(self, rid: str, status: str, conn: sqlite3.Connection | None = None) -> None:
        if status not in STATUSES:
            raise InvalidInputError(f"unknown release status {status!r}; known: {', '.join(STATUSES)}")
        (conn or self.db.conn).execute("UPDATE releases SET status=? WHERE id=?", (status, rid))

    # -- lineage -----------------------------------------------------------------------------

    def ancestors(self, rid: str) -> list[Release]:
        """Parent, grandparent, … up to the root (nearest first)."""
        out, seen = [], {rid}
        parent = self.get(rid).parent
        while parent is not None and parent not in seen:
            seen.add(parent)
            rel = self.get(parent)
            out.append(rel)
            parent = rel.parent
        return out

    def children(self, rid: str) -> list[Release]:
        self.get(rid)
        rows = self.db.conn.execute("SELECT id FROM releases WHERE parent=? ORDER BY created_at", (rid,)).fetchall()
        return [self.get(r[0]) for r in rows]

    def training_data(self, rid: str) -> dict[str, list[str]]:
        """Per domain, the SHA-256 of every sample that trained this release's new adapters."""
        domains = self.get(rid).lineage.get("domains", {})
        return {d: list(v.get("samples", [])) for d, v in domains.items()}

    # -- reports and approvals ---------------------------------------------------------------

    def add_report(self, rid: str, kind: str, passed: bool, report: dict[str, Any], *,
                   status: str | None = None, event: str | None = None, actor: str = "system",
                   reason: str = "", conn: sqlite3.Connection | None = None) -> None:
        """Store a gate's report with the release (and move its status, log the event) at once,
        in the caller's transaction when ``conn`` is given."""
        if kind not in REPORT_KINDS:
            raise InvalidInputError(f"unknown report kind {kind!r}; known: {', '.join(REPORT_KINDS)}")
        self.get(rid)
        if conn is None:
            with self.db.transaction() as own:
                self._add_report(own, rid, kind, passed, report, status, event, actor, reason)
        else:
            self._add_report(conn, rid, kind, passed, report, status, event, actor, reason)

    def _add_report(self, conn: sqlite3.Connection, rid: str, kind: str, passed: bool, report: dict[str, Any],
                    status: str | None, event: str | None, actor: str, reason: str) -> None:
        conn.execute("INSERT INTO release_reports(release_id, kind, created_at, passed, report) VALUES (?,?,?,?,?)",
                     (rid, kind, now_iso(), int(passed), json.dumps(report, sort_keys=True, default=str)))
        if status is not None:
            self.set_status(rid, status, conn)
        crash_point(f"report.{kind}.in_transaction")
        if event is not None:
            self.events.append(event, actor=actor, subject=rid, reason=reason, conn=conn,
                               data={"kind": kind, "passed": passed})

    def reports(self, rid: str, kind: str | None = None) -> list[dict[str, Any]]:
        """Stored gate reports, newest first: ``kind``, ``created_at``, ``passed``, ``report``."""
        sql, args = "SELECT * FROM release_reports WHERE release_id=?", [rid]
        if kind:
            sql += " AND kind=?"
            args.append(kind)
        rows = self.db.conn.execute(sql + " ORDER BY id DESC", args).fetchall()
        return [{"kind": r["kind"], "created_at": r["created_at"], "passed": bool(r["passed"]),
                 "report": json.loads(r["report"])} for r in rows]

    def latest_report(self, rid: str, kind: str) -> dict[str, Any] | None:
        found = self.reports(rid, kind)
        return found[0] if found else None

    def approve(self, rid: str, actor: str, note: str = "") -> None:
        """Record a human approval (a domain's policy may require one before promotion);
        approving twice is one approval."""
        self.get(rid)
        with self.db.transaction() as conn:
            cur = conn.execute("INSERT OR IGNORE INTO release_approvals(release_id, actor, at, note) VALUES (?,?,?,?)",
                               (rid, actor, now_iso(), note))
            if cur.rowcount:
                self.events.append("release.approved", actor=actor, subject=rid, reason=note, conn=conn)

    def approvals(self, rid: str) -> list[dict[str, Any]]:
        rows = self.db.conn.execute("SELECT actor, at, note FROM release_approvals WHERE release_id=? ORDER BY at",
                                    (rid,)).fetchall()
        return [dict(r) for r in rows]

    # -- pointers ----------------------------------------------------------------------------

    def pointer(self, name: str) -> str | None:
        if name not in POINTERS:
            raise InvalidInputError(f"unknown pointer {name!r}; use active or shadow")
        row = self.db.conn.execute("SELECT release_id FROM release_pointers WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def set_pointer(self, name: str, rid: str, *, actor: str = "system", reason: str = "",
                    event: str | None = None, status: dict[str, str] | None = None,
                    data: dict[str, Any] | None = None) -> str | None:
        """Move a pointer in one transaction with its history row, status changes and audit
        event (a crash leaves all of them old or all new); returns the previous release id.

        Args:
            event: The audit action to record (e.g. ``swap``, ``rollback``); none for Shadow moves
                made by training (its ``release.created`` event says it).
            status: Release id → new status, written in the same transaction.
        """
        if name not in POINTERS:
            raise InvalidInputError(f"unknown pointer {name!r}; use active or shadow")
        self.get(rid)
        with self.db.transaction() as conn:
            row = conn.execute("SELECT release_id FROM release_pointers WHERE name=?", (name,)).fetchone()
            previous = row[0] if row else None
            now = now_iso()
            conn.execute("INSERT OR REPLACE INTO release_pointers(name, release_id, updated_at) VALUES (?,?,?)",
                         (name, rid, now))
            crash_point(f"pointer.{name}.in_transaction")
            conn.execute("INSERT INTO pointer_moves(name, release_id, previous, at, actor, reason) VALUES (?,?,?,?,?,?)",
                         (name, rid, previous, now, actor, reason))
            for target, st in (status or {}).items():
                self.set_status(target, st, conn)
            if event is not None:
                self.events.append(event, actor=actor, subject=rid, reason=reason, conn=conn,
                                   data={"pointer": name, "from": previous, "to": rid, **(data or {})})
        return previous

    def history(self, name: str = "active", limit: int = 50) -> list[dict[str, Any]]:
        """Pointer moves, newest first: ``release_id``, ``previous``, ``at``, ``actor``, ``reason``."""
        rows = self.db.conn.execute("SELECT * FROM pointer_moves WHERE name=? ORDER BY seq DESC LIMIT ?",
                                    (name, limit)).fetchall()
        return [dict(r) for r in rows]

    def was_active(self, rid: str) -> bool:
        """Whether ``rid`` was ever the Active release."""
        return self.db.conn.execute("SELECT 1 FROM pointer_moves WHERE name='active' AND release_id=? LIMIT 1",
                                    (rid,)).fetchone() is not None

    def previous_active(self) -> str | None:
        """The release to roll back to: the newest release that was Active before the current
        one and was not itself rolled back (rolling back twice must not return to the bad one)."""
        current = self.pointer("active")
        rows = self.db.conn.execute(
            "SELECT m.release_id FROM pointer_moves m JOIN releases r ON r.id = m.release_id "
            "WHERE m.name='active' AND m.release_id != ? AND r.status NOT IN ('rolled_back', 'pruned') "
            "ORDER BY m.seq DESC",
            (current or "",)).fetchall()
        return rows[0][0] if rows else None

    def protected(self) -> set[str]:
        """Releases retention never removes: Active, Shadow, their parents, and the rollback target."""
        keep: set[str] = set()
        for name in POINTERS:
            rid = self.pointer(name)
            if rid:
                keep.add(rid)
                parent = self.get(rid).parent
                if parent:
                    keep.add(parent)
        prev = self.previous_active()
        if prev:
            keep.add(prev)
        return keep
