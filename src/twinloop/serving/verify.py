""""No source, no claim": checking an answer's citations against what was retrieved.

Issue 4 point 2, DESIGN.md "Serving". An answer in a domain that requires citations is
verified only when

- it cites at least one passage with a ``[n]`` marker,
- every marker points at a passage that was actually in the prompt (a ``[7]`` when five
  passages were retrieved is an invented citation), and
- every quotation it makes (text in double quotes, 12+ characters) appears verbatim,
  whitespace aside, in one of the cited passages.

Otherwise it is UNVERIFIED and says so in plain words. Citations are built only from
retrieved passages, so none can be invented; each carries a verbatim quote: the passage's
sentence that shares the most words with the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from twinloop.knowledge.retrieval import Hit

MARKER = re.compile(r"\[(\d{1,3})\]")
QUOTED = re.compile(r"[\"“”„«]([^\"“”„«»]{12,})[\"“”»]")
_SENTENCE = re.compile(r"(?<=[.!?;:])\s+|\n+")
_WORD = re.compile(r"\w+", re.UNICODE)

UNVERIFIED_NOTICE = (
    "UNVERIFIED: this answer is not supported by a cited source and needs verification "
    "before you rely on it."
)
NO_SOURCE_NOTICE = (
    "UNVERIFIED: no source in the index supports an answer to this question; the text below "
    "is the model's own and needs verification."
)


@dataclass(frozen=True)
class Verification:
    verified: bool
    cited: list[int]
    """Passage numbers the answer cites that exist (1-based, in order of first mention)."""
    invalid_markers: list[int]
    """Markers pointing at no retrieved passage."""
    bad_quotes: list[str]
    """Quoted text found in none of the cited passages."""

    @property
    def reason(self) -> str:
        if self.invalid_markers:
            return f"cites passages that were not retrieved: {self.invalid_markers}"
        if self.bad_quotes:
            return "quotes text that is not in the cited passages"
        if not self.cited:
            return "cites no retrieved passage"
        return "ok"


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def check(answer: str, passages: list[Hit]) -> Verification:
    """Check an answer's ``[n]`` markers and quotes against the numbered passages."""
    cited: list[int] = []
    invalid: list[int] = []
    for m in MARKER.finditer(answer):
        n = int(m.group(1))
        target = cited if 1 <= n <= len(passages) else invalid
        if n not in target:
            target.append(n)
    sources = [_norm(passages[n - 1].text) for n in cited]
    bad = [q for q in (m.group(1) for m in QUOTED.finditer(answer)) if not any(_norm(q) in s for s in sources)]
    return Verification(bool(cited) and not invalid and not bad, cited, invalid, bad)


def best_quote(passage: str, answer: str, max_chars: int = 300) -> str:
    """The passage sentence sharing most words with the answer, verbatim."""
    sentences = [s.strip() for s in _SENTENCE.split(passage) if s.strip()]
    if not sentences:
        return passage[:max_chars]
    answer_words = {w.casefold() for w in _WORD.findall(answer)}

    def overlap(s: str) -> float:
        words = {w.casefold() for w in _WORD.findall(s)}
        return len(words & answer_words) / (len(words) ** 0.5 or 1.0)

    best = max(sentences, key=overlap)
    return best if len(best) <= max_chars else best[: max_chars - 1] + "…"
