"""The serving facade: what the HTTP API and the CLI call to answer (the Active loop).

Owns the process's engine, adapter registry, request log and release control (Active,
canary, breaker, rollback watch: ``serving/control.py``). Route functions translate HTTP to
these calls and errors to status codes; no business logic lives in them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from twinloop import __version__
from twinloop.kernel.errors import InvalidInputError, TwinLoopError
from twinloop.kernel.toxicity import ToxicityScorer
from twinloop.knowledge.store import IngestReport
from twinloop.runtime import Runtime
from twinloop.serving.control import ReleaseControl
from twinloop.serving.engine import EngineStoppedError, QueueFullError
from twinloop.serving.pipeline import AnswerPipeline, AnswerRequest
from twinloop.serving.release import ReleaseLoader, ServingRelease
from twinloop.serving.requestlog import RequestLog
from twinloop.serving.types import AnswerRecord, GenRequest, check_text, new_request_id

log = logging.getLogger(__name__)

MODEL_ID = "twinloop"
"""OpenAI model id of the routed pipeline; ``twinloop:<domain>`` forces a domain."""


def counts_against_release(error: BaseException | None) -> bool:
    """Whether a request's failure says something about the release that served it.

    Only server-side failures do (docs/DESIGN.md "Serving": the breaker and the rollback watch
    judge the release). The caller's own mistakes (``InvalidInputError`` and its kinds: bad
    values, unknown domain or adapter, token limits) would let any client open the breaker
    for everyone or roll a good release back; load shedding (queue full), a stopping engine
    and a client that went away (a cancelled task, a closed stream: ``CancelledError`` or
    ``GeneratorExit``, neither an ``Exception``) say nothing about the release either.
    """
    if error is None or not isinstance(error, Exception):
        return False
    return not isinstance(error, (InvalidInputError, QueueFullError, EngineStoppedError))


class BreakerOpenError(TwinLoopError):
    """The circuit breaker is open and no fallback could be given (the API answers 503)."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"the service is degraded: circuit breaker open after repeated failures; "
                         f"retry in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


def audit_ingest(runtime: Runtime, report: IngestReport, *, actor: str, via: str) -> None:
    """One audit event per ingest that changed the index (duplicates-only ingests change nothing)."""
    if report.revision is None:
        return
    runtime.events.append("knowledge.ingested", actor=actor, subject=report.domain, reason=f"via {via}",
                          data={"revision": report.revision, "added": report.added,
                                "skipped_duplicates": report.skipped_duplicates, "chunks": report.chunks})


