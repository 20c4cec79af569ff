"""The QA dry run: held-out cases per domain, answered on an isolated copy, judged by gates.

Issue 6 point 3, paper §5.1, DESIGN.md "Releasing". Before a candidate reaches the canary it
answers a held-out set T of cases, each with the answer content it must contain and the
sources it must cite. Active answers the same cases in the same run, so the candidate is
compared with what it would replace under the same load. Gates (paper App. A thresholds, from
:class:`~twinloop.kernel.config.QaConfig`): pass rate, citation rate, toxicity, latency p95, error
rate, and no domain answering fewer cases than under Active (the forgetting check). Any failed
gate aborts the promotion.

"No side effects" (§5.1: ``shadow_copy = deepcopy(shadow)``): the run records answers in a
:class:`DryRunLog` kept in memory, never in the request log, so it adds no request that
feedback could attach to or Shadow could train on; it writes nothing to the database. The
caller supplies an engine with no metrics observers on its own model copy, so neither the
served model nor ``/metrics`` sees the run. Errors of single cases are counted, never raised.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from twinloop.kernel.clock import now_iso
from twinloop.kernel.config import QaConfig
from twinloop.kernel.errors import InvalidInputError, UnknownDomainError
from twinloop.kernel.stats import percentile
from twinloop.kernel.text import normalise_text
from twinloop.knowledge.domains import DEFAULT_PACKS, DomainRegistry, load_pack
from twinloop.knowledge.sources.reading import parse_jsonl, read_text
from twinloop.learning.filters import ToxicityFilter
from twinloop.serving import verify
from twinloop.serving.pipeline import AnswerPipeline, AnswerRequest
from twinloop.serving.release import ServingRelease
from twinloop.serving.requestlog import FeedbackRecord, RequestLog
from twinloop.serving.types import AnswerRecord, Citation

if TYPE_CHECKING:  # the engine imports torch; this module must not
    from twinloop.serving.engine import GenerationEngine

CASES_FILE = "qa_cases.jsonl"
"""Name of a default pack's held-out cases, next to its ``pack.yaml``."""
ANSWER_CHARS = 300
"""Answer text kept per case in a report: enough to see what went wrong, small enough that
a report stored with every release stays a few kilobytes per case."""
FAILED_REASONS = ("timeout", "cancelled")
"""Engine finish reasons that count as errors: the answer was cut off, not completed."""

# -- cases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QaCase:
    """One held-out question with what a correct answer contains and must cite.

    Attributes:
        id: Unique within a run; names the case in reports.
        domain: The domain the case tests (per-domain rates, forgetting check).
        query: The question, as a user would ask it.
        expected: Key phrases; the answer's content passes when it contains ANY of them,
            compared after NFKC, case folding and whitespace collapsing (so "One  Month"
            matches "one month"). Alternatives cover wording a correct answer may use.
        citations: Required references; the answer passes citations when one of its
            citations' uri or label contains one of them as a whole token (see
            :func:`citation_matches`). Empty: no particular source is required.
        needs_citation: Counts towards the citation rate (paper §5.1 ``case.needs_citation``):
            the answer must cite at least one retrieved source. Loaded cases default to
            their domain's ``citations_required``.
        as_of: ISO date the question is asked about (default today).
        jurisdiction: Only sources of this jurisdiction, e.g. "DE".
        source: The document the case was written from (provenance; not checked).
    """

    id: str
    domain: str
    query: str
    expected: tuple[str, ...]
    citations: tuple[str, ...] = ()
    needs_citation: bool = True
    as_of: str | None = None
    jurisdiction: str | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_CASE_FIELDS = frozenset(f.name for f in dataclasses.fields(QaCase))


def load_cases(domains: DomainRegistry | Sequence[str], path: Path | str | None = None) -> list[QaCase]:
    """Held-out cases: the packaged ones of ``domains``, or those of a user JSONL file.

    Args:
        domains: A registry (its default packs' packaged cases; its user domains have none
            and need ``path``) or default pack names.
        path: A JSON-lines file of cases, one object per line with the fields of
            :class:`QaCase` (``citations``, ``needs_citation``, ``as_of``, ``jurisdiction``
            and ``source`` optional); replaces the packaged cases. Every case's domain must
            be one of ``domains``.

    Raises:
        UnknownDomainError: A name that is no default pack, or a case of an unknown domain.
        InvalidInputError: A malformed line, naming the file, line and field; duplicate ids.
    """
    policy = _citation_policy(domains)
    if path is not None:
        path = Path(path)
        return _parse_cases(read_text(path), str(path), policy)
    cases: list[QaCase] = []
    for name in (n for n in policy if n in DEFAULT_PACKS):  # only shipped packs ship cases
        res = resources.files("twinloop.packs").joinpath(name, CASES_FILE)
        if res.is_file():
            cases += _parse_cases(res.read_text(encoding="utf-8"), f"twinloop/packs/{name}/{CASES_FILE}", policy)
    return _unique(cases, "packaged cases")


