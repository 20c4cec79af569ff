"""Canary deployment (paper §5.2): who sees Shadow, and the persisted runs and per-request
observations that the decision reads.

A deterministic split by ``hash(user_id + salt)`` at a ratio (:func:`assign_arm`), and
:class:`CanaryStore`, which keeps runs and observations in SQLite so a canary survives a
restart and a SIGKILL leaves it consistent (docs/DESIGN.md "State": every write is one
transaction). The per-arm figures, the statistical tests and :func:`decide` live in
:mod:`twinloop.release.canary_stats` and are re-exported here. Routing requests and acting
on a decision belong to serving.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from twinloop.kernel.clock import now_iso
from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError, TwinLoopError
from twinloop.release.canary_stats import ArmStats, CanaryDecision, decide

__all__ = [
    "ARMS", "FINAL_STATUSES", "MODES", "STATUSES", "ArmStats", "CanaryDecision", "CanaryRun", "CanaryRunningError",
    "CanaryStore", "UnknownCanaryError", "assign_arm", "decide",
]

ARMS = ("active", "shadow")
MODES = ("split", "mirror")
"""``split``: canary users get Shadow's answer. ``mirror``: Shadow gets a copy of the traffic
and its answers are discarded, so it is judged on real queries without anyone seeing it."""
FINAL_STATUSES = ("promoted", "aborted", "stopped")
STATUSES = ("running", *FINAL_STATUSES)

_BUCKETS = 10_000
"""Hash buckets of the split: a ratio's resolution is 0.01 %."""


class CanaryRunningError(TwinLoopError):
    """A canary was started while another one is still running."""


class UnknownCanaryError(InvalidInputError):
    """A canary id that was never started here."""


# -- assignment --------------------------------------------------------------------------------


def assign_arm(user_id: str | None, salt: str, ratio: float) -> str:
    """The arm that answers a user: the same user always lands in the same arm (paper §5.2).

    ``sha256(user_id + salt)``, first 8 bytes as an integer, modulo 10,000 buckets; buckets
    below ``ratio`` × 10,000 go to Shadow. SHA-256 rather than Python's ``hash`` because that
    is salted per process, and the split must agree across workers and restarts.

    Anonymous traffic (``None`` or ``""``) always goes to Active: without a stable key one user
    could flip between Active's and Shadow's answers from one request to the next, and their
    feedback could not be attributed to either arm.

    Raises:
        InvalidInputError: ``ratio`` outside [0, 1].
    """
    if not 0.0 <= ratio <= 1.0:
        raise InvalidInputError(f"canary ratio {ratio!r} must be between 0 and 1")
    if not user_id:
        return "active"
    digest = hashlib.sha256((user_id + salt).encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % _BUCKETS
    return "shadow" if bucket < round(ratio * _BUCKETS) else "active"


# -- persistence -------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS canaries(
    id TEXT PRIMARY KEY,
    release_id TEXT NOT NULL,
    baseline_id TEXT NOT NULL,
    ratio REAL NOT NULL CHECK (ratio > 0 AND ratio <= 1),
    mode TEXT NOT NULL CHECK (mode IN ('split', 'mirror')),
    salt TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'promoted', 'aborted', 'stopped')),
    started_at TEXT NOT NULL,
    finished_at TEXT,
    actor TEXT,
    finished_by TEXT,
    decision TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS canaries_one_running ON canaries(status) WHERE status = 'running';