class Service:
    """One serving process: Active release, engine, pipeline, request log."""

    def __init__(self, runtime: Runtime) -> None:
        from twinloop.serving.adapters import AdapterRegistry
        from twinloop.serving.engine import GenerationEngine

        self.runtime = runtime
        self.settings = runtime.settings
        self.started_at = time.time()
        self.requestlog = RequestLog(runtime.db, salt=self.settings.canary.salt)
        self.adapters = AdapterRegistry(runtime.foundation)
        self.engine = GenerationEngine(runtime.foundation, self.adapters, self.settings.serving)
        from twinloop.serving.memory import CorrectionMemory

        self.memory = CorrectionMemory(runtime.corrections, runtime.embedder, runtime.lineage)
        self.pipeline = AnswerPipeline(runtime.retriever, runtime.domains, self.requestlog, self.settings.serving,
                                       max_query_chars=self.settings.api.max_query_chars, memory=self.memory)
        # Mirror traffic (canary mode "mirror") is answered and thrown away: its pipeline
        # logs to memory only, so the request log keeps one record per user request.
        from twinloop.serving.dryrun import DryRunLog, dry_run_pipeline

        self._mirror_pipeline = dry_run_pipeline(self.pipeline, DryRunLog())
        self._mirror_tasks: set[asyncio.Task] = set()
        registry = runtime.releases
        base = registry.ensure_base(runtime.router.spec.to_json(), runtime.knowledge.current_revision(),
                                    runtime.foundation.name)
        loader = ReleaseLoader(registry, self.adapters, runtime.embedder, follow_index=self.settings.serving.follow_index)
        self.control = ReleaseControl(self.settings, registry, runtime.domains, loader,
                                      active_id=registry.pointer("active") or base.id)
        self._toxicity = ToxicityScorer()  # canary arms compare toxicity (paper §5.2)
        self._record_config()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.engine.start()
        self.control.start()

    def stop(self) -> None:
        self.control.stop()
        self.engine.stop(drain=True)

    def _record_config(self) -> None:
        """Audit a configuration change: one event when the settings this server starts with
        differ from the last recorded ones (API keys left out)."""
        doc = self.settings.model_dump(mode="json", exclude={"api": {"api_keys", "api_key_hashes"}})
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
        last = self.runtime.events.list(limit=1, action="config.loaded")
        if last and last[0].data.get("digest") == digest:
            return
        self.runtime.events.append("config.loaded", actor="system", subject=None,
                                   reason="first start" if not last else "configuration changed",
                                   data={"digest": digest, "previous": last[0].data.get("digest") if last else None})

    # -- releases ----------------------------------------------------------------------------

    @property
    def active(self) -> ServingRelease:
        """The Active release; a request reads this once, at admission, and keeps it."""
        return self.control.active

    # -- answering ---------------------------------------------------------------------------

    def _admit(self, req: AnswerRequest) -> tuple[ServingRelease, str | None]:
        check_text(req.query, "query")  # before the breaker: a bad question is the caller's, not a probe
        release, arm = self.control.pin(req.user_id)
        if not self.control.admit(release, arm):
            raise BreakerOpenError(self.control.breaker.retry_after())
        return release, arm

    def _observe(self, release: ServingRelease, arm: str | None, started: float,
                 record: AnswerRecord | dict | None,
                 error: BaseException | None) -> None:
        """Account the outcome of a request: client errors (4xx), load shedding (429) and
        clients that went away say nothing about a release's health and are left out
        (:func:`counts_against_release`)."""
        if error is not None and not counts_against_release(error):
            return
        doc = record if isinstance(record, dict) or record is None else record.to_dict()  # streams carry dicts
        ok = error is None and doc is not None and doc["finish_reason"] != "timeout"
        toxic = bool(doc is not None and self._toxicity.score(doc["text"]) > self._toxicity.threshold)
        self.control.observe(release, arm, ok=ok, latency_ms=(time.perf_counter() - started) * 1000, toxic=toxic,
                             request_id=doc["request_id"] if doc is not None else None)

    def answer(self, req: AnswerRequest) -> AnswerRecord:
        """Blocking answer (CLI, benchmarks)."""
        try:
            release, arm = self._admit(req)
        except BreakerOpenError:
            return self._fallback(req)
        started = time.perf_counter()
        try:
            self.control.faults.apply(release.id)
            record = self.pipeline.answer(req, release, self.engine)
        except BaseException as e:
            self._observe(release, arm, started, None, e)
            raise
        self._observe(release, arm, started, record, None)
        return record

    async def answer_async(self, req: AnswerRequest) -> AnswerRecord:
        try:
            release, arm = self._admit(req)
        except BreakerOpenError:
            return await asyncio.to_thread(self._fallback, req)
        started = time.perf_counter()
        self._mirror(req)
        try:
            await asyncio.to_thread(self.control.faults.apply, release.id)
            record = await self.pipeline.answer_async(req, release, self.engine)
        except BaseException as e:
            self._observe(release, arm, started, None, e)
            raise
        self._observe(release, arm, started, record, None)
        return record

    def prepare_stream(self, req: AnswerRequest):
        """Validate and retrieve now (so errors become a 4xx before streaming starts)."""
        release, arm = self._admit(req)
        started = time.perf_counter()
        try:
            self.control.faults.apply(release.id)
            prep = self.pipeline.prepare(req, release)
        except BaseException as e:
            self._observe(release, arm, started, None, e)
            raise
        prep.arm = arm  # type: ignore[attr-defined]  # read back in answer_stream
        return prep

    async def answer_stream(self, prepared) -> AsyncIterator[dict]:
        arm = getattr(prepared, "arm", None)
        record = None
        try:
            async for event in self.pipeline.answer_stream(prepared, self.engine):
                if event.get("type") == "answer":
                    record = event["record"]
                yield event
        except BaseException as e:
            self._observe(prepared.release, arm, prepared.started, None, e)
            raise
        self._observe(prepared.release, arm, prepared.started, record, None)

    def _mirror(self, req: AnswerRequest) -> None:
        """Canary mirror mode (paper §5.2): the candidate answers a copy of this request in
        the background; its answer is recorded as a canary observation, never returned."""
        target = self.control.mirror_target(req.user_id)
        if target is None:
            return
        copy = AnswerRequest(query=req.query, user_id=req.user_id, domain=req.domain, as_of=req.as_of,
                             jurisdiction=req.jurisdiction, max_tokens=req.max_tokens)

        async def shadow() -> None:
            started = time.perf_counter()
            try:
                record = await self._mirror_pipeline.answer_async(copy, target, self.engine)
            except BaseException as e:
                self._observe(target, "shadow", started, None, e)
                return
            self._observe(target, "shadow", started, record, None)

        task = asyncio.get_running_loop().create_task(shadow())
        self._mirror_tasks.add(task)
        task.add_done_callback(self._mirror_tasks.discard)

    def _fallback(self, req: AnswerRequest) -> AnswerRecord:
        """The breaker is open (paper §5.5): no generation; say so, and list the passages that
        match the question as possibly related (retrieval does not use the model)."""
        wait = self.control.breaker.retry_after()
        prep = self.pipeline.prepare(req, self.active)
        summary = (f"The assistant is temporarily unavailable: after repeated failures its circuit breaker is "
                   f"open (retry in about {wait:.0f} s). No answer was generated; the passages below match "
                   "your question and are listed as possibly related, not as an answer.")
        listed = [{"n": i, "label": h.label, "uri": h.citation.get("uri"), "domain": h.domain, "score": h.score}
                  for i, h in enumerate(prep.passages, start=1)]
        return AnswerRecord(
            request_id=req.request_id, query=req.query, status="cannot_verify", summary=summary, claims=[],
            citations=[], text=summary, grounded=False, mode="refused", as_of=prep.as_of,
            jurisdiction=prep.jurisdiction, searched={"domains": prep.domains, "as_of": prep.as_of,
                                                      "jurisdiction": prep.jurisdiction, "breaker": "open"},
            release_id=prep.release.id, domains=prep.domains, router_scores=prep.scores, adapter="none",
            timings_ms=prep.timings_ms, finish_reason="circuit_open", index_revision=prep.index_revision,
            verification="circuit breaker open: fallback response, nothing generated", retrieved=listed,
            possibly_related=listed[:3],
        )

    def submit_generate(self, messages: list[dict[str, str]], *, max_tokens: int | None = None,
                        temperature: float = 0.0, top_p: float | None = None, seed: int | None = None,
                        domain: str | None = None, session_id: str | None = None, user_id: str | None = None,
                        request_id: str | None = None):
        """Plain generation without retrieval (``/v1/generate``), on a domain's adapter if given.

        Returns the engine's pending handle (``result``/``aresult``/``astream``).
        """
        for i, m in enumerate(messages):
            check_text(m.get("content") or "", f"messages[{i}].content" if len(messages) > 1 else "prompt")
        release = self.active
        if not self.control.admit(release, None):
            raise BreakerOpenError(self.control.breaker.retry_after())
        if domain is not None:
            self.runtime.domains.get(domain)
        total = sum(len(m.get("content", "")) for m in messages if isinstance(m, dict))
        if total > self.settings.api.max_query_chars * 4:
            raise InvalidInputError(f"prompt is {total} characters, over the limit of "
                                    f"{self.settings.api.max_query_chars * 4}")
        req = GenRequest(
            messages=tuple(messages),
            max_new_tokens=max_tokens if max_tokens is not None else self.settings.foundation.max_new_tokens,
            adapter=release.adapter_for(domain) if domain else "__base__",
            temperature=temperature, top_p=top_p, seed=seed,
            timeout_s=self.settings.serving.request_timeout_s,
            request_id=request_id or new_request_id(),
        )
        self.control.faults.apply(release.id)
        started = time.perf_counter()
        pending = self.engine.submit(req)

        def done(result, error) -> None:
            if error is not None and not counts_against_release(error):
                return  # the caller's mistake (e.g. its adapter was unloaded), not the release's
            if result is not None and result.finish_reason == "cancelled":
                return  # the client went away: says nothing about the release
            ok = error is None and result is not None and result.finish_reason != "timeout"
            self.control.observe(release, None, ok=ok, latency_ms=(time.perf_counter() - started) * 1000)

        pending.add_done_callback(done)
        return pending

    def log_generation(self, *, request_id: str, kind: str, prompt: str, text: str, domain: str | None,
                       session_id: str | None, user_id: str | None, adapter: str, latency_ms: float) -> None:
        """Record a plain generation so feedback can refer to it."""
        self.requestlog.record(request_id=request_id, kind=kind, query=prompt, release_id=self.active.id,
                               domains=[domain] if domain else [], user_id=user_id, session_id=session_id,
                               adapter=adapter, answer=text, latency_ms=latency_ms)

    # -- documents ---------------------------------------------------------------------------

    def ingest(self, domain: str, documents: list[dict[str, Any]], actor: str | None = None) -> IngestReport:
        self.runtime.domains.get(domain)
        report = self.runtime.knowledge.ingest(domain, documents, note=f"api ingest by {actor or 'unknown'}")
        audit_ingest(self.runtime, report, actor=actor or "anonymous", via="api")
        return report

    # -- adapters ----------------------------------------------------------------------------

    def list_adapters(self) -> list[dict[str, Any]]:
        return [meta.to_dict() for meta in self.adapters.info().values()]

    # -- introspection -----------------------------------------------------------------------

    def models(self) -> list[str]:
        return [MODEL_ID] + [f"{MODEL_ID}:{d}" for d in self.runtime.domains.names()]

    def health(self) -> dict[str, Any]:
        breaker = self.control.breaker.state.value
        return {"status": "ok" if breaker == "closed" else "degraded", "release": self.active.id,
                "breaker": breaker, "queue_depth": self.engine.queue_depth(),
                "uptime_s": round(time.time() - self.started_at, 1)}

    def info(self) -> dict[str, Any]:
        f = self.runtime.foundation
        return {
            "version": __version__,
            "model": f.name,
            "parameters": f.parameter_count,
            "embedder": self.runtime.embedder.name,
            "release": self.active.id,
            "index_revision": self.runtime.knowledge.current_revision(),
            "router_digest": self.active.router.spec.digest,
            "domains": {n: {"citations_required": s.citations_required, "approval_required": s.approval_required}
                        for n, s in self.runtime.domains.all().items()},
            "adapters": self.adapters.names(),
            "engine": self.engine.stats(),
        }
