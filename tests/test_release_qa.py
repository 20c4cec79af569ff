"""The QA dry run (issue 6 point 3, paper §5.1): cases, isolation, gates, forgetting, errors.

Runs on the tiny random model with the real embedder; a scripted engine stands in where a
test needs to control what is answered (the tiny model writes noise). One test runs packaged
cases through the real default models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from importlib import resources

import pytest

from twinloop.api.metrics import ApiMetrics, EngineObserver
from twinloop.kernel.config import QaConfig, Settings, load_settings
from twinloop.kernel.errors import InvalidInputError, UnknownDomainError
from twinloop.knowledge.domains import DEFAULT_PACKS, load_pack, pack_corpus
from twinloop.release.qa import (
    DEFAULT_GATES,
    CaseResult,
    DryRunLog,
    QaCase,
    RunSummary,
    build_report,
    citation_matches,
    content_ok,
    load_cases,
    run_qa,
)
from twinloop.runtime import Runtime
from twinloop.serving.engine import GenerationEngine
from twinloop.serving.release import ServingRelease
from twinloop.serving.service import Service
from twinloop.serving.types import Citation, GenResult

GOOD = {"id": "c1", "domain": "law", "query": "How long may a controller take?", "expected": ["one month"],
        "citations": ["http://data.europa.eu/eli/reg/2016/679/oj#art_12-3"]}
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


def citation(uri: str | None, label: str) -> Citation:
    return Citation(n=1, domain="law", source=None, code=None, article=None, part=None, clause=None,
                    edition_date=None, uri=uri, label=label, quote="", score=1.0, chunk_id=1)


def db_state(db) -> tuple[dict[str, int], str]:
    """Row count of every table and a digest of the whole database's content."""
    conn = db.conn
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    return counts, hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()


# -- case files ------------------------------------------------------------------------------


def test_packaged_cases_cover_every_default_pack():
    cases = load_cases(list(DEFAULT_PACKS))
    per = {d: [c for c in cases if c.domain == d] for d in DEFAULT_PACKS}
    assert all(6 <= len(cs) <= 10 for cs in per.values()), {d: len(cs) for d, cs in per.items()}
    assert len({c.id for c in cases}) == len(cases)
    for case in cases:
        spec = load_pack(case.domain)
        assert case.needs_citation == spec.citations_required, case.id
        assert bool(case.citations) == spec.citations_required, case.id
        assert 1 <= len(case.expected) <= 3, case.id


def test_packaged_cases_are_answerable_from_their_pack_and_held_out():
    """Every case names a document of its pack's seed corpus that holds one of its expected
    phrases, its required citations match that document, and its question is not one of the
    retrieval evaluation's (held out)."""
    evaluated = {json.loads(line)["query"].casefold() for line in resources.files("twinloop.packs").joinpath(
        "eval", "retrieval_queries.jsonl").read_text("utf-8").splitlines() if line.strip()}
    for domain in DEFAULT_PACKS:
        docs = {d.uri: d for d in pack_corpus(load_pack(domain))}
        for case in load_cases([domain]):
            doc = docs.get(case.source)
            assert doc is not None, f"{case.id}: source {case.source!r} is not in the {domain} corpus"
            assert content_ok(doc.text, case.expected), f"{case.id}: no expected phrase in its source"
            cite = citation(doc.uri, doc.label())
            assert all(citation_matches(ref, cite) for ref in case.citations), case.id
            assert case.query.casefold() not in evaluated, f"{case.id} is a retrieval evaluation query"


def test_registry_gives_the_same_cases_and_knows_user_domains(tiny_runtime, tmp_path):
    registry = tiny_runtime.domains
    assert load_cases(registry) == load_cases(list(DEFAULT_PACKS))
    registry.add({"name": "tax", "description": "Tax questions.", "citations_required": True})
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps({"id": "t1", "domain": "tax", "query": "VAT rate?", "expected": ["19 %"]}) + "\n"
                    + json.dumps(GOOD) + "\n")
    cases = load_cases(registry, path)
    assert [c.id for c in cases] == ["t1", "c1"]
    assert cases[0].needs_citation and cases[0].citations == ()  # domain policy; no required source
    with pytest.raises(UnknownDomainError, match="line 1: unknown domain 'tax'"):
        load_cases(["law"], path)


