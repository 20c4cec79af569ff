"""OpenAI-compatible ``/v1/chat/completions`` and ``/v1/models``.

The official ``openai`` client works unchanged against ``base_url=http://host:port/v1``,
streaming included. Model ids: ``twinloop`` runs the routed answer pipeline on the last user
message; ``twinloop:<domain>`` forces that domain. The reply's message content is the answer
text; a top-level ``twinloop`` field (which OpenAI clients keep as an extra attribute) carries
the request id, verification status, citations, domains and release.

Deliberate differences from OpenAI, because answers come from the cited-answer pipeline:
earlier turns and system messages are not used (each question is answered from the sources
alone), ``temperature``/``top_p``/``stop`` are ignored (answers are greedy so that they can be
verified and reproduced), ``n`` must be 1, and fields we do not know are ignored, as clients
send many optional ones. In a stream, the UNVERIFIED notice can only be known once the whole
answer is there, so it comes as the last content delta (the non-streaming content starts with it).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from twinloop.api.auth import Principal
from twinloop.api.deps import GuardedRoute, require, service
from twinloop.api.errors import SSE, ApiError, responses
from twinloop.api.routes import check_max_tokens, label_request, record_id
from twinloop.api.streaming import prefetch, sse, sse_response, unless_disconnected
from twinloop.kernel.errors import InvalidInputError
from twinloop.serving.pipeline import AnswerRequest
from twinloop.serving.service import Service
from twinloop.serving.types import check_text

router = APIRouter(route_class=GuardedRoute, tags=["openai"])

_FINISH = {"stop": "stop", "length": "length", "timeout": "length", "cancelled": "stop"}
"""Our finish reasons onto OpenAI's set; the exact one is in ``twinloop.finish_reason``."""


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_Lenient):
    include_usage: StrictBool = False


class ChatCompletionBody(_Lenient):
    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    """OpenAI's newer name for ``max_tokens``; wins when both are given."""
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1, description="Only 1 is supported.")
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=200, description="Stored only as a salted hash.")
    as_of: str | None = Field(default=None, max_length=32,
                              description="TwinLoop extra: ISO date, the law in force that day (openai: extra_body).")
    jurisdiction: str | None = Field(default=None, max_length=50,
                                     description="TwinLoop extra: only sources of this jurisdiction (openai: extra_body).")


def resolve_model(svc: Service, model: str) -> str | None:
    """The forced domain of a model id (None for ``twinloop``).

    Raises:
        ApiError: 404 ``model_not_found`` naming the model and the ones available.
    """
    models = svc.models()
    if model not in models:
        raise ApiError(404, f"model {model!r} does not exist; available: {', '.join(models)}",
                       code="model_not_found", param="model")
    return model.split(":", 1)[1] if ":" in model else None


def last_user_text(messages: list[ChatMessage]) -> str:
    """The question: the text of the last ``user`` message (text parts joined).

    Raises:
        ApiError: 422 when there is no user message or it holds no text.
    """
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.role != "user":
            continue
        if isinstance(m.content, str):
            text = m.content
        else:
            parts = m.content or []
            bad = [p.get("type") for p in parts if p.get("type") != "text"]
            if bad:
                raise ApiError(422, f"messages[{i}].content: only text parts are supported, got {bad[0]!r}",
                               code="invalid_value", param=f"messages[{i}].content")
            text = "\n".join(str(p.get("text", "")) for p in parts)
        if not text.strip():
            raise ApiError(422, f"messages[{i}].content is empty", code="invalid_value",
                           param=f"messages[{i}].content")
        try:  # JSON can carry a lone surrogate ("\ud800"), the tokenizer cannot
            check_text(text, f"messages[{i}].content")
        except InvalidInputError as e:
            raise ApiError(422, str(e), code="invalid_value", param=f"messages[{i}].content") from None
        return text
    raise ApiError(422, "messages holds no 'user' message to answer", code="invalid_value", param="messages")


CONTRACT = ("status", "summary", "claims", "citations", "as_of", "jurisdiction", "searched", "release_id",
            "request_id", "timings_ms", "grounded", "mode", "verified", "domains", "possibly_related", "finish_reason")
