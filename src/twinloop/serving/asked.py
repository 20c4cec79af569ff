"""What a question asks for — a figure, an age, a period, a rate — and whether a text gives it.

A 135M model and MiniLM cannot judge whether a quoted sentence answers a question, but the
form of an answer can be read off the question: "Wie alt…" wants an age, "How often…" a
frequency, "What percentage…" a rate, "How much did … pay" an amount paid. A quote without
that form does not answer, however close its wording (docs/DESIGN.md "Serving": the answer
must state what was asked, or the question gets ``cannot_verify``). Closed lists of English
and German patterns, chosen over a classifier: they are read and corrected by a person, and
each rule can be tested on the sentence that motivated it.

A number in a legal reference ("§ 12 Abs. 1", "Article 6(1)", "Directive 95/46/EC") is not a
figure: it names a provision, it does not answer "how many".
"""

from __future__ import annotations

import gettext
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

QUANTITY_QUESTION = re.compile(
    r"\b(how (long|many|much|quickly|soon|often|frequently|common|old|high|large|big|far)|what (?:(?:is|was|are|were) (?:the )?)?(age|amount|"
    r"percentage|per ?cent|proportion|fraction|share|fine|period|deadline|number|maximum|minimum|rate|sum|total|"
    r"value|year|date|dose|accuracy|sensitivity|specificity|incidence|prevalence)|which year|by when|within what|"
    r"wie (lange|viele|viel|hoch|alt|oft)|bis wann|in welcher höhe|bis zu welche[rm]? (quote|höhe|betrag|grenze)|"
    r"welche[sn]? (mindestalter|höchststrafe|frist|mehrheit)|"
    r"in (?:€|\$|£|us\$|eur|usd|euros?|dollars?) ?(?:millions?|billions?|thousands?|mio|mrd|bn|m|k)\b|"
    r"in (?:millions|billions|thousands) of\b)", re.IGNORECASE)
"""Questions whose answer is a quantity (a number, a date, a duration, a rate) — also one that
names the unit of its answer ("What was EBIT…, in € million?")."""

NUMERIC = re.compile(r"\d|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|"
                     r"fifty|hundred|thousand|half|twice|zwei|drei|vier|fünf|sechs|sieben|acht|neun|zehn|elf|zwölf|"
                     r"zwanzig|dreißig|vierzig|fünfzig|hundert|tausend|hälfte|doppelt|einmal)", re.IGNORECASE)
"""A number in digits or words (German ordinals included: "vierzigste")."""

_REFERENCE = re.compile(
    r"(?:§§?|\b(?:art(?:ikel|icle)?s?|abs(?:atz)?|satz|nr|nummer|no|nos|buchstabe|lit|ziff(?:er)?|recitals?|"
    r"erwägungsgr(?:und|ünde)|paragraphs?|points?|directive|richtlinie|regulation|verordnung|chapter|kapitel|"
    r"section|titel|title|annex|anhang)\b\.?)\s*(?:\((?:eu|eg|ewg|ec|eec)\)\s*)?(?:nr\.?\s*|no\.?\s*)?"
    r"\d+[a-z]?(?:\s*\(\d+\))*(?:/\d+)*(?:/(?:eu|eg|ec|ewg|eec))?(?:\s*(?:,|und|and|bis|to|or|oder)\s*\d+[a-z]?\b)*"
    r"|\b\d+/\d+/(?:eu|eg|ec|ewg|eec)\b|\(\d+\)",
    re.IGNORECASE)
"""A provision named by number: the numbers in it are not figures."""

_INFLECTED = r"(?:e|en|em|er|es|s|te|ten|ter|tes|ste|sten|th)?\b"
"""The endings a number word takes ("einem", "vierzigste", "fifth"), after German compounds
("fünfzigtausend", "dreiundzwanzig"): not any word that starts like one ("all", "tenant")."""
_NUMBERS = (r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|hundred|"
            r"thousand|ein|zwei|drei|vier|fünf|sechs|sieben|acht|neun|zehn|zwölf|zwanzig|dreißig|vierzig|fünfzig|"
            r"hundert|tausend)")
