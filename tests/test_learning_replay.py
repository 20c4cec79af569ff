"""Prioritised replay buffers (paper §4.4)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from twinloop.kernel.config import ReplayConfig
from twinloop.kernel.db import Database
from twinloop.kernel.errors import InvalidInputError
from twinloop.learning.replay import BetaSchedule, ReplayBuffer


@pytest.fixture
def db(tmp_path):
    return Database(tmp_path / "meta.db")


def buffer(db, **kw) -> ReplayBuffer:
    return ReplayBuffer(db, ReplayConfig(**kw))


def test_new_items_get_max_priority(db):
    buf = buffer(db)
    ids = buf.add("law", [1, 2, {"prompt": "q", "target": "a"}])
    assert [it.priority for it in buf.items("law")] == [1.0, 1.0, 1.0]  # empty buffer: p = 1
    buf.update_priorities("law", ids[:2], [3.0, 0.5])
    new = buf.add("law", [4])[0]
    assert {it.item_id: it.priority for it in buf.items("law")}[new] == pytest.approx(3.0 + 0.01)


def test_payload_items_round_trip_and_dedupe(db):
    buf = buffer(db)
    a = buf.add("med", [{"prompt": "What is X?", "target": "Y"}])
    b = buf.add("med", [{"target": "Y", "prompt": "What is X?"}, 7, 7])
    assert b[0] == a[0] and buf.size("med") == 2
    item = buf.items("med")[0]
    assert (item.prompt, item.target, item.sample_id) == ("What is X?", "Y", None)
    assert buf.items("med")[1].sample_id == 7


def test_capacity_bound_evicts_lowest_priority_then_oldest(db):
    buf = buffer(db, capacity=4)
    ids = buf.add("law", [0, 1, 2, 3])
    # losses → priorities 2.01, 0.01, 0.51, 0.01: items 1 and 3 are the easiest.
    buf.update_priorities("law", ids, [2.0, 0.0, 0.5, 0.0])
    buf.add("law", [4])  # over by one: the oldest of the lowest-priority (item 1) goes
    assert [it.sample_id for it in buf.items("law")] == [0, 2, 3, 4]
    buf.add("law", [5, 6])
    assert [it.sample_id for it in buf.items("law")] == [0, 4, 5, 6]
    assert buf.size("law") == 4
    assert buf.size("med") == 0  # domains are bounded independently


def test_equal_priorities_evict_oldest_first(db):
    buf = buffer(db, capacity=3)
    buf.add("fin", range(5))
    assert [it.sample_id for it in buf.items("fin")] == [2, 3, 4]


def test_persists_across_reopening_the_database(tmp_path):
    path = tmp_path / "meta.db"
    db = Database(path)
    buf = ReplayBuffer(db)
    ids = buf.add("law", [10, {"prompt": "p", "target": "t"}])
    buf.update_priorities("law", ids, [0.7, 1.5])
    db.close()
    reopened = ReplayBuffer(Database(path))
    assert [(it.item_id, it.priority) for it in reopened.items("law")] == [
        (ids[0], pytest.approx(0.71)), (ids[1], pytest.approx(1.51))]
    assert reopened.domains() == ["law"]


def test_sampling_is_deterministic_under_a_seed(db):
    buf = buffer(db)
    ids = buf.add("law", range(20))
    buf.update_priorities("law", ids, np.linspace(0, 3, 20))
    a = buf.sample("law", 16, 0.4, np.random.default_rng(7))
    b = buf.sample("law", 16, 0.4, np.random.default_rng(7))
    assert a.item_ids == b.item_ids
    np.testing.assert_array_equal(a.weights, b.weights)


def test_sampling_frequencies_follow_p_alpha(db):
    """Chi-square goodness of fit of 20k draws to P(i) = p_i^α / Σ p_j^α."""
    buf = buffer(db, alpha=0.6, epsilon=0.01)
    losses = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]
    ids = buf.add("law", range(len(losses)))
    buf.update_priorities("law", ids, losses)
    draws = buf.sample("law", 20_000, 1.0, np.random.default_rng(0))
    counts = np.array([draws.item_ids.count(i) for i in ids])
    p = (np.array(losses) + 0.01) ** 0.6
    expected = p / p.sum() * len(draws)
    assert stats.chisquare(counts, expected).pvalue > 0.01
    # and the alternative, uniform sampling, is clearly rejected
    assert stats.chisquare(counts, np.full(len(ids), len(draws) / len(ids))).pvalue < 1e-6


def test_update_priorities_changes_sampling(db):
    buf = buffer(db)
    ids = buf.add("law", [1, 2])
    before = buf.sample("law", 2000, 0.4, np.random.default_rng(1)).item_ids.count(ids[0])
    assert 850 < before < 1150  # equal priorities: about half each
    assert buf.update_priorities("law", ids, [9.0, 0.0]) == 2
    after = buf.sample("law", 2000, 0.4, np.random.default_rng(1)).item_ids.count(ids[0])
    assert after > 1800  # (9.01/0.01)^0.6 ≈ 59 : 1


def test_importance_weights_formula_and_normalisation(db):
    buf = buffer(db, alpha=0.6)
    ids = buf.add("law", range(4))
    buf.update_priorities("law", ids, [0.0, 1.0, 2.0, 3.0])
    beta = 0.5
    batch = buf.sample("law", 200, beta, np.random.default_rng(3))
    p = (np.array([0.0, 1.0, 2.0, 3.0]) + 0.01) ** 0.6
    P = p / p.sum()
    w_all = (4 * P) ** (-beta)
    w_all /= w_all.max()  # normalised over the buffer: the least likely item has weight 1
    index = {item_id: i for i, item_id in enumerate(ids)}
    drawn = np.array([index[i] for i in batch.item_ids])
    np.testing.assert_allclose(batch.probabilities, P[drawn])
    np.testing.assert_allclose(batch.weights, w_all[drawn])
    assert batch.weights.max() <= 1.0 and 0 in drawn and batch.weights[drawn == 0][0] == pytest.approx(1.0)
    # β = 0 means no correction
    np.testing.assert_allclose(buf.sample("law", 10, 0.0, np.random.default_rng(3)).weights, 1.0)


def test_beta_schedule_reaches_one():
    sched = BetaSchedule(steps=10)
    assert sched(0) == pytest.approx(0.4)
    assert sched(5) == pytest.approx(0.7)
    assert sched(10) == 1.0 and sched(1000) == 1.0
    assert all(sched(i) <= sched(i + 1) for i in range(20))


@pytest.mark.parametrize(("call", "needle"), [
    ((lambda b: b.add('', [1])), "''"),
    ((lambda b: b.add('law', [-3])), '-3'),
    ((lambda b: b.add('law', [{'prompt': 'x'}])), "['prompt']"),
    ((lambda b: b.add('law', [{'prompt': ' ', 'target': 'y'}])), "' '"),
    ((lambda b: b.add('law', [True])), 'True'),
    ((lambda b: b.sample('law', -1, 0.5, np.random.default_rng(0))), '-1'),
    ((lambda b: b.sample('law', 2, 1.5, np.random.default_rng(0))), '1.5'),
    ((lambda b: b.sample('empty', 2, 0.5, np.random.default_rng(0))), "'empty'"),
    ((lambda b: b.update_priorities('law', ['s:1', 's:2'], [1.0])), '2 ids but 1 losses'),
    ((lambda b: b.update_priorities('law', ['s:1'], [float('nan')])), 'nan'),
    ((lambda b: BetaSchedule(steps=0)), '0'),
])
def test_bad_input_names_the_value(db, call, needle):
    buf = buffer(db)
    buf.add("law", [1, 2])
    with pytest.raises(InvalidInputError) as e:
        call(buf)
    assert needle in str(e.value)


def test_bad_items_write_nothing(db):
    buf = buffer(db)
    with pytest.raises(InvalidInputError):
        buf.add("law", [1, 2, {"prompt": "", "target": "t"}])
    assert buf.size("law") == 0


def test_unknown_ids_are_skipped_and_zero_draws_are_empty(db):
    buf = buffer(db)
    ids = buf.add("law", [1])
    assert buf.update_priorities("law", [ids[0], "s:999"], [0.5, 0.5]) == 1
    assert len(buf.sample("law", 0, 0.5, np.random.default_rng(0))) == 0
    assert len(buf.sample("nothing-yet", 0, 0.5, np.random.default_rng(0))) == 0

