"""Inline SVG plots for the cell pages: a series field over time, and TIME-WAIT beside it.

A scenario's manifest names the series field to plot (`report.plot`). A cumulative
counter (the one its series-rate rule judges) is plotted as its rate per sampling
interval, anything else as its value. When the samples carry TIME-WAIT counts (`tw`,
from /proc/net/sockstat) they are plotted below on the same time axis, so that the
reader sees a rate collapse exactly when TIME-WAIT fills the port range.

Plots are the expensive part of a report, so one `SeriesPlotter` keeps a single figure
per number of panels and only swaps the line data for each cell (about 4x cheaper than a
new figure each time). Nothing is cached at module level: each report (or worker
process) owns its plotter.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator, StrMethodFormatter  # noqa: E402

_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "kmatrix",
    "font.size": 8,
    "font.family": "sans-serif",
    "axes.edgecolor": "#999999",
    "axes.labelcolor": "#333333",
    "xtick.color": "#555555",
    "ytick.color": "#555555",
}
"""Text as <text> (not glyph paths) keeps the SVG small and fast; a fixed salt keeps
clip-path ids stable so that two renders of the same run are byte-identical."""

RATE_COLOUR = "#2563eb"
TW_COLOUR = "#d97706"
STALL_COLOUR = "#dc2626"
PANEL_IN = 1.125
"""Height of one panel; the margins below and above it come on top."""


def _num(value: Any) -> float | None:
    """A finite float, or None for anything a collector left out or could not measure."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def interval_rates(
    series: Iterable[Mapping[str, Any]], field: str = "iterations"
) -> tuple[list[float], list[float]]:
    """A counter's increase per second over each sampling interval, at the interval's end.

    A sample without a time or a count is skipped rather than guessed, and an interval
    whose clock did not advance is dropped so that a rate is never infinite.
    """
    times: list[float] = []
    rates: list[float] = []
    prev: tuple[float, float] | None = None
    for sample in series:
        if not isinstance(sample, Mapping):
            continue
        t, it = _num(sample.get("t")), _num(sample.get(field))
        if t is None or it is None:
            continue
        if prev is not None and t > prev[0]:
            times.append(t)
            rates.append(max(0.0, (it - prev[1]) / (t - prev[0])))
        prev = (t, it)
    return times, rates


def values(
    series: Iterable[Mapping[str, Any]], field: str, scale: float = 1.0
) -> tuple[list[float], list[float]]:
    """A field's value (times `scale`) at each sample that recorded it."""
    pairs = [(_num(s.get("t")), _num(s.get(field))) for s in series if isinstance(s, Mapping)]
    kept = [(t, v * scale) for t, v in pairs if t is not None and v is not None]
    return [t for t, _ in kept], [v for _, v in kept]


def tw_counts(series: Iterable[Mapping[str, Any]]) -> tuple[list[float], list[float]]:
    """TIME-WAIT sockets (from /proc/net/sockstat) at each sample that recorded them."""
    return values(series, "tw")


@dataclass(frozen=True)
class Trace:
    """One panel's line: times, values, the y axis label and the colour."""

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
    """The panels for a cell: the field (as a rate when it is a counter), then TIME-WAIT
    when the samples carry it; a panel with nothing to draw is left out."""
    main = interval_rates(series, field) if rate else values(series, field, scale)
    tw = tw_counts(series)
    out = [Trace(*main, label, RATE_COLOUR)] if main[1] else []
    return out + ([Trace(*tw, "TIME-WAIT", TW_COLOUR)] if tw[1] else [])


class _Panels:
    """A reusable figure of n panels sharing the time axis."""

    def __init__(self, n: int, width_in: float) -> None:
        height = PANEL_IN * n + 0.35
        with matplotlib.rc_context(_RC):
            self.fig = Figure(figsize=(width_in, height))
            axes = self.fig.subplots(n, 1, sharex=True, squeeze=False)
            self.axes = [row[0] for row in axes]
            self.lines = [ax.plot([], [], lw=1.3)[0] for ax in self.axes]
            self.stall_lines = [
                ax.axvline(0.0, color=STALL_COLOUR, lw=0.9, ls="--", visible=False)
                for ax in self.axes
            ]
        self._style(height)

    def _style(self, height: float) -> None:
        """Few ticks and no box: the plot is a glance at the shape, the table has figures.

        Only the bottom panel draws the x axis (they share it); drawing an axis is most
        of a plot's cost, and the page's caption says the axis is in seconds.
        """
        for ax in self.axes:
            ax.xaxis.set_major_locator(MaxNLocator(6))
            ax.spines["top"].set_visible(False)
            ax.spines["right"].set_visible(False)
            ax.grid(axis="y", color="#e5e7eb", lw=0.6)
        for ax in self.axes[:-1]:
            ax.xaxis.set_visible(False)
        self.fig.subplots_adjust(
            left=0.13, right=0.98, bottom=0.286 / height, top=1 - 0.104 / height, hspace=0.12
        )

    def svg(self, panels: Sequence[Trace], stall_t: float | None) -> str:
        for ax, line, trace in zip(self.axes, self.lines, panels, strict=True):
            line.set_data(trace.times, trace.values)
            line.set_color(trace.colour)
            ax.set_ylabel(trace.label)
            whole = max([*trace.values, 0.0]) >= 10
            ax.yaxis.set_major_locator(MaxNLocator(3, integer=whole))
            ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}" if whole else "{x:,.3g}"))
            # Limits are set from this cell's data every time: the figure is reused, and
            # autoscaling would otherwise stay frozen at the first cell's limits.
            ax.set_ylim(0, max([*trace.values, 1.0]) * 1.08)
        for line in self.stall_lines:
            line.set_visible(stall_t is not None)
            if stall_t is not None:
                line.set_xdata([stall_t, stall_t])
        t_end = max([t for p in panels for t in p.times] + [stall_t or 0.0, 1e-3])
        self.axes[-1].set_xlim(0, t_end * 1.02)
        buf = io.StringIO()
        with matplotlib.rc_context(_RC):
            self.fig.savefig(buf, format="svg", metadata={"Date": None})
        text = buf.getvalue()
        return text[text.find("<svg") :]


class SeriesPlotter:
    """Cell plots from reused figures, one per number of panels, made when first needed."""

    def __init__(self, width_in: float = 6.0) -> None:
        self._width = width_in
        self._figures: dict[int, _Panels] = {}

    def figure(self, panels: int) -> _Panels:
        if panels not in self._figures:
            self._figures[panels] = _Panels(panels, self._width)
        return self._figures[panels]

    def svg(self, panels: Sequence[Trace], stall_t: float | None = None) -> str:
        """The plot as an <svg> element ready to inline, or "" when there is nothing to draw."""
        if not panels:
            return ""
        return self.figure(len(panels)).svg(panels, stall_t)
