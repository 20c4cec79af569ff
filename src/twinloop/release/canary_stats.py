"""The canary's statistics and its decision: per-arm figures, the tests that compare the arms,
and :func:`decide` (continue, promote or abort; paper §5.2, docs/DESIGN.md "Releasing").

Pure functions of the arms' counts, no storage: :class:`~twinloop.release.canary.CanaryStore`
gathers the :class:`ArmStats` they read. They use only ``math`` and the standard library's
``NormalDist`` (no scipy at runtime); the tests pin them to published values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

from twinloop.kernel.config import CanaryConfig
from twinloop.kernel.stats import percentile

# -- per-arm statistics ------------------------------------------------------------------------


@dataclass
class ArmStats:
    """What one arm of a canary has done so far."""

    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    """Latencies of the successful requests (a fast failure must not make an arm look quick;
    failures are judged by the error rate)."""
    toxic: int = 0
    feedback: list[float] = field(default_factory=list)
    """User scores in [-1, 1] on this arm's answers (one per request, the latest)."""

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def latency_p95_ms(self) -> float | None:
        return percentile(self.latencies_ms, 95)

    @property
    def toxicity_rate(self) -> float:
        return self.toxic / self.requests if self.requests else 0.0

    @property
    def feedback_mean(self) -> float | None:
        return sum(self.feedback) / len(self.feedback) if self.feedback else None

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "error_rate": self.error_rate,
                "latency_p95_ms": self.latency_p95_ms, "toxic": self.toxic,
                "toxicity_rate": self.toxicity_rate, "feedback_count": len(self.feedback),
                "feedback_mean": self.feedback_mean}


# -- statistical tests -------------------------------------------------------------------------

_NORMAL = NormalDist()


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927; Newcombe 1998, method 3).

    Unlike the textbook ``p ± z·sqrt(p(1−p)/n)`` it stays inside [0, 1] and does not collapse
    to zero width at 0 or n successes, which is exactly the case of a canary with no errors.

    Args:
        successes: Count of events (here: errors), 0 ≤ successes ≤ n.
        n: Trials; 0 gives the uninformative (0, 1).
        z: Normal quantile; 1.96 for a two-sided 95 % interval, 1.645 for a one-sided bound.
    """
    if not 0 <= successes <= n:
        raise ValueError(f"successes = {successes!r} must be between 0 and n = {n!r}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_diff_bound(x1: int, n1: int, x2: int, n2: int, z: float = 1.644854) -> float:
    """Upper confidence bound of p1 − p2 by Newcombe's hybrid score method (1998, method 10).

    Combines the two Wilson intervals: ``U = δ + sqrt((u1 − p1)² + (p2 − l2)²)`` with
    ``δ = p1 − p2``. It keeps close to nominal coverage for small counts and rates near 0,
    where the Wald interval of a difference is far too narrow. The lower bound of p1 − p2 is
    ``-newcombe_diff_bound(x2, n2, x1, n1, z)``.

    Args:
        x1, n1: Events and trials of the first sample (Shadow's errors and requests).
        x2, n2: The same for the second sample (Active's); both n ≥ 1.
        z: 1.645 (default) for a one-sided 95 % bound; 1.96 gives the upper end of the
            two-sided 95 % interval that Newcombe tabulates.
    """
    if n1 < 1 or n2 < 1:
        raise ValueError(f"both samples need trials, got n1 = {n1!r}, n2 = {n2!r}")
    p1, p2 = x1 / n1, x2 / n2
    _, u1 = wilson_interval(x1, n1, z)
    l2, _ = wilson_interval(x2, n2, z)
    return (p1 - p2) + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def mann_whitney_p(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided p-value of the Mann–Whitney U test that ``x`` tends to be larger than ``y``.

    Normal approximation with midranks, the tie correction of the variance and a continuity
    correction (Mann & Whitney 1947; the same as ``scipy.stats.mannwhitneyu(x, y,
    alternative="greater", method="asymptotic")``). Rank-based, so one slow outlier moves it
    far less than it moves a p95; the canary has ≥ 100 queries, where the approximation is good.

    Returns:
        The p-value; 0.5 when every value is equal (no evidence either way).
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError(f"both samples need values, got {n1} and {n2}")
    pooled = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    n = n1 + n2
    rank_sum_x = 0.0
    ties = 0.0  # Σ (t³ − t) over groups of tied values
    i = 0
    while i < n:
        j = i
        while j + 1 < n and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        midrank = (i + j) / 2 + 1  # ranks are 1-based
        rank_sum_x += midrank * sum(1 for k in range(i, j + 1) if pooled[k][1] == 0)
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    u = rank_sum_x - n1 * (n1 + 1) / 2
    mean = n1 * n2 / 2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return 0.5
    return 1 - _NORMAL.cdf((u - mean - 0.5) / math.sqrt(var))


def welch_p(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided p-value of Welch's t-test that the mean of ``x`` is lower than that of ``y``.

    Welch (1947): unequal variances, Welch–Satterthwaite degrees of freedom, and the exact
    Student t distribution (through the regularised incomplete beta function) rather than a
    normal approximation, since feedback samples may be small. Matches
    ``scipy.stats.ttest_ind(x, y, equal_var=False, alternative="less")``.

    Returns:
        The p-value. With no spread in either sample the test is undefined; the means then
        decide: 0 if x's is lower, 0.5 if equal, 1 if higher.
    """
    n1, n2 = len(x), len(y)
    if n1 < 2 or n2 < 2:
        raise ValueError(f"each sample needs at least 2 values, got {n1} and {n2}")
    m1, m2 = sum(x) / n1, sum(y) / n2
    v1 = sum((v - m1) ** 2 for v in x) / (n1 - 1) / n1  # squared standard error of the mean
    v2 = sum((v - m2) ** 2 for v in y) / (n2 - 1) / n2
    if v1 + v2 == 0:
        return 0.0 if m1 < m2 else 0.5 if m1 == m2 else 1.0
    t = (m1 - m2) / math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))
    return _student_t_cdf(t, df)


