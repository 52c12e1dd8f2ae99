"""Did a metric move between two sets of trials? A rank test, a bootstrap interval, and
a minimum size, so that noise is not reported as a change.

The Mann-Whitney U test assumes nothing about the distribution and is exact here (the
permutation distribution of the rank sum, ties included), so its error rate holds for
any number of trials. But its smallest two-sided p is 2 / C(n_a + n_b, n_a): 0.1 for 3
trials a side, 0.029 for 4, 0.008 for 5. When the trials cannot reach `alpha` that way,
the bootstrap interval of the ratio of medians decides instead: it uses the sizes of the
values, not only their order. With 3 trials a side it excludes "no change" only when
the two sets do not overlap at all, which chance alone does once in ten times for a
metric that did not move; the minimum change (5% by default) is what keeps such noise
out, so set it above the run-to-run noise of the metric.

The ratio (not the difference) because the minimum is a percentage and metrics span
orders of magnitude (54,000 and 660 connections/s). Resampling is seeded, so the same
inputs always give the same interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MIN_TRIALS = 3
"""Fewer trials a side than this and nothing is called: with 2, the sets do not overlap
by chance one time in three."""
RESAMPLES = 4000
SEED = 20261202
EXACT_MAX = 40
"""Up to this many values in all, p is exact; beyond, the normal approximation."""


@dataclass(frozen=True)
class Comparison:
    """One metric, trials of side a against side b."""

    n_a: int
    n_b: int
    median_a: float
    median_b: float
    change: float | None
    """median_b / median_a - 1; None when side a's values are not all positive."""
    low: float | None
    high: float | None
    """The bootstrap interval (level 1 - alpha) of the ratio of medians, less 1."""
    p_value: float
    """Two-sided Mann-Whitney U."""
    min_p: float
    """The smallest p these trial counts allow."""
    test: str
    """What decided: "U", "bootstrap", or "too few trials"."""
    significant: bool
    called: bool
    """Significant and at least the minimum change."""


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(U of a, two-sided p). Exact from the permutation distribution of a's rank sum
    (ties included) up to EXACT_MAX values, else normal with the tie correction."""
    n_a, n_b = len(a), len(b)
    if not n_a or not n_b:
        return 0.0, 1.0
    r = ranks([*a, *b])
    doubled = [round(2 * x) for x in r]
    observed = sum(doubled[:n_a])
    u = observed / 2 - n_a * (n_a + 1) / 2
    mean = n_a * (n_a + n_b + 1)
    if n_a + n_b <= EXACT_MAX:
        counts = _sum_counts(doubled, n_a)
        far = sum(c for s, c in counts.items() if abs(s - mean) >= abs(observed - mean))
        return u, min(1.0, far / math.comb(n_a + n_b, n_a))
    n = n_a + n_b
    ties = sum(t**3 - t for t in _tie_sizes(r))
    var = n_a * n_b / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return u, 1.0
    z = max(0.0, abs(u - n_a * n_b / 2) - 0.5) / math.sqrt(var)
    return u, min(1.0, math.erfc(z / math.sqrt(2)))


def _sum_counts(values: list[int], k: int) -> dict[int, int]:
    """How many k-subsets of `values` have each sum."""
    ways: list[dict[int, int]] = [{0: 1}] + [{} for _ in range(k)]
    for v in values:
        for j in range(k, 0, -1):
            for s, c in ways[j - 1].items():
                ways[j][s + v] = ways[j].get(s + v, 0) + c
    return ways[k]


def _tie_sizes(r: list[float]) -> list[int]:
    sizes: dict[float, int] = {}
    for x in r:
        sizes[x] = sizes.get(x, 0) + 1
    return [n for n in sizes.values() if n > 1]


def min_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p of the exact U test with these counts (no ties)."""
    return min(1.0, 2 / math.comb(n_a + n_b, n_a)) if n_a and n_b else 1.0


def bootstrap_ratio(
    a: Sequence[float], b: Sequence[float], level: float
) -> tuple[float, float] | None:
    """The percentile interval of median(b*) / median(a*) over resamples of each side;
    None unless every value of a is positive (a ratio needs a positive base). numpy is
    imported here: a `kmatrix run` that compares nothing starts without it."""
    import numpy as np

    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not len(xa) or not len(xb) or (xa <= 0).any():
        return None
    rng = np.random.default_rng(SEED)
    med_a = np.median(xa[rng.integers(0, len(xa), (RESAMPLES, len(xa)))], axis=1)
    med_b = np.median(xb[rng.integers(0, len(xb), (RESAMPLES, len(xb)))], axis=1)
    ratio = med_b / med_a
    tail = (1 - level) / 2
    low, high = np.quantile(ratio, [tail, 1 - tail])
    return float(low), float(high)


def compare(a: Sequence[float], b: Sequence[float], alpha: float, min_change: float) -> Comparison:
    """Side a against side b: the change of the median, its interval, the U test, and
    whether the change is called (see the module's docstring for the rule)."""
    med_a, med_b = float(statistics.median(a)), float(statistics.median(b))
    positive = med_a > 0 and all(x > 0 for x in a)
    change = med_b / med_a - 1 if positive else None
    _, p = mann_whitney(a, b)
    interval = bootstrap_ratio(a, b, 1 - alpha)
    low, high = (interval[0] - 1, interval[1] - 1) if interval else (None, None)
    floor = min_p(len(a), len(b))
    if min(len(a), len(b)) < MIN_TRIALS:
        test, significant = "too few trials", False
    elif floor <= alpha:
        test, significant = "U", p <= alpha
    else:
        excludes = low is not None and high is not None and (low > 0 or high < 0)
        test, significant = "bootstrap", excludes
    called = significant and change is not None and abs(change) >= min_change
    return Comparison(
        len(a), len(b), med_a, med_b, change, low, high, p, floor, test, significant, called
    )
