"""Circuit breaker transitions (paper §5.5) driven by a fake clock."""

from __future__ import annotations

import threading

import pytest

from twinloop.kernel.config import BreakerConfig
from twinloop.release.breaker import BreakerState, CircuitBreaker

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(**cfg):
    clock = FakeClock()
    changes: list[tuple[BreakerState, BreakerState, dict]] = []
    breaker = CircuitBreaker(BreakerConfig(**cfg), clock=clock,
                             on_change=lambda old, new, info: changes.append((old, new, info)))
    return breaker, clock, changes


def feed(breaker: CircuitBreaker, outcomes: str) -> None:
    """``outcomes``: one letter per admitted request, ``s`` success or ``f`` failure."""
    for o in outcomes:
        assert breaker.allow()
        breaker.record_success() if o == "s" else breaker.record_failure()


def open_breaker(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.cfg.min_requests):
        if breaker.state is OPEN:
            break
        feed(breaker, "f")
    assert breaker.state is OPEN


@pytest.mark.parametrize(
    ("outcomes", "state"),
    [
        pytest.param("sssss" + "fffff", OPEN, id="exactly-5-of-10-opens"),
        pytest.param("ffffs" + "fssss", OPEN, id="5-of-10-interleaved-opens"),
        pytest.param("fffff" + "sssss", OPEN, id="a-success-filling-the-window-opens"),
        pytest.param("ssssss" + "ffff", CLOSED, id="4-of-10-stays-closed"),
        pytest.param("fffffffff", CLOSED, id="window-not-full-never-opens"),
        # The window slides: the old failures fall out before the 5th new one arrives.
        pytest.param("ffff" + "ssssss" + "ssss" + "ffff", CLOSED, id="old-failures-slide-out"),
        pytest.param("ffff" + "ssssss" + "ffff" + "s" + "f", OPEN, id="sliding-window-reaches-5"),
    ],
)
def test_closed_to_open(outcomes, state):
    breaker, _, changes = make()
    for o in outcomes:
        assert breaker.allow(), "a closed breaker admits everything"
        breaker.record_success() if o == "s" else breaker.record_failure()
    assert breaker.state is state
    assert [(old, new) for old, new, _ in changes] == ([(CLOSED, OPEN)] if state is OPEN else [])


def test_threshold_and_window_come_from_config():
    breaker, _, _ = make(failure_threshold=0.8, min_requests=5)
    feed(breaker, "sffff")  # 4/5 = 0.8
    assert breaker.state is OPEN


def test_open_refuses_until_cooldown_then_half_opens():
    breaker, clock, changes = make()
    open_breaker(breaker)
    assert not breaker.allow()
    assert breaker.retry_after() == pytest.approx(60.0)
    clock.advance(59.5)
    assert not breaker.allow()
    assert breaker.retry_after() == pytest.approx(0.5)
    clock.advance(0.5)
    assert breaker.retry_after() == 0.0
    assert breaker.allow(), "the first request after the cooldown is a probe"
    assert breaker.state is HALF_OPEN and breaker.retry_after() == 0.0
    assert [(o, n) for o, n, _ in changes] == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def test_half_open_admits_at_most_n_probes_in_flight():
    breaker, clock, _ = make(half_open_successes=3)
    open_breaker(breaker)
    clock.advance(60)
    assert [breaker.allow() for _ in range(5)] == [True, True, True, False, False]
    breaker.record_success()  # one probe done, one slot free
    assert breaker.state is HALF_OPEN
    assert breaker.allow() and not breaker.allow()


def test_consecutive_successes_close_with_empty_window():
    breaker, clock, changes = make()
    open_breaker(breaker)
    clock.advance(60)
    for _ in range(3):
        assert breaker.allow()
    breaker.record_success()
    breaker.record_success()
    assert breaker.state is HALF_OPEN and breaker.snapshot()["half_open_successes"] == 2
    breaker.record_success()
    assert breaker.state is CLOSED
    snap = breaker.snapshot()
    assert (snap["window"], snap["failures"], snap["opened_at"]) == (0, 0, None)
    assert [(o, n) for o, n, _ in changes][-1] == (HALF_OPEN, CLOSED)
    # The old failures are gone: 4 new ones in a fresh window do not reopen it.
    feed(breaker, "ssssss" + "ffff")
    assert breaker.state is CLOSED


