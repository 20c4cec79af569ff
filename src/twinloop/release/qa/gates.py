"""The QA gates: checks that a candidate's results must pass before its canary (paper §5.1).

Thresholds are paper App. A's, read from :class:`~twinloop.kernel.config.QaConfig`: pass
rate, citation rate, toxicity, latency p95 and error rate, plus the forgetting check (no
domain answers fewer cases than under Active). Any failed gate aborts the promotion
(docs/DESIGN.md "Releasing").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from twinloop.kernel.config import QaConfig
from twinloop.release.qa.summary import RunSummary


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict: the measured value, the threshold it was held to, and why."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Gate(Protocol):
    """A check on the candidate's results: it returns its verdict and reads nothing but its
    arguments, so a report can be rebuilt from stored results."""

    name: str

    def check(self, candidate: RunSummary, baseline: RunSummary | None, cfg: QaConfig) -> GateResult: ...


@dataclass(frozen=True)
class RateGate:
    """``candidate.<metric>`` against ``cfg.<setting>``: at least it, or at most it."""

    name: str
    metric: str
    setting: str
    at_least: bool

    def check(self, candidate: RunSummary, baseline: RunSummary | None, cfg: QaConfig) -> GateResult:
        value = getattr(candidate, self.metric)
        threshold = float(getattr(cfg, self.setting))
        if value is None:
            return GateResult(self.name, None, threshold, True, f"no case counts towards {self.metric}")
        ok = value >= threshold if self.at_least else value <= threshold
        op = (">=" if ok else "<") if self.at_least else ("<=" if ok else ">")
        return GateResult(self.name, value, threshold, ok, f"{self.metric} {value:.3f} {op} {threshold:.3f}")


@dataclass(frozen=True)
class LatencyGate:
    """p95 at most ``max(cfg.latency_p95_ms, cfg.latency_factor × Active's p95)``.

    Active's p95 comes from the same run (see ``QaConfig.latency_factor`` for why).
    """

    name: str = "latency_p95"

    def check(self, candidate: RunSummary, baseline: RunSummary | None, cfg: QaConfig) -> GateResult:
        base_p95 = baseline.latency_p95_ms if baseline is not None else None
        limit = cfg.latency_p95_ms
        why = f"paper limit {cfg.latency_p95_ms:.0f} ms"
        if base_p95 is not None and cfg.latency_factor * base_p95 > limit:
            limit = round(cfg.latency_factor * base_p95, 3)
            why = f"{cfg.latency_factor:g} × Active's p95 {base_p95:.0f} ms"
        p95 = candidate.latency_p95_ms
        if p95 is None:
            return GateResult(self.name, None, limit, True, "no answered case to time")
        ok = p95 <= limit
        return GateResult(self.name, p95, limit, ok, f"p95 {p95:.0f} ms {'<=' if ok else '>'} {limit:.0f} ms ({why})")


@dataclass(frozen=True)
class ForgettingGate:
    """In every domain, candidate pass rate ≥ Active's − ``cfg.regression_tolerance``.

    The forgetting check: an adapter trained on new law must not lose the medicine it
    answered before. Its value is the largest drop over the domains.
    """

    name: str = "forgetting"

    def check(self, candidate: RunSummary, baseline: RunSummary | None, cfg: QaConfig) -> GateResult:
        tol = cfg.regression_tolerance
        if baseline is None:
            return GateResult(self.name, None, tol, True, "no Active release to compare with")
        base = baseline.by_domain()
        drops = {}
        for domain, mine in candidate.by_domain().items():
            if domain in base:
                drops[domain] = (round(base[domain].pass_rate - mine.pass_rate, 4), mine.pass_rate,
                                 base[domain].pass_rate)
        worst = max((d for d, _, _ in drops.values()), default=0.0)
        # A small epsilon so rates that differ only by float rounding are not a regression.
        bad = {d: v for d, v in drops.items() if v[0] > tol + 1e-9}
        if bad:
            detail = "; ".join(f"{d} pass rate {c:.3f} < Active's {b:.3f} - {tol:.3f}" for d, (_, c, b) in bad.items())
        else:
            detail = f"no domain dropped more than {tol:.3f} (worst {worst:+.3f})"
        return GateResult(self.name, worst, tol, not bad, detail)


DEFAULT_GATES: tuple[Gate, ...] = (
    RateGate("pass_rate", "pass_rate", "pass_rate", at_least=True),
    RateGate("citation_rate", "citation_rate", "citation_rate", at_least=True),
    RateGate("toxicity", "toxicity", "toxicity", at_least=False),
    LatencyGate(),
    RateGate("error_rate", "error_rate", "error_rate", at_least=False),
    ForgettingGate(),
)
"""Paper §5.1 / App. A thresholds plus the forgetting check; all read ``QaConfig``."""
