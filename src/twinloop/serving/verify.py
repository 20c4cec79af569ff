""""No source, no claim": checking an answer against the passages actually retrieved.

See docs/DESIGN.md "Serving". An answer in a domain that requires citations is
verified only when

- every claim (sentence of 4+ content words) is supported by a retrieved passage: most of
  its content words (``SUPPORT``) and every number in it occur in that passage — so "within
  72 hours" is supported by Art. 33(1) and "set out in Article 55" is not;
- every ``[n]`` marker the model wrote points at a passage that was in the prompt (a ``[7]``
  when five were retrieved is an invented citation) and supports that claim; and
- every quotation (text in double quotes, 12+ characters) appears verbatim, whitespace
  aside, in a passage.

Otherwise it is UNVERIFIED and says so in plain words. The answer's citations are the
passages that support its claims — attributed by this check, since a small model rarely
writes markers itself — so a citation can only ever name a retrieved passage that contains
what it is cited for. Each carries a verbatim quote: the passage's sentence that shares the
most words with the answer.
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


SUPPORT = 0.6
"""Share of a claim's content words that must occur in one passage for it to count as
supported; below about half, paraphrase and unsupported additions become indistinguishable."""
MIN_CLAIM_WORDS = 4
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
STOPWORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its this "
    "that these those there their they them he she his her we you your our i me my not no yes do does did "
    "can could may might must shall should will would has have had which who whom what when where why how "
    "also such than then so very into about under over any all each other more most some only own same "
    "der die das und oder ein eine nicht ist sind zu von mit".split()
)


@dataclass(frozen=True)
class Verification:
    verified: bool
    cited: list[int]
    """Passages supporting the answer's claims (1-based), in order of first use."""
    invalid_markers: list[int]
    """Markers pointing at no retrieved passage."""
    bad_quotes: list[str]
    """Quoted text found in no passage."""
    unsupported: list[str]
    """Claims no retrieved passage supports."""
    claims: int = 0

    @property
    def reason(self) -> str:
        if self.invalid_markers:
            return f"cites passages that were not retrieved: {self.invalid_markers}"
        if self.bad_quotes:
            return "quotes text that is not in the passages"
        if self.unsupported:
            return f"{len(self.unsupported)} of {self.claims} claims have no supporting source"
        if not self.cited:
            return "no claim is supported by a retrieved passage"
        return "ok"


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def _content(text: str) -> set[str]:
    return {w.casefold() for w in _WORD.findall(text) if w.casefold() not in STOPWORDS and not w.isdigit()}


def _supports(claim: str, passage_words: set[str], passage_text: str, given: frozenset[str] = frozenset()) -> bool:
    words = _content(claim) - given
    if not words:
        return True
    numbers = _NUMBER.findall(MARKER.sub("", claim))
    if any(n not in passage_text for n in numbers):
        return False
    return len(words & passage_words) / len(words) >= SUPPORT


def claims_of(answer: str, question: str = "") -> list[str]:
    """Sentences that assert something beyond the question: enough content words, and at
    least two the question does not already contain (a restated question is no claim, and
    must not make an empty answer look verified)."""
    given = _content(question)
    out = []
    for s in _SENTENCE.split(answer):
        words = _content(MARKER.sub("", s))
        if len(words) >= MIN_CLAIM_WORDS and len(words - given) >= 2:
            out.append(s.strip())
    return out


def check(answer: str, passages: list[Hit], question: str = "") -> Verification:
    """Check an answer's claims, ``[n]`` markers and quotes against the numbered passages.

    Words of the question do not count towards a claim's support: only what the answer adds
    has to be found in a source.
    """
    invalid = sorted({int(m.group(1)) for m in MARKER.finditer(answer)
                      if not 1 <= int(m.group(1)) <= len(passages)})
    texts = [p.text for p in passages]
    words = [_content(t) for t in texts]
    cited: list[int] = []
    unsupported: list[str] = []
    claims = claims_of(answer, question)
    given = frozenset(_content(question))
    for claim in claims:
        marked = [int(m.group(1)) for m in MARKER.finditer(claim) if 1 <= int(m.group(1)) <= len(passages)]
        # A claim with markers must be supported by a passage it cites; one without by any.
        candidates = marked or range(1, len(passages) + 1)
        support = next((n for n in candidates if _supports(claim, words[n - 1], texts[n - 1], given)), None)
        if support is None:
            unsupported.append(claim)
        elif support not in cited:
            cited.append(support)
    sources = [_norm(t) for t in texts]
    bad = [q for q in (m.group(1) for m in QUOTED.finditer(answer)) if not any(_norm(q) in s for s in sources)]
    ok = bool(cited) and not invalid and not bad and not unsupported
    return Verification(ok, cited, invalid, bad, unsupported, len(claims))


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
