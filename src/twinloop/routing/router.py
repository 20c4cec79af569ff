"""Embedding router with keyword rules (paper §4.1; docs/DESIGN.md "Serving").

Each domain's similarity is the cosine between the query and the domain's prototypes — its
description and example queries, embedded with the retrieval model — averaged over the
three most similar ones (a broad domain's examples point in different directions, so one
centroid blurs them; a single best example lets one odd example attract stray queries).
Similarities become confidences by a softmax over all domains, and τ applies to the
confidence (see ``RouterConfig`` for why). The best domain activates when its confidence
is ≥ τ, other domains when theirs is ≥ ``secondary_tau``, and any domain whose keyword rule
matches; rule priority orders them first. When no specialised domain activates, or
``general`` itself is most likely, the query goes to ``general``.

The router's whole configuration is a :class:`RouterSpec`: plain data, serialised to
canonical JSON and identified by its SHA-256, because it becomes part of a release.
benchmarks/retrieval.py measures its accuracy on real labelled queries.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np

from twinloop.kernel.config import RouterConfig
from twinloop.kernel.errors import InvalidInputError
from twinloop.knowledge.domains import FALLBACK_DOMAIN, DomainSpec

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
    secondary_tau: float
    temperature: float
    min_similarity: float
    fallback: str = FALLBACK_DOMAIN
    embedder: str = "all-MiniLM-L6-v2"

    @classmethod
    def from_domains(cls, specs: dict[str, DomainSpec] | list[DomainSpec], config: RouterConfig,
                     embedder: str = "all-MiniLM-L6-v2") -> RouterSpec:
        items = specs.values() if isinstance(specs, dict) else specs
        routes = tuple(
            DomainRoute(s.name, s.description, tuple(s.examples), tuple((r.pattern, r.priority) for r in s.rules))
            for s in sorted(items, key=lambda s: s.name)
        )
        names = {r.name for r in routes}
        if FALLBACK_DOMAIN not in names:
            raise InvalidInputError(f"router needs the fallback domain {FALLBACK_DOMAIN!r}; got {sorted(names)}")
        return cls(routes, config.tau, config.secondary_tau, config.temperature, config.min_similarity,
                   FALLBACK_DOMAIN, embedder)

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
        return cls(routes, d["tau"], d["secondary_tau"], d["temperature"], d["min_similarity"], d["fallback"],
                   d["embedder"])

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
    """Every domain's confidence (softmax of similarities; sums to 1)."""
    similarity: dict[str, float] = field(default_factory=dict)
    """Every domain's cosine similarity to its prototypes."""
    rules: list[RuleMatch] = field(default_factory=list)
    fallback: bool = False
    """True when no domain was confident enough and the query went to ``general``."""
    query_vector: np.ndarray | None = field(default=None, repr=False)

    @property
    def primary(self) -> str:
        return self.domains[0]

    def to_dict(self) -> dict:
        return {"query": self.query, "domains": self.domains, "primary": self.primary,
                "scores": self.scores, "similarity": self.similarity, "fallback": self.fallback,
                "rules": [asdict(r) for r in self.rules]}


_PROTOTYPE_CACHE: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
_PROTOTYPE_LOCK = threading.Lock()


def _prototypes(embedder, texts: tuple[str, ...]) -> np.ndarray:
    """Embeddings of a domain's prototype texts, computed once per process and embedder: every
    release names its router by configuration, and most releases share their parent's, so
    loading a release must not re-embed the same texts (seconds on a CPU)."""
    key = (embedder.name, texts)
    with _PROTOTYPE_LOCK:
        hit = _PROTOTYPE_CACHE.get(key)
    if hit is None:
        hit = embedder.encode(list(texts))
        hit.setflags(write=False)
        with _PROTOTYPE_LOCK:
            _PROTOTYPE_CACHE[key] = hit
    return hit


class Router:
    """Routes queries with a :class:`RouterSpec` and an embedder."""

    def __init__(self, spec: RouterSpec, embedder) -> None:
        self.spec = spec
        self.embedder = embedder
        self._names = [d.name for d in spec.domains]
        # (prototypes, dim) per domain: description first, then the examples.
        self._protos = {d.name: _prototypes(embedder, (d.description, *d.examples)) for d in spec.domains}
        self._rules = [
            (d.name, re.compile(p, re.IGNORECASE), p, prio) for d in spec.domains for p, prio in d.rules
        ]

    def similarities(self, qvec: np.ndarray) -> dict[str, float]:
        """Cosine of the query to each domain: mean of its top prototypes."""
        out = {}
        for name, protos in self._protos.items():
            sims = np.sort(protos @ qvec)[::-1]  # (prototypes,)
            out[name] = float(sims[:TOP_PROTOTYPES].mean())
        return out

    def route(self, query: str, query_vector: np.ndarray | None = None) -> RouteDecision:
        """Decide the domains of one query."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("query must be a non-empty string")
        spec = self.spec
        qvec = query_vector if query_vector is not None else self.embedder.encode([query])[0]
        sims = self.similarities(qvec)
        names = list(sims)
        raw = np.array([sims[n] for n in names])
        conf = np.exp((raw - raw.max()) / spec.temperature)
        conf /= conf.sum()
        share = dict(zip(names, conf.tolist()))  # unrounded: decisions must not hinge on rounding
        confidence = {n: round(c, 4) for n, c in share.items()}
        similarity = {n: round(v, 4) for n, v in sims.items()}
        matches = [RuleMatch(n, p, prio) for n, rx, p, prio in self._rules if rx.search(query)]
        rule_prio: dict[str, int] = {}
        for m in matches:
            rule_prio[m.domain] = max(rule_prio.get(m.domain, m.priority), m.priority)
        fb = spec.fallback
        ranked = sorted((n for n in names if n != fb), key=lambda n: (share[n], sims[n]), reverse=True)
        active: set[str] = set()
        # general competes like any domain: when it is the most likely, an everyday question
        # does not become a law question because law also cleared τ (only a rule can add it).
        general_wins = ranked and share.get(fb, 0.0) > share[ranked[0]]
        if ranked and not general_wins and share[ranked[0]] >= spec.tau and sims[ranked[0]] >= spec.min_similarity:
            active = {n for n in ranked if share[n] >= spec.secondary_tau and sims[n] >= spec.min_similarity}
        active |= {n for n in rule_prio if n != fb}
        if not active:
            # Chosen for lack of anything better, not because it looks like an everyday question.
            low = share.get(fb, 0.0) < spec.tau or sims.get(fb, 0.0) < spec.min_similarity
            return RouteDecision(query, [fb], confidence, similarity, matches, fallback=low, query_vector=qvec)
        ordered = sorted(active, key=lambda n: (rule_prio.get(n, -(10**9)), share[n], sims[n]), reverse=True)
        return RouteDecision(query, ordered, confidence, similarity, matches, fallback=False, query_vector=qvec)