CREATE TABLE IF NOT EXISTS canary_observations(
    id INTEGER PRIMARY KEY,
    canary_id TEXT NOT NULL REFERENCES canaries(id),
    arm TEXT NOT NULL CHECK (arm IN ('active', 'shadow')),
    created_at TEXT NOT NULL,
    ok INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    toxic INTEGER NOT NULL,
    request_id TEXT
);
CREATE INDEX IF NOT EXISTS canary_observations_canary ON canary_observations(canary_id, arm)
"""


@dataclass(frozen=True)
class CanaryRun:
    """One canary: a candidate release tried against the Active one (its baseline)."""

    id: str
    release_id: str
    baseline_id: str
    ratio: float
    mode: str
    salt: str
    status: str
    """``running``, then ``promoted``, ``aborted`` or ``stopped`` (by an operator)."""
    started_at: str
    finished_at: str | None
    actor: str | None
    """Who started it."""
    decision: dict[str, Any] | None
    """The :class:`CanaryDecision` that finished it, as a dict."""
    finished_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> CanaryRun:
        return cls(id=row["id"], release_id=row["release_id"], baseline_id=row["baseline_id"],
                   ratio=row["ratio"], mode=row["mode"], salt=row["salt"], status=row["status"],
                   started_at=row["started_at"], finished_at=row["finished_at"], actor=row["actor"],
                   decision=json.loads(row["decision"]) if row["decision"] else None,
                   finished_by=row["finished_by"])


def check_split(ratio: object, mode: object) -> None:
    """A canary's share of users and mode, checked before anything is loaded or written.

    Raises:
        InvalidInputError: ``ratio`` outside (0, 1] or an unknown ``mode``.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
        raise InvalidInputError(f"canary ratio {ratio!r} must be above 0 and at most 1")
    if mode not in MODES:
        raise InvalidInputError(f"unknown canary mode {mode!r}; expected one of {', '.join(MODES)}")


