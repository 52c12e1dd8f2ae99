"""Rates over a cumulative counter's time series: early vs late, around a knee.

The figures the series-rate rule judges by (see `matrix.classify.rules`). A program's
series is a list of samples `{t, <counter>, state, wchan, utime, stime, ...}`; the counter
only grows. Pure functions over a collector result.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from matrix.scenarios.manifest import SeriesRateRule

DEFAULT_RULE = SeriesRateRule()


def goal(
    result: dict[str, Any], rule: SeriesRateRule = DEFAULT_RULE
) -> tuple[int | None, int, float]:
    """(knee, margin, margin_s): the knee the rule names (a metric, or half a range
    metric), and how far past it the cell was asked to run (0 and 0 without margins)."""
    m = result.get("metrics") or {}
    limits = result.get("limits") or {}
    knee = _knee(m, rule)
    return knee, int(limits.get("knee_margin", 0)), float(limits.get("knee_margin_s", 0.0))


def _knee(m: dict[str, Any], rule: SeriesRateRule) -> int | None:
    if rule.knee_metric and isinstance(m.get(rule.knee_metric), int | float):
        return int(m[rule.knee_metric])
    span = m.get(rule.knee_half_range) if rule.knee_half_range else None
    if isinstance(span, list) and len(span) == 2:
        return (int(span[1]) - int(span[0]) + 1) // 2
    return None


def points(result: dict[str, Any], counter: str = "iterations") -> list[tuple[float, float]]:
    """(t, count) from the origin through every sample, plus the program's own end."""
    pts = [(0.0, 0.0)] + [
        (float(s["t"]), float(s[counter]))
        for s in result.get("series") or []
        if isinstance(s.get(counter), int | float)
    ]
    m = result.get("metrics", {})
    if m.get("elapsed_s") and m.get(counter) is not None and m["elapsed_s"] > pts[-1][0]:
        pts.append((float(m["elapsed_s"]), float(m[counter])))
    return pts


def knee_time(result: dict[str, Any], rule: SeriesRateRule = DEFAULT_RULE) -> float | None:
    """When the counter passed the knee, from its own series (None: it never did)."""
    knee = goal(result, rule)[0]
    if knee is None:
        return None
    pts = points(result, rule.counter)
    return time_at(pts, knee) if pts[-1][1] >= knee else None


def rates(
    result: dict[str, Any],
    early_fraction: float,
    late_fraction: float,
    rule: SeriesRateRule = DEFAULT_RULE,
) -> dict[str, Any]:
    """The rate before the knee against the rate after it.

    Before: the median of the 1-second rates up to the knee, so a guest starved for a
    few seconds (a VM booting beside it) does not set the scale; without a knee, or with
    too few seconds before it, the rate over the first iterations. After: from the knee
    to the end, or over the last stretch of time when there is no knee.
    """
    pts = points(result, rule.counter)
    none = {"early_rate": None, "late_rate": None, "rate_ratio": None, "knee_t": None}
    if len(pts) < 2 or pts[-1][1] <= 0 or pts[-1][0] <= 0:
        return none
    total_t, total_i = pts[-1]
    knee_t = knee_time(result, rule)
    before = second_rates(result, knee_t, rule.counter) if knee_t is not None else []
    if len(before) >= 3:
        early: float | None = statistics.median(before)
    else:
        n_early = max(1.0, early_fraction * total_i)
        t_early = time_at(pts, n_early)
        early = n_early / t_early if t_early > 0 else None
    t_late = knee_t if knee_t is not None else total_t * (1 - late_fraction)
    if total_t - t_late <= 0:
        return dict(none, early_rate=early, knee_t=knee_t)
    late = (total_i - count_at(pts, t_late)) / (total_t - t_late)
    ratio = late / early if early else None
    return {"early_rate": early, "late_rate": late, "rate_ratio": ratio, "knee_t": knee_t}


def second_rates(
    result: dict[str, Any], end: float | None, counter: str = "iterations", span_s: float = 1.0
) -> list:
    """Counts/s over consecutive `span_s` windows of the series, up to `end`."""
    series = [s for s in result.get("series") or [] if isinstance(s.get(counter), int | float)]
    if end is None:
        end = series[-1]["t"] if series else 0.0
    out, last = [], None
    for s in series:
        if s["t"] > end:
            break
        if last is None or s["t"] - last["t"] >= span_s:
            if last is not None:
                out.append((s[counter] - last[counter]) / (s["t"] - last["t"]))
            last = s
    return out


def rate_cv(result: dict[str, Any], rule: SeriesRateRule = DEFAULT_RULE) -> float | None:
    """std/mean of 1-second rates before the knee (or over the whole run without one):
    a steady loop on a quiet machine stays within a few percent."""
    found = second_rates(result, knee_time(result, rule), rule.counter)
    if len(found) < 3:
        return None
    mean = sum(found) / len(found)
    if mean <= 0:
        return None
    var = sum((r - mean) ** 2 for r in found) / len(found)
    return round(var**0.5 / mean, 3)


def last_second_rate(result: dict[str, Any], counter: str = "iterations") -> float | None:
    series = [s for s in result.get("series") or [] if isinstance(s.get(counter), int | float)]
    if len(series) < 2:
        return None
    last = series[-1]
    for s in reversed(series[:-1]):
        if last["t"] - s["t"] >= 1.0:
            return (last[counter] - s[counter]) / (last["t"] - s["t"])
    return None


def late_evidence(result: dict[str, Any], late_fraction: float) -> dict[str, Any]:
    """How the measured process spent the late stretch: state, wchan, system-time share."""
    series = result.get("series") or []
    if not series:
        return {"evidence_state": None, "evidence_wchan": None, "stime_share": None}
    t_late = series[-1]["t"] * (1 - late_fraction)
    late = [s for s in series if s["t"] >= t_late] or series[-1:]
    state = Counter(s.get("state") or "?" for s in late).most_common(1)[0][0]
    wchan = Counter(s.get("wchan") or "" for s in late).most_common(1)[0][0]
    first, last = late[0], late[-1]
    du = (last.get("utime") or 0) - (first.get("utime") or 0)
    ds = (last.get("stime") or 0) - (first.get("stime") or 0)
    share = ds / (du + ds) if du + ds > 0 else None
    return {"evidence_state": state, "evidence_wchan": wchan, "stime_share": share}


def time_at(pts: list[tuple[float, float]], n: float) -> float:
    for (t0, i0), (t1, i1) in zip(pts, pts[1:], strict=False):
        if i1 >= n:
            return t0 + (t1 - t0) * ((n - i0) / (i1 - i0) if i1 > i0 else 0)
    return pts[-1][0]


def count_at(pts: list[tuple[float, float]], when: float) -> float:
    for (t0, i0), (t1, i1) in zip(pts, pts[1:], strict=False):
        if t1 >= when:
            return i0 + (i1 - i0) * ((when - t0) / (t1 - t0) if t1 > t0 else 0)
    return pts[-1][1]
