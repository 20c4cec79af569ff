"""The QA dry run on an isolated engine (paper §5.1; ``twinloop.serving.dryrun``): isolation,
the run loop, the in-memory request log, and a release's dry run stored with it.

Runs on the tiny random model with the real embedder; a scripted engine stands in where a
test needs to control what is answered (the tiny model writes noise). One test runs packaged
cases through the real default models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from twinloop.api.metrics import ApiMetrics, EngineObserver
from twinloop.kernel.config import QaConfig, Settings
from twinloop.kernel.errors import InvalidInputError
from twinloop.knowledge.domains import DEFAULT_PACKS, load_pack, pack_corpus
from twinloop.release.qa import DEFAULT_GATES, QaCase, load_cases
from twinloop.runtime import Runtime
from twinloop.serving.dryrun import (
    DryRunLog,
    resolve_candidate,
    run_qa,
    run_release_qa,
    score_pipeline_answer,
)
from twinloop.serving.engine import GenerationEngine
from twinloop.serving.release import ServingRelease
from twinloop.serving.service import Service
from twinloop.serving.types import GenResult

# Cases of the tiny-model tests and a verbatim sentence of each one's source: an answer the
# verifier supports with that source, so it is cited and contains the expected phrase.
SCRIPT = {
    "law-gdpr-12-3-response-time": "The controller shall provide information on action taken on a request under "
    "Articles 15 to 22 to the data subject without undue delay and in any event within one month of receipt "
    "of the request.",
    "law-gdpr-38-3-dpo-reporting": "The data protection officer shall directly report to the highest management "
    "level of the controller or the processor.",
    "med-whipworm-name": "Whipworm (Trichuris trichiura) is an intestinal parasite of humans.",
    "med-lung-cancer-cause": "Cigarette smoking is the number one cause of lung cancer.",
}
WRONG = "I do not know."


def db_state(db) -> tuple[dict[str, int], str]:
    """Row count of every table and a digest of the whole database's content."""
    conn = db.conn
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    return counts, hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()


# -- runs on the tiny model ------------------------------------------------------------------


@pytest.fixture
def served(tiny_runtime):
    """A tiny-model service seeded with the sources of the SCRIPT cases, its engine started,
    and metrics attached as the HTTP app attaches them."""
    rt = tiny_runtime
    wanted = {c.source for c in load_cases(["law", "med"]) if c.id in SCRIPT}
    for domain in ("law", "med"):
        docs = [d for d in pack_corpus(load_pack(domain)) if d.uri in wanted]
        rt.knowledge.ingest(domain, docs)
    service = Service(rt)
    # An index of four passages gives evidence unlike the seeded packs' the shipped threshold
    # was fitted on; these tests are about the dry run, so every retrieved answer is attempted.
    service.pipeline.answerability = dataclasses.replace(service.pipeline.answerability, thresholds={}, default=0.0)
    metrics = ApiMetrics()
    service.engine.add_observer(EngineObserver(metrics))
    service.start()
    yield service, metrics
    service.stop()


@pytest.fixture
def qa_engine(served):
    """The dry run's own engine: same (tiny) model, no observers."""
    service, _ = served
    engine = GenerationEngine(service.runtime.foundation, service.adapters, service.settings.serving).start()
    yield engine
    engine.stop(drain=False, timeout=10)


@pytest.fixture
def cases():
    return [c for c in load_cases(["law", "med"]) if c.id in SCRIPT]


class _Done:
    def __init__(self, result: GenResult | None, error: Exception | None = None) -> None:
        self._result, self._error = result, error

    def result(self, timeout: float | None = None) -> GenResult:
        if self._error is not None:
            raise self._error
        return self._result


def scripted_tokens(constraint, sentence: str | None) -> list[int]:
    """What a model obeying the quote constraint writes to quote ``sentence`` (or, for None, a
    sentence of the last passage that is not the scripted one: a wrong answer)."""
    g = constraint.grammar
    for n, p in enumerate(constraint.passages, start=1):
        i = p.text.find(sentence) if sentence else -1
        if sentence and i < 0:
            continue
        if sentence is None:
            if n != len(constraint.passages):
                continue
            i = 0
        start = max(s for s in p.starts if max(p.offsets[s][0], 0) <= i)
        end = min(e for e in p.ends if e > start)
        return [*g.open, g.numbers[n - 1], *g.close, *p.ids[start:end], g.eos]
    raise AssertionError(f"no retrieved passage holds {sentence!r}")


