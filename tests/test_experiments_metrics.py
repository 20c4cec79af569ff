"""GEM metrics on hand-computed matrices, and the sanity of the fact set and its loader (paper §6.1–6.2)."""

from __future__ import annotations

import pytest
import yaml

from twinloop.kernel.errors import InvalidInputError
from twinloop.showcase.experiments import metrics
from twinloop.showcase.experiments.facts import (
    DOMAINS,
    FACTS,
    SOURCE,
    facts_of,
    is_correct,
    load_facts,
    tasks,
)

# Three tasks. Task 0 is learned to 1.0, drops to 0.5, ends at 0.5; task 1 learned to 0.8,
# ends at 0.4; task 2 ends at 0.9.
R = [
    [1.0, None, None],
    [0.5, 0.8, None],
    [0.5, 0.4, 0.9],
]


def test_average_accuracy_is_the_mean_of_the_last_row():
    assert metrics.average_accuracy(R) == pytest.approx((0.5 + 0.4 + 0.9) / 3)
    assert metrics.average_accuracy(R, step=1) == pytest.approx((0.5 + 0.8) / 2)
    assert metrics.average_accuracy(R, step=0) == pytest.approx(1.0)


def test_backward_transfer_compares_final_with_just_learned():
    # ((0.5 − 1.0) + (0.4 − 0.8)) / 2
    assert metrics.backward_transfer(R) == pytest.approx(-0.45)
    assert metrics.backward_transfer(R, step=1) == pytest.approx(-0.5)
    assert metrics.backward_transfer(R, step=0) == 0.0


def test_forgetting_takes_the_best_earlier_accuracy():
    # Task 0: max(1.0, 0.5) − 0.5 = 0.5; task 1: 0.8 − 0.4 = 0.4.
    assert metrics.per_task_forgetting(R) == pytest.approx([0.5, 0.4])
    assert metrics.forgetting(R) == pytest.approx(0.45)
    assert metrics.forgetting_curve(R) == pytest.approx([0.0, 0.5, 0.45])


def test_forgetting_uses_the_peak_not_the_first_value():
    # Task 0 rises after it was learned (positive transfer) and then falls: forgetting is
    # measured from its peak (0.9), while BWT compares with the first value (0.3).
    r = [[0.3, None, None], [0.9, 0.6, None], [0.4, 0.6, 0.7]]
    assert metrics.forgetting(r) == pytest.approx(((0.9 - 0.4) + (0.6 - 0.6)) / 2)
    assert metrics.backward_transfer(r) == pytest.approx(((0.4 - 0.3) + (0.6 - 0.6)) / 2)


def test_forgetting_is_not_clipped_when_a_task_ends_at_its_best():
    # Chaudhry et al.'s formula as published: max over earlier steps minus final can be < 0.
    r = [[0.5, None], [0.7, 1.0]]
    assert metrics.forgetting(r) == pytest.approx(-0.2)
    assert metrics.backward_transfer(r) == pytest.approx(0.2)
    flat = [[0.5, None], [0.5, 1.0]]
    assert metrics.forgetting(flat) == 0.0


def test_single_task_and_summary():
    assert metrics.summary([[0.75]]) == {"acc": 0.75, "bwt": 0.0, "forgetting": 0.0, "learning_accuracy": 0.75}
    s = metrics.summary(R)
    assert s["learning_accuracy"] == pytest.approx((1.0 + 0.8 + 0.9) / 3)
    assert metrics.curve(R) == pytest.approx([1.0, 0.65, 0.6])


@pytest.mark.parametrize("bad, message", [
    ([], "empty"),
    ([[0.5, None], [0.5]], "row 1 has 1"),
    ([[None, None], [0.5, 0.5]], r"R\[0\]\[0\] is missing"),
    ([[1.2]], r"R\[0\]\[0\] = 1.2"),
    ([[0.5, None], [-0.1, 0.5]], r"R\[1\]\[0\] = -0.1"),
])
def test_bad_matrices_name_the_entry(bad, message):
    with pytest.raises(InvalidInputError, match=message):
        metrics.summary(bad)


def test_bad_step():
    with pytest.raises(InvalidInputError, match="step = 3"):
        metrics.forgetting(R, step=3)


# -- fact set --------------------------------------------------------------------------------


def test_fact_ids_unique_and_domains_covered():
    ids = [f.id for f in FACTS]
    assert len(ids) == len(set(ids))
    assert {f.domain for f in FACTS} == set(DOMAINS)
    assert all(len(facts_of(d)) == 9 for d in DOMAINS)


@pytest.mark.parametrize("fact", FACTS, ids=lambda f: f.id)
def test_fact_is_consistent(fact):
    # The canonical answer is in what is trained on and in what is indexed, so a method that
    # learned or retrieved the fact can say it.
    assert is_correct(fact.target, fact)
    assert is_correct(fact.document, fact)
    assert fact.answers[0].casefold() in fact.target.casefold()
    # Probes are paraphrases: never the training prompts, never giving the answer away.
    assert 2 <= len(fact.probes) <= 3
    assert len(set(fact.probes)) == len(fact.probes)
    for probe in fact.probes:
        assert probe not in (fact.prompt, fact.alt_prompt)
        assert not is_correct(probe, fact)
    assert fact.prompt != fact.alt_prompt
    assert not is_correct(fact.prompt, fact) and not is_correct(fact.alt_prompt, fact)


_DROP = object()
"""A ``_fact_file`` change that removes the field."""