class CanaryStore:
    """Canary runs and their per-request observations in SQLite.

    At most one canary runs at a time, enforced by a partial unique index rather than by
    checks alone, so two processes starting one at once cannot both succeed.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure_schema("canaries", SCHEMA)

    def start(self, release_id: str, baseline_id: str, *, ratio: float, mode: str, salt: str,
              actor: str | None, conn: sqlite3.Connection | None = None) -> CanaryRun:
        """Record a new running canary of ``release_id`` against ``baseline_id``.

        ``conn``: a connection inside the caller's transaction, so the canary row commits
        together with the release status and audit event (a crash leaves all or none).

        Raises:
            CanaryRunningError: Another canary is running.
            InvalidInputError: ``ratio`` outside (0, 1] or an unknown ``mode``.
        """
        check_split(ratio, mode)
        cid = f"can_{uuid.uuid4().hex[:16]}"

        def insert(c: sqlite3.Connection) -> None:
            running = c.execute("SELECT id, release_id FROM canaries WHERE status='running'").fetchone()
            if running is not None:
                raise CanaryRunningError(f"canary {running['id']!r} of release {running['release_id']!r} "
                                         "is still running; finish or stop it first")
            c.execute(
                "INSERT INTO canaries(id, release_id, baseline_id, ratio, mode, salt, status, started_at, actor)"
                " VALUES (?,?,?,?,?,?,'running',?,?)",
                (cid, release_id, baseline_id, float(ratio), mode, salt, now_iso(), actor))

        try:
            if conn is not None:
                insert(conn)
            else:
                with self.db.transaction() as own:
                    insert(own)
        except sqlite3.IntegrityError as e:  # the unique index: another process won the race
            raise CanaryRunningError(f"another canary is already running: {e}") from e
        return self.get(cid)

    def current(self) -> CanaryRun | None:
        """The running canary, if any."""
        row = self.db.conn.execute("SELECT * FROM canaries WHERE status='running'").fetchone()
        return CanaryRun._from_row(row) if row else None

    def get(self, canary_id: str) -> CanaryRun:
        """One canary by id.

        Raises:
            UnknownCanaryError: (an ``InvalidInputError``) no canary has this id.
        """
        row = self.db.conn.execute("SELECT * FROM canaries WHERE id=?", (canary_id,)).fetchone()
        if row is None:
            raise UnknownCanaryError(f"unknown canary {canary_id!r}")
        return CanaryRun._from_row(row)

    def list(self, limit: int = 20) -> list[CanaryRun]:
        """The latest canaries, newest first."""
        rows = self.db.conn.execute("SELECT * FROM canaries ORDER BY started_at DESC, rowid DESC LIMIT ?",
                                    (limit,)).fetchall()
        return [CanaryRun._from_row(r) for r in rows]

    def record(self, canary_id: str, arm: str, *, ok: bool, latency_ms: float, toxic: bool,
               request_id: str | None) -> None:
        """Record the outcome of one request served (or mirrored) during a canary.

        ``request_id`` links user feedback to the arm; in mirror mode pass it only with the
        Active observation, whose answer the user saw. An observation arriving after the
        canary finished (a request in flight during the decision) is dropped.

        Raises:
            UnknownCanaryError: No canary has this id.
            InvalidInputError: An unknown arm or a negative or non-finite latency.
        """
        if arm not in ARMS:
            raise InvalidInputError(f"unknown canary arm {arm!r}; expected one of {', '.join(ARMS)}")
        if not math.isfinite(latency_ms) or latency_ms < 0:
            raise InvalidInputError(f"latency_ms = {latency_ms!r} must be a finite number ≥ 0")
        with self.db.transaction() as conn:
            inserted = conn.execute(
                "INSERT INTO canary_observations(canary_id, arm, created_at, ok, latency_ms, toxic, request_id)"
                " SELECT ?,?,?,?,?,?,? WHERE EXISTS (SELECT 1 FROM canaries WHERE id=? AND status='running')",
                (canary_id, arm, now_iso(), int(ok), float(latency_ms), int(toxic), request_id, canary_id),
            ).rowcount
            if not inserted and conn.execute("SELECT 1 FROM canaries WHERE id=?", (canary_id,)).fetchone() is None:
                raise UnknownCanaryError(f"unknown canary {canary_id!r}")

    def stats(self, canary_id: str) -> tuple[ArmStats, ArmStats]:
        """Both arms' statistics, ``(active, shadow)``, with feedback joined by request id.

        Raises:
            UnknownCanaryError: No canary has this id.
        """
        run = self.get(canary_id)
        arms = {name: ArmStats() for name in ARMS}
        rows = self.db.conn.execute(
            "SELECT arm, ok, latency_ms, toxic FROM canary_observations WHERE canary_id=? ORDER BY id",
            (canary_id,)).fetchall()
        for row in rows:
            arm = arms[row["arm"]]
            arm.requests += 1
            arm.toxic += row["toxic"]
            if row["ok"]:
                arm.latencies_ms.append(row["latency_ms"])
            else:
                arm.errors += 1
        for arm_name, score in self._feedback(run):
            arms[arm_name].feedback.append(score)
        return arms["active"], arms["shadow"]

    def _feedback(self, run: CanaryRun) -> list[tuple[str, float]]:
        # The feedback table belongs to serving/requestlog.py and may not exist yet.
        conn = self.db.conn
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='feedback'").fetchone() is None:
            return []
        # One score per request (the latest), so repeated clicks on one answer count once. In
        # mirror mode users only ever saw Active's answers, so Shadow gets no feedback.
        only_active = " AND arm='active'" if run.mode == "mirror" else ""
        rows = conn.execute(
            "SELECT o.arm, f.score FROM (SELECT DISTINCT arm, request_id FROM canary_observations"
            f" WHERE canary_id=? AND request_id IS NOT NULL{only_active}) o"
            " JOIN feedback f ON f.id = (SELECT max(id) FROM feedback WHERE request_id = o.request_id)"
            " ORDER BY f.id",
            (run.id,)).fetchall()
        return [(r["arm"], float(r["score"])) for r in rows]

    def finish(self, canary_id: str, status: str, decision: CanaryDecision | None,
               actor: str | None = None, conn: sqlite3.Connection | None = None) -> CanaryRun:
        """End a running canary as ``promoted``, ``aborted`` or ``stopped``, in one transaction
        (the caller's, when ``conn`` is given: with the release's report and audit event).

        Raises:
            UnknownCanaryError: No canary has this id.
            InvalidInputError: ``status`` is not a final status, or the canary is not running.
        """
        if status not in FINAL_STATUSES:
            raise InvalidInputError(f"canary status {status!r} is not one of {', '.join(FINAL_STATUSES)}")
        payload = json.dumps(decision.to_dict(), default=str) if decision is not None else None

        def update(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT status FROM canaries WHERE id=?", (canary_id,)).fetchone()
            if row is None:
                raise UnknownCanaryError(f"unknown canary {canary_id!r}")
            if row["status"] != "running":
                raise InvalidInputError(f"canary {canary_id!r} is already {row['status']}, not running")
            c.execute("UPDATE canaries SET status=?, finished_at=?, finished_by=?, decision=? WHERE id=?",
                      (status, now_iso(), actor, payload, canary_id))

        if conn is not None:
            update(conn)
        else:
            with self.db.transaction() as own:
                update(own)
        return self.get(canary_id)
