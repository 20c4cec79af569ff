"""Records that cross the serving loop's module boundaries.

Plain dataclasses, no torch: the API layer, the engine and the answer pipeline exchange
these and nothing else, so each can be tested alone.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "timeout", "cancelled"]
"""How a generation ended."""

from twinloop.kernel.errors import InvalidInputError

BASE_ADAPTER = "__base__"
"""PEFT's name for "no adapter" in a mixed-adapter batch (``adapter_names=``)."""


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]


@dataclass(frozen=True)
class GenRequest:
    """One generation job for the engine."""

    messages: tuple[dict[str, str], ...]
    """Chat messages; the engine applies the chat template."""
    max_new_tokens: int
    adapter: str = BASE_ADAPTER
    """Resident adapter name (e.g. ``law@rel_ab12``) or ``__base__``; passed per row."""
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    timeout_s: float | None = None
    """Deadline from submission; past it the request ends with ``finish_reason='timeout'``."""
    request_id: str = field(default_factory=new_request_id)


@dataclass(frozen=True)
class GenResult:
    """What the engine returns for one request."""

    request_id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length", "timeout", "cancelled"]
    queue_seconds: float
    generate_seconds: float
    batch_size: int
    adapter: str


@dataclass(frozen=True)
class Citation:
    """A source an answer cites: a passage that was actually retrieved."""

    n: int
    """The passage's number in the prompt ([1], [2], ...)."""
    domain: str
    source: str | None
    code: str | None
    article: str | None
    part: str | None
    clause: str | None
    edition_date: str | None
    uri: str | None
    label: str
    quote: str
    """A sentence of the passage, verbatim, that best supports the answer."""
    score: float
    """Retrieval score of the passage."""
    chunk_id: int


@dataclass
class AnswerRecord:
    """The answer to one ``/v1/answer`` request."""

    request_id: str
    query: str
    text: str
    verified: bool
    """True only when the answer cites retrieved passages and every quote checks out, or
    the domain does not require citations."""
    status: Literal["verified", "unverified", "not_required", "no_sources"]
    citations: list[Citation]
    """Retrieved passages that support the answer's claims (never anything else)."""
    domains: list[str]
    router_scores: dict[str, float]
    release_id: str
    adapter: str
    timings_ms: dict[str, float]
    """route, retrieve, generate, verify, total."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    index_revision: int | None = None
    as_of: str | None = None
    verification: str = ""
    """Why the answer is (not) verified, e.g. "2 of 3 claims have no supporting source"."""
    retrieved: list[dict[str, Any]] = field(default_factory=list)
    """Every passage in the prompt (number, label, uri), cited or not."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MaxTokensError(InvalidInputError):
    """A token limit that is not an integer from 1 to the server's ``max_new_tokens_limit``."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


def check_max_tokens(value: object, limit: int, name: str = "max_tokens") -> int:
    """The one check of a completion-token limit (API bodies, the pipeline and the engine);
    returns it.

    Raises:
        MaxTokensError: Not an integer, below 1, or over ``limit``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise MaxTokensError(f"{name} = {value!r}: must be an integer", limit)
    if value < 1:
        raise MaxTokensError(f"{name} = {value}: must be at least 1", limit)
    if value > limit:
        raise MaxTokensError(f"{name} = {value}: over this server's limit of {limit}", limit)
    return value
