"""Loading the default packs' seed corpora into the knowledge store."""

from __future__ import annotations

from dataclasses import dataclass

from twinloop.knowledge.domains import DomainRegistry, pack_corpus
from twinloop.knowledge.store import IngestReport, KnowledgeStore


@dataclass(frozen=True)
class SeedReport:
    reports: list[IngestReport]

    @property
    def added(self) -> int:
        return sum(r.added for r in self.reports)


def seed_packs(store: KnowledgeStore, registry: DomainRegistry, domains: list[str] | None = None) -> SeedReport:
    """Ingest each pack's seed corpus; documents already stored are skipped, so running it
    again only adds what is new."""
    specs = registry.all()
    names = domains if domains is not None else list(specs)
    reports = []
    for name in names:
        spec = registry.get(name)
        docs = pack_corpus(spec)
        if docs:
            reports.append(store.ingest(name, docs, note=f"seed corpus of pack {name}"))
    return SeedReport(reports)
