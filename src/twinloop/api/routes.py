"""The native routes: translate HTTP to :class:`Service` calls, nothing more.

Roles: ``reader`` answers, generates, reads info and metrics; ``operator``
also gives feedback and ingests; ``admin`` also manages adapters. Health needs no key.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from twinloop.api.auth import Principal
from twinloop.api.deps import GuardedRoute, require, service
from twinloop.api.errors import SSE, ApiError, responses
from twinloop.api.metrics import CONTENT_TYPE, domain_label
from twinloop.api.schemas import (
    AnswerBody,
    ApprovalBody,
    CorrectionBody,
    CorrectionList,
    CorrectionOut,
    FeedbackBody,
    FeedbackResult,
    GenerateBody,
    GenerateResult,
    IngestBody,
    RemovalBody,
    TrainBody,
)
from twinloop.api.streaming import prefetch, sse, sse_response, unless_disconnected
from twinloop.knowledge.store import IngestReport
from twinloop.learning.jobs import JobRunningError, TrainJobs, UnknownJobError
from twinloop.serving.pipeline import AnswerRequest
from twinloop.serving.service import Service
from twinloop.serving.types import AnswerRecord, GenResult, new_request_id
from twinloop.serving.types import check_max_tokens as serving_check_max_tokens

router = APIRouter(route_class=GuardedRoute)


def record_id(request: Request) -> str:
    """The id the request log stores this request under.

    The HTTP request id when the server made it; a fresh one when the client sent its own
    ``X-Request-ID``, since client ids need not be unique and the log is keyed by this id.
    """
    state = request.state
    if not getattr(state, "record_id", None):
        state.record_id = new_request_id() if state.request_id_from_client else state.request_id
    return state.record_id


def check_max_tokens(value: int | None, svc: Service) -> None:
    """Refuse a bad ``max_tokens`` before a stream starts (the serving check, run early)."""
    if value is not None:
        serving_check_max_tokens(value, svc.settings.serving.max_new_tokens_limit)


def answer_request(body: AnswerBody, request: Request) -> AnswerRequest:
    return AnswerRequest(query=body.query, user_id=body.user_id, session_id=body.session_id, domain=body.domain,
                         as_of=body.as_of, jurisdiction=body.jurisdiction, max_tokens=body.max_tokens,
                         request_id=record_id(request))


@router.post("/v1/answer", tags=["answer"], summary="Answer a question with citations (JSON or SSE)",
             responses={200: {"model": AnswerRecord, "description": "The answer contract (or SSE events).",
                              "content": SSE}, **responses(503)})
async def answer(body: AnswerBody, request: Request, svc: Service = Depends(service),
                 _: Principal = Depends(require("reader"))) -> Any:
    """Route, retrieve, decide, generate and assemble; returns the answer contract.

    In a citation-required domain every claim is a verbatim quote of a retrieved passage it
    cites, or the status is ``cannot_verify`` / ``out_of_scope`` with no claim. With
    ``stream: true`` the response is ``text/event-stream``: a ``meta`` event (domains,
    retrieved passages), ``delta`` events with the text as it is generated, an ``answer``
    event with the same record the blocking call returns, then ``data: [DONE]``.
    """
    check_max_tokens(body.max_tokens, svc)
    req = answer_request(body, request)
    metrics = request.app.state.metrics
    if not body.stream:
        record = await unless_disconnected(request, svc.answer_async(req))
        label_request(request, record.release_id, record.domains)
        metrics.observe_record(record)
        return record.to_dict()

    prep = await run_in_threadpool(svc.prepare_stream, req)
    label_request(request, prep.release.id, prep.domains)
    events = svc.answer_stream(prep)
    head = await prefetch(events, 1)  # the engine admits before the first event (queue full → 429)

    async def body_bytes() -> AsyncIterator[bytes]:
        for event in head:
            yield _answer_event(event, metrics)
        async for event in events:
            yield _answer_event(event, metrics)

    return sse_response(body_bytes(), req.request_id, metrics)


def _answer_event(event: dict[str, Any], metrics) -> bytes:
    if event.get("type") == "answer":
        metrics.observe_record(event["record"])
    return sse(event)


def label_request(request: Request, release: str, domains: list[str] | None) -> None:
    """Labels for the access log and the latency histogram."""
    request.state.release = release
    request.state.domain = domain_label(domains)


@router.post("/v1/generate", tags=["answer"], response_model=GenerateResult,
             summary="Plain generation, no retrieval (JSON or SSE)",
             responses={200: {"content": SSE}, **responses(503)})
async def generate(body: GenerateBody, request: Request, svc: Service = Depends(service),
                   _: Principal = Depends(require("reader"))) -> Any:
    """Generate from a prompt with the base model, or a domain's adapter with ``domain``.

    With ``stream: true``: ``delta`` events, then a ``result`` event with the fields of the
    JSON response, then ``data: [DONE]``.
    """
    check_max_tokens(body.max_tokens, svc)
    started = time.perf_counter()
    rid = record_id(request)
    pending = svc.submit_generate([{"role": "user", "content": body.prompt}], max_tokens=body.max_tokens,
                                  temperature=body.temperature, seed=body.seed, domain=body.domain,
                                  session_id=body.session_id, user_id=body.user_id, request_id=rid)
    label_request(request, svc.active.id, [body.domain] if body.domain else [])
    metrics = request.app.state.metrics

    async def finish(result: GenResult) -> dict[str, Any]:
        total_ms = (time.perf_counter() - started) * 1000
        await run_in_threadpool(lambda: svc.log_generation(
            request_id=rid, kind="generate", prompt=body.prompt, text=result.text, domain=body.domain,
            session_id=body.session_id, user_id=body.user_id, adapter=result.adapter, latency_ms=total_ms))
        metrics.completion_tokens.labels(kind="generate").inc(result.completion_tokens)
        return GenerateResult(
            request_id=rid, text=result.text, prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens, finish_reason=result.finish_reason,
            timings={"queue_ms": round(result.queue_seconds * 1000, 3),
                     "generate_ms": round(result.generate_seconds * 1000, 3), "total_ms": round(total_ms, 3)},
        ).model_dump()

    if not body.stream:
        return await finish(await unless_disconnected(request, pending.aresult()))

    deltas = pending.astream()
    head = await prefetch(deltas, 1)

    async def body_bytes() -> AsyncIterator[bytes]:
        try:
            for text in head:
                yield sse({"type": "delta", "text": text})
            async for text in deltas:
                yield sse({"type": "delta", "text": text})
        except BaseException:
            pending.cancel()  # the client went away or the stream failed: free the engine slot
            raise
        yield sse({"type": "result", **(await finish(await pending.aresult()))})

    return sse_response(body_bytes(), rid, metrics)


@router.post("/v1/feedback", tags=["learning"], status_code=201, response_model=FeedbackResult,
             summary="Rate an answer (stored with the request it refers to)", responses=responses(404))
def feedback(body: FeedbackBody, svc: Service = Depends(service),
             who: Principal = Depends(require("operator"))) -> Any:
    """Store feedback with a snapshot of the request it rates, then filter it into a training
    sample or the quarantine; 404 if ``request_id`` was never answered here."""
    record, made = svc.runtime.submit_feedback(body.request_id, body.score, body.correction, who.key_id,
                                               svc.requestlog.get(body.request_id))
    return asdict(record) | {"correction_id": made.id if made is not None else None}


@router.post("/v1/corrections", tags=["learning"], status_code=201, response_model=CorrectionOut,
             summary="Correct an answer: served for the question at once (or once approved)")
def correction_add(body: CorrectionBody, svc: Service = Depends(service),
                   who: Principal = Depends(require("operator"))) -> Any:
    """Store a correction as a citable document of its domain (a new index revision) and put it
    in correction memory: questions in its scope are answered with it, quoted and cited with its
    provenance; other questions are untouched. In a domain whose policy requires approval it is
    ``pending`` until that many other reviewers approve. Unknown domain → 422."""
    return svc.runtime.correct(body.domain, body.question, body.answer, actor=who.key_id, source=body.source).to_dict()


@router.get("/v1/corrections", tags=["learning"], response_model=CorrectionList, summary="Corrections, newest first")
def correction_list(domain: str | None = None, state: str | None = None, limit: int = 100,
                    svc: Service = Depends(service), _: Principal = Depends(require("operator"))) -> Any:
    if not 1 <= limit <= 1000:
        raise ApiError(422, f"limit = {limit}: must be between 1 and 1000", code="invalid_value", param="limit")
    return {"corrections": [c.to_dict() for c in svc.runtime.corrections.list(domain, state, limit)]}


@router.get("/v1/corrections/{correction_id}", tags=["learning"], response_model=CorrectionOut,
            summary="One correction with its provenance", responses=responses(404))
def correction_get(correction_id: int, svc: Service = Depends(service),
                   _: Principal = Depends(require("operator"))) -> Any:
    return svc.runtime.corrections.get(correction_id).to_dict()


@router.post("/v1/corrections/{correction_id}/approve", tags=["learning"], response_model=CorrectionOut,
             summary="Approve a pending correction (a reviewer other than the one who made it)",
             responses=responses(404))
def correction_approve(correction_id: int, body: ApprovalBody, svc: Service = Depends(service),
                       who: Principal = Depends(require("operator"))) -> Any:
    return svc.runtime.corrections.approve(correction_id, actor=who.key_id, note=body.note).to_dict()


@router.post("/v1/corrections/{correction_id}/remove", tags=["learning"], response_model=CorrectionOut,
             summary="Take a correction out of answers (its document removed at a new index revision)",
             responses=responses(404))
def correction_remove(correction_id: int, body: RemovalBody, svc: Service = Depends(service),
                      who: Principal = Depends(require("operator"))) -> Any:
    return svc.runtime.corrections.remove(correction_id, actor=who.key_id, reason=body.reason,
                                          erase=body.erase).to_dict()


@router.post("/v1/ingest", tags=["learning"], response_model=IngestReport,
             summary="Add documents to a domain's index (one new revision)")
def ingest(body: IngestBody, request: Request, svc: Service = Depends(service),
           who: Principal = Depends(require("operator"))) -> Any:
    """Validate every document first (a bad one → 422 naming its index and field), then add
    them as one index revision; duplicates are skipped. Unknown domain → 422."""
    request.state.domain = domain_label([body.domain]) if body.domain in svc.runtime.domains.names() else "none"
    return asdict(svc.ingest(body.domain, body.documents, actor=who.key_id))


@router.get("/v1/health", tags=["service"], summary="Liveness (no key needed)")
def health(svc: Service = Depends(service)) -> dict[str, Any]:
    return svc.health()


@router.get("/v1/info", tags=["service"], summary="Model, release, domains, adapters, engine")
def info(svc: Service = Depends(service), _: Principal = Depends(require("reader"))) -> dict[str, Any]:
    return svc.info()


@router.get("/metrics", tags=["service"], summary="Prometheus metrics (text format)",
            response_class=Response)
def metrics(request: Request, _: Principal = Depends(require("reader"))) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


@router.post("/v1/admin/train", tags=["learning"], status_code=202,
             summary="Start a Shadow training job (asynchronous; poll its status)", responses=responses(409))
def train_start(body: TrainBody, svc: Service = Depends(service),
                _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    """Spawn a worker that trains on the new samples and records a candidate release; Active is
    never changed. 422 for an unknown domain or bad value, 409 while another job runs."""
    from twinloop.learning.worker import start_training_job

    try:
        rt = svc.runtime
        jid = start_training_job(rt.settings, rt.db, rt.domains.names(), feedback=rt.feedback, domains=body.domains,
                                 steps=body.steps, lr=body.lr, seed=body.seed)
    except JobRunningError as e:
        raise ApiError(409, str(e), code="training_in_progress") from e
    return {"job_id": jid, "status": "queued"}


@router.get("/v1/admin/train/{job_id}", tags=["learning"], summary="A training job's status, progress and result",
            responses=responses(404))
def train_status(job_id: str, svc: Service = Depends(service),
                 _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    """The job row (settings snapshot left out); 404 for an unknown id."""
    jobs = TrainJobs(svc.runtime.db)
    jobs.reap_stale()
    try:
        job = jobs.get(job_id)
    except UnknownJobError as e:
        raise ApiError(404, str(e), code="unknown_job", param="job_id") from e
    job["params"].pop("settings", None)
    return job


@router.get("/v1/admin/quarantine", tags=["learning"], summary="Feedback the filters rejected, newest first")
def quarantine_list(domain: str | None = None, limit: int = 100, svc: Service = Depends(service),
                    _: Principal = Depends(require("admin"))) -> dict[str, Any]:
    """Rejected samples with stage and reason; their text is stored (and shown) redacted."""
    from twinloop.learning.quarantine import list_quarantine

    if not 1 <= limit <= 1000:
        raise ApiError(422, f"limit = {limit}: must be between 1 and 1000", code="invalid_value", param="limit")
    return {"items": list_quarantine(svc.runtime.db, domain, limit)}
