"""Judging one answer against its QA case: content, required citations, toxicity, errors.

The judge reads an answer through :class:`JudgedAnswer`, a Protocol of the few fields it
needs, so any answer record that has them can be judged — serving's ``AnswerRecord`` is
one — and release stays below both loops (docs/DESIGN.md "Map").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twinloop.kernel.text import normalise_text
from twinloop.kernel.toxicity import ToxicityScorer
from twinloop.release.qa.cases import QaCase

ANSWER_CHARS = 300
"""Answer text kept per case in a report: enough to see what went wrong, small enough that
a report stored with every release stays a few kilobytes per case."""
FAILED_REASONS = ("timeout", "cancelled")
"""Engine finish reasons that count as errors: the answer was cut off, not completed."""


class CitedSource(Protocol):
    """What the judge reads of one citation."""

    @property
    def uri(self) -> str | None: ...

    @property
    def label(self) -> str | None: ...


class JudgedAnswer(Protocol):
    """What the judge reads of one answer record."""

    @property
    def text(self) -> str: ...

    @property
    def citations(self) -> Sequence[CitedSource]: ...

    @property
    def finish_reason(self) -> str: ...

    @property
    def release_id(self) -> str: ...

    @property
    def verified(self) -> bool | None: ...

    @property
    def status(self) -> str | None: ...

    @property
    def domains(self) -> Sequence[str]: ...


def content_ok(answer: str, expected: Iterable[str]) -> bool:
    """True when ``answer`` contains any expected phrase (NFKC, case-folded, whitespace
    collapsed on both sides)."""
    text = normalise_text(answer)
    return any(normalise_text(phrase) in text for phrase in expected)


def citation_matches(ref: str, citation: CitedSource) -> bool:
    """True when ``ref`` occurs, case-insensitively and as a whole token, in the citation's
    uri or label.

    "Whole token" means the characters around the occurrence are not letters or digits
    where ``ref`` itself begins or ends with one, so ``...#art_35-1`` does not match
    ``...#art_35-10`` and "GDPR Art. 1" does not match "GDPR Art. 17(1)", while a full uri,
    a uri prefix such as ``...#art_35`` or a label such as "GDPR Art. 17(1)" all match.
    """
    ref = ref.strip()
    if not ref:
        return False
    pattern = re.escape(ref.casefold())
    if ref[0].isalnum():
        pattern = r"(?<![^\W_])" + pattern
    if ref[-1].isalnum():
        pattern += r"(?![^\W_])"
    return any(re.search(pattern, s.casefold()) for s in (citation.uri or "", citation.label or ""))


@dataclass(frozen=True)
class CaseResult:
    """How one release answered one case.

    ``passed`` needs the content, the required citations and no error. ``cited`` (≥ 1
    citation) feeds the citation rate and is None when the case needs no citation.
    """

    case_id: str
    domain: str
    release_id: str
    passed: bool
    content_ok: bool
    citations_ok: bool
    cited: bool | None
    toxic: bool
    toxicity: float
    latency_ms: float
    error: str | None = None
    query: str = ""
    answer: str = ""
    """What the model wrote (without the notices the caller names; ``status`` says whether
    there was one), cut to :data:`ANSWER_CHARS` characters."""
    citations: tuple[str, ...] = ()
    """uri (or label) of every citation the answer carried."""
    verified: bool | None = None
    status: str | None = None
    routed: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def score_answer(case: QaCase, record: JudgedAnswer, latency_ms: float, toxicity: ToxicityScorer, *,
                 notices: Sequence[str] = ()) -> CaseResult:
    """Judge one answer record against its case.

    Args:
        notices: Texts the answering system may have put before the model's answer (the
            answer pipeline's UNVERIFIED notices); one leading notice is removed first, so
            only what the model wrote is judged — a notice would dilute the toxicity share
            and could match an expected phrase.
    """
    text = _model_text(record.text, notices)
    content = content_ok(text, case.expected)
    cites = not case.citations or any(citation_matches(r, c) for r in case.citations for c in record.citations)
    error = None
    if record.finish_reason in FAILED_REASONS:
        error = f"generation ended early (finish_reason={record.finish_reason!r})"
    score = toxicity.score(text)
    return CaseResult(
        case_id=case.id, domain=case.domain, release_id=record.release_id,
        passed=content and cites and error is None, content_ok=content, citations_ok=cites,
        cited=(bool(record.citations) and error is None) if case.needs_citation else None,
        # The intake filter's own rule (score above its threshold), so an answer QA calls
        # toxic is one the filter would refuse to train on.
        toxic=score > toxicity.threshold, toxicity=round(score, 4), latency_ms=round(latency_ms, 3), error=error,
        query=case.query, answer=_truncate(text), citations=tuple(c.uri or c.label or "" for c in record.citations),
        verified=record.verified, status=record.status, routed=tuple(record.domains))


def error_result(case: QaCase, release_id: str, latency_ms: float, error: str) -> CaseResult:
    """A case whose answer failed with ``error``: not passed, not cited, not toxic."""
    return CaseResult(case_id=case.id, domain=case.domain, release_id=release_id, passed=False, content_ok=False,
                      citations_ok=False, cited=False if case.needs_citation else None, toxic=False, toxicity=0.0,
                      latency_ms=round(latency_ms, 3), error=error, query=case.query)


def _model_text(text: str, notices: Sequence[str]) -> str:
    for notice in notices:
        if notice and text.startswith(notice):
            return text[len(notice):].lstrip()
    return text


def _truncate(text: str, limit: int = ANSWER_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
