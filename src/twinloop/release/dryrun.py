"""Running the QA dry run of a release on an isolated copy, and storing its report with the
release (issue 6 point 3; paper §5.1 ``shadow_copy = deepcopy(shadow)``).

Isolation: the run builds its own adapter registry and generation engine (no metrics
observers) on the given runtime's base model, and its own pipeline logging to memory
(:class:`~twinloop.release.qa.DryRunLog`). ``twinloop qa`` runs in its own process, so its
base is a separate copy; the admin API builds a fresh :class:`~twinloop.runtime.Runtime`
for the same reason. The only write is the report itself, with its status and audit event,
in one transaction at the end: a run killed half-way leaves no trace but nothing wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twinloop.kernel.crashpoints import crash_point
from twinloop.kernel.errors import InvalidInputError


def resolve_candidate(registry, rid: str | None) -> str:
    """``rid``, or the Shadow pointer's release when none is named."""
    if rid:
        registry.get(rid)
        return rid
    shadow = registry.pointer("shadow")
    if shadow is None:
        raise InvalidInputError("no Shadow candidate yet: train one (twinloop train) or name a release")
    return shadow


def run_release_qa(runtime, rid: str | None = None, *, actor: str, cases_path: Path | None = None,
                   max_tokens: int | None = None, progress: Callable[[int, int], None] | None = None
                   ) -> dict[str, Any]:
    """Dry-run ``rid`` (default: Shadow) against Active on the held-out cases; store the report.

    Returns:
        The stored report (``passed``, ``gates``, ``failures``, per-domain figures, cases).

    Raises:
        InvalidInputError: No candidate, the candidate is Active, or bad case files.
        IntegrityError: An adapter of either release fails its SHA-256 check.
    """
    from twinloop.release.qa import DryRunLog, load_cases, run_qa
    from twinloop.serving.adapters import AdapterRegistry
    from twinloop.serving.engine import GenerationEngine
    from twinloop.serving.pipeline import AnswerPipeline
    from twinloop.serving.release import ReleaseLoader

    settings = runtime.settings
    registry = runtime.releases
    rid = resolve_candidate(registry, rid)
    active = registry.pointer("active") or registry.ensure_base(
        runtime.router.spec.to_json(), runtime.knowledge.current_revision(), runtime.foundation.name).id
    if rid == active:
        raise InvalidInputError(f"release {rid} is Active already; QA compares a candidate with Active")
    cases = load_cases(runtime.domains, cases_path)
    adapters = AdapterRegistry(runtime.foundation)
    loader = ReleaseLoader(registry, adapters, runtime.embedder, follow_index=settings.serving.follow_index)
    candidate, baseline = loader.load(rid), loader.load(active)
    pipeline = AnswerPipeline(runtime.retriever, runtime.domains, DryRunLog(), settings.serving,
                              max_query_chars=settings.api.max_query_chars)
    engine = GenerationEngine(runtime.foundation, adapters, settings.serving).start()

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
