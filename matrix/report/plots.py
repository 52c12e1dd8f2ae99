"""Inline SVG plots for the cell pages: connection rate and TIME-WAIT count over time.

The collectors sample a cumulative iteration count; the interesting quantity for puzzle 2
is the rate per sampling interval, plotted on the same time axis as the TIME-WAIT count,
so that the reader sees the rate collapse exactly when TIME-WAIT fills the port range.

Plots are the expensive part of a report, so one `RatePlotter` keeps a single figure and
only swaps the line data for each cell (about 4x cheaper than a new figure each time).
Nothing is cached at module level: each report (or worker process) owns its plotter.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
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


def _num(value: Any) -> float | None:
    """A finite float, or None for anything a collector left out or could not measure."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def interval_rates(series: Iterable[Mapping[str, Any]]) -> tuple[list[float], list[float]]:
    """Connections per second over each sampling interval, placed at the interval's end.

    A sample without a time or an iteration count is skipped rather than guessed, and an
    interval whose clock did not advance is dropped so that a rate is never infinite.
    """
    times: list[float] = []
    rates: list[float] = []
    prev: tuple[float, float] | None = None
    for sample in series:
        if not isinstance(sample, Mapping):
            continue
        t, it = _num(sample.get("t")), _num(sample.get("iterations"))
        if t is None or it is None:
            continue
        if prev is not None and t > prev[0]:
            times.append(t)
            rates.append(max(0.0, (it - prev[1]) / (t - prev[0])))
        prev = (t, it)
    return times, rates


def tw_counts(series: Iterable[Mapping[str, Any]]) -> tuple[list[float], list[float]]:
    """TIME-WAIT sockets (from /proc/net/sockstat) at each sample that recorded them."""
    pairs = [(_num(s.get("t")), _num(s.get("tw"))) for s in series if isinstance(s, Mapping)]
    kept = [(t, tw) for t, tw in pairs if t is not None and tw is not None]
    return [t for t, _ in kept], [tw for _, tw in kept]


class RatePlotter:
    """A reusable two-panel figure: rate on top, TIME-WAIT below, sharing the time axis."""

    def __init__(self, width_in: float = 6.0, height_in: float = 2.6) -> None:
        with matplotlib.rc_context(_RC):
            self._fig = Figure(figsize=(width_in, height_in))
            self._rate_ax, self._tw_ax = self._fig.subplots(2, 1, sharex=True)
            (self._rate_line,) = self._rate_ax.plot([], [], lw=1.3, color=RATE_COLOUR)
            (self._tw_line,) = self._tw_ax.plot([], [], lw=1.3, color=TW_COLOUR)
            self._stall_lines = [
                ax.axvline(0.0, color=STALL_COLOUR, lw=0.9, ls="--", visible=False)
                for ax in (self._rate_ax, self._tw_ax)
            ]
            self._style()

    def _style(self) -> None:
        """Few ticks and no box: the plot is a glance at the shape, the table has figures.

        The top panel has no x axis of its own (it shares the bottom one); drawing an axis
        is most of a plot's cost, and the page's caption says the axis is in seconds.
        """
        for ax, label in ((self._rate_ax, "conn/s"), (self._tw_ax, "TIME-WAIT")):
            ax.yaxis.set_major_locator(MaxNLocator(3, integer=True))
            ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
            ax.xaxis.set_major_locator(MaxNLocator(6))
            ax.spines["top"].set_visible(False)
            ax.spines["right"].set_visible(False)
            ax.grid(axis="y", color="#e5e7eb", lw=0.6)
            ax.set_ylabel(label)
        self._rate_ax.xaxis.set_visible(False)
        self._fig.subplots_adjust(left=0.13, right=0.98, bottom=0.11, top=0.96, hspace=0.12)

    def svg(self, series: Sequence[Mapping[str, Any]], stall_t: float | None = None) -> str:
        """The plot as an <svg> element ready to inline, or "" when there is nothing to draw."""
        rate_t, rates = interval_rates(series)
        tw_t, tws = tw_counts(series)
        if not rates and not tws:
            return ""
        self._rate_line.set_data(rate_t, rates)
        self._tw_line.set_data(tw_t, tws)
        for line in self._stall_lines:
            line.set_visible(stall_t is not None)
            if stall_t is not None:
                line.set_xdata([stall_t, stall_t])
        # Limits are set from this cell's data every time: the figure is reused, and
        # autoscaling would otherwise stay frozen at the first cell's limits.
        t_end = max([*rate_t, *tw_t, stall_t or 0.0, 1e-3])
        self._tw_ax.set_xlim(0, t_end * 1.02)
        for ax, values in ((self._rate_ax, rates), (self._tw_ax, tws)):
            ax.set_ylim(0, max([*values, 1.0]) * 1.08)
        buf = io.StringIO()
        with matplotlib.rc_context(_RC):
            self._fig.savefig(buf, format="svg", metadata={"Date": None})
        text = buf.getvalue()
        return text[text.find("<svg") :]


def rate_tw_svg(series: Sequence[Mapping[str, Any]], stall_t: float | None = None) -> str:
    """One-off convenience for a single plot; a report should reuse a `RatePlotter`."""
    return RatePlotter().svg(series, stall_t)