@pytest.mark.parametrize(
    ("line", "error", "message"),
    [
        ("{not json", InvalidInputError, "line 2: not valid JSON"),
        ("[1, 2]", InvalidInputError, "line 2: expected a JSON object"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "query"} | {"id": "c2"}), InvalidInputError,
         "line 2: missing field 'query'"),
        (json.dumps(GOOD | {"id": "c2", "expected": []}), InvalidInputError, "line 2: expected = []"),
        (json.dumps(GOOD | {"id": "c2", "expected": "one month"}), InvalidInputError, "line 2: expected = 'one month'"),
        (json.dumps(GOOD | {"id": "c2", "citations": [3]}), InvalidInputError, "line 2: citations = [3]"),
        (json.dumps(GOOD | {"id": "c2", "needs_citation": "yes"}), InvalidInputError, "line 2: needs_citation = 'yes'"),
        (json.dumps(GOOD | {"id": "c2", "as_of": "2020-13-01"}), InvalidInputError, "line 2: as_of = '2020-13-01'"),
        (json.dumps(GOOD | {"id": "c2", "expect": ["x"]}), InvalidInputError, "line 2: unknown field 'expect'"),
        (json.dumps(GOOD | {"id": " "}), InvalidInputError, "line 2: id = ' '"),
        (json.dumps(GOOD | {"id": "c2", "domain": "tax"}), UnknownDomainError, "line 2: unknown domain 'tax'"),
        (json.dumps(GOOD), InvalidInputError, "case id 'c1' appears twice"),
    ],
    ids=["not_json", "not_object", "missing_query", "empty_expected", "expected_not_list", "citation_not_text",
         "needs_citation_not_bool", "bad_date", "unknown_field", "blank_id", "unknown_domain", "duplicate_id"],
)
def test_malformed_case_line_names_file_line_and_field(tmp_path, line, error, message):
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(error) as exc:
        load_cases(list(DEFAULT_PACKS), path)
    assert str(path) in str(exc.value) and message in str(exc.value)


def test_unknown_pack_name_and_missing_file(tmp_path):
    with pytest.raises(UnknownDomainError, match="'nope'"):
        load_cases(["law", "nope"])
    with pytest.raises(InvalidInputError, match="'law': give a list"):
        load_cases("law")
    with pytest.raises(InvalidInputError, match="no such file"):
        load_cases(["law"], tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    ("answer", "expected", "ok"),
    [
        ("Within ONE\n  month of receipt.", ["one month"], True),
        ("within 30 days", ["one month", "30 days"], True),
        ("within a month", ["one month"], False),
        ("Die Bundesflagge ist Schwarz-Rot-Gold.", ["schwarz-rot-gold"], True),
        ("", ["x"], False),
    ],
    ids=["case_and_whitespace", "any_of", "absent", "german", "empty_answer"],
)
def test_content_matching(answer, expected, ok):
    assert content_ok(answer, expected) is ok


@pytest.mark.parametrize(
    ("ref", "ok"),
    [
        ("http://data.europa.eu/eli/reg/2016/679/oj#art_35-1", True),
        ("http://data.europa.eu/eli/reg/2016/679/oj#art_35", True),
        ("#art_35-1", True),
        ("http://data.europa.eu/eli/reg/2016/679/oj#art_3", False),
        ("GDPR Art. 35(1)", True),
        ("gdpr art. 35(1)", True),
        ("GDPR Art. 3", False),
        ("", False),
    ],
    ids=["full_uri", "uri_prefix", "fragment", "prefix_inside_number", "label", "label_any_case",
         "label_inside_number", "empty"],
)
def test_citation_reference_matching(ref, ok):
    cite = citation("http://data.europa.eu/eli/reg/2016/679/oj#art_35-1", "GDPR Art. 35(1) [2016-04-27]")
    assert citation_matches(ref, cite) is ok
    assert citation_matches("#art_35-1", citation("http://x/oj#art_35-10", "GDPR Art. 35(10)")) is False


def test_config_keeps_the_papers_name_factuality(tmp_path):
    assert QaConfig(factuality=0.5).citation_rate == 0.5
    path = tmp_path / "twinloop.yaml"
    path.write_text("qa:\n  factuality: 0.7\n  latency_factor: 2\n")
    assert load_settings(path).qa.citation_rate == 0.7
    with pytest.raises(ValueError, match="not both"):
        QaConfig(factuality=0.5, citation_rate=0.6)


# -- gates (synthetic results) ---------------------------------------------------------------


