"""Facts the base model cannot know, with paraphrased probes: the experiment's data (paper §6.1).

The facts themselves, and what each field means, are in ``data/facts.yaml`` next to this module
(package data, read with :mod:`importlib.resources` and checked when this module is imported).
Every fact is about a made-up entity (an act, a drug, a bank) dated after the base model's
training, so the base answers its probes correctly only by chance; what a method gets right it
learned during the experiment. Each fact carries a training pair (``prompt`` → ``target``, plus
``alt_prompt`` as an augmentation), a citable ``document`` for the index, paraphrased
``probes`` and the ``answers`` a correct reply contains (:func:`is_correct`).

The set is small and versioned with the experiment (nine facts per domain: three cycles of
three). :func:`tasks` cuts it into the experiment's (cycle, domain) steps, each bringing new facts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

import yaml

from twinloop.kernel.errors import InvalidInputError
from twinloop.kernel.text import normalise_text

DATA_FILE = "data/facts.yaml"
"""The fact set, relative to this package."""


@dataclass(frozen=True)
class Fact:
    """One made-up fact with its training pair, index document and probes."""

    id: str
    domain: str
    prompt: str
    alt_prompt: str
    target: str
    document: str
    title: str
    probes: tuple[str, ...]
    answers: tuple[str, ...]

    @property
    def uri(self) -> str:
        """The document's uri, which a citation of it carries."""
        return f"urn:twinloop:eval:{self.id}"

    def document_record(self) -> dict[str, str]:
        """The document in the shape ``KnowledgeStore.ingest`` takes."""
        return {"text": self.document, "source": SOURCE, "title": self.title, "uri": self.uri}


@dataclass(frozen=True)
class Task:
    """One step of the experiment: a domain's new facts in one cycle (a column of R)."""

    index: int
    cycle: int
    domain: str
    facts: tuple[Fact, ...]

    @property
    def name(self) -> str:
        return f"c{self.cycle}-{self.domain}"


class FactSet(NamedTuple):
    """A loaded fact file: its domains in order, its documents' source label, its facts."""

    domains: tuple[str, ...]
    source: str
    facts: tuple[Fact, ...]


_TEXTS = ("id", "domain", "title", "prompt", "alt_prompt", "target", "document")
_LISTS = ("probes", "answers")


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{where} = {value!r}: must be a non-empty string (quote it)")
    return value


def _texts(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidInputError(f"{where} = {value!r}: must be a non-empty list of strings")
    return tuple(_text(v, f"{where}[{i}]") for i, v in enumerate(value))


def _keys(value: Any, expected: tuple[str, ...], where: str, path: str) -> dict[str, Any]:
    # ``path`` is "" for the file's top level, "facts[3]." for a fact.
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where}: {path.rstrip('.') or 'the file'} = {value!r}: must be a mapping "
                                f"with {', '.join(expected)}")
    if unknown := sorted(set(map(str, value)) - set(expected)):
        raise InvalidInputError(f"{where}: {path}{unknown[0]}: unknown field; fields are {', '.join(expected)}")
    if missing := [k for k in expected if k not in value]:
        raise InvalidInputError(f"{where}: {path}{missing[0]}: missing")
    return value


