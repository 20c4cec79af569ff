"""The QA dry run's cases, judging, gates and report (paper §5.1; docs/DESIGN.md "Releasing").

Before a candidate reaches the canary it answers a held-out set of cases, each with the
answer content it must contain and the sources it must cite; Active answers the same cases
in the same run, so the candidate is compared with what it would replace under the same
load. Gates (paper App. A thresholds, from :class:`~twinloop.kernel.config.QaConfig`): pass
rate, citation rate, toxicity, latency p95, error rate, and no domain answering fewer cases
than under Active (the forgetting check). Any failed gate aborts the promotion.

- :mod:`.cases`: :class:`QaCase` and :func:`load_cases`;
- :mod:`.judge`: judging one answer (:func:`score_answer`, :class:`CaseResult`);
- :mod:`.summary`: one release's results and rates (:class:`RunSummary`);
- :mod:`.gates`: the checks (:data:`DEFAULT_GATES`);
- :mod:`.report`: :class:`QaReport` and :func:`build_report`.

Answering the cases needs a serving stack and lives with it: ``twinloop.serving.dryrun``
runs them on an isolated engine and stores the report with the release.
"""

from twinloop.release.qa.cases import CASES_FILE, QaCase, load_cases, unique_cases
from twinloop.release.qa.gates import (
    DEFAULT_GATES,
    ForgettingGate,
    Gate,
    GateResult,
    LatencyGate,
    RateGate,
)
from twinloop.release.qa.judge import (
    ANSWER_CHARS,
    FAILED_REASONS,
    CaseResult,
    CitedSource,
    JudgedAnswer,
    citation_matches,
    content_ok,
    error_result,
    score_answer,
)
from twinloop.release.qa.report import QaReport, build_report
from twinloop.release.qa.summary import RunSummary

__all__ = [
    "ANSWER_CHARS", "CASES_FILE", "DEFAULT_GATES", "FAILED_REASONS", "CaseResult", "CitedSource", "ForgettingGate",
    "Gate", "GateResult", "JudgedAnswer", "LatencyGate", "QaCase", "QaReport", "RateGate", "RunSummary",
    "build_report", "citation_matches", "content_ok", "error_result", "load_cases", "score_answer", "unique_cases",
]