def _citation_policy(domains: DomainRegistry | Sequence[str]) -> dict[str, bool]:
    """Known domain → its ``citations_required`` (the default of ``needs_citation``)."""
    if isinstance(domains, DomainRegistry):
        return {name: spec.citations_required for name, spec in domains.all().items()}
    if isinstance(domains, str):  # a bare name would be iterated letter by letter
        raise InvalidInputError(f"domains = {domains!r}: give a list of names or a DomainRegistry")
    # Without a registry only the shipped packs are known; load_pack names the bad one.
    return {name: load_pack(name).citations_required for name in domains}


def _parse_cases(text: str, where: str, policy: Mapping[str, bool]) -> list[QaCase]:
    cases = []
    for n, obj in parse_jsonl(text, where):
        at = f"{where} line {n}"
        unknown = sorted(set(obj) - _CASE_FIELDS)
        if unknown:
            raise InvalidInputError(f"{at}: unknown field {unknown[0]!r}")
        domain = _text(obj, "domain", at)
        if domain not in policy:
            raise UnknownDomainError(f"{at}: unknown domain {domain!r}; known: {', '.join(sorted(policy))}")
        needs = obj.get("needs_citation", policy[domain])
        if not isinstance(needs, bool):
            raise InvalidInputError(f"{at}: needs_citation = {needs!r}: expected true or false")
        as_of = _optional_text(obj, "as_of", at)
        if as_of is not None:
            try:
                date.fromisoformat(as_of)
            except ValueError as e:
                raise InvalidInputError(f"{at}: as_of = {as_of!r}: expected an ISO date YYYY-MM-DD") from e
        cases.append(QaCase(
            id=_text(obj, "id", at), domain=domain, query=_text(obj, "query", at),
            expected=_phrases(obj, "expected", at, required=True),
            citations=_phrases(obj, "citations", at, required=False), needs_citation=needs, as_of=as_of,
            jurisdiction=_optional_text(obj, "jurisdiction", at), source=_optional_text(obj, "source", at)))
    return _unique(cases, where)


def _text(obj: Mapping[str, Any], key: str, at: str) -> str:
    if key not in obj:
        raise InvalidInputError(f"{at}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{at}: {key} = {value!r}: expected a non-empty string")
    return value.strip()


def _optional_text(obj: Mapping[str, Any], key: str, at: str) -> str | None:
    return None if obj.get(key) is None else _text(obj, key, at)


def _phrases(obj: Mapping[str, Any], key: str, at: str, required: bool) -> tuple[str, ...]:
    value = obj.get(key, None if required else [])
    ok = isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)
    if not ok or (required and not value):
        need = "a non-empty list" if required else "a list"
        raise InvalidInputError(f"{at}: {key} = {value!r}: expected {need} of non-empty strings")
    return tuple(v.strip() for v in value)


def _unique(cases: list[QaCase], where: str) -> list[QaCase]:
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            raise InvalidInputError(f"{where}: case id {case.id!r} appears twice")
        seen.add(case.id)
    return cases


# -- judging one answer ----------------------------------------------------------------------


def content_ok(answer: str, expected: Iterable[str]) -> bool:
    """True when ``answer`` contains any expected phrase (NFKC, case-folded, whitespace
    collapsed on both sides)."""
    text = normalise_text(answer)
    return any(normalise_text(phrase) in text for phrase in expected)


def citation_matches(ref: str, citation: Citation) -> bool:
    """True when ``ref`` occurs, case-insensitively and as a whole token, in the citation's
    uri or label.

    "Whole token" means the characters around the occurrence are not letters or digits
    where ``ref`` itself begins or ends with one, so ``...#art_35-1`` does not match
    ``...#art_35-10`` and "GDPR Art. 1" does not match "GDPR Art. 17(1)", while a full uri,
    a uri prefix such as ``...#art_35`` or a label such as "GDPR Art. 17(1)" all match.
    """
    ref = ref.strip()
    if not ref:
        return False
    pattern = re.escape(ref.casefold())
    if ref[0].isalnum():
        pattern = r"(?<![^\W_])" + pattern
    if ref[-1].isalnum():
        pattern += r"(?![^\W_])"
    return any(re.search(pattern, s.casefold()) for s in (citation.uri or "", citation.label or ""))


