""""No source, no claim": markers, invented citations, verbatim quotes."""

from __future__ import annotations

import pytest

from twinloop.knowledge.retrieval import Hit
from twinloop.serving import verify


def hit(text: str, n: int = 0) -> Hit:
    return Hit(chunk_id=n, doc_id=n, domain="law", text=text, citation={"uri": f"u{n}"}, label=f"L{n}",
               score=1.0, dense=0.5, bm25=1.0)


PASSAGES = [
    hit("A controller shall notify a personal data breach within 72 hours. Late notice needs reasons.", 1),
    hit("The data subject has the right to erasure without undue delay.", 2),
]

CASES = [
    ("cites-valid", "Breaches must be notified within 72 hours [1].", True, [1], [], []),
    ("cites-two", "Notify within 72 hours [1]; erasure without undue delay [2].", True, [1, 2], [], []),
    ("no-marker", "Breaches must be notified within 72 hours.", False, [], [], []),
    ("invented-marker", "Notify within 72 hours [1] and pay a fine [7].", False, [1], [7], []),
    ("good-quote", 'The rule: "notify a personal data breach within 72 hours" [1].', True, [1], [], []),
    ("bad-quote", 'The rule: "notify the police within 24 hours" [1].', False, [1], [],
     ["notify the police within 24 hours"]),
    ("quote-in-uncited-passage", 'It says "right to erasure without undue delay" [1].', False, [1], [],
     ["right to erasure without undue delay"]),
]


@pytest.mark.parametrize(("name", "answer", "ok", "cited", "invalid", "bad"), CASES, ids=[c[0] for c in CASES])
def test_check(name, answer, ok, cited, invalid, bad):
    v = verify.check(answer, PASSAGES)
    assert (v.verified, v.cited, v.invalid_markers, v.bad_quotes) == (ok, cited, invalid, bad)
    assert (v.reason == "ok") == ok


def test_best_quote_is_verbatim_and_relevant():
    q = verify.best_quote(PASSAGES[0].text, "You have 72 hours to notify a breach.")
    assert q in PASSAGES[0].text
    assert "72 hours" in q
