"""Corrections: accepted answers to questions, served at once from memory (docs/DESIGN.md "Learning").

A correction is a versioned, citable record — question, answer, domain, optional source, and
its provenance (the feedback item it came from, who accepted and approved it, when). It is
stored twice, in one place each for what it is for:

- as a document of the domain's knowledge, added at a new index revision, so it is cited with
  a URI and SHA-256 like any passage and removed (or erased) like any document;
- as a row of ``corrections`` with its state (``pending`` until the domain's approvals are in,
  ``active``, ``removed``) and the release that was Active when it was accepted.

Serving looks corrections up by question (``serving/memory.py``), not through passage
retrieval: a correction answers the questions in its scope and no other, so the hybrid search
leaves correction documents out (:data:`CORRECTION_CODE`). A correction is served by the
release it was accepted under and that release's descendants: rolling back to an earlier
release takes it out of answers; promoting a child of that release keeps it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError, TwinLoopError
from twinloop.knowledge.document import MAX_DOCUMENT_CHARS

CORRECTION_CODE = "TwinLoop correction"
"""The ``code`` of a correction's document: how retrieval tells it from the domain's sources."""
MAX_QUESTION_CHARS = 2000
MAX_ANSWER_CHARS = 2000
STATES = ("pending", "active", "removed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS corrections (
    id INTEGER PRIMARY KEY,
    domain TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    subject TEXT,
    source TEXT,
    state TEXT NOT NULL,
    release_id TEXT,
    uri TEXT NOT NULL,
    revision INTEGER,
    feedback_id INTEGER,
    actor TEXT NOT NULL,
    created_at TEXT NOT NULL,
    approvals TEXT NOT NULL DEFAULT '[]',
    approvals_required INTEGER NOT NULL DEFAULT 0,
    removed_at TEXT,
    removed_by TEXT
);
CREATE INDEX IF NOT EXISTS corrections_domain ON corrections(domain, state);
"""


class CorrectionNotFoundError(TwinLoopError):
    """No correction with that id."""


@dataclass(frozen=True)
class Correction:
    """One correction and where it stands."""

    id: int
    domain: str
    question: str
    answer: str
    subject: str | None
    source: str | None
    state: str
    release_id: str | None
    """The release Active when it was accepted: it and its descendants serve it."""
    uri: str
    revision: int | None
    """The index revision its document was added at (None while pending)."""
    feedback_id: int | None
    actor: str
    created_at: str
    approvals: list[dict[str, str]]
    approvals_required: int
    removed_at: str | None = None
    removed_by: str | None = None

    @property
    def text(self) -> str:
        """The stored passage: what a citation's ``exact_quote`` is a substring of."""
        return document_text(self.id, self.question, self.answer)

    def provenance(self) -> dict[str, Any]:
        return {"correction_id": self.id, "feedback_id": self.feedback_id, "accepted_by": self.actor,
                "accepted_at": self.created_at, "approved_by": [a["actor"] for a in self.approvals],
                "release_id": self.release_id, "source": self.source}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"provenance": self.provenance()}


def document_text(cid: int, question: str, answer: str) -> str:
    """A correction as a passage: its number and question, then the answer on its own line (a
    sentence a quote takes whole). The number keeps two equal corrections two documents."""
    return f"Correction {cid} to the question: {question.strip()}\n{answer.strip()}"


def check_correction(domain: Any, question: Any, answer: Any, source: Any = None) -> tuple[str, str, str, str | None]:
    """The one validation of a correction's fields; returns them stripped.

    Raises:
        InvalidInputError: A field that is missing, not text, blank or too long (named).
    """
    out = []
    for name, value, limit in (("domain", domain, 64), ("question", question, MAX_QUESTION_CHARS),
                               ("answer", answer, MAX_ANSWER_CHARS)):
        if not isinstance(value, str) or not value.strip():
            raise InvalidInputError(f"{name} = {value!r}: must be non-empty text")
        if len(value) > limit:
            raise InvalidInputError(f"{name} is {len(value)} characters, over the limit of {limit}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800") JSON can carry and SQLite cannot store
            raise InvalidInputError(f"{name} is not valid Unicode text (a lone UTF-16 surrogate)") from None
        out.append(value.strip())
    if source is not None and (not isinstance(source, str) or len(source) > 500):
        raise InvalidInputError(f"source = {source!r}: must be text of at most 500 characters")
    if isinstance(source, str):
        try:
            source.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInputError("source is not valid Unicode text (a lone UTF-16 surrogate)") from None
    if len(document_text(0, out[1], out[2])) + 20 > MAX_DOCUMENT_CHARS:
        raise InvalidInputError("question and answer together are too long for one document")
    return out[0], out[1], out[2], (source.strip() or None) if isinstance(source, str) else None


