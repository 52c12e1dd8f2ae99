"""The report's plots as data: what to draw, computed here, drawn in the browser by uPlot.

A scenario's manifest names the series field to plot (`report.plot`). A cumulative
counter (the one its series-rate rule judges) is plotted as its rate per sampling
interval, anything else as its value. When the samples carry TIME-WAIT counts (`tw`,
from /proc/net/sockstat) they are plotted on a second axis over the same time, so that
the reader sees a rate collapse exactly when TIME-WAIT fills the port range.

Drawing in Python (an SVG per cell) cost ~20 ms a plot, most of a report's time; a
plot's numbers as JSON cost well under a millisecond. `plot_json` embeds a plot in a
page as a `<script type="application/json">` that templates/plot.js draws, with zoom on
the x axis and hover values. The JSON holds numbers and labels only, and is escaped so
that nothing in it can end the script element.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from matrix.collect import sanitize

RATE_COLOUR = "#2563eb"
TW_COLOUR = "#d97706"
STALL_COLOUR = "#dc2626"
LINE_COLOURS = ("#2563eb", "#d97706", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#4b5563")
"""One colour per line of a plot with several (settings across kernels), in order."""
_JSON_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _num(value: Any) -> float | None:
    """A finite float, or None for anything a collector left out or could not measure
    (a bool is no number). By exact type: this runs once per sample and field."""
    kind = type(value)
    if kind is float:
        return value if value - value == 0.0 else None
    if kind is int:
        return float(value)
    return None


def interval_rates(
    series: Iterable[Mapping[str, Any]], field: str = "iterations"
) -> tuple[list[float], list[float]]:
    """A counter's increase per second over each sampling interval, at the interval's end.

    A sample without a time or a count is skipped rather than guessed, and an interval
    whose clock did not advance is dropped so that a rate is never infinite.
    """
    times: list[float] = []
    rates: list[float] = []
    prev_t = prev_n = None
    for sample in series:
        if not isinstance(sample, dict):
            continue
        t, n = _num(sample.get("t")), _num(sample.get(field))
        if t is None or n is None:
            continue
        if prev_t is not None and t > prev_t:
            times.append(t)
            rate = (n - prev_n) / (t - prev_t)
            rates.append(rate if rate > 0.0 else 0.0)
        prev_t, prev_n = t, n
    return times, rates


def values(
    series: Iterable[Mapping[str, Any]], field: str, scale: float = 1.0
) -> tuple[list[float], list[float]]:
    """A field's value (times `scale`) at each sample that recorded it."""
    times: list[float] = []
    out: list[float] = []
    for sample in series:
        if not isinstance(sample, dict):
            continue
        t, v = _num(sample.get("t")), _num(sample.get(field))
        if t is not None and v is not None:
            times.append(t)
            out.append(v * scale)
    return times, out


def tw_counts(series: Iterable[Mapping[str, Any]]) -> tuple[list[float], list[float]]:
    """TIME-WAIT sockets (from /proc/net/sockstat) at each sample that recorded them."""
    return values(series, "tw")


@dataclass(frozen=True)
class Trace:
    """One line: times, values, its axis label and its colour."""

    times: list[float]
    values: list[float]
    label: str
    colour: str


def traces(
    series: Sequence[Mapping[str, Any]],
    field: str,
    rate: bool,
    label: str,
    scale: float = 1.0,
) -> list[Trace]:
    """The lines of a cell's plot: the field (as a rate when it is a counter), then
    TIME-WAIT when the samples carry it; a line with nothing to draw is left out."""
    main = interval_rates(series, field) if rate else values(series, field, scale)
    tw = tw_counts(series)
    out = [Trace(*main, label, RATE_COLOUR)] if main[1] else []
    return out + ([Trace(*tw, "TIME-WAIT", TW_COLOUR)] if tw[1] else [])


def _text(value: Any) -> str:
    """Labels reach the page as text, but still without control characters or escapes."""
    return sanitize.clean(str(value))


def _rounded(value: float | None) -> float | None:
    """Three decimals are more than a plot shows and keep the page small; small values
    keep their digits."""
    if value is None:
        return None
    return round(value, 3) if value >= 0.1 or value <= -0.1 else value


def time_plot(lines: Sequence[Trace], stall_t: float | None = None) -> dict[str, Any] | None:
    """A cell's plot: its lines over seconds since the program started, each on an axis
    of its own (the first left, the second right), and the stall as a dashed line."""
    if not lines:
        return None
    lines = lines[:2]
    stamps = [[round(t, 4) for t in line.times] for line in lines]
    xs = sorted(set().union(*stamps))
    at: dict[float, int] = {}
    series = []
    for i, (line, ts) in enumerate(zip(lines, stamps, strict=True)):
        if ts == xs:
            ys = [_rounded(v) for v in line.values]
        else:
            at = at or {t: i for i, t in enumerate(xs)}
            ys = [None] * len(xs)
            for t, v in zip(ts, line.values, strict=True):
                ys[at[t]] = _rounded(v)
        series.append({"label": _text(line.label), "colour": line.colour, "values": ys, "axis": i})
    stall = _num(stall_t)
    return {
        "x": xs,
        "xlabel": "seconds",
        "xunit": "s",
        "axes": [_text(line.label) for line in lines],
        "series": series,
        "vlines": [{"x": stall, "colour": STALL_COLOUR, "label": "stall"}]
        if stall is not None
        else [],
    }


def category_plot(
    categories: Sequence[str],
    lines: Sequence[tuple[str, Sequence[float | None]]],
    axis: str,
    hlines: Sequence[tuple[float, str]] = (),
) -> dict[str, Any] | None:
    """Values per category (a kernel, in release order), a line per series (a setting),
    with points so that a kernel measured alone still shows; None with nothing to draw."""
    if not any(v is not None for _, vs in lines for v in vs):
        return None
    return {
        "x": list(range(len(categories))),
        "categories": [_text(c) for c in categories],
        "xlabel": "kernel",
        "axes": [_text(axis)],
        "points": True,
        "series": [
            {
                "label": _text(label),
                "colour": LINE_COLOURS[i % len(LINE_COLOURS)],
                "values": [_rounded(_num(v)) for v in vs],
                "axis": 0,
            }
            for i, (label, vs) in enumerate(lines)
        ],
        "hlines": [{"y": y, "colour": "#6b7280", "label": _text(text)} for y, text in hlines],
    }


def plot_json(spec: Mapping[str, Any]) -> Markup:
    """A plot as the body of a <script type="application/json">: strict JSON with <, >
    and & escaped, so no label can close the element or start markup."""
    text = json.dumps(spec, separators=(",", ":"), allow_nan=False)
    return Markup(text.translate(_JSON_ESCAPES))
