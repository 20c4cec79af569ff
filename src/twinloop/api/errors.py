"""Errors in OpenAI's shape, with the right status.

Every error body is ``{"error": {"message", "type", "param", "code"}}`` (what the ``openai``
client parses) plus ``request_id``. Status codes live only here:

==========================================  ======  ==========================
cause                                       status  code
==========================================  ======  ==========================
body is not JSON / empty                     400    ``invalid_json``
Host header not in ``api.allowed_hosts``     400    ``invalid_host``
body too large (before parsing)              413    ``body_too_large``
schema violation (pydantic)                  422    ``invalid_value``, ...
``InvalidInputError`` (bad query, date...)   422    ``invalid_input``
unknown domain                               422    ``unknown_domain``
unknown model                                404    ``model_not_found``
unknown request id (feedback)                404    ``unknown_request``
unknown correction id                        404    ``unknown_correction``
no / invalid API key                         401    ``missing_api_key``, ``invalid_api_key``
key without the role                         403    ``insufficient_role``
rate limit / engine queue full               429    ``rate_limit_exceeded``, ``queue_full``
too many failed authentications (address)    429    ``auth_rate_limited``
client went away before the answer           499    ``client_closed_request`` (never sent)
engine stopped (shutting down)               503    ``engine_stopped``
circuit breaker open, no fallback possible   503    ``circuit_open``
fault injected by an operator                503    ``injected_fault``
release gate not passed / approval missing   409    ``gate_failed``
a canary is already running                  409    ``canary_running``
anything unexpected                          500    ``internal_error`` (no detail)
==========================================  ======  ==========================

An unknown domain is a 422 rather than a 404 because the URL names an existing resource
(``/v1/answer``, ``/v1/ingest``); the domain is a field of the body, like any other bad value.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from twinloop.api.auth import AuthError
from twinloop.kernel.errors import (
    InvalidInputError,
    TwinLoopError,
    UnknownDomainError,
    UnknownRequestError,
)
from twinloop.knowledge.corrections import CorrectionNotFoundError
from twinloop.serving.types import MaxTokensError

log = logging.getLogger("twinloop.api")

ENGINE_STOPPED_RETRY_S = 5
"""Retry-After for a stopping engine: a restart under a supervisor takes a few seconds."""

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error", 499: "invalid_request_error",
          503: "server_overloaded"}

CLIENT_CLOSED = 499
"""nginx's "client closed request": only ever in the access log and metrics, as nobody reads it."""


def _doc(description: str) -> dict[str, Any]:
    from twinloop.api.schemas import ErrorResponse

    return {"model": ErrorResponse, "description": description}


ERROR_RESPONSES: dict[int, dict[str, Any]] = {
    400: _doc("Body is not a JSON object (`invalid_json`), or the Host is not served (`invalid_host`)."),
    401: _doc("No API key (`missing_api_key`) or an unknown one (`invalid_api_key`)."),
    403: _doc("The key's role may not call this route (`insufficient_role`)."),
    404: _doc("The named resource does not exist (`model_not_found`, `unknown_request`, `unknown_job`, ...)."),
    409: _doc("Conflicts with the current state (`adapter_in_use`, `training_in_progress`, `gate_failed`, ...)."),
    422: _doc("A value is invalid; `param` names the field and the message the bad value."),
    429: _doc("Over the key's rate limit (`rate_limit_exceeded`), too many failed authentications from "
             "this address (`auth_rate_limited`) or the generation queue is full (`queue_full`); see Retry-After."),
    503: _doc("Engine stopping (`engine_stopped`) or circuit breaker open (`circuit_open`); see Retry-After."),
}
"""The error responses of the OpenAPI schema, all in the API's error shape."""


SSE = {"text/event-stream": {"schema": {}}}
"""The second body a streaming route answers 200 with (``"stream": true``): server-sent events,
each ``data:`` line one JSON event as the route's description says (no one schema fits them all)."""


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that can answer these error statuses."""
    return {code: ERROR_RESPONSES[code] for code in codes}


class ApiError(Exception):
    """An error the API answers with a given status, in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}


