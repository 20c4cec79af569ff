"""The answer pipeline of one release: route → retrieve → prompt → generate → verify.

A request is pinned to the release that was Active when it was admitted (docs/DESIGN.md
"Serving"): its router, index revision and adapters, so a swap never
changes an answer half-way. The pipeline is split into :meth:`AnswerPipeline.prepare` (route,
retrieve, build the prompt) and :meth:`AnswerPipeline.finish` (verify, build the record, log
it) around the engine's generation, so the same steps serve blocking, async and streaming
callers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date

from twinloop.kernel.config import ServingConfig
from twinloop.kernel.errors import InvalidInputError
from twinloop.knowledge.domains import DomainRegistry
from twinloop.knowledge.retrieval import Hit, Retriever, parse_date
from twinloop.serving import verify
from twinloop.serving.release import ServingRelease
from twinloop.serving.requestlog import RequestLog
from twinloop.serving.types import (
    AnswerRecord,
    Citation,
    GenRequest,
    GenResult,
    check_max_tokens,
    new_request_id,
)

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources given with the question. After each "
    "statement, cite its source number in square brackets, like [1]. If the sources do not "
    "contain the answer, say that you do not know."
)
GENERAL_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and accurately."


@dataclass(frozen=True)
class AnswerRequest:
    """A ``/v1/answer`` request."""

    query: str
    user_id: str | None = None
    session_id: str | None = None
    domain: str | None = None
    """Force this domain instead of routing."""
    as_of: str | None = None
    """ISO date: answer with the law in force that day (default today)."""
    jurisdiction: str | None = None
    max_tokens: int | None = None
    request_id: str = field(default_factory=new_request_id)


@dataclass
class Prepared:
    """Everything decided before generation."""

    request: AnswerRequest
    release: ServingRelease
    domains: list[str]
    scores: dict[str, float]
    passages: list[Hit]
    citations_required: bool
    gen: GenRequest
    index_revision: int
    as_of: str
    started: float
    timings_ms: dict[str, float]


class AnswerPipeline:
    """Answers questions for whichever release a request is pinned to."""

    def __init__(self, retriever: Retriever, domains: DomainRegistry, requestlog: RequestLog,
                 config: ServingConfig, max_query_chars: int = 4000) -> None:
        self.retriever = retriever
        self.domains = domains
        self.requestlog = requestlog
        self.config = config
        self.max_query_chars = max_query_chars

    def prepare(self, req: AnswerRequest, release: ServingRelease) -> Prepared:
        """Validate, route, retrieve and build the generation request.

        Raises:
            InvalidInputError / UnknownDomainError: Bad query, domain, date or token limit.
        """
        started = time.perf_counter()
        if not isinstance(req.query, str) or not req.query.strip():
            raise InvalidInputError("query must be a non-empty string")
        if len(req.query) > self.max_query_chars:
            raise InvalidInputError(f"query is {len(req.query)} characters, over the limit of {self.max_query_chars}")
        max_tokens = req.max_tokens if req.max_tokens is not None else self.config.answer_max_new_tokens
        check_max_tokens(max_tokens, self.config.max_new_tokens_limit)
        day = parse_date(req.as_of) if req.as_of else date.today()
        timings: dict[str, float] = {}

        t = time.perf_counter()
        decision = release.router.route(req.query)
        if req.domain is not None:
            self.domains.get(req.domain)  # unknown domain → UnknownDomainError
            domains = [req.domain]
        else:
            domains = decision.domains
        timings["route"] = _ms(t)

        t = time.perf_counter()
        view = self.retriever.view(release.index_revision)
        specs = {d: self.domains.get(d) for d in domains}
        citations_required = any(s.citations_required for s in specs.values())
        # General questions get no sources unless general is asked for explicitly: its seed
        # corpus is a handful of encyclopaedic notes, not a knowledge base to cite.
        searchable = [d for d in domains if d != "general" or req.domain == "general"]
        passages = (view.search(req.query, searchable, as_of=day, jurisdiction=req.jurisdiction,
                                query_vector=decision.query_vector).hits if searchable else [])
        timings["retrieve"] = _ms(t)

        adapter = release.adapter_for(domains[0])
        messages = self._messages(req.query, passages)
        gen = GenRequest(messages=messages, max_new_tokens=max_tokens, adapter=adapter,
                         timeout_s=self.config.request_timeout_s, request_id=req.request_id)
        return Prepared(req, release, domains, decision.scores, passages, citations_required, gen,
                        view.revision, day.isoformat(), started, timings)

    @staticmethod
    def _messages(query: str, passages: list[Hit]) -> tuple[dict[str, str], ...]:
        if not passages:
            return ({"role": "system", "content": GENERAL_SYSTEM_PROMPT}, {"role": "user", "content": query})
        sources = "\n\n".join(f"[{i}] {h.label}\n{h.text}" for i, h in enumerate(passages, start=1))
        user = f"Sources:\n{sources}\n\nQuestion: {query}"
        return ({"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user})

    def finish(self, prep: Prepared, result: GenResult) -> AnswerRecord:
        """Verify the generated text, build the answer record and log it."""
        t = time.perf_counter()
        text = result.text
        if prep.passages:
            check = verify.check(text, prep.passages, prep.request.query)
            cited = check.cited
        else:
            check, cited = None, []
        citations = [_citation(n, prep.passages[n - 1], text) for n in cited]
        if not prep.citations_required:
            status, verified = "not_required", True
        elif not prep.passages:
            status, verified = "no_sources", False
            text = f"{verify.NO_SOURCE_NOTICE}\n\n{text}"
        elif check is not None and check.verified:
            status, verified = "verified", True
        else:
            status, verified = "unverified", False
            text = f"{verify.UNVERIFIED_NOTICE}\n\n{text}"
        timings = dict(prep.timings_ms)
        timings["queue"] = round(result.queue_seconds * 1000, 3)
        timings["generate"] = round(result.generate_seconds * 1000, 3)
        timings["verify"] = _ms(t)
        timings["total"] = _ms(prep.started)
        record = AnswerRecord(
            request_id=prep.request.request_id, query=prep.request.query, text=text, verified=verified,
            status=status, citations=citations, domains=prep.domains, router_scores=prep.scores,
            release_id=prep.release.id, adapter=prep.gen.adapter, timings_ms=timings,
            prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            finish_reason=result.finish_reason, index_revision=prep.index_revision, as_of=prep.as_of,
            verification=check.reason if check is not None else "no passage was retrieved",
            retrieved=[{"n": i, "label": h.label, "uri": h.citation.get("uri"), "domain": h.domain,
                        "score": h.score} for i, h in enumerate(prep.passages, start=1)],
        )
        self.requestlog.record(
            request_id=record.request_id, kind="answer", query=record.query, release_id=record.release_id,
            domains=record.domains, user_id=prep.request.user_id, session_id=prep.request.session_id,
            adapter=record.adapter, answer=record.text, verified=record.verified, status=record.status,
            citations=[{"n": c.n, "uri": c.uri, "label": c.label} for c in citations],
            latency_ms=timings["total"],
        )
        return record

    def answer(self, req: AnswerRequest, release: ServingRelease, engine) -> AnswerRecord:
        """Blocking answer (CLI, benchmarks)."""
        prep = self.prepare(req, release)
        return self.finish(prep, engine.submit(prep.gen).result())

    async def answer_async(self, req: AnswerRequest, release: ServingRelease, engine) -> AnswerRecord:
        # Embedding, search and the SQLite write block; keep them off the event loop.
        prep = await asyncio.to_thread(self.prepare, req, release)
        result = await engine.submit(prep.gen).aresult()
        return await asyncio.to_thread(self.finish, prep, result)

    async def answer_stream(self, prep: Prepared, engine) -> AsyncIterator[dict]:
        """Events for SSE: ``meta`` (routing and retrieved passages), ``delta`` (text as it is
        generated), then ``answer`` (the verified record; its text may carry the UNVERIFIED
        notice, which can only be known once the whole answer is there)."""
        # Submit before the first event, so a full queue surfaces as an error the API can
        # still turn into a 429 before any byte of the response is sent.
        pending = engine.submit(prep.gen)
        yield {"type": "meta", "request_id": prep.request.request_id, "release_id": prep.release.id,
               "domains": prep.domains, "router_scores": prep.scores,
               "retrieved": [{"n": i, "label": h.label, "uri": h.citation.get("uri")}
                             for i, h in enumerate(prep.passages, start=1)]}
        try:
            async for delta in pending.astream():
                yield {"type": "delta", "text": delta}
        except BaseException:
            pending.cancel()
            raise
        record = await asyncio.to_thread(self.finish, prep, await pending.aresult())
        yield {"type": "answer", "record": record.to_dict()}


def _citation(n: int, hit: Hit, answer: str) -> Citation:
    c = hit.citation
    return Citation(n=n, domain=hit.domain, source=c.get("source"), code=c.get("code"), article=c.get("article"),
                    part=c.get("part"), clause=c.get("clause"), edition_date=c.get("edition_date"),
                    uri=c.get("uri"), label=hit.label, quote=verify.best_quote(hit.text, answer),
                    score=hit.score, chunk_id=hit.chunk_id)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)
