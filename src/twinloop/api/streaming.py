"""Server-sent events: encoding, and starting a stream only once it is known to work.

A stream's status line is sent with its first byte, so every error that can be known before
generation starts (bad input, unknown domain, queue full, engine stopping) must be raised
before the :class:`StreamingResponse` is returned; :func:`prefetch` pulls the first events
for that. An error after that point is sent as a last ``data: {"error": ...}`` event in
OpenAI's shape (the ``openai`` client raises it as ``APIError``), then ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse

from twinloop.api.errors import (
    CLIENT_CLOSED,
    ApiError,
    error_body,
    internal_error,
    to_api_error,
)

T = TypeVar("T")

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


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` (e.g. a generation's result), cancelling it if the client goes away.

    A non-streaming response has no chunk to fail on, so nothing would notice a client that
    hung up: its request would generate to ``max_tokens`` for nobody. This waits on the
    connection as well; on ``http.disconnect`` it cancels ``work`` (``Pending.aresult``
    cancels the engine request on cancellation, as a closed stream does) and answers 499.

    Raises:
        ApiError: 499 ``client_closed_request`` when the client went away first.
    """
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        # The body has been read by now, so the next message is the disconnect (or the
        # server's note that the response is complete, after which this is cancelled anyway).
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler itself was cancelled: take the work down with it
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task  # let the cancellation reach the engine before answering
    except (asyncio.CancelledError, Exception):
        pass
    raise ApiError(CLIENT_CLOSED, "the client closed the connection before the answer was ready",
                   code="client_closed_request")
