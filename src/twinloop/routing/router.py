"""Embedding router with keyword rules (paper §4.1, issue 3 point 6).

Each domain's score is the cosine similarity between the query and the domain's prototypes:
its description and example queries, embedded with the same model as retrieval. A domain
scores the mean of its three most similar prototypes — measured better on our labelled
set than a single centroid (examples of a broad domain point in different directions) or
the single best example (one odd example attracts stray queries); see
benchmarks/retrieval.py. Domains with score ≥ τ activate, and so does a domain whose
keyword rule matches; secondary domains must also lie within a margin of the best. When
nothing activates, the query falls back to ``general``.

The router's whole configuration is a :class:`RouterSpec`: plain data, serialised to
canonical JSON and identified by its SHA-256, because it becomes part of a release.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np

from twinloop.domains import FALLBACK_DOMAIN, DomainSpec, KeywordRule
from twinloop.errors import InvalidInputError

TOP_PROTOTYPES = 3


@dataclass(frozen=True)
class DomainRoute:
    """The routing part of one domain."""

    name: str
    description: str
    examples: tuple[str, ...]
    rules: tuple[tuple[str, int], ...]
    """(pattern, priority) pairs."""


@dataclass(frozen=True)
class RouterSpec:
    """Serialisable, hashable router configuration (part of a release)."""

    domains: tuple[DomainRoute, ...]
    tau: float
    secondary_margin: float
    fallback: str = FALLBACK_DOMAIN
    embedder: str = "all-MiniLM-L6-v2"

    @classmethod
    def from_domains(cls, specs: dict[str, DomainSpec] | list[DomainSpec], tau: float,
                     secondary_margin: float, embedder: str = "all-MiniLM-L6-v2") -> RouterSpec:
        items = specs.values() if isinstance(specs, dict) else specs
        routes = tuple(
            DomainRoute(s.name, s.description, tuple(s.examples), tuple((r.pattern, r.priority) for r in s.rules))
            for s in sorted(items, key=lambda s: s.name)
        )
        names = {r.name for r in routes}
        if FALLBACK_DOMAIN not in names:
            raise InvalidInputError(f"router needs the fallback domain {FALLBACK_DOMAIN!r}; got {sorted(names)}")
        return cls(routes, tau, secondary_margin, FALLBACK_DOMAIN, embedder)

    def to_json(self) -> str:
        """Canonical JSON: the same configuration always gives the same bytes."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> RouterSpec:
        d = json.loads(text)
        routes = tuple(
            DomainRoute(r["name"], r["description"], tuple(r["examples"]), tuple((p, int(q)) for p, q in r["rules"]))
            for r in d["domains"]
        )
        return cls(routes, d["tau"], d["secondary_margin"], d["fallback"], d["embedder"])

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the canonical JSON: the router's identity in a release."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RuleMatch:
    domain: str
    pattern: str
    priority: int


@dataclass
class RouteDecision:
    """Which domains a query goes to, and why."""

    query: str
    domains: list[str]
    """Activated domains, most relevant first."""
    scores: dict[str, float]
    """Every domain's similarity score."""
    rules: list[RuleMatch] = field(default_factory=list)
    fallback: bool = False
    """True when no domain was confident enough and the query went to ``general``."""
    query_vector: np.ndarray | None = field(default=None, repr=False)

    @property
    def primary(self) -> str:
        return self.domains[0]

    def to_dict(self) -> dict:
        return {"query": self.query, "domains": self.domains, "primary": self.primary,
                "scores": self.scores, "fallback": self.fallback,
                "rules": [asdict(r) for r in self.rules]}


class Router:
    """Routes queries with a :class:`RouterSpec` and an embedder."""

    def __init__(self, spec: RouterSpec, embedder) -> None:
        self.spec = spec
        self.embedder = embedder
        self._names = [d.name for d in spec.domains]
        # (prototypes, dim) per domain: description first, then the examples.
        self._protos = {d.name: embedder.encode([d.description, *d.examples]) for d in spec.domains}
        self._rules = [
            (d.name, re.compile(p, re.IGNORECASE), p, prio) for d in spec.domains for p, prio in d.rules
        ]

    def scores(self, qvec: np.ndarray) -> dict[str, float]:
        out = {}
        for name, protos in self._protos.items():
            sims = np.sort(protos @ qvec)[::-1]  # (prototypes,)
            out[name] = round(float(sims[:TOP_PROTOTYPES].mean()), 4)
        return out

    def route(self, query: str, query_vector: np.ndarray | None = None) -> RouteDecision:
        """Decide the domains of one query."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("query must be a non-empty string")
        qvec = query_vector if query_vector is not None else self.embedder.encode([query])[0]
        scores = self.scores(qvec)
        matches = [RuleMatch(n, p, prio) for n, rx, p, prio in self._rules if rx.search(query)]
        rule_prio = {}
        for m in matches:
            rule_prio[m.domain] = max(rule_prio.get(m.domain, m.priority), m.priority)
        fb = self.spec.fallback
        specialised = {n: s for n, s in scores.items() if n != fb}
        best = max(specialised.values(), default=0.0)
        active = {
            n for n, s in specialised.items()
            if s >= self.spec.tau and s >= best - self.spec.secondary_margin
        }
        active |= {n for n in rule_prio if n != fb}
        # general competes like any domain: if it is the most similar, a specialised domain
        # only stays active on a rule match (an everyday question is not a law question
        # because it brushed τ).
        if scores.get(fb, 0.0) > best and scores.get(fb, 0.0) >= self.spec.tau:
            active = {n for n in active if n in rule_prio}
        if not active:
            return RouteDecision(query, [fb], scores, matches, fallback=scores.get(fb, 0.0) < self.spec.tau,
                                 query_vector=qvec)
        ordered = sorted(active, key=lambda n: (rule_prio.get(n, -(10**9)), scores[n]), reverse=True)
        return RouteDecision(query, ordered, scores, matches, fallback=False, query_vector=qvec)
