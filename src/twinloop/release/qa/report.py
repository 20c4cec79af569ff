"""The QA report: the gates' verdicts over finished results, stored with the release
(docs/DESIGN.md "Releasing")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twinloop.kernel.clock import now_iso
from twinloop.kernel.config import QaConfig
from twinloop.release.qa.gates import DEFAULT_GATES, Gate, GateResult
from twinloop.release.qa.judge import CaseResult
from twinloop.release.qa.summary import RunSummary


@dataclass
class QaReport:
    """The outcome of a dry run, stored with the release."""

    release_id: str
    baseline_id: str | None
    passed: bool
    gates: list[GateResult]
    per_domain: dict[str, dict[str, Any]]
    """Domain → the candidate's figures plus Active's pass and citation rates."""
    cases: list[CaseResult]
    baseline_cases: list[CaseResult]
    summary: dict[str, Any]
    """The candidate's overall figures (pass rate, citation rate, latency p50/p95, ...)."""
    baseline_summary: dict[str, Any] | None
    thresholds: dict[str, Any]
    """The ``QaConfig`` the gates used."""
    started_at: str
    seconds: float

    @property
    def latency_p50_ms(self) -> float | None:
        return self.summary["latency_p50_ms"]

    @property
    def latency_p95_ms(self) -> float | None:
        return self.summary["latency_p95_ms"]

    def failures(self) -> list[str]:
        """One line per failed gate, e.g. ``"pass_rate: pass_rate 0.420 < 0.660"``."""
        return [f"{g.name}: {g.detail}" for g in self.gates if not g.passed]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return {
            "release_id": self.release_id, "baseline_id": self.baseline_id, "passed": self.passed,
            "gates": [g.to_dict() for g in self.gates], "per_domain": self.per_domain,
            "summary": self.summary, "baseline_summary": self.baseline_summary, "thresholds": self.thresholds,
            "cases": [c.to_dict() for c in self.cases], "baseline_cases": [c.to_dict() for c in self.baseline_cases],
            "started_at": self.started_at, "seconds": self.seconds,
        }


def build_report(candidate: RunSummary, baseline: RunSummary | None, cfg: QaConfig, *,
                 gates: Sequence[Gate] = DEFAULT_GATES, started_at: str | None = None,
                 seconds: float = 0.0) -> QaReport:
    """Run the gates over finished results and assemble the report."""
    verdicts = [g.check(candidate, baseline, cfg) for g in gates]
    base_domains = baseline.by_domain() if baseline is not None else {}
    per_domain = {}
    for domain, mine in candidate.by_domain().items():
        row = mine.figures()
        base = base_domains.get(domain)
        row["baseline_pass_rate"] = base.pass_rate if base is not None else None
        row["baseline_citation_rate"] = base.citation_rate if base is not None else None
        row["pass_rate_change"] = round(mine.pass_rate - base.pass_rate, 4) if base is not None else None
        per_domain[domain] = row
    return QaReport(
        release_id=candidate.release_id, baseline_id=baseline.release_id if baseline is not None else None,
        passed=all(v.passed for v in verdicts), gates=verdicts, per_domain=per_domain,
        cases=list(candidate.results), baseline_cases=list(baseline.results) if baseline is not None else [],
        summary=candidate.figures(), baseline_summary=baseline.figures() if baseline is not None else None,
        thresholds=cfg.model_dump(), started_at=started_at or now_iso(), seconds=round(seconds, 3))
