"""The handle of a submitted request: stream its text, wait for its result, cancel it.

Kept apart from the engine's batching loop (``serving/engine.py``): this is the part callers
hold — thread-safe, usable from threads and from any event loop — and it holds the
incremental detokenizer that turns a row's tokens into text deltas.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from twinloop.serving.types import GenRequest, GenResult

log = logging.getLogger(__name__)

from twinloop.serving.types import FinishReason


class _Detokenizer:
    """Incremental decoding that never splits a multi-byte character.

    The offsets trick of text-generation-inference: decode a short window ending at the new
    token and emit only what extends the previous window's text, holding back while the
    text ends in U+FFFD (an incomplete UTF-8 sequence). Work per token is O(window), not
    O(answer) as re-decoding everything would be.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        self.ids.append(token)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is held back (e.g. a truncated character) at the end of the answer."""
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


class Pending:
    """A submitted request: stream its text, wait for its result, or cancel it.

    Thread-safe; any number of consumers may stream the same request, each from the start.
    """

    def __init__(self, engine: Any, request: GenRequest, prompt: list[int], timeout_s: float) -> None:
        self.request = request
        self.request_id = request.request_id
        self.adapter = request.adapter
        self.prompt_tokens = len(prompt)
        self._engine = engine
        self._prompt = prompt
        self._submitted = time.monotonic()
        self._deadline = self._submitted + timeout_s
        self._started: float | None = None
        self._future: concurrent.futures.Future[GenResult] = concurrent.futures.Future()
        # RUNNING, so that the future cannot be cancelled from outside (asyncio.wrap_future
        # would otherwise cancel it when an awaiting task is cancelled); cancel() is ours.
        self._future.set_running_or_notify_cancel()
        self._cond = threading.Condition()
        self._deltas: list[str] = []
        self._listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._cancel_requested = False
        self._queued = True
        self._finishing = False
        self._token_ids: tuple[int, ...] | None = None

    # -- consumer side -----------------------------------------------------------------------

    @property
    def token_ids(self) -> tuple[int, ...] | None:
        """Generated token ids (end of turn excluded) once finished; None before, or on failure."""
        return self._token_ids

    def done(self) -> bool:
        """True once the result (or error) is available."""
        return self._future.done()

    def add_done_callback(self, fn) -> None:
        """Call ``fn(result_or_None, error_or_None)`` once the request ends (at once if it has).

        Runs on the engine's thread: keep it short and never call the engine from it.
        """
        def done(fut: concurrent.futures.Future) -> None:
            err = fut.exception()
            fn(None if err else fut.result(), err)

        self._future.add_done_callback(done)

    def result(self, timeout: float | None = None) -> GenResult:
        """Block until the request ends and return its result.

        Raises:
            TimeoutError: Not finished within ``timeout`` seconds (the request goes on).
            Exception: Whatever ``generate`` raised for its batch.
        """
        return self._future.result(timeout)

    async def aresult(self) -> GenResult:
        """Await the result without blocking the event loop; cancels the request if the
        awaiting task is cancelled (the HTTP client went away)."""
        try:
            return await asyncio.wrap_future(self._future)
        except asyncio.CancelledError:
            self.cancel()
            raise

    def stream(self) -> Iterator[str]:
        """Yield text deltas as they are generated; they concatenate to the final text.

        Ends when the request ends; re-raises the batch's error if generation failed.
        """
        i = 0
        while True:
            with self._cond:
                while i >= len(self._deltas) and not self._future.done():
                    self._cond.wait()
                chunk = self._deltas[i:]
                finished = self._future.done()
            i += len(chunk)
            yield from chunk
            if finished:
                break
        self._raise_failure()

    async def astream(self) -> AsyncIterator[str]:
        """Async version of :meth:`stream` for asyncio servers (FastAPI SSE).

        The worker thread wakes this coroutine with ``loop.call_soon_threadsafe``; it never
        blocks the event loop.
        """
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        with self._cond:
            self._listeners.append((loop, event))
        try:
            i = 0
            while True:
                event.clear()  # before reading, so a delta arriving after the read re-sets it
                with self._cond:
                    chunk = self._deltas[i:]
                    finished = self._future.done()
                i += len(chunk)
                for delta in chunk:
                    yield delta
                if finished:
                    break
                if not chunk:
                    await event.wait()
        finally:
            with self._cond:
                with contextlib.suppress(ValueError):
                    self._listeners.remove((loop, event))
        self._raise_failure()

    def cancel(self) -> bool:
        """Stop the request: at once if still queued, else at its batch's next step.

        Its result then has ``finish_reason='cancelled'`` and the text produced so far.
        Returns False if it had already finished.
        """
        return self._engine._cancel(self)

    def _raise_failure(self) -> None:
        exc = self._future.exception()
        if exc is not None:
            raise exc

    # -- engine side -------------------------------------------------------------------------

    def _push(self, delta: str) -> None:
        with self._cond:
            self._deltas.append(delta)
            self._cond.notify_all()
            listeners = list(self._listeners)
        _wake(listeners)

    def _text(self) -> str:
        with self._cond:
            return "".join(self._deltas)

    def _complete(self, result: GenResult | None, error: BaseException | None = None) -> None:
        with self._cond:
            if self._finishing:
                return
            self._finishing = True
        # Give the adapter back first, so whoever sees the result also sees the hold released
        # (an unload waiting on it can proceed as soon as the caller has its answer).
        self._engine.adapters.release(self.adapter)
        with self._cond:
            if error is not None:
                self._future.set_exception(error)
            else:
                self._future.set_result(result)
            self._cond.notify_all()
            listeners = list(self._listeners)
        _wake(listeners)

    def _finish_unrun(self, reason: FinishReason) -> None:
        """End without generating (timeout while queued, cancelled, engine stopped)."""
        queued = time.monotonic() - self._submitted
        if not self._finishing:
            self._token_ids = ()
        self._complete(GenResult(self.request_id, "", self.prompt_tokens, 0, reason, queued, 0.0, 0, self.adapter))


def _wake(listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]) -> None:
    for loop, event in listeners:
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody to wake
            loop.call_soon_threadsafe(event.set)
