"""Is a question about something the index holds? Jurisdictions, legal sources and articles.

A question about US law, a German statute the index does not hold, or an Article 150 GDPR
(there are 99) must not be answered from whatever passages happen to score highest: the
honest answer is ``out_of_scope``, naming what was asked for and what the index does hold
(docs/DESIGN.md "Serving").

The rules read a :class:`Catalog` of the index — the jurisdictions, codes and articles its
documents carry — and a gazetteer shipped with the packs (``packs/scope.yaml``: jurisdiction
names and legal sources with their aliases, held or not). Both are data, so a user adding a
domain or a source extends them without code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from twinloop.kernel.errors import ConfigError, InvalidInputError

JURISDICTION_CODE = re.compile(r"^[A-Z]{2}(?:-[A-Z0-9]{1,3})?$")
"""ISO 3166-1 alpha-2, the EU's "EU", optionally a subdivision: ``DE``, ``EU``, ``US-CA``."""

_ARTICLE = re.compile(
    r"(?:\bart(?:ikel|icle|\.)?s?\s*|§§?\s*|\bsection\s+|\bparagraph\s+)(\d{1,4})(\s*)([a-z])?\b", re.IGNORECASE)
_PARAGRAPH = re.compile(r"\s*(?:\((\d{1,3})\)|(?:abs\.?|absatz|para(?:graph)?\.?)\s*(\d{1,3})\b)", re.IGNORECASE)
"""A paragraph right after an article: "Article 83(10)", "§ 42 Abs. 1", "Art. 6 paragraph 4"."""


def check_jurisdiction(value: Any) -> str | None:
    """A request's ``jurisdiction``, normalised; None when not given.

    Raises:
        InvalidInputError: Not a code like ``EU``, ``DE`` or ``US-CA``.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not JURISDICTION_CODE.match(value.strip().upper()):
        raise InvalidInputError(f"jurisdiction = {value!r}: must be a jurisdiction code such as 'EU', 'DE' "
                                "or 'US-CA'")
    return value.strip().upper()


@dataclass(frozen=True)
class Catalog:
    """What the index holds, per domain: jurisdictions, codes and each code's articles."""

    jurisdictions: dict[str, frozenset[str]] = field(default_factory=dict)
    """Domain → jurisdictions its documents carry (empty: the domain has none, e.g. medicine)."""
    articles: dict[str, frozenset[str]] = field(default_factory=dict)
    """Code (as stored, e.g. ``BDSG 2018``) → article numbers held (any edition)."""
    in_force: dict[str, dict[str, tuple[tuple[str | None, str | None], ...]]] = field(default_factory=dict)
    """Code → article → the ``(from, to)`` intervals its editions are in force (ISO dates, None
    open). Empty for a code whose documents carry no dates."""
    parts: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)
    """Code → article → its numbered paragraphs held (any edition); an article stored whole
    (one unnumbered paragraph) has none."""

    def held_on(self, code: str, article: str, day: str) -> bool | None:
        """Whether an edition of ``code``'s ``article`` is in force on ``day``; None when the
        catalog has no dates for it (then only "held in some edition" can be said)."""
        intervals = self.in_force.get(code, {}).get(article)
        if not intervals or all(a is None and b is None for a, b in intervals):
            return None
        return any((a is None or a <= day) and (b is None or day < b) for a, b in intervals)


@dataclass(frozen=True)
class Source:
    """A legal source the gazetteer knows, held or not."""

    code: str
    """The code as documents store it (``GDPR``), or a name for one the index lacks."""
    jurisdiction: str
    aliases: tuple[str, ...]
    stored_as: tuple[str, ...] = ()
    """Codes in the index that are editions of this source (``BDSG 2018``, ``BDSG 1990``)."""


@dataclass(frozen=True)
class Gazetteer:
    jurisdictions: dict[str, tuple[str, ...]]
    """Code → names and adjectives that mean it in a question ("California", "Californian")."""
    sources: tuple[Source, ...]