@dataclass(frozen=True)
class CaseResult:
    """How one release answered one case.

    ``passed`` needs the content, the required citations and no error. ``cited`` (≥ 1
    citation) feeds the citation rate and is None when the case needs no citation.
    """

    case_id: str
    domain: str
    release_id: str
    passed: bool
    content_ok: bool
    citations_ok: bool
    cited: bool | None
    toxic: bool
    toxicity: float
    latency_ms: float
    error: str | None = None
    query: str = ""
    answer: str = ""
    """What the model wrote (without the pipeline's UNVERIFIED notice; ``status`` says
    whether there was one), cut to :data:`ANSWER_CHARS` characters."""
    citations: tuple[str, ...] = ()
    """uri (or label) of every citation the answer carried."""
    verified: bool | None = None
    status: str | None = None
    routed: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def score_answer(case: QaCase, record: AnswerRecord, latency_ms: float, toxicity: ToxicityFilter) -> CaseResult:
    """Judge one answer record against its case."""
    text = _model_text(record.text)
    content = content_ok(text, case.expected)
    cites = not case.citations or any(citation_matches(r, c) for r in case.citations for c in record.citations)
    error = None
    if record.finish_reason in FAILED_REASONS:
        error = f"generation ended early (finish_reason={record.finish_reason!r})"
    score = toxicity.score(text)
    return CaseResult(
        case_id=case.id, domain=case.domain, release_id=record.release_id,
        passed=content and cites and error is None, content_ok=content, citations_ok=cites,
        cited=(bool(record.citations) and error is None) if case.needs_citation else None,
        # The intake filter's own rule (score above its threshold), so an answer QA calls
        # toxic is one the filter would refuse to train on.
        toxic=score > toxicity.threshold, toxicity=round(score, 4), latency_ms=round(latency_ms, 3), error=error,
        query=case.query, answer=_truncate(text), citations=tuple(c.uri or c.label for c in record.citations),
        verified=record.verified, status=record.status, routed=tuple(record.domains))


def error_result(case: QaCase, release_id: str, latency_ms: float, error: str) -> CaseResult:
    """A case whose answer failed with ``error``: not passed, not cited, not toxic."""
    return CaseResult(case_id=case.id, domain=case.domain, release_id=release_id, passed=False, content_ok=False,
                      citations_ok=False, cited=False if case.needs_citation else None, toxic=False, toxicity=0.0,
                      latency_ms=round(latency_ms, 3), error=error, query=case.query)


def _model_text(text: str) -> str:
    # The pipeline puts its own UNVERIFIED notice before an unsupported answer; judge only
    # what the model wrote (the notice would dilute the toxicity share and could match).
    for notice in (verify.UNVERIFIED_NOTICE, verify.NO_SOURCE_NOTICE):
        if text.startswith(notice):
            return text[len(notice):].lstrip()
    return text