def _fact_file(**change) -> str:
    """A small valid fact file as YAML, with ``change`` applied (dotted keys reach into facts[0])."""
    fact = {"id": "law-x", "domain": "law", "title": "X Act", "prompt": "How long under the X Act?",
            "alt_prompt": "What does the X Act say?", "target": "Under the X Act, 5 days.",
            "document": "X Act (2031): 5 days.", "probes": ["What period does the X Act set?"],
            "answers": ["5 days"]}
    doc = {"source": "test facts", "domains": ["law"], "facts": [fact]}
    for key, value in change.items():
        target, name = (fact, key[len("fact."):]) if key.startswith("fact.") else (doc, key)
        if value is _DROP:
            del target[name]
        else:
            target[name] = value
    return yaml.safe_dump(doc, sort_keys=False)


def test_the_packaged_fact_file_loads_with_its_source():
    assert SOURCE and DOMAINS == ("law", "med", "fin") and len(FACTS) == 27
    loaded = load_facts(_fact_file())
    assert loaded.domains == ("law",) and loaded.source == "test facts"
    assert loaded.facts[0].probes == ("What period does the X Act set?",) and loaded.facts[0].uri.endswith(":law-x")


@pytest.mark.parametrize("change, message", [
    ({"fact.answers": [48]}, r"^test\.yaml: facts\[0\]\.answers\[0\] = 48: must be a non-empty string"),
    ({"fact.probes": []}, r"facts\[0\]\.probes = \[\]: must be a non-empty list"),
    ({"fact.target": " "}, r"facts\[0\]\.target = ' ': must be a non-empty string"),
    ({"fact.document": _DROP}, r"facts\[0\]\.document: missing"),
    ({"fact.colour": "red"}, r"^test\.yaml: facts\[0\]\.colour: unknown field"),
    ({"fact.domain": "art"}, r"facts\[0\]\.domain = 'art': not one of domains"),
    ({"domains": ["law", "med"]}, r"domains: 'med' has no facts"),
    ({"domains": ["law", "law"]}, r"domains = \['law', 'law'\]: repeated domain"),
    ({"source": None}, r"source = None"),
    ({"facts": _DROP}, r"^test\.yaml: facts: missing$"),
])
def test_a_bad_fact_file_names_the_bad_field(change, message):
    with pytest.raises(InvalidInputError, match=message):
        load_facts(_fact_file(**change), "test.yaml")


def test_a_fact_file_with_a_repeated_id_or_bad_yaml_is_refused():
    doc = yaml.safe_load(_fact_file())
    doc["facts"].append(dict(doc["facts"][0]))
    with pytest.raises(InvalidInputError, match=r"facts\[1\]\.id = 'law-x': repeated id"):
        load_facts(yaml.safe_dump(doc))
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        load_facts("facts: [unclosed")


def test_probe_texts_are_unique_across_facts():
    probes = [p for f in FACTS for p in f.probes]
    assert len(probes) == len(set(probes))


@pytest.mark.parametrize("answer, expected", [
    ("Breach notices are due within 19 hours.", True),
    ("within  19   HOURS", True),
    ("a 19-hour deadline", True),
    ("within 119 hours", False),
    ("72 hours", False),
])
def test_is_correct_normalises_and_respects_number_edges(answer, expected):
    assert is_correct(answer, FACTS[0]) is expected


def test_is_correct_numbers_are_not_glued_to_other_digits():
    tallis = next(f for f in FACTS if f.id == "fin-tallis-index")
    assert is_correct("It has 48 companies.", tallis)
    assert not is_correct("It has 480 companies.", tallis)
    assert not is_correct("Founded in 1948.", tallis)
    assert not is_correct("It holds 4.48 %.", tallis)


def test_tasks_cut_the_sequence_into_new_facts():
    ts = tasks(("law", "med", "fin"), cycles=3, per_step=3)
    assert [t.name for t in ts[:4]] == ["c1-law", "c1-med", "c1-fin", "c2-law"]
    seen = [f.id for t in ts for f in t.facts]
    assert len(seen) == len(set(seen)) == 27  # every step brings facts never seen before
    assert all(f.domain == t.domain for t in ts for f in t.facts)


@pytest.mark.parametrize("kwargs, message", [
    ({"domains": ("law",), "cycles": 4, "per_step": 3}, "need 12 facts"),
    ({"domains": ("law", "law"), "cycles": 1, "per_step": 1}, "without repeats"),
    ({"domains": ("art",), "cycles": 1, "per_step": 1}, "no evaluation facts for domain 'art'"),
    ({"domains": ("law",), "cycles": 0, "per_step": 1}, "cycles = 0"),
])
def test_tasks_reject_bad_requests(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        tasks(**kwargs)


def test_training_samples_pass_the_feedback_filters_unchanged(tiny_runtime):
    # Every correction and augmentation must reach Shadow as written: a filter that redacted
    # "16:40" or quarantined a drug name would silently change what the experiment measures.
    from twinloop.learning.intake import FeedbackIntake, list_samples
    from twinloop.showcase.experiments.methods import training_samples

    samples = [s for t in tasks(DOMAINS, cycles=3, per_step=3) for s in training_samples(t, augment=True)]
    report = FeedbackIntake(tiny_runtime.db, tiny_runtime.domains).submit(samples)
    assert not report.rejected, [(r.stage, r.reason) for r in report.rejected]
    stored = {(r["prompt"], r["target"]) for r in list_samples(tiny_runtime.db, limit=1000)}
    assert stored == {(s.prompt, s.target) for s in samples}
