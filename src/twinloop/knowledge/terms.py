"""The terms a question is about: its content words, its names and numbers, its rare words.

Both loops read questions this way — serving to decide whether retrieved passages are about
the question (``serving/evidence.py``), learning to check that a paraphrase of a corrected
question still asks about the same thing (``learning/paraphrase.py``) — so it sits below both.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its this "
    "that these those there their they them he she his her we you your our i me my not no yes do does did "
    "can could may might must shall should will would has have had which who whom what when where why how "
    "also such than then so very into about under over any all each other more most some only own same "
    "much many long there here whether per within without up down out".split()
)
"""Words that say nothing about what a question is after."""
_DIGIT = re.compile(r"\d")


def content_words(text: str) -> set[str]:
    """The words of ``text`` that are not :data:`STOPWORDS` (case-folded, two letters or more)."""
    return {w.casefold() for w in _WORD.findall(text) if w.casefold() not in STOPWORDS and len(w) > 1}


_GERMAN = frozenset("der die das und nach welche welcher welches wie wer wann ist im dem des ein eine von vor "
                    "mit für darf muss kann bis wird wurde".split())
_CITING = frozenset("gdpr dsgvo article articles art abs section paragraph regulation bdsg gg eu".split())
_YEAR = re.compile(r"^(1[89]|20)\d\d$")
_ARTICLE_REF = re.compile(r"(?:\bart(?:icle|ikel|\.)?s?|§§?|\babs(?:atz|\.)?|\bsatz|\bparagraph|\bnr\.?|\bnummer)"
                          r"\s*(\d+[a-z]?)((?:\s*\(\w+\))*)", re.IGNORECASE)


def names(question: str) -> set[str]:
    """The question's names and numbers: words capitalised after its first word (English: a
    German question capitalises every noun), acronyms and numbers — but not years (an as-of
    date is not asked *about*) nor article numbers and citation words (the passages carry
    those as metadata, not text)."""
    words = _WORD.findall(question)
    german = sum(w.casefold() in _GERMAN for w in words) >= 2
    # "Article 33(2)(a)": 33, 2 and a name the provision, not what it is about.
    cited = {p.casefold() for m in _ARTICLE_REF.finditer(question) for p in (m.group(1), *_WORD.findall(m.group(2)))}
    out = set()
    for i, w in enumerate(words):
        lw = w.casefold()
        if lw in STOPWORDS or lw in _CITING or lw in cited or _YEAR.match(w):
            continue
        if _DIGIT.search(w) or (w.isupper() and len(w) > 1) or (not german and i > 0 and w[:1].isupper()
                                                                  and len(w) > 2):
            out.add(lw)
    return out


RARE_ZIPF = 2.0
"""A word rarer than this in general English and German (Zipf scale: 2 ≈ once per 100 million
words) is a term of art or a name — a drug, a disease, a ticker. A question built on one that
no passage mentions is about something the sources do not know (checked on the eval sets:
no answerable question has such a word missing from its passages)."""
_LETTERS = re.compile(r"[^\W\d_][\w-]*", re.UNICODE)


def _zipf(word: str) -> float:
    """How common ``word`` is in English or German (wordfreq's Zipf scale, 0 when unknown)."""
    from wordfreq import zipf_frequency  # its word lists load on first use, not at import

    return max(zipf_frequency(word, "en"), zipf_frequency(word, "de"))


def rare_words(question: str) -> list[str]:
    """The question's rare words (:data:`RARE_ZIPF`), possessives stripped, in order."""
    out = []
    for w in _LETTERS.findall(question):
        w = re.sub(r"['’]s$", "", w)
        if len(w) >= 4 and w.casefold() not in STOPWORDS and _zipf(w) < RARE_ZIPF:
            out.append(w)
    return out


__all__ = ["RARE_ZIPF", "STOPWORDS", "content_words", "names", "rare_words"]