def _student_t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))  # P(T < -|t|)
    return tail if t < 0 else 1 - tail


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by Lentz's continued fraction (Numerical Recipes §6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    # The fraction converges fast only for x < (a+1)/(a+b+2); use the symmetry I_x(a,b) = 1 − I_{1−x}(b,a).
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float, max_iter: int = 300, eps: float = 1e-15) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        for aa in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            delta = c * d
            h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


# -- the decision ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryDecision:
    """What to do with a running canary, and why."""

    action: Literal["continue", "promote", "abort"]
    reasons: list[str]
    """One line per failed check (abort), per check passed or skipped (promote), or what is
    still missing (continue)."""
    details: dict[str, Any]
    """Both arms' figures and each check's statistics (bounds, p-values, limits)."""

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reasons": list(self.reasons), "details": self.details}


def decide(active: ArmStats, shadow: ArmStats, cfg: CanaryConfig) -> CanaryDecision:
    """Continue, promote or abort a canary from both arms' statistics (paper §5.2).

    1. Early abort, at any time once Shadow has ``abort_min_requests``: Shadow's error rate
       above ``abort_error_factor`` × Active's with at least 2 errors (one error is luck), or
       Shadow's toxicity rate above ``max_toxicity``.
    2. Continue until both arms have ``min_queries`` requests; and while the error check is
       only inconclusive (observed rate within the margin, bound not yet), up to ``max_queries``.
    3. Promote only if every check passes, else abort naming each failed check:
       error rate (Newcombe upper bound of the difference ≤ ``error_margin``), latency (see
       below), toxicity (≤ ``max_toxicity``) and feedback (Welch's test, once both arms have
       ``min_feedback`` scores; with fewer it is noted and does not block).
    """
    details: dict[str, Any] = {"active": active.to_dict(), "shadow": shadow.to_dict()}

    # 1. Early abort (paper §5.2: "If Shadow error rate exceeds 2× active, abort immediately").
    early: list[str] = []
    if shadow.requests >= cfg.abort_min_requests:
        if shadow.errors >= 2 and shadow.error_rate > cfg.abort_error_factor * active.error_rate:
            early.append(f"early abort: Shadow error rate {shadow.error_rate:.1%} ({shadow.errors}/"
                         f"{shadow.requests}) is over {cfg.abort_error_factor:g}× Active's "
                         f"{active.error_rate:.1%} ({active.errors}/{active.requests})")
        if shadow.toxicity_rate > cfg.max_toxicity:
            early.append(f"early abort: Shadow toxicity rate {shadow.toxicity_rate:.1%} is over "
                         f"{cfg.max_toxicity:.1%}")
    if early:
        return CanaryDecision("abort", early, details | {"early_abort": True})

    # 2. Enough queries (paper §5.2: "≥100 queries to shadow for statistical significance").
    # Active needs them too, as the baseline; with a 5 % split it has ~19× more anyway.
    missing = [f"{cfg.min_queries - arm.requests} more {name} queries needed before a decision "
               f"({arm.requests}/{cfg.min_queries})"
               for name, arm in (("Shadow", shadow), ("Active", active)) if arm.requests < cfg.min_queries]
    if missing:
        return CanaryDecision("continue", missing, details)

    # 3. The statistical comparison.
    checks = [_check_errors(active, shadow, cfg), _check_latency(active, shadow, cfg),
              _check_toxicity(shadow, cfg), _check_feedback(active, shadow, cfg)]
    for name, passed, _, stats in checks:
        details[name] = stats | {"passed": passed}
    failed = [reason for _, passed, reason, _ in checks if not passed]
    failed_names = [name for name, passed, _, _ in checks if not passed]
    # Not yet proven no worse is not proven worse: while Shadow's observed error rate is within
    # the margin and only the confidence bound is too wide, collect more queries, up to
    # max_queries (e.g. 1 error in 100 against 0 in 1,900 is inconclusive, not a regression).
    if (failed_names == ["error_rate"] and shadow.error_rate <= active.error_rate + cfg.error_margin
            and shadow.requests < cfg.max_queries):
        return CanaryDecision("continue", [f"inconclusive, collecting more queries (up to {cfg.max_queries}): "
                                           + failed[0]], details)
    if failed:
        return CanaryDecision("abort", failed, details)
    return CanaryDecision("promote", [reason for _, _, reason, _ in checks], details)


