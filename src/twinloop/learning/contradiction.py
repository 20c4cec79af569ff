"""Does a correction contradict the domain's indexed sources? (docs/DESIGN.md "Learning")

In a domain whose policy requires citations the index is the authority ("no source, no
claim", DESIGN "Serving"), and facts reach users through the index first; an adapter trained
on a correction that says "30 days" where the indexed GDPR says "72 hours", or "the Basic Law
was repealed" while it is in force, would teach the model to contradict its own citations.
So a correction is compared with the best-matching retrieved passage:

- quantities: durations (normalised to hours), percentages, money, doses and years are read
  from both texts; a value the correction gives for a kind of quantity the passage also gives,
  but that the passage never states, is a contradiction;
- negation: the correction says its subject "was repealed" / "no longer applies" / "does not
  apply." (EN, DE, FR, ES, IT, NL) while the passage is in force and says nothing of the kind.

This is deliberately shallow — no entailment model — and its findings go to review, not to the
bin: the source may be the outdated one. Matching runs on accent-stripped, case-folded text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_NUMBER_WORDS = {
    # en
    "one": 1, "a": 1, "an": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "eighteen": 18, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "seventy-two": 72, "ninety": 90,
    # de
    "ein": 1, "eine": 1, "einen": 1, "einem": 1, "einer": 1, "zwei": 2, "drei": 3, "vier": 4, "funf": 5,
    "sechs": 6, "sieben": 7, "acht": 8, "neun": 9, "zehn": 10, "zwolf": 12, "vierzehn": 14, "zwanzig": 20,
    "dreissig": 30, "zweiundsiebzig": 72,
    # fr
    "un": 1, "une": 1, "deux": 2, "trois": 3, "quatre": 4, "cinq": 5, "sept": 7, "huit": 8, "neuf": 9,
    "dix": 10, "douze": 12, "quinze": 15, "vingt": 20, "trente": 30, "soixante-douze": 72,
    # es / it
    "uno": 1, "una": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6, "siete": 7, "ocho": 8,
    "nueve": 9, "diez": 10, "doce": 12, "quince": 15, "veinte": 20, "treinta": 30, "setenta y dos": 72,
    "due": 2, "tre": 3, "quattro": 4, "cinque": 5, "sei": 6, "sette": 7, "otto": 8, "nove": 9, "dieci": 10,
    "dodici": 12, "quindici": 15, "venti": 20, "trenta": 30, "settantadue": 72,
    # nl
    "een": 1, "twee": 2, "drie": 3, "vijf": 5, "zes": 6, "zeven": 7, "negen": 9, "tien": 10,
    "twaalf": 12, "vijftien": 15, "twintig": 20, "dertig": 30, "tweeenzeventig": 72,
}
_DURATION_HOURS = {
    # Calendar units as the law counts them; a month is not "30 days" (Art. 12(3) GDPR says one
    # month, and a correction saying 30 days is a different rule), so no unit is rounded into
    # another: values compare only when they are equal.
    "minute": 1 / 60, "minutes": 1 / 60, "minuten": 1 / 60, "minutos": 1 / 60, "minuti": 1 / 60,
    "hour": 1, "hours": 1, "hrs": 1, "h": 1, "stunde": 1, "stunden": 1, "heure": 1, "heures": 1,
    "hora": 1, "horas": 1, "ora": 1, "ore": 1, "uur": 1, "uren": 1,
    "day": 24, "days": 24, "tag": 24, "tage": 24, "tagen": 24, "tages": 24, "jour": 24, "jours": 24,
    "dia": 24, "dias": 24, "giorno": 24, "giorni": 24, "dag": 24, "dagen": 24,
    "week": 168, "weeks": 168, "woche": 168, "wochen": 168, "semaine": 168, "semaines": 168,
    "semana": 168, "semanas": 168, "settimana": 168, "settimane": 168, "weken": 168,
    "month": 730, "months": 730, "monat": 730, "monate": 730, "monaten": 730, "monats": 730, "mois": 730,
    "mes": 730, "meses": 730, "mese": 730, "mesi": 730, "maand": 730, "maanden": 730,
    "year": 8766, "years": 8766, "jahr": 8766, "jahre": 8766, "jahren": 8766, "jahres": 8766, "an": 8766,
    "ans": 8766, "annee": 8766, "annees": 8766, "ano": 8766, "anos": 8766, "anno": 8766, "anni": 8766,
    "jaar": 8766, "jaren": 8766,
}
_DOSE_UNITS = {"mg": ("mg", 1.0), "g": ("mg", 1000.0), "mcg": ("mg", 0.001), "ug": ("mg", 0.001),
               "µg": ("mg", 0.001), "ml": ("ml", 1.0), "iu": ("iu", 1.0), "ie": ("iu", 1.0),
               "units": ("iu", 1.0), "einheiten": ("iu", 1.0), "unites": ("iu", 1.0), "unidades": ("iu", 1.0),
               "unita": ("iu", 1.0), "eenheden": ("iu", 1.0), "mmol/l": ("mmol/l", 1.0), "mg/dl": ("mg/dl", 1.0)}
_SCALE = {"thousand": 1e3, "tausend": 1e3, "mille": 1e3, "mil": 1e3, "duizend": 1e3,
          "million": 1e6, "millions": 1e6, "mio": 1e6, "millionen": 1e6, "millones": 1e6, "milioni": 1e6,
          "miljoen": 1e6, "billion": 1e9, "milliarden": 1e9, "milliards": 1e9, "miliardi": 1e9}

_NUM = r"\d{1,3}(?:[ .,\u00a0\u202f]\d{3})+(?:[.,]\d+)?|\d+(?:[.,]\d+)?"
_WORDNUM = "|".join(sorted((re.escape(w) for w in _NUMBER_WORDS), key=len, reverse=True))
_DURATION = re.compile(
    rf"(?<![\w/])(?P<n>{_NUM}|{_WORDNUM})(?:\s*-\s*|\s+)(?:(?:further|additional|weitere[nr]?|weiteren)\s+)?"
    rf"(?P<u>{'|'.join(sorted(_DURATION_HOURS, key=len, reverse=True))})\b")
_PERCENT = re.compile(rf"(?<![\w/])(?P<n>{_NUM})\s*(?:%|percent\b|per\s+cent\b|prozent\b|pour\s*cent\b|"
                      rf"por\s+ciento\b|per\s+cento\b|procent\b)")
_MONEY = re.compile(
    rf"(?:(?P<c1>€|\$|eur\b|usd\b)\s*(?P<n1>{_NUM})(?:\s*(?P<s1>{'|'.join(_SCALE)})\b)?"
    rf"|(?<![\w/])(?P<n2>{_NUM})(?:\s*(?P<s2>{'|'.join(_SCALE)})\b)?\s*(?P<c2>€|\$|eur\b|euros?\b|usd\b|dollars?\b))")
_DOSE = re.compile(rf"(?<![\w/])(?P<n>{_NUM})\s*(?P<u>mg/dl|mmol/l|mg|mcg|µg|ug|ml|iu|ie|units|einheiten|unites|"
                   rf"unidades|unita|eenheden|g)\b")
_MONTHS = (r"jan\w*|feb\w*|fev\w*|mar\w*|apr\w*|avr\w*|abr\w*|ma[iy]\w*|mei|jun\w*|jui\w*|jul\w*|lug\w*|aug\w*|"
           r"ago\w*|aou\w*|sep\w*|set\w*|oct\w*|okt\w*|ott\w*|nov\w*|dec\w*|dez\w*|dic\w*")
_YEAR = re.compile(
    rf"(?:\b\d{{1,2}}\.?\s+(?:{_MONTHS})\s+|\b\d{{1,2}}\.\d{{1,2}}\.|\b(?:since|from|in|until|before|after|by|"
    rf"seit|ab|bis|vor|nach|im\s+jahr|depuis|en|jusqu\s*en|desde|hasta|dal|nel|fino\s+al|sinds|vanaf|tot)\s+)"
    rf"(?P<y>1[89]\d\d|20\d\d)\b(?![/-]\d)|\b(?P<iso>(?:19|20)\d\d)-\d\d-\d\d\b")

_NEGATION = re.compile(
    # en
    r"\b(?:was|were|is|are|has\s+been|have\s+been|had\s+been)\s+(?:now\s+|since\s+|already\s+|officially\s+|"
    r"entirely\s+|completely\s+)?(?:repealed|abolished|revoked|annulled|rescinded|abrogated|void|invalidated|"
    r"no\s+longer\s+(?:in\s+force|valid|applicable|in\s+effect))\b"
    r"|\bno\s+longer\s+(?:applies|apply|exists?|in\s+force|valid|applicable|has\s+effect)\b"
    r"|\b(?:does|do)\s+not\s+apply(?:\s+(?:anymore|any\s+more|any\s+longer))?\s*(?:[.;!]|$)"
    r"|\b(?:is|are)\s+not\s+(?:in\s+force|valid)\b"
    # de
    r"|\b(?:wurde|wurden|ist|sind|war|waren)\s+(?:inzwischen\s+|bereits\s+|mittlerweile\s+|vollstandig\s+)?"
    r"(?:aufgehoben|abgeschafft|ausser\s+kraft\s+gesetzt|ungultig|nichtig)\b"
    r"|\bgelten?\s+nicht\s+mehr\b|\bgilt\s+nicht\s+mehr\b|\bnicht\s+mehr\s+(?:in\s+kraft|gultig|anwendbar)\b"
    r"|\bausser\s+kraft\b"
    # fr
    r"|\b(?:a\s+ete|ont\s+ete|est|sont|fut|furent)\s+(?:desormais\s+|deja\s+)?(?:abroge|abolie?|annule|supprime)e?s?\b"
    r"|\bne\s+s\s*appliquen?t?\s+plus\b|\bn\s*est\s+plus\s+(?:en\s+vigueur|applicable|valable)\b"
    r"|\bne\s+s\s*applique\s+pas\s*(?:[.;!]|$)"
    # es
    r"|\b(?:fue|fueron|ha\s+sido|han\s+sido)\s+(?:derogad|abolid|anulad)[oa]s?\b"
    r"|\bya\s+no\s+(?:se\s+aplica|esta\s+en\s+vigor|es\s+aplicable|rige|es\s+valid[oa])\b"
    r"|\bno\s+se\s+aplica\s*(?:[.;!]|$)"
    # it
    r"|\b(?:e\s+stat[oa]|sono\s+stat[ie]|fu|furono)\s+(?:abrogat|abolit|annullat)[oaie]\b"
    r"|\bnon\s+(?:e|sono)\s+piu\s+in\s+vigore\b|\bnon\s+si\s+applica\s+piu\b|\bnon\s+si\s+applica\s*(?:[.;!]|$)"
    # nl
    r"|\b(?:is|werd|zijn|werden)\s+(?:inmiddels\s+)?(?:ingetrokken|afgeschaft|opgeheven|vervallen|nietig\s+verklaard)\b"
    r"|\bniet\s+(?:meer|langer)\s+van\s+toepassing\b|\bgeldt\s+niet\s+(?:meer|langer)\b"
    r"|\bniet\s+meer\s+(?:van\s+kracht|geldig)\b")
"""Statements that a rule is gone or does not apply at all (accent-stripped, case-folded)."""

_WORD = re.compile(r"[\w/]+")
_STOP = frozenset(re.findall(r"\S+",
    "the a an of to in on for and or is are was were be been by with at as it its this that these those what "
    "which who how when does do did can may must shall will not no from under any all has have had their there "
    "der die das den dem des ein eine und oder ist sind war wurde wird nicht im in zu mit von fur auf bei wie "
    "was wer wann le la les un une des du de et ou est sont ete en au aux pour par que qui ne pas plus "
    "el los las y o es son fue del al por para con que se lo il gli e di da per con che non piu "
    "het een en of is zijn werd van voor met op dat die niet meer"))
_GENERIC = frozenset(re.findall(r"\S+",
    # The subject of "X was repealed" when it names nothing but "the law" in front of the asker:
    # then it means the law the passage is from.
    "it this that law act regulation rule rules article provision statute code gesetz verordnung artikel "
    "vorschrift regel es dies loi reglement disposition ley reglamento articulo legge regolamento articolo "
    "wet verordening bepaling het dit deze"))

_ALIASES = {
    # Other names of the codes the default packs index, so "the Basic Law was repealed" is
    # recognised as being about a passage cited as "Grundgesetz ... (GG)".
    "gg": "grundgesetz basic law", "grundgesetz": "gg basic law",
    "gdpr": "dsgvo rgpd rgpd avg general data protection regulation datenschutz-grundverordnung",
    "dsgvo": "gdpr rgpd avg datenschutz-grundverordnung", "rgpd": "gdpr dsgvo avg", "avg": "gdpr dsgvo rgpd",
    "bdsg": "federal data protection act bundesdatenschutzgesetz",
}


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold().replace("’", "'").replace("'", " ")
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def _number(raw: str) -> float | None:
    raw = raw.strip()
    if raw in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[raw])
    digits = re.sub(r"[ .,\u00a0\u202f](?=\d{3}(?!\d))", "", raw).replace(",", ".")
    try:
        return float(digits)
    except ValueError:
        return None


def quantities(text: str) -> dict[str, set[float]]:
    """Values by kind ("duration_h", "percent", "money:eur", "dose:mg", "year") in ``text``."""
    out: dict[str, set[float]] = {}
    for (kind, value) in _scan(text):
        out.setdefault(kind, set()).add(value)
    return out


def _scan(text: str) -> dict[tuple[str, float], str]:
    """``(kind, value) -> how the text first wrote it``."""
    t = _fold(text)
    out: dict[tuple[str, float], str] = {}
    m: re.Match[str]

    def add(kind: str, value: float | None) -> None:
        if value is not None:
            out.setdefault((kind, round(value, 6)), m.group(0).strip())

    for m in _DURATION.finditer(t):
        n = _number(m.group("n"))
        add("duration_h", None if n is None else n * _DURATION_HOURS[m.group("u")])
    for m in _PERCENT.finditer(t):
        add("percent", _number(m.group("n")))
    for m in _MONEY.finditer(t):
        n = _number(m.group("n1") or m.group("n2"))
        scale = _SCALE.get(m.group("s1") or m.group("s2") or "", 1.0)
        cur = (m.group("c1") or m.group("c2")).strip()
        cur = "eur" if cur in ("€", "eur", "euro", "euros") else "usd"
        add(f"money:{cur}", None if n is None else n * scale)
    for m in _DOSE.finditer(t):
        n = _number(m.group("n"))
        unit, factor = _DOSE_UNITS[m.group("u")]
        add(f"dose:{unit}", None if n is None else n * factor)
    for m in _YEAR.finditer(t):
        add("year", float(m.group("y") or m.group("iso")))
    return out


def negation(text: str) -> re.Match[str] | None:
    """The first "was repealed / no longer applies / does not apply." statement, if any."""
    return _NEGATION.search(_fold(text))


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(_fold(text)) if w not in _STOP and len(w) > 1}


@dataclass(frozen=True)
class SourcePassage:
    """A retrieved passage as the contradiction check needs it.

    Attributes:
        text: The passage text.
        uri: Where it is from (the document's URI, else its citation label); named in the
            rejection so a reviewer can open it.
        in_force: Whether its document is in force on the day asked about (a retriever
            searching "as of today" returns only those).
        names: What the document is called (title, code, source): the subject a correction
            may name when it says the law was repealed.
    """

    text: str
    uri: str
    in_force: bool = True
    names: str = ""


def as_passage(item: object) -> SourcePassage:
    """A :class:`SourcePassage` from one, a mapping (``text``, ``uri`` or ``citation.uri``) or
    an object with ``text`` and ``citation`` (a retrieval hit)."""
    if isinstance(item, SourcePassage):
        return item
    if isinstance(item, str):
        return SourcePassage(item, "")
    get = item.get if isinstance(item, Mapping) else lambda k, d=None: getattr(item, k, d)
    citation = get("citation") or {}
    text = get("text")
    if not isinstance(text, str):
        raise TypeError(f"retrieved passage {item!r} has no text")
    uri = get("uri") or citation.get("uri") or get("label") or ""
    names = get("names") or " ".join(str(citation.get(k) or "") for k in ("title", "code", "source"))
    in_force = get("in_force")
    return SourcePassage(text, str(uri), True if in_force is None else bool(in_force), names)


@dataclass(frozen=True)
class Contradiction:
    """What the correction contradicts, and how."""

    passage: SourcePassage
    detail: str


MIN_SHARED_WORDS = 2
"""A passage sharing fewer content words with question and correction is about something else
(a retriever returns its best passages even for an unrelated question)."""


def best_passage(question: str, correction: str, passages: Iterable[SourcePassage]) -> SourcePassage | None:
    """The passage sharing most content words (at least :data:`MIN_SHARED_WORDS`) with question
    and correction; ties go to the retriever's order (its ranking)."""
    # The question's words count double: the correction's own words ("repealed", "30 days")
    # would otherwise pull in whichever passage happens to share them.
    asked, said = _words(question), _words(correction)
    best, best_score = None, 0
    for p in passages:
        words = _with_aliases(_words(p.text) | _words(p.names))
        if len((asked | said) & words) < MIN_SHARED_WORDS:
            continue
        score = 2 * len(asked & words) + len(said & words)
        if score > best_score:
            best, best_score = p, score
    return best


def _with_aliases(words: set[str]) -> set[str]:
    return words | {a for w in words if w in _ALIASES for a in _ALIASES[w].split()}


def find_contradiction(question: str, correction: str,
                       passages: Iterable[SourcePassage]) -> Contradiction | None:
    """The contradiction between ``correction`` and the best-matching passage, if any."""
    best = best_passage(question, correction, passages)
    if best is None:
        return None
    said, source = _scan(correction), _scan(best.text)
    for kind in dict.fromkeys(k for k, _ in said):
        stated = {v: shown for (k, v), shown in source.items() if k == kind}
        if not stated:
            continue  # the passage says nothing of this kind: the correction may add a fact
        wrong = [shown for (k, v), shown in said.items() if k == kind and v not in stated]
        if wrong:
            return Contradiction(best, f"correction says {', '.join(map(repr, wrong))}; "
                                       f"the source says {', '.join(map(repr, stated.values()))}")
    neg = negation(correction)
    if neg is not None and best.in_force and negation(best.text) is None:
        folded = _fold(correction)
        sentence_start = max(folded.rfind(c, 0, neg.start()) for c in ".;!?\n") + 1
        subject = [w for w in _WORD.findall(folded[sentence_start:neg.start()]) if w not in _STOP][-6:]
        context = _with_aliases(_words(question) | _words(best.text) | _words(best.names))
        if not subject or all(w in _GENERIC for w in subject) or set(subject) & context:
            return Contradiction(best, f"correction says {neg.group(0).strip()!r}; the source is in force")
    return None
