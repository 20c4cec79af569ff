"""The generation engine: one worker thread turning waiting requests into mixed-adapter batches.

See docs/DESIGN.md "Serving". Callers ``submit`` a :class:`GenRequest` and get a
:class:`Pending` handle at once (prompt already encoded, adapter already held); the worker
takes the oldest waiting request, waits up to ``max_wait_ms`` for more that share its sampling
mode, and runs them as ONE ``generate`` call with a per-row ``adapter_names`` list (``__base__``
for none). Rows may differ in adapter and ``max_new_tokens``: a per-row stopping criterion ends
each at its own limit, deadline or cancellation, and a per-row streamer hands out text deltas
as tokens arrive, so a row that ends early is answered before the batch finishes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from typing import Any

import torch
from transformers import StoppingCriteriaList

from twinloop.foundation.model import left_pad
from twinloop.kernel.config import ServingConfig
from twinloop.kernel.errors import InvalidInputError, TwinLoopError
from twinloop.serving.adapters import AdapterRegistry
from twinloop.serving.batch import _Row, _RowConstraints, _RowStops, _RowStreamer
from twinloop.serving.pending import Pending, _Detokenizer, _wake  # noqa: F401  (_Detokenizer: tests)
from twinloop.serving.types import BASE_ADAPTER, GenRequest, check_max_tokens, check_sampling

log = logging.getLogger(__name__)

_SWEEP_INTERVAL_S = 0.05
"""How often a running batch looks for queued requests whose deadline passed, so they are
answered "timeout" near their deadline rather than when the batch ends."""


class QueueFullError(TwinLoopError):
    """The engine's queue is full; try again after ``retry_after_s`` seconds (HTTP 429)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineStoppedError(TwinLoopError):
    """The engine was stopped and takes no more requests (HTTP 503)."""


