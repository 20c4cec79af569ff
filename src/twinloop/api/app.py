"""The FastAPI app of one serving process.

``create_app`` wires the pieces: keys and rate limits (``auth``, ``ratelimit``, ``deps``),
errors in OpenAI's shape (``errors``), request ids, access log and body limit
(``middleware``), metrics (``metrics``) and the routes (``routes``, ``openai_compat``).
The app's lifespan starts and stops the :class:`Service` (its engine drains on shutdown).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from twinloop import __version__
from twinloop.api import errors
from twinloop.api.auth import AuthFailure, KeyStore, check_bind
from twinloop.api.metrics import ApiMetrics, EngineObserver
from twinloop.api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from twinloop.api.ratelimit import RateLimiter
from twinloop.kernel.config import Settings
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


def audit_auth_failure(metrics: ApiMetrics, events, failure: AuthFailure) -> None:
    """Every refused request passes here once: count it, log it and write it to the audit log
    — with the key's hash prefix only, never the key."""
    metrics.auth_failures.labels(reason=failure.reason).inc()
    log.warning("auth failure", extra={"request_id": failure.request_id, "reason": failure.reason,
                                       "route": failure.route, "key": failure.key_id, "required": failure.required})
    try:
        events.append("auth.failed", actor=f"key:{failure.key_id}" if failure.key_id else "anonymous",
                      subject=failure.route, reason=failure.reason,
                      data={"required": failure.required, "request_id": failure.request_id})
    except Exception:  # the refusal stands even if the log is unwritable; the log line has it
        log.exception("could not write the auth failure to the audit log")


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
    keys = KeyStore(api, on_failure=lambda f: audit_auth_failure(metrics, events, f))
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
            await run_in_threadpool(service.stop)  # drains queued requests first

    app = FastAPI(title="TwinLoop", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.keys = keys
    app.state.limiter = RateLimiter(api.rate_limit_per_minute)

    metrics.watch_queue(service.engine.queue_depth)
    service.engine.add_observer(EngineObserver(metrics))
    errors.install(app)

    from twinloop.api import admin, openai_compat, routes

    app.include_router(routes.router)
    app.include_router(admin.router)
    app.include_router(openai_compat.router)
    # Added last = outermost: every response, a 413 or a 500 included, gets a request id,
    # an access-log line and a latency observation.
    app.add_middleware(BodyLimitMiddleware, max_bytes=api.max_body_bytes, metrics=metrics)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, release=lambda: service.active.id)
    return app