def _note(name: str, value: Any) -> str:
    """An approval's note or a removal's reason: text, valid Unicode, at most 2000 characters."""
    if not isinstance(value, str) or len(value) > 2000:
        raise InvalidInputError(f"{name} = {str(value)[:40]!r}: must be text of at most 2000 characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{name} is not valid Unicode text (a lone UTF-16 surrogate)") from None
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class CorrectionStore:
    """Corrections of every domain, in the knowledge store's database.

    Args:
        db: The database (``corrections`` is created if missing).
        knowledge: The :class:`~twinloop.knowledge.store.KnowledgeStore` that holds their documents.
        domains: Domain policies (is the domain known? how many approvals does it need?).
        events: The audit log (``correction.accepted``, ``.approved``, ``.removed``).
    """

    def __init__(self, db: Database, knowledge, domains, events=None) -> None:
        self.db = db
        self.knowledge = knowledge
        self.domains = domains
        self.events = events
        db.ensure_schema("corrections", _SCHEMA)

    # -- writes ------------------------------------------------------------------------------

    def add(self, domain: Any, question: Any, answer: Any, *, actor: str, source: Any = None,
            subject: str | None = None, feedback_id: int | None = None,
            release_id: str | None = None) -> Correction:
        """Accept a correction: served at once, or once approved where the domain's policy asks.

        Raises:
            InvalidInputError: A bad field (named).
            UnknownDomainError: No such domain.
        """
        domain, question, answer, source = check_correction(domain, question, answer, source)
        spec = self.domains.get(domain)
        need = spec.approvals_required if spec.approval_required else 0
        now = _now()
        with self.db.transaction() as conn:
            cid = int(conn.execute(
                "INSERT INTO corrections(domain, question, answer, subject, source, state, release_id, uri, "
                "feedback_id, actor, created_at, approvals_required) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (domain, question, answer, subject, source, "pending", release_id, "", feedback_id, actor, now,
                 need)).lastrowid)
            conn.execute("UPDATE corrections SET uri=? WHERE id=?", (f"twinloop:correction/{cid}", cid))
            if self.events is not None:
                self.events.append("correction.accepted", actor=actor, subject=f"correction/{cid}", conn=conn,
                                   data={"domain": domain, "feedback_id": feedback_id, "release_id": release_id,
                                         "approvals_required": need})
        if need == 0:
            self._publish(cid)
        return self.get(cid)

    def approve(self, cid: int, *, actor: str, note: str = "") -> Correction:
        """Record ``actor``'s approval; the correction is served once the domain's count of
        distinct reviewers is in (the one who accepted it counts as none).

        Raises:
            CorrectionNotFoundError / InvalidInputError: Unknown id, no actor, or removed.
        """
        if not actor or not str(actor).strip():
            raise InvalidInputError(f"actor = {actor!r}: an approval must name its reviewer")
        note = _note("note", note)
        c = self.get(cid)
        if c.state == "removed":
            raise InvalidInputError(f"correction {cid} was removed; it cannot be approved")
        if actor == c.actor:
            raise InvalidInputError(f"correction {cid}: {actor} accepted it and cannot also approve it")
        if any(a["actor"] == actor for a in c.approvals):
            return c
        approvals = [*c.approvals, {"actor": actor, "at": _now(), "note": note}]
        with self.db.transaction() as conn:
            conn.execute("UPDATE corrections SET approvals=? WHERE id=?", (json.dumps(approvals), cid))
            if self.events is not None:
                self.events.append("correction.approved", actor=actor, subject=f"correction/{cid}", reason=note,
                                   conn=conn)
        if c.state == "pending" and len(approvals) >= c.approvals_required:
            self._publish(cid)
        return self.get(cid)

    def remove(self, cid: int, *, actor: str, reason: str = "", erase: bool = False) -> Correction:
        """Take a correction out of answers (its document removed at a new index revision;
        with ``erase`` its text wiped too). Removing twice changes nothing.

        Raises:
            CorrectionNotFoundError: Unknown id.
        """
        reason = _note("reason", reason)
        c = self.get(cid)
        if c.state == "removed":
            return c
        if c.revision is not None:
            self.knowledge.remove(c.domain, uris=[c.uri], erase=erase, note=f"correction {cid} removed")
        with self.db.transaction() as conn:
            conn.execute("UPDATE corrections SET state='removed', removed_at=?, removed_by=? WHERE id=?",
                         (_now(), actor, cid))
            if erase:
                conn.execute("UPDATE corrections SET question='[erased]', answer='[erased]', subject=NULL "
                             "WHERE id=?", (cid,))
            if self.events is not None:
                self.events.append("correction.removed", actor=actor, subject=f"correction/{cid}", reason=reason,
                                   conn=conn, data={"erased": erase})
        return self.get(cid)

    def _publish(self, cid: int) -> None:
        """Add the correction's document to its domain at a new revision and mark it active."""
        c = self.get(cid)
        doc = {"text": c.text, "source": "correction", "code": CORRECTION_CODE, "article": str(cid),
               "uri": c.uri, "edition_date": c.created_at[:10], "valid_from": c.created_at[:10],
               "title": f"Correction {cid}"}
        report = self.knowledge.ingest(c.domain, [doc], note=f"correction {cid}")
        revision = report.revision if report.revision is not None else self.knowledge.current_revision()
        with self.db.transaction() as conn:
            conn.execute("UPDATE corrections SET state='active', revision=? WHERE id=?", (revision, cid))

    # -- reads -------------------------------------------------------------------------------

    def get(self, cid: Any) -> Correction:
        try:
            key = int(cid)
        except (TypeError, ValueError):
            raise InvalidInputError(f"correction id = {cid!r}: must be an integer") from None
        if not 0 < key < 2**63:  # SQLite's integers: a larger id cannot exist (and cannot be bound)
            raise CorrectionNotFoundError(f"no correction with id {key}")
        row = self.db.conn.execute("SELECT * FROM corrections WHERE id=?", (key,)).fetchone()
        if row is None:
            raise CorrectionNotFoundError(f"no correction with id {key}")
        return _row(row)

    def list(self, domain: str | None = None, state: str | None = None, limit: int = 1000) -> list[Correction]:
        """Corrections, newest first.

        Raises:
            InvalidInputError: ``state`` is not one of :data:`STATES`.
        """
        if state is not None and state not in STATES:
            raise InvalidInputError(f"state = {state!r}: must be one of {', '.join(STATES)}")
        sql, args = "SELECT * FROM corrections WHERE 1=1", []
        if domain is not None:
            sql += " AND domain=?"
            args.append(domain)
        if state is not None:
            sql += " AND state=?"
            args.append(state)
        rows = self.db.conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, int(limit))).fetchall()
        return [_row(r) for r in rows]

    def servable(self, domains: list[str], revision: int | None) -> list[Correction]:
        """Active corrections of ``domains`` whose document is in the index at ``revision``
        (None: the newest)."""
        if not domains:
            return []
        marks = ",".join("?" * len(domains))
        rows = self.db.conn.execute(
            f"SELECT * FROM corrections WHERE state='active' AND domain IN ({marks}) "
            "AND (? IS NULL OR revision <= ?) ORDER BY id", (*domains, revision, revision)).fetchall()
        return [_row(r) for r in rows]


def _row(row) -> Correction:
    return Correction(
        id=row["id"], domain=row["domain"], question=row["question"], answer=row["answer"], subject=row["subject"],
        source=row["source"], state=row["state"], release_id=row["release_id"], uri=row["uri"],
        revision=row["revision"], feedback_id=row["feedback_id"], actor=row["actor"], created_at=row["created_at"],
        approvals=json.loads(row["approvals"] or "[]"), approvals_required=row["approvals_required"],
        removed_at=row["removed_at"], removed_by=row["removed_by"])
