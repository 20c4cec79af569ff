""""No source, no claim": claims, markers, invented citations, verbatim quotes."""

from __future__ import annotations

import pytest

from twinloop.knowledge.retrieval import Hit
from twinloop.serving import verify


def hit(text: str, n: int = 0) -> Hit:
    return Hit(chunk_id=n, doc_id=n, domain="law", text=text, citation={"uri": f"u{n}"}, label=f"L{n}",
               score=1.0, dense=0.5, bm25=1.0)


PASSAGES = [
    hit("A controller shall notify a personal data breach to the supervisory authority within 72 hours. "
        "Late notice needs reasons.", 1),
    hit("The data subject has the right to obtain erasure of personal data without undue delay.", 2),
]

# (name, answer, verified, cited, invalid markers, bad quotes, unsupported claims)
CASES = [
    ("supported-no-marker", "The controller must notify the supervisory authority of a data breach within 72 hours.",
     True, [1], [], [], 0),
    ("supported-with-marker", "The controller must notify a personal data breach within 72 hours [1].",
     True, [1], [], [], 0),
    ("two-claims-two-sources", "The controller must notify a personal data breach within 72 hours. "
                               "The data subject can obtain erasure of personal data without undue delay.",
     True, [1, 2], [], [], 0),
    ("wrong-number", "The controller must notify a personal data breach within 24 hours.", False, [], [], [], 1),
    ("unsupported-addition", "The controller must notify a personal data breach within 72 hours. "
                             "This mandatory period is set out in Article 55 of the Regulation.",
     False, [1], [], [], 1),
    ("invented-marker", "The controller must notify a personal data breach within 72 hours [7].",
     False, [1], [7], [], 0),
    ("marker-to-wrong-passage", "The controller must notify a personal data breach within 72 hours [2].",
     False, [], [], [], 1),
    ("good-quote", 'The rule: "notify a personal data breach to the supervisory authority" within 72 hours.',
     True, [1], [], [], 0),
    ("bad-quote", 'The rule says "notify the police within 72 hours" for every personal data breach.',
     False, [1], [], ["notify the police within 72 hours"], 0),
    ("nothing-claimed", "I do not know.", False, [], [], [], 0),
]


@pytest.mark.parametrize(("name", "answer", "ok", "cited", "invalid", "bad", "unsupported"), CASES,
                         ids=[c[0] for c in CASES])
def test_check(name, answer, ok, cited, invalid, bad, unsupported):
    v = verify.check(answer, PASSAGES)
    assert (v.verified, v.cited, v.invalid_markers, v.bad_quotes, len(v.unsupported)) == (
        ok, cited, invalid, bad, unsupported), v.reason
    assert (v.reason == "ok") == ok


def test_restating_the_question_is_not_a_verified_answer():
    q = "When must a personal data breach be notified to the supervisory authority?"
    v = verify.check("The answer is: when a personal data breach must be notified to the supervisory authority.",
                     PASSAGES, q)
    assert not v.verified and v.claims == 0
    v = verify.check("A personal data breach must be notified within 72 hours of becoming aware of it.",
                     [hit(PASSAGES[0].text + " Notice comes after becoming aware of it.", 1)], q)
    assert v.verified, v.reason


def test_best_quote_is_verbatim_and_relevant():
    q = verify.best_quote(PASSAGES[0].text, "You have 72 hours to notify a breach.")
    assert q in PASSAGES[0].text
    assert "72 hours" in q