def results(release: str, *, fail: dict[str, int] | None = None, uncited: int = 0, toxic: int = 0,
            errors: int = 0, latency_ms: float = 100.0) -> RunSummary:
    """Five law and five med cases, all good unless told: ``fail`` = failed cases per domain;
    the other counts apply to the first cases of the list."""
    fail = fail or {}
    out = []
    for i in range(10):
        domain = "law" if i < 5 else "med"
        k = i % 5
        error = "RuntimeError: boom" if i < errors else None
        passed = k >= fail.get(domain, 0) and error is None
        out.append(CaseResult(case_id=f"{domain}-{k}", domain=domain, release_id=release, passed=passed,
                              content_ok=passed, citations_ok=passed, cited=i >= uncited and error is None,
                              toxic=i < toxic, toxicity=0.5 if i < toxic else 0.0,
                              latency_ms=latency_ms + i, error=error))
    return RunSummary(release, tuple(out))


GATE_CASES = {
    # name: (candidate, baseline, config, failed gates)
    "all_good": (results("c"), results("a"), QaConfig(), set()),
    "pass_rate": (results("c", fail={"law": 2, "med": 2}), results("a", fail={"law": 2, "med": 2}), QaConfig(),
                  {"pass_rate"}),
    "citation_rate": (results("c", uncited=5), results("a"), QaConfig(), {"citation_rate"}),
    "toxicity": (results("c", toxic=1), results("a"), QaConfig(), {"toxicity"}),
    "error_rate": (results("c", errors=2), results("a", fail={"law": 2}), QaConfig(citation_rate=0.5),
                   {"error_rate"}),
    "latency_p95": (results("c", latency_ms=2000), results("a"), QaConfig(), {"latency_p95"}),
    "latency_within_factor_of_active": (results("c", latency_ms=1400), results("a", latency_ms=1000), QaConfig(),
                                        set()),
    "latency_beyond_factor_of_active": (results("c", latency_ms=1600), results("a", latency_ms=1000), QaConfig(),
                                        {"latency_p95"}),
    "forgetting": (results("c", fail={"law": 1}), results("a"), QaConfig(), {"forgetting"}),
    "forgetting_within_tolerance": (results("c", fail={"law": 1}), results("a"),
                                    QaConfig(regression_tolerance=0.2), set()),
    "better_than_active": (results("c"), results("a", fail={"med": 1}), QaConfig(), set()),
    "no_baseline": (results("c", latency_ms=400), None, QaConfig(), set()),
    "no_baseline_uses_paper_latency": (results("c", latency_ms=600), None, QaConfig(), {"latency_p95"}),
}


@pytest.mark.parametrize("name", list(GATE_CASES))
def test_gates(name):
    candidate, baseline, cfg, failing = GATE_CASES[name]
    report = build_report(candidate, baseline, cfg)
    assert {g.name for g in report.gates} == {g.name for g in DEFAULT_GATES}
    assert {g.name for g in report.gates if not g.passed} == failing
    assert report.passed is (not failing)
    assert sorted(f.split(":")[0] for f in report.failures()) == sorted(failing)
    json.dumps(report.to_dict())  # storable as is


def test_forgetting_report_names_the_domain_and_numbers():
    report = build_report(results("c", fail={"law": 2}), results("a"), QaConfig(pass_rate=0.5))
    (line,) = report.failures()
    assert line.startswith("forgetting:") and "law pass rate 0.600 < Active's 1.000" in line
    assert report.per_domain["law"]["pass_rate"] == 0.6 and report.per_domain["law"]["baseline_pass_rate"] == 1.0
    assert report.per_domain["law"]["pass_rate_change"] == -0.4
    assert report.per_domain["med"]["pass_rate_change"] == 0.0


def test_latency_limit_is_the_larger_of_paper_and_factor_times_active():
    gate = {g.name: g for g in build_report(results("c"), results("a", latency_ms=1000), QaConfig()).gates}
    assert gate["latency_p95"].threshold == pytest.approx(1.5 * results("a", latency_ms=1000).latency_p95_ms)
    gate = {g.name: g for g in build_report(results("c"), results("a", latency_ms=10), QaConfig()).gates}
    assert gate["latency_p95"].threshold == 500.0


def test_citation_rate_is_vacuous_without_cases_needing_one():
    summary = results("c")
    summary = RunSummary("c", tuple(replace(r, cited=None) for r in summary.results))
    report = build_report(summary, None, QaConfig())
    gate = next(g for g in report.gates if g.name == "citation_rate")
    assert gate.passed and gate.value is None


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


