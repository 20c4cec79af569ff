"""Server-sent events: encoding, and starting a stream only once it is known to work.

A stream's status line is sent with its first byte, so every error that can be known before
generation starts (bad input, unknown domain, queue full, engine stopping) must be raised
before the :class:`StreamingResponse` is returned; :func:`prefetch` pulls the first events
for that. An error after that point is sent as a last ``data: {"error": ...}`` event in
OpenAI's shape (the ``openai`` client raises it as ``APIError``), then ``[DONE]``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from twinloop.api.errors import error_body, internal_error, to_api_error

log = logging.getLogger("twinloop.api")

DONE = b"data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> bytes:
    """One event: ``data: {json}`` and a blank line."""
    return f"data: {json.dumps(data, ensure_ascii=False, default=str)}\n\n".encode()


async def prefetch(events: AsyncIterator[Any], n: int) -> list[Any]:
    """Pull up to ``n`` events now, so that errors raised while starting surface as a 4xx/5xx."""
    head: list[Any] = []
    for _ in range(n):
        try:
            head.append(await anext(events))
        except StopAsyncIteration:
            break
    return head


def sse_response(body: AsyncIterator[bytes], request_id: str, metrics) -> StreamingResponse:
    """A ``text/event-stream`` response that ends with ``[DONE]`` even after an error."""

    async def guarded() -> AsyncIterator[bytes]:
        try:
            async for chunk in body:
                yield chunk
        except Exception as exc:  # the status line is gone: report in-band
            err = to_api_error(exc)
            if err is None:
                log.exception("error while streaming", extra={"request_id": request_id})
                payload = internal_error(request_id)
                code = "internal_error"
            else:
                payload = error_body(err.message, type=err.type, code=err.code, param=err.param,
                                     request_id=request_id)
                code = err.code
            metrics.errors.labels(type=code).inc()
            yield sse(payload)
        yield DONE

    # no-cache and X-Accel-Buffering: proxies must pass events on as they come.
    return StreamingResponse(guarded(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
