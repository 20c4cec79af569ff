"""QA cases, judging, gates and the report (paper §5.1; ``twinloop.release.qa``).

Pure functions over cases and finished results: no model, no serving stack. Answering the
cases on an isolated engine is tested in ``test_serving_dryrun.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import resources

import pytest

from twinloop.kernel.config import QaConfig, load_settings
from twinloop.kernel.errors import InvalidInputError, UnknownDomainError
from twinloop.kernel.toxicity import ToxicityScorer
from twinloop.knowledge.domains import DEFAULT_PACKS, load_pack, pack_corpus
from twinloop.release.qa import (
    ANSWER_CHARS,
    DEFAULT_GATES,
    CaseResult,
    QaCase,
    RunSummary,
    build_report,
    citation_matches,
    content_ok,
    error_result,
    load_cases,
    score_answer,
)

GOOD = {"id": "c1", "domain": "law", "query": "How long may a controller take?", "expected": ["one month"],
        "citations": ["http://data.europa.eu/eli/reg/2016/679/oj#art_12-3"]}


@dataclass(frozen=True)
class Cite:
    """A citation as the judge reads it (serving's ``Citation`` has these fields and more)."""

    uri: str | None
    label: str | None


@dataclass(frozen=True)
class Answer:
    """An answer record as the judge reads it (``JudgedAnswer``)."""

    text: str
    citations: tuple[Cite, ...] = ()
    finish_reason: str = "stop"
    release_id: str = "rel_c"
    verified: bool | None = True
    status: str | None = "verified"
    domains: tuple[str, ...] = ("law",)


def citation(uri: str | None, label: str) -> Cite:
    return Cite(uri, label)


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


CASE = QaCase(id="c1", domain="law", query="How long?", expected=("one month",), citations=("#art_12-3",))
ART_12_3 = Cite("http://data.europa.eu/eli/reg/2016/679/oj#art_12-3", "GDPR Art. 12(3)")


def test_score_answer_reads_any_record_with_the_judged_fields():
    result = score_answer(CASE, Answer("Within one month of receipt.", (ART_12_3,)), 12.3456, ToxicityScorer())
    assert result.passed and result.content_ok and result.citations_ok and result.cited is True
    assert (result.release_id, result.latency_ms, result.routed) == ("rel_c", 12.346, ("law",))
    assert result.citations == (ART_12_3.uri,) and result.verified and result.status == "verified"
    assert not result.toxic and result.error is None
    uncited = score_answer(CASE, Answer("Within one month.", (Cite(None, "GDPR Art. 13"),)), 1.0, ToxicityScorer())
    assert uncited.content_ok and not uncited.citations_ok and not uncited.passed
    assert uncited.cited is True and uncited.citations == ("GDPR Art. 13",), "cited something, not the source"


def test_score_answer_judges_the_model_text_without_the_notice():
    notice = "UNVERIFIED: check this."
    record = Answer(f"{notice}\n\nWithin one month.", (), verified=False, status="unverified")
    stripped = score_answer(CASE, record, 1.0, ToxicityScorer(), notices=("other", notice))
    assert stripped.answer == "Within one month." and stripped.status == "unverified"
    kept = score_answer(CASE, record, 1.0, ToxicityScorer())
    assert kept.answer.startswith(notice)
    long = score_answer(CASE, Answer("x" * 1000), 1.0, ToxicityScorer())
    assert len(long.answer) == ANSWER_CHARS and long.answer.endswith("…")


def test_cut_off_answer_and_failed_answer_are_errors():
    cut = score_answer(CASE, Answer("Within one month", (ART_12_3,), finish_reason="timeout"), 1.0, ToxicityScorer())
    assert cut.error == "generation ended early (finish_reason='timeout')" and not cut.passed and cut.cited is False
    failed = error_result(CASE, "rel_c", 2.0, "RuntimeError: boom")
    assert (failed.passed, failed.cited, failed.toxic, failed.error) == (False, False, False, "RuntimeError: boom")
    no_cite = replace(CASE, needs_citation=False)
    assert error_result(no_cite, "rel_c", 2.0, "x").cited is None


def test_toxic_answer_uses_the_scorers_threshold():
    scorer = ToxicityScorer(classifier=lambda text: 0.6)
    assert score_answer(CASE, Answer("fine"), 1.0, scorer).toxic
    assert not score_answer(CASE, Answer("fine"), 1.0, ToxicityScorer(0.7, classifier=lambda text: 0.6)).toxic


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


def test_latency_percentiles_are_nearest_rank():
    """p50 and p95 are latencies some case really had (kernel.stats.percentile), not interpolated."""
    summary = results("c", latency_ms=100.0)  # 100, 101, ..., 109 ms
    assert (summary.latency_p50_ms, summary.latency_p95_ms) == (104.0, 109.0)
    errors = results("c", errors=10)
    assert errors.latency_p50_ms is None and errors.latency_p95_ms is None, "failed cases are not timed"


def test_citation_rate_is_vacuous_without_cases_needing_one():
    summary = results("c")
    summary = RunSummary("c", tuple(replace(r, cited=None) for r in summary.results))
    report = build_report(summary, None, QaConfig())
    gate = next(g for g in report.gates if g.name == "citation_rate")
    assert gate.passed and gate.value is None
