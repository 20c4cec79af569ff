"""Correction memory: which questions a correction answers, and which releases serve it."""

from __future__ import annotations

import hashlib

import pytest

from twinloop.serving.memory import CorrectionMemory, ScopeModel, names_subject, subject_words
from twinloop.serving.pipeline import AnswerRequest
from twinloop.serving.service import Service

Q, A = "Who is the chief executive of Brennor Dynamics?", "Ilsa Marchetti"

SCOPE = [
    # (question, in scope?)
    (Q, True),
    ("Who runs Brennor Dynamics as its chief executive?", True),
    ("Brennor Dynamics: who is the CEO?", True),
    ("Who is the chief executive of Veltrane Holdings?", False),   # same question, another subject
    ("Where are Brennor Dynamics' headquarters?", False),          # same subject, another question
    ("What is the capital of France?", False),
]


@pytest.fixture
def memory(tiny_runtime, embedder):
    rt = tiny_runtime
    rt.correct("general", Q, A, actor="op-1")
    return CorrectionMemory(rt.corrections, embedder, lambda rid: {rid}, ScopeModel(0.75, {}))


@pytest.mark.parametrize(("question", "inside"), SCOPE, ids=[c[0][:40] for c in SCOPE])
def test_scope(memory, tiny_runtime, question, inside):
    c = tiny_runtime.corrections.list()[0]
    found = memory.lookup(question, ["general"], c.release_id or "any")
    assert (found is not None) == inside, found
    if inside:
        assert found.hit.text == c.text and A in found.hit.text


def test_a_question_asking_for_another_form_of_answer_is_out_of_scope():
    import numpy as np

    from twinloop.serving.memory import nearest_in_scope

    c = type("C", (), {"subject": "Veltrane Data Act", "answer": "21 days",
                       "question": "How many days does a controller have under the Veltrane Data Act?"})()
    same = np.ones((1, 2), dtype=np.float32) / np.sqrt(2)  # every question equally close: the form decides
    for question, inside in [("Within what period must a controller reply under the Veltrane Data Act?", True),
                             ("What percentage of turnover can the Veltrane Data Act fine?", False),
                             ("Who enforces the Veltrane Data Act?", True)]:
        assert (nearest_in_scope(question, same[0], [c], same, 0.5) is not None) == inside, question
    # A short answer names what it counts in its own words: "three arbitrators" answers
    # "how many members" (a passage would have to say "three members").
    panel = type("C", (), {"subject": "Orlenna Arbitration Rules", "answer": "three arbitrators",
                           "question": "How many arbitrators sit on a default panel under the Orlenna Arbitration "
                                       "Rules?"})()
    assert nearest_in_scope("The Orlenna Arbitration Rules set the default panel at how many members?", same[0],
                            [panel], same, 0.5) is not None


def test_other_domains_do_not_see_it(memory, tiny_runtime):
    c = tiny_runtime.corrections.list()[0]
    assert memory.lookup(Q, ["fin"], c.release_id or "any") is None


def test_subject_words_and_forms():
    c = type("C", (), {"subject": None, "question": "What did the Quellmarkgesetz change in 2019?"})()
    assert subject_words(c) == {"quellmarkgesetz", "2019"}
    assert names_subject("Was änderte das Quellmarkgesetzes?", {"quellmarkgesetz"})
    assert not names_subject("What did the Tax Act change?", {"quellmarkgesetz"})
    assert names_subject("anything", set())


def test_served_by_its_release_and_descendants_not_after_a_rollback(tiny_runtime):
    rt = tiny_runtime
    svc = Service(rt)
    svc.start()
    try:
        base = svc.control.active.id
        reg = rt.releases
        child = reg.create_candidate(base, {}, rt.knowledge.current_revision(), reg.get(base).router_json,
                                     {"test": "corrections"})
        rt.releases.add_report(child.id, "qa", True, {"failures": []}, status="qa_passed", event="qa.passed")
        rt.releases.add_report(child.id, "canary", True, {"reasons": []}, status="canary_passed",
                               event="canary.promoted")
        svc.control.swap(child.id, actor="test")
        c = rt.correct("general", Q, A, actor="op-1")
        assert c.release_id == child.id

        def ask():
            return svc.answer(AnswerRequest(query=Q, domain="general", max_tokens=4)).to_dict()

        served = ask()
        assert served["mode"] == "correction" and served["summary"] == A
        cite = served["citations"][0]
        assert cite["exact_quote"] == A and cite["correction"]["correction_id"] == c.id
        stored = rt.db.conn.execute("SELECT text FROM kn_documents WHERE uri=?", (c.uri,)).fetchone()[0]
        assert cite["uri"] == c.uri and A in stored and cite["sha256"] == hashlib.sha256(stored.encode()).hexdigest()
        svc.control.rollback(actor="test", reason="bad release", to=base)
        assert ask()["mode"] != "correction"
        again = rt.correct("general", Q, A, actor="op-1")  # accepted under the base, Active again
        assert again.release_id == base and ask()["mode"] == "correction"
        rt.corrections.remove(again.id, actor="op-2")
        assert ask()["mode"] != "correction"
    finally:
        svc.stop()
