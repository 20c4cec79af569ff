"""Release records and the Active/Shadow pointers (DESIGN.md "Release"; issue 5 point 4).

A release is immutable: its id is derived from its content (parent, adapter digests, index
revision, router configuration, lineage), so the same candidate is never recorded twice and
a snapshot is the release itself. *Active* and *Shadow* are pointers, moved in one SQLite
transaction each. Issue 6 adds the gates (QA, canary), swap, rollback and retention on top.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from twinloop.db import Database
from twinloop.errors import InvalidInputError
from twinloop.release.artifacts import ArtifactStore

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
)
"""
POINTERS = ("active", "shadow")


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
    """Releases in SQLite; their adapters in the artifact store."""

    def __init__(self, db: Database, artifacts: ArtifactStore) -> None:
        self.db = db
        self.artifacts = artifacts
        db.ensure_schema("releases", SCHEMA)

    def create_candidate(self, parent: str | None, adapters: dict[str, str], index_revision: int,
                         router_json: str, lineage: dict[str, Any]) -> Release:
        """Record a candidate release; every adapter it names must exist and verify."""
        for domain, digest in adapters.items():
            self.artifacts.get("adapter", digest)  # IntegrityError if missing or corrupt
        if parent is not None:
            self.get(parent)
        rid = release_id(parent, adapters, index_revision, router_json, lineage)
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO releases(id, parent, created_at, status, adapters, index_revision,"
                " router_json, lineage) VALUES (?,?,?,?,?,?,?,?)",
                (rid, parent, now, "candidate", json.dumps(adapters, sort_keys=True), index_revision, router_json,
                 json.dumps(lineage, sort_keys=True, default=str)),
            )
        return self.get(rid)

    def get(self, rid: str) -> Release:
        row = self.db.conn.execute("SELECT * FROM releases WHERE id=?", (rid,)).fetchone()
        if row is None:
            raise InvalidInputError(f"unknown release {rid!r}")
        return Release(row["id"], row["parent"], row["created_at"], row["status"], json.loads(row["adapters"]),
                       row["index_revision"], row["router_json"], json.loads(row["lineage"]))

    def list(self, limit: int = 50) -> list[Release]:
        rows = self.db.conn.execute("SELECT id FROM releases ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        return [self.get(r[0]) for r in rows]

    def pointer(self, name: str) -> str | None:
        if name not in POINTERS:
            raise InvalidInputError(f"unknown pointer {name!r}; use active or shadow")
        row = self.db.conn.execute("SELECT release_id FROM release_pointers WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def set_pointer(self, name: str, rid: str) -> None:
        """Move a pointer in one transaction (a crash leaves the old or the new value)."""
        if name not in POINTERS:
            raise InvalidInputError(f"unknown pointer {name!r}; use active or shadow")
        self.get(rid)
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self.db.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO release_pointers(name, release_id, updated_at) VALUES (?,?,?)",
                         (name, rid, now))
