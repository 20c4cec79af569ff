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
    givers,
    rank_sentences,
)
from twinloop.serving.grounded import answer_passage, assemble, decide, extractive, quoting, renumbered
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
    ("Within how many hours must a breach be notified to the authority?",
     ["not later than 72 hours after having become aware of it"], None),
    ("How many euros may a controller charge per additional copy?",
     ["the controller may charge a reasonable fee based on administrative costs."], "an amount in euros"),
    ("Wie viele Euro Geldbuße sind möglich?", ["mit einer Geldbuße bis zu fünfzigtausend Euro geahndet"], None),
    ("Above what serum uric acid level in mg/dL is gout diagnosed?", ["Gout can develop with hyperuricemia."],
     "a value in mg/dL"),
    ("How much does a dose of the antitoxin cost?", ["The antitoxin blocks circulating toxin."], "a price"),
    ("What dose of zoledronic acid is given?", ["A single 5 mg infusion of zoledronic acid is given."], None),
    # The dose must be the subject's: a passage naming the drug, not another drug's dose.
    ("What dose of zoledronic acid is given?", ["Zoledronic acid is one of four bisphosphonates.",
                                                "Risedronate is taken at 30 mg daily."], "a dose"),
    ("Which temperature range do the guidelines prescribe?", ["Vaccines must be kept cool."], "a temperature"),
    ("Which temperature range do the guidelines prescribe?", ["Keep vaccines between 2 and 8 °C."], None),
    ("How much did the company pay to acquire TOKIN?",
     ["Net sales of $133.8 million resulted from the TOKIN acquisition."], "an amount paid"),
    ("How much did the company pay to acquire TOKIN?",
     ["The company acquired TOKIN for a purchase price of $148.1 million in cash."], None),
    ("How much did the company pay to acquire TOKIN?", ["KEMET paid $148.1 million for TOKIN."], None),
    # The controller's deadline is not the processor's; the processor's own one counts.
    ("Within how many hours must a processor notify the controller of a breach?",
     ["The processor shall notify the controller without undue delay. The controller shall notify the "
      "supervisory authority not later than 72 hours after having become aware of it."], "a number of hours"),
    ("Within how many hours must a processor notify the controller of a breach?",
     ["The processor shall inform the controller within 24 hours of becoming aware of a breach."], None),
    ("Within how many hours must a processor notify the controller of a breach?",
     ["The processor shall notify the controller without undue delay. Where the notification is not made "
      "within 72 hours, reasons shall accompany it."], "a number of hours"),
    ("Within how many hours must a controller notify the authority?",
     ["The controller shall notify the authority not later than 72 hours after becoming aware of it."], None),
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


def _law_hits(items):
    """Hits with citations: ``(code, article label, text)`` each."""
    return [SimpleNamespace(text=t, dense=0.6, bm25=1.0, score=1.0 - i * 0.1,
                            citation={"code": code, "article": art}) for i, (code, art, t) in enumerate(items)]


BDSG = Catalog({"law": frozenset({"DE"})}, {"BDSG 2018": frozenset({"42", "43"})})
LENIENT = Answerability(tuple([0.0] * len(FEATURES)), 5.0, {}, default=0.5)


