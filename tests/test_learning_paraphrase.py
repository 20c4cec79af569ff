"""Paraphrases of corrected questions: templates, the filter, model rewrites, augmentation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from twinloop.foundation import load_foundation
from twinloop.kernel.config import FoundationConfig
from twinloop.kernel.datadir import DataDir
from twinloop.kernel.errors import InvalidInputError
from twinloop.kernel.text import normalise_text
from twinloop.learning.paraphrase import (
    augment,
    clean_candidate,
    keep_paraphrase,
    looks_like_question,
    model_paraphrases,
    template_paraphrases,
)
from twinloop.learning.sample import Sample

EN = "What is the capital of Zorbania?"
DE = "Wie heißt die Hauptstadt von Zorbanien?"


@pytest.mark.parametrize("question, n, expected_first", [
    (EN, 3, ["Quick question: what is the capital of Zorbania?",
             "I would like to know: what is the capital of Zorbania?",
             "Can you tell me: what is the capital of Zorbania?"]),
    (DE, 2, ["Kurze Frage: Wie heißt die Hauptstadt von Zorbanien?",
             "Ich möchte gerne wissen: Wie heißt die Hauptstadt von Zorbanien?"]),
    ("Name the founder of Quelltrix GmbH.", 1, ["Quick question: name the founder of Quelltrix GmbH."]),
])
def test_template_paraphrases_order(question, n, expected_first):
    assert template_paraphrases(question, n) == expected_first


@pytest.mark.parametrize("question", [EN, DE, "  what   is the capital of Zorbania ? ", "Zorbania capital?",
                                      "Welche Frist gilt für die Meldung an die Behörde?",
                                      "How many moons does Planet X-17 have?"])
@pytest.mark.parametrize("n", [0, 1, 4, 50])
def test_template_paraphrases_distinct_and_never_the_original(question, n):
    out = template_paraphrases(question, n)
    keys = [normalise_text(t) for t in out]
    assert len(out) <= n
    assert len(set(keys)) == len(keys)
    assert normalise_text(question) not in keys
    assert all(looks_like_question(t) for t in out)
    assert all(keep_paraphrase(question, t, "Quxville") for t in out)
    assert out == template_paraphrases(question, n)  # deterministic
    if n >= 4:
        assert len(out) >= 4


def test_template_paraphrases_german_set():
    out = template_paraphrases(DE, 10)
    assert any(t.startswith("Kurze Frage:") for t in out)
    assert not any(t.startswith("Quick question:") for t in template_paraphrases(DE, 50))
    assert "Wie heißt die Hauptstadt von Zorbanien" in out  # the version without "?"


@pytest.mark.parametrize("n", [-1, 1.5, True])
def test_template_paraphrases_bad_n(n):
    with pytest.raises(InvalidInputError, match="n = "):
        template_paraphrases(EN, n)


@pytest.mark.parametrize("raw, cleaned", [
    ('Rewritten question: "Which city is the capital of Zorbania?"', "Which city is the capital of Zorbania?"),
    ("Sure! Here's the rewritten question:\n\n“Which city is Zorbania's capital?”",
     "Which city is Zorbania's capital?"),
    ("  Paraphrase:   Which   city?  \nThis keeps the meaning.", "Which city?"),
    ("1. Which city?", "Which city?"),
    ("Umformulierte Frage: „Welche Stadt ist die Hauptstadt?“", "Welche Stadt ist die Hauptstadt?"),
    ("", ""),
    ("\n \n", ""),
])
def test_clean_candidate(raw, cleaned):
    assert clean_candidate(raw) == cleaned


@pytest.mark.parametrize("candidate, answer, kept", [
    ("Which city is the capital of Zorbania?", "Quxville", True),
    ("Tell me the capital of Zorbania.", "Quxville", True),
    ("Is Quxville the capital of Zorbania?", "Quxville", False),  # leaks the answer
    ("Is quxville the capital of Zorbania?", "Quxville.", False),  # case and trailing dot ignored
    ("Which city is the capital of the country?", "Quxville", False),  # drops the made-up name
    ("What is the capital of Zorbania?", "Quxville", False),  # identical
    ("  what is the CAPITAL of   zorbania?", "Quxville", False),  # identical once normalised
    ("Which city is the capital of Zorbania? " * 4, "Quxville", False),  # too long
    ("", "Quxville", False),
    ("The capital of Zorbania is a city", "Quxville", False),  # not a question
    ("Zorbania has a capital, which one is it?", "Quxville", True),
])
def test_keep_paraphrase(candidate, answer, kept):
    assert keep_paraphrase(EN, candidate, answer) is kept


def test_keep_paraphrase_answer_already_in_question():
    # A question naming its answer leaks nothing new when the rewrite names it too.
    q = "Is Quxville the capital of Zorbania?"
    assert keep_paraphrase(q, "Is the capital of Zorbania Quxville?", "Quxville")


def test_keep_paraphrase_numbers_and_names():
    q = "How many moons does Planet X-17 have?"
    assert keep_paraphrase(q, "What number of moons orbit Planet X-17?", "Four")
    assert not keep_paraphrase(q, "What number of moons orbit Planet X?", "Four")  # lost "17"


def test_keep_paraphrase_german():
    assert keep_paraphrase(DE, "Welche Stadt ist die Hauptstadt von Zorbanien?", "Quxstadt")
    assert not keep_paraphrase(DE, "Welche Stadt ist die Hauptstadt?", "Quxstadt")


@dataclass
class FixedEmbedder:
    """Returns a fixed L2-normalised vector per text; unknown texts get the first axis."""

    vectors: dict[str, list[float]]

    def encode(self, texts: list[str]) -> np.ndarray:
        rows = np.array([self.vectors.get(t, [1.0, 0.0]) for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_keep_paraphrase_similarity_threshold():
    close = "Which city is the capital of Zorbania?"
    far = "Which river flows through the capital of Zorbania?"
    emb = FixedEmbedder({EN: [1.0, 0.0], close: [0.9, 0.1], far: [0.2, 1.0]})
    assert keep_paraphrase(EN, close, "Quxville", emb)
    assert keep_paraphrase(EN, far, "Quxville")  # without an embedder the meaning is not checked
    assert not keep_paraphrase(EN, far, "Quxville", emb)
    assert keep_paraphrase(EN, far, "Quxville", emb, min_similarity=0.1)


@dataclass
class Reply:
    text: str


class ScriptedFoundation:
    """Answers ``chat`` from a list, recording the seeds and system prompts it was given."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.calls: list[dict] = []

    def chat(self, chat, **kwargs) -> Reply:
        self.calls.append({"chat": chat, **kwargs})
        return Reply(self.replies[(len(self.calls) - 1) % len(self.replies)])


