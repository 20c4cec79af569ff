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


def test_extractive_quotes_the_best_and_a_close_second(embedder):
    ranked = rank_sentences(QUESTION, PASSAGES, embedder)
    claims = extractive(ranked)
    assert 1 <= len(claims) <= 2 and "one month" in claims[0].text


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


@pytest.mark.parametrize(("doc", "says"), [
    ({"features": ["x"], "weights": [1]}, "features"),
    ({"features": list(FEATURES), "weights": [1]}, "weights"),
    ({"features": list(FEATURES), "weights": [0] * len(FEATURES), "thresholds": {"law": 2}}, "thresholds"),
])
def test_bad_answerability_file_names_the_field(doc, says):
    with pytest.raises(ConfigError, match=says):
        Answerability.from_dict(json.loads(json.dumps(doc)))
