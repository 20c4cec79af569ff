"""The SQLite metadata database (DESIGN.md "State"): WAL mode, one connection per thread.

WAL lets the serving threads read while Shadow writes; ``BEGIN IMMEDIATE`` takes the write
lock up front so two writers queue on ``busy_timeout`` instead of failing half-way. Each
store module owns its tables and passes its ``CREATE ... IF NOT EXISTS`` script to
:meth:`Database.ensure_schema`, so the schema lives next to the code that uses it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from twinloop.kernel.errors import IntegrityError

BUSY_TIMEOUT_MS = 30_000
"""A writer waits this long for another's transaction (training may hold one for seconds)."""


class Database:
    """A SQLite file shared by threads (a connection each) and processes (WAL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._schemas: set[str] = set()
        self._lock = threading.Lock()
        # Fail early and clearly on a file that is not a database.
        try:
            self.conn.execute("PRAGMA journal_mode=WAL").fetchone()
        except sqlite3.DatabaseError as e:
            raise IntegrityError(f"{self.path} is not a readable SQLite database: {e}") from e

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (autocommit mode; use :meth:`transaction` to write)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys=ON")
            # NORMAL is durable in WAL mode except for the last commits on power loss, never
            # corrupting; FULL makes every commit survive power loss too, at a small cost.
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: committed on success, rolled back on any exception."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def ensure_schema(self, name: str, script: str) -> None:
        """Run a module's idempotent schema script once per process."""
        with self._lock:
            if name in self._schemas:
                return
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in (s.strip() for s in script.split(";")):
                    if stmt:
                        conn.execute(stmt)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self._schemas.add(name)

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