def load_facts(text: str, where: str = DATA_FILE) -> FactSet:
    """Parse and check a fact file (YAML, the layout of ``data/facts.yaml``).

    Raises:
        InvalidInputError: naming the bad field (``<where>: facts[3].answers[0] = 48: …``) for
            bad YAML, a missing, unknown or mistyped field, a repeated id or domain, a fact of
            an undeclared domain, or a declared domain without facts.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InvalidInputError(f"{where}: not valid YAML: {e}") from e
    top = _keys(raw, ("source", "domains", "facts"), where, "")
    source = _text(top["source"], f"{where}: source")
    domains = _texts(top["domains"], f"{where}: domains")
    if len(set(domains)) != len(domains):
        raise InvalidInputError(f"{where}: domains = {list(domains)!r}: repeated domain")
    if not isinstance(top["facts"], list) or not top["facts"]:
        raise InvalidInputError(f"{where}: facts: must be a non-empty list of facts")
    facts: list[Fact] = []
    for n, item in enumerate(top["facts"]):
        at = f"{where}: facts[{n}]"
        d = _keys(item, _TEXTS + _LISTS, where, f"facts[{n}].")
        fields: dict[str, Any] = {k: _text(d[k], f"{at}.{k}") for k in _TEXTS}
        fields |= {k: _texts(d[k], f"{at}.{k}") for k in _LISTS}
        if fields["domain"] not in domains:
            raise InvalidInputError(f"{at}.domain = {fields['domain']!r}: not one of domains ({', '.join(domains)})")
        if any(f.id == fields["id"] for f in facts):
            raise InvalidInputError(f"{at}.id = {fields['id']!r}: repeated id")
        facts.append(Fact(**fields))
    if empty := [d for d in domains if not any(f.domain == d for f in facts)]:
        raise InvalidInputError(f"{where}: domains: {empty[0]!r} has no facts")
    return FactSet(domains=domains, source=source, facts=tuple(facts))


_LOADED = load_facts(resources.files("twinloop.showcase.experiments").joinpath(DATA_FILE).read_text("utf-8"))

DOMAINS: tuple[str, ...] = _LOADED.domains
"""Domains the fact set covers, in the experiment's default order (paper §6.1)."""
SOURCE: str = _LOADED.source
"""The ``source`` of every fact's document once ingested."""
FACTS: tuple[Fact, ...] = _LOADED.facts
"""Nine facts per domain; :func:`tasks` takes them in this order, ``per_step`` at a time."""


def facts_of(domain: str) -> tuple[Fact, ...]:
    """A domain's facts in task order.

    Raises:
        InvalidInputError: ``domain`` has no facts.
    """
    found = tuple(f for f in FACTS if f.domain == domain)
    if not found:
        raise InvalidInputError(f"no evaluation facts for domain {domain!r}; known: {', '.join(DOMAINS)}")
    return found
def tasks(domains: tuple[str, ...] | list[str], cycles: int, per_step: int) -> list[Task]:
    """The experiment's steps: for each cycle, each domain in order with ``per_step`` new facts.

    Raises:
        InvalidInputError: ``cycles`` or ``per_step`` < 1, a repeated or unknown domain, or more
            facts asked of a domain than it has.
    """
    if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
        raise InvalidInputError(f"cycles = {cycles!r}: must be an integer ≥ 1")
    if isinstance(per_step, bool) or not isinstance(per_step, int) or per_step < 1:
        raise InvalidInputError(f"facts per step = {per_step!r}: must be an integer ≥ 1")
    if len(set(domains)) != len(domains) or not domains:
        raise InvalidInputError(f"domains = {list(domains)!r}: must be a non-empty list without repeats")
    pools = {d: facts_of(d) for d in domains}
    for d, pool in pools.items():
        if cycles * per_step > len(pool):
            raise InvalidInputError(f"{cycles} cycles × {per_step} facts need {cycles * per_step} facts of domain "
                                    f"{d!r}; it has {len(pool)}")
    out: list[Task] = []
    for c in range(cycles):
        for d in domains:
            out.append(Task(index=len(out), cycle=c + 1, domain=d,
                            facts=pools[d][c * per_step:(c + 1) * per_step]))
    return out


_NUM_EDGE = re.compile(r"\d")


def is_correct(answer: str, fact: Fact) -> bool:
    """True when ``answer`` contains one of the fact's answer strings.

    Both sides are normalised (NFKC, case-folded, whitespace collapsed, as the QA dry run's
    ``content_ok``); an answer string that begins or ends with a digit must not be glued to
    another digit, so "14" is not found in "2014" and "48" not in "480".
    """
    text = normalise_text(answer)
    for phrase in fact.answers:
        p = normalise_text(phrase)
        pattern = re.escape(p)
        if _NUM_EDGE.match(p[0]):
            pattern = r"(?<![\d.])" + pattern
        if _NUM_EDGE.match(p[-1]):
            pattern += r"(?![\d]|\.\d)"
        if re.search(pattern, text):
            return True
    return False


__all__ = ["DATA_FILE", "DOMAINS", "FACTS", "SOURCE", "Fact", "FactSet", "Task", "facts_of", "is_correct",
           "load_facts", "tasks"]