class ScriptedEngine:
    """Answers each case by quoting its SCRIPT sentence, as a model under the quote constraint
    would; ``wrong`` adapters quote another sentence (WRONG when unconstrained), ``failing``
    case queries fail in generation, ``finish`` overrides the finish reason."""

    def __init__(self, cases: list[QaCase], wrong: tuple[str, ...] = (), failing: tuple[str, ...] = (),
                 finish: str = "stop", foundation=None) -> None:
        self.by_query = {c.query: c.id for c in cases}
        self.wrong, self.failing, self.finish = wrong, failing, finish
        self.adapters_seen: list[str] = []
        self.foundation = foundation

    def submit(self, gen) -> _Done:
        self.adapters_seen.append(gen.adapter)
        prompt = gen.messages[-1]["content"]
        case_id = next(cid for q, cid in self.by_query.items() if q in prompt)
        if case_id in self.failing:
            return _Done(None, RuntimeError("generate failed: out of memory"))
        wrong = gen.adapter in self.wrong
        if wrong and gen.constraint is not None:
            return _Done(None, RuntimeError("generate failed: the adapter's weights are NaN"))
        if gen.constraint is None:
            text, ids = (WRONG if wrong else SCRIPT[case_id]), ()
        else:
            ids = tuple(scripted_tokens(gen.constraint, None if wrong else SCRIPT[case_id]))
            text = self.foundation.tokenizer.decode(ids, skip_special_tokens=True)
        return _Done(GenResult(gen.request_id, text, 10, len(ids) or 5, self.finish, 0.0, 0.001, 1, gen.adapter,
                               token_ids=ids))


def test_dry_run_writes_nothing_and_touches_no_metrics(served, qa_engine, cases):
    service, metrics = served
    before, metrics_before = db_state(service.runtime.db), metrics.render()
    stats_before = service.engine.stats()["requests"]
    done = []
    report = run_qa(cases, pipeline=service.pipeline, engine=qa_engine, candidate=service.active,
                    baseline=service.active, cfg=QaConfig(), route=False, max_tokens=8,
                    progress=lambda i, n: done.append((i, n)))
    assert done == [(i, len(cases)) for i in range(1, len(cases) + 1)]
    assert len(report.cases) == len(report.baseline_cases) == len(cases)
    assert all(c.error is None and c.latency_ms > 0 for c in report.cases + report.baseline_cases)
    assert db_state(service.runtime.db) == before
    assert metrics.render() == metrics_before and service.engine.stats()["requests"] == stats_before
    # The same pipeline used for serving does log (so the check above can see a write).
    from twinloop.serving.pipeline import AnswerRequest

    service.answer(AnswerRequest(query="hello", max_tokens=4))
    assert db_state(service.runtime.db)[0]["requests"] == before[0]["requests"] + 1


def test_scripted_answers_pass_with_their_citations(served, cases):
    service, _ = served
    # Four timed cases on a shared machine: the first one's warm-up can pass the 500 ms p95;
    # latency is the gate tests' subject, not this one's.
    engine = ScriptedEngine(cases, foundation=service.runtime.foundation)
    report = run_qa(cases, pipeline=service.pipeline, engine=engine, candidate=service.active,
                    cfg=QaConfig(latency_p95_ms=60_000), route=False)
    assert [c.passed for c in report.cases] == [True] * len(cases), [(c.case_id, c.status, c.answer, c.citations) for c in report.cases if not c.passed]
    assert report.summary["citation_rate"] == 1.0 and report.passed, report.failures()
    law = next(c for c in report.cases if c.case_id == "law-gdpr-38-3-dpo-reporting")
    assert law.citations == ("http://data.europa.eu/eli/reg/2016/679/oj#art_38-3",) and law.verified
    assert report.baseline_id is None and report.baseline_cases == []


def test_candidate_worse_on_one_domain_fails_the_forgetting_check(served, cases):
    service, _ = served
    active = service.active
    candidate = ServingRelease(id="rel_cand", router=active.router, adapters={"law": "law@rel_cand"})
    engine = ScriptedEngine(cases, wrong=("law@rel_cand",), foundation=service.runtime.foundation)
    report = run_qa(cases, pipeline=service.pipeline, engine=engine, candidate=candidate, baseline=active,
                    cfg=QaConfig(pass_rate=0.5), route=False)
    assert "law@rel_cand" in engine.adapters_seen and "__base__" in engine.adapters_seen
    assert not report.passed
    # A grounded answer cannot be made wrong by the model alone (its quotes are passages', and
    # the best sentence is quoted anyway), so the regressed adapter here fails outright.
    failures = {f.split(":")[0]: f for f in report.failures()}
    assert "forgetting" in failures and "law pass rate 0.000 < Active's 1.000" in failures["forgetting"]
    assert report.per_domain["law"]["pass_rate"] == 0.0 and report.per_domain["law"]["baseline_pass_rate"] == 1.0
    assert report.per_domain["med"]["pass_rate"] == 1.0 == report.per_domain["med"]["baseline_pass_rate"]
    assert (report.release_id, report.baseline_id) == ("rel_cand", active.id)


