"""Where a passage's sentences begin and end — the units an answer may quote.

Quotes start and stop only at these boundaries (``serving/quotes.py``) and the extractive
answer quotes whole sentences (``serving/grounded.py``), so a wrong boundary costs the answer
its fact: "§ 33 Abs." cut from "2 Satz 1", "45 vs." from "23 %", "ab 1." from "Juli 2009",
"U.S." from "Treasury regulation" — each seen in the evaluation sets' passages
(docs/DESIGN.md "Facts measured here").

Rules, chosen over a general segmenter (pysbd splits "Abs. 2" in German and does not split
legal list items at ";"): a boundary is a ``.``, ``!`` or ``?`` followed by space and then a
capital, a digit, a quote, a bracket or ``§`` — unless the word before the period is an
abbreviation (a closed list in English and German, or a single letter, as in "U.S." or
initials), a number before a month name (a German date: "1. Juli") or a short number after
an article or preposition (a German ordinal: "das 35. Lebensjahr", "zum 3. Mal"; a year is
not one: "bis 2019. Die…"). A ``;`` also ends a sentence (the items of a legal list are quoted
one by one) unless it stands inside brackets ("(versus 20 % in control group; P = 0.01) had
eventual evidence of biochemical failure" is one sentence, and its second half holds what it
says); a ``:`` only before a line break (so "(2017/18: €−136 million)" stays whole); a
line break always does.

A sentence that opens by pointing back ("It", "This", "Diese") is read with the sentence
before it (:func:`with_antecedent`): alone, "It has been used in the treatment of CCHF
patients" does not say what "it" is.
"""

from __future__ import annotations

import re

ABBREVIATIONS = frozenset(
    # English: citations, Latin, titles, companies, units of reference.
    "vs v e.g i.e etc cf al approx ca no nos art arts para paras sec secs ch fig figs vol pp p "
    "inc ltd co corp llc plc bros dept est jan feb mar apr jun jul aug sep sept oct nov dec "
    "mr mrs ms dr prof st jr sr gen gov rep sen ref eq "
    # German: statutes and everyday abbreviations.
    "abs nr ziff lit s bzw z.b u.a u.ä d.h vgl gem i.v.m i.s.d i.s.v a.f n.f m.w.n bgbl hs "
    "str tz rn rdnr anm kap abschn bd jh jhd zzgl inkl ggf evtl usw sog".split())
"""Words that end in a period without ending a sentence (compared without case or the period)."""

_MONTHS = ("januar|februar|märz|maerz|april|mai|juni|juli|august|september|oktober|november|dezember")
_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s+[\"'“‘(\[§]?[A-ZÄÖÜ0-9§])")
_SEMI = re.compile(r";(?=\s)")
_COLON_BREAK = re.compile(r":(?=[ \t]*\n)")
_BREAK = re.compile(r"\n+")
_WORD_BEFORE = re.compile(r"([\w.]+)$", re.UNICODE)
_ORDINAL_DATE = re.compile(r"^\s+(?:" + _MONTHS + r")\b", re.IGNORECASE)
_ORDINAL_AFTER = re.compile(r"\b(?:das|der|die|dem|den|des|am|im|vom|zum|zur|ab|bis|seit|nach|vor|zu)\s+$", re.IGNORECASE)
_ANAPHOR = re.compile(
    r"^(?:it|its|this|these|those|they|their|such|he|she|his|her|both|the latter|the former|"
    r"es|dies|diese|dieser|dieses|diesem|diesen|er|sie|ihr|ihre|dabei|hierbei|hierfür|dafür|dazu)\b",
    re.IGNORECASE)


def _is_boundary(text: str, m: re.Match) -> bool:
    if text[m.start()] != ".":
        return True  # "!" and "?" are not used in abbreviations
    word = _WORD_BEFORE.search(text[:m.start()])
    if word is None:
        return True
    w = word.group(1).casefold().rstrip(".")
    if w in ABBREVIATIONS or (len(w) == 1 and w.isalpha()) or re.fullmatch(r"(?:\w\.)+\w", w):
        return False  # "Abs. 2", "U.S. Treasury", "J. Smith", "z.B. die"
    if w.isdigit() and _ORDINAL_DATE.match(text[m.end():]):
        return False  # "ab 1. Juli 2009"
    if w.isdigit() and len(w) <= 3 and _ORDINAL_AFTER.search(text[:word.start()]):
        return False  # "das 35. Lebensjahr": a German article before a number makes it an ordinal
    return True


def _bracketed(text: str) -> set[int]:
    """The ``;`` of ``text`` inside a bracket opened earlier on their line and not yet closed
    (one pass; a line break closes what is open)."""
    inside, depth = set(), 0
    for i, ch in enumerate(text):
        if ch == "\n":
            depth = 0
        elif ch in "([":
            depth += 1
        elif ch in ")]" and depth:
            depth -= 1
        elif depth and ch == ";":
            inside.add(i)
    return inside


def spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of ``text``'s sentences, stripped and non-empty, in order."""
    cuts = {m.end() for m in _END.finditer(text) if _is_boundary(text, m)}
    bracketed = _bracketed(text)
    cuts |= {m.end() for m in _SEMI.finditer(text) if m.start() not in bracketed}
    cuts |= {m.end() for m in _COLON_BREAK.finditer(text)}
    for m in _BREAK.finditer(text):
        cuts |= {m.start(), m.end()}
    out, pos = [], 0
    for cut in sorted(cuts) + [len(text)]:
        chunk = text[pos:cut]
        a = pos + len(chunk) - len(chunk.lstrip())
        b = pos + len(chunk.rstrip())
        if b > a:
            out.append((a, b))
        pos = cut
    return out


def points_back(sentence: str) -> bool:
    """The sentence opens with a word that refers to what came before ("It", "Diese")."""
    return _ANAPHOR.match(sentence.lstrip("(\"'“‘ ")) is not None


def with_antecedent(text: str, found: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """:func:`spans`, where a sentence that points back starts at the sentence before it
    (the span then covers both; its end is unchanged)."""
    found = spans(text) if found is None else found
    out = []
    for i, (a, b) in enumerate(found):
        if i > 0 and points_back(text[a:b]) and "\n" not in text[found[i - 1][1]:a]:
            a = found[i - 1][0]
        out.append((a, b))
    return out
