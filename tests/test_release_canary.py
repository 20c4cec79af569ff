"""Canary assignment and persistence (``release.canary``), statistics and decision
(``release.canary_stats``); paper §5.2."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from twinloop.kernel.config import CanaryConfig
from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError
from twinloop.knowledge.domains import DomainRegistry
from twinloop.learning.feedback import FeedbackDesk
from twinloop.release.canary import (
    ArmStats,
    CanaryDecision,
    CanaryRunningError,
    CanaryStore,
    UnknownCanaryError,
    assign_arm,
    decide,
)
from twinloop.release.canary_stats import (
    mann_whitney_p,
    newcombe_diff_bound,
    welch_p,
    wilson_interval,
)
from twinloop.serving.requestlog import RequestLog

USERS = [f"user-{i}" for i in range(20_000)]

# -- assignment --------------------------------------------------------------------------------


def test_ratio_is_respected_over_many_users():
    share = sum(assign_arm(u, "s1", 0.05) == "shadow" for u in USERS) / len(USERS)
    assert 0.045 <= share <= 0.055


def test_assignment_is_the_documented_hash():
    # Pinned so another process (or language) splitting the same traffic agrees with us.
    for user in USERS[:200]:
        bucket = int.from_bytes(hashlib.sha256((user + "s1").encode()).digest()[:8], "big") % 10_000
        assert assign_arm(user, "s1", 0.05) == ("shadow" if bucket < 500 else "active")


def test_same_user_same_arm_and_salt_reshuffles():
    first = {u for u in USERS if assign_arm(u, "s1", 0.05) == "shadow"}
    again = {u for u in USERS if assign_arm(u, "s1", 0.05) == "shadow"}
    other = {u for u in USERS if assign_arm(u, "s2", 0.05) == "shadow"}
    assert first == again
    assert len(first & other) < 0.2 * len(first), "a new salt picks a (nearly) new set of users"


def test_growing_the_ratio_keeps_the_users_already_in():
    at5 = {u for u in USERS if assign_arm(u, "s1", 0.05) == "shadow"}
    at10 = {u for u in USERS if assign_arm(u, "s1", 0.10) == "shadow"}
    assert at5 < at10


@pytest.mark.parametrize("user", [None, ""])
def test_anonymous_traffic_never_sees_the_candidate(user):
    assert assign_arm(user, "s1", 1.0) == "active"


def test_ratio_bounds():
    assert all(assign_arm(u, "s1", 0.0) == "active" for u in USERS[:500])
    assert all(assign_arm(u, "s1", 1.0) == "shadow" for u in USERS[:500])
    with pytest.raises(InvalidInputError, match="1.5"):
        assign_arm("u", "s1", 1.5)


# -- statistics helpers, against published values --------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        # Two-sided 95 % Wilson intervals as tabulated by Newcombe (1998a) and in Agresti & Coull.
        pytest.param(0, 10, (0.0, 0.2775), id="0/10"),
        pytest.param(5, 10, (0.2366, 0.7634), id="5/10"),
        pytest.param(81, 263, (0.2553, 0.3662), id="81/263"),
        pytest.param(0, 0, (0.0, 1.0), id="no-trials"),
    ],
)
def test_wilson_interval(k, n, expected):
    assert wilson_interval(k, n) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "expected"),
    [
        # Newcombe (1998b), Table II, method 10 (hybrid score), two-sided 95 %.
        pytest.param(56, 70, 48, 80, (0.0524, 0.3339), id="a"),
        pytest.param(9, 10, 3, 10, (0.1705, 0.8090), id="b"),
        pytest.param(6, 7, 2, 7, (0.0582, 0.8062), id="c"),
        pytest.param(5, 56, 0, 29, (-0.0381, 0.1926), id="d"),
        pytest.param(0, 10, 0, 20, (-0.1611, 0.2775), id="e"),
        pytest.param(10, 10, 0, 20, (0.6791, 1.0), id="g"),
    ],
)
def test_newcombe_hybrid_score_interval(x1, n1, x2, n2, expected):
    lower = -newcombe_diff_bound(x2, n2, x1, n1, z=1.959964)
    upper = newcombe_diff_bound(x1, n1, x2, n2, z=1.959964)
    assert (lower, upper) == pytest.approx(expected, abs=1e-4)


def test_mann_whitney():
    same = [float(v) for v in range(1, 21)]
    assert mann_whitney_p(same, same) == pytest.approx(0.5, abs=0.05)
    assert mann_whitney_p([5.0] * 10, [5.0] * 10) == 0.5, "all tied: no evidence"
    # scipy.stats.mannwhitneyu(x, y, alternative="greater", method="asymptotic").pvalue
    x, y = [3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5]
    assert mann_whitney_p(x, y) == pytest.approx(0.0330077157606155, rel=1e-9)
    assert mann_whitney_p(y, x) > 0.95


def test_welch():
    # scipy.stats.ttest_ind(x, y, equal_var=False, alternative="less").pvalue
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert welch_p(x, y) == pytest.approx(0.019901541012068123, rel=1e-9)
    assert welch_p(y, x) == pytest.approx(1 - 0.019901541012068123, rel=1e-9)
    assert welch_p(x, x) == pytest.approx(0.5)
    assert welch_p([1.0, 1.0], [1.0, 1.0]) == 0.5, "no spread, same mean"
    assert welch_p([-1.0, -1.0], [1.0, 1.0]) == 0.0, "no spread, lower mean"
    with pytest.raises(ValueError, match="at least 2"):
        welch_p([1.0], [1.0, 2.0])


# -- decide ------------------------------------------------------------------------------------


def latencies(n: int, scale: float = 1.0) -> list[float]:
    """n latencies spread evenly over 100–199 ms (times ``scale``)."""
    return [scale * (100 + (i * 37) % 100) for i in range(n)]


def arm(requests: int, errors: int = 0, *, lat: list[float] | None = None, toxic: int = 0,
        feedback: list[float] | None = None) -> ArmStats:
    ok = requests - errors
    return ArmStats(requests, errors, latencies(ok) if lat is None else lat, toxic, feedback or [])


ACTIVE = arm(2000, 20)  # 1 % errors, the baseline of most cases
GOOD, BAD = [1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 0.0, 1.0], [-1.0, -1.0, 0.0, -1.0, -0.5, -1.0, -1.0, 0.0]


@pytest.mark.parametrize(
    ("active", "shadow", "action", "reason"),
    [
        pytest.param(ACTIVE, arm(50), "continue", "50 more Shadow queries", id="too-few-queries"),
        pytest.param(arm(60), arm(100), "continue", "40 more Active queries", id="too-few-baseline"),
        pytest.param(ACTIVE, arm(100, 1), "promote", "", id="equal-arms"),
        pytest.param(arm(2000, 200), arm(100, 18), "abort", "error rate: Shadow 18.0% vs Active 10.0%",
                     id="clear-regression-below-2x"),
        pytest.param(ACTIVE, arm(10, 2), "abort", "early abort: Shadow error rate 20.0%", id="early-abort-2x"),
        pytest.param(arm(2000), arm(10, 2), "abort", "over 2× Active's 0.0%", id="early-abort-active-clean"),
        pytest.param(arm(2000), arm(10, 1), "continue", "", id="one-error-is-luck"),
        pytest.param(ACTIVE, arm(9, 3), "continue", "", id="early-abort-needs-min-requests"),
        pytest.param(arm(2000, 200), arm(100, 20), "abort", "error rate:", id="exactly-2x-not-early"),
        pytest.param(ACTIVE, arm(20, toxic=2), "abort", "early abort: Shadow toxicity rate 10.0%",
                     id="toxicity-abort"),
        # 6 outliers put Shadow's p95 at 1000 ms, but the rank test sees no overall slowdown.
        pytest.param(ACTIVE, arm(100, 1, lat=latencies(93) + [1000.0] * 6), "promote", "not significantly slower",
                     id="noisy-p95-does-not-block"),
        pytest.param(ACTIVE, arm(100, 1, lat=latencies(99, 1.5)), "abort", "latency: Shadow p95 292 ms > 242 ms",
                     id="clearly-slower-blocks"),
        pytest.param(ACTIVE, arm(100, 1, lat=latencies(99, 1.2)), "promote", "significantly slower",
                     id="slower-within-margin"),
        pytest.param(arm(2000, 20, feedback=GOOD), arm(100, 1, feedback=BAD), "abort",
                     "feedback: Shadow mean -0.69 vs Active +0.81", id="worse-feedback-blocks"),
        pytest.param(arm(2000, 20, feedback=GOOD), arm(100, 1, feedback=GOOD[::-1]), "promote",
                     "not significantly lower", id="same-feedback"),
        pytest.param(arm(2000, 20, feedback=GOOD), arm(100, 1, feedback=BAD[:3]), "promote",
                     "not enough feedback", id="few-feedback-does-not-block"),
    ],
)
def test_decide(active, shadow, action, reason):
    decision = decide(active, shadow, CanaryConfig())
    assert decision.action == action, decision.reasons
    assert any(reason in r for r in decision.reasons), decision.reasons
    if action == "abort":
        assert not any("≤" in r and "error rate" in r for r in decision.reasons), "only failed checks"


def test_abort_lists_every_failed_check_with_statistics():
    decision = decide(arm(2000, 200, feedback=GOOD), arm(100, 18, lat=latencies(82, 1.5), feedback=BAD),
                      CanaryConfig())
    assert decision.action == "abort"
    assert [r.split(":")[0] for r in decision.reasons] == ["error rate", "latency", "feedback"]
    d = decision.details
    assert d["error_rate"]["upper_bound"] > 0.05 and not d["error_rate"]["passed"]
    assert d["latency"]["mann_whitney_p"] < 0.05 and d["feedback"]["welch_p"] < 0.05
    assert d["toxicity"]["passed"] and d["shadow"]["requests"] == 100


def test_thresholds_come_from_config():
    cfg = CanaryConfig(min_queries=20, error_margin=0.25)
    assert decide(arm(2000, 200), arm(20, 3), cfg).action == "promote"
    # 15 % vs 10 % on 20 queries: within the default 5 % margin? Not shown yet — inconclusive,
    # so it keeps collecting until max_queries, then aborts.
    assert decide(arm(2000, 200), arm(20, 3), CanaryConfig(min_queries=20)).action == "continue"
    assert decide(arm(2000, 200), arm(20, 3), CanaryConfig(min_queries=20, max_queries=20)).action == "abort"


def test_clear_error_regression_aborts_without_waiting_for_max_queries():
    # 30 % vs 10 %: observed difference beyond the margin — a regression, not inconclusive.
    assert decide(arm(2000, 200), arm(100, 30), CanaryConfig(abort_error_factor=5.0)).action == "abort"


def test_decision_round_trips_as_dict():
    decision = decide(ACTIVE, arm(100, 1), CanaryConfig())
    assert CanaryDecision(**decision.to_dict()) == decision


# -- CanaryStore -------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path) -> CanaryStore:
    return CanaryStore(Database(tmp_path / "t.db"))


def start(store: CanaryStore, **kw):
    args = {"ratio": 0.05, "mode": "split", "salt": "s1", "actor": "ops"} | kw
    return store.start("rel_new", "rel_old", **args)


def test_start_get_current_list(store):
    assert store.current() is None and store.list() == []
    run = start(store)
    assert run.id.startswith("can_") and run.status == "running" and run.finished_at is None
    assert (run.release_id, run.baseline_id, run.ratio, run.mode, run.salt, run.actor) == (
        "rel_new", "rel_old", 0.05, "split", "s1", "ops")
    assert store.current() == run == store.get(run.id)
    assert store.list() == [run]
    assert run.to_dict()["decision"] is None
    with pytest.raises(InvalidInputError, match="unknown canary 'can_nope'"):
        store.get("can_nope")


def test_only_one_running(store):
    first = start(store)
    with pytest.raises(CanaryRunningError, match=first.id):
        start(store)
    # The invariant lives in SQL too, not only in start()'s check.
    with pytest.raises(sqlite3.IntegrityError), store.db.transaction() as conn:
        conn.execute("INSERT INTO canaries(id, release_id, baseline_id, ratio, mode, salt, status, started_at)"
                     " VALUES ('can_x', 'a', 'b', 0.1, 'split', 's', 'running', 'now')")
    store.finish(first.id, "stopped", None, actor="ops")
    second = start(store)
    assert store.current() == second and [r.id for r in store.list()] == [second.id, first.id]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        pytest.param({"ratio": 0.0}, "ratio 0.0", id="zero-ratio"),
        pytest.param({"ratio": 1.5}, "ratio 1.5", id="ratio-above-1"),
        pytest.param({"mode": "bogus"}, "mode 'bogus'", id="unknown-mode"),
    ],
)
def test_start_validates(store, kw, match):
    with pytest.raises(InvalidInputError, match=match):
        start(store, **kw)
    assert store.current() is None


def test_record_and_stats(store):
    run = start(store)
    for i in range(10):
        store.record(run.id, "active", ok=i != 0, latency_ms=100.0 + i, toxic=False, request_id=f"a{i}")
    store.record(run.id, "shadow", ok=True, latency_ms=120.0, toxic=True, request_id=None)
    store.record(run.id, "shadow", ok=False, latency_ms=5.0, toxic=False, request_id=None)
    active, shadow = store.stats(run.id)
    assert (active.requests, active.errors, active.toxic) == (10, 1, 0)
    assert active.latencies_ms == [101.0 + i for i in range(9)], "failed requests carry no latency"
    assert (shadow.requests, shadow.errors, shadow.toxic, shadow.latencies_ms) == (2, 1, 1, [120.0])
    assert shadow.error_rate == 0.5 and shadow.toxicity_rate == 0.5 and shadow.feedback_mean is None


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        pytest.param({"arm": "both"}, InvalidInputError, "arm 'both'", id="unknown-arm"),
        pytest.param({"latency_ms": -1.0}, InvalidInputError, "latency_ms = -1.0", id="negative-latency"),
        pytest.param({"latency_ms": float("nan")}, InvalidInputError, "nan", id="nan-latency"),
        pytest.param({"canary_id": "can_nope"}, UnknownCanaryError, "can_nope", id="unknown-canary"),
    ],
)
def test_record_validates(store, args, error, match):
    run = start(store)
    kw = {"canary_id": run.id, "arm": "shadow", "ok": True, "latency_ms": 1.0, "toxic": False,
          "request_id": None} | args
    with pytest.raises(error, match=match):
        store.record(**kw)


def feedback_desk(db: Database, log: RequestLog):
    """Submits feedback as the API does: the rated request read back from the request log."""
    desk = FeedbackDesk(db, DomainRegistry(db))
    return lambda rid, score: desk.submit(rid, score, request=log.get(rid))


def test_feedback_joined_by_request_id(store):
    log = RequestLog(store.db, salt="x")
    add_feedback = feedback_desk(store.db, log)
    run = start(store)
    scores = {"r-a1": 1.0, "r-a2": 0.5, "r-s1": -1.0}
    for rid in [*scores, "r-s2"]:
        log.record(request_id=rid, kind="answer", query="q?", release_id="rel", domains=["law"])
    for rid, score in scores.items():
        add_feedback(rid, score)
    add_feedback("r-s1", 0.0)  # a second click on one answer: the latest counts, once
    for rid in ("r-a1", "r-a2"):
        store.record(run.id, "active", ok=True, latency_ms=10.0, toxic=False, request_id=rid)
    for rid in ("r-s1", "r-s2"):
        store.record(run.id, "shadow", ok=True, latency_ms=10.0, toxic=False, request_id=rid)
    active, shadow = store.stats(run.id)
    assert sorted(active.feedback) == [0.5, 1.0] and shadow.feedback == [0.0]
    assert active.feedback_mean == 0.75


def test_mirror_mode_gives_shadow_no_feedback(store):
    log = RequestLog(store.db, salt="x")
    run = start(store, mode="mirror")
    log.record(request_id="r1", kind="answer", query="q?", release_id="rel", domains=["law"])
    feedback_desk(store.db, log)("r1", 1.0)
    for a in ("active", "shadow"):  # even if the same id is passed for both arms
        store.record(run.id, a, ok=True, latency_ms=10.0, toxic=False, request_id="r1")
    active, shadow = store.stats(run.id)
    assert active.feedback == [1.0] and shadow.feedback == []


def test_stats_without_a_feedback_table(store):
    run = start(store)
    store.record(run.id, "shadow", ok=True, latency_ms=1.0, toxic=False, request_id="r1")
    assert store.stats(run.id)[1].feedback == []


def test_finish(store):
    run = start(store)
    decision = decide(ACTIVE, arm(100, 1), CanaryConfig())
    done = store.finish(run.id, "promoted", decision, actor="auto")
    assert (done.status, done.finished_by, done.actor) == ("promoted", "auto", "ops")
    assert done.finished_at is not None and done.decision == decision.to_dict()
    assert store.current() is None
    with pytest.raises(InvalidInputError, match="already promoted"):
        store.finish(run.id, "aborted", None)
    with pytest.raises(InvalidInputError, match="'running'"):
        store.finish(start(store).id, "running", None)
    with pytest.raises(UnknownCanaryError):
        store.finish("can_nope", "stopped", None)


def test_late_observations_after_finish_are_dropped(store):
    run = start(store)
    store.record(run.id, "shadow", ok=True, latency_ms=1.0, toxic=False, request_id=None)
    store.finish(run.id, "aborted", None)
    store.record(run.id, "shadow", ok=False, latency_ms=1.0, toxic=False, request_id=None)
    assert store.stats(run.id)[1].requests == 1


def test_survives_a_restart(tmp_path):
    path = tmp_path / "t.db"
    store = CanaryStore(Database(path))
    run = start(store, mode="mirror", ratio=0.1)
    store.record(run.id, "shadow", ok=False, latency_ms=3.0, toxic=False, request_id=None)
    store.db.close()

    reopened = CanaryStore(Database(path))
    assert reopened.current() == run
    assert reopened.stats(run.id)[1].errors == 1
    with pytest.raises(CanaryRunningError):
        start(reopened)
