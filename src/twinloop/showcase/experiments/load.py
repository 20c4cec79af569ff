"""A load generator: real requests to a method's serving copy while it updates (paper §6.2.4).

One client thread sends questions one after another, starting a new one every
``interval_s`` (or at once when the previous took longer), and counts which were served.
A request is served when the serving call returned an answer record that did not end in a
timeout, a cancellation or the circuit breaker's fallback; anything raised (the
FullFineTune's refusal while its weights train, an engine error, a full queue) is a failure.
Availability is served / sent over the update windows (paper §6.2.4 "uptime during update
cycles"). The first request goes out as the window opens, so even an update that takes no
time (Static) is probed once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twinloop.kernel.errors import InvalidInputError

FAILED_FINISH = ("timeout", "cancelled", "circuit_open")
"""Finish reasons of a record that was not a served answer."""


@dataclass
class LoadStats:
    """Outcome of the requests sent during one window."""

    sent: int = 0
    served: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    """Latency of each served request."""
    errors: list[str] = field(default_factory=list)
    """First few failure messages, for the report."""
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return self.sent - self.served

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "served": self.served, "failed": self.failed, "seconds": round(self.seconds, 3),
                "latencies_ms": [round(x, 1) for x in self.latencies_ms], "errors": self.errors}


class LoadGenerator:
    """Sends ``queries`` round-robin through ``call(question, domain)`` until stopped.

    Use as a context manager around the update::

        with LoadGenerator(method.answer, queries, interval_s=3.0) as load:
            method.update(task)
        load.stats.served / load.stats.sent

    Args:
        call: The serving call; returns an object with ``finish_reason`` or raises.
        queries: ``(question, domain)`` pairs, sent in order and round again.
        interval_s: Least time between the starts of two requests.
        max_errors: Failure messages kept.
    """

    def __init__(self, call: Callable[[str, str], Any], queries: Sequence[tuple[str, str]], interval_s: float,
                 max_errors: int = 5) -> None:
        if not queries:
            raise InvalidInputError("the load generator needs at least one query")
        if not interval_s > 0:
            raise InvalidInputError(f"interval_s = {interval_s!r}: must be > 0")
        self.call = call
        self.queries = list(queries)
        self.interval_s = interval_s
        self.max_errors = max_errors
        self.stats = LoadStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def __enter__(self) -> LoadGenerator:
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="twinloop-eval-load", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()  # the request in flight finishes: it was sent during the window
        self.stats.seconds = time.perf_counter() - self._started

    def _run(self) -> None:
        i = 0
        while True:
            question, domain = self.queries[i % len(self.queries)]
            i += 1
            t0 = time.perf_counter()
            self._one(question, domain, t0)
            if self._stop.wait(max(0.0, self.interval_s - (time.perf_counter() - t0))):
                return

    def _one(self, question: str, domain: str, t0: float) -> None:
        self.stats.sent += 1
        try:
            record = self.call(question, domain)
        except Exception as e:  # every failure counts; none may stop the generator
            self._error(f"{type(e).__name__}: {e}")
            return
        reason = getattr(record, "finish_reason", None)
        if reason in FAILED_FINISH:
            self._error(f"finish_reason={reason}")
            return
        self.stats.served += 1
        self.stats.latencies_ms.append((time.perf_counter() - t0) * 1000)

    def _error(self, message: str) -> None:
        if len(self.stats.errors) < self.max_errors:
            self.stats.errors.append(message[:200])


__all__ = ["FAILED_FINISH", "LoadGenerator", "LoadStats"]