def error_body(message: str, *, type: str, code: str, param: str | None = None,
               request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": {"message": message, "type": type, "param": param, "code": code}}
    if request_id:
        body["request_id"] = request_id
    return body


def retry_after(seconds: float) -> dict[str, str]:
    """A ``Retry-After`` header: whole seconds, at least 1 (RFC 9110 §10.2.3)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr`` of a bad value, cut so a huge input does not come back whole."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def internal_error(request_id: str) -> dict[str, Any]:
    """The 500 body: a request id to quote, no traceback or internal detail."""
    return error_body(f"internal error; quote request id {request_id} when reporting it",
                      type="server_error", code="internal_error", request_id=request_id)


def to_api_error(exc: BaseException) -> ApiError | None:
    """The API's answer to a library exception; None for an unexpected one (a 500)."""
    from twinloop.serving.engine import EngineStoppedError, QueueFullError

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, AuthError):
        code = {"missing_key": "missing_api_key", "invalid_key": "invalid_api_key",
                "forbidden": "insufficient_role"}[exc.failure.reason]
        return ApiError(exc.status, str(exc), code=code,
                        headers={"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)
    if isinstance(exc, QueueFullError):
        return ApiError(429, f"the generation queue is full; retry in {exc.retry_after_s:.1f} s",
                        code="queue_full", headers=retry_after(exc.retry_after_s))
    if isinstance(exc, EngineStoppedError):
        return ApiError(503, "the generation engine is stopping; retry shortly", code="engine_stopped",
                        headers=retry_after(ENGINE_STOPPED_RETRY_S))
    from twinloop.release.canary import CanaryRunningError
    from twinloop.release.promotion import GateError, ReleaseLoadError
    from twinloop.serving.faults import InjectedFault
    from twinloop.serving.service import BreakerOpenError

    if isinstance(exc, BreakerOpenError):
        return ApiError(503, str(exc), code="circuit_open", headers=retry_after(exc.retry_after_s))
    if isinstance(exc, InjectedFault):
        return ApiError(503, str(exc), code="injected_fault")
    if isinstance(exc, GateError):
        return ApiError(409, str(exc), code="gate_failed")
    if isinstance(exc, ReleaseLoadError):
        return ApiError(409, str(exc), code="release_unloadable")
    if isinstance(exc, CanaryRunningError):
        return ApiError(409, str(exc), code="canary_running")
    if isinstance(exc, UnknownDomainError):
        return ApiError(422, str(exc), code="unknown_domain", param="domain")
    if isinstance(exc, UnknownRequestError):
        return ApiError(404, str(exc), code="unknown_request", param="request_id")
    if isinstance(exc, CorrectionNotFoundError):
        return ApiError(404, str(exc), code="unknown_correction", param="correction_id")
    if isinstance(exc, MaxTokensError):
        return ApiError(422, str(exc), code="max_tokens_exceeded", param="max_tokens")
    if isinstance(exc, InvalidInputError):
        return ApiError(422, str(exc), code="invalid_input")
    return None  # other library errors (integrity, model load) are server faults: a 500


def validation_error(exc: RequestValidationError) -> ApiError:
    """A pydantic failure as one message naming the field and its bad value."""
    errors = exc.errors()
    first = errors[0] if errors else {"type": "invalid", "loc": ("body",), "msg": "invalid request"}
    loc = list(first.get("loc", ()))
    where_from = loc.pop(0) if loc and loc[0] in ("body", "query", "path", "header", "cookie") else None
    if first["type"] == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "not valid JSON")
        where = f" at position {loc[0]}" if loc and isinstance(loc[0], int) else ""
        return ApiError(400, f"request body is not valid JSON: {detail}{where}", code="invalid_json")
    if first["type"] == "missing" and not loc and where_from == "body":
        return ApiError(400, "request body is empty: expected a JSON object", code="invalid_json")
    if not loc and isinstance(first.get("input"), (bytes, bytearray)):
        # FastAPI hands the raw bytes on when the Content-Type is not JSON.
        return ApiError(400, "request body must be a JSON object sent with 'Content-Type: application/json'",
                        code="invalid_json")
    param = _param(loc)
    msg = first["msg"].removeprefix("Value error, ")  # our own validators' messages read as sentences
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if first["type"] == "missing":
        message = f"missing field {param!r}"
    elif first["type"] == "extra_forbidden":
        message = f"unknown field {param!r}"
    elif not loc:
        message = f"request body = {short_repr(first.get('input'))}: {msg}"
    else:
        message = f"{param} = {short_repr(first.get('input'))}: {msg}"
    return ApiError(422, message + more, code="invalid_value", param=param or None)


def _param(loc: list) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def error_response(request: Request, err: ApiError) -> JSONResponse:
    """Render ``err``; counts it and leaves its code for the access log."""
    request_id = getattr(request.state, "request_id", None)
    request.state.error_code = err.code
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(type=err.code).inc()
    body = error_body(err.message, type=err.type, code=err.code, param=err.param, request_id=request_id)
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every 4xx cause into OpenAI's shape.

    Unexpected exceptions are not handled here but by the request-context middleware, which
    is outside the routing and can answer a 500 with the request id and log the traceback.
    """

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        err = to_api_error(exc)
        if err is None:  # a library error that is a server fault: let the middleware answer 500
            raise exc
        return error_response(request, err)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(request, validation_error(exc))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(request, ApiError(exc.status_code, message, code=code,
                                                headers=dict(exc.headers or {})))

    from twinloop.serving.engine import EngineStoppedError, QueueFullError

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for cls in (ApiError, AuthError, TwinLoopError, QueueFullError, EngineStoppedError):
        app.add_exception_handler(cls, on_api_error)
