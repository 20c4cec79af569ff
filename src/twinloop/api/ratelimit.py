"""Per-caller rate limits: a token bucket per API key.

A bucket holds up to ``per_minute`` tokens and refills at ``per_minute / 60`` tokens per
second, so a caller may burst up to its minute's allowance and then sustain the rate. The
caller is the key's SHA-256 digest, or the client address when the API is open (loopback).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_TRACKED = 10_000
"""Buckets kept before full (idle) ones are dropped; bounds memory under many addresses."""


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by caller.

    Args:
        per_minute: Sustained requests per minute per caller (also the burst size).
        clock: Monotonic seconds; injectable for tests.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute = {per_minute}: must be at least 1")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, caller: str) -> float | None:
        """Take one token for ``caller``.

        Returns:
            None when the request may go ahead, else the seconds until a token is free
            (the ``Retry-After`` value).
        """
        now = self._clock()
        with self._lock:
            b = self._buckets.get(caller)
            if b is None:
                if len(self._buckets) >= MAX_TRACKED:
                    self._prune(now)
                b = self._buckets[caller] = _Bucket(self.capacity, now)
            else:
                b.tokens = min(self.capacity, b.tokens + (now - b.updated) * self.rate)
                b.updated = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return None
            return (1.0 - b.tokens) / self.rate

    def wait(self, caller: str) -> float | None:
        """Like :meth:`acquire` but takes nothing: None if a token is free now, else the
        seconds until one is."""
        now = self._clock()
        with self._lock:
            b = self._buckets.get(caller)
            if b is None:
                return None
            tokens = min(self.capacity, b.tokens + (now - b.updated) * self.rate)
            return None if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        # A bucket that has refilled completely carries no state worth keeping.
        full_after = self.capacity / self.rate
        stale = [k for k, b in self._buckets.items() if now - b.updated >= full_after]
        for k in stale:
            del self._buckets[k]
        if len(self._buckets) >= MAX_TRACKED:  # all active: drop the oldest half
            for k, _ in sorted(self._buckets.items(), key=lambda kv: kv[1].updated)[: MAX_TRACKED // 2]:
                del self._buckets[k]
