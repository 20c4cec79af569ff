"""The grounded answer of a citation-required domain: decided before generation, assembled after.

Before generation (:func:`decide`): is the question about something the index holds
(``serving/scope.py``: else ``out_of_scope``), and does the retrieved evidence answer it
(``serving/evidence.py``: else ``cannot_verify``)? Only then does the model run, under the
quote constraint (``serving/quotes.py``), with a relevance prior on where quotes start.

After generation (:func:`assemble`): the row's tokens are parsed back into claims, each a
verbatim span of a passage it cites; claims whose numbers and dates do not all occur in the
passage they cite, or that say nothing about the question, are dropped. When none is left,
the best sentences of the top passages are quoted instead (the extractive fallback), and the
answer says that it is quoted. No sentence reaches the user as fact unless its words come
from a retrieved passage (docs/DESIGN.md "Serving").
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from twinloop.knowledge.retrieval import article_number
from twinloop.serving.evidence import (
    Answerability,
    Sentence,
    asked_years,
    best_giver,
    content_words,
    features,
    givers,
    missing_unit,
    rank_sentences,
    unmentioned,
)
from twinloop.serving.quotes import (
    Claim,
    Grammar,
    QuotablePassage,
    QuoteConstraint,
    parse_claims,
    quotable,
)
from twinloop.serving.asked import asks_for_form, gives_any, not_given, wanted
from twinloop.serving.scope import Catalog, ScopeVerdict, out_of_scope, pinpoints

Status = Literal["answered", "cannot_verify", "out_of_scope"]

PRIOR_WEIGHT = 8.0
"""Logit bonus per unit of sentence relevance at a quote's first token: enough to lift the
sentence retrieval ranks best above a generic opening the model prefers, not enough to
overrule a clear preference of the model between two relevant ones."""
FALLBACK_SENTENCES = 3
"""Quoted sentences in an extractive answer at most: the best two, and a third when nearly as
good. The sentence ranker finds the fact first in about two questions of three and among the
first two in about seven of ten (docs/DESIGN.md "Facts measured here"): a second quote costs
the user one line and saves many a refusal-free miss."""
FALLBACK_MARGIN = 0.85
"""The third sentence is quoted only when it scores at least this share of the best."""
MIN_RELEVANCE = 0.25
"""A claim whose sentence scores below this says nothing about the question: dropped."""
RELATIVE_RELEVANCE = 0.6
"""A claim scoring below this share of the best claim's relevance is dropped."""
MAX_CLAIMS = 3
"""Quotes in one answer at most: the model's (two at most, ``quotes.MAX_CLAIMS``) and the
extractive picks, the most relevant first."""
WIDER_SEARCH = 20
"""Passages searched again when none of the first gives the form of answer asked for: the
age of "Wie alt muss man sein…" may be in the sixth passage; the decision is then taken on
the first passages and those of the wider search that give it."""
POSSIBLY_RELATED = 3
"""Passages a refusal lists as possibly related (never as claims)."""

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


