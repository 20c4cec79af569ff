"""Request and response bodies of the native routes.

Unknown fields are refused (a typo such as ``max_token`` must not be silently ignored); the
OpenAI-compatible bodies in ``openai_compat.py`` are lenient instead, as clients send fields
we do not use. Booleans are strict (``StrictBool``): ``{"dry_run": 0}`` or ``"yes"`` is a 422,
never quietly read as a yes or a no, since some of them decide whether data is removed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from twinloop.kernel.errors import InvalidInputError
from twinloop.serving.types import MAX_SEED, MAX_TEMPERATURE, check_sampling


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str


class ErrorResponse(BaseModel):
    """Every error response: OpenAI's shape plus the request id to quote."""

    error: ErrorDetail
    request_id: str | None = None


class AnswerBody(_Body):
    query: str = Field(min_length=1, description="The question.")
    user_id: str | None = Field(default=None, max_length=200,
                                description="Stored only as a salted hash; drives the canary split.")
    session_id: str | None = Field(default=None, max_length=200)
    domain: str | None = Field(default=None, max_length=64, description="Force this domain instead of routing.")
    as_of: str | None = Field(default=None, max_length=32, description="ISO date: the law in force that day.")
    jurisdiction: str | None = Field(default=None, max_length=50)
    max_tokens: int | None = Field(default=None, ge=1)
    stream: StrictBool = Field(default=False, description="Server-sent events: meta, delta..., answer, [DONE].")


class GenerateBody(_Body):
    prompt: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=MAX_TEMPERATURE,
                               description="0 = greedy; else from 0.01 (smaller overflows the softmax).")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Repeatable sampling (0 to 2**63-1).")
    session_id: str | None = Field(default=None, max_length=200)
    user_id: str | None = Field(default=None, max_length=200)
    domain: str | None = Field(default=None, max_length=64, description="Generate with this domain's adapter.")
    stream: StrictBool = False

    @field_validator("temperature")
    @classmethod
    def _sane_temperature(cls, v: float) -> float:
        try:
            check_sampling(v)  # the serving rule, so the API and the engine cannot disagree
        except InvalidInputError as e:
            raise ValueError(str(e).split(": ", 1)[-1]) from None
        return v


class GenerateResult(BaseModel):
    request_id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    timings: dict[str, float]
    """queue_ms, generate_ms, total_ms."""


class FeedbackBody(_Body):
    request_id: str = Field(min_length=1, max_length=100)
    score: float = Field(ge=-1.0, le=1.0, description="-1 (bad) to 1 (good).")
    correction: str | None = Field(default=None, max_length=8000)


class FeedbackResult(BaseModel):
    id: int
    request_id: str
    score: float
    correction: str | None
    created_at: str
    correction_id: int | None = Field(default=None, description="The correction memory record an accepted "
                                      "correction became (served for the rated question at once, or once approved).")
    status: str = Field(description="accepted (a training sample), quarantined (a filter refused it), "
                                    "not_trainable (a rating with nothing to imitate) or new (not filtered yet).")


class IngestBody(_Body):
    domain: str = Field(min_length=1, max_length=64)
    documents: list[dict[str, Any]] = Field(
        min_length=1, description="Objects with ``text`` and citation metadata, as in the JSONL format.")



class TrainBody(_Body):
    domains: list[str] | None = Field(default=None, max_length=64,
                                      description="Only these domains (default: every domain with new samples).")
    steps: int | None = Field(default=None, ge=1, le=1_000_000, description="Optimiser steps per domain.")
    lr: float | None = Field(default=None, gt=0.0, le=1.0, description="Peak learning rate.")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Seed (default training.seed).")


class QaBody(_Body):
    release: str | None = Field(default=None, max_length=64, description="Candidate (default: Shadow).")
    max_tokens: int | None = Field(default=None, ge=1, le=4096, description="Answer length per case.")


class CanaryBody(_Body):
    release: str | None = Field(default=None, max_length=64, description="Candidate (default: Shadow).")
    ratio: float | None = Field(default=None, gt=0.0, le=1.0, description="Share of users (default canary.ratio).")
    mode: Literal["split", "mirror"] | None = Field(default=None, description="split answers canary users with "
                                                    "the candidate; mirror only copies traffic to it.")
    reason: str = Field(default="", max_length=500)


class SwapBody(_Body):
    release: str | None = Field(default=None, max_length=64, description="Release to promote (default: Shadow).")
    force: StrictBool = Field(default=False, description="Skip the QA and canary gates (audited); never approvals.")
    reason: str = Field(default="", max_length=500)


class RollbackBody(_Body):
    to: str | None = Field(default=None, max_length=64, description="Target (default: the previous Active).")
    reason: str = Field(default="", max_length=500)


class ApproveBody(_Body):
    note: str = Field(default="", max_length=500, description="What the reviewer checked.")


class FaultBody(_Body):
    release: str | None = Field(default=None, max_length=64, description="Release (default: Active).")
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="Share of requests that fail.")
    delay_ms: float = Field(default=0.0, ge=0.0, le=60_000, description="Added latency per request.")


class RetentionBody(_Body):
    dry_run: StrictBool = Field(default=True, description="Only report what would be removed.")



class CorrectionBody(_Body):
    domain: str = Field(min_length=1, max_length=64)
    question: str = Field(min_length=1, max_length=2000, description="The question the correction answers.")
    answer: str = Field(min_length=1, max_length=2000, description="The correct answer, as users should read it.")
    source: str | None = Field(default=None, max_length=500, description="Where the answer comes from (a URI, a "
                               "document, a decision), shown with the correction.")


class ApprovalBody(_Body):
    note: str = Field(default="", max_length=2000)


class RemovalBody(_Body):
    reason: str = Field(default="", max_length=2000)
    erase: bool = Field(default=False, description="Also wipe the text for good (right to erasure).")


class CorrectionOut(BaseModel):
    id: int
    domain: str
    question: str
    answer: str
    subject: str | None
    source: str | None
    state: str = Field(description="pending (awaiting the domain's approvals), active (served) or removed.")
    release_id: str | None = Field(description="The release Active when it was accepted: it and its descendants "
                                   "serve the correction; rolling back past it takes it out of answers.")
    uri: str
    revision: int | None = Field(description="The index revision its document was added at (None while pending).")
    feedback_id: int | None
    actor: str
    created_at: str
    approvals: list[dict[str, str]]
    approvals_required: int
    removed_at: str | None = None
    removed_by: str | None = None
    provenance: dict[str, Any]


class CorrectionList(BaseModel):
    corrections: list[CorrectionOut]
