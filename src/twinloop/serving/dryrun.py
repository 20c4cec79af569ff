"""The QA dry run of a release, answered on an isolated copy (paper §5.1; docs/DESIGN.md
"Releasing"): the in-memory request log, the run loop over the cases, and
:func:`run_release_qa`, which builds the isolated engine and stores the report.

Cases, judging, gates and the report are release's (:mod:`twinloop.release.qa`); answering
needs a serving stack, so the run lives here.

"No side effects" (§5.1: ``shadow_copy = deepcopy(shadow)``): the run records answers in a
:class:`DryRunLog` kept in memory, never in the request log, so it adds no request that
feedback could attach to or Shadow could train on. It runs on its own adapter registry and
generation engine (no metrics observers) over the base model it is given, so neither the
served model nor ``/metrics`` sees it; ``twinloop qa`` runs in its own process and the admin
API builds a fresh base-model copy for it. The only write is the report itself, with its
status and audit event, in one transaction at the end: a run killed half-way leaves no trace
and nothing wrong. Errors of single cases are counted, never raised.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twinloop.kernel.clock import now_iso
from twinloop.kernel.config import QaConfig, Settings
from twinloop.kernel.crashpoints import crash_point
from twinloop.kernel.errors import InvalidInputError
from twinloop.kernel.toxicity import ToxicityScorer
from twinloop.knowledge.domains import DomainRegistry
from twinloop.release.promotion import resolve_candidate  # noqa: F401  (re-exported)
from twinloop.release.qa import (
    DEFAULT_GATES,
    CaseResult,
    Gate,
    QaCase,
    QaReport,
    RunSummary,
    build_report,
    error_result,
    load_cases,
    score_answer,
    unique_cases,
)
from twinloop.serving.pipeline import AnswerPipeline, AnswerRequest
from twinloop.serving.release import ServingRelease
from twinloop.serving.requestlog import RequestLog
from twinloop.serving.types import AnswerRecord

if TYPE_CHECKING:  # the engine and the models import torch; this module must not
    from twinloop.foundation.embedder import Embedder
    from twinloop.foundation.model import Foundation
    from twinloop.knowledge.retrieval import Retriever
    from twinloop.release.registry import ReleaseRegistry
    from twinloop.serving.engine import GenerationEngine



# -- isolation -------------------------------------------------------------------------------


class DryRunLog(RequestLog):
    """A request log that keeps the dry run's records in memory and writes nothing.

    Why: the pipeline logs every answer, and a logged answer can receive feedback (which
    reads it back with :meth:`get`), be traced to a release and become a training sample for
    Shadow. QA answers are none of that: they are a side-effect-free evaluation (paper §5.1
    "No side effects"). Subclassing keeps the pipeline's type, and no database is ever
    opened: every method that would touch one is overridden here, and there is no ``db``
    attribute, so a new method of the request log fails loudly instead of writing.

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


def dry_run_pipeline(pipeline: AnswerPipeline, log: DryRunLog | None = None) -> AnswerPipeline:
    """A copy of ``pipeline`` (same retriever, domains, limits and answerability) that logs to ``log``."""
    return AnswerPipeline(pipeline.retriever, pipeline.domains, log if log is not None else DryRunLog(),
                          pipeline.config, max_query_chars=pipeline.max_query_chars,
                          answerability=pipeline.answerability)


def score_pipeline_answer(case: QaCase, record: AnswerRecord, latency_ms: float,
                          toxicity: ToxicityScorer) -> CaseResult:
    """Judge an answer of the pipeline: :func:`~twinloop.release.qa.judge.score_answer` on its
    text (summary and quoted claims: every fact in it is a passage's own words)."""
    return score_answer(case, record, latency_ms, toxicity)


# -- the run ---------------------------------------------------------------------------------