@dataclass
class Decision:
    """What was decided before generation."""

    status: Status
    reason: str = ""
    verdict: ScopeVerdict | None = None
    ranked: list[Sentence] = field(default_factory=list)
    features: dict[str, float] = field(default_factory=dict)
    probability: float | None = None
    threshold: float | None = None
    allowed: frozenset[int] | None = None
    """The passages (1-based) claims may quote: those of the provision the question names
    (:func:`scope.pinpoints`); None when it names none."""
    years: tuple[str, ...] = ()
    """Years the answer's quotes must state (:func:`evidence.asked_years`; undated sources only)."""
    unanswered_form: bool = False
    """Refused because no passage gives the form of answer asked for (an age, a period): a
    wider search may find one (:data:`WIDER_SEARCH`)."""

    def searched(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.probability is not None:
            out["answerability"] = {"probability": round(self.probability, 4), "threshold": self.threshold,
                                    "features": {k: round(v, 4) for k, v in self.features.items()}}
        if self.verdict is not None:
            out["asked_for"] = self.verdict.asked
        return out


def decide(question: str, domains: list[str], hits: Sequence[Any], catalog: Catalog, jurisdiction: str | None,
           embedder: Any, answerability: Answerability, query_vector: Any = None,
           as_of: str | None = None) -> Decision:
    """Out of scope, cannot verify, or answer — before any token is generated."""
    verdict = out_of_scope(question, domains, catalog, jurisdiction, as_of=as_of)
    if verdict is not None:
        return Decision("out_of_scope", verdict.reason, verdict=verdict)
    if not hits:
        return Decision("cannot_verify", "nothing in the index matched the question")
    # Sources with jurisdictions are dated editions (law): a year in the question is an as-of
    # date there. Elsewhere (a filing, a study) the year is what the question is about.
    dated = any(catalog.jurisdictions.get(d) for d in domains)
    allowed = None
    pins = pinpoints(question, catalog) if dated else set()
    if pins:
        # When none of the named provision's passages was retrieved, the others stay: the rule
        # a question names often sends elsewhere for its procedure ("a delegated act under
        # Article 12(8)" is governed by Article 92), and the answerability model still decides.
        allowed = frozenset(n for n, h in enumerate(hits, start=1)
                            if (h.citation.get("code"), article_number(h.citation.get("article"))) in pins) or None
    texts = [h.text for h in hits]
    missing = unmentioned(question, texts, dated=dated)
    if missing:
        # The question is about something no retrieved passage names (a company, a drug, a
        # year): whatever the passages say, it is not about that.
        return Decision("cannot_verify", f"no passage found mentions {', '.join(repr(m) for m in missing[:3])}")
    unit = missing_unit(question, [h.text for n, h in enumerate(hits, start=1) if allowed is None or n in allowed])
    if unit is not None:
        return Decision("cannot_verify", f"the question asks for {unit}, and no passage found gives one",
                        unanswered_form=True)
    ranked = rank_sentences(question, [h.text for h in hits], embedder, query_vector, [h.score for h in hits])
    feats = features(question, ranked, hits)
    if allowed is not None:
        ranked = [r for r in ranked if r.n in allowed]
    extra = {"allowed": allowed, "years": () if dated else tuple(asked_years(question))}
    p = answerability.probability(feats)
    threshold = max(answerability.threshold(d) for d in domains) if domains else answerability.default
    if asks_for_form(question) and not givers(question, ranked, texts):
        # "Wie alt…" is not answered by a sentence without an age, nor "how many" by one whose
        # only numbers name an article: what the question asks for must be in some sentence.
        return Decision("cannot_verify", f"the question asks for {' or '.join(wanted(question))}, and no sentence "
                        "found gives it",
                        ranked=ranked, features=feats, probability=p, threshold=threshold, unanswered_form=True,
                        **extra)
    if p < threshold:
        return Decision("cannot_verify", "the passages found do not answer the question", ranked=ranked,
                        features=feats, probability=p, threshold=threshold, **extra)
    return Decision("answered", ranked=ranked, features=feats, probability=p, threshold=threshold, **extra)


def answer_passage(question: str, decision: Decision, passages: Sequence[str]) -> int | None:
    """The passage (1-based) of the best sentence that gives what the question asks for, or
    None: the prompt keeps it within its token budget before passages that rank higher but do
    not give it (a long statute's neighbouring sections would otherwise push it out)."""
    best = best_giver(question, decision.ranked, passages) if asks_for_form(question) else None
    return best.n if best is not None else None


def renumbered(decision: Decision, kept: Sequence[int]) -> Decision:
    """``decision`` over the passages ``kept`` (1-based numbers, in their new order): sentences
    of the others dropped, the rest renumbered."""
    new = {old: i for i, old in enumerate(kept, start=1)}
    ranked = [replace(s, n=new[s.n]) for s in decision.ranked if s.n in new]
    allowed = frozenset(new[n] for n in decision.allowed if n in new) if decision.allowed is not None else None
    return replace(decision, ranked=ranked, allowed=allowed)


@dataclass
class Quoting:
    """The constraint of one request and what is needed to read its tokens back."""

    passages: list[QuotablePassage]
    grammar: Grammar
    constraint: QuoteConstraint


def quoting(tokenizer: Any, hits: Sequence[Any], ranked: Sequence[Sentence]) -> Quoting:
    """The quote constraint for a request, with the relevance prior from ``ranked``."""
    grammar = _grammar(tokenizer)
    passages = [quotable(tokenizer, h.text) for h in hits]
    prior: dict[tuple[int, int], float] = {}
    best = {(s.n, s.start): s.score for s in ranked}
    for n, p in enumerate(passages, start=1):
        for pos in p.starts:
            a, b = p.offsets[pos]
            span = p.text[max(a, 0):b]
            char = max(a, 0) + len(span) - len(span.lstrip())
            score = best.get((n, char))
            if score is not None:
                prior[(n, pos)] = PRIOR_WEIGHT * score
    return Quoting(passages, grammar, QuoteConstraint(passages, grammar, prior=prior))


_GRAMMARS: dict[int, tuple[Any, Grammar]] = {}
"""Per tokenizer (a process has one or two): the tokenizer is kept with its grammar, so a
recycled ``id()`` can never hand one tokenizer another's token ids."""


def _grammar(tokenizer: Any) -> Grammar:
    held = _GRAMMARS.get(id(tokenizer))
    if held is None or held[0] is not tokenizer:
        held = _GRAMMARS[id(tokenizer)] = (tokenizer, Grammar.for_tokenizer(tokenizer))
    return held[1]


@dataclass(frozen=True)
class GroundedClaim:
    """A claim as the answer states it: verbatim text and the passages it cites (1-based)."""

    text: str
    citations: list[int]
    n: int
    start: int
    end: int


@dataclass
class Grounded:
    """The claims of an answered question, and how they were made."""

    claims: list[GroundedClaim]
    mode: Literal["generated", "extractive"]
    dropped: list[str] = field(default_factory=list)
    refusal: str = ""
    """Why there is no answer although quotes were found (they do not state the year asked about)."""


def assemble(question: str, tokens: Sequence[int], q: Quoting, ranked: Sequence[Sentence],
             allowed: frozenset[int] | None = None, years: Sequence[str] = ()) -> Grounded:
    """Claims from the generated tokens, checked; the extractive fallback when none survive.

    ``allowed``: the passages claims may quote (the provision the question names); ``years``:
    years the quotes together must state, else there is no answer (:class:`Decision`).
    """
    made = _assemble(question, tokens, q, ranked, allowed)
    if made.claims and asks_for_form(question):
        made = _with_best_giver(question, made, ranked, q)
    if made.claims and not_given(question, " ".join(c.text for c in made.claims)):
        made = _with_answer(question, made, ranked, q)
    if asks_for_form(question):
        # The quote that gives what was asked (the age, the figure) comes first.
        made.claims.sort(key=lambda c: not gives_any(question, c.text))
    missing = [y for y in years if y not in " ".join(c.text for c in made.claims)]
    if made.claims and missing:
        made = _with_years(made, ranked, missing)
        missing = [y for y in years if y not in " ".join(c.text for c in made.claims)]
    if made.claims and missing:
        # A filing's sentence about 2019 does not answer for 2017, however close its wording.
        return Grounded([], made.mode, made.dropped,
                        f"no passage found states {', '.join(missing)}, the year the question asks about")
    return made


def _with_years(made: Grounded, ranked: Sequence[Sentence], years: Sequence[str]) -> Grounded:
    """The claims with the best sentence of a passage they already quote that states
    ``years``: "Since the inception of the plan, $41.9 million…" answers for fiscal 2017 when
    the same passage says "The Fiscal 2017 Restructuring Plan…" — the reader needs that line."""
    quoted = {c.n for c in made.claims}
    for s in ranked:
        if s.n in quoted and all(y in s.text for y in years) and not any(
                c.n == s.n and c.start < s.end and s.start < c.end for c in made.claims):
            return Grounded([*made.claims[:MAX_CLAIMS - 1], GroundedClaim(s.text, [s.n], s.n, s.start, s.end)],
                            made.mode, made.dropped)
    return made


def _with_best_giver(question: str, made: Grounded, ranked: Sequence[Sentence], q: Quoting) -> Grounded:
    """The claims with the best-ranked sentence that gives what the question asks for, when
    the quotes leave it out: asked how often, a 135M model quotes "mindestens zweimal
    schriftlich gemahnt" from the passage beside the one that says "einmal je Kalenderjahr".
    Neither the model nor the ranking (question similarity, coverage, retrieval score) is
    always right — asked for how long the commissioner is elected, the model quotes "Die Wahl
    erfolgt für fünf Jahre" and the ranking prefers a 72-hour deadline that names the
    commissioner — so both stand, the model's quotes that give the form first, then this one
    (first when the model's give none)."""
    best = best_giver(question, ranked, [p.text for p in q.passages])
    if best is None or any(c.n == best.n and c.start < best.end and best.start < c.end for c in made.claims):
        return made
    claims = [*made.claims, GroundedClaim(best.text, [best.n], best.n, best.start, best.end)]
    claims.sort(key=lambda c: not gives_any(question, c.text))
    return Grounded(claims[:MAX_CLAIMS], made.mode, made.dropped)


def _with_answer(question: str, made: Grounded, ranked: Sequence[Sentence], q: Quoting) -> Grounded:
    """The claims led by the best sentence for each form the question asks for and the quotes
    do not give (an age, a figure): the model quoted around the answer, not the answer itself.
    When no quote gives any of them: no answer — the quotes do not say what was asked."""
    claims = list(made.claims)
    passages = [p.text for p in q.passages]
    lead: list[GroundedClaim] = []
    for form in not_given(question, " ".join(c.text for c in claims)):
        for g in givers(question, ranked, passages, form):
            if not any(c.n == g.n and c.start < g.end and g.start < c.end for c in [*lead, *claims]):
                lead.append(GroundedClaim(g.text, [g.n], g.n, g.start, g.end))
                break
    claims = [*lead, *claims][:MAX_CLAIMS]
    if not gives_any(question, " ".join(c.text for c in claims)):
        return Grounded([], made.mode, made.dropped,
                        f"no sentence found gives {' or '.join(wanted(question))}, which the question asks for")
    return Grounded(claims, made.mode, made.dropped)


def _assemble(question: str, tokens: Sequence[int], q: Quoting, ranked: Sequence[Sentence],
              allowed: frozenset[int] | None) -> Grounded:
    relevance = {(s.n, s.start, s.end): s.score for s in ranked}
    words = content_words(question)
    kept: list[GroundedClaim] = []
    dropped: list[str] = []
    for c in parse_claims(tokens, q.passages, q.grammar):
        text = q.passages[c.n - 1].text
        if not c.complete:  # cut off by the token limit: a fragment, not a statement
            dropped.append(f"[{c.n}] cut off by the token limit")
            continue
        if allowed is not None and c.n not in allowed:
            dropped.append(f"[{c.n}] not from the provision the question names")
            continue
        if not _numbers_supported(c, text):
            dropped.append(f"[{c.n}] numbers or dates not in the passage it cites")
            continue
        score = _relevance(c, relevance)
        if score < MIN_RELEVANCE and not (words & content_words(c.text)):
            dropped.append(f"[{c.n}] says nothing about the question")
            continue
        if any(k.n == c.n and k.start == c.start for k in kept):
            continue
        kept.append(GroundedClaim(c.text, [c.n], c.n, c.start, c.end))
    if kept:
        # A claim far less relevant than the best one adds reading and no answer.
        scores = {(k.n, k.start): _relevance_of(k, relevance) for k in kept}
        best = max(scores.values())
        final = []
        for k in kept:
            if scores[(k.n, k.start)] < RELATIVE_RELEVANCE * best:
                dropped.append(f"[{k.n}] far less relevant than the best claim")
            else:
                final.append(k)
        # The sentences the extractive answer would quote go in too when the model quoted
        # elsewhere: a 135M model often opens on the right passage but the wrong sentence, and
        # a verbatim, cited quote costs the user one line (measured in docs/bench/grounding.md).
        for best in extractive(ranked):
            if not any(k.n == best.n and k.start < best.end and best.start < k.end for k in final):
                final.append(best)
        final.sort(key=lambda k: -_relevance_of(k, relevance))
        return Grounded(final[:MAX_CLAIMS], "generated", dropped)
    return Grounded(extractive(ranked), "extractive", dropped)


def extractive(ranked: Sequence[Sentence]) -> list[GroundedClaim]:
    """The best sentences of the passages, quoted (:data:`FALLBACK_SENTENCES`), none overlapping another."""
    out: list[Sentence] = []
    for s in ranked:
        if len(out) == FALLBACK_SENTENCES:
            break
        if any(o.n == s.n and s.start < o.end and o.start < s.end for o in out):
            continue  # a sentence read with its antecedent overlaps that antecedent
        if len(out) >= 2 and s.score < FALLBACK_MARGIN * out[0].score:
            break
        out.append(s)
    return [GroundedClaim(s.text, [s.n], s.n, s.start, s.end) for s in out]


def _numbers_supported(c: Claim, passage: str) -> bool:
    """Every number and date in the claim occurs in the passage it cites. A quote is a span of
    its passage, so this holds by construction; it is checked anyway, as the rule is about the
    answer, not about how it was made."""
    return all(n in passage for n in _NUMBER.findall(c.text))


def _relevance_of(k: GroundedClaim, relevance: dict[tuple[int, int, int], float]) -> float:
    return _relevance(Claim(k.n, k.start, k.end, k.text, True), relevance)


def _relevance(c: Claim, relevance: dict[tuple[int, int, int], float]) -> float:
    """The score of the ranked sentence the claim overlaps most (0 when none)."""
    best = 0.0
    for (n, a, b), score in relevance.items():
        if n == c.n and a < c.end and c.start < b:
            best = max(best, score)
    return best


def passage_sha256(text: str) -> str:
    """The SHA-256 of a stored passage, so a client can check ``exact_quote`` against it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
