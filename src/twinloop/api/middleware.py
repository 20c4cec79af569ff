"""The HTTP edge, as plain ASGI middleware: request ids, access log, latency, body limit.

Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, because that one buffers and
re-wraps streaming responses; these pass SSE streams through untouched.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twinloop.api.errors import error_body, internal_error
from twinloop.api.logs import ACCESS_LOGGER
from twinloop.api.metrics import ApiMetrics, method_label
from twinloop.serving.types import new_request_id

access_log = logging.getLogger(ACCESS_LOGGER)
log = logging.getLogger("twinloop.api")

SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
"""A client's ``X-Request-ID`` is kept only if it is a short token: it goes into logs and
headers, so anything that could forge a log line or a header is replaced."""


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


async def send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class RequestContextMiddleware:
    """Gives every request an id (``X-Request-ID``), times it, logs one JSON access line and
    answers an unexpected exception with a 500 that holds the id and nothing internal.

    Route handlers add ``release``, ``domain`` and ``key_id`` to ``request.state`` for the
    log line and the latency histogram's labels.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, release: Any) -> None:
        self.app = app
        self.metrics = metrics
        self.release = release
        """Callable returning the Active release id (the label when a handler set none)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given if given and SAFE_REQUEST_ID.match(given) else new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["request_id_from_client"] = rid == given
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Logged here with the traceback; the client sees only the request id.
            log.exception("unhandled error", extra={"request_id": rid, "route": _route(scope)})
            state["error_code"] = "internal_error"
            self.metrics.errors.labels(type="internal_error").inc()
            if not response_started:
                status = 500
                await send_json(send, 500, internal_error(rid), [(b"x-request-id", rid.encode())])
        finally:
            self._record(scope, state, status, time.perf_counter() - started, rid)

    def _record(self, scope: Scope, state: dict, status: int, seconds: float, rid: str) -> None:
        route = _route(scope)
        release = state.get("release") or self.release()
        domain = state.get("domain") or "none"
        method = method_label(scope["method"])
        self.metrics.request_seconds.labels(route=route, method=method, status=str(status),
                                            release=release, domain=domain).observe(seconds)
        extra = {"request_id": rid, "method": scope["method"][:16], "route": route, "status": status,
                 "latency_ms": round(seconds * 1000, 2), "release": release, "domain": domain,
                 "key": state.get("key_id")}
        if state.get("record_id") and state["record_id"] != rid:
            extra["record_id"] = state["record_id"]
        if state.get("error_code"):
            extra["error"] = state["error_code"]
        access_log.info("request", extra=extra)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413 before anything parses them.

    A declared ``Content-Length`` over the limit is refused without reading; a chunked body
    (no length) is read up to the limit and refused as soon as it passes it. Bodies within
    the limit are buffered (at most ``max_bytes``) and replayed to the app.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: ApiMetrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await self._refuse(scope, send, 400, f"Content-Length {declared[:32]!r} is not a number",
                                   "invalid_content_length")
                return
            if length > self.max_bytes:
                await self._too_large(scope, send, f"{length} bytes")
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await self._too_large(scope, send, f"more than {self.max_bytes} bytes")
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # later calls wait for the disconnect, as streaming needs

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, send: Send, size: str) -> None:
        await self._refuse(scope, send, 413, f"request body is {size}, over the limit of {self.max_bytes} bytes",
                           "body_too_large")

    async def _refuse(self, scope: Scope, send: Send, status: int, message: str, code: str) -> None:
        state = scope.setdefault("state", {})
        state["error_code"] = code
        self.metrics.errors.labels(type=code).inc()
        body = error_body(message, type="invalid_request_error", code=code, request_id=state.get("request_id"))
        # The rest of the body is never read, so the connection cannot be reused.
        await send_json(send, status, body, [(b"connection", b"close")])


class AllowedHostsMiddleware:
    """Answers 400 to a request whose ``Host`` header is not an allowed name.

    Against DNS rebinding: a web page can make a browser send requests to a server on the
    loopback address under the page's own host name; checking the name stops that. Like
    Starlette's ``TrustedHostMiddleware`` (``*`` allows all, ``*.example.org`` matches
    subdomains), but the refusal is in the API's error shape with a request id.
    """

    def __init__(self, app: ASGIApp, allowed: list[str], metrics: ApiMetrics) -> None:
        self.app = app
        self.any = "*" in allowed
        self.exact = {h.lower() for h in allowed if not h.startswith("*")}
        self.suffixes = tuple(h[1:].lower() for h in allowed if h.startswith("*."))
        self.metrics = metrics

    def allows(self, host_header: str | None) -> bool:
        if self.any:
            return True
        host = host_name(host_header or "")
        return bool(host) and (host in self.exact or host.endswith(self.suffixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.allows(_header(scope, b"host")):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["error_code"] = "invalid_host"
        self.metrics.errors.labels(type="invalid_host").inc()
        given = (_header(scope, b"host") or "")[:64]
        body = error_body(f"host {given!r} is not served here; set api.allowed_hosts to allow it",
                          type="invalid_request_error", code="invalid_host", request_id=state.get("request_id"))
        await send_json(send, 400, body)


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without the port: ``[::1]:8080`` → ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header