def run_qa(
    cases: Sequence[QaCase],
    *,
    pipeline: AnswerPipeline,
    engine: GenerationEngine,
    candidate: ServingRelease,
    baseline: ServingRelease | None = None,
    cfg: QaConfig,
    toxicity: ToxicityScorer | Callable[[str], float] | None = None,
    route: bool = True,
    max_tokens: int | None = None,
    gates: Sequence[Gate] = DEFAULT_GATES,
    progress: Callable[[int, int], None] | None = None,
) -> QaReport:
    """Answer every case with the candidate (and Active) and judge the results.

    Args:
        cases: The held-out cases (:func:`~twinloop.release.qa.load_cases`); ids must be unique.
        pipeline: Supplies retriever, domains and limits; its request log is NOT used (the
            run logs to a :class:`DryRunLog`), so nothing is written to the database.
        engine: A started engine on the isolated model copy, with no metrics observers.
        candidate: The release under test; its adapters must be resident in ``engine``.
        baseline: The Active release, answering the same cases in the same run; None skips
            the forgetting check and the relative latency limit.
        cfg: Thresholds (paper App. A defaults).
        toxicity: A :class:`~twinloop.kernel.toxicity.ToxicityScorer`, or a classifier
            ``text -> probability``; default the shipped word list.
        route: True answers as users are answered (the release's router picks the domain,
            paper §5.1 ``shadow_copy.answer(case.query)``); False forces each case's domain.
        max_tokens: Answer length; default the serving default.
        gates: The checks to apply (default :data:`~twinloop.release.qa.DEFAULT_GATES`).
        progress: Called with (cases done, cases total) after each case.

    Returns:
        The report; ``report.passed`` is False when any gate failed.

    Raises:
        InvalidInputError: No cases, or duplicate case ids.
    """
    if not cases:
        raise InvalidInputError("no QA cases to run: a gate must not pass on an empty test set")
    unique_cases(list(cases), "cases")
    scorer = toxicity if isinstance(toxicity, ToxicityScorer) else ToxicityScorer(classifier=toxicity)
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
            scorer: ToxicityScorer, route: bool, max_tokens: int | None) -> CaseResult:
    req = AnswerRequest(query=case.query, domain=None if route else case.domain, as_of=case.as_of,
                        jurisdiction=case.jurisdiction, max_tokens=max_tokens)
    t = time.perf_counter()
    try:
        record = pipeline.answer(req, release, engine)
    except Exception as e:  # a failed answer is a measurement (error rate), never a crash
        return error_result(case, release.id, (time.perf_counter() - t) * 1000, f"{type(e).__name__}: {e}")
    return score_pipeline_answer(case, record, (time.perf_counter() - t) * 1000, scorer)


# -- a release's dry run, stored with it -----------------------------------------------------


def run_release_qa(
    rid: str | None = None,
    *,
    registry: ReleaseRegistry,
    foundation: Foundation,
    embedder: Embedder,
    retriever: Retriever,
    domains: DomainRegistry,
    router_json: str,
    index_revision: int,
    settings: Settings,
    actor: str,
    cases_path: Path | None = None,
    max_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Dry-run ``rid`` (default: Shadow) against Active on the held-out cases; store the report.

    Args:
        rid: The candidate; default the Shadow pointer's release.
        registry: Releases, pointers and reports; the report is stored here.
        foundation: The base model the isolated engine runs on: a copy of its own, not the
            one a server answers with (its adapters would become resident there).
        embedder: Builds the releases' routers.
        retriever, domains: What the pipeline retrieves from and the domain policies.
        router_json, index_revision: Record the base release (``registry.ensure_base``) when
            nothing was ever Active, so there is an Active release to compare with.
        settings: Serving, API (query length) and QA sections.
        actor: Who ran it (audit log).
        cases_path: A JSON-lines case file; default each pack's held-out cases.
        max_tokens: Answer length per case; default the serving default.
        progress: Called with (cases done, cases total) after each case.

    Returns:
        The stored report (``passed``, ``gates``, ``failures``, per-domain figures, cases).

    Raises:
        InvalidInputError: No candidate, the candidate is Active, or bad case files.
        IntegrityError: An adapter of either release fails its SHA-256 check.
    """
    from twinloop.serving.adapters import AdapterRegistry
    from twinloop.serving.engine import GenerationEngine
    from twinloop.serving.release import ReleaseLoader

    rid = resolve_candidate(registry, rid)
    active = registry.pointer("active") or registry.ensure_base(router_json, index_revision, foundation.name).id
    if rid == active:
        raise InvalidInputError(f"release {rid} is Active already; QA compares a candidate with Active")
    cases = load_cases(domains, cases_path)
    adapters = AdapterRegistry(foundation)
    loader = ReleaseLoader(registry, adapters, embedder, follow_index=settings.serving.follow_index)
    candidate, baseline = loader.load(rid), loader.load(active)
    pipeline = AnswerPipeline(retriever, domains, DryRunLog(), settings.serving,
                              max_query_chars=settings.api.max_query_chars)
    engine = GenerationEngine(foundation, adapters, settings.serving).start()

    def on_case(done: int, total: int) -> None:
        crash_point("qa.mid_run")
        if progress is not None:
            progress(done, total)

    try:
        report = run_qa(cases, pipeline=pipeline, engine=engine, candidate=candidate, baseline=baseline,
                        cfg=settings.qa, max_tokens=max_tokens, progress=on_case)
    finally:
        engine.stop(drain=False)
    doc = report.to_dict()
    doc["failures"] = report.failures()
    registry.add_report(rid, "qa", report.passed, doc, status="qa_passed" if report.passed else "qa_failed",
                        event="qa.passed" if report.passed else "qa.failed", actor=actor,
                        reason="; ".join(doc["failures"])[:500])
    return doc
