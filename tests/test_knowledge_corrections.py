"""Corrections: accepted, approved where the domain asks, removed — each a document of the domain."""

from __future__ import annotations

import pytest

from twinloop.kernel.errors import InvalidInputError, UnknownDomainError
from twinloop.knowledge.corrections import CORRECTION_CODE, CorrectionNotFoundError

Q, A = "Who is the chief executive of Brennor Dynamics?", "Ilsa Marchetti"


def _doc(rt, c):
    return rt.db.conn.execute("SELECT code, text, removed_rev, erased FROM kn_documents WHERE uri=?",
                              (c.uri,)).fetchone()


def test_a_correction_is_a_document_at_a_new_revision_and_audited(tiny_runtime):
    rt = tiny_runtime
    before = rt.knowledge.current_revision()
    c = rt.correct("general", Q, A, actor="op-1", source="board minutes")
    assert c.state == "active" and c.revision == rt.knowledge.current_revision() > before
    code, text, removed, _ = _doc(rt, c)
    assert code == CORRECTION_CODE and A in text and removed is None and text == c.text
    assert c.provenance()["accepted_by"] == "op-1" and c.provenance()["source"] == "board minutes"
    assert "correction.accepted" in [e.action for e in rt.events.list()]


def test_a_domain_that_needs_two_reviewers_serves_only_after_both(tiny_runtime):
    rt = tiny_runtime
    c = rt.correct("law", "How many days does the Veltrane Data Act allow for an answer?", "21 days", actor="op-1")
    assert c.state == "pending" and c.revision is None and c.approvals_required == 2
    with pytest.raises(InvalidInputError, match="cannot also approve"):
        rt.corrections.approve(c.id, actor="op-1")
    c = rt.corrections.approve(c.id, actor="rev-1")
    assert c.state == "pending"
    assert rt.corrections.approve(c.id, actor="rev-1").approvals == c.approvals  # twice is once
    c = rt.corrections.approve(c.id, actor="rev-2")
    assert c.state == "active" and c.revision is not None


def test_removing_takes_the_document_out_at_a_new_revision(tiny_runtime):
    rt = tiny_runtime
    c = rt.correct("general", Q, A, actor="op-1")
    gone = rt.corrections.remove(c.id, actor="op-2", reason="wrong person")
    assert gone.state == "removed" and _doc(rt, c)[2] is not None
    assert rt.corrections.servable(["general"], None) == []
    assert rt.corrections.remove(c.id, actor="op-2").removed_at == gone.removed_at  # twice is once
    with pytest.raises(InvalidInputError, match="removed"):
        rt.corrections.approve(c.id, actor="rev-1")


def test_erasing_wipes_the_text(tiny_runtime):
    rt = tiny_runtime
    c = rt.correct("general", Q, "Ilsa Marchetti, born 1970-01-01", actor="op-1")
    gone = rt.corrections.remove(c.id, actor="op-1", erase=True)
    assert gone.answer == "[erased]" and _doc(rt, c)[3] == 1


@pytest.mark.parametrize(("fields", "says"), [
    ({"domain": "general", "question": "", "answer": A}, "question"),
    ({"domain": "general", "question": Q, "answer": "   "}, "answer"),
    ({"domain": "general", "question": Q, "answer": 5}, "answer"),
    ({"domain": "general", "question": "x" * 2001, "answer": A}, "question is 2001 characters"),
    ({"domain": "general", "question": Q, "answer": A, "source": 7}, "source"),
    ({"domain": None, "question": Q, "answer": A}, "domain"),
    ({"domain": "general", "question": Q, "answer": "Ilsa \ud800"}, "Unicode"),
    ({"domain": "general", "question": Q, "answer": A, "source": "\udfff"}, "Unicode"),
])
def test_bad_fields_are_named(tiny_runtime, fields, says):
    with pytest.raises(InvalidInputError, match=says):
        tiny_runtime.correct(fields.pop("domain"), fields.pop("question"), fields.pop("answer"), actor="op",
                             **fields)


def test_unknown_domain_and_id(tiny_runtime):
    with pytest.raises(UnknownDomainError):
        tiny_runtime.correct("astrology", Q, A, actor="op")
    with pytest.raises(CorrectionNotFoundError):
        tiny_runtime.corrections.get(999)
    with pytest.raises(InvalidInputError, match="integer"):
        tiny_runtime.corrections.get("abc")
    with pytest.raises(InvalidInputError, match="state"):
        tiny_runtime.corrections.list(state="gone")


def test_a_correction_never_changes_what_a_search_returns(tiny_runtime):
    rt = tiny_runtime
    rt.knowledge.ingest("general", [{"text": "Brennor Dynamics builds turbines in Port Dresny.", "uri": "u:1"},
                                    {"text": "The chief executive of a company leads its board.", "uri": "u:2"}])

    def search():
        hits = rt.retriever.view().search(Q, ["general"], k=5, mode="hybrid").hits
        return [(h.chunk_id, round(h.score, 6)) for h in hits], [h.citation.get("code") for h in hits]

    before, _ = search()
    rt.correct("general", Q, A, actor="op-1")
    after, codes = search()
    assert after == before and CORRECTION_CODE not in codes
    assert CORRECTION_CODE not in rt.retriever.catalog()["articles"]


def test_notes_and_reasons_must_be_valid_text(tiny_runtime):
    c = tiny_runtime.correct("law", "How long is the Veltrane notice period?", "21 days", actor="op-1")
    with pytest.raises(InvalidInputError, match="note"):
        tiny_runtime.corrections.approve(c.id, actor="rev-1", note="ok \ud800")
    with pytest.raises(InvalidInputError, match="reason"):
        tiny_runtime.corrections.remove(c.id, actor="rev-1", reason="x" * 2001)
    assert tiny_runtime.corrections.get(c.id).state == "pending"
