"""Sentence boundaries: where quotes may start and stop (abbreviations, German dates, lists)."""

from __future__ import annotations

import pytest

from twinloop.foundation.tiny import tiny_tokenizer
from twinloop.serving.quotes import quotable
from twinloop.serving.sentences import points_back, spans, with_antecedent


def _split(text: str) -> list[str]:
    return [text[a:b] for a, b in spans(text)]


@pytest.mark.parametrize(("text", "expected"), [
    ("Nausea rose in the placebo group (45 vs. 23%, P=0.01). Next.",
     ["Nausea rose in the placebo group (45 vs. 23%, P=0.01).", "Next."]),
    ("It followed a final U.S. Treasury regulation. Then more.",
     ["It followed a final U.S. Treasury regulation.", "Then more."]),
    ("Wer nach § 33 Abs. 2 Satz 1 Nr. 1 nicht zu benachrichtigen ist. Zweiter Satz.",
     ["Wer nach § 33 Abs. 2 Satz 1 Nr. 1 nicht zu benachrichtigen ist.", "Zweiter Satz."]),
    ("Den Ländern steht ab dem 1. Juli 2009 ein Betrag zu. Das Nähere regelt ein Bundesgesetz.",
     ["Den Ländern steht ab dem 1. Juli 2009 ein Betrag zu.", "Das Nähere regelt ein Bundesgesetz."]),
    ("The interest result of €−119 million (2017/18: €−136 million). Done.",
     ["The interest result of €−119 million (2017/18: €−136 million).", "Done."]),
    ("Fines apply to: (a) the basic principles; (b) the rights of data subjects;",
     ["Fines apply to: (a) the basic principles;", "(b) the rights of data subjects;"]),
    ("The controller shall designate an officer where:\n(a) the processing is carried out",
     ["The controller shall designate an officer where:", "(a) the processing is carried out"]),
    ("Revenue rose in 2019. 2020 was different! Was it? Yes.",
     ["Revenue rose in 2019.", "2020 was different!", "Was it?", "Yes."]),
    ("See e.g. Art. 5 GDPR, i.e. the principles. Dr. Smith agreed.",
     ["See e.g. Art. 5 GDPR, i.e. the principles.", "Dr. Smith agreed."]),
    ("Sie muss bei ihrer Wahl das 35. Lebensjahr vollendet haben. Sie muss Kenntnisse haben.",
     ["Sie muss bei ihrer Wahl das 35. Lebensjahr vollendet haben.", "Sie muss Kenntnisse haben."]),
    ("Die Regel galt bis 2019. Die neue Regel gilt seit 2020.",
     ["Die Regel galt bis 2019.", "Die neue Regel gilt seit 2020."]),
    # A ";" inside brackets is part of the sentence; the second half holds what it says.
    ("Only 24 patients (12%) in the study group (versus 20% in control group; P = 0.01) had eventual evidence "
     "of biochemical failure. Next.",
     ["Only 24 patients (12%) in the study group (versus 20% in control group; P = 0.01) had eventual evidence "
      "of biochemical failure.", "Next."]),
    ("a) first item; b) second item (see; above", ["a) first item;", "b) second item (see; above"]),
    ("", []),
    ("   \n  ", []),
])
def test_spans(text, expected):
    assert _split(text) == expected


@pytest.mark.parametrize(("sentence", "back"), [
    ("It has been used in CCHF.", True),
    ("These charges relate to workforce reductions.", True),
    ("Diese Frist kann verlängert werden.", True),
    ("Itemised costs are listed below.", False),
    ("The controller shall act.", False),
])
def test_points_back(sentence, back):
    assert points_back(sentence) is back


def test_with_antecedent_joins_only_within_a_paragraph():
    text = "Ribavirin is an antiviral. It has been used in CCHF.\nIt is cheap."
    got = [text[a:b] for a, b in with_antecedent(text)]
    assert got == ["Ribavirin is an antiviral.", "Ribavirin is an antiviral. It has been used in CCHF.", "It is cheap."]


def test_a_quote_cannot_start_inside_an_abbreviation_or_at_a_pointing_back_sentence():
    tok = tiny_tokenizer()
    text = "Wer nach § 33 Abs. 2 handelt, zahlt. Ribavirin is an antiviral. It has been used in CCHF."
    p = quotable(tok, text)
    starts = {text[max(p.offsets[i][0], 0):].lstrip()[:8] for i in p.starts}
    assert any(s.startswith("Wer") for s in starts) and any(s.startswith("Ribavir") for s in starts)
    assert not any(s.startswith("2 handel") or s.startswith("It has") for s in starts)
