"""The rows of one running batch: each request's tokens, stop rule and streamed text.

One ``generate`` call runs a whole batch; these per-row objects let each request end at its
own limit, deadline or cancellation (a ``StoppingCriteria`` returning a (batch,) mask) and
receive its own tokens as they are decoded (a ``BaseStreamer``), so a short answer is sent
before the batch finishes (docs/DESIGN.md "Serving").
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from twinloop.serving.types import GenResult

log = logging.getLogger(__name__)

from twinloop.serving.pending import Pending, _Detokenizer
from twinloop.serving.types import FinishReason


class _Row:
    """One request inside a running batch: its tokens, text and how it ended."""

    def __init__(self, job: Pending, tokenizer: Any, stop_ids: frozenset[int], batch_start: float, batch_size: int):
        self.job = job
        self.limit = job.request.max_new_tokens
        self.stop_ids = stop_ids
        self.detok = _Detokenizer(tokenizer)
        self.batch_start = batch_start
        self.batch_size = batch_size
        self.finish: FinishReason | None = None
        self.stop_requested: FinishReason | None = None
        self._text_started = False

    def step(self, token: int) -> None:
        """Take this row's token of one decoding step (ignored once the row has ended)."""
        if self.finish is not None:
            return
        if token in self.stop_ids:
            self.end("stop")
            return
        self._emit(self.detok.push(token))
        if len(self.detok.ids) >= self.limit:
            self.end("length")
        elif self.stop_requested is not None:
            self.end(self.stop_requested)

    def _emit(self, delta: str) -> None:
        if not self._text_started:
            # Leading whitespace is dropped, as Foundation.chat strips it; the streamed deltas
            # still concatenate exactly to the final text.
            delta = delta.lstrip()
            self._text_started = bool(delta)
        if delta:
            self.job._push(delta)

    def end(self, reason: FinishReason) -> None:
        if self.finish is not None:
            return
        self.finish = reason
        self._emit(self.detok.flush())
        self.job._token_ids = tuple(self.detok.ids)
        job = self.job
        queued = (job._started if job._started is not None else job._submitted) - job._submitted
        result = GenResult(
            request_id=job.request_id,
            text=job._text(),
            prompt_tokens=job.prompt_tokens,
            completion_tokens=len(self.detok.ids),
            finish_reason=reason,
            queue_seconds=queued,
            generate_seconds=time.perf_counter() - self.batch_start,
            batch_size=self.batch_size,
            adapter=job.adapter,
            token_ids=tuple(self.detok.ids),
        )
        job._complete(result)


class _RowStreamer(BaseStreamer):
    """Receives each decoding step's (batch,) tokens and hands each row its own token."""

    def __init__(self, rows: list[_Row]) -> None:
        self.rows = rows
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first puts the (batch, seq) prompt
            self._prompt_seen = True
            return
        steps = value.reshape(len(self.rows), -1).tolist()  # (batch, tokens this step), usually 1
        for row, tokens in zip(self.rows, steps, strict=True):
            for t in tokens:
                row.step(t)

    def end(self) -> None:
        pass


class _RowStops(StoppingCriteria):
    """Per-row stop: own ``max_new_tokens``, end of turn, deadline, cancellation.

    Returns a (batch,) bool tensor, so one row ending leaves the others running.
    """

    def __init__(self, rows: list[_Row], width: int, stop_ids: frozenset[int], on_step: Any) -> None:
        self.rows = rows
        self.width = width
        self.stop_ids = stop_ids
        self.on_step = on_step

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.width
        now = time.monotonic()
        last = input_ids[:, -1].tolist()  # (batch,)
        out = []
        for row, token in zip(self.rows, last, strict=True):
            if row.finish is None and row.stop_requested is None:
                if row.job._cancel_requested:
                    row.stop_requested = "cancelled"
                elif now >= row.job._deadline:
                    row.stop_requested = "timeout"
            out.append(
                row.finish is not None
                or row.stop_requested is not None
                or generated >= row.limit
                or token in self.stop_ids
            )
        self.on_step(now)
        return torch.tensor(out, dtype=torch.bool, device=input_ids.device)


class _RowConstraints(LogitsProcessor):
    """Masks each constrained row's logits to what its constraint allows (serving/quotes.py).

    Called once per decoding step with the (batch, vocab) scores; a row's constraint is fed
    the token that row produced at the previous step first. Rows without a constraint, and
    rows that have ended, are left alone, so constrained and free rows of any adapters share a
    batch.
    """

    def __init__(self, rows: list[_Row], width: int) -> None:
        self.rows = rows
        self.width = width
        self._fed = [0] * len(rows)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.width
        for i, row in enumerate(self.rows):
            constraint = row.job.request.constraint
            if constraint is None or row.finish is not None:
                continue
            if step > self._fed[i]:
                constraint.advance(int(input_ids[i, -1]))
                self._fed[i] = step
            constraint.mask(scores[i])  # (vocab,) row view, masked in place
        return scores