_SPELLED = rf"{_NUMBERS}(?:(?:und)?{_NUMBERS})*{_INFLECTED}"
_NUMBER_WORD = rf"(?:\d[\d.,]*|a|an|{_SPELLED})"
_AMOUNT = r"(?:[$€£]\s*\d[\d.,]*|\d[\d.,]*\s*(?:million|billion|thousand)?\s*(?:dollars|euros?|usd|eur)\b)"
_PAID = (r"(?:paid|pay|price|consideration|purchase|spent|spend|charge[sd]?|fees?|premium|bezahlt|gezahlt|kaufpreis|"
         r"gebühr\w*|entgelt\w*)")
_PERIOD = (r"(?:years?|months?|weeks?|days?|hours?|minutes?|seconds?|jahr(?:e|en|es)?|monat(?:e|en|s)?|wochen?|"
           r"tag(?:e|en|es)?|stunden?|minuten?|sekunden?|kalenderjahr\w*|geschäftsjahr\w*)")
_LENGTH = r"(?:metres?|meters?|kilometres?|kilometers?|km|miles?|feet|foot|ft|yards?|centimet\w+|cm|mm|m)"


class Finder(Protocol):
    """What finds an answer's form in a text: a compiled pattern, or one built on first use."""

    def search(self, string: str, /) -> Any: ...


@dataclass(frozen=True)
class Asked:
    """One form of answer: the questions that ask for it, and what a text that gives it holds."""

    what: str
    """How a refusal names it ("an age")."""
    question: re.Pattern[str]
    answer: Finder

    def asked_by(self, question: str) -> bool:
        return self.question.search(question) is not None

    def given_by(self, text: str) -> bool:
        return self.answer.search(_REFERENCE.sub(" ", text)) is not None


def _asked(what: str, question: str, answer: str) -> Asked:
    return Asked(what, re.compile(question, re.IGNORECASE), re.compile(answer, re.IGNORECASE))


@lru_cache(maxsize=1)
def _country_names() -> str:
    """A pattern of every country's name, English and German (ISO 3166-1 as ``pycountry`` ships
    it, offline): "In which country…" is answered by a sentence that names one."""
    import pycountry

    de = gettext.translation("iso3166-1", pycountry.LOCALES_DIR, languages=["de"], fallback=True)
    names: set[str] = set()
    for c in pycountry.countries:
        for attr in ("name", "common_name", "official_name"):
            n = getattr(c, attr, None)
            if n:
                names |= {n, de.gettext(n)}
    # Longest first, so "South Africa" is read whole; short names need their word boundaries.
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


class _Countries:
    """Compiled on first use: importing this module stays cheap."""

    def search(self, string: str, /) -> re.Match[str] | None:
        return _country_regex().search(string)


@lru_cache(maxsize=1)
def _country_regex() -> re.Pattern[str]:
    return re.compile(rf"\b(?:{_country_names()})\b")


