"""The audit log's secret key, kept outside the data directory (docs/DESIGN.md "State").

A SHA-256 chain proves nothing to someone who can rewrite the database: they recompute it.
Each event therefore also carries an HMAC-SHA256 chained over the MAC before it, under a key
that lives *outside* the data directory, so a copy, backup or theft of the data directory (or
write access to the SQLite file alone) cannot produce a log that verifies.

Where the key is: ``$TWINLOOP_AUDIT_KEY_FILE`` if set, else ``$XDG_CONFIG_HOME/twinloop/audit.key``
(``~/.config/twinloop/audit.key``). It is created on first use: 32 random bytes, hex, mode 0600,
in a folder of mode 0700. The database records only the key's fingerprint (itself an HMAC, so
it reveals nothing about the key) so a different key is reported as such rather than as every
event being edited.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from twinloop.kernel.atomic import fsync_dir
from twinloop.kernel.errors import ConfigError

KEY_FILE_ENV = "TWINLOOP_AUDIT_KEY_FILE"
KEY_BYTES = 32
"""HMAC-SHA256's block-size-safe key length; shorter keys are refused."""
GENESIS_MAC_LABEL = b"twinloop.audit.genesis.v1\n"
_MAC_LABEL = b"twinloop.audit.event.v1\n"
_FP_LABEL = b"twinloop.audit.fingerprint.v1"


def default_key_file() -> Path:
    """The key file path: ``$TWINLOOP_AUDIT_KEY_FILE``, else the per-user config folder."""
    explicit = os.environ.get(KEY_FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "twinloop" / "audit.key"


@dataclass(frozen=True)
class AuditKey:
    """A loaded key: its file (for messages and the default checkpoint folder) and its bytes."""

    path: Path
    secret: bytes

    @property
    def fingerprint(self) -> str:
        """16 hex digits naming the key without revealing it."""
        return hmac.new(self.secret, _FP_LABEL, hashlib.sha256).hexdigest()[:16]

    def mac(self, *parts: bytes) -> str:
        """HMAC-SHA256 (hex) over ``parts`` joined by newlines, under this key."""
        return hmac.new(self.secret, b"\n".join(parts), hashlib.sha256).hexdigest()

    def event_mac(self, prev_mac: str, canon: bytes) -> str:
        """An event's MAC: its canonical form chained with the MAC of the event before it."""
        return self.mac(_MAC_LABEL, prev_mac.encode("ascii"), canon)

    def genesis_mac(self, log_id: str) -> str:
        """The ``prev_mac`` of a log's first event, bound to the log's id so events cannot be
        spliced from another log kept under the same key."""
        return self.mac(GENESIS_MAC_LABEL, log_id.encode("utf-8"))


def load_key(path: str | Path | None = None) -> AuditKey:
    """Read the key file, creating it (0600, in a 0700 folder) if it does not exist.

    Args:
        path: The key file; default: :func:`default_key_file`.

    Raises:
        ConfigError: The file is writable by group or others (anyone who can replace the key
            can forge the log), unreadable, or does not hold at least 32 hex-encoded bytes.
    """
    path = Path(path) if path is not None else default_key_file()
    if not path.exists():
        _create(path)
    try:
        st = path.stat()
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"audit key file {path} is unreadable: {e}") from e
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"audit key file {path} has mode {stat.S_IMODE(st.st_mode):o}: it must not be "
                          "writable by group or others (chmod 600)")
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < KEY_BYTES:
        raise ConfigError(f"audit key file {path} must hold at least {KEY_BYTES} hex-encoded bytes "
                          f"(found {len(text)} characters)")
    return AuditKey(path, secret)


def _create(path: Path) -> None:
    """Write a new random key; if another process wins the race, keep theirs."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(KEY_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            # link() fails if the name exists, so two first users never overwrite each other's key.
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
