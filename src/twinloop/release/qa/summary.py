"""One release's QA results over a case set, and the rates the gates read from them.

Latency percentiles are nearest rank (:func:`twinloop.kernel.stats.percentile`), the same p95
as the canary and the rollback trigger (docs/DESIGN.md "Releasing").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twinloop.kernel.stats import percentile
from twinloop.release.qa.judge import CaseResult


@dataclass(frozen=True)
class RunSummary:
    """One release's results over a case set, with the rates the gates read."""

    release_id: str
    results: tuple[CaseResult, ...]

    @property
    def cases(self) -> int:
        return len(self.results)

    @property
    def pass_rate(self) -> float:
        """Passed cases over all cases (a failed answer is not a pass)."""
        return _share(sum(r.passed for r in self.results), self.cases)

    @property
    def citation_rate(self) -> float | None:
        """Cited answers over the cases needing a citation; None when no case needs one."""
        needing = [r for r in self.results if r.cited is not None]
        return _share(sum(bool(r.cited) for r in needing), len(needing)) if needing else None

    @property
    def toxicity(self) -> float:
        """Toxic answers over answers (failed cases produced no text to judge)."""
        answered = [r for r in self.results if r.error is None]
        return _share(sum(r.toxic for r in answered), len(answered))

    @property
    def error_rate(self) -> float:
        return _share(sum(r.error is not None for r in self.results), self.cases)

    @property
    def latency_p50_ms(self) -> float | None:
        """Median over answered cases (nearest rank); None when none was answered."""
        return percentile(self._latencies(), 50)

    @property
    def latency_p95_ms(self) -> float | None:
        """95th percentile over answered cases (nearest rank); None when none was answered."""
        return percentile(self._latencies(), 95)

    def _latencies(self) -> list[float]:
        # A failed case's time says how fast it failed, not how fast the release answers.
        return [r.latency_ms for r in self.results if r.error is None]

    def by_domain(self) -> dict[str, RunSummary]:
        """One summary per domain, in first-seen order."""
        groups: dict[str, list[CaseResult]] = {}
        for r in self.results:
            groups.setdefault(r.domain, []).append(r)
        return {d: RunSummary(self.release_id, tuple(rs)) for d, rs in groups.items()}

    def figures(self) -> dict[str, Any]:
        return {"cases": self.cases, "passed": sum(r.passed for r in self.results), "pass_rate": self.pass_rate,
                "citation_rate": self.citation_rate, "toxicity": self.toxicity, "error_rate": self.error_rate,
                "latency_p50_ms": self.latency_p50_ms, "latency_p95_ms": self.latency_p95_ms}


def _share(n: int, total: int) -> float:
    return round(n / total, 4) if total else 0.0