def test_failure_while_half_open_reopens_with_fresh_cooldown():
    breaker, clock, changes = make()
    open_breaker(breaker)
    clock.advance(60)
    assert breaker.allow() and breaker.allow()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is OPEN
    assert breaker.retry_after() == pytest.approx(60.0), "the cooldown restarts"
    assert not breaker.allow()
    assert [(o, n) for o, n, _ in changes] == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]
    assert changes[-1][2]["reason"] == "a probe failed while half-open"
    # Successes do not carry over into the next half-open round.
    clock.advance(60)
    assert breaker.allow()
    assert breaker.snapshot()["half_open_successes"] == 0


def test_stragglers_while_open_change_nothing():
    breaker, _, changes = make()
    open_breaker(breaker)
    left = breaker.retry_after()
    breaker.record_failure()
    breaker.record_success()
    assert breaker.state is OPEN and breaker.retry_after() == left and len(changes) == 1


def test_lost_probes_do_not_wedge_half_open():
    breaker, clock, _ = make()
    open_breaker(breaker)
    clock.advance(60)
    assert [breaker.allow() for _ in range(4)] == [True, True, True, False]
    clock.advance(60)  # none of the probes ever reported back
    assert breaker.allow()


@pytest.mark.parametrize("start", ["closed", "open", "half_open"])
def test_reset_returns_to_closed_with_empty_window(start):
    breaker, clock, changes = make()
    feed(breaker, "fff")
    if start != "closed":
        open_breaker(breaker)
    if start == "half_open":
        clock.advance(60)
        assert breaker.allow()
    breaker.reset()
    assert breaker.state is CLOSED and breaker.allow()
    snap = breaker.snapshot()
    assert (snap["window"], snap["failures"], snap["retry_after_s"]) == (0, 0, 0.0)
    if start == "closed":
        assert changes == []
    else:
        assert changes[-1][:2] == (BreakerState(start), CLOSED) and changes[-1][2]["reason"] == "reset"


def test_snapshot_and_change_info():
    breaker, clock, changes = make()
    feed(breaker, "ssssssfff")
    snap = breaker.snapshot()
    assert snap == {"state": "closed", "window": 9, "window_size": 10, "failures": 3,
                    "error_rate": pytest.approx(3 / 9), "opened_at": None, "retry_after_s": 0.0,
                    "half_open_successes": 0, "probes_in_flight": 0}
    feed(breaker, "ff")  # the window slides to sssss fffff
    info = changes[0][2]
    assert (info["state"], info["failures"], info["window"]) == ("open", 5, 10)
    assert info["reason"] == "5 of the last 10 requests failed (threshold 50%)"
    clock.advance(15)
    snap = breaker.snapshot()
    assert snap["state"] == "open" and snap["opened_at"] is not None
    assert snap["retry_after_s"] == pytest.approx(45.0)


def test_failing_callback_does_not_break_the_caller(caplog):
    def boom(old, new, info):
        raise RuntimeError("audit store down")

    breaker = CircuitBreaker(BreakerConfig(min_requests=2), clock=FakeClock(), on_change=boom)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is OPEN
    assert "on_change failed" in caplog.text


def test_callback_runs_outside_the_lock():
    seen = []
    breaker: CircuitBreaker

    def reads_back(old, new, info):
        seen.append(breaker.snapshot()["state"])  # would deadlock if called under the lock

    breaker = CircuitBreaker(BreakerConfig(min_requests=1), clock=FakeClock(), on_change=reads_back)
    breaker.record_failure()
    assert seen == ["open"]


def test_threads_open_it_exactly_once():
    changes = []
    breaker = CircuitBreaker(BreakerConfig(), on_change=lambda o, n, i: changes.append((o, n)))
    start = threading.Barrier(8)

    def worker():
        start.wait()
        for _ in range(500):
            if breaker.allow():
                breaker.record_failure()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert breaker.state is OPEN and changes == [(CLOSED, OPEN)]


def test_threads_get_exactly_n_probes():
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerConfig(half_open_successes=3), clock=clock)
    open_breaker(breaker)
    clock.advance(60)
    start = threading.Barrier(16)
    admitted = []

    def worker():
        start.wait()
        admitted.append(breaker.allow())

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 3 and breaker.state is HALF_OPEN


def test_threads_mixed_outcomes_keep_counts_consistent():
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1.0, min_requests=50))
    start = threading.Barrier(8)
    refused = []

    def worker(i):
        start.wait()
        for j in range(1000):
            if not breaker.allow():
                refused.append(i)
            breaker.record_failure() if (i + j) % 3 == 0 else breaker.record_success()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = breaker.snapshot()
    assert refused == [] and snap["state"] == "closed"
    assert snap["window"] == 50 and 0 < snap["failures"] < 50
