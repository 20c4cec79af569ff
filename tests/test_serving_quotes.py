"""Verbatim quotes by construction: whatever the logits say, a constrained row can only write
``[n]`` for a retrieved passage followed by a span of that passage, ending at a sentence end."""

from __future__ import annotations

import random

import pytest
import torch

from twinloop.foundation.tiny import tiny_tokenizer
from twinloop.serving.quotes import (
    MAX_CLAIMS,
    Grammar,
    QuoteConstraint,
    parse_claims,
    quotable,
)

PASSAGES = [
    "The controller shall act on a request within one month of receipt. That period may be extended by "
    "two further months where necessary.",
    "Fines of up to EUR 20 000 000, or 4 % of the total worldwide annual turnover, may be imposed.\n"
    "Member States may lay down rules on other penalties; they shall notify those rules by 25 May 2018.",
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _run(tok, passages, pick, steps=400, prior=None):
    """Drive a constraint with ``pick(allowed, state) -> token`` (an adversarial model)."""
    g = Grammar.for_tokenizer(tok)
    qs = [quotable(tok, p) for p in passages]
    c = QuoteConstraint(qs, g, prior=prior or {})
    out: list[int] = []
    for _ in range(steps):
        if c.state == "done":
            break
        allowed = c.allowed()
        assert allowed, f"nothing allowed in state {c.state}"
        token = pick(allowed, c)
        assert token in allowed
        out.append(token)
        c.advance(token)
    return out, parse_claims(out, qs, g), qs, g


@pytest.mark.parametrize("seed", range(12))
def test_random_walks_only_ever_quote_the_passages(tok, seed):
    rng = random.Random(seed)
    out, claims, qs, g = _run(tok, PASSAGES, lambda allowed, c: rng.choice(sorted(allowed)))
    text = tok.decode(out)
    assert claims, text
    for claim in claims:
        assert 1 <= claim.n <= len(PASSAGES)
        assert PASSAGES[claim.n - 1][claim.start:claim.end] == claim.text  # a substring, by construction
        assert claim.text in text
    assert len(claims) <= MAX_CLAIMS


def test_logits_pushing_elsewhere_cannot_leave_the_passage(tok):
    """The model 'wants' to write a different number: the mask leaves it no way to."""
    g = Grammar.for_tokenizer(tok)
    qs = [quotable(tok, p) for p in PASSAGES]
    c = QuoteConstraint(qs, g)
    vocab = len(tok)
    wanted = tok("within 3 days", add_special_tokens=False)["input_ids"]
    out: list[int] = []
    for step in range(300):
        if c.state == "done":
            break
        scores = torch.zeros(vocab)
        scores[wanted[step % len(wanted)]] = 100.0  # a strong preference for the invented text
        scores[g.eos] = -5.0
        c.mask(scores)
        token = int(torch.argmax(scores))
        out.append(token)
        c.advance(token)
    claims = parse_claims(out, qs, g)
    assert claims and all(PASSAGES[x.n - 1][x.start:x.end] == x.text for x in claims)
    assert "3 days" not in tok.decode(out)


def test_markers_only_name_retrieved_passages(tok):
    g = Grammar.for_tokenizer(tok)
    c = QuoteConstraint([quotable(tok, p) for p in PASSAGES], g)
    c.advance(c.allowed().popitem()[0])  # "["
    numbers = set(c.allowed())
    assert numbers == {g.numbers[0], g.numbers[1]}  # [1] and [2] only: two passages were retrieved


def test_a_claim_ends_only_at_a_sentence_end(tok):
    g = Grammar.for_tokenizer(tok)
    ends_seen = []

    def pick(allowed, c):
        if c.state == "quote" and g.newline in allowed:
            ends_seen.append(tok.decode(c.passages[0].ids[max(c.matches) - 1:max(c.matches)]))
            return g.newline
        return sorted(k for k in allowed if k != g.newline)[0]

    out, claims, _, _ = _run(tok, [PASSAGES[0]], pick)
    assert claims and all(x.text.endswith(".") for x in claims)
    assert ends_seen and all(e.endswith(".") for e in ends_seen)


def test_quotes_start_at_sentence_and_clause_starts(tok):
    qs = quotable(tok, PASSAGES[1])
    starts = {tok.decode(qs.ids[i:i + 3]).strip() for i in qs.starts}
    # "...; they shall notify": a clause that points back is quoted only with what it points to.
    assert starts == {"Fin", "Mem"}
    clause = quotable(tok, "Member States may lay down rules; each Member State shall notify them.")
    assert {tok.decode(clause.ids[i:i + 3]).strip()[:3] for i in clause.starts} == {"Mem", "eac"}


def test_the_same_sentence_is_not_quoted_twice(tok):
    g = Grammar.for_tokenizer(tok)

    def pick(allowed, c):  # always the lowest id, and a new claim whenever possible
        if g.newline in allowed:
            return g.newline
        return sorted(allowed)[0]

    out, claims, _, _ = _run(tok, PASSAGES, pick)
    spans = [(x.n, x.start) for x in claims]
    assert len(spans) == len(set(spans))


def test_prior_bonus_steers_the_first_token(tok):
    qs = [quotable(tok, PASSAGES[0])]
    g = Grammar.for_tokenizer(tok)
    second = sorted(qs[0].starts)[1]
    c = QuoteConstraint(qs, g, prior={(1, second): 50.0})
    for _ in range(4):  # "[", "1", "]"
        if c.state == "quote_start":
            break
        c.advance(next(iter(c.allowed())))
    scores = torch.zeros(len(tok))
    c.mask(scores)
    assert int(torch.argmax(scores)) == qs[0].ids[second]


def test_parse_claims_handles_a_cut_off_quote(tok):
    def pick(allowed, c):
        return sorted(k for k in allowed if k not in (Grammar.for_tokenizer(tok).newline,))[0]

    out, claims, qs, g = _run(tok, PASSAGES, pick, steps=20)
    assert len(claims) == 1 and not claims[0].complete
    assert PASSAGES[claims[0].n - 1][claims[0].start:claims[0].end] == claims[0].text