def test_a_question_naming_its_provision_is_answered_from_it_only(tok, embedder):
    hits = _law_hits([
        ("BDSG 2018", "§ 43", "Die Ordnungswidrigkeit kann mit einer Geldbuße bis zu fünfzigtausend Euro "
                              "geahndet werden."),
        ("BDSG 2018", "§ 42", "Mit Freiheitsstrafe bis zu drei Jahren oder mit Geldstrafe wird bestraft, wer "
                              "Daten unbefugt übermittelt."),
    ])
    # § 43's euros are not § 42's: the amount asked for is in no passage of § 42.
    d = decide("Wie viele Euro Geldstrafe sieht § 42 BDSG höchstens vor?", ["law"], hits, BDSG, None, embedder,
               LENIENT)
    assert d.status == "cannot_verify" and "euros" in d.reason
    # Asked about § 42's punishment, only § 42 may be quoted, whatever the model quotes.
    d = decide("Welche Strafe sieht § 42 BDSG vor?", ["law"], hits, BDSG, None, embedder, LENIENT)
    assert d.status == "answered" and d.allowed == frozenset({2}) and {s.n for s in d.ranked} == {2}
    q = quoting(tok, hits, d.ranked)
    made = assemble("Welche Strafe sieht § 42 BDSG vor?", _tokens_quoting(q, 1, 0), q, d.ranked, d.allowed)
    assert [c.n for c in made.claims] == [2] and any("not from the provision" in x for x in made.dropped)
    # Without a passage of the named provision the others stay (a rule may send elsewhere).
    d = decide("Welche Strafe sieht § 42 BDSG vor?", ["law"], hits[:1], BDSG, None, embedder, LENIENT)
    assert d.allowed is None


def test_an_answer_about_another_year_is_no_answer(tok, embedder):
    passages = ["Interest expense in 2019 was $1,952 million. Interest expense rose by $473 million year to year. "
                "Interest expense excludes capitalized interest.",
                "The annual meeting of 2017 took place in Armonk."]
    catalog = Catalog({"fin": frozenset()}, {})
    question = "What was interest expense in 2017?"
    d = decide(question, ["fin"], _hits(passages), catalog, None, embedder, LENIENT)
    assert d.status == "answered" and d.years == ("2017",)
    q = quoting(tok, _hits(passages), d.ranked)
    made = assemble(question, _tokens_quoting(q, 1, 0), q, d.ranked, d.allowed, d.years)
    assert made.claims == [] and "2017" in made.refusal
    # Sources that are dated editions take a year as the as-of date, not as what is asked.
    law = decide("How long does a controller have to act on a request in 2019?", ["law"], _hits(PASSAGES),
                 Catalog({"law": frozenset({"EU"})}, {"GDPR": frozenset({"12"})}), None, embedder, LENIENT)
    assert law.years == ()


def test_quotes_that_state_the_year_asked_about_are_an_answer(tok, embedder):
    passages = ["Interest expense in 2017 was $615 million.", "Revenue grew in 2019."]
    question = "What was interest expense in 2017?"
    d = decide(question, ["fin"], _hits(passages), Catalog({"fin": frozenset()}, {}), None, embedder, LENIENT)
    q = quoting(tok, _hits(passages), d.ranked)
    made = assemble(question, _tokens_quoting(q, 1, 0), q, d.ranked, d.allowed, d.years)
    assert made.claims and made.refusal == "" and "2017" in made.claims[0].text


def test_quotes_around_the_answer_are_led_by_the_sentence_that_gives_it(tok, embedder):
    # The model quotes the election, not the age; the sentence with the age leads the answer.
    passages = ["Der Bundespräsident wird ohne Aussprache von der Bundesversammlung gewählt. Gewählt wird für "
                "eine Amtszeit. Wählbar ist jeder Deutsche, der das vierzigste Lebensjahr vollendet hat."]
    question = "Wie alt muss jemand mindestens sein, um zum Bundespräsidenten gewählt zu werden?"
    d = decide(question, ["law"], _hits(passages), Catalog({"law": frozenset({"DE"})}, {}), None, embedder, LENIENT)
    assert d.status == "answered"
    q = quoting(tok, _hits(passages), d.ranked)
    made = assemble(question, _tokens_quoting(q, 1, 0), q, d.ranked, d.allowed)
    assert "vierzigste Lebensjahr" in made.claims[0].text and made.refusal == ""
    for c in made.claims:
        assert passages[c.n - 1][c.start:c.end] == c.text


