"""Verbatim quotes by construction: a per-row decoding constraint over the retrieved passages.

A small model cannot be trusted to copy a number or a date, so in domains that require
citations it never writes free text at all (docs/DESIGN.md "Serving", "No source, no
claim"). Its output is a list of claims, one per line, each ``[n]`` followed by a span of
passage ``n`` copied token for token:

    [2] The controller shall provide information on action taken ... within one month of receipt of the request.

:class:`QuoteConstraint` is a small state machine over one row's generated tokens. At each
step it names the tokens the row may produce; everything else gets −inf before sampling, so
whatever the model's logits prefer, the row can only

- open a claim with ``[`` and the number of a passage that was retrieved (a marker can only
  name a retrieved passage),
- start the quote at the beginning of one of that passage's sentences,
- continue with a token that extends the quote inside that passage — the set of positions
  where the quote so far occurs is kept, so the next token must be one that follows it there,
- end the claim (newline) only at a sentence end of the passage, then open another claim or
  stop (end of sequence).

The constraint works on the passage's own token ids, so decoding a quote gives back the
passage's text exactly; :func:`parse_claims` maps each quote back to character offsets in the
stored passage, which is what the answer cites (``exact_quote`` is then a substring of the
stored passage by construction, not by checking).

Passages are tokenised with a leading space, so every sentence start is a word token with its
space (``ĠThe``): the marker ``[n]`` is followed directly by the quote.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from twinloop.serving.sentences import spans, with_antecedent

MAX_CLAIMS = 2
"""Claims per answer: enough for a rule and its exception; more is a wall of quotes (and
tokens a 2-core CPU spends copying text the user can read in the passage)."""
MIN_QUOTE_TOKENS = 4
"""A quote shorter than this is a fragment, not a statement (a claim may end only after it)."""
MAX_PASSAGES = 9
"""Passages a marker can name: ``[1]``–``[9]``, each one token."""



@dataclass(frozen=True)
class QuotablePassage:
    """One retrieved passage as the constraint sees it.

    Attributes:
        text: The stored passage text (what ``exact_quote`` is a substring of).
        ids: Token ids of ``" " + text``.
        offsets: ``(start, end)`` character offsets of each token in ``text`` (the leading
            space removed: a token's span may start at -1 for that space).
        starts: Token positions where a sentence begins.
        ends: Token positions *after* which a sentence has ended (a claim may stop there).
    """

    text: str
    ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]
    starts: frozenset[int]
    ends: frozenset[int]


def quotable(tokenizer: Any, text: str) -> QuotablePassage:
    """Tokenise a passage for quoting and mark its sentence boundaries."""
    enc = tokenizer(" " + text, add_special_tokens=False, return_offsets_mapping=True)
    ids = tuple(int(i) for i in enc["input_ids"])
    offsets = tuple((a - 1, b - 1) for a, b in enc["offset_mapping"])  # (start, end) in ``text``
    found = spans(text)
    # A quote may start where a sentence starts, unless that sentence points back ("It…"):
    # then only with the sentence before it, so the quote says what "it" is.
    sentence_starts = {a for a, _ in with_antecedent(text, found)}
    sentence_ends = {b for _, b in found}
    starts, ends = set(), set()
    for i, (a, b) in enumerate(offsets):
        span = text[max(a, 0):b]
        if not span.strip():
            continue
        word_start = max(a, 0) + len(span) - len(span.lstrip())
        word_end = max(a, 0) + len(span.rstrip())
        if word_start in sentence_starts:
            starts.add(i)
        if word_end in sentence_ends:
            ends.add(i + 1)
    return QuotablePassage(text, ids, offsets, frozenset(starts), frozenset(ends))


@dataclass(frozen=True)
class Grammar:
    """The literal tokens of the claim format, for one tokenizer."""

    open: tuple[int, ...]
    """``[``"""
    numbers: tuple[int, ...]
    """The single token of ``1``..``9``."""
    close: tuple[int, ...]
    """``]``"""
    newline: int
    eos: int

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> Grammar:
        def enc(s: str) -> tuple[int, ...]:
            return tuple(tokenizer(s, add_special_tokens=False)["input_ids"])

        numbers = []
        for n in range(1, MAX_PASSAGES + 1):
            ids = enc(str(n))
            if len(ids) != 1:
                raise ValueError(f"tokenizer splits {n!r} into {len(ids)} tokens; markers need one")
            numbers.append(ids[0])
        newline = enc("\n")
        if len(newline) != 1:
            raise ValueError("tokenizer has no single newline token")
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("tokenizer has no end-of-sequence token")
        return cls(enc("["), tuple(numbers), enc("]"), newline[0], int(eos))


@dataclass
class QuoteConstraint:
    """Allowed next tokens for one row, from its generated tokens so far (see module docstring).

    Stateful and fed one token at a time through :meth:`advance`; :meth:`allowed` is what
    the row may produce next. Works on any row of any batch: the engine holds one per row
    (None for unconstrained rows), so constrained and free rows, of any adapters, share a
    batch.

    Args:
        passages: The request's retrieved passages, numbered from 1 in this order.
        grammar: The format's literal tokens for this tokenizer.
        prior: Optional per-passage, per-sentence-start bonus added to the logits of the
            quote's first token (a relevance prior from retrieval); ``{(n, pos): bonus}``.
        max_claims: Claims per answer.
    """

    passages: Sequence[QuotablePassage]
    grammar: Grammar
    prior: dict[tuple[int, int], float] = field(default_factory=dict)
    max_claims: int = MAX_CLAIMS
    state: str = "open"
    forced: list[int] = field(default_factory=list)
    passage: int = 0
    matches: list[int] = field(default_factory=list)
    quote_len: int = 0
    claims: int = 0
    used: set[tuple[int, int]] = field(default_factory=set)
    """(passage, sentence-start position) of every quote made: a sentence is quoted once."""

    def __post_init__(self) -> None:
        self.passages = list(self.passages)[:MAX_PASSAGES]
        self.forced = list(self.grammar.open)

    # -- what may come next ------------------------------------------------------------------

    def allowed(self) -> dict[int, float]:
        """Token id → logit bonus (0.0 for most) of every token the row may produce next."""
        g = self.grammar
        if self.forced:
            return {self.forced[0]: 0.0}
        if self.state == "number":
            return {g.numbers[n - 1]: 0.0 for n in range(1, len(self.passages) + 1)
                    if any((n, s) not in self.used for s in self.passages[n - 1].starts)} or {g.eos: 0.0}
        if self.state == "quote_start":
            p = self.passages[self.passage - 1]
            out: dict[int, float] = {}
            for pos in p.starts:
                if (self.passage, pos) in self.used:
                    continue
                bonus = self.prior.get((self.passage, pos), 0.0)
                tok = p.ids[pos]
                out[tok] = max(out.get(tok, float("-inf")), bonus)
            return out
        if self.state == "quote":
            p = self.passages[self.passage - 1]
            out = {p.ids[pos]: 0.0 for pos in self.matches if pos < len(p.ids)}
            if self.quote_len >= MIN_QUOTE_TOKENS and any(pos in p.ends for pos in self.matches):
                out[g.newline] = 0.0
                if self.claims + 1 >= self.max_claims:
                    out = {k: v for k, v in out.items() if k != g.newline} | {g.eos: 0.0}
            return out
        if self.state == "after":
            return {g.newline: 0.0, g.eos: 0.0} if self.claims < self.max_claims else {g.eos: 0.0}
        return {g.eos: 0.0}

    # -- taking a token ----------------------------------------------------------------------

    def advance(self, token: int) -> None:
        """Take the row's next token (one that :meth:`allowed` permitted)."""
        g = self.grammar
        if self.forced:
            self.forced.pop(0)
            if not self.forced:
                self.state = {"open": "number", "close": "quote_start"}.get(self.state, self.state)
            return
        if self.state == "number":
            if token not in g.numbers:  # every sentence quoted already: the row ends
                self.state = "done"
                return
            self.passage = g.numbers.index(token) + 1
            self.state = "close"
            self.forced = list(g.close)
            if not self.forced:
                self.state = "quote_start"
            return
        if self.state == "quote_start":
            p = self.passages[self.passage - 1]
            self.matches = sorted(pos + 1 for pos in p.starts
                                  if p.ids[pos] == token and (self.passage, pos) not in self.used)
            self.quote_len = 1
            self.state = "quote"
            return
        if self.state == "quote":
            if token in (g.newline, g.eos):
                self.used.update((self.passage, pos - self.quote_len) for pos in self.matches)
                self.claims += 1
                if token == g.eos or self.claims >= self.max_claims:
                    self.state = "done"
                else:
                    self.state = "open"
                    self.forced = list(g.open)
                return
            p = self.passages[self.passage - 1]
            self.matches = [pos + 1 for pos in self.matches if pos < len(p.ids) and p.ids[pos] == token]
            self.quote_len += 1
            return
        if self.state == "after" and token == g.newline:
            self.state = "open"
            self.forced = list(g.open)
            return
        self.state = "done"

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` (vocab,) with every token but the allowed ones set to −inf (in place)."""
        allowed = self.allowed()
        idx = torch.tensor(list(allowed), dtype=torch.long, device=scores.device)
        kept = scores[idx] + torch.tensor(list(allowed.values()), dtype=scores.dtype, device=scores.device)
        scores.fill_(float("-inf"))  # in place: no (vocab,) allocation per row and step
        scores[idx] = kept
        return scores


@dataclass(frozen=True)
class Claim:
    """One quoted claim: passage number and the quote's character span in its stored text."""

    n: int
    start: int
    end: int
    text: str
    complete: bool
    """Ended at a sentence end (False: cut by the token limit)."""


def parse_claims(tokens: Sequence[int], passages: Sequence[QuotablePassage], grammar: Grammar) -> list[Claim]:
    """The claims in a constrained row's tokens, each mapped back to its passage's text.

    Replays the tokens through a fresh :class:`QuoteConstraint`, so the result does not
    depend on the engine having kept any state; the quote's span is taken from the token
    offsets of its first matching occurrence, so ``claim.text`` is ``passage.text[start:end]``.
    """
    c = QuoteConstraint(passages, grammar)
    claims: list[Claim] = []
    count = 0

    def close(complete: bool) -> None:
        p = passages[c.passage - 1]
        if not c.matches:
            return
        end_tok = next((pos for pos in c.matches if pos in p.ends), c.matches[0])
        start_tok = end_tok - count
        a = max(0, p.offsets[start_tok][0])
        b = p.offsets[end_tok - 1][1]
        raw = p.text[a:b]
        lead = len(raw) - len(raw.lstrip())
        a += lead
        b = a + len(p.text[a:b].rstrip())
        if b > a:
            claims.append(Claim(c.passage, a, b, p.text[a:b], complete))

    for tok in tokens:
        if c.state == "done":
            break
        if c.state == "quote" and tok in (grammar.newline, grammar.eos):
            close(True)
            c.advance(tok)
            continue
        allowed = c.allowed()
        if tok not in allowed:
            break  # an unconstrained continuation (should not happen): stop reading
        before = c.state
        c.advance(tok)
        if before == "quote_start":
            count = 1
        elif before == "quote":
            count += 1
    if c.state == "quote" and count:
        close(False)
    return claims
