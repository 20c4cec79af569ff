"""The composition root of one TwinLoop process: settings, data directory, base model,
embedder, stores — each built once, on first use.

Only entry points use it (the API server, the CLI, the Shadow worker's ``main``, the
showcase, and the serving facade that a server builds from it); everything below them gets
its dependencies passed explicitly (docs/DESIGN.md "Map"). Models load lazily, so commands
that need neither (``validate-config``) stay instant, and each process holds one copy of
each (docs/DESIGN.md "Foundation"), and one release registry.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from twinloop.kernel.config import Settings
from twinloop.kernel.datadir import DataDir

log = logging.getLogger(__name__)

@dataclass
class Runtime:
    """Settings plus the models they name, loaded on first access."""

    settings: Settings

    @cached_property
    def data_dir(self) -> DataDir:
        return DataDir(self.settings.data_dir)

    @cached_property
    def foundation(self):
        from twinloop.foundation import load_foundation

        return load_foundation(self.settings.foundation, self.data_dir)

    @cached_property
    def embedder(self):
        from twinloop.foundation.embedder import load_embedder

        return load_embedder(self.settings.embedder)

    @cached_property
    def db(self):
        from twinloop.kernel.db import Database

        return Database(self.data_dir.database)

    @cached_property
    def domains(self):
        from twinloop.knowledge.domains import DomainRegistry

        return DomainRegistry(self.db)

    @cached_property
    def knowledge(self):
        """Documents, revisions and indexes of every domain."""
        from twinloop.knowledge.store import KnowledgeStore

        return KnowledgeStore(self.db, self.data_dir.indexes, self.embedder, self.settings.retrieval,
                              domains=self.domains.names())

    @cached_property
    def corrections(self):
        """Accepted corrections: documents of their domain, served from memory (knowledge/corrections.py)."""
        from twinloop.knowledge.corrections import CorrectionStore

        return CorrectionStore(self.db, self.knowledge, self.domains, self.events)

    def correct(self, domain: Any, question: Any, answer: Any, *, actor: str, source: Any = None,
                feedback_id: int | None = None):
        """Accept a correction under the Active release (the one API route and CLI command both
        call): served on the next request, or once approved where the domain's policy asks.

        Raises:
            InvalidInputError / UnknownDomainError: A bad field or domain (named).
        """
        return self.corrections.add(domain, question, answer, actor=actor, source=source, feedback_id=feedback_id,
                                    release_id=self.releases.pointer("active"))

    def submit_feedback(self, request_id: str, score: Any, correction: Any, actor: str | None,
                        request: dict[str, Any] | None):
        """Store and filter feedback; a correction the filters accept also enters correction
        memory for the question it corrects (docs/DESIGN.md "Learning"). Returns the feedback
        record and the correction (None when there is none or the filters held it back)."""
        record = self.feedback.submit(request_id, score, correction, actor, request=request)
        made = None
        if record.status == "accepted" and record.correction and request is not None:
            domains = request.get("domains")
            if isinstance(domains, str):
                domains = json.loads(domains)
            domain = (domains or [None])[0]
            if domain is not None and request.get("query"):
                from twinloop.kernel.errors import InvalidInputError

                try:
                    made = self.correct(domain, request["query"], record.correction, actor=actor or "anonymous",
                                        feedback_id=record.id)
                except InvalidInputError as e:
                    # The feedback is stored and accepted for training either way; only a text
                    # correction memory cannot hold (over its length limit) stays out of it.
                    log.warning("feedback %s: correction not put in memory: %s", record.id, e)
        return record, made

    def lineage(self, release_id: str) -> frozenset[str]:
        """A release and every release it descends from: whose corrections it serves."""
        from twinloop.kernel.errors import TwinLoopError

        try:
            return frozenset({release_id, *(r.id for r in self.releases.ancestors(release_id))})
        except TwinLoopError:  # not in the registry (a dry-run view): only its own
            return frozenset({release_id})

    @cached_property
    def retriever(self):
        from twinloop.knowledge.retrieval import Retriever

        cfg = self.settings.retrieval
        return Retriever(self.knowledge, k=cfg.k, tau=cfg.tau, fusion=cfg.fusion, lexical_weight=cfg.lexical_weight)

    @cached_property
    def artifacts(self):
        """Content-addressed artifact folders (adapters)."""
        from twinloop.release.artifacts import ArtifactStore

        return ArtifactStore(self.data_dir.artifacts)

    @cached_property
    def events(self):
        """The hash-chained audit log."""
        from twinloop.release.events import EventStore

        return EventStore(self.db)

    @cached_property
    def releases(self):
        """Release records and the Active/Shadow pointers."""
        from twinloop.release.registry import ReleaseRegistry

        return ReleaseRegistry(self.db, self.artifacts, self.events)

    @cached_property
    def feedback(self):
        """Feedback intake of the learning loop (stored once, filtered into samples).

        Its filters get the index as a callable, so a correction that contradicts a
        citation-required domain's sources goes to review (learning/filters.py
        ``ContradictionFilter``) while the learning loop still imports nothing of serving.
        """
        from twinloop.learning.feedback import FeedbackDesk
        from twinloop.learning.filters import FilterPipeline, feedback_stages
        from twinloop.learning.intake import FeedbackIntake

        stages = feedback_stages(retrieve=self._source_passages, cited=self._citations_required)
        intake = FeedbackIntake(self.db, self.domains, pipeline=FilterPipeline(stages))
        return FeedbackDesk(self.db, self.domains, events=self.events, intake=intake)

    def _source_passages(self, domain: str, question: str) -> list[dict[str, Any]]:
        """The domain's passages in force today for ``question``, best first.

        BM25 only: the check compares numbers and wording, which lexical search finds, and a
        correction need not wait for a query embedding.
        """
        from twinloop.knowledge.retrieval import MAX_QUERY_CHARS

        hits = self.retriever.view().search(question[:MAX_QUERY_CHARS], [domain], k=3, mode="bm25").hits
        return [{"text": h.text, "uri": h.citation.get("uri") or h.label, "citation": h.citation} for h in hits]

    def _citations_required(self, domain: str) -> bool:
        from twinloop.kernel.errors import UnknownDomainError

        try:
            return self.domains.get(domain).citations_required
        except UnknownDomainError:
            return False

    @cached_property
    def router(self):
        from twinloop.routing import Router, RouterSpec

        spec = RouterSpec.from_domains(self.domains.all(), self.settings.router, self.embedder.name)
        return Router(spec, self.embedder)

    def describe(self) -> dict[str, Any]:
        """Model, parameter count, dtype, threads and data directory (``twinloop info``)."""
        import torch

        f = self.foundation
        return {
            "model": f.name,
            "source": f.info.source,
            "location": f.info.location,
            "parameters": f.parameter_count,
            "dtype": f.dtype,
            "threads": torch.get_num_threads(),
            "data_dir": str(self.settings.data_dir.resolve()),
            "model_cache": f.info.cache_dir,
            "loaded_from_cache": f.info.from_cache,
            "load_seconds": round(f.info.seconds, 3),
            "torch": torch.__version__,
        }