ASKED: tuple[Asked, ...] = (
    _asked("a number of hours", r"\b(?:how|wie) many (?:hours|stunden)\b|\bwie viele stunden\b", r"\d\s*(?:hours|stunden)\b"),
    _asked("an amount in euros", r"\bhow many euros?\b|\bwie viele? euro\b|\bin euros?\b",
           r"(?:\d[\d .,]*|\w+(?:tausend|hundert)|\w*million\w*)\s*(?:eur|euro)\b|€\s*\d"),
    _asked("a value in mg/dL", r"\bmg/dl\b", r"mg/dl"),
    _asked("a temperature", r"\b(?:what|which) temperatures?\b|\bhow (?:hot|cold|warm)\b|\bwelche temperatur",
           r"\d\s*(?:°|℃|degrees?\b|grad\b)"),
    # A range is two bounds: "between 2 and 8 °C", "2–8 °C"; one figure ("up to 16 degrees")
    # is not the range asked for. Only a range of values: "which mountain range" asks a name.
    _asked("a range", r"\b(?:what|which) (?:temperature|dose|dosage|price|age|value|reference|normal|pressure|"
                      r"salary|weight|concentration|frequency) range\b|\b(?:what|which) range of (?:values|temperatures|doses)\b|"
                      r"\bin welche[mn]? (?:temperatur|dosis|preis|alters|wert|druck)?bereich\b|"
                      r"\bwelche[rn]? (?:temperatur|dosis|preis|alters|wert|druck)?bereich\b",
           r"\d[\d.,]*\s*(?:°\s*c?|degrees?\s*(?:c|celsius)?|%|mg|ml|grad)?\s*(?:-|–|to|and|bis|und)\s*[+-]?\d"),
    _asked("a dose", r"\b(?:what|which) dose\b|\bwelche dosis\b", r"\d\s*(?:mg|g|ml|µg|mcg|units?|iu|ie)\b"),
    _asked("a price", r"\bhow much (?:does|do|did|would|has|have|had) .{1,80}\bcost\b|\bwhat (?:does|did) .{1,80}\bcost\b",
           r"[$€£]\s*\d|\d\s*(?:dollars|euros?|eur|usd)\b"),
    # What was paid for something: an amount is not enough (a filing is full of them); it
    # must stand within a few words of paying, a price or a consideration.
    _asked("an amount paid",
           r"\bhow much (?:did|does|do|will|would|has|have) .{1,80}\b(?:pay|spend)\b|\bwhat (?:did|does) .{1,80}\bpay\b|"
           r"\b(?:purchase|acquisition) price\b|\bwie viel (?:hat|zahlte|bezahlte) .{1,80}\b(?:bezahlt|gezahlt)\b",
           rf"{_AMOUNT}(?:\W+\w+){{0,8}}?\W+{_PAID}|{_PAID}\w*(?:\W+\w+){{0,8}}?\W+{_AMOUNT}"),
    # An age is a number of years of life ("das vierzigste Lebensjahr", "aged 16", "16 years",
    # "four months") or a stage of it ("early childhood").
    _asked("an age", r"\bhow old\b|\bwie alt\b|\bmindestalter\b|\b(?:what|which|minimum|maximum) age\b|\bat what age\b",
           rf"(?:\b\d+\.?|\b\w+(?:te|ste|ten|sten))\s+lebensjahr|\b(?:age|aged|alter)\s+(?:of\s+|von\s+)?{_NUMBER_WORD}|"
           # A bare "four months" is an age only beside a word for age: "vier Wochen" alone is a period.
           rf"\b(?:age|aged|alter|alt|old)\b.{{0,120}}?\b{_NUMBER_WORD}\s+(?:years?|months?|weeks?|days?|jahr(?:e|en)?|"
           rf"monat(?:e|en)?|wochen|tag(?:e|en))\b|"
           rf"\b{_NUMBER_WORD}\s+(?:years?|months?|weeks?|days?|jahr(?:e|en)?|monat(?:e|en)?|wochen|tag(?:e|en))\b"
           rf".{{0,40}}?\b(?:age|aged|alter|alt|old)\b|"
           r"\d+(?:st|nd|rd|th)?\s+birthday|\b(?:childhood|infancy|adolescence|adulthood|puberty|old age|"
           r"middle age|neonatal|newborn|kindheit|kindesalter|jugend\w*|pubertät|erwachsenenalter|säugling\w*)\b"),
    # A period of time: a number of years, months, weeks… or the law's "without undue delay";
    # "how long is the bridge" asks for a length.
    _asked("a period or a length",
           r"\bhow (?:long|quickly|soon)\b|\bwie (?:lange|schnell)\b|\b(?:term of office|amtszeit)\b|\bwithin what (?:period|time)\b|"
           r"\b(?:innerhalb|binnen) welche[rn]? (?:frist|zeit)\b|\bwelche[rn]? (?:kündigungs)?frist\b|"
           r"\bwhat (?:notice|retention|limitation) period\b|\bhow many (?:years|months|weeks|days)\b",
           rf"\b{_NUMBER_WORD}\s+(?:\w+\s+)?{_PERIOD}\b|\d[\d.,]*\s*{_LENGTH}\b|\bwithout undue delay\b|\bunverzüglich\b|\bimmediately\b|"
           r"\bpromptly\b|\bsofort\b|\bno longer than\b|\bnicht länger\b"),
    _asked("a frequency", r"\bhow often\b|\bwie oft\b|\bhow frequently\b|\bhow many times\b|\bwie häufig\b",
           r"\b(?:once|twice|thrice|(?:ein|zwei|drei|vier|fünf|sechs|mehr|viel)mal)\b|\b(?:every|each|per|alle|jede[nrsm]?|je|pro)\s+(?:\w+\s+)?"
           r"(?:year|month|week|day|jahr|monat|woche|tag|kalenderjahr)\w*|\d+\s*times\b|"
           r"\b(?:daily|weekly|monthly|annually|yearly|jährlich|monatlich|täglich|wöchentlich)\b"),
    _asked("a percentage or share",
           r"\bwhat (?:percentage|per ?cent|proportion|share|fraction)\b|\bwie viel prozent\b|\bwie viele prozent\b|"
           r"\bwelche[rn]? (?:quote|anteil|prozentsatz)\b|\bhow many per ?cent\b",
           r"%|\bper ?cent\b|\bprozent\b|\bvom hundert\b|\bpercentage points?\b|"
           r"\b\d[\d.,]*\s+(?:in|of|out of|von|aus)\s+\d|"
           r"\b(?:half|third|quarter|hälfte|drittel|viertel)\b"),
    # The form a declaration must take, in the law's closed vocabulary ("schriftlich oder
    # elektronisch", "in writing") — only when a declaration is asked about ("In what form is
    # the drug sold?" is not).
    _asked("a form of declaration",
           r"\bin (?:welcher|what) form\b(?=.*\b(?:einwillig|erklär|kündig|vertr|zustimm|vollmacht|antrag|widersp|"
           r"consent|declar|notice|notif|contract|agreement|objection|application|request))",
           r"\b(?:schriftlich\w*|elektronisch\w*|mündlich\w*|textform|schriftform|in writing|written|orally|"
           r"electronic\w*|notariell\w*|in text form)\b"),
    Asked("a country", re.compile(r"\b(?:in )?(?:which|what) country\b|\bin welchem land\b|\bwelches land\b|"
                                  r"\baus welchem land\b", re.IGNORECASE), _Countries()),
    # Near misses seen in the evaluation sets' wording: the answer's currency, a minimum, a
    # sum of money, a median, a mortality — a sentence with some other figure (a maximum
    # "up to 20 000 000 EUR", a date, a count of patients) does not give it.
    _asked("an amount in dollars", r"\b(?:expressed |converted )?in (?:us )?(?:dollars|usd)\b|\bhow many dollars\b",
           r"\$\s*\d|\bus\$|\d[\d.,]*\s*(?:million |billion |thousand )?(?:dollars|usd)\b"),
    _asked("a minimum",
           r"\b(?:minimum|lowest|smallest) (?:\w+ ){0,2}?(?:fine|penalty|amount|sum|fee|payment|price|wage|salary|"
           r"capital|sentence)\b|\bmindest(?:strafe|betrag|bußgeld|geldbuße|lohn|kapital|gehalt)\b",
           r"\b(?:minimum|at least|not less than|no less than|no fewer than|mindestens|nicht weniger als|wenigstens|"
           r"nicht unter|mindest\w+)\b"),
    _asked("a sum of money",
           r"\b(?:what|which) (?:was |were |is |are )?(?:the )?(?:(?:total|annual|net|gross|yearly|quarterly|operating|"
           r"consolidated) )*(?:revenues?|sales|salary|salaries|wages?|turnover)\b|"
           r"\bwie hoch (?:ist|war|sind|waren) (?:das|die|der|sein|ihr) (?:gehalt|besoldung|bezüge|umsatz|einkommen|"
           r"vergütung|amtsbezüge)\b",
           r"[$€£]\s*\(?\d|\d[\d.,]*\s*(?:million|billion|thousand|mio|mrd|bn)\b|\b(?:dollars|euros?|eur|usd|dm)\b|"
           r"\|\s*\(?[$€£]?\s*\d"),
    _asked("a median", r"\bmedian\b", r"\bmedian\b"),
    _asked("a mortality",
           r"\b(?:what|which) (?:was |is |were |are )?(?:the )?(?:\w+ )?(?:mortality|death rate|case[- ]fatality)\b|"
           r"\bwie hoch (?:ist|war) die (?:sterblichkeit|letalität|mortalität)\b",
           r"\b(?:mortality|died|deaths?|dead|fatal\w*|survived|survival|verstorben|gestorben|tod\w*|letalität|"
           r"sterblichkeit|mortalität)\b"),
    # A prison term: a number of years or months, not just "a penalty".
    _asked("a term of imprisonment",
           r"\b(?:welche[rn]?|what|which|how long|wie lange|wie hoch)\b.{0,40}\b(?:freiheitsstrafe|imprisonment|"
           r"prison (?:term|sentence)|jail)",
           rf"\b{_NUMBER_WORD}\s+(?:\w+\s+)?(?:years?|months?|jahr(?:e|en)?|monat(?:e|en)?)\b"),
)
"""The forms of answer a question can ask for (:class:`Asked`), besides a bare quantity."""


