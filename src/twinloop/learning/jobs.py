"""Shadow training jobs: one ``train_jobs`` row per run, written by the worker process.

The row is the only channel between whoever started a run (CLI, API) and the worker: the
starter polls it, the worker writes its status and progress. A worker killed with SIGKILL
cannot write "failed", so :meth:`TrainJobs.reap_stale` does it for any queued or running job
whose process is gone — the next run starts clean — with the ``training.failed`` audit event
the worker would have written (docs/DESIGN.md "State": every failed run is on the record).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Literal

from twinloop.kernel.clock import now_iso
from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError, TwinLoopError

SCHEMA = """
CREATE TABLE IF NOT EXISTS train_jobs(
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    domains TEXT NOT NULL DEFAULT '[]',
    params TEXT NOT NULL DEFAULT '{}',
    pid INTEGER,
    progress TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS train_jobs_status ON train_jobs(status, created_at)
"""

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
LIVE: tuple[Status, ...] = ("queued", "running")
"""Statuses of a job whose worker may still be working."""


class UnknownJobError(TwinLoopError):
    """A job id that the ``train_jobs`` table does not hold."""


class JobRunningError(TwinLoopError):
    """A training job is already queued or running (one Shadow run at a time)."""



def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a killed, unreaped child is dead)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    stat = Path(f"/proc/{pid}/stat")
    try:
        # Field 3, after the parenthesised command name (which may contain spaces).
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust kill(0)


class TrainJobs:
    """The ``train_jobs`` table.

    Args:
        db: The metadata database (shared by the starter and the worker process).
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure_schema("train_jobs", SCHEMA)

    def create(self, domains: list[str] | None, params: dict[str, Any]) -> str:
        """Insert a queued job; returns its id (``job_<12 hex>``)."""
        jid = f"job_{uuid.uuid4().hex[:12]}"
        now = now_iso()
        with self.db.transaction() as conn:
            conn.execute("INSERT INTO train_jobs(id, created_at, updated_at, domains, params) VALUES (?,?,?,?,?)",
                         (jid, now, now, json.dumps(domains or []), json.dumps(params)))
        return jid

    def _update(self, jid: str, sql: str, args: tuple, only: tuple[str, ...] = LIVE) -> bool:
        marks = ",".join("?" * len(only))
        with self.db.transaction() as conn:
            cur = conn.execute(f"UPDATE train_jobs SET {sql}, updated_at=? WHERE id=? AND status IN ({marks})",
                               (*args, now_iso(), jid, *only))
        return cur.rowcount == 1

    def set_pid(self, jid: str, pid: int) -> None:
        """Record the worker's pid while the job is queued (so a worker that dies early is reaped)."""
        self._update(jid, "pid=?", (pid,))

    def start(self, jid: str, pid: int) -> None:
        """Mark a queued job running in process ``pid``.

        Raises:
            UnknownJobError: No such job.
            InvalidInputError: The job is not queued (already run, reaped or cancelled).
        """
        if not self._update(jid, "status='running', pid=?", (pid,), only=("queued",)):
            raise InvalidInputError(f"job {jid!r} is {self.get(jid)['status']!r}, not 'queued'")

    def progress(self, jid: str, progress: dict[str, Any]) -> None:
        """Replace the job's progress document (only while it runs)."""
        self._update(jid, "progress=?", (json.dumps(progress),), only=("running",))

    def finish(self, jid: str, result: dict[str, Any]) -> None:
        """Mark the job succeeded with its result."""
        self._update(jid, "status='succeeded', result=?", (json.dumps(result),))

    def fail(self, jid: str, error: str, status: Literal["failed", "cancelled"] = "failed") -> None:
        """Mark a live job failed (or cancelled) with a one-line reason."""
        self._update(jid, "status=?, error=?", (status, error))

    def get(self, jid: str) -> dict[str, Any]:
        """The job row with its JSON fields decoded.

        Raises:
            UnknownJobError: No such job.
        """
        row = self.db.conn.execute("SELECT * FROM train_jobs WHERE id=?", (jid,)).fetchone()
        if row is None:
            raise UnknownJobError(f"unknown training job {jid!r}")
        return _decode(row)

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        """Jobs, newest first."""
        rows = self.db.conn.execute("SELECT * FROM train_jobs ORDER BY created_at DESC, rowid DESC LIMIT ?",
                                    (limit,))
        return [_decode(r) for r in rows]

    def live(self) -> list[dict[str, Any]]:
        """Queued or running jobs (call :meth:`reap_stale` first to drop dead ones)."""
        rows = self.db.conn.execute("SELECT * FROM train_jobs WHERE status IN ('queued','running') ORDER BY rowid")
        return [_decode(r) for r in rows]

    def reap_stale(self) -> list[str]:
        """Mark failed every queued or running job whose worker process is gone, each with its
        ``training.failed`` audit event in the same transaction; returns their ids.

        A queued job without a pid yet is left alone: its starter is between insert and spawn.
        Two processes reaping at once write one failure and one event: the update only
        matches a job that is still live.
        """
        from twinloop.release.events import EventStore

        reaped = []
        events: EventStore | None = None
        for job in self.live():
            if job["pid"] is None or pid_alive(job["pid"]):
                continue
            events = events or EventStore(self.db)
            reason = f"worker process {job['pid']} died ({job['status']}); reaped"
            with self.db.transaction() as conn:
                cur = conn.execute("UPDATE train_jobs SET status='failed', error=?, updated_at=? "
                                   "WHERE id=? AND status IN ('queued','running')",
                                   (reason, now_iso(), job["id"]))
                if cur.rowcount != 1:
                    continue
                events.append("training.failed", actor="system:reaper", subject=job["id"], reason=reason, conn=conn,
                              data={"pid": job["pid"], "status": job["status"], "domains": job["domains"]})
            reaped.append(job["id"])
        return reaped


def _decode(row: Any) -> dict[str, Any]:
    d = dict(row)
    for key in ("domains", "params", "progress", "result"):
        if d.get(key) is not None:
            d[key] = json.loads(d[key])
    return d


__all__ = ["JobRunningError", "TrainJobs", "UnknownJobError", "pid_alive"]