"""The answer contract's fields, as ``/v1/answer`` returns them (serving/types.AnswerRecord)."""


def _extra(record: dict[str, Any]) -> dict[str, Any]:
    """The ``twinloop`` object of a chat completion: the answer contract."""
    return {k: record[k] for k in CONTRACT}


def _usage(record: dict[str, Any]) -> dict[str, int]:
    return {"prompt_tokens": record["prompt_tokens"], "completion_tokens": record["completion_tokens"],
            "total_tokens": record["prompt_tokens"] + record["completion_tokens"]}


@router.post("/v1/chat/completions", summary="OpenAI chat completions over the answer pipeline",
             responses={200: {"content": SSE}, **responses(404, 503)})
async def chat_completions(body: ChatCompletionBody, request: Request, svc: Service = Depends(service),
                           _: Principal = Depends(require("reader"))) -> Any:
    domain = resolve_model(svc, body.model)
    max_tokens = body.max_completion_tokens or body.max_tokens
    check_max_tokens(max_tokens, svc)
    req = AnswerRequest(query=last_user_text(body.messages), user_id=body.user, domain=domain,
                        as_of=body.as_of, jurisdiction=body.jurisdiction, max_tokens=max_tokens,
                        request_id=record_id(request))
    metrics = request.app.state.metrics
    created = int(time.time())
    chat_id = f"chatcmpl-{req.request_id}"

    if not body.stream:
        record = (await unless_disconnected(request, svc.answer_async(req))).to_dict()
        label_request(request, record["release_id"], record["domains"])
        metrics.observe_record(record)
        return {"id": chat_id, "object": "chat.completion", "created": created, "model": body.model,
                "system_fingerprint": record["release_id"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": record["text"]},
                             "finish_reason": _FINISH.get(record["finish_reason"], "stop"), "logprobs": None}],
                "usage": _usage(record), "twinloop": _extra(record)}

    prep = await run_in_threadpool(svc.prepare_stream, req)
    label_request(request, prep.release.id, prep.domains)
    events = svc.answer_stream(prep)
    head = await prefetch(events, 1)  # the engine admits before the first event (queue full → 429)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        return sse({"id": chat_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
                    "system_fingerprint": prep.release.id,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra})

    async def all_events() -> AsyncIterator[dict[str, Any]]:
        for e in head:
            yield e
        async for e in events:
            yield e

    async def body_bytes() -> AsyncIterator[bytes]:
        yield chunk({"role": "assistant", "content": ""})
        streamed: list[str] = []
        async for event in all_events():
            if event["type"] == "delta" and event["text"]:
                streamed.append(event["text"])
                yield chunk({"content": event["text"]})
            elif event["type"] == "answer":
                record = event["record"]
                metrics.observe_record(record)
                sep = "\n\n" if streamed else ""
                if record["mode"] == "generated":  # the quotes streamed as written; then their sources
                    yield chunk({"content": sep + record["summary"]})
                elif record["mode"] != "free":  # a refusal or quoted fallback: what the user must read
                    yield chunk({"content": sep + record["text"]})
                yield chunk({}, _FINISH.get(record["finish_reason"], "stop"), twinloop=_extra(record))
                if include_usage:
                    yield sse({"id": chat_id, "object": "chat.completion.chunk", "created": created,
                               "model": body.model, "choices": [], "usage": _usage(record)})

    return sse_response(body_bytes(), req.request_id, metrics)


def _model(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "twinloop"}


@router.get("/v1/models", summary="Model ids: twinloop and twinloop:<domain>")
def list_models(svc: Service = Depends(service), _: Principal = Depends(require("reader"))) -> dict[str, Any]:
    created = int(svc.started_at)
    return {"object": "list", "data": [_model(m, created) for m in svc.models()]}


@router.get("/v1/models/{model_id}", summary="One model id", responses=responses(404))
def get_model(model_id: str, svc: Service = Depends(service),
              _: Principal = Depends(require("reader"))) -> dict[str, Any]:
    resolve_model(svc, model_id)
    return _model(model_id, int(svc.started_at))

