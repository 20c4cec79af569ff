"""The audit log: an append-only, hash-chained, keyed event store (docs/DESIGN.md "State").

Every action that changes what users get — ingest, filter decisions, training, QA, canary,
swap, rollback, approvals, configuration changes — and every failed authentication is one
event with actor, reason and time. Three layers make tampering visible:

- **SHA-256 chain.** Each event stores the hash of the one before it (``prev_hash``, ``hash``)
  and ``event_head`` holds the newest: edits, gaps and reordering show up without any secret,
  and an exported log can be re-hashed by anyone.
- **HMAC chain.** Anyone who can write the file can recompute SHA-256, so each event also
  carries ``mac``: HMAC-SHA256 over its canonical form and the previous MAC, under a key kept
  outside the data directory (:mod:`twinloop.release.audit_key`). Without the key, an edited,
  replaced or added event cannot carry a valid MAC. The database records the key's fingerprint
  so a different key is reported as "unknown key", and appends under it are refused.
- **Signed checkpoints.** MACs cannot show that events were cut from the end or that the
  whole log was emptied, so the head is also written, signed, to a file outside the database
  (:mod:`twinloop.release.audit_checkpoint`) after each append.

SQLite triggers refuse UPDATE, DELETE and INSERT-over-an-existing-event (``INSERT OR REPLACE``
deletes the old row without firing DELETE triggers), so the log is append-only for every
client of the database; the chains catch what is done around them. Events carry ids, digests
and counts, never the text of questions, corrections or documents, so the log holds no
personal data to erase.

An event appended inside a caller's transaction is checkpointed once it is committed: by the
next append, the next :meth:`EventStore.verify`, or when the process exits.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import sqlite3
import threading
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from twinloop.kernel.clock import now_iso
from twinloop.kernel.db import Database
from twinloop.kernel.errors import IntegrityError, InvalidInputError
from twinloop.release.audit_checkpoint import Checkpoint, CheckpointFile
from twinloop.release.audit_key import AuditKey, load_key

log = logging.getLogger(__name__)

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
    hash TEXT NOT NULL,
    mac TEXT
);
CREATE INDEX IF NOT EXISTS events_action ON events(action);
CREATE TABLE IF NOT EXISTS event_head(
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_meta(
    id INTEGER PRIMARY KEY CHECK (id = 1),
    log_id TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    created_at TEXT NOT NULL,
    sealed_seq INTEGER NOT NULL DEFAULT 0,
    sealed_mac TEXT
)
"""
# Triggers hold ';' inside BEGIN … END, so they are created one statement at a time.
TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: events cannot be changed'); END",
    "CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: events cannot be deleted'); END",
    # INSERT OR REPLACE removes the old row without firing DELETE triggers; a BEFORE INSERT
    # trigger runs before the conflict is resolved, so it can refuse the replacement.
    "CREATE TRIGGER IF NOT EXISTS events_no_replace BEFORE INSERT ON events "
    "WHEN EXISTS (SELECT 1 FROM events WHERE seq = NEW.seq) "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: events cannot be replaced'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_meta_no_update BEFORE UPDATE ON audit_meta "
    "BEGIN SELECT RAISE(ABORT, 'the audit log metadata cannot be changed'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_meta_no_delete BEFORE DELETE ON audit_meta "
    "BEGIN SELECT RAISE(ABORT, 'the audit log metadata cannot be deleted'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_meta_no_replace BEFORE INSERT ON audit_meta "
    "WHEN EXISTS (SELECT 1 FROM audit_meta) "
    "BEGIN SELECT RAISE(ABORT, 'the audit log metadata cannot be replaced'); END",
)
GENESIS = "0" * 64
"""``prev_hash`` of the first event."""

