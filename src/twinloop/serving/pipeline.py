"""The answer pipeline of one release: route → retrieve → decide → generate → assemble.

A request is pinned to the release that was Active when it was admitted (docs/DESIGN.md
"Serving"): its router, index revision and adapters, so a swap never changes an answer
half-way. :meth:`AnswerPipeline.prepare` routes, retrieves and — in a domain that requires
citations — decides before any generation whether the question is out of scope or cannot be
verified (``serving/grounded.py``); :meth:`AnswerPipeline.constrain` adds the quote constraint
(``serving/quotes.py``) with the engine's tokenizer; :meth:`AnswerPipeline.finish` reads the
claims back, builds the record and logs it. The same steps serve blocking, async and streaming
callers, so a stream ends with the same record the blocking call returns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import date

from twinloop.kernel.config import ServingConfig
from twinloop.kernel.errors import InvalidInputError
from twinloop.knowledge.domains import DomainRegistry
from twinloop.knowledge.retrieval import Hit, Retriever, parse_date
from twinloop.serving.evidence import Answerability, default_answerability
from twinloop.serving.memory import CorrectionMemory, Match
from twinloop.serving.asked import gives_any
from twinloop.serving.grounded import (
    POSSIBLY_RELATED,
    WIDER_SEARCH,
    Decision,
    Quoting,
    answer_passage,
    assemble,
    decide,
    passage_sha256,
    quoting,
    renumbered,
)
from twinloop.serving.quotes import MAX_PASSAGES
from twinloop.serving.release import ServingRelease
from twinloop.serving.requestlog import RequestLog
from twinloop.serving.scope import Catalog, check_jurisdiction
from twinloop.serving.types import (
    AnswerRecord,
    Citation,
    Claim,
    GenRequest,
    GenResult,
    check_max_tokens,
    new_request_id,
)

SYSTEM_PROMPT = (
    "You answer questions by quoting the numbered sources given with the question. Write the "
    "number of a source in square brackets, like [1], then copy the sentence of that source that "
    "answers the question, word for word. Use one line per quote, and quote only what answers it."
)
GENERAL_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and accurately."
PROMPT_OVERHEAD_TOKENS = 160
"""Tokens of the system prompt, chat template and "Sources:/Question:" framing, with room to spare."""


@dataclass(frozen=True)
class AnswerRequest:
    """A question to answer (``/v1/answer``, ``twinloop answer``, chat completions)."""

    query: str
    user_id: str | None = None
    session_id: str | None = None
    domain: str | None = None
    """Force this domain instead of routing."""
    as_of: str | None = None
    """ISO date: answer with the law in force that day (default today)."""
    jurisdiction: str | None = None
    """Only sources of this jurisdiction (``EU``, ``DE``); one the index lacks → out_of_scope."""
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
    gen: GenRequest | None
    """None when no generation is needed (a refusal decided before it)."""
    index_revision: int
    as_of: str
    jurisdiction: str | None
    started: float
    timings_ms: dict[str, float]
    decision: Decision | None = None
    """The grounding decision of a citation-required domain (None otherwise)."""
    quoting: Quoting | None = None
    prompt_passages: list[Hit] = field(default_factory=list)
    """The passages the prompt numbers [1]..[n] (those that fit the model's input)."""
    arm: str | None = None
    """The canary arm the request was admitted on (set by the service)."""
    correction: Match | None = None
    """The correction the question falls under (then it is the answer)."""


class AnswerPipeline:
    """Answers questions for whichever release a request is pinned to.

    Args:
        retriever: Hybrid retrieval over the index (its store's embedder also ranks sentences).
        domains: Domain policies (citations required?).
        requestlog: Where answered requests are recorded.
        config: ``Settings.serving``.
        max_query_chars: Longest question accepted.
        answerability: The calibrated answerability model (default: the one shipped with the packs).
        memory: Accepted corrections, looked up before retrieval (None: no correction memory).
    """

    def __init__(self, retriever: Retriever, domains: DomainRegistry, requestlog: RequestLog,
                 config: ServingConfig, max_query_chars: int = 4000, *,
                 answerability: Answerability | None = None, memory: CorrectionMemory | None = None) -> None:
        self.retriever = retriever
        self.domains = domains
        self.memory = memory
        self.requestlog = requestlog
        self.config = config
        self.max_query_chars = max_query_chars
        self.answerability = answerability or default_answerability()

    def prepare(self, req: AnswerRequest, release: ServingRelease) -> Prepared:
        """Validate, route, retrieve, decide (scope, answerability) and build the generation request.

        Raises:
            InvalidInputError / UnknownDomainError: Bad query, domain, date, jurisdiction or token limit.
        """
        started = time.perf_counter()
        if not isinstance(req.query, str) or not req.query.strip():
            raise InvalidInputError("query must be a non-empty string")
        if len(req.query) > self.max_query_chars:
            raise InvalidInputError(f"query is {len(req.query)} characters, over the limit of {self.max_query_chars}")
        max_tokens = req.max_tokens if req.max_tokens is not None else self.config.answer_max_new_tokens
        check_max_tokens(max_tokens, self.config.max_new_tokens_limit)
        day = parse_date(req.as_of) if req.as_of else date.today()
        jurisdiction = check_jurisdiction(req.jurisdiction)
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
        if self.memory is not None:
            match = self.memory.lookup(req.query, domains, release.id, release.index_revision, decision.query_vector)
            timings["memory"] = _ms(t)
            if match is not None:
                # In a correction's scope: its answer, quoted and cited, is the answer — no
                # retrieval, no generation (docs/DESIGN.md "Learning").
                return Prepared(req, release, domains, decision.scores, [match.hit], citations_required, None,
                                view.revision, day.isoformat(), jurisdiction, started, timings,
                                Decision("answered", f"correction {match.correction.id}"),
                                prompt_passages=[match.hit], correction=match)
            t = time.perf_counter()
        # General questions get no sources unless general is asked for explicitly: its seed
        # corpus is a handful of encyclopaedic notes, not a knowledge base to cite.
        searchable = [d for d in domains if d != "general" or req.domain == "general"]
        passages = (view.search(req.query, searchable, as_of=day, jurisdiction=jurisdiction,
                                query_vector=decision.query_vector).hits if searchable else [])
        timings["retrieve"] = _ms(t)

        grounding = None
        if citations_required:
            t = time.perf_counter()
            raw = self.retriever.catalog(view.revision)
            catalog = Catalog(raw["jurisdictions"], raw["articles"], raw["in_force"], raw.get("parts", {}))

            def decide_on(hits: list[Hit]) -> Decision:
                return decide(req.query, searchable or domains, hits, catalog, jurisdiction,
                              self.retriever.store.embedder, self.answerability, decision.query_vector,
                              as_of=day.isoformat())
            grounding = decide_on(passages[:MAX_PASSAGES])
            if grounding.unanswered_form and searchable:
                # None of the first passages gives what is asked (an age, a period): the passages
                # further down that do join them, and the decision is taken again.
                wider = view.search(req.query, searchable, k=WIDER_SEARCH, as_of=day, jurisdiction=jurisdiction,
                                    query_vector=decision.query_vector).hits
                extra = [h for h in wider[len(passages):] if gives_any(req.query, h.text)]
                if extra:
                    again = decide_on([*passages, *extra][:MAX_PASSAGES])
                    if again.status == "answered":
                        grounding, passages = again, [*passages, *extra][:MAX_PASSAGES]
            timings["decide"] = _ms(t)

        gen = None
        prompt_passages = passages[:MAX_PASSAGES] if grounding else passages
        if grounding is None or grounding.status == "answered":
            adapter = release.adapter_for(domains[0])
            gen = GenRequest(messages=self._messages(req.query, prompt_passages), max_new_tokens=max_tokens,
                             adapter=adapter, timeout_s=self.config.request_timeout_s, request_id=req.request_id)
        return Prepared(req, release, domains, decision.scores, passages, citations_required, gen,
                        view.revision, day.isoformat(), jurisdiction, started, timings, grounding,
                        prompt_passages=list(prompt_passages))

    def constrain(self, prep: Prepared, foundation) -> GenRequest | None:
        """The generation request for ``foundation``: the passages that fit its input, and the
        quote constraint over them when the answer must be grounded."""
        if prep.gen is None:
            return None
        tokenizer = foundation.tokenizer
        budget = foundation.config.max_input_tokens - PROMPT_OVERHEAD_TOKENS - len(
            tokenizer(prep.request.query, add_special_tokens=False)["input_ids"])
        passages = prep.prompt_passages
        order = list(range(1, len(passages) + 1))
        first = (answer_passage(prep.request.query, prep.decision, [h.text for h in passages])
                 if prep.decision is not None else None)
        if first is not None:
            order.remove(first)
            order.insert(0, first)
        chosen, used = [], 0
        for n in order:
            h = passages[n - 1]
            cost = len(tokenizer(f"[{len(chosen) + 1}] {h.label}\n{h.text}", add_special_tokens=False)["input_ids"])
            if used + cost > budget:
                if n == first and not chosen:
                    continue  # the answer's passage alone is too long: the others in rank order
                break  # later passages rank lower: drop them
            chosen.append(n)
            used += cost
        kept_n = sorted(chosen)  # the rank order, with the answer's passage kept in it
        kept = [passages[n - 1] for n in kept_n]
        gen = prep.gen
        if len(kept) < len(passages):
            prep.prompt_passages = kept
            gen = replace(gen, messages=self._messages(prep.request.query, kept))
            if prep.decision is not None:
                prep.decision = renumbered(prep.decision, kept_n)
            # The record's retrieved list numbers passages as the prompt did: [n] in an answer
            # is always the n-th retrieved passage; those that did not fit come after.
            shown = {id(h) for h in kept}
            prep.passages = [*kept, *(h for h in prep.passages if id(h) not in shown)]
        if prep.decision is None:
            return gen
        if not kept:  # not even the best passage fits: nothing can be quoted
            return None
        ranked = [s for s in prep.decision.ranked if s.n <= len(kept)]
        prep.quoting = quoting(tokenizer, kept, ranked)
        return replace(gen, constraint=prep.quoting.constraint)

    @staticmethod
    def _messages(query: str, passages: list[Hit]) -> tuple[dict[str, str], ...]:
        if not passages:
            return ({"role": "system", "content": GENERAL_SYSTEM_PROMPT}, {"role": "user", "content": query})
        sources = "\n\n".join(f"[{i}] {h.label}\n{h.text}" for i, h in enumerate(passages, start=1))
        user = f"Sources:\n{sources}\n\nQuestion: {query}"
        return ({"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user})

    def finish(self, prep: Prepared, result: GenResult | None) -> AnswerRecord:
        """Assemble the answer record from what was decided and generated; log it."""
        t = time.perf_counter()
        req = prep.request
        top = prep.prompt_passages
        searched = {"domains": prep.domains, "as_of": prep.as_of, "jurisdiction": prep.jurisdiction,
                    "index_revision": prep.index_revision,
                    "top_scores": sorted((round(h.score, 4) for h in prep.passages), reverse=True)[:5]}
        claims: list[Claim] = []
        cited: dict[int, str] = {}
        possibly_related: list[dict] = []
        grounded, dropped, refusal = False, [], ""
        if prep.correction is not None:
            c = prep.correction.correction
            status, mode, grounded = "answered", "correction", True
            claims.append(Claim(c.answer, [1]))
            cited[1] = c.answer
            searched |= {"correction": {"id": c.id, "similarity": round(prep.correction.similarity, 4),
                                        "threshold": self.memory.scope.threshold if self.memory else None}}
            summary = c.answer
            verification = (f"correction {c.id}, accepted {c.created_at[:10]} by {c.actor}"
                            + (f", approved by {', '.join(a['actor'] for a in c.approvals)}" if c.approvals else "")
                            + f"; quoted verbatim from its record [1]")
        elif prep.decision is not None:
            searched |= prep.decision.searched()
            status = prep.decision.status
            if status == "answered" and result is not None and prep.quoting is not None:
                ranked = [s for s in prep.decision.ranked if s.n <= len(top)]
                made = assemble(req.query, result.token_ids, prep.quoting, ranked, prep.decision.allowed,
                                prep.decision.years)
                mode, dropped, refusal = made.mode, made.dropped, made.refusal
                for c in made.claims:
                    claims.append(Claim(c.text, list(c.citations)))
                    cited.setdefault(c.n, c.text)
                grounded = bool(claims)
                if not claims:
                    status = "cannot_verify"
            elif status == "answered":  # no generation result (cannot happen in the pipeline)
                status, mode = "cannot_verify", "refused"
            else:
                mode = "refused"
            if status != "answered":
                mode = "refused"
                possibly_related = [{"n": i, "label": h.label, "uri": h.citation.get("uri"), "domain": h.domain,
                                     "score": h.score} for i, h in enumerate(top[:POSSIBLY_RELATED], start=1)]
            summary, verification = _grounded_summary(status, prep, claims, mode, dropped, refusal)
        else:
            status, mode = "answered", "free"
            summary = result.text.strip() if result is not None else ""
            verification = "this domain does not require citations"
        citations = [_citation(n, top[n - 1], cited[n]) for n in sorted(cited)]
        text = _render(summary, claims, mode)
        timings = dict(prep.timings_ms)
        if result is not None:
            timings["queue"] = round(result.queue_seconds * 1000, 3)
            timings["generate"] = round(result.generate_seconds * 1000, 3)
        timings["assemble"] = _ms(t)
        timings["total"] = _ms(prep.started)
        record = AnswerRecord(
            request_id=req.request_id, query=req.query, status=status, summary=summary, claims=claims,
            citations=citations, text=text, grounded=grounded, mode=mode, as_of=prep.as_of,
            jurisdiction=prep.jurisdiction, searched=searched, release_id=prep.release.id, domains=prep.domains,
            router_scores=prep.scores, adapter=prep.gen.adapter if prep.gen is not None else "none",
            timings_ms=timings, prompt_tokens=result.prompt_tokens if result else 0,
            completion_tokens=result.completion_tokens if result else 0,
            finish_reason=result.finish_reason if result else "stop", index_revision=prep.index_revision,
            verification=verification,
            retrieved=[{"n": i, "label": h.label, "uri": h.citation.get("uri"), "domain": h.domain,
                        "score": h.score} for i, h in enumerate(prep.passages, start=1)],
            possibly_related=possibly_related,
        )
        self.requestlog.record(
            request_id=record.request_id, kind="answer", query=record.query, release_id=record.release_id,
            domains=record.domains, user_id=req.user_id, session_id=req.session_id,
            adapter=record.adapter, answer=record.text, verified=record.verified, status=record.status,
            citations=[{"n": c.n, "uri": c.uri, "label": c.label} for c in citations],
            latency_ms=timings["total"],
        )
        return record

    def answer(self, req: AnswerRequest, release: ServingRelease, engine) -> AnswerRecord:
        """Blocking answer (CLI, benchmarks)."""
        prep = self.prepare(req, release)
        gen = self.constrain(prep, engine.foundation)
        return self.finish(prep, engine.submit(gen).result() if gen is not None else None)

    async def answer_async(self, req: AnswerRequest, release: ServingRelease, engine) -> AnswerRecord:
        # Embedding, search and the SQLite write block; keep them off the event loop.
        prep = await asyncio.to_thread(self.prepare, req, release)
        gen = self.constrain(prep, engine.foundation)
        result = await engine.submit(gen).aresult() if gen is not None else None
        return await asyncio.to_thread(self.finish, prep, result)

    async def answer_stream(self, prep: Prepared, engine) -> AsyncIterator[dict]:
        """Events for SSE: ``meta`` (routing and retrieved passages), ``delta`` (text as it is
        generated: in a grounded domain, the ``[n]`` quotes as the constrained decoder writes
        them), then ``answer`` — the same record the blocking call returns."""
        # Submit before the first event, so a full queue surfaces as an error the API can
        # still turn into a 429 before any byte of the response is sent.
        gen = self.constrain(prep, engine.foundation)
        pending = engine.submit(gen) if gen is not None else None
        yield {"type": "meta", "request_id": prep.request.request_id, "release_id": prep.release.id,
               "domains": prep.domains, "router_scores": prep.scores,
               "retrieved": [{"n": i, "label": h.label, "uri": h.citation.get("uri")}
                             for i, h in enumerate(prep.passages, start=1)]}
        result = None
        if pending is not None:
            try:
                async for delta in pending.astream():
                    yield {"type": "delta", "text": delta}
            except BaseException:
                pending.cancel()
                raise
            result = await pending.aresult()
        record = await asyncio.to_thread(self.finish, prep, result)
        yield {"type": "answer", "record": record.to_dict()}


def _grounded_summary(status: str, prep: Prepared, claims: list[Claim], mode: str,
                      dropped: list[str], refusal: str = "") -> tuple[str, str]:
    """The summary a user reads, and the one-line verification note."""
    where = ", ".join(prep.domains)
    when = f"as of {prep.as_of}"
    jur = f", jurisdiction {prep.jurisdiction}" if prep.jurisdiction else ""
    if status == "out_of_scope":
        reason = prep.decision.reason if prep.decision else ""
        return f"Out of scope: {reason} Searched: {where} ({when}{jur}).", reason
    if status == "cannot_verify":
        reason = prep.decision.reason if prep.decision and prep.decision.status != "answered" else \
            (refusal or "no quoted sentence of the passages answers it")
        return (f"I cannot verify an answer to this from the sources I hold ({reason}). Searched: {where} "
                f"({when}{jur}). The nearest passages are listed as possibly related; they are not an answer.",
                reason)
    sources = sorted({n for c in claims for n in c.citations})
    if mode == "extractive":
        note = "Quoted from the sources: the passages' own words, chosen by relevance (no generated answer held)."
    else:
        note = "Quoted from the sources, word for word."
    verification = f"{len(claims)} claim(s), each a verbatim quote of a cited passage ({mode})"
    if dropped:
        verification += f"; dropped: {'; '.join(dropped)}"
    return f"{note} Sources: {', '.join(f'[{n}]' for n in sources)} ({when}).", verification


def _render(summary: str, claims: list[Claim], mode: str) -> str:
    if mode == "free" or not claims:
        return summary
    if mode == "correction":
        return f"{summary} [1] (an accepted correction)"
    lines = [summary] + [f"{''.join(f'[{n}]' for n in c.citations)} \u201c{c.text}\u201d" for c in claims]
    return "\n".join(lines)


def _citation(n: int, hit: Hit, quote: str) -> Citation:
    c = hit.citation
    return Citation(n=n, domain=hit.domain, source=c.get("source"), code=c.get("code"), article=c.get("article"),
                    part=c.get("part"), clause=c.get("clause"), edition_date=c.get("edition_date"),
                    valid_from=c.get("valid_from"), valid_to=c.get("valid_to"), uri=c.get("uri"),
                    sha256=passage_sha256(hit.text), exact_quote=quote, label=hit.label, score=hit.score,
                    chunk_id=hit.chunk_id, correction=c.get("correction"))


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)