@lru_cache(maxsize=1)
def default_gazetteer() -> Gazetteer:
    """The gazetteer shipped in ``packs/scope.yaml``.

    Raises:
        ConfigError: The file is malformed (the message names the field).
    """
    text = resources.files("twinloop.packs").joinpath("scope.yaml").read_text("utf-8")
    return parse_gazetteer(text, "packs/scope.yaml")


def parse_gazetteer(text: str, where: str) -> Gazetteer:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not YAML: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("jurisdictions"), dict):
        raise ConfigError(f"{where}: needs a 'jurisdictions' mapping")
    jur: dict[str, tuple[str, ...]] = {}
    for code, names in doc["jurisdictions"].items():
        if not JURISDICTION_CODE.match(str(code)) or not isinstance(names, list) or not names:
            raise ConfigError(f"{where}: jurisdictions.{code}: needs a code like 'DE' and a list of names")
        jur[str(code)] = tuple(str(n).casefold() for n in names)
    sources = []
    for i, s in enumerate(doc.get("sources") or []):
        if not isinstance(s, dict) or not s.get("code") or not isinstance(s.get("aliases"), list):
            raise ConfigError(f"{where}: sources[{i}]: needs 'code' and a list of 'aliases'")
        if str(s.get("jurisdiction")) not in jur:
            raise ConfigError(f"{where}: sources[{i}].jurisdiction = {s.get('jurisdiction')!r}: not in jurisdictions")
        sources.append(Source(str(s["code"]), str(s["jurisdiction"]), tuple(str(a).casefold() for a in s["aliases"]),
                              tuple(str(c) for c in s.get("stored_as") or [s["code"]])))
    return Gazetteer(jur, tuple(sources))


@dataclass(frozen=True)
class ScopeVerdict:
    """Why a question is out of scope; None from :func:`out_of_scope` when it is not."""

    reason: str
    """One sentence for the user: what was asked for, and what the index holds instead."""
    asked: dict[str, Any]
    """What the question named: ``jurisdiction``, ``source``, ``article``."""


def _mentions(text: str, name: str) -> bool:
    return re.search(r"(?<![\w])" + re.escape(name) + r"(?![\w])", text) is not None


def _named_sources(question: str, gz: Gazetteer) -> list[Source]:
    """The sources ``question`` names ("CCPA", "StGB", "Article 150 GDPR"), in order. A mention
    inside a longer one ("GDPR" in "UK GDPR") is that longer source's."""
    q = " " + question.casefold() + " "
    spans = []
    for src in gz.sources:
        for a in src.aliases:
            for m in re.finditer(r"(?<![\w])" + re.escape(a) + r"(?![\w])", q):
                spans.append((m.start(), m.end(), src))
    named = [s for s in spans if not any(o[0] <= s[0] and s[1] <= o[1] and (o[1] - o[0]) > (s[1] - s[0])
                                         for o in spans)]
    return list(dict.fromkeys(s[2] for s in sorted(named, key=lambda s: s[0])))


def pinpoints(question: str, catalog: Catalog, gazetteer: Gazetteer | None = None) -> set[tuple[str, str]]:
    """The ``(code as stored, article number)`` pairs a question names in held sources: "§ 42
    BDSG" → ``{("BDSG 2018", "42"), ("BDSG 1990", "42")}`` where both editions hold a § 42.

    A question that names its provision is answered from that provision only: § 43's fine is
    not the answer to "how high is the fine in § 42?", however close its wording
    (docs/DESIGN.md "Serving"). Empty when no held source is named with an article.
    """
    out: set[tuple[str, str]] = set()
    for src in _named_sources(question, gazetteer or default_gazetteer()):
        for m in _ARTICLE.finditer(question):
            for c in src.stored_as:
                held = catalog.articles.get(c, frozenset())
                number = m.group(1) + (m.group(3) or "").lower()
                if number in held:
                    out.add((c, number))
                elif m.group(3) and m.group(2) and m.group(1) in held:
                    out.add((c, m.group(1)))  # "Article 6 a": a point of Article 6
    return out


