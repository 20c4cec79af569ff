"""The one percentile (``twinloop.kernel.stats``): nearest rank, shared by the QA gate, the
canary and the rollback trigger (docs/DESIGN.md "Map": one definition each)."""

from __future__ import annotations

import pytest

from twinloop.kernel.stats import p95, percentile


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 95) == 95.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 95) is None


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        pytest.param([1.0, 2.0, 3.0, 4.0], 50, 2.0, id="median-even-is-the-lower-middle"),
        pytest.param([3.0, 1.0, 2.0], 50, 2.0, id="median-odd-unsorted"),
        pytest.param([10.0, 20.0, 30.0, 40.0], 95, 40.0, id="p95-of-few-is-the-max"),
        pytest.param([10.0, 20.0, 30.0, 40.0], 25, 10.0, id="exact-rank"),
        pytest.param([10.0, 20.0, 30.0, 40.0], 26, 20.0, id="just-past-a-rank"),
        pytest.param([10.0, 20.0, 30.0, 40.0], 100, 40.0, id="q-100-is-the-max"),
        pytest.param([10.0, 20.0, 30.0, 40.0], 0.1, 10.0, id="tiny-q-is-the-min"),
    ],
)
def test_percentile_values(values, q, expected):
    assert percentile(values, q) == expected


def test_percentile_is_a_value_some_sample_had():
    values = [101.0, 250.5, 99.25, 180.0, 3000.0, 120.0, 140.0]
    for q in (1, 10, 50, 90, 95, 99, 100):
        assert percentile(values, q) in values


@pytest.mark.parametrize("value", [7.0, 0.0, -3.5])
def test_single_value_is_every_percentile(value):
    assert all(percentile([value], q) == value for q in (1, 50, 95, 100))


def test_no_values_give_none():
    assert percentile([], 50) is None and p95([]) is None


@pytest.mark.parametrize("q", [0, -1, 100.5, 101, float("nan")])
def test_q_out_of_range_is_refused(q):
    with pytest.raises(ValueError, match="percentile q"):
        percentile([1.0, 2.0], q)
    with pytest.raises(ValueError, match="percentile q"):
        percentile([], q)  # checked before the values


def test_p95_is_percentile_95():
    values = [float(v) for v in range(1, 21)]
    assert p95(values) == percentile(values, 95) == 19.0