def test_the_best_sentence_giving_the_form_is_added_when_the_model_quotes_another(tok, embedder):
    # Both passages give a frequency; the model quotes the reminder rule, the ranking knows the
    # yearly free copy is what was asked.
    passages = ["Der Betroffene kann einmal je Kalenderjahr eine unentgeltliche Auskunft in Textform verlangen.",
                "Die Forderung ist übermittelbar, wenn der Betroffene mindestens zweimal schriftlich gemahnt worden ist."]
    question = "Wie oft kann der Betroffene eine unentgeltliche Auskunft in Textform verlangen?"
    d = decide(question, ["law"], _hits(passages), Catalog({"law": frozenset({"DE"})}, {}), None, embedder, LENIENT)
    assert d.status == "answered"
    q = quoting(tok, _hits(passages), d.ranked)
    made = assemble(question, _tokens_quoting(q, 2, 0), q, d.ranked, d.allowed)
    # Both stand, each verbatim and cited: neither the model nor the ranking is always right.
    texts = [c.text for c in made.claims]
    assert passages[0] in texts and any("zweimal" in t for t in texts) and made.refusal == ""


def test_a_sentence_naming_the_question_s_names_leads_the_givers(embedder):
    passages = ["The net financial result comprises the interest result of €−119 million (2017/18: €−136 million). "
                "Earnings before interest and taxes EBIT | 713 | 828"]
    question = "What was EBIT in the 2018/2019 financial year in € million, in the table of the net financial result?"
    ranked = rank_sentences(question, passages, embedder)
    assert "EBIT" in givers(question, ranked, passages)[0].text


def test_the_passage_that_gives_the_answer_is_kept_first_and_renumbered(embedder):
    passages = ["Der Bundespräsident wird ohne Aussprache von der Bundesversammlung gewählt.",
                "Die Bundesversammlung besteht aus den Mitgliedern des Bundestages.",
                "Wählbar ist jeder Deutsche, der das vierzigste Lebensjahr vollendet hat."]
    question = "Wie alt muss jemand mindestens sein, um zum Bundespräsidenten gewählt zu werden?"
    d = decide(question, ["law"], _hits(passages), Catalog({"law": frozenset({"DE"})}, {}), None, embedder, LENIENT)
    assert answer_passage(question, d, passages) == 3
    kept = renumbered(d, [1, 3])  # the prompt's budget dropped passage 2
    assert {s.n for s in kept.ranked} == {1, 2}
    assert all(passages[[1, 3][s.n - 1] - 1][s.start:s.end] == s.text for s in kept.ranked)
    assert answer_passage("Was macht die Bundesversammlung?", d, passages) is None  # no form asked


def test_decide_refuses_when_no_sentence_gives_the_form_asked_for(embedder):
    catalog = Catalog({"law": frozenset({"DE"})}, {})
    hits = _hits(["Der Bundespräsident wird ohne Aussprache von der Bundesversammlung gewählt. Der "
                  "Bundespräsident vertritt den Bund völkerrechtlich."])
    d = decide("Wie alt muss jemand mindestens sein, um zum Bundespräsidenten gewählt zu werden?", ["law"], hits,
               catalog, None, embedder, LENIENT)
    assert d.status == "cannot_verify" and "an age" in d.reason
    # Only provision numbers in the passages: no figure for the majority asked about.
    hits = _hits(["Der Bundestag beschließt nach Artikel 42 Absatz 2 mit der Mehrheit seiner Mitglieder."])
    d = decide("Welche Mehrheit braucht der Bundestag?", ["law"], hits, catalog, None, embedder, LENIENT)
    assert d.status == "cannot_verify" and "figure" in d.reason


def test_a_figure_quoted_without_its_year_gets_the_line_of_its_passage_that_states_it(tok, embedder):
    passages = ["The Fiscal 2017 Restructuring Plan charges relate to workforce reductions. Since the inception of "
                "the plan, $41.9 million has been recorded within special charges."]
    question = "Since its start, how much has the Fiscal 2017 Restructuring Plan cost in special charges?"
    d = decide(question, ["fin"], _hits(passages), Catalog({"fin": frozenset()}, {}), None, embedder, LENIENT)
    assert d.status == "answered" and d.years == ("2017",)
    q = quoting(tok, _hits(passages), d.ranked)
    made = assemble(question, _tokens_quoting(q, 1, 1), q, d.ranked, d.allowed, d.years)
    texts = " ".join(c.text for c in made.claims)
    assert made.refusal == "" and "$41.9 million" in texts and "Fiscal 2017" in texts