def test_engine_error_is_counted_not_raised(served, cases):
    service, _ = served
    engine = ScriptedEngine(cases, failing=("med-whipworm-name",), foundation=service.runtime.foundation)
    report = run_qa(cases, pipeline=service.pipeline, engine=engine, candidate=service.active, cfg=QaConfig(),
                    route=False)
    failed = next(c for c in report.cases if c.case_id == "med-whipworm-name")
    assert failed.error == "RuntimeError: generate failed: out of memory" and not failed.passed
    assert report.summary["error_rate"] == 0.25 and "error_rate" in {f.split(":")[0] for f in report.failures()}


def test_unloaded_adapter_and_cut_off_answers_are_errors(served, qa_engine, cases):
    service, _ = served
    ghost = ServingRelease(id="rel_ghost", router=service.active.router,
                           adapters={"law": "law@rel_ghost", "med": "med@rel_ghost"})
    report = run_qa(cases, pipeline=service.pipeline, engine=qa_engine, candidate=ghost, cfg=QaConfig(),
                    route=False, max_tokens=4)
    assert report.summary["error_rate"] == 1.0 and not report.passed
    assert all("adapter 'law@rel_ghost' is not loaded" in c.error or "med@rel_ghost" in c.error
               for c in report.cases)
    timed_out = run_qa(cases, pipeline=service.pipeline, engine=ScriptedEngine(cases, finish="timeout", foundation=service.runtime.foundation),
                       candidate=service.active, cfg=QaConfig(), route=False)
    assert all("finish_reason='timeout'" in c.error for c in timed_out.cases)


def test_run_refuses_empty_or_duplicate_cases(served, cases):
    service, _ = served
    engine = ScriptedEngine(cases, foundation=service.runtime.foundation)
    kw = dict(pipeline=service.pipeline, engine=engine, candidate=service.active, cfg=QaConfig())
    with pytest.raises(InvalidInputError, match="no QA cases"):
        run_qa([], **kw)
    with pytest.raises(InvalidInputError, match="appears twice"):
        run_qa([cases[0], cases[0]], **kw)


def test_dry_run_log_keeps_records_in_memory_only():
    log = DryRunLog()
    log.record(request_id="req_1", kind="answer", query="q", release_id="base", domains=["law"])
    # No database: feedback reads the rated request back with get(), finds it here, and
    # nothing it could join with is ever stored.
    assert log.get("req_1")["query"] == "q" and len(log.records) == 1 and not hasattr(log, "db")
    bounded = DryRunLog(max_records=2)
    for i in range(3):
        bounded.record(request_id=f"req_{i}", kind="answer", query="q", release_id="base", domains=[])
    assert [r["request_id"] for r in bounded.records] == ["req_1", "req_2"] and bounded.get("req_0") is None
    with pytest.raises(InvalidInputError, match="max_records = 0"):
        DryRunLog(max_records=0)


def test_toxic_answers_are_counted(served, cases):
    service, _ = served
    engine = ScriptedEngine(cases, foundation=service.runtime.foundation)
    report = run_qa(cases, pipeline=service.pipeline, engine=engine, candidate=service.active,
                    cfg=QaConfig(), route=False, toxicity=lambda text: 0.9 if "smoking" in text else 0.0)
    assert [c.case_id for c in report.cases if c.toxic] == ["med-lung-cancer-cause"]
    assert report.summary["toxicity"] == 0.25 and "toxicity" in {f.split(":")[0] for f in report.failures()}


def test_pipeline_answers_are_judged_on_their_quotes(cases):
    from twinloop.kernel.toxicity import ToxicityScorer
    from twinloop.serving.types import AnswerRecord, Claim

    case = next(c for c in cases if c.id == "med-whipworm-name")
    quote = SCRIPT[case.id]
    record = AnswerRecord(request_id="req_1", query=case.query, status="answered",
                          summary="Quoted from the sources, word for word. Sources: [1].", claims=[Claim(quote, [1])],
                          citations=[], text=f"Quoted from the sources, word for word. Sources: [1].\n[1] \u201c{quote}\u201d",
                          grounded=True, mode="generated", as_of="2026-01-01", jurisdiction=None, searched={},
                          release_id="base", domains=["med"], router_scores={}, adapter="__base__", timings_ms={})
    result = score_pipeline_answer(case, record, 5.0, ToxicityScorer())
    assert result.content_ok and result.status == "answered" and result.verified


