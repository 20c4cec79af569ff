"""The serving facade: what the HTTP API and the CLI call (STYLE.md §2).

Owns the process's engine, adapter registry, request log and the Active release pointer.
Route functions translate HTTP to these calls and errors to status codes; no business logic
lives in them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from twinloop import __version__
from twinloop.errors import InvalidInputError
from twinloop.knowledge.store import IngestReport
from twinloop.learning.intake import FeedbackIntake
from twinloop.runtime import Runtime
from twinloop.serving.pipeline import AnswerPipeline, AnswerRequest
from twinloop.serving.release import ServingRelease
from twinloop.serving.requestlog import FeedbackRecord, RequestLog
from twinloop.serving.types import AnswerRecord, GenRequest, new_request_id

log = logging.getLogger(__name__)

MODEL_ID = "twinloop"
"""OpenAI model id of the routed pipeline; ``twinloop:<domain>`` forces a domain."""


class Service:
    """One serving process: Active release, engine, pipeline, request log."""

    def __init__(self, runtime: Runtime) -> None:
        from twinloop.serving.adapters import AdapterRegistry
        from twinloop.serving.engine import GenerationEngine

        self.runtime = runtime
        self.settings = runtime.settings
        self.started_at = time.time()
        self.requestlog = RequestLog(runtime.db, salt=self.settings.canary.salt)
        # Built once: its filter pipeline loads word lists and compiles patterns.
        self.intake = FeedbackIntake(runtime.db, runtime.domains)
        self.adapters = AdapterRegistry(runtime.foundation)
        self.engine = GenerationEngine(runtime.foundation, self.adapters, self.settings.serving)
        self.pipeline = AnswerPipeline(runtime.retriever, runtime.domains, self.requestlog, self.settings.serving,
                                       max_query_chars=self.settings.api.max_query_chars)
        self._release_lock = threading.Lock()
        self._active = ServingRelease(id="base", router=runtime.router, index_revision=None)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop(drain=True)

    # -- releases ----------------------------------------------------------------------------

    @property
    def active(self) -> ServingRelease:
        """The Active release; a request reads this once, at admission, and keeps it."""
        return self._active

    def set_active(self, release: ServingRelease) -> ServingRelease:
        """Point Active at another release (a reference swap under a lock); returns the old one."""
        with self._release_lock:
            old, self._active = self._active, release
        return old

    # -- answering ---------------------------------------------------------------------------

    def answer(self, req: AnswerRequest) -> AnswerRecord:
        return self.pipeline.answer(req, self.active, self.engine)

    async def answer_async(self, req: AnswerRequest) -> AnswerRecord:
        return await self.pipeline.answer_async(req, self.active, self.engine)

    def prepare_stream(self, req: AnswerRequest):
        """Validate and retrieve now (so errors become a 4xx before streaming starts)."""
        return self.pipeline.prepare(req, self.active)

    def answer_stream(self, prepared) -> AsyncIterator[dict]:
        return self.pipeline.answer_stream(prepared, self.engine)

    def submit_generate(self, messages: list[dict[str, str]], *, max_tokens: int | None = None,
                        temperature: float = 0.0, top_p: float | None = None, seed: int | None = None,
                        domain: str | None = None, session_id: str | None = None, user_id: str | None = None,
                        request_id: str | None = None):
        """Plain generation without retrieval (``/v1/generate``), on a domain's adapter if given.

        Returns the engine's pending handle (``result``/``aresult``/``astream``).
        """
        release = self.active
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
        return self.engine.submit(req)

    def log_generation(self, *, request_id: str, kind: str, prompt: str, text: str, domain: str | None,
                       session_id: str | None, user_id: str | None, adapter: str, latency_ms: float) -> None:
        """Record a plain generation so feedback can refer to it."""
        self.requestlog.record(request_id=request_id, kind=kind, query=prompt, release_id=self.active.id,
                               domains=[domain] if domain else [], user_id=user_id, session_id=session_id,
                               adapter=adapter, answer=text, latency_ms=latency_ms)

    # -- intake ------------------------------------------------------------------------------

    def feedback(self, request_id: str, score: float, correction: str | None, actor: str | None) -> FeedbackRecord:
        """Store feedback (redacted) and pass it through the learning filters at once, so an
        accepted correction is a training sample for Shadow and a rejected one sits in the
        quarantine with its reason (issue 5 point 1)."""
        record = self.requestlog.add_feedback(request_id, score, correction, actor)
        report, _skipped = self.intake.submit_feedback(
            self.requestlog.feedback_joined(feedback_id=record.id))
        status = "accepted" if report.accepted else ("quarantined" if report.rejected else "not_trainable")
        self.requestlog.set_feedback_status(record.id, status)
        return record

    def ingest(self, domain: str, documents: list[dict[str, Any]], actor: str | None = None) -> IngestReport:
        self.runtime.domains.get(domain)
        return self.runtime.knowledge.ingest(domain, documents, note=f"api ingest by {actor or 'unknown'}")

    # -- adapters ----------------------------------------------------------------------------

    def list_adapters(self) -> list[dict[str, Any]]:
        return [meta.to_dict() for meta in self.adapters.info().values()]

    def load_adapter(self, name: str, path: str) -> dict[str, Any]:
        return self.adapters.load(name, Path(path)).to_dict()

    def remove_adapter(self, name: str) -> None:
        """Unload an adapter once its in-flight requests finish (TimeoutError if they don't)."""
        if any(name == a for a in self.active.adapters.values()):
            raise InvalidInputError(f"adapter {name!r} is used by the Active release; swap first")
        self.adapters.unload(name, timeout=self.settings.serving.request_timeout_s)

    # -- introspection -----------------------------------------------------------------------

    def models(self) -> list[str]:
        return [MODEL_ID] + [f"{MODEL_ID}:{d}" for d in self.runtime.domains.names()]

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "release": self.active.id, "queue_depth": self.engine.queue_depth(),
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
