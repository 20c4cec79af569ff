"""Circuit breaker in front of Active: CLOSED → OPEN → HALF_OPEN (paper §5.5).

While OPEN the service refuses (or falls back) instead of piling more requests onto a failing
release, which gives time for a rollback (paper §5.4). The rules, with the defaults of
:class:`~twinloop.kernel.config.BreakerConfig` (paper, App. A):

* CLOSED → OPEN when the sliding window of the last ``min_requests`` outcomes is full and
  failures / window ≥ ``failure_threshold``. The paper writes "> 0.5" in §5.5, but App. A calls
  0.50 the failure *threshold*, and a threshold is met when reached: exactly 5 of 10 opens.
* OPEN → HALF_OPEN on the first :meth:`CircuitBreaker.allow` after ``recovery_timeout_s``.
* HALF_OPEN admits at most ``half_open_successes`` probes at once; that many consecutive
  successes close it (with an empty window), and any failure opens it again with a fresh
  cooldown.

The breaker only counts; what "failure" means (an exception, a timeout, a 5xx) is the
caller's choice. It is called from many request threads, so all state sits behind one lock,
and ``on_change`` runs after the lock is released: it writes an audit event and moves
metrics, and must not be able to stall or deadlock the request path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from twinloop.kernel.clock import now_iso
from twinloop.kernel.config import BreakerConfig

log = logging.getLogger(__name__)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


OnChange = Callable[[BreakerState, BreakerState, dict[str, Any]], None]
"""``on_change(old, new, info)``; ``info`` is :meth:`CircuitBreaker.snapshot` plus ``reason``."""

_Transition = tuple[BreakerState, BreakerState, dict[str, Any]]


class CircuitBreaker:
    """A thread-safe three-state circuit breaker.

    Args:
        cfg: Thresholds (paper, App. A).
        clock: Monotonic seconds; injected by tests to move time without sleeping.
        on_change: Called as ``on_change(old, new, info)`` after every transition, outside
            the lock. An exception from it is logged and swallowed: the transition has
            already happened, and a failing audit write must not fail the request.
    """

    def __init__(self, cfg: BreakerConfig, *, clock: Callable[[], float] = time.monotonic,
                 on_change: OnChange | None = None) -> None:
        self.cfg = cfg
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        # True = failure; maxlen makes it the sliding window of the latest outcomes.
        self._window: deque[bool] = deque(maxlen=cfg.min_requests)
        self._opened_at: float | None = None  # clock() when last opened
        self._opened_at_wall: str | None = None  # the same moment for humans (snapshot, audit)
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._last_probe_at = 0.0

    @property
    def state(self) -> BreakerState:
        """The current state (OPEN turns HALF_OPEN only inside :meth:`allow`)."""
        with self._lock:
            return self._state

    def allow(self) -> bool:
        """Whether to admit one request; every admitted request must report its outcome.

        Returns:
            CLOSED: always True. OPEN: False until ``recovery_timeout_s`` has passed, then the
            breaker turns HALF_OPEN and this request is its first probe. HALF_OPEN: True for
            at most ``half_open_successes`` probes in flight at once.
        """
        changes: list[_Transition] = []
        with self._lock:
            now = self._clock()
            if self._state is BreakerState.CLOSED:
                admitted = True
            elif self._state is BreakerState.OPEN:
                admitted = self._cooldown_left(now) <= 0
                if admitted:
                    changes.append(self._move(BreakerState.HALF_OPEN,
                                              f"cooldown of {self.cfg.recovery_timeout_s:g} s passed"))
                    self._take_probe(now)
            else:
                # A probe whose caller died never reports back; after a whole cooldown without
                # any outcome, treat the probes as lost so HALF_OPEN cannot wedge shut forever.
                if (self._probes_in_flight >= self.cfg.half_open_successes
                        and now - self._last_probe_at >= self.cfg.recovery_timeout_s):
                    self._probes_in_flight = 0
                admitted = self._probes_in_flight < self.cfg.half_open_successes
                if admitted:
                    self._take_probe(now)
        self._notify(changes)
        return admitted

    def record_success(self) -> None:
        """Report that an admitted request succeeded."""
        changes: list[_Transition] = []
        with self._lock:
            if self._state is BreakerState.CLOSED:
                # A success can be the outcome that fills the window (5 failures then 5
                # successes), so the share is judged after every outcome.
                self._window.append(False)
                changes += self._judge_window()
            elif self._state is BreakerState.HALF_OPEN:
                self._probes_in_flight = max(0, self._probes_in_flight - 1)
                self._probe_successes += 1
                if self._probe_successes >= self.cfg.half_open_successes:
                    changes.append(self._close(f"{self._probe_successes} consecutive successes while half-open"))
            # OPEN: a straggler admitted before the breaker opened; it says nothing new.
        self._notify(changes)

    def record_failure(self) -> None:
        """Report that an admitted request failed."""
        changes: list[_Transition] = []
        with self._lock:
            if self._state is BreakerState.CLOSED:
                self._window.append(True)
                changes += self._judge_window()
            elif self._state is BreakerState.HALF_OPEN:
                changes.append(self._open("a probe failed while half-open"))
            # OPEN: already open; a straggler's failure must not extend the cooldown.
        self._notify(changes)

    def retry_after(self) -> float:
        """Seconds until an OPEN breaker admits a probe (0 when not OPEN); for Retry-After."""
        with self._lock:
            if self._state is not BreakerState.OPEN:
                return 0.0
            return max(0.0, self._cooldown_left(self._clock()))

    def snapshot(self) -> dict[str, Any]:
        """The breaker's state for metrics, ``/health`` and audit events."""
        with self._lock:
            return self._snapshot()

    def reset(self) -> None:
        """Back to CLOSED with an empty window (after a rollback the old outcomes are moot)."""
        changes: list[_Transition] = []
        with self._lock:
            if self._state is BreakerState.CLOSED:
                self._window.clear()
            else:
                changes.append(self._close("reset"))
        self._notify(changes)

    # -- internals; the caller holds the lock ------------------------------------------------

    def _cooldown_left(self, now: float) -> float:
        assert self._opened_at is not None, "OPEN without an opening time"
        return self.cfg.recovery_timeout_s - (now - self._opened_at)

    def _judge_window(self) -> list[_Transition]:
        failures, n = sum(self._window), len(self._window)
        # ≥, not §5.5's ">": the breaker opens *at* its threshold (50 % of 10 requests by default).
        if n == self.cfg.min_requests and failures / n >= self.cfg.failure_threshold:
            return [self._open(f"{failures} of the last {n} requests failed "
                               f"(threshold {self.cfg.failure_threshold:.0%})")]
        return []

    def _take_probe(self, now: float) -> None:
        self._probes_in_flight += 1
        self._last_probe_at = now

    def _open(self, reason: str) -> _Transition:
        self._opened_at = self._clock()
        self._opened_at_wall = now_iso()
        self._probes_in_flight = 0
        self._probe_successes = 0
        return self._move(BreakerState.OPEN, reason)

    def _close(self, reason: str) -> _Transition:
        self._window.clear()
        self._opened_at = None
        self._opened_at_wall = None
        self._probes_in_flight = 0
        self._probe_successes = 0
        return self._move(BreakerState.CLOSED, reason)

    def _move(self, new: BreakerState, reason: str) -> _Transition:
        old, self._state = self._state, new
        return old, new, self._snapshot() | {"reason": reason}

    def _snapshot(self) -> dict[str, Any]:
        failures = sum(self._window)
        n = len(self._window)
        return {
            "state": str(self._state),
            "window": n,
            "window_size": self.cfg.min_requests,
            "failures": failures,
            "error_rate": failures / n if n else 0.0,
            "opened_at": self._opened_at_wall,
            "retry_after_s": (max(0.0, self._cooldown_left(self._clock()))
                              if self._state is BreakerState.OPEN else 0.0),
            "half_open_successes": self._probe_successes,
            "probes_in_flight": self._probes_in_flight,
        }

    def _notify(self, changes: list[_Transition]) -> None:
        # Outside the lock: the callback may write to SQLite or read this breaker's snapshot.
        if self._on_change is None:
            return
        for old, new, info in changes:
            try:
                self._on_change(old, new, info)
            except Exception:
                log.exception("circuit breaker on_change failed for %s -> %s", old, new)
