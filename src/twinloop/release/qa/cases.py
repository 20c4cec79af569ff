"""QA cases: the held-out questions a candidate answers before its canary (paper §5.1), and
loading them from a default pack's ``qa_cases.jsonl`` or a user's JSON-lines file.

Each case says what a correct answer contains and which sources it must cite; parsing names
the file, line and field of every mistake, so a bad case file is fixed in one go.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

from twinloop.kernel.errors import InvalidInputError, UnknownDomainError
from twinloop.knowledge.domains import DEFAULT_PACKS, DomainRegistry, load_pack
from twinloop.knowledge.sources.reading import parse_jsonl, read_text

CASES_FILE = "qa_cases.jsonl"
"""Name of a default pack's held-out cases, next to its ``pack.yaml``."""


@dataclass(frozen=True)
class QaCase:
    """One held-out question with what a correct answer contains and must cite.

    Attributes:
        id: Unique within a run; names the case in reports.
        domain: The domain the case tests (per-domain rates, forgetting check).
        query: The question, as a user would ask it.
        expected: Key phrases; the answer's content passes when it contains ANY of them,
            compared after NFKC, case folding and whitespace collapsing (so "One  Month"
            matches "one month"). Alternatives cover wording a correct answer may use.
        citations: Required references; the answer passes citations when one of its
            citations' uri or label contains one of them as a whole token (see
            :func:`~twinloop.release.qa.judge.citation_matches`). Empty: no particular
            source is required.
        needs_citation: Counts towards the citation rate (paper §5.1 ``case.needs_citation``):
            the answer must cite at least one retrieved source. Loaded cases default to
            their domain's ``citations_required``.
        as_of: ISO date the question is asked about (default today).
        jurisdiction: Only sources of this jurisdiction, e.g. "DE".
        source: The document the case was written from (provenance; not checked).
    """

    id: str
    domain: str
    query: str
    expected: tuple[str, ...]
    citations: tuple[str, ...] = ()
    needs_citation: bool = True
    as_of: str | None = None
    jurisdiction: str | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_CASE_FIELDS = frozenset(f.name for f in dataclasses.fields(QaCase))


def load_cases(domains: DomainRegistry | Sequence[str], path: Path | str | None = None) -> list[QaCase]:
    """Held-out cases: the packaged ones of ``domains``, or those of a user JSONL file.

    Args:
        domains: A registry (its default packs' packaged cases; its user domains have none
            and need ``path``) or default pack names.
        path: A JSON-lines file of cases, one object per line with the fields of
            :class:`QaCase` (``citations``, ``needs_citation``, ``as_of``, ``jurisdiction``
            and ``source`` optional); replaces the packaged cases. Every case's domain must
            be one of ``domains``.

    Raises:
        UnknownDomainError: A name that is no default pack, or a case of an unknown domain.
        InvalidInputError: A malformed line, naming the file, line and field; duplicate ids.
    """
    policy = _citation_policy(domains)
    if path is not None:
        path = Path(path)
        return _parse_cases(read_text(path), str(path), policy)
    cases: list[QaCase] = []
    for name in (n for n in policy if n in DEFAULT_PACKS):  # only shipped packs ship cases
        res = resources.files("twinloop.packs").joinpath(name, CASES_FILE)
        if res.is_file():
            cases += _parse_cases(res.read_text(encoding="utf-8"), f"twinloop/packs/{name}/{CASES_FILE}", policy)
    return unique_cases(cases, "packaged cases")


def unique_cases(cases: list[QaCase], where: str) -> list[QaCase]:
    """``cases`` unchanged when their ids are unique.

    Raises:
        InvalidInputError: An id that appears twice, naming ``where``.
    """
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            raise InvalidInputError(f"{where}: case id {case.id!r} appears twice")
        seen.add(case.id)
    return cases


def _citation_policy(domains: DomainRegistry | Sequence[str]) -> dict[str, bool]:
    """Known domain → its ``citations_required`` (the default of ``needs_citation``)."""
    if isinstance(domains, DomainRegistry):
        return {name: spec.citations_required for name, spec in domains.all().items()}
    if isinstance(domains, str):  # a bare name would be iterated letter by letter
        raise InvalidInputError(f"domains = {domains!r}: give a list of names or a DomainRegistry")
    # Without a registry only the shipped packs are known; load_pack names the bad one.
    return {name: load_pack(name).citations_required for name in domains}


def _parse_cases(text: str, where: str, policy: Mapping[str, bool]) -> list[QaCase]:
    cases = []
    for n, obj in parse_jsonl(text, where):
        at = f"{where} line {n}"
        unknown = sorted(set(obj) - _CASE_FIELDS)
        if unknown:
            raise InvalidInputError(f"{at}: unknown field {unknown[0]!r}")
        domain = _text(obj, "domain", at)
        if domain not in policy:
            raise UnknownDomainError(f"{at}: unknown domain {domain!r}; known: {', '.join(sorted(policy))}")
        needs = obj.get("needs_citation", policy[domain])
        if not isinstance(needs, bool):
            raise InvalidInputError(f"{at}: needs_citation = {needs!r}: expected true or false")
        as_of = _optional_text(obj, "as_of", at)
        if as_of is not None:
            try:
                date.fromisoformat(as_of)
            except ValueError as e:
                raise InvalidInputError(f"{at}: as_of = {as_of!r}: expected an ISO date YYYY-MM-DD") from e
        cases.append(QaCase(
            id=_text(obj, "id", at), domain=domain, query=_text(obj, "query", at),
            expected=_phrases(obj, "expected", at, required=True),
            citations=_phrases(obj, "citations", at, required=False), needs_citation=needs, as_of=as_of,
            jurisdiction=_optional_text(obj, "jurisdiction", at), source=_optional_text(obj, "source", at)))
    return unique_cases(cases, where)


def _text(obj: Mapping[str, Any], key: str, at: str) -> str:
    if key not in obj:
        raise InvalidInputError(f"{at}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{at}: {key} = {value!r}: expected a non-empty string")
    return value.strip()


def _optional_text(obj: Mapping[str, Any], key: str, at: str) -> str | None:
    return None if obj.get(key) is None else _text(obj, key, at)


def _phrases(obj: Mapping[str, Any], key: str, at: str, required: bool) -> tuple[str, ...]:
    value = obj.get(key, None if required else [])
    ok = isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)
    if not ok or (required and not value):
        need = "a non-empty list" if required else "a list"
        raise InvalidInputError(f"{at}: {key} = {value!r}: expected {need} of non-empty strings")
    return tuple(v.strip() for v in value)