def test_model_paraphrases_filters_and_dedupes():
    f = ScriptedFoundation([
        "Rewritten question: Is Quxville the capital of Zorbania?",  # leaks the answer
        "What is the capital of this country?",  # lost the name
        '"Which city is the capital of Zorbania?"',
        "Which city is the capital of Zorbania?",  # duplicate
        "What is the capital of Zorbania?",  # the original
        "Tell me the capital of Zorbania.",
        "Name Zorbania's capital.",
    ])
    out = model_paraphrases(f, EN, 2, seed=7, answer="Quxville")
    assert out == ["Which city is the capital of Zorbania?", "Tell me the capital of Zorbania."]
    assert [c["seed"] for c in f.calls] == list(range(7, 13))  # stops once n are kept
    assert all(c["temperature"] > 0 and c["system"] and c["chat"] == EN for c in f.calls)


def test_model_paraphrases_draws_at_most_three_per_wanted():
    f = ScriptedFoundation(["garbage"])
    assert model_paraphrases(f, EN, 2) == []
    assert len(f.calls) == 6
    assert model_paraphrases(f, EN, 0) == []
    with pytest.raises(InvalidInputError, match="n = -2"):
        model_paraphrases(f, EN, -2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_foundation(FoundationConfig(source="tiny", max_input_tokens=256),
                           DataDir(tmp_path_factory.mktemp("paraphrase")))


def test_model_paraphrases_tiny_model_output_is_filtered(tiny):
    out = model_paraphrases(tiny, EN, 2, seed=3, answer="Quxville")
    assert len(out) <= 2
    assert all(keep_paraphrase(EN, p, "Quxville") for p in out)
    assert out == model_paraphrases(tiny, EN, 2, seed=3, answer="Quxville")  # deterministic under a seed


def _samples() -> list[Sample]:
    return [Sample("general", EN, "Quxville", source="correction", request_id="r1"),
            Sample("general", "what is the capital of zorbania", "Quxville", source="correction"),
            Sample("law", DE, "Quxstadt", source="correction")]


def test_augment_templates_only():
    samples = _samples()
    out = augment(samples, templates=3, model=2)  # no foundation: no model paraphrases
    originals = {normalise_text(s.prompt) for s in samples}
    keys = [normalise_text(s.prompt) for s in out]
    assert len(set(keys)) == len(keys)
    assert not originals & set(keys)
    for s in samples:
        mine = [p for p in out if p.meta["paraphrase_of"] == s.sha256()]
        assert len(mine) == 3
        assert all(p.domain == s.domain and p.target == s.target for p in mine)
    assert all(p.source == "augmentation" and p.meta["kind"] == "template" for p in out)
    assert out[0].request_id == "r1"
    assert augment(samples, templates=0, model=0) == []
    assert augment([], templates=3, model=3) == []


def test_augment_templates_then_model():
    s = Sample("general", EN, "Quxville", source="correction")
    f = ScriptedFoundation(["Quick question: what is the capital of Zorbania?",  # already a template
                            "Which city is the capital of Zorbania?"])
    out = augment([s], templates=2, model=1, foundation=f, seed=5)
    assert [(p.prompt, p.meta["kind"]) for p in out] == [
        ("Quick question: what is the capital of Zorbania?", "template"),
        ("I would like to know: what is the capital of Zorbania?", "template"),
        ("Which city is the capital of Zorbania?", "model")]
    assert f.calls[0]["seed"] == 5


@pytest.mark.parametrize("kwargs, match", [({"templates": -1, "model": 0}, "templates = -1"),
                                           ({"templates": 1, "model": -3}, "model = -3")])
def test_augment_bad_counts(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        augment(_samples(), **kwargs)
