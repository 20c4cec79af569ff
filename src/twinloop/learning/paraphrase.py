"""Paraphrases of a corrected question, so an adapter learns the fact and not the wording.

An adapter trained only on the question as the user typed it learns that string: asked in
other words, it answers as before (knowledge editing calls the missing property
"generalisation"). So the trainer also trains on rewrites of the question with the same
target (docs/DESIGN.md "Learning"):

- **Template paraphrases** wrap or lightly reword the question ("Quick question: …",
  "Q: …\\nA:", without its question mark), in English or German. They need no model, are
  deterministic and always grammatical, but vary only the surface.
- **Model paraphrases** ask the base model to rewrite the question. They vary more, and can
  go wrong in ways that would teach something false, so each one passes
  :func:`keep_paraphrase`: it must keep every name, number and rare word of the question (a
  made-up "Zorbania" must survive), must not state the answer (a question that contains its
  answer teaches nothing and may teach a wrong association), must still be a question, and —
  with an embedder — must stay close in meaning.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from twinloop.kernel.errors import InvalidInputError
from twinloop.kernel.text import normalise_text
from twinloop.learning.sample import Sample
from twinloop.knowledge.terms import names, rare_words

REWRITE_SYSTEM = "Rewrite the user's question in different words. Reply with the rewritten question only."
"""The system prompt that asks the base model for one paraphrase."""
CANDIDATES_PER_PARAPHRASE = 3
"""Model samples drawn per paraphrase wanted: most are dropped by the filter."""
TEMPERATURE = 0.8
MAX_LENGTH_RATIO = 3.0
"""A candidate longer than this many times the question has wandered off (or is chatter)."""

_WORD = re.compile(r"\w+", re.UNICODE)
_GERMAN = frozenset({
    "der", "die", "das", "den", "dem", "des", "ein", "eine", "einen", "wie", "welche", "welcher", "welches",
    "welchen", "wer", "wann", "wo", "warum", "was", "ist", "sind", "im", "von", "mit", "für", "darf", "muss",
    "kann", "gibt", "nach", "bis", "wird"})
_ENGLISH_LEAD = frozenset({
    "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "is", "are", "was", "were", "do",
    "does", "did", "can", "could", "may", "might", "should", "would", "will", "shall", "has", "have", "had"})
_IMPERATIVES = frozenset({"tell", "name", "list", "give", "explain", "describe", "define", "state", "identify"})
_QUESTION_WORDS = _ENGLISH_LEAD | _IMPERATIVES | frozenset({
    "please", "wer", "wen", "wem", "wessen", "welche", "welcher", "welches", "welchen", "wann", "wo", "woher",
    "wohin", "warum", "weshalb", "wieso", "wie", "ist", "sind", "war", "gibt", "kann", "können", "darf",
    "muss", "hat", "haben", "nenne", "nennen", "sag", "sage", "sagen", "erkläre", "erklären", "beschreibe",
    "bitte"})
_CHATTER = re.compile(r"^(?:(?:sure|okay|ok|certainly|of course)\b[^:\n]{0,60}|here(?:'s| is)\b[^:\n]{0,50}):\s*",
                      re.IGNORECASE)
_LABEL = re.compile(r"^(?:(?:rewritten|reworded|paraphrased|new)\s+(?:question|version)|paraphrase|question|q|"
                    r"umformulierte frage|frage)\s*:\s*", re.IGNORECASE)
_BULLET = re.compile(r"^(?:[-*•]|\d+[.)])\s+")
_QUOTES = "\"'`“”„‘’«»‹›"
_LEAD_LABEL = re.compile(r"^[^\W\d_][\w' ]{0,30}:\s*", re.UNICODE)
_ANSWER_CUE = re.compile(r"\s*\bA:\s*$")


def _check_n(n: int, what: str = "n") -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise InvalidInputError(f"{what} = {n!r}: need a whole number >= 0")


def is_german(question: str) -> bool:
    """Two or more German function words ("der", "wie", "ist", …) make a question German."""
    return sum(w.casefold() in _GERMAN for w in _WORD.findall(question)) >= 2


def looks_like_question(text: str) -> bool:
    """Ends with "?" (a trailing "A:" cue aside), or starts — after one short label such as
    "Quick question:" — with a question word or an imperative ("tell", "name", "wie", "nenne")."""
    t = _ANSWER_CUE.sub("", text.strip()).strip()
    if t.endswith("?"):
        return True
    for candidate in (t, _LEAD_LABEL.sub("", t, count=1)):
        words = _WORD.findall(candidate)
        if words and words[0].casefold() in _QUESTION_WORDS:
            return True
    return False


def _all_templates(question: str) -> list[str]:
    q = " ".join(question.split())
    body = q.rstrip("?.! ")
    if not body:
        return []
    if is_german(q):
        return [f"Kurze Frage: {q}", f"Ich möchte gerne wissen: {q}", f"Können Sie mir sagen: {q}",
                f"{body}" if q.endswith("?") else f"{body}?", f"F: {q}\nA:", f"{body}, bitte?",
                f"Frage: {q}", f"Kannst du mir sagen: {q}", f"Bitte beantworte: {q}", f"Sag mir bitte: {q}"]
    first = _WORD.findall(q)[:1]
    low = q[0].lower() + q[1:] if first and first[0].casefold() in _ENGLISH_LEAD | _IMPERATIVES else q
    return [f"Quick question: {low}", f"I would like to know: {low}", f"Can you tell me: {low}",
            f"{body}" if q.endswith("?") else f"{body}?", f"Q: {q}\nA:", f"{body}, please?",
            f"Question: {q}", f"Please answer: {low}", f"Tell me: {low}", f"Hey, {low}"]


def template_paraphrases(question: str, n: int) -> list[str]:
    """Up to ``n`` distinct rewrites of ``question`` in a fixed order, none equal to it once
    case and spacing are ignored, each still a question (:func:`looks_like_question`)."""
    _check_n(n)
    seen = {normalise_text(question)}
    out: list[str] = []
    for t in _all_templates(question):
        key = normalise_text(t)
        if len(out) >= n:
            break
        if key not in seen and looks_like_question(t):
            seen.add(key)
            out.append(t)
    return out


def clean_candidate(text: str) -> str:
    """A model's reply reduced to the question: its first non-empty line, without a label such
    as "Rewritten question:" and without surrounding quotes."""
    for line in text.splitlines():
        line = _CHATTER.sub("", line.strip(), count=1)
        line = _LABEL.sub("", _BULLET.sub("", line, count=1), count=1)
        line = " ".join(line.strip().strip(_QUOTES).split())
        if line:
            return line
    return ""


def _has_word(word: str, text: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE) is not None


def keep_paraphrase(original: str, candidate: str, answer: str, embedder: Any = None,
                    min_similarity: float = 0.7) -> bool:
    """Whether ``candidate`` (already :func:`clean_candidate`-ed) may stand for ``original``.

    Rejects an empty candidate, one over :data:`MAX_LENGTH_RATIO` times the original's length,
    the original itself (case and spacing ignored), one that states ``answer`` (as a whole
    word or phrase, case-insensitive) where the original does not, one that drops a name, number
    or rare word of the original (:func:`~twinloop.knowledge.terms.names`,
    :func:`~twinloop.knowledge.terms.rare_words`), one that is no question, and — with an
    ``embedder`` (``encode(list[str])`` giving L2-normalised rows) — one whose cosine with the
    original is below ``min_similarity``.
    """
    cand = candidate.strip()
    if not cand or len(cand) > MAX_LENGTH_RATIO * len(original.strip()):
        return False
    if normalise_text(cand) == normalise_text(original):
        return False
    ans = " ".join(answer.split()).strip(" .!?,;:" + _QUOTES)
    if ans and _has_word(ans, cand) and not _has_word(ans, original):
        return False
    if not all(_has_word(w, cand) for w in names(original) | set(rare_words(original))):
        return False
    if not looks_like_question(cand):
        return False
    if embedder is not None:
        vecs = np.asarray(embedder.encode([original, cand]), dtype=np.float32)
        if float(vecs[0] @ vecs[1]) < min_similarity:
            return False
    return True


def model_paraphrases(foundation: Any, question: str, n: int, *, seed: int = 0, answer: str = "",
                      embedder: Any = None, min_similarity: float = 0.7, exclude: Iterable[str] = ()) -> list[str]:
    """Up to ``n`` distinct rewrites of ``question`` by the base model (a
    :class:`~twinloop.foundation.model.Foundation`), in sampling order. Draws at most
    ``n`` × :data:`CANDIDATES_PER_PARAPHRASE` samples at :data:`TEMPERATURE` with seeds
    ``seed``, ``seed + 1``, …, and keeps those :func:`keep_paraphrase` accepts that are not
    in ``exclude`` (prompts already made, compared normalised)."""
    _check_n(n)
    seen = {normalise_text(question)} | {normalise_text(e) for e in exclude}
    out: list[str] = []
    # About four characters a token: twice the question's length in tokens, capped, is room for
    # any rewrite worth keeping (a longer reply is chatter the filter drops anyway).
    max_new_tokens = min(64, max(24, len(question) // 2))
    for i in range(n * CANDIDATES_PER_PARAPHRASE):
        if len(out) >= n:
            break
        reply = foundation.chat(question, max_new_tokens=max_new_tokens, temperature=TEMPERATURE, top_p=0.95,
                                seed=seed + i, system=REWRITE_SYSTEM)
        cand = clean_candidate(reply.text)
        key = normalise_text(cand)
        if key not in seen and keep_paraphrase(question, cand, answer, embedder, min_similarity):
            seen.add(key)
            out.append(cand)
    return out


def augment(samples: Iterable[Sample], *, templates: int, model: int, foundation: Any = None,
            embedder: Any = None, seed: int = 0) -> list[Sample]:
    """Paraphrase samples for ``samples`` (the originals are not among them).

    Per sample: up to ``templates`` template paraphrases, then — with a ``foundation`` — up
    to ``model`` model paraphrases, each a :class:`Sample` of the same domain and target with
    ``source="augmentation"`` and ``meta={"paraphrase_of": <original's sha256>, "kind":
    "template" | "model"}``. No two prompts of the output are equal once normalised, and none
    equals an original's prompt.
    """
    _check_n(templates, "templates")
    _check_n(model, "model")
    originals: Sequence[Sample] = list(samples)
    seen = {normalise_text(s.prompt) for s in originals}
    out: list[Sample] = []
    for k, s in enumerate(originals):
        made: list[tuple[str, str]] = []
        for t in _all_templates(s.prompt):
            if len(made) >= templates:
                break
            if normalise_text(t) not in seen and keep_paraphrase(s.prompt, t, s.target):
                seen.add(normalise_text(t))
                made.append((t, "template"))
        if foundation is not None and model > 0:
            for p in model_paraphrases(foundation, s.prompt, model, seed=seed + k * model * CANDIDATES_PER_PARAPHRASE,
                                       answer=s.target, embedder=embedder, exclude=seen):
                if normalise_text(p) not in seen:
                    seen.add(normalise_text(p))
                    made.append((p, "model"))
        digest = s.sha256()
        out.extend(Sample(domain=s.domain, prompt=p, target=s.target, source="augmentation",
                          request_id=s.request_id, meta={"paraphrase_of": digest, "kind": kind})
                   for p, kind in made)
    return out
