"""Signed checkpoints of the audit log's head, kept outside the database (docs/DESIGN.md "State").

MACs stop a forger without the key from editing or adding events, but not from *removing*
them: a log cut after event 3 is a valid log of 3 events. So after each append the head
(``seq``, its ``mac``, the event ``count``, the time) is written, with a MAC of its own, to a
file beside the key, never inside the data directory: ``$TWINLOOP_AUDIT_CHECKPOINT_DIR`` or
``<key folder>/checkpoints``, one file per database (named by a digest of its resolved path).
A log that ends before its checkpoint, or holds a different event at the checkpoint's ``seq``,
or is a different log altogether, has lost events.

The file only moves forward, and only over a log that still holds the checkpointed event: a
truncated or replaced log never overwrites the evidence against it. Writes are atomic
(temp + fsync + rename) under an ``flock`` so concurrent writers never step back.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from twinloop.kernel.atomic import atomic_write_json
from twinloop.release.audit_key import AuditKey

CHECKPOINT_DIR_ENV = "TWINLOOP_AUDIT_CHECKPOINT_DIR"
_LABEL = b"twinloop.audit.checkpoint.v1"


def checkpoint_dir(key: AuditKey) -> Path:
    """``$TWINLOOP_AUDIT_CHECKPOINT_DIR``, else ``checkpoints`` beside the key file."""
    explicit = os.environ.get(CHECKPOINT_DIR_ENV)
    return Path(explicit).expanduser() if explicit else key.path.parent / "checkpoints"


@dataclass(frozen=True)
class Checkpoint:
    """The log's head as signed at ``at``: event ``seq`` had MAC ``mac``; ``count`` events."""

    log_id: str
    seq: int
    mac: str
    count: int
    at: str
    db: str
    key_fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sign(key: AuditKey, cp: Checkpoint) -> str:
    body = json.dumps(cp.to_dict(), sort_keys=True, separators=(",", ":")).encode("utf-8")
    return key.mac(_LABEL, body)


class CheckpointFile:
    """The checkpoint of one database under one key."""

    def __init__(self, key: AuditKey, db_path: str | Path, folder: Path | None = None) -> None:
        self.key = key
        self.db = str(Path(db_path).resolve())
        name = hashlib.sha256(self.db.encode("utf-8")).hexdigest()[:16]
        self.path = (folder or checkpoint_dir(key)) / f"{name}.json"

    def read(self) -> tuple[Checkpoint | None, str | None]:
        """The checkpoint and, if it cannot be trusted, why.

        Returns:
            ``(None, None)`` when there is no checkpoint yet (a fresh install),
            ``(None, problem)`` when the file is unreadable or its signature is wrong,
            ``(checkpoint, None)`` otherwise.
        """
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as e:
            return None, f"the checkpoint {self.path} is unreadable: {e}"
        try:
            sig = doc.pop("sig")
            cp = Checkpoint(log_id=str(doc["log_id"]), seq=int(doc["seq"]), mac=str(doc["mac"]),
                            count=int(doc["count"]), at=str(doc["at"]), db=str(doc["db"]),
                            key_fingerprint=str(doc["key_fingerprint"]))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return None, f"the checkpoint {self.path} is malformed (field {e})"
        if cp.key_fingerprint != self.key.fingerprint:
            return None, (f"the checkpoint {self.path} was signed with key {cp.key_fingerprint}, "
                          f"not the current key {self.key.fingerprint} ({self.key.path})")
        if not isinstance(sig, str) or sig != _sign(self.key, cp):
            return None, f"the checkpoint {self.path} has a bad signature: it was edited"
        return cp, None

    def advance(self, cp: Checkpoint, mac_at: Callable[[int], str | None]) -> bool:
        """Replace the checkpoint with ``cp`` if it moves forward over the same log.

        Args:
            cp: The new head.
            mac_at: The MAC the log now holds for a sequence number (``None``: no such event),
                to check that the log still extends the old checkpoint.

        Returns:
            Whether the file was written.
        """
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            old, problem = self.read()
            if problem is not None:
                return False  # keep the evidence for verify
            if old is not None and (old.log_id != cp.log_id or old.seq >= cp.seq or mac_at(old.seq) != old.mac):
                return False
            atomic_write_json(self.path, {**cp.to_dict(), "sig": _sign(self.key, cp)})
            return True
        finally:
            os.close(fd)  # releases the flock


def retire(db_path: str | Path, key: AuditKey | None = None) -> bool:
    """Forget the checkpoint of a database its operator is deleting on purpose (the demo
    starts each run in a fresh folder at the same path). Without this, the new log at that
    path would be reported as the old one emptied, and its checkpoint could never advance —
    which is right when someone deletes the file behind the operator's back, and is why only
    the operator's own tooling calls this.

    Returns:
        Whether a checkpoint was removed.
    """
    from twinloop.release.audit_key import load_key

    file = CheckpointFile(key or load_key(), db_path)
    try:
        file.path.unlink()
    except FileNotFoundError:
        return False
    return True