def out_of_scope(question: str, domains: list[str], catalog: Catalog, jurisdiction: str | None = None,
                 gazetteer: Gazetteer | None = None, as_of: str | None = None) -> ScopeVerdict | None:
    """The reason ``question`` asks for a jurisdiction, source or article the index does not
    hold, or None. With ``as_of`` (ISO date), an article held only in editions not in force
    that day is not held for the question either.

    Applies to domains whose documents carry jurisdictions (law); a domain without any (medicine,
    finance) is never out of scope by these rules.
    """
    held = frozenset().union(*(catalog.jurisdictions.get(d, frozenset()) for d in domains))
    if not held:
        return None
    gz = gazetteer or default_gazetteer()
    holds = ", ".join(sorted(held))
    if jurisdiction is not None and jurisdiction not in held:
        return ScopeVerdict(f"The index holds no sources for jurisdiction {jurisdiction}; it holds {holds}.",
                            {"jurisdiction": jurisdiction})
    q = " " + question.casefold() + " "
    named = _named_sources(question, gz)
    for src in named:
        stored = [c for c in src.stored_as if c in catalog.articles]
        if not stored:
            return ScopeVerdict(f"The index does not hold {src.code} ({src.jurisdiction}); its legal sources are "
                                f"{', '.join(sorted(catalog.articles)) or 'none'}.",
                                {"source": src.code, "jurisdiction": src.jurisdiction})
    for src in named:
        stored = [c for c in src.stored_as if c in catalog.articles]
        if as_of is not None:
            # No edition of the source in force that day: the index does not hold the law the
            # question asks about, whatever later or earlier editions say.
            on_day = [catalog.held_on(c, a, as_of) for c in stored for a in catalog.articles[c]]
            if on_day and all(v is False for v in on_day):
                return ScopeVerdict(f"The index holds {src.code} only in editions not in force on {as_of}.",
                                    {"source": src.code, "as_of": as_of})
        for m in _ARTICLE.finditer(question):
            number = m.group(1) + (m.group(3) or "").lower()
            found = [(c, number) for c in stored if number in catalog.articles[c]]
            if not found and m.group(3) and m.group(2):
                # "Article 6 a": the letter may be a point of the article, not part of its number.
                found = [(c, m.group(1)) for c in stored if m.group(1) in catalog.articles[c]]
            if not found:
                return ScopeVerdict(f"The index holds no article {number} of {src.code}.",
                                    {"source": src.code, "article": number})
            para = _PARAGRAPH.match(question, m.end())
            if para is not None:
                asked = para.group(1) or para.group(2)
                held_parts = [catalog.parts.get(c, {}).get(a) for c, a in found]
                # An article stored whole has no numbered paragraphs: "(1)" of it is the article.
                if all(ps and asked not in ps for ps in held_parts) or (
                        all(not ps for ps in held_parts) and asked != "1"):
                    known = sorted({p for ps in held_parts if ps for p in ps}, key=lambda p: (len(p), p))
                    return ScopeVerdict(f"The index holds no paragraph {asked} of article {number} of {src.code}"
                                        + (f" (it holds paragraphs {', '.join(known)})." if known else "."),
                                        {"source": src.code, "article": number, "paragraph": asked})
            if as_of is not None:
                on_day = [catalog.held_on(c, a, as_of) for c, a in found]
                if on_day and all(v is False for v in on_day):
                    return ScopeVerdict(f"The index holds article {number} of {src.code} only in editions not "
                                        f"in force on {as_of}.", {"source": src.code, "article": number,
                                                                  "as_of": as_of})
    if named:
        return None  # a held source named: in scope whatever else the question mentions
    for code, names in gz.jurisdictions.items():
        if code in held or any(code.startswith(h + "-") for h in held):
            continue
        if any(_mentions(q, n) for n in names):
            return ScopeVerdict(f"The index holds no sources for {names[0].title()} ({code}); it holds {holds}.",
                                {"jurisdiction": code})
    return None