_COUNTED = re.compile(r"\b(?:how many|wie viele)\s+(?!of\b)([^\W\d_][\w-]*)", re.IGNORECASE)
_COUNT = rf"(?:(?<![\d.,$€£])(?<![$€£] )\d[\d.,]*|(?!ein){_SPELLED})"
"""A count: "ein Abgeordneter" and "a member" are articles, not counts; "$39.2 million in
employee termination benefits" is money, not a number of employees."""


_PEOPLE = ("men", "women", "people", "persons", "patients", "participants", "subjects", "individuals", "adults",
           "children", "infants", "cases", "personen", "patienten", "patientinnen", "teilnehmer", "menschen",
           "männer", "frauen", "kinder", "fälle")
"""Words a study counts people by: "how many men…" is answered by "24 patients" in a study of
men — an abstract names its subjects one way in its methods and another in its results."""


def _counted(question: str) -> Asked | None:
    """"How many X" asks for a count of X: a number within a few words before an X ("voting
    members" → "… 27 members …"); "how many of the …" counts something named later. People
    are counted by any word for people (:data:`_PEOPLE`)."""
    m = _COUNTED.search(question)
    if m is None:
        return None
    noun = m.group(1)
    if noun.casefold() in _PEOPLE:
        what = "(?:" + "|".join(_PEOPLE) + r")\b"
    else:
        what = re.escape(noun[:max(4, len(noun) - 2)])
    near = re.compile(rf"\b{_COUNT}(?:\W+\w+){{0,3}}?\W+{what}", re.IGNORECASE)
    return Asked(f"a number of {noun}", _COUNTED, near)


