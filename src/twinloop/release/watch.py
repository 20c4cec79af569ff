"""The post-swap watch: roll back automatically when the new Active degrades (paper §5.4).

After a swap the watch collects the outcome of every request served by the new Active
release for ``RollbackConfig.watch_s`` seconds; once ``min_requests`` have been seen it
fires when, over the last ``window`` of them, the error rate passes ``error_rate`` or the
p95 latency passes both ``latency_p95_ms`` and ``latency_factor`` × the p95 of the release
it replaced (measured over the same kind of window before the swap).

It is a small pure object: :meth:`observe` returns the reason to roll back (or None), and
the service performs the rollback, so the trigger logic is testable without a server.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from twinloop.kernel.stats import p95


@dataclass(frozen=True)
class Trigger:
    """Why the watch fired."""

    release_id: str
    reason: str
    error_rate: float
    latency_p95_ms: float
    requests: int


class LatencyWindow:
    """The latencies of the last ``size`` successful requests (the pre-swap baseline)."""

    def __init__(self, size: int) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._values.append(ms)

    def p95(self) -> float:
        with self._lock:
            return p95(list(self._values)) or 0.0


class RollbackWatch:
    """Watches one release after it became Active."""

    def __init__(self, release_id: str, cfg, baseline_p95_ms: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.release_id = release_id
        self.cfg = cfg
        self.baseline_p95_ms = baseline_p95_ms
        self._clock = clock
        self._until = clock() + cfg.watch_s
        self._outcomes: deque[tuple[bool, float]] = deque(maxlen=cfg.window)
        self._seen = 0
        self._fired = False
        self._lock = threading.Lock()

    @property
    def latency_limit_ms(self) -> float:
        return max(self.cfg.latency_p95_ms, self.cfg.latency_factor * self.baseline_p95_ms)

    def expired(self) -> bool:
        return self._fired or self._clock() > self._until

    def observe(self, release_id: str, ok: bool, latency_ms: float) -> Trigger | None:
        """Record one request's outcome; returns a :class:`Trigger` once, when it fires."""
        if release_id != self.release_id or self.expired():
            return None
        with self._lock:
            if self._fired:
                return None
            self._outcomes.append((ok, latency_ms))
            self._seen += 1
            if self._seen < self.cfg.min_requests:
                return None
            n = len(self._outcomes)
            errors = sum(1 for good, _ in self._outcomes if not good)
            rate = errors / n
            lat = p95([ms for good, ms in self._outcomes if good]) or 0.0
            reason = None
            if rate > self.cfg.error_rate:
                reason = f"error rate {rate:.0%} over the last {n} requests > {self.cfg.error_rate:.0%}"
            elif lat > self.latency_limit_ms:
                reason = (f"latency p95 {lat:.0f} ms over the last {n} requests > {self.latency_limit_ms:.0f} ms "
                          f"(max of {self.cfg.latency_p95_ms:.0f} ms and {self.cfg.latency_factor:g}× the "
                          f"pre-swap p95 of {self.baseline_p95_ms:.0f} ms)")
            if reason is None:
                return None
            self._fired = True
            return Trigger(self.release_id, reason, rate, lat, n)

    def snapshot(self) -> dict:
        with self._lock:
            n = len(self._outcomes)
            errors = sum(1 for good, _ in self._outcomes if not good)
            return {"release_id": self.release_id, "requests": self._seen, "window": n,
                    "error_rate": errors / n if n else 0.0,
                    "latency_p95_ms": p95([ms for good, ms in self._outcomes if good]),
                    "latency_limit_ms": self.latency_limit_ms, "fired": self._fired,
                    "seconds_left": max(0.0, self._until - self._clock())}
