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
    constraint: Any = field(default=None, compare=False, repr=False)
    """A per-row decoding constraint (``serving/quotes.QuoteConstraint``): the engine masks
    this row's logits with it at every step; None for free generation."""


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
    token_ids: tuple[int, ...] = ()
    """The generated tokens (a constrained row's claims are read back from them)."""


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
    """The date of the edition the passage is from, as stored with it (never generated)."""
    valid_from: str | None
    valid_to: str | None
    uri: str | None
    sha256: str
    """SHA-256 of the stored passage text; ``exact_quote`` is a substring of that text."""
    exact_quote: str
    """The words the answer takes from this passage, verbatim."""
    label: str
    score: float
    """Retrieval score of the passage."""
    chunk_id: int
    correction: dict[str, Any] | None = None
    """For an accepted correction: its provenance (id, feedback item, who accepted and
    approved it, when, the release it was accepted under, its source)."""


@dataclass(frozen=True)
class Claim:
    """One statement of an answer and the citations (numbers) that hold it."""

    text: str
    citations: list[int]


AnswerStatus = Literal["answered", "cannot_verify", "out_of_scope"]


@dataclass
class AnswerRecord:
    """The answer to one question: the same shape from ``/v1/answer``, ``twinloop answer`` and
    the ``twinloop`` object of chat completions (docs/DESIGN.md "Serving").

    In a domain that requires citations every claim is a verbatim quote of a passage it cites
    (``grounded``); otherwise the status is ``cannot_verify`` (nothing relevant retrieved) or
    ``out_of_scope`` (a jurisdiction or source the index does not hold), with no claim and the
    nearest passages under ``possibly_related``.
    """

    request_id: str
    query: str
    status: AnswerStatus
    summary: str
    """One or two sentences for the user; in a grounded answer, quotes with their sources."""
    claims: list[Claim]
    citations: list[Citation]
    """Retrieved passages the claims cite (never anything else)."""
    text: str
    """The whole answer as text (summary, then each claim with its markers): chat content."""
    grounded: bool
    """Every claim is a verbatim span of a passage it cites."""
    mode: Literal["generated", "extractive", "free", "refused", "correction"]
    """generated: the model chose the quotes (constrained); extractive: the best sentences
    were quoted without the model; free: a domain that needs no citations; refused: no claim;
    correction: the question falls under an accepted correction, whose answer is quoted."""
    as_of: str | None
    jurisdiction: str | None
    searched: dict[str, Any]
    """domains, as_of, jurisdiction, top scores, the answerability decision."""
    release_id: str
    domains: list[str]
    router_scores: dict[str, float]
    adapter: str
    timings_ms: dict[str, float]
    """route, retrieve, decide, generate, assemble, total."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    index_revision: int | None = None
    verification: str = ""
    """Why the answer has the status it has, in one line."""
    retrieved: list[dict[str, Any]] = field(default_factory=list)
    """Every passage retrieved (number, label, uri, score), cited or not."""
    possibly_related: list[dict[str, Any]] = field(default_factory=list)
    """For a refusal: the nearest passages, for the user to read — not claims."""

    @property
    def verified(self) -> bool:
        """Answered, and grounded where the domain requires it."""
        return self.status == "answered" and (self.grounded or self.mode == "free")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"verified": self.verified}


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


MIN_TEMPERATURE = 1e-2
"""Smallest sampling temperature other than 0 (greedy). Below it, logits / temperature
overflows to inf and the softmax turns to NaN, so sampling fails for the whole batch; a
temperature that small is greedy decoding in all but name anyway."""
MAX_TEMPERATURE = 2.0
"""Largest sampling temperature: OpenAI's bound (chat completions take the same); beyond it
the distribution is close to flat noise."""
MAX_SEED = 2**63 - 1
"""Largest seed: ``torch.manual_seed`` takes a 64-bit integer; non-negative 63-bit keeps
one meaning for a seed across torch, NumPy and SQLite."""


def check_sampling(temperature: object, top_p: object = None, seed: object = None) -> None:
    """The one check of sampling settings (API bodies and the engine), so a bad value is
    refused as the caller's mistake before it can fail a batch (docs/DESIGN.md "Serving").

    Raises:
        InvalidInputError: ``temperature`` not 0 or within [MIN_TEMPERATURE, MAX_TEMPERATURE],
            ``top_p`` not in (0, 1], or ``seed`` not an integer in 0..MAX_SEED.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise InvalidInputError(f"temperature = {temperature!r}: must be a number")
    if temperature != 0 and not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:
        raise InvalidInputError(f"temperature = {temperature!r}: must be 0 (greedy) or between "
                                f"{MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise InvalidInputError(f"top_p = {top_p!r}: must be in (0, 1]")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise InvalidInputError(f"seed = {_cut(seed)}: must be an integer from 0 to {MAX_SEED}")


def check_text(value: str, name: str) -> str:
    """Refuse text that is not valid Unicode (a lone surrogate such as ``"\\ud800"``, which
    JSON can carry but UTF-8 cannot): the tokenizer and the request log would fail on it.

    Raises:
        InvalidInputError: ``value`` cannot be encoded as UTF-8; the message names ``name``
            and the position.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInputError(f"{name} holds an invalid character {value[e.start]!r} at position {e.start} "
                                "(a lone UTF-16 surrogate): send valid Unicode text") from None
    return value


def _cut(value: object, limit: int = 40) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."
