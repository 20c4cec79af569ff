"""API keys with roles.

Three roles, each including the one below it: ``reader`` (answer, generate, chat, models,
info, metrics), ``operator`` (+ feedback, ingest) and ``admin`` (everything, including adapters
and, later, release actions). Keys come from ``ApiConfig.api_keys`` (plain, hashed with SHA-256
as soon as they are read; the clear keys are not kept) and ``ApiConfig.api_key_hashes``. A
client sends its key as ``Authorization: Bearer <key>`` (what the ``openai`` client sends) or
``X-API-Key: <key>``.

With no key configured the API is open (every caller is admin), which is only allowed on a
loopback address: :func:`check_bind` refuses anything else.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from twinloop.kernel.config import ApiConfig
from twinloop.kernel.errors import ConfigError

Role = Literal["reader", "operator", "admin"]
ROLE_RANK: dict[str, int] = {"reader": 0, "operator": 1, "admin": 2}
"""A role may do everything the roles ranked below it may do."""

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def hash_key(key: str) -> str:
    """SHA-256 hex digest of an API key: the only form in which keys are kept."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def check_bind(config: ApiConfig, host: str | None = None) -> None:
    """Refuse to serve a non-loopback address without API keys.

    Raises:
        ConfigError: ``host`` is not loopback and no key is configured.
    """
    host = config.host if host is None else host
    if not (config.api_keys or config.api_key_hashes) and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host!r} without API keys: set api.api_keys or api.api_key_hashes "
            f"(e.g. TWINLOOP_API__API_KEYS='{{\"<key>\": \"admin\"}}') or bind 127.0.0.1"
        )


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's hash (None when the API is open) and its role."""

    key_hash: str | None
    role: Role

    @property
    def key_id(self) -> str:
        """What logs and the request log may show of a key: its hash prefix, never the key."""
        return self.key_hash[:12] if self.key_hash else "open"

    def may(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


@dataclass(frozen=True)
class AuthFailure:
    """One refused request, for metrics and (later) the audit log."""

    reason: Literal["missing_key", "invalid_key", "forbidden"]
    route: str
    request_id: str
    key_id: str | None
    """Hash prefix of the key presented, if any (never the key itself)."""
    required: Role | None = None
    client: str | None = None
    """The client's address (for per-address throttling and aggregation; never stored raw)."""


class AuthError(Exception):
    """A request without a valid key (401) or without the role it needs (403)."""

    def __init__(self, failure: AuthFailure, message: str) -> None:
        super().__init__(message)
        self.failure = failure

    @property
    def status(self) -> int:
        return 403 if self.failure.reason == "forbidden" else 401


class KeyStore:
    """The configured keys, by SHA-256 digest.

    Args:
        config: The API settings.
        on_failure: Called once for every refused request (metrics, audit log): the one
            place to hook auditing into.
    """

    def __init__(self, config: ApiConfig, on_failure: Callable[[AuthFailure], None] | None = None) -> None:
        roles: dict[str, Role] = {}
        for digest, role in config.api_key_hashes.items():
            d = digest.strip().lower()
            if not _HEX64.match(d):
                raise ConfigError(f"api.api_key_hashes: {digest[:16]!r}... is not a SHA-256 hex digest (64 hex digits)")
            roles[d] = role
        for key, role in config.api_keys.items():
            if not key or len(key) < 8:
                # Short keys are guessable; the message must not echo the key itself.
                raise ConfigError(f"api.api_keys: a key for role {role!r} is shorter than 8 characters")
            roles[hash_key(key)] = role
        self._roles: Mapping[str, Role] = roles
        self.on_failure = on_failure

    @property
    def open(self) -> bool:
        """True when no key is configured (loopback only, see :func:`check_bind`)."""
        return not self._roles

    def authenticate(self, authorization: str | None, x_api_key: str | None, *, required: Role, route: str,
                     request_id: str, client: str | None = None) -> Principal:
        """The caller of a request that needs ``required``.

        Raises:
            AuthError: No key or an unknown one (401), or a key without the role (403).
        """
        if self.open:
            return Principal(None, "admin")
        key = _presented_key(authorization, x_api_key)
        if key is None:
            self._fail(AuthFailure("missing_key", route, request_id, None, required, client),
                       "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        digest = hash_key(key)
        # A dict lookup on the digest: timing can at most reveal digest prefixes, which does not
        # help to find a key (SHA-256 preimage resistance).
        role = self._roles.get(digest)
        if role is None:
            self._fail(AuthFailure("invalid_key", route, request_id, digest[:12], required, client), "invalid API key")
        principal = Principal(digest, role)
        if not principal.may(required):
            self._fail(AuthFailure("forbidden", route, request_id, principal.key_id, required, client),
                       f"this key's role {role!r} may not call {route}: it needs {required!r}")
        return principal

    def _fail(self, failure: AuthFailure, message: str):
        if self.on_failure is not None:
            self.on_failure(failure)
        raise AuthError(failure, message)


def _presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return None


AUDIT_WINDOW_S = 60.0
"""Refused requests of one client address are aggregated per this many seconds."""
MAX_AUDIT_WINDOWS = 10_000
"""Open windows kept; past it, the failures of further addresses share one window."""
OVERFLOW = "other"


@dataclass
class _Window:
    started: float
    first: AuthFailure
    count: int = 1
    reasons: Counter = field(default_factory=Counter)


class FailureAudit:
    """Aggregates refused requests so that a flood cannot grow the append-only audit log.

    The first refusal of a client address in a window of ``window_s`` seconds is written at
    once (with its route, reason and request id); the ones after it are only counted, and
    written as one summary event with the count when the window closes (at the address's
    next refusal after it, at the next sweep, or at :meth:`flush`). So an address costs at
    most two events per window however many requests it sends.

    Args:
        write: ``write(first, count)``: writes one event; ``count`` is 1 for a first
            refusal, else the number of further refusals in the window (``first`` then
            being the window's first one, for its address and time).
        clock: Monotonic seconds; injectable for tests.
    """

    def __init__(self, write: Callable[[AuthFailure, int, Counter | None], None], *,
                 window_s: float = AUDIT_WINDOW_S, max_windows: int = MAX_AUDIT_WINDOWS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._write = write
        self.window_s = window_s
        self.max_windows = max_windows
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._last_sweep = clock()
        self._lock = threading.Lock()

    def record(self, failure: AuthFailure) -> bool:
        """Count one refusal; returns True when it was written as an event of its own."""
        now = self._clock()
        due: list[_Window] = []
        opened = False
        with self._lock:
            if now - self._last_sweep >= 1.0:
                due += self._take_expired(now)
            address = failure.client or "unknown"
            if address not in self._windows and len(self._windows) >= self.max_windows:
                address = OVERFLOW
            w = self._windows.get(address)
            if w is not None and now - w.started >= self.window_s:
                due.append(self._windows.pop(address))
                w = None
            if w is None:
                self._windows[address] = _Window(now, failure)
                opened = True
            else:
                w.count += 1
                w.reasons[failure.reason] += 1
        for closed in due:
            self._summarise(closed)
        if opened:
            self._write(failure, 1, None)
        return opened

    def flush(self) -> None:
        """Write the counts of every open window (at shutdown)."""
        with self._lock:
            windows, self._windows = list(self._windows.values()), {}
        for w in windows:
            self._summarise(w)

    def _take_expired(self, now: float) -> list[_Window]:
        self._last_sweep = now
        expired = [a for a, w in self._windows.items() if now - w.started >= self.window_s]
        return [self._windows.pop(a) for a in expired]

    def _summarise(self, w: _Window) -> None:
        if w.count > 1:
            self._write(w.first, w.count - 1, w.reasons)
