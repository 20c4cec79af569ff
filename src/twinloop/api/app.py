"""The FastAPI app of one serving process.

``create_app`` wires the pieces: keys and rate limits (``auth``, ``ratelimit``, ``deps``),
errors in OpenAI's shape (``errors``), request ids, access log and body limit
(``middleware``), metrics (``metrics``) and the routes (``routes``, ``openai_compat``).
The app's lifespan starts and stops the :class:`Service` (its engine drains on shutdown).
"""

from __future__ import annotations

import hashlib
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute

from twinloop import __version__
from twinloop.api import errors
from twinloop.api.auth import (
    AUDIT_WINDOW_S,
    AuthFailure,
    FailureAudit,
    KeyStore,
    check_bind,
)
from twinloop.api.deps import _declared_role
from twinloop.api.metrics import ApiMetrics, EngineObserver
from twinloop.api.middleware import (
    AllowedHostsMiddleware,
    BodyLimitMiddleware,
    RequestContextMiddleware,
)
from twinloop.api.ratelimit import RateLimiter
from twinloop.kernel.config import ApiConfig, Settings
from twinloop.serving.service import Service

log = logging.getLogger("twinloop.api")

DESCRIPTION = """\
TwinLoop's serving API: cited answers from the Active release (`/v1/answer`), plain
generation, OpenAI-compatible chat completions (model `twinloop` or `twinloop:<domain>`),
feedback and document intake for the learning loop, adapter management and metrics.

Send an API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Roles: **reader**
(answer, generate, chat, models, info, metrics), **operator** (+ feedback, ingest),
**admin** (+ `/v1/lora`, training and the release flow under `/v1/admin`: QA, canary,
swap, rollback, releases, approvals, audit events, faults, retention). Errors use OpenAI's shape `{"error": {message, type, param, code}}`.
"""


def audit_auth_failure(metrics: ApiMetrics, audit: FailureAudit, failure: AuthFailure) -> None:
    """Every refused request passes here once: the metric counts each one; the audit log
    and the log get them aggregated per client address (:class:`FailureAudit`), so a flood of
    bad keys cannot grow the append-only log without bound."""
    metrics.auth_failures.labels(reason=failure.reason).inc()
    audit.record(failure)


def auth_event_writer(events, salt: str):
    """``FailureAudit``'s writer: one ``auth.failed`` event — with the key's hash prefix and a
    salted hash of the client address, never the key or the address itself."""

    def write(failure: AuthFailure, count: int, reasons: Counter | None) -> None:
        client = hashlib.sha256(f"{salt}:{failure.client or 'unknown'}".encode()).hexdigest()[:12]
        if reasons is None:
            data = {"required": failure.required, "request_id": failure.request_id, "client": client, "count": 1}
            reason = failure.reason
        else:
            data = {"client": client, "count": count, "reasons": dict(reasons), "window_s": AUDIT_WINDOW_S,
                    "first_request_id": failure.request_id}
            reason = f"{count} more refused requests from this client within {AUDIT_WINDOW_S:g} s"
        log.warning("auth failure", extra={"request_id": failure.request_id, "reason": failure.reason,
                                           "route": failure.route, "key": failure.key_id,
                                           "required": failure.required, "count": count, "client": client})
        try:
            events.append("auth.failed", actor=f"key:{failure.key_id}" if failure.key_id else "anonymous",
                          subject=failure.route, reason=reason, data=data)
        except Exception:  # the refusal stands even if the log is unwritable; the log line has it
            log.exception("could not write the auth failure to the audit log")

    return write


WILDCARD_BINDS = {"0.0.0.0", "::", ""}


def allowed_hosts(api: ApiConfig) -> list[str]:
    """The Host names served: ``api.allowed_hosts``, else the localhost names and the bind
    address (plus this machine's name when bound to every interface)."""
    if api.allowed_hosts is not None:
        return list(api.allowed_hosts)
    hosts = ["localhost", "127.0.0.1", "::1", "ip6-localhost", api.host]
    if api.host in WILDCARD_BINDS:
        hosts.append(socket.gethostname())
        log.warning("bound to every interface: only Host names %s are served; set api.allowed_hosts for others",
                    hosts)
    return [h for h in hosts if h]


def document_errors(routes: list) -> None:
    """Put the error responses a route can give into the OpenAPI schema: 401/403/429 on every
    route that needs a key, 400/422 in the API's error shape on every route, and what a route
    declares itself (404, 409, 503). Run on a router before it is included (an included
    router's routes are built from these)."""
    from twinloop.api.errors import ERROR_RESPONSES

    for route in routes:
        if not isinstance(route, APIRoute):
            # an included router (``original_router`` in FastAPI's lazy inclusion)
            inner = getattr(route, "original_router", None) or getattr(route, "router", None)
            nested = getattr(route, "routes", None) or getattr(inner, "routes", None)
            document_errors(list(nested or []))
            continue
        codes = [400, 422]
        if _declared_role(route.dependant) is not None:
            codes += [401, 403, 429]
        for code in codes:
            route.responses.setdefault(code, ERROR_RESPONSES[code])


def create_app(service: Service, settings: Settings | None = None) -> FastAPI:
    """Build the HTTP app around a service.

    Args:
        service: The serving facade; the app's lifespan starts and stops it.
        settings: Settings whose ``api`` section applies (default: the service's own).

    Raises:
        ConfigError: No API key is configured and ``api.host`` is not a loopback address,
            or a configured key (hash) is malformed.
    """
    settings = settings or service.settings
    api = settings.api
    check_bind(api)
    metrics = ApiMetrics()
    events = service.runtime.events
    audit = FailureAudit(auth_event_writer(events, settings.canary.salt))
    keys = KeyStore(api, on_failure=lambda f: audit_auth_failure(metrics, audit, f))
    if keys.open:
        log.warning("no API keys configured: the API is open to every local process", extra={"host": api.host})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)
        # Feedback a crash left between "stored" and "filtered" is picked up again here (and
        # before every training job), so accepted feedback is never silently left untrained.
        try:
            recovered = await run_in_threadpool(service.runtime.feedback.process_pending)
        except Exception:  # serving must start anyway; the rows stay 'new' for the next pickup
            log.exception("pending feedback could not be filtered at start")
        else:
            if any(recovered.values()):
                log.info("pending feedback processed at start", extra=recovered)
        log.info("serving", extra={"release": service.active.id, "version": __version__})
        try:
            yield
        finally:
            audit.flush()  # the counts of refused requests still being aggregated
            await run_in_threadpool(service.stop)  # drains queued requests first

    app = FastAPI(title="TwinLoop", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.keys = keys
    app.state.limiter = RateLimiter(api.rate_limit_per_minute)
    app.state.auth_failure_limiter = RateLimiter(api.auth_failures_per_minute)
    app.state.auth_audit = audit

    metrics.watch_queue(service.engine.queue_depth)
    service.engine.add_observer(EngineObserver(metrics))
    errors.install(app)

    from twinloop.api import admin, openai_compat, routes

    for router in (routes.router, admin.router, openai_compat.router):
        document_errors(router.routes)
        app.include_router(router)
    # Added last = outermost: every response, a 413, a 400 for a bad Host or a 500 included,
    # gets a request id, an access-log line and a latency observation. The Host is checked
    # before the body is read.
    app.add_middleware(BodyLimitMiddleware, max_bytes=api.max_body_bytes, metrics=metrics)
    app.add_middleware(AllowedHostsMiddleware, allowed=allowed_hosts(api), metrics=metrics)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, release=lambda: service.active.id)
    return app
