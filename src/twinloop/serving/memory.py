"""Correction memory at serving time: is a question within an accepted correction's scope?

The paper's fast path (docs/PAPER.md) puts a fact in front of users at once and consolidates it
into adapters later. A correction (``knowledge/corrections.py``) is served only for questions
in its scope — the same question asked another way — and no other, in the spirit of SERAC's
scope classifier and GRACE's deferral radius: an unrelated question takes the ordinary path
and its answer is unchanged (locality, docs/DESIGN.md "Learning").

The scope decision, three tests on the nearest correction:

- **Same subject.** The correction's subject (given, or the names in its question: capitalised
  words, acronyms, numbers) must be named in the question — "Who runs Brennor Dynamics?"
  falls within a correction about Brennor Dynamics, "Who runs Veltrane?" does not, however
  alike the two sentences are.
- **Same form of answer.** When the question asks for a form of answer (an age, a period,
  a rate: ``serving/asked.py``), the correction — its question and answer read together, as
  a passage would be — gives it: "21 days" can answer "within what period…", not "what
  percentage of turnover…" about the same act.
- **Same question.** The cosine of the two questions' embeddings reaches a threshold
  calibrated on held-out edits (``scripts/calibrate_correction_scope.py``: paraphrases must
  pass, other facts about the same subject and unrelated questions must not). With the
  form test the calibrated threshold is 0.82 and 79 % of calibration questions and
  paraphrases match their own correction; without it, 0.84 and 75 % at the same 2 % of
  false matches.

In scope, the answer is the correction itself — quoted from its document and cited with its
provenance — never a generation that might misquote it.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from twinloop.kernel.errors import ConfigError
from twinloop.knowledge.corrections import Correction, CorrectionStore
from twinloop.knowledge.retrieval import Hit
from twinloop.serving.asked import not_given
from twinloop.serving.evidence import STOPWORDS

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class ScopeModel:
    """The calibrated threshold of the scope decision."""

    threshold: float
    fitted_on: dict[str, Any]

    @classmethod
    def from_dict(cls, doc: Any) -> ScopeModel:
        t = doc.get("threshold") if isinstance(doc, dict) else None
        if not isinstance(t, (int, float)) or not 0 < float(t) < 1:
            raise ConfigError(f"correction scope: threshold = {t!r}: must be a number between 0 and 1")
        return cls(float(t), dict(doc.get("fitted_on") or {}))


@lru_cache(maxsize=1)
def default_scope() -> ScopeModel:
    """The scope threshold shipped with the packs (``packs/correction_scope.json``)."""
    text = resources.files("twinloop.packs").joinpath("correction_scope.json").read_text("utf-8")
    return ScopeModel.from_dict(json.loads(text))


def subject_words(correction: Any) -> set[str]:
    """The words that name what a correction is about: its subject's, else its question's names."""
    text = correction.subject or ""
    if not text:
        words = _WORD.findall(correction.question)
        text = " ".join(w for i, w in enumerate(words)
                        if any(ch.isdigit() for ch in w) or (w.isupper() and len(w) > 1)
                        or (i > 0 and w[:1].isupper()))
    return {w.casefold() for w in _WORD.findall(text) if len(w) > 2 and w.casefold() not in STOPWORDS}


def names_subject(question: str, words: set[str]) -> bool:
    """The question names the subject: one of its words, or a form of it (the same first five
    letters: "Brennor's", "Veltranes")."""
    if not words:
        return True  # nothing names it (a general question): the similarity alone decides
    asked = {w.casefold()[:5] for w in _WORD.findall(question)}
    return any(w[:5] in asked for w in words)


def nearest_in_scope(question: str, query_vector: np.ndarray, candidates: list[Any], vectors: np.ndarray,
                     threshold: float) -> tuple[int, float] | None:
    """The index and similarity of the correction ``question`` falls under, or None: among the
    ``candidates`` (with ``question``, ``subject`` and ``answer``) whose subject it names and
    whose question and answer give the form it asks for, the nearest by cosine of the (normalised)
    question ``vectors``, if it reaches ``threshold``."""
    named = [i for i, c in enumerate(candidates) if names_subject(question, subject_words(c))
             and not not_given(question, f"{c.question} {getattr(c, 'answer', None) or ''}", count=False)]
    if not named:
        return None
    sims = vectors[named] @ np.asarray(query_vector, dtype=np.float32).reshape(-1)
    best = int(np.argmax(sims))
    return (named[best], float(sims[best])) if float(sims[best]) >= threshold else None


@dataclass(frozen=True)
class Match:
    """The correction a question falls under, and how close it is."""

    correction: Correction
    similarity: float
    hit: Hit
    """The correction's document as a retrieved passage (what the answer cites)."""


class CorrectionMemory:
    """Looks questions up among the corrections a release serves.

    Args:
        store: The corrections.
        embedder: The embedder of the questions (the router's, so a query vector is reused).
        lineage: Release id → the ids it descends from, itself included (corrections accepted
            under any of them are served by it).
        scope: The calibrated threshold (default: the shipped one).
    """

    def __init__(self, store: CorrectionStore, embedder: Any, lineage, scope: ScopeModel | None = None) -> None:
        self.store = store
        self.embedder = embedder
        self.lineage = lineage
        self.scope = scope or default_scope()
        self._vectors: dict[tuple[int, str], np.ndarray] = {}
        self._lock = threading.Lock()

    def lookup(self, question: str, domains: list[str], release_id: str, revision: int | None = None,
               query_vector: Any = None) -> Match | None:
        """The correction ``question`` falls under, or None (then the ordinary path answers)."""
        candidates = self.store.servable(domains, revision)
        if not candidates:
            return None
        served = self.lineage(release_id)
        candidates = [c for c in candidates if c.release_id is None or c.release_id in served]
        if not candidates:
            return None
        q = np.asarray(query_vector if query_vector is not None else self.embedder.encode([question])[0],
                       dtype=np.float32).reshape(-1)
        found = nearest_in_scope(question, q, candidates, self._question_vectors(candidates), self.scope.threshold)
        if found is None:
            return None
        c, similarity = candidates[found[0]], found[1]
        hit = self._hit(c, similarity)
        return None if hit is None else Match(c, similarity, hit)

    def _question_vectors(self, candidates: list[Correction]) -> np.ndarray:
        with self._lock:
            missing = [c for c in candidates if (c.id, c.question) not in self._vectors]
        if missing:
            new = self.embedder.encode([c.question for c in missing])
            with self._lock:
                for c, v in zip(missing, new, strict=True):
                    self._vectors[(c.id, c.question)] = np.asarray(v, dtype=np.float32).reshape(-1)
        with self._lock:
            return np.stack([self._vectors[(c.id, c.question)] for c in candidates])

    def _hit(self, c: Correction, similarity: float) -> Hit | None:
        row = self.store.db.conn.execute(
            "SELECT d.id, d.meta, k.id FROM kn_documents d JOIN kn_chunks k ON k.doc_id = d.id "
            "WHERE d.uri = ? AND d.removed_rev IS NULL AND d.erased = 0 ORDER BY k.seq LIMIT 1", (c.uri,)).fetchone()
        if row is None:
            return None  # removed from the index since the list was read
        citation = json.loads(row[1]) | {"correction": c.provenance()}
        return Hit(chunk_id=int(row[2]), doc_id=int(row[0]), domain=c.domain, text=c.text, citation=citation,
                   label=f"Correction {c.id} [{c.created_at[:10]}]", score=round(similarity, 6), dense=similarity,
                   bm25=None)
