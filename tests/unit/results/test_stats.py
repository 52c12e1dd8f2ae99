"""The metric tests: the exact U test against enumeration and known values, the bootstrap
interval, and the rule that calls a change (a known shift is called; identical inputs
and noise without a shift are not)."""

from __future__ import annotations

import itertools
import random

import pytest

from matrix.results import stats


def brute_p(a: list[float], b: list[float]) -> float:
    """Two-sided p by enumerating every split of the pooled values."""
    pooled = [*a, *b]
    r = stats.ranks(pooled)
    mean = len(a) * (len(pooled) + 1) / 2
    observed = abs(sum(r[: len(a)]) - mean)
    splits = list(itertools.combinations(range(len(pooled)), len(a)))
    far = sum(abs(sum(r[i] for i in s) - mean) >= observed - 1e-9 for s in splits)
    return far / len(splits)


@pytest.mark.parametrize(
    ("a", "b", "p"),
    [
        ([1, 2, 3], [4, 5, 6], 0.1),
        ([1, 2, 3, 4, 5], [6, 7, 8, 9, 10], 2 / 252),
        ([1, 3, 5, 7], [2, 4, 6, 8], 0.6857142857),
        ([1, 2, 3], [1, 2, 3], 1.0),
    ],
)
def test_exact_u_matches_known_values(a: list[float], b: list[float], p: float) -> None:
    assert stats.mann_whitney(a, b)[1] == pytest.approx(p)


def test_exact_u_with_ties_matches_enumeration() -> None:
    rng = random.Random(7)
    for _ in range(40):
        a = [rng.choice([1, 2, 2, 3, 5]) for _ in range(rng.randint(2, 6))]
        b = [rng.choice([1, 2, 3, 3, 4]) for _ in range(rng.randint(2, 6))]
        assert stats.mann_whitney(a, b)[1] == pytest.approx(brute_p(a, b)), (a, b)


def test_the_normal_approximation_is_close_to_exact_for_many_trials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(3)
    a = [rng.gauss(0, 1) for _ in range(20)]
    b = [rng.gauss(0.7, 1) for _ in range(20)]
    exact = stats.mann_whitney(a, b)[1]
    monkeypatch.setattr(stats, "EXACT_MAX", 10)
    assert stats.mann_whitney(a, b)[1] == pytest.approx(exact, rel=0.05)


def test_smallest_p_and_when_the_bootstrap_decides() -> None:
    assert stats.min_p(3, 3) == pytest.approx(0.1)
    assert stats.min_p(4, 4) == pytest.approx(2 / 70)
    three = stats.compare([10, 11, 12], [20, 21, 22], 0.05, 0.05)
    five = stats.compare([10, 11, 12, 13, 14], [20, 21, 22, 23, 24], 0.05, 0.05)
    assert three.test == "bootstrap" and five.test == "U"


def test_a_known_shift_with_three_trials_is_called() -> None:
    c = stats.compare([100.0, 101.0, 99.0], [70.0, 71.5, 69.0], 0.05, 0.05)
    assert c.called and c.significant and c.p_value == pytest.approx(0.1)
    assert c.change == pytest.approx(-0.30)
    assert c.low is not None and c.high is not None and c.low <= c.change <= c.high < 0


def test_a_known_shift_with_five_trials_is_called_by_the_u_test() -> None:
    a = [100.0, 102.0, 99.0, 101.0, 98.0]
    c = stats.compare(a, [x * 1.2 for x in a], 0.05, 0.05)
    assert c.called and c.test == "U" and c.p_value < 0.01
    assert c.change == pytest.approx(0.2)


def test_identical_inputs_call_nothing() -> None:
    for values in ([5.0, 5.0, 5.0], [1.0, 2.0, 3.0], [100.0, 140.0, 90.0, 101.0, 120.0]):
        c = stats.compare(values, list(values), 0.05, 0.0)
        assert not c.called and not c.significant and c.change == 0


def test_a_shift_smaller_than_the_minimum_is_not_called() -> None:
    c = stats.compare([100.0, 100.5, 99.5], [97.0, 97.5, 96.5], 0.05, 0.05)
    assert c.significant and not c.called


def test_too_few_trials_call_nothing_however_far_apart() -> None:
    c = stats.compare([100.0, 101.0], [10.0, 11.0], 0.05, 0.05)
    assert c.test == "too few trials" and not c.called
    assert not stats.compare([100.0], [10.0], 0.05, 0.05).called


def test_a_ratio_needs_a_positive_base() -> None:
    c = stats.compare([0.0, 0.0, 0.0], [5.0, 6.0, 7.0], 0.05, 0.05)
    assert c.change is None and c.low is None and not c.called


@pytest.mark.parametrize(
    ("n", "cv", "most"),
    [(3, 0.01, 0), (5, 0.015, 0), (8, 0.1, 10), (3, 0.1, 24)],
)
def test_noise_without_a_shift_is_rarely_called(n: int, cv: float, most: int) -> None:
    """Both sides from one distribution, 200 times: with noise well under the minimum
    change nothing is called; with noise around it, about alpha of the comparisons when
    the U test decides, and about one in ten with 3 trials (the sets do not overlap)."""
    rng = random.Random(n)
    calls = 0
    for _ in range(200):
        a = [rng.gauss(1000, 1000 * cv) for _ in range(n)]
        b = [rng.gauss(1000, 1000 * cv) for _ in range(n)]
        calls += stats.compare(a, b, 0.05, 0.05).called
    assert calls <= most


def test_the_interval_is_the_same_for_the_same_inputs() -> None:
    a, b = [10.0, 12.0, 11.0, 13.0], [15.0, 14.0, 16.0, 15.5]
    assert stats.bootstrap_ratio(a, b, 0.95) == stats.bootstrap_ratio(a, b, 0.95)
