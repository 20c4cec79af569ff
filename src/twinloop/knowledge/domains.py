"""Domains: law, med, fin, general by default, and any a user adds (DESIGN.md "Domain").

A domain is a description and example queries (the router's prototypes), keyword rules with
priorities, a policy (citations required? human approval before promotion?) and, for the
default packs, a seed corpus built from real public data (see NOTICE). Packs ship inside the
package under ``twinloop/packs/<name>/``; user domains are stored in the database.
"""

from __future__ import annotations

import gzip
import json
import re
from importlib import resources
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from twinloop.kernel.clock import now_iso
from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError, UnknownDomainError
from twinloop.knowledge.document import Document

DEFAULT_PACKS = ("law", "med", "fin", "general")
FALLBACK_DOMAIN = "general"
"""Where low-confidence queries go (paper §4.1)."""
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"


class KeywordRule(BaseModel):
    """A case-insensitive regular expression that activates its domain when it matches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str = Field(min_length=1, max_length=500)
    priority: int = 0
    """Higher wins when rules of several domains match."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v, re.IGNORECASE)
        except re.error as e:
            raise ValueError(f"not a valid regular expression ({e})") from e
        return v


class DomainSpec(BaseModel):
    """Everything that defines a domain except its learned adapter and its documents."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(min_length=1, max_length=4000)
    examples: tuple[str, ...] = ()
    rules: tuple[KeywordRule, ...] = ()
    citations_required: bool = False
    """"No source, no claim": answers must cite retrieved passages (DESIGN.md "Serving")."""
    approval_required: bool = False
    """A human approves before a release changing this domain is promoted."""
    approvals_required: int = Field(default=1, ge=1, le=10)
    """How many distinct reviewers (API keys, CLI users) must approve, with ``approval_required``:
    2 is the two-person rule, so one admin key cannot both approve and promote a release."""
    corpus: str | None = None
    """File name of the pack's seed corpus (gzip JSONL of documents), if any."""


    @model_validator(mode="after")
    def _approvals_need_the_policy(self) -> DomainSpec:
        if self.approvals_required > 1 and not self.approval_required:
            # Counting reviewers of a domain that needs none would silently do nothing.
            raise ValueError(f"approvals_required = {self.approvals_required} needs approval_required: true")
        return self


def _parse_spec(data: Any, where: str) -> DomainSpec:
    try:
        return DomainSpec.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InvalidInputError(f"{where}: {field} = {first.get('input')!r}: {first['msg']}") from e


def load_pack(name: str) -> DomainSpec:
    """A default domain pack shipped with the package."""
    res = resources.files("twinloop.packs").joinpath(name, "pack.yaml")
    if not res.is_file():
        raise UnknownDomainError(f"no default pack named {name!r}; packs: {', '.join(DEFAULT_PACKS)}")
    return _parse_spec(yaml.safe_load(res.read_text(encoding="utf-8")), f"pack {name}")


def pack_corpus(spec: DomainSpec) -> list[Document]:
    """The seed documents of a default pack (empty when it has none)."""
    if not spec.corpus:
        return []
    res = resources.files("twinloop.packs").joinpath(spec.name, spec.corpus)
    with res.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        return [Document.parse(json.loads(line), f"pack {spec.name} line {n}")
                for n, line in enumerate(fh, start=1) if line.strip()]


SCHEMA = """
CREATE TABLE IF NOT EXISTS domains(
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL
)
"""


class DomainRegistry:
    """The default packs plus the domains users added (stored in the database)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure_schema("domains", SCHEMA)
        self._packs = {name: load_pack(name) for name in DEFAULT_PACKS}

    def all(self) -> dict[str, DomainSpec]:
        specs = dict(self._packs)
        for row in self.db.conn.execute("SELECT name, spec FROM domains ORDER BY name"):
            specs[row["name"]] = _parse_spec(json.loads(row["spec"]), f"stored domain {row['name']}")
        return specs

    def names(self) -> list[str]:
        return list(self.all())

    def get(self, name: str) -> DomainSpec:
        specs = self.all()
        if name not in specs:
            raise UnknownDomainError(f"unknown domain {name!r}; known: {', '.join(sorted(specs))}")
        return specs[name]

    def add(self, data: dict | DomainSpec) -> DomainSpec:
        """Add or replace a user domain (a default pack's name is refused)."""
        spec = data if isinstance(data, DomainSpec) else _parse_spec(data, "domain")
        if spec.name in self._packs:
            raise InvalidInputError(f"domain {spec.name!r} is a default pack and cannot be redefined")
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO domains(name, spec, created_at) VALUES (?,?,?)",
                (spec.name, spec.model_dump_json(), now_iso()),
            )
        return spec