_Check = tuple[str, bool, str, dict[str, Any]]


def _check_errors(active: ArmStats, shadow: ArmStats, cfg: CanaryConfig) -> _Check:
    # Paper §5.2: "error rate ≤ active + 5%", judged on the one-sided upper bound of the
    # difference so a lucky small sample cannot pass a worse release.
    z = _NORMAL.inv_cdf(1 - cfg.alpha)
    bound = newcombe_diff_bound(shadow.errors, shadow.requests, active.errors, active.requests, z)
    passed = bound <= cfg.error_margin
    reason = (f"error rate: Shadow {shadow.error_rate:.1%} vs Active {active.error_rate:.1%}, "
              f"upper {1 - cfg.alpha:.0%} bound of the difference {bound:+.1%} "
              f"{'≤' if passed else '>'} margin {cfg.error_margin:.1%}")
    return "error_rate", passed, reason, {
        "difference": shadow.error_rate - active.error_rate, "upper_bound": bound,
        "confidence": 1 - cfg.alpha, "margin": cfg.error_margin}


def _check_latency(active: ArmStats, shadow: ArmStats, cfg: CanaryConfig) -> _Check:
    # The p95 is the SLO, but on ~100 requests it is set by the 5 slowest, so a few outliers
    # can push it over the margin by chance. Latency therefore fails only when the p95 is over
    # the margin AND the rank test says Shadow is significantly slower overall: noise alone
    # does not block a promotion, and a uniformly slower release does.
    a95, s95 = active.latency_p95_ms, shadow.latency_p95_ms
    if a95 is None or s95 is None:
        return "latency", True, "latency: not enough successful requests to compare", {}
    limit = a95 * (1 + cfg.latency_margin)
    p = mann_whitney_p(shadow.latencies_ms, active.latencies_ms)
    over, slower = s95 > limit, p < cfg.alpha
    passed = not (over and slower)
    reason = (f"latency: Shadow p95 {s95:.0f} ms {'>' if over else '≤'} {limit:.0f} ms "
              f"(Active {a95:.0f} ms + {cfg.latency_margin:.0%}); Mann–Whitney p = {p:.3g}, "
              f"{'significantly' if slower else 'not significantly'} slower")
    return "latency", passed, reason, {
        "active_p95_ms": a95, "shadow_p95_ms": s95, "limit_ms": limit, "p95_over_limit": over,
        "mann_whitney_p": p, "alpha": cfg.alpha}


def _check_toxicity(shadow: ArmStats, cfg: CanaryConfig) -> _Check:
    # Paper §5.2: "Toxicity rate (target: ≤ 0.05)"; an absolute limit, not relative to Active.
    passed = shadow.toxicity_rate <= cfg.max_toxicity
    reason = (f"toxicity: Shadow {shadow.toxicity_rate:.1%} {'≤' if passed else '>'} "
              f"{cfg.max_toxicity:.1%}")
    return "toxicity", passed, reason, {"shadow_rate": shadow.toxicity_rate, "limit": cfg.max_toxicity}


def _check_feedback(active: ArmStats, shadow: ArmStats, cfg: CanaryConfig) -> _Check:
    # Paper §5.2: "User satisfaction proxy (e.g., thumbs up/down)". Feedback is sparse, so with
    # fewer than min_feedback scores per arm it is reported and does not block.
    counts = {"active_count": len(active.feedback), "shadow_count": len(shadow.feedback),
              "min_feedback": cfg.min_feedback}
    if min(len(active.feedback), len(shadow.feedback)) < cfg.min_feedback:
        return "feedback", True, (f"feedback: not enough feedback to compare (Active "
                                  f"{len(active.feedback)}, Shadow {len(shadow.feedback)}, "
                                  f"{cfg.min_feedback} each needed)"), counts
    p = welch_p(shadow.feedback, active.feedback)
    passed = p >= cfg.alpha
    reason = (f"feedback: Shadow mean {shadow.feedback_mean:+.2f} vs Active {active.feedback_mean:+.2f}, "
              f"Welch p = {p:.3g}, {'not significantly' if passed else 'significantly'} lower")
    return "feedback", passed, reason, counts | {"welch_p": p, "alpha": cfg.alpha}