def _truncate(text: str, limit: int = ANSWER_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- one release's results -------------------------------------------------------------------


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
        return percentile([r.latency_ms for r in self.results if r.error is None], 50)

    @property
    def latency_p95_ms(self) -> float | None:
        """95th percentile over answered cases; None when none was answered."""
        return percentile([r.latency_ms for r in self.results if r.error is None], 95)

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


# -- gates -----------------------------------------------------------------------------------


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
    """A check on the candidate's results (STYLE.md §5): it returns its verdict and reads
    nothing but its arguments."""

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

    The forgetting check of issue 6: an adapter trained on new law must not lose the
    medicine it answered before. Its value is the largest drop over the domains.
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
"""Paper §5.1 / App. A thresholds plus the forgetting check (issue 6); all read ``QaConfig``."""


# -- the report ------------------------------------------------------------------------------


@dataclass
class QaReport:
    """The outcome of a dry run, stored with the release (issue 6 point 3)."""

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



# -- isolation -------------------------------------------------------------------------------


class DryRunLog(RequestLog):
    """A request log that keeps the dry run's records in memory and writes nothing.

    Why: the pipeline logs every answer, and a logged answer can receive feedback, be traced
    to a release and become a training sample for Shadow (issue 5). QA answers are none of
    that: they are a side-effect-free evaluation (paper §5.1 "No side effects"). Subclassing
    keeps the pipeline's type, and no database is ever opened: every method that would touch
    one is overridden here, so a new pipeline call fails loudly instead of writing.

    Args:
        max_records: Records kept, oldest dropped first; bounded because a long-lived
            pipeline (mirrored canary traffic) logs here for as long as the server runs.
    """

    def __init__(self, max_records: int = 10_000) -> None:  # no super().__init__: it opens the database
        if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1:
            raise InvalidInputError(f"max_records = {max_records!r}: must be a positive integer")
        self.records: deque[dict[str, Any]] = deque(maxlen=max_records)
        self._lock = threading.Lock()

    def record(self, **fields: Any) -> None:  # type: ignore[override]
        with self._lock:
            self.records.append(dict(fields))

    def get(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            return next((r for r in self.records if r.get("request_id") == request_id), None)

    def add_feedback(self, request_id: str, score: float, correction: str | None = None,
                     actor: str | None = None) -> FeedbackRecord:
        raise InvalidInputError(f"request {request_id!r} is a QA dry-run answer; it takes no feedback")

    def feedback_joined(self, status: str | None = None, limit: int = 1000,
                        feedback_id: int | None = None) -> list[dict[str, Any]]:
        return []

    def set_feedback_status(self, feedback_id: int, status: str) -> None:
        raise InvalidInputError(f"feedback {feedback_id}: a QA dry run has no feedback")


def dry_run_pipeline(pipeline: AnswerPipeline, log: DryRunLog | None = None) -> AnswerPipeline:
    """A copy of ``pipeline`` (same retriever, domains and limits) that logs to ``log``."""
    return AnswerPipeline(pipeline.retriever, pipeline.domains, log if log is not None else DryRunLog(),
                          pipeline.config, max_query_chars=pipeline.max_query_chars)


# -- the run ---------------------------------------------------------------------------------


def run_qa(
    cases: Sequence[QaCase],
    *,
    pipeline: AnswerPipeline,
    engine: GenerationEngine,
    candidate: ServingRelease,
    baseline: ServingRelease | None = None,
    cfg: QaConfig,
    toxicity: ToxicityFilter | Callable[[str], float] | None = None,
    route: bool = True,
    max_tokens: int | None = None,
    gates: Sequence[Gate] = DEFAULT_GATES,
    progress: Callable[[int, int], None] | None = None,
) -> QaReport:
    """Answer every case with the candidate (and Active) and judge the results.

    Args:
        cases: The held-out cases (:func:`load_cases`); ids must be unique.
        pipeline: Supplies retriever, domains and limits; its request log is NOT used (the
            run logs to a :class:`DryRunLog`), so nothing is written to the database.
        engine: A started engine on the isolated model copy, with no metrics observers.
        candidate: The release under test; its adapters must be resident in ``engine``.
        baseline: The Active release, answering the same cases in the same run; None skips
            the forgetting check and the relative latency limit.
        cfg: Thresholds (paper App. A defaults).
        toxicity: A :class:`ToxicityFilter`, or a classifier ``text -> probability``;
            default the shipped word list.
        route: True answers as users are answered (the release's router picks the domain,
            paper §5.1 ``shadow_copy.answer(case.query)``); False forces each case's domain.
        max_tokens: Answer length; default the serving default.
        gates: The checks to apply (default :data:`DEFAULT_GATES`).
        progress: Called with (cases done, cases total) after each case.

    Returns:
        The report; ``report.passed`` is False when any gate failed.

    Raises:
        InvalidInputError: No cases, or duplicate case ids.
    """
    if not cases:
        raise InvalidInputError("no QA cases to run: a gate must not pass on an empty test set")
    _unique(list(cases), "cases")
    scorer = toxicity if isinstance(toxicity, ToxicityFilter) else ToxicityFilter(classifier=toxicity)
    isolated = dry_run_pipeline(pipeline)
    started_at, t0 = now_iso(), time.perf_counter()
    releases = [candidate] if baseline is None else [candidate, baseline]
    results: list[list[CaseResult]] = [[] for _ in releases]
    for i, case in enumerate(cases):
        # Alternate which release answers first, so warm-up and load drift fall on both alike
        # (the latency gate compares their p95s).
        order = list(enumerate(releases))
        if i % 2:
            order.reverse()
        for slot, release in order:
            results[slot].append(_answer(isolated, engine, release, case, scorer, route, max_tokens))
        if progress is not None:
            progress(i + 1, len(cases))
    cand = RunSummary(candidate.id, tuple(results[0]))
    base = RunSummary(baseline.id, tuple(results[1])) if baseline is not None else None
    return build_report(cand, base, cfg, gates=gates, started_at=started_at, seconds=time.perf_counter() - t0)


def _answer(pipeline: AnswerPipeline, engine: GenerationEngine, release: ServingRelease, case: QaCase,
            scorer: ToxicityFilter, route: bool, max_tokens: int | None) -> CaseResult:
    req = AnswerRequest(query=case.query, domain=None if route else case.domain, as_of=case.as_of,
                        jurisdiction=case.jurisdiction, max_tokens=max_tokens)
    t = time.perf_counter()
    try:
        record = pipeline.answer(req, release, engine)
    except Exception as e:  # a failed answer is a measurement (error rate), never a crash
        return error_result(case, release.id, (time.perf_counter() - t) * 1000, f"{type(e).__name__}: {e}")
    return score_answer(case, record, (time.perf_counter() - t) * 1000, scorer)