class GenerationEngine:
    """Batches submitted requests into mixed-adapter ``generate`` calls on one worker thread.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        foundation: Any,
        adapters: AdapterRegistry,
        config: ServingConfig,
        *,
        batching: bool = True,
    ) -> None:
        """Create a stopped engine.

        Args:
            foundation: The :class:`~twinloop.foundation.model.Foundation` to generate with.
            adapters: The registry whose adapters requests may name.
            config: Batch size, wait, queue size, timeouts and limits.
            batching: False runs requests one by one (the serving benchmark's baseline).
        """
        self.foundation = foundation
        self.adapters = adapters
        self.config = config
        self.batching = batching
        self._max_batch = config.max_batch_size if batching else 1
        self._stop_ids = frozenset(foundation.stop_token_ids)
        self._cond = threading.Condition()
        self._queue: deque[Pending] = deque()
        self._running: list[Pending] = []
        self._thread: threading.Thread | None = None
        self._accepting = True
        self._stopping = False
        self._last_sweep = 0.0
        self._observers: list[Any] = []
        self._recent_batch_s: deque[float] = deque(maxlen=32)
        self._stats = {"batches": 0, "requests": 0, "new_tokens": 0, "failed": 0, "timeouts_queued": 0,
                       "cancelled_queued": 0, "last_batch_seconds": 0.0, "last_batch_size": 0}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> GenerationEngine:
        """Start the worker thread (idempotent).

        Raises:
            EngineStoppedError: The engine was stopped; build a new one.
        """
        with self._cond:
            if self._stopping:
                raise EngineStoppedError("the generation engine was stopped; create a new one")
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="twinloop-engine", daemon=True)
                self._thread.start()
        return self

    def stop(self, drain: bool = True, timeout: float | None = None) -> bool:
        """Refuse new requests and end the worker.

        Args:
            drain: True finishes every queued request first; False cancels queued ones and
                stops running ones at their next step (``finish_reason='cancelled'``).
            timeout: Seconds to wait for the worker; None waits as long as it takes.

        Returns:
            True when the worker has ended.
        """
        with self._cond:
            self._accepting = False
            self._stopping = True
            dropped: list[Pending] = []
            if not drain or self._thread is None:
                dropped = list(self._queue)
                self._queue.clear()
            if not drain:
                for job in self._running:
                    job._cancel_requested = True
            self._cond.notify_all()
            thread = self._thread
        for job in dropped:
            job._finish_unrun("cancelled")
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def __enter__(self) -> GenerationEngine:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop(drain=exc[0] is None)

    # -- submission --------------------------------------------------------------------------

    def submit(self, req: GenRequest) -> Pending:
        """Validate, encode and enqueue one request.

        Raises:
            InvalidInputError: Bad limits or sampling settings, unknown adapter, prompt too long.
            QueueFullError: ``queue_size`` requests are already waiting.
            EngineStoppedError: After :meth:`stop`.
        """
        if not isinstance(req, GenRequest):
            raise InvalidInputError(f"expected a GenRequest, got {type(req).__name__}")
        check_max_tokens(req.max_new_tokens, self.config.max_new_tokens_limit, "max_new_tokens")
        # Refused here, not in the batch: a temperature that overflows the softmax would fail
        # every row of its batch and count against the release as a server fault.
        check_sampling(req.temperature, req.top_p, req.seed)
        if req.timeout_s is not None and not req.timeout_s > 0:
            raise InvalidInputError(f"timeout_s must be > 0, got {req.timeout_s!r}")
        if not self._accepting:
            raise EngineStoppedError("the generation engine is stopped")
        # Encode now, so a prompt-too-long error reaches the caller at once, not as a failure later.
        prompt = self.foundation.encode_chat(list(req.messages))
        timeout_s = req.timeout_s if req.timeout_s is not None else self.config.request_timeout_s
        with self._cond:
            if not self._accepting:
                raise EngineStoppedError("the generation engine is stopped")
            depth = len(self._queue)
            if depth >= self.config.queue_size:
                retry = self._retry_after(depth)
                raise QueueFullError(
                    f"generation queue is full ({depth} waiting); retry after {retry:.1f} s", retry
                )
            # Held from admission, so an unload waits for this request.
            self.adapters.acquire(req.adapter)
            job = Pending(self, req, prompt, timeout_s)
            self._queue.append(job)
            depth += 1
            self._cond.notify_all()
        log.debug("queued %s (adapter %s, depth %d)", job.request_id, job.adapter, depth)
        self._notify("on_queue", depth)
        return job

    # -- observability -----------------------------------------------------------------------

    def add_observer(self, observer: Any) -> None:
        """Attach an object with ``on_batch(size, adapters, seconds, new_tokens)`` and/or
        ``on_queue(depth)``; called from the engine's threads, so keep them quick and never
        call back into the engine or the registry's load/unload from them."""
        self._observers.append(observer)

    def queue_depth(self) -> int:
        """Requests waiting (not yet in a batch)."""
        with self._cond:
            return len(self._queue)

    def stats(self) -> dict[str, Any]:
        """Counters since start: batches, requests, mean batch size, last batch seconds, ...

        Updated when a batch ends; its requests may have been answered a little earlier
        (each row is answered as soon as it stops).
        """
        with self._cond:
            s = dict(self._stats)
            s["queue_depth"] = len(self._queue)
        s["mean_batch_size"] = s["requests"] / s["batches"] if s["batches"] else 0.0
        s["batching"] = self.batching
        s["max_batch_size"] = self._max_batch
        return s

    def _notify(self, hook: str, *args: Any) -> None:
        for obs in list(self._observers):
            fn = getattr(obs, hook, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception:  # an observer must never take the engine down
                log.exception("engine observer %r failed in %s", obs, hook)

    def _retry_after(self, depth: int) -> float:
        """Seconds until the queue has room: batches ahead of a new request times recent batch time."""
        mean = sum(self._recent_batch_s) / len(self._recent_batch_s) if self._recent_batch_s else 1.0
        batches_ahead = depth // self._max_batch + 1
        return round(max(0.1, batches_ahead * mean), 2)

    # -- cancellation and expiry -------------------------------------------------------------

    def _cancel(self, job: Pending) -> bool:
        with self._cond:
            if job.done():
                return False
            removed = False
            if job._queued:
                with contextlib.suppress(ValueError):
                    self._queue.remove(job)
                    removed = True
                    job._queued = False
            if not removed:
                job._cancel_requested = True
            depth = len(self._queue)
            if removed:
                self._stats["cancelled_queued"] += 1
        if removed:
            job._finish_unrun("cancelled")
            self._notify("on_queue", depth)
        return True

    def _take_expired_locked(self, now: float) -> list[Pending]:
        expired = [j for j in self._queue if now >= j._deadline]
        for j in expired:
            self._queue.remove(j)
            j._queued = False
        self._stats["timeouts_queued"] += len(expired)
        return expired

    def _sweep(self, now: float) -> None:
        """Answer queued requests whose deadline passed (called between decoding steps)."""
        if now - self._last_sweep < _SWEEP_INTERVAL_S:
            return
        self._last_sweep = now
        with self._cond:
            expired = self._take_expired_locked(now)
            depth = len(self._queue)
        for j in expired:
            j._finish_unrun("timeout")
        if expired:
            self._notify("on_queue", depth)

    # -- the worker --------------------------------------------------------------------------

    @staticmethod
    def _mode(req: GenRequest) -> tuple:
        """Requests with equal keys can share a batch (one sampling setup per generate call)."""
        if req.temperature == 0:
            return ("greedy",)
        if req.seed is not None:
            # A seed promises a repeatable answer, but a sampled row's draw depends on the other
            # rows of its batch: seeded requests run alone, like Foundation.chat(seed=...).
            return ("seeded", req.request_id)
        return ("sample", req.temperature, req.top_p)

    def _next_batch(self) -> list[Pending] | None:
        expired: list[Pending] = []
        with self._cond:
            while True:
                now = time.monotonic()
                expired += self._take_expired_locked(now)
                if self._queue:
                    break
                if self._stopping:
                    batch = None
                    break
                self._cond.wait()  # an empty queue has nothing to expire: sleep until submit/stop
            if self._queue:
                first = self._queue.popleft()
                first._queued = False
                batch = [first]
                mode = self._mode(first.request)
                tokens = len(first._prompt)
                cap = self.config.max_batch_prompt_tokens
                until = time.monotonic() + self.config.max_wait_ms / 1000.0
                while len(batch) < self._max_batch:
                    for job in [j for j in self._queue if self._mode(j.request) == mode]:
                        if len(batch) >= self._max_batch:
                            break
                        if tokens + len(job._prompt) > cap:
                            continue  # would make a prefill-bound batch; it leads the next one
                        tokens += len(job._prompt)
                        self._queue.remove(job)
                        job._queued = False
                        batch.append(job)
                    left = until - time.monotonic()
                    if len(batch) >= self._max_batch or left <= 0 or self._stopping:
                        break
                    self._cond.wait(left)
                self._running = batch
            depth = len(self._queue)
        for j in expired:
            j._finish_unrun("timeout")
        if batch is not None or expired:
            self._notify("on_queue", depth)
        return batch

    def _work(self) -> None:
        log.info("generation engine started (max batch %d, max wait %.0f ms)", self._max_batch,
                 self.config.max_wait_ms)
        while True:
            batch = self._next_batch()
            if batch is None:
                break
            try:
                self._run_batch(batch)
            except Exception as e:  # keep serving: fail this batch only
                log.exception("engine batch crashed")
                for job in batch:
                    job._complete(None, e)
            finally:
                with self._cond:
                    self._running = []
        log.info("generation engine stopped")

    def _run_batch(self, batch: list[Pending]) -> None:
        now = time.monotonic()
        live: list[Pending] = []
        for job in batch:
            if job._cancel_requested:
                job._finish_unrun("cancelled")
            elif now >= job._deadline:
                job._finish_unrun("timeout")
            else:
                job._started = now
                live.append(job)
        if not live:
            return
        ids = [j.request_id for j in live]
        start = time.perf_counter()
        rows: list[_Row] = []
        error: BaseException | None = None
        with self.adapters.generating() as model:
            # A failed reload can drop a held adapter; fail only the rows that named it.
            kept = []
            for job in live:
                if job.adapter != BASE_ADAPTER and job.adapter not in self.adapters:
                    job._complete(None, InvalidInputError(f"adapter {job.adapter!r} is no longer loaded"))
                else:
                    kept.append(job)
            live = kept
            if live:
                rows = [_Row(j, self.foundation.tokenizer, self._stop_ids, start, len(live)) for j in live]
                try:
                    self._generate(model, rows)
                except Exception as e:
                    error = e
                    log.exception("generate failed for batch %s", ids)
        seconds = time.perf_counter() - start
        new_tokens = 0
        for row in rows:
            new_tokens += len(row.detok.ids)
            if row.finish is None:
                if error is not None:
                    row.finish = "length"  # mark handled; the request itself fails
                    row.job._complete(None, error)
                else:
                    row.end(row.stop_requested or "length")
        if not rows:
            return
        with self._cond:
            self._stats["batches"] += 1
            self._stats["requests"] += len(rows)
            self._stats["new_tokens"] += new_tokens
            self._stats["failed"] += len(rows) if error is not None else 0
            self._stats["last_batch_seconds"] = seconds
            self._stats["last_batch_size"] = len(rows)
            self._recent_batch_s.append(seconds)
        adapters = [r.job.adapter for r in rows]
        log.debug("batch of %d %s done in %.3f s (%d new tokens)", len(rows), ids, seconds, new_tokens)
        self._notify("on_batch", len(rows), adapters, seconds, new_tokens)

    def _processors(self, rows: list[_Row], width: int):
        """The repetition penalty, then each constrained row's mask (last, so nothing undoes it)."""
        procs = self.foundation.repetition_processors(width)
        if any(r.job.request.constraint is not None for r in rows):
            procs.append(_RowConstraints(rows, width))
        return procs

    def _generate(self, model: Any, rows: list[_Row]) -> None:
        """One ``generate`` call for the batch; rows end through the streamer and criterion."""
        prompts = [r.job._prompt for r in rows]
        pad = self.foundation.tokenizer.pad_token_id
        device = model.device
        input_ids, attention = left_pad(prompts, pad)  # (batch, seq) each
        width = input_ids.shape[1]
        req = rows[0].job.request  # rows share the sampling mode (see _mode)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max(r.limit for r in rows),
            logits_processor=self._processors(rows, width),
            do_sample=req.temperature > 0,
            eos_token_id=sorted(self._stop_ids),
            pad_token_id=pad,
            streamer=_RowStreamer(rows),
            stopping_criteria=StoppingCriteriaList([_RowStops(rows, width, self._stop_ids, self._sweep)]),
        )
        if req.temperature > 0:
            kwargs.update(temperature=req.temperature, top_p=req.top_p or self.foundation.config.top_p, top_k=0)
        else:
            # As Foundation.chat_batch: unset sampling knobs a generation_config may carry.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        names = [r.job.adapter for r in rows]
        if any(n != BASE_ADAPTER for n in names):
            # Per-row adapters in one batch (PEFT mixed-adapter inference), never set_adapter
            # (peft#804). Omitted when every row is base: the model may be unwrapped then.
            kwargs["adapter_names"] = names
        rng = (
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
            if req.seed is not None
            else contextlib.nullcontext()
        )
        with rng, torch.inference_mode():
            if req.seed is not None:
                torch.manual_seed(req.seed)
            model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