AGE_QUESTION = "Wie alt muss der Bundespräsident mindestens sein?"


def _law_service(rt, texts: list[str]):
    """A service over ``texts`` as GG articles (the last one Art. 54), answerability lenient."""
    from twinloop.serving.service import Service

    docs = [{"text": t, "jurisdiction": "DE", "code": "GG", "article": f"Art. {60 + i}", "source": "test"}
            for i, t in enumerate(texts)]
    docs[-1]["article"] = "Art. 54"
    rt.knowledge.ingest("law", docs)
    svc = Service(rt)
    svc.pipeline.answerability = LENIENT
    return svc


def test_a_wider_search_finds_the_passage_that_gives_the_form_asked_for(tiny_runtime, embedder, monkeypatch):
    from twinloop.serving import pipeline as pipeline_module
    from twinloop.serving.pipeline import AnswerRequest

    # Many passages about the office, none with an age; the one with the age ranks below them.
    svc = _law_service(tiny_runtime, [
        *(f"Der Bundespräsident Bundespräsident vertritt den Bund. Regel {i} über den Bundespräsidenten und den "
          f"Bundespräsidenten." for i in range(8)),
        "Der Bundespräsident wird gewählt. Wählbar ist jeder Deutsche, der das vierzigste Lebensjahr vollendet hat."])
    question = AGE_QUESTION
    prep = svc.pipeline.prepare(AnswerRequest(query=question, domain="law"), svc.active)
    assert prep.decision.status == "answered", prep.decision.reason
    assert any("vierzigste" in h.text for h in prep.prompt_passages)
    # Without the wider search the same question is refused: no passage found gives an age.
    monkeypatch.setattr(pipeline_module, "WIDER_SEARCH", 5)
    prep = svc.pipeline.prepare(AnswerRequest(query=question, domain="law"), svc.active)
    assert prep.decision.status == "cannot_verify" and "an age" in prep.decision.reason


def test_the_answer_s_passage_stays_in_a_full_prompt_and_numbers_stay_consistent(tiny_runtime, tok):
    from twinloop.serving.pipeline import PROMPT_OVERHEAD_TOKENS, AnswerRequest

    filler = " ".join(f"Der Bundespräsident vertritt den Bund nach Regel {i}." for i in range(30))
    svc = _law_service(tiny_runtime, [
        *(f"Der Bundespräsident Bundespräsident wird gewählt ({i}). {filler}" for i in range(2)),
        "Wählbar zum Bundespräsidenten ist jeder Deutsche, der das vierzigste Lebensjahr vollendet hat."])
    question = AGE_QUESTION
    prep = svc.pipeline.prepare(AnswerRequest(query=question, domain="law"), svc.active)
    assert prep.decision.status == "answered", prep.decision.reason
    texts = [h.text for h in prep.prompt_passages]
    age = next(i for i, t in enumerate(texts) if "vierzigste" in t)
    assert age > 0  # ranked below the long passages
    cost = [len(tok(f"[{i + 1}] {h.label}\n{h.text}", add_special_tokens=False)["input_ids"])
            for i, h in enumerate(prep.prompt_passages)]
    # Room for the best passage and the answer's, not for every passage before it.
    room = cost[0] + cost[age] + 2 + len(tok(question, add_special_tokens=False)["input_ids"])
    assert room < sum(cost[:age + 1])
    foundation = SimpleNamespace(tokenizer=tok, config=SimpleNamespace(max_input_tokens=PROMPT_OVERHEAD_TOKENS + room))
    assert svc.pipeline.constrain(prep, foundation) is not None
    kept = prep.prompt_passages
    assert any("vierzigste" in h.text for h in kept) and len(kept) < len(texts)
    # [n] in the prompt, the decision and the record's retrieved list name the same passage.
    assert prep.passages[:len(kept)] == kept
    assert all(kept[s.n - 1].text[s.start:s.end] == s.text for s in prep.decision.ranked)