def asked_for(question: str, *, count: bool = True) -> list[Asked]:
    """The forms of answer ``question`` asks for, in :data:`ASKED` order, then a count (unless
    ``count`` is False: a short answer names what it counts in its own words, "three
    arbitrators" for "how many members")."""
    counted = _counted(question) if count else None
    return [a for a in ASKED if a.asked_by(question)] + ([counted] if counted else [])


def asks_quantity(question: str) -> bool:
    return QUANTITY_QUESTION.search(question) is not None


def has_quantity(text: str) -> bool:
    """``text`` holds a number that is not part of a provision's name."""
    return NUMERIC.search(_REFERENCE.sub(" ", text)) is not None


def not_given(question: str, text: str, *, count: bool = True) -> list[str]:
    """What ``question`` asks for that ``text`` does not give ("an age", "a figure"), in
    :data:`ASKED` order. A named form (an age, a period) is checked for itself — "without undue
    delay" answers "how quickly" with no number; else a quantity question wants a figure."""
    forms = asked_for(question, count=count)
    if forms:
        return [a.what for a in forms if not a.given_by(text)]
    return ["a figure"] if asks_quantity(question) and not has_quantity(text) else []


def gives_any(question: str, text: str) -> bool:
    """``text`` gives one of the forms ``question`` asks for (True when it asks for none)."""
    return len(not_given(question, text)) < len(wanted(question)) or not wanted(question)


def wanted(question: str) -> list[str]:
    """Every form of answer ``question`` asks for (empty: none in particular)."""
    return [a.what for a in asked_for(question)] or (["a figure"] if asks_quantity(question) else [])


def asks_for_form(question: str) -> bool:
    """The question asks for a form of answer a text can be checked for."""
    return bool(asked_for(question)) or asks_quantity(question)