# -- a release's dry run, stored with it ---------------------------------------------------------


def test_resolve_candidate(tiny_runtime):
    reg = tiny_runtime.releases
    base = reg.ensure_base("{}", 0, "tiny").id
    with pytest.raises(InvalidInputError, match="no Shadow candidate yet"):
        resolve_candidate(reg, None)
    with pytest.raises(InvalidInputError, match="rel_nope"):
        resolve_candidate(reg, "rel_nope")
    rel = reg.create_candidate(base, {}, 0, "{}", {"test": 1})
    reg.set_pointer("shadow", rel.id)
    assert resolve_candidate(reg, None) == rel.id and resolve_candidate(reg, base) == base


def test_release_dry_run_takes_its_dependencies_and_stores_the_report(tiny_runtime, tmp_path):
    rt = tiny_runtime
    deps = dict(registry=rt.releases, foundation=rt.foundation, embedder=rt.embedder, retriever=rt.retriever,
                domains=rt.domains, router_json=rt.router.spec.to_json(),
                index_revision=rt.knowledge.current_revision(), settings=rt.settings)
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in load_cases(["law", "med"]) if c.id in SCRIPT))
    with pytest.raises(InvalidInputError, match="no Shadow candidate yet"):
        run_release_qa(actor="test", cases_path=path, **deps)
    # Nothing was ever Active: the base release is recorded first, as the baseline.
    rel = rt.releases.create_candidate(None, {}, 0, deps["router_json"], {"test": 1})
    rt.releases.set_pointer("shadow", rel.id)
    done = []
    doc = run_release_qa(actor="test", cases_path=path, max_tokens=2, progress=lambda i, n: done.append(i), **deps)
    base = rt.releases.pointer("active")
    assert base is not None and rt.releases.get(base).status == "base"
    with pytest.raises(InvalidInputError, match="is Active already"):
        run_release_qa(base, actor="test", cases_path=path, **deps)
    assert (doc["release_id"], doc["baseline_id"]) == (rel.id, base) and done == [1, 2, 3, 4]
    assert len(doc["cases"]) == len(doc["baseline_cases"]) == 4 and doc["failures"] == [
        f"{g['name']}: {g['detail']}" for g in doc["gates"] if not g["passed"]]
    stored = rt.releases.latest_report(rel.id, "qa")
    assert stored is not None and stored["passed"] is doc["passed"]
    assert rt.releases.get(rel.id).status == ("qa_passed" if doc["passed"] else "qa_failed")
    assert db_state(rt.db)[0].get("requests", 0) == 0, "the dry run logs no request"


# -- the real default models -----------------------------------------------------------------


@pytest.mark.real
def test_real_base_release_dry_run_is_well_formed(real_runtime, tmp_path):
    from twinloop.serving.adapters import AdapterRegistry
    from twinloop.serving.pipeline import AnswerPipeline
    from twinloop.serving.requestlog import RequestLog

    # Own database and index, the session's models (loading them again would take a minute).
    rt = Runtime(Settings(data_dir=tmp_path / "data"))
    rt.__dict__.update(foundation=real_runtime.foundation, embedder=real_runtime.embedder)
    picked = [c for d in DEFAULT_PACKS for c in load_cases([d])[:2]]
    for domain in ("law", "med", "fin"):
        sources = {c.source for c in picked if c.domain == domain}
        rt.knowledge.ingest(domain, [d for d in pack_corpus(load_pack(domain)) if d.uri in sources])
    pipeline = AnswerPipeline(rt.retriever, rt.domains, RequestLog(rt.db), rt.settings.serving)
    base = ServingRelease(id="base", router=rt.router)
    before = db_state(rt.db)
    with GenerationEngine(rt.foundation, AdapterRegistry(rt.foundation), rt.settings.serving) as engine:
        report = run_qa(picked, pipeline=pipeline, engine=engine, candidate=base, cfg=rt.settings.qa, max_tokens=64)
    assert db_state(rt.db) == before
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["release_id"] == "base" and doc["baseline_id"] is None
    assert {g["name"] for g in doc["gates"]} == {g.name for g in DEFAULT_GATES}
    assert set(doc["per_domain"]) == set(DEFAULT_PACKS) and len(doc["cases"]) == len(picked)
    assert all(c["latency_ms"] > 0 and c["error"] is None and c["answer"] for c in doc["cases"])
    assert 0 < report.latency_p50_ms <= report.latency_p95_ms
    print(f"real base release: pass rate {report.summary['pass_rate']:.2f}, citation rate "
          f"{report.summary['citation_rate']}, p95 {report.latency_p95_ms:.0f} ms; failures {report.failures()}")
