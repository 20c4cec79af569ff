"""Fault injection for one release: make a share of its requests fail, or slow them down, on
purpose, so the tests and the demo can show automatic rollback firing on injected errors.

This is how an operator rehearses the safety net — does the breaker open, does the watch
roll back — without breaking a real adapter (the same idea as Envoy's fault filter). Faults
live only in the serving process's memory, are set through the admin API, apply to one
release id, and every change is written to the audit log by the caller.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass

from twinloop.kernel.errors import InvalidInputError, TwinLoopError


class InjectedFault(TwinLoopError):
    """A request failed because an operator injected a fault into its release."""


@dataclass(frozen=True)
class Fault:
    release_id: str
    error_rate: float = 0.0
    """Share of requests that fail (0–1)."""
    delay_ms: float = 0.0
    """Added to every request's latency."""

    def to_dict(self) -> dict:
        return asdict(self)


class FaultInjector:
    """Faults by release id; :meth:`apply` runs in the request path before generation."""

    def __init__(self, seed: int | None = None) -> None:
        self._faults: dict[str, Fault] = {}
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def set(self, fault: Fault) -> Fault:
        if not 0.0 <= fault.error_rate <= 1.0:
            raise InvalidInputError(f"error_rate = {fault.error_rate!r}: must be between 0 and 1")
        if not 0.0 <= fault.delay_ms <= 60_000:
            raise InvalidInputError(f"delay_ms = {fault.delay_ms!r}: must be between 0 and 60000")
        with self._lock:
            if fault.error_rate == 0 and fault.delay_ms == 0:
                self._faults.pop(fault.release_id, None)
            else:
                self._faults[fault.release_id] = fault
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[Fault]:
        with self._lock:
            return list(self._faults.values())

    def apply(self, release_id: str) -> None:
        """Sleep and/or raise as the fault for ``release_id`` says (nothing when none is set)."""
        with self._lock:
            fault = self._faults.get(release_id)
            fail = fault is not None and self._rng.random() < fault.error_rate
        if fault is None:
            return
        if fault.delay_ms:
            time.sleep(fault.delay_ms / 1000)
        if fail:
            raise InjectedFault(f"injected fault in release {release_id} (error_rate {fault.error_rate:g})")