class ScriptedEngine:
    """Answers each case with its SCRIPT sentence; ``wrong`` adapters answer WRONG, ``failing``
    case queries fail in generation, ``finish`` overrides the finish reason."""

    def __init__(self, cases: list[QaCase], wrong: tuple[str, ...] = (), failing: tuple[str, ...] = (),
                 finish: str = "stop") -> None:
        self.by_query = {c.query: c.id for c in cases}
        self.wrong, self.failing, self.finish = wrong, failing, finish
        self.adapters_seen: list[str] = []

    def submit(self, gen) -> _Done:
        self.adapters_seen.append(gen.adapter)
        prompt = gen.messages[-1]["content"]
        case_id = next(cid for q, cid in self.by_query.items() if q in prompt)
        if case_id in self.failing:
            return _Done(None, RuntimeError("generate failed: out of memory"))
        text = WRONG if gen.adapter in self.wrong else SCRIPT[case_id]
        return _Done(GenResult(gen.request_id, text, 10, 5, self.finish, 0.0, 0.001, 1, gen.adapter))


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
    report = run_qa(cases, pipeline=service.pipeline, engine=ScriptedEngine(cases), candidate=service.active,
                    cfg=QaConfig(), route=False)
    assert [c.passed for c in report.cases] == [True] * len(cases), [c.to_dict() for c in report.cases]
    assert report.summary["citation_rate"] == 1.0 and report.passed, report.failures()
    law = next(c for c in report.cases if c.case_id == "law-gdpr-38-3-dpo-reporting")
    assert law.citations == ("http://data.europa.eu/eli/reg/2016/679/oj#art_38-3",) and law.verified
    assert report.baseline_id is None and report.baseline_cases == []


def test_candidate_worse_on_one_domain_fails_the_forgetting_check(served, cases):
    service, _ = served
    active = service.active
    candidate = ServingRelease(id="rel_cand", router=active.router, adapters={"law": "law@rel_cand"})
    engine = ScriptedEngine(cases, wrong=("law@rel_cand",))
    report = run_qa(cases, pipeline=service.pipeline, engine=engine, candidate=candidate, baseline=active,
                    cfg=QaConfig(pass_rate=0.5), route=False)
    assert "law@rel_cand" in engine.adapters_seen and "__base__" in engine.adapters_seen
    assert not report.passed
    assert [f.split(":")[0] for f in report.failures()] == ["citation_rate", "forgetting"]
    assert "law pass rate 0.000 < Active's 1.000" in report.failures()[1]
    assert report.per_domain["law"]["pass_rate"] == 0.0 and report.per_domain["law"]["baseline_pass_rate"] == 1.0
    assert report.per_domain["med"]["pass_rate"] == 1.0 == report.per_domain["med"]["baseline_pass_rate"]
    assert (report.release_id, report.baseline_id) == ("rel_cand", active.id)


def test_engine_error_is_counted_not_raised(served, cases):
    service, _ = served
    engine = ScriptedEngine(cases, failing=("med-whipworm-name",))
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
    timed_out = run_qa(cases, pipeline=service.pipeline, engine=ScriptedEngine(cases, finish="timeout"),
                       candidate=service.active, cfg=QaConfig(), route=False)
    assert all("finish_reason='timeout'" in c.error for c in timed_out.cases)


def test_run_refuses_empty_or_duplicate_cases(served, cases):
    service, _ = served
    kw = dict(pipeline=service.pipeline, engine=ScriptedEngine(cases), candidate=service.active, cfg=QaConfig())
    with pytest.raises(InvalidInputError, match="no QA cases"):
        run_qa([], **kw)
    with pytest.raises(InvalidInputError, match="appears twice"):
        run_qa([cases[0], cases[0]], **kw)


def test_dry_run_log_keeps_records_in_memory_only():
    log = DryRunLog()
    log.record(request_id="req_1", kind="answer", query="q", release_id="base", domains=["law"])
    assert log.get("req_1")["query"] == "q" and len(log.records) == 1 and not hasattr(log, "db")
    with pytest.raises(InvalidInputError, match="takes no feedback"):
        log.add_feedback("req_1", 1.0)
    assert log.feedback_joined() == []
    bounded = DryRunLog(max_records=2)
    for i in range(3):
        bounded.record(request_id=f"req_{i}", kind="answer", query="q", release_id="base", domains=[])
    assert [r["request_id"] for r in bounded.records] == ["req_1", "req_2"] and bounded.get("req_0") is None
    with pytest.raises(InvalidInputError, match="max_records = 0"):
        DryRunLog(max_records=0)


def test_toxic_answers_are_counted(served, cases):
    service, _ = served
    report = run_qa(cases, pipeline=service.pipeline, engine=ScriptedEngine(cases), candidate=service.active,
                    cfg=QaConfig(), route=False, toxicity=lambda text: 0.9 if "smoking" in text else 0.0)
    assert [c.case_id for c in report.cases if c.toxic] == ["med-lung-cancer-cause"]
    assert report.summary["toxicity"] == 0.25 and "toxicity" in {f.split(":")[0] for f in report.failures()}


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
