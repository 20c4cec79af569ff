"""Assembling a grounded answer: claims read back and checked, the extractive fallback, the
answerability decision; and the whole pipeline on the tiny model (out of scope, bad values)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from twinloop.foundation.tiny import tiny_tokenizer
from twinloop.kernel.errors import ConfigError
from twinloop.serving.evidence import (
    FEATURES,
    Answerability,
    default_answerability,
    rank_sentences,
)
from twinloop.serving.grounded import assemble, decide, extractive, quoting
from twinloop.serving.scope import Catalog

QUESTION = "How long does a controller have to act on a data subject's request?"
PASSAGES = [
    "Member States shall provide for supervisory authorities. Each authority shall act independently.",
    "The controller shall act on a request without undue delay and in any event within one month of receipt "
    "of the request. That period may be extended by two further months where necessary.",
]


def _hits(texts):
    return [SimpleNamespace(text=t, dense=0.6, bm25=1.0, score=1.0 - i * 0.1) for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _tokens_quoting(q, n: int, sentence_index: int, cut: int | None = None) -> list[int]:
    g = q.grammar
    p = q.passages[n - 1]
    start = sorted(p.starts)[sentence_index]
    end = min(e for e in p.ends if e > start)
    body = list(p.ids[start:end])
    if cut is not None:
        return [*g.open, g.numbers[n - 1], *g.close, *body[:cut]]
    return [*g.open, g.numbers[n - 1], *g.close, *body, g.eos]


def test_model_quote_of_the_wrong_sentence_gets_the_answering_one_added(tok, embedder):
    ranked = rank_sentences(QUESTION, PASSAGES, embedder, passage_scores=[0.9, 0.8])
    assert "one month" in ranked[0].text
    q = quoting(tok, _hits(PASSAGES), ranked)
    made = assemble(QUESTION, _tokens_quoting(q, 1, 1), q, ranked)  # "Each authority shall act independently."
    texts = [c.text for c in made.claims]
    assert made.mode == "generated" and any("one month" in t for t in texts)
    for c in made.claims:
        assert PASSAGES[c.n - 1][c.start:c.end] == c.text


def test_a_cut_off_quote_is_dropped_and_the_fallback_quotes_the_answer(tok, embedder):
    ranked = rank_sentences(QUESTION, PASSAGES, embedder, passage_scores=[0.9, 0.8])
    q = quoting(tok, _hits(PASSAGES), ranked)
    made = assemble(QUESTION, _tokens_quoting(q, 2, 0, cut=5), q, ranked)
    assert made.mode == "extractive" and "cut off" in made.dropped[0]
    assert made.claims[0].n == 2 and "within one month" in made.claims[0].text


def test_extractive_quotes_the_best_two_and_never_a_sentence_twice(embedder):
    ranked = rank_sentences(QUESTION, PASSAGES, embedder)
    claims = extractive(ranked)
    assert 2 <= len(claims) <= 3 and "one month" in claims[0].text
    spans = [(c.n, c.start, c.end) for c in claims]
    assert not any(a[0] == b[0] and a[1] < b[2] and b[1] < a[2] for i, a in enumerate(spans) for b in spans[i + 1:])


def test_a_sentence_that_points_back_is_quoted_with_its_antecedent(embedder):
    passages = ["Ribavirin is an antiviral drug. It has been used in the treatment of CCHF patients with some "
                "benefit. Treatment is otherwise supportive."]
    ranked = rank_sentences("Which antiviral drug has been used in treating CCHF patients?", passages, embedder)
    assert all(not s.text.startswith("It ") for s in ranked)
    assert any(s.text.startswith("Ribavirin") and "CCHF" in s.text for s in ranked[:2])


def test_the_same_sentence_in_two_passages_is_one_candidate(embedder):
    twice = "The controller shall act within one month of receipt of the request."
    ranked = rank_sentences(QUESTION, [twice, "Other text here. " + twice], embedder)
    assert sum(s.text == twice for s in ranked) == 1


def test_a_quantity_question_ranks_the_sentence_with_the_figure_first(embedder):
    passages = ["The aim of this study was to determine the prevalence of avascular necrosis in lupus patients. "
                "The point prevalence of avascular necrosis was 10% in the cohort."]
    ranked = rank_sentences("What was the prevalence of avascular necrosis in lupus patients?", passages, embedder)
    assert "10%" in ranked[0].text


def test_decide_refuses_what_the_evidence_does_not_answer(embedder):
    catalog = Catalog({"law": frozenset({"EU"})}, {"GDPR": frozenset({"12"})})
    strict = Answerability(tuple([0.0] * len(FEATURES)), -5.0, {}, default=0.5)  # p ≈ 0.007 for anything
    lenient = Answerability(tuple([0.0] * len(FEATURES)), 5.0, {}, default=0.5)
    hits = _hits(PASSAGES)
    assert decide(QUESTION, ["law"], hits, catalog, None, embedder, strict).status == "cannot_verify"
    ok = decide(QUESTION, ["law"], hits, catalog, None, embedder, lenient)
    assert ok.status == "answered" and ok.ranked and set(ok.features) == set(FEATURES)
    assert decide(QUESTION, ["law"], [], catalog, None, embedder, lenient).status == "cannot_verify"
    assert decide("What does the CCPA require?", ["law"], hits, catalog, None, embedder,
                  lenient).status == "out_of_scope"


def test_the_shipped_answerability_model_loads():
    model = default_answerability()
    assert model.fitted_on.get("split") == "calibration" and 0 < model.default < 1
    assert all(w >= 0 for w in model.weights)  # every feature is evidence for an answer, never against


@pytest.mark.parametrize(("doc", "says"), [
    ({"features": ["x"], "weights": [1]}, "features"),
    ({"features": list(FEATURES), "weights": [1]}, "weights"),
    ({"features": list(FEATURES), "weights": [0] * len(FEATURES), "thresholds": {"law": 2}}, "thresholds"),
])
def test_bad_answerability_file_names_the_field(doc, says):
    with pytest.raises(ConfigError, match=says):
        Answerability.from_dict(json.loads(json.dumps(doc)))


UNMENTIONED = [
    # (question, passages, dated, what is missing)
    ("What are the side effects of tirzepatide?", ["Side effects include nausea and vomiting."], False,
     ["tirzepatide"]),
    ("What is the incubation period of mpox?", ["After an incubation period of 3-8 days symptoms begin."], False,
     ["mpox"]),
    ("How much cash went into repurchasing stock in 2019?", ["We repurchased stock for $5 million in 2019."],
     False, []),  # a form of the rare word is there, and so is the year
    ("What was gross margin in 2016?", ["In 2019, gross margin decreased to 38.7% from 40.0% in 2018."], False,
     ["2016"]),
    ("Who administered the motorways in 2015?", ["Der Bund verwaltet die Bundesautobahnen."], True, []),
    ("Mit welcher Geldbuße wird ein Verstoß des Darlehensgebers geahndet?",
     ["Ordnungswidrig handelt, wer als Darlehensgeber eine Auskunft nicht erteilt."], True, []),
    ("What is the highest fine for ignoring the GDPR's basic principles?",
     ["Infringements of the basic principles shall be subject to fines."], True, []),
]


@pytest.mark.parametrize(("question", "passages", "dated", "missing"), UNMENTIONED,
                         ids=[c[0][:30] for c in UNMENTIONED])
def test_what_no_passage_mentions(question, passages, dated, missing):
    from twinloop.serving.evidence import unmentioned

    assert unmentioned(question, passages, dated=dated) == missing


UNITS = [
    ("Within how many hours must a processor notify the controller?",
     ["The processor shall notify the controller without undue delay."], "a number of hours"),
    ("Within how many hours must a controller notify the authority?",
     ["not later than 72 hours after having become aware of it"], None),
    ("How many euros may a controller charge per additional copy?",
     ["the controller may charge a reasonable fee based on administrative costs."], "an amount in euros"),
    ("Wie viele Euro Geldbuße sind möglich?", ["mit einer Geldbuße bis zu fünfzigtausend Euro geahndet"], None),
    ("Above what serum uric acid level in mg/dL is gout diagnosed?", ["Gout can develop with hyperuricemia."],
     "a value in mg/dL"),
    ("How much does a dose of the antitoxin cost?", ["The antitoxin blocks circulating toxin."], "a price"),
    ("What dose of zoledronic acid is given?", ["A single 5 mg infusion of zoledronic acid is given."], None),
    ("What is the treatment of Paget's disease?", ["Bisphosphonates are the treatment."], None),
]


@pytest.mark.parametrize(("question", "passages", "missing"), UNITS, ids=[c[0][:30] for c in UNITS])
def test_a_question_asking_for_a_unit_needs_a_passage_with_one(question, passages, missing):
    from twinloop.serving.evidence import missing_unit

    assert missing_unit(question, passages) == missing


def test_decide_refuses_a_question_about_a_term_no_passage_knows(embedder):
    catalog = Catalog({"med": frozenset()}, {})
    lenient = Answerability(tuple([0.0] * len(FEATURES)), 5.0, {}, default=0.5)
    hits = _hits(["Most often the side effects include nausea, vomiting, and hair loss."])
    d = decide("What are the most common side effects of tirzepatide?", ["med"], hits, catalog, None, embedder, lenient)
    assert d.status == "cannot_verify" and "tirzepatide" in d.reason


COUNTS = [
    ("How many voting members does the Board have?", ["The Board shall take decisions by a simple majority of its "
                                                       "members. The Commission has no voting rights."],
     "a number of voting"),
    ("How many voting members does the Board have?", ["The Board consists of 27 voting members."], None),
    ("Wie viele Abgeordnete hat der Bundestag?", ["Der Bundestag wird von fünf Abgeordneten geleitet."], None),
    ("In how many of the specimens was c-kit expressed?", ["c-kit was found in tumour tissue."], None),
]


@pytest.mark.parametrize(("question", "passages", "missing"), COUNTS, ids=[c[0][:30] + str(i) for i, c in
                                                                          enumerate(COUNTS)])
def test_how_many_needs_a_number_next_to_what_is_counted(question, passages, missing):
    from twinloop.serving.evidence import missing_unit

    assert missing_unit(question, passages) == missing