ACTIONS = frozenset({
    "config.loaded", "domain.added", "auth.failed",
    "knowledge.ingested", "knowledge.removed",
    "feedback.accepted", "feedback.quarantined",
    "correction.accepted", "correction.approved", "correction.removed",
    "training.started", "training.finished", "training.failed",
    "release.created", "release.base", "release.approved", "release.pruned", "release.exported",
    "release.imported",
    "qa.passed", "qa.failed",
    "canary.started", "canary.promoted", "canary.aborted", "canary.stopped",
    "swap", "rollback", "rollback.automatic", "adapter.loaded", "adapter.unloaded",
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
    mac: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyReport:
    """What ``twinloop events --verify`` found.

    Attributes:
        ok: No problem was found (warnings do not count).
        events: Events in the log.
        head_seq: The sequence number ``event_head`` names.
        problems: One sentence per finding, naming the event or file.
        first_bad_seq: The earliest event a problem names.
        warnings: What could not be confirmed but is not evidence of tampering.
        key_fingerprint: The fingerprint of the key used to verify.
        log_key_fingerprint: The fingerprint the database records.
        unknown_key: The log was written under another key (or claims to be).
        missing_tail: ``[first, last]`` sequence numbers cut from the end, per the checkpoint.
        checkpoint: The trusted checkpoint verified against (its path, seq, count, time).
    """

    ok: bool
    events: int
    head_seq: int | None
    problems: list[str] = field(default_factory=list)
    first_bad_seq: int | None = None
    warnings: list[str] = field(default_factory=list)
    key_fingerprint: str | None = None
    log_key_fingerprint: str | None = None
    unknown_key: bool = False
    missing_tail: list[int] | None = None
    checkpoint: dict[str, Any] | None = None

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


def _row_canon(row: sqlite3.Row) -> bytes:
    return _canon(row["seq"], row["at"], row["action"], row["actor"], row["subject"], row["reason"], row["data"],
                  row["prev_hash"])


def _row(row: sqlite3.Row) -> Event:
    return Event(row["seq"], row["at"], row["action"], row["actor"], row["subject"], row["reason"],
                 json.loads(row["data"]), row["prev_hash"], row["hash"], row["mac"])


def _sync_at_exit(ref: weakref.ref) -> None:
    store = ref()
    if store is not None:
        try:
            store.checkpoint()
        except Exception as e:  # noqa: BLE001 — the interpreter is exiting; say why and go
            log.warning("audit checkpoint at exit failed: %s", e)


class EventStore:
    """Append, list, verify and export audit events.

    Args:
        db: The database holding the log.
        key: The audit key; default: :func:`~twinloop.release.audit_key.load_key` (created on
            first use outside the data directory).
    """

    def __init__(self, db: Database, key: AuditKey | None = None) -> None:
        self.db = db
        self.key = key or load_key()
        self.checkpoints = CheckpointFile(self.key, db.path)
        self._checkpointed = 0
        self._reader = threading.local()
        self._exit_hook = False
        db.ensure_schema("events", SCHEMA)
        self._migrate()
        for trigger in TRIGGERS:
            db.conn.execute(trigger)
        self._init_meta()

    # -- setup -------------------------------------------------------------------------------

    def _migrate(self) -> None:
        """Add ``mac`` to a log created before MACs (its events are sealed by :meth:`_init_meta`)."""
        cols = {r[1] for r in self.db.conn.execute("PRAGMA table_info(events)")}
        if "mac" in cols:
            return
        with self.db.transaction() as conn:
            if "mac" not in {r[1] for r in conn.execute("PRAGMA table_info(events)")}:
                conn.execute("ALTER TABLE events ADD COLUMN mac TEXT")

    def _init_meta(self) -> None:
        """Give a new log its id and key fingerprint; seal a log written before MACs existed.

        Sealing MACs the existing events as they are now (trust on first use): later edits to
        them break the seal. A log that has MACed events but no metadata is left alone, so
        :meth:`verify` reports it.
        """
        if self.db.conn.execute("SELECT 1 FROM audit_meta WHERE id=1").fetchone():
            return
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM audit_meta WHERE id=1").fetchone():
                return
            if conn.execute("SELECT 1 FROM events WHERE mac IS NOT NULL LIMIT 1").fetchone():
                return
            log_id = uuid.uuid4().hex
            mac, last = self.key.genesis_mac(log_id), 0
            for row in conn.execute("SELECT * FROM events ORDER BY seq"):
                mac, last = self.key.event_mac(mac, _row_canon(row)), row["seq"]
            conn.execute("INSERT INTO audit_meta(id, log_id, key_fingerprint, created_at, sealed_seq, sealed_mac)"
                         " VALUES (1, ?, ?, ?, ?, ?)",
                         (log_id, self.key.fingerprint, now_iso(), last, mac if last else None))

    # -- writing -----------------------------------------------------------------------------

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

        Raises:
            InvalidInputError: ``action`` is not in :data:`ACTIONS`.
            IntegrityError: The log was written under another key, or its metadata is gone:
                an event MACed under the wrong key could never be verified, so the write is
                refused rather than silently adding to a log nobody can check.
        """
        if action not in ACTIONS:
            raise InvalidInputError(f"unknown event action {action!r}")
        payload = json.dumps(data or {}, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
        self.checkpoint()  # what earlier callers' transactions committed
        if conn is None:
            with self.db.transaction() as own:
                event = self._append(own, action, actor or "unknown", reason, subject, payload)
            self.checkpoint()
            return event
        if not self._exit_hook:
            self._exit_hook = True
            atexit.register(_sync_at_exit, weakref.ref(self))
        return self._append(conn, action, actor or "unknown", reason, subject, payload)

    def _append(self, conn: sqlite3.Connection, action: str, actor: str, reason: str, subject: str | None,
                payload: str) -> Event:
        meta = self._meta_for_write(conn)
        head = conn.execute("SELECT seq, hash FROM event_head WHERE id=1").fetchone()
        seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
        prev_mac = self._mac_at(conn, meta, seq - 1)
        if prev_mac is None:
            raise IntegrityError(f"audit event {seq - 1} has no MAC to chain to: the log was tampered with "
                                 "(run `twinloop release events --verify`)")
        at = now_iso()
        digest = event_hash(seq, at, action, actor, subject, reason, payload, prev)
        mac = self.key.event_mac(prev_mac, _canon(seq, at, action, actor, subject, reason, payload, prev))
        conn.execute("INSERT INTO events(seq, at, action, actor, subject, reason, data, prev_hash, hash, mac)"
                     " VALUES (?,?,?,?,?,?,?,?,?,?)",
                     (seq, at, action, actor, subject, reason, payload, prev, digest, mac))
        conn.execute("INSERT OR REPLACE INTO event_head(id, seq, hash) VALUES (1, ?, ?)", (seq, digest))
        return Event(seq, at, action, actor, subject, reason, json.loads(payload), prev, digest, mac)

    def _meta_for_write(self, conn: sqlite3.Connection) -> sqlite3.Row:
        meta = conn.execute("SELECT * FROM audit_meta WHERE id=1").fetchone()
        if meta is None:
            if conn.execute("SELECT 1 FROM events LIMIT 1").fetchone():
                raise IntegrityError("the audit log's metadata (log id, key fingerprint) was removed while "
                                     "it holds events: refusing to append (run `twinloop release events --verify`)")
            conn.execute("INSERT INTO audit_meta(id, log_id, key_fingerprint, created_at) VALUES (1, ?, ?, ?)",
                         (uuid.uuid4().hex, self.key.fingerprint, now_iso()))
            meta = conn.execute("SELECT * FROM audit_meta WHERE id=1").fetchone()
        if meta["key_fingerprint"] != self.key.fingerprint:
            raise IntegrityError(f"the audit log was written under key {meta['key_fingerprint']}, but the key at "
                                 f"{self.key.path} is {self.key.fingerprint}: refusing to append (set "
                                 "TWINLOOP_AUDIT_KEY_FILE to the log's key)")
        return meta

    def _mac_at(self, conn: sqlite3.Connection, meta: sqlite3.Row | None, seq: int) -> str | None:
        """The MAC the log holds for event ``seq`` (the genesis MAC for 0; the seal for a
        pre-MAC event at the seal); ``None`` if there is none."""
        if meta is None:
            return None
        if seq == 0:
            return self.key.genesis_mac(meta["log_id"])
        row = conn.execute("SELECT mac FROM events WHERE seq=?", (seq,)).fetchone()
        if row is None:
            return None
        if row[0] is None and seq == meta["sealed_seq"]:
            return meta["sealed_mac"]
        return row[0]

    # -- checkpoints -------------------------------------------------------------------------

    def _committed(self) -> sqlite3.Connection:
        """A connection that sees only committed rows: this thread's own one, unless it is inside
        a caller's transaction; then a private reader (WAL readers see the last commit)."""
        conn = self.db.conn
        if not conn.in_transaction:
            return conn
        reader = getattr(self._reader, "conn", None)
        if reader is None:
            reader = sqlite3.connect(self.db.path, isolation_level=None, check_same_thread=False)
            reader.row_factory = sqlite3.Row
            self._reader.conn = reader
        return reader

    def checkpoint(self, *, force: bool = False) -> bool:
        """Write the committed head to the checkpoint file if it moved forward.

        Args:
            force: Check the file even if this store already checkpointed the head (it may
                have been removed since).

        Never raises on a checkpoint it cannot write (a read-only folder): the event is already
        committed, and :meth:`verify` reports a checkpoint that lags or is missing.

        Returns:
            Whether the file was written.
        """
        try:
            conn = self._committed()
            head = conn.execute("SELECT seq FROM events ORDER BY seq DESC LIMIT 1").fetchone()
            if head is None or (head[0] <= self._checkpointed and not force):
                return False
            meta = conn.execute("SELECT * FROM audit_meta WHERE id=1").fetchone()
            if meta is None or meta["key_fingerprint"] != self.key.fingerprint:
                return False
            seq = head[0]
            mac = self._mac_at(conn, meta, seq)
            if mac is None:
                return False
            cp = Checkpoint(log_id=meta["log_id"], seq=seq, mac=mac, count=seq, at=now_iso(),
                            db=self.checkpoints.db, key_fingerprint=self.key.fingerprint)
            written = self.checkpoints.advance(cp, lambda s: self._mac_at(conn, meta, s))
            self._checkpointed = max(self._checkpointed, seq)
            return written
        except (OSError, sqlite3.Error) as e:
            log.warning("audit checkpoint %s not written: %s", self.checkpoints.path, e)
            return False

    # -- reading -----------------------------------------------------------------------------

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
        """Check the hash chain, the MAC chain and the outside checkpoint; report every edited,
        removed, replaced, added or cut event, and a key the log does not know.

        Problems are described by sequence number; ``first_bad_seq`` is the earliest. A clean
        log moves its checkpoint forward, so events appended in transactions are covered.
        """
        from twinloop.release.audit_verify import verify_log

        report = verify_log(self)
        if report.ok:
            self.checkpoint(force=True)
        return report

    def export_jsonl(self, out: IO[str], since_seq: int = 0) -> int:
        """Write events (oldest first) as JSON lines, each with its hashes and MAC; returns how many."""
        n = 0
        for ev in self.iter_all():
            if ev.seq <= since_seq:
                continue
            out.write(json.dumps(ev.to_dict(), ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
        return n

    def count(self) -> int:
        return self.db.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
