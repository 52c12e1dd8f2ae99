"""The history as people read it: `reports/index.html` (every run), a run's `diff.html`
(against the previous comparable run), and the same diff in the terminal.

Kernel releases, reasons and key figures come from guests: the pages go through the
report's escaping, cleaning environment, and the terminal gets plain `Text` with control
characters removed and markup off, so nothing a guest printed is interpreted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from matrix import __version__
from matrix.classify.figures import shown
from matrix.model import Verdict
from matrix.results.history import (
    CellState,
    MetricChange,
    RunDiff,
    RunSummary,
    diff,
    load_runs,
    previous_comparable,
    summarize,
)
from matrix.run import rundir
from matrix.run.progress import COLOURS, clean

VERDICT_ORDER = tuple(v.value for v in Verdict)


def _page_manifest(title: str) -> dict[str, Any]:
    """What base.html reads from `manifest`."""
    return {"kmatrix_version": __version__, "run_id": title}


def _cell_link(reports_dir: Path, run_id: str, cell: CellState, prefix: str) -> str | None:
    """A link to a cell's page if that run's report exists, relative to the linking page."""
    from matrix.report.render import page_name

    page = page_name(cell.cell_id)
    return (
        f"{prefix}{run_id}/cells/{page}"
        if (reports_dir / run_id / "cells" / page).is_file()
        else None
    )


def _report_link(reports_dir: Path, run_id: str, name: str, prefix: str = "") -> str | None:
    return f"{prefix}{run_id}/{name}" if (reports_dir / run_id / name).is_file() else None


def diff_context(d: RunDiff | None, run: RunSummary, reports_dir: Path) -> dict[str, Any]:
    """The diff page of `run`; `d` is None when no earlier run is comparable."""

    def side(s: RunSummary, cell: CellState) -> dict[str, Any]:
        return {"cell": cell, "href": _cell_link(reports_dir, s.run_id, cell, "../")}

    ctx: dict[str, Any] = {
        "manifest": _page_manifest(run.run_id),
        "run": run,
        "diff": d,
        "prev_href": None,
        "changed": [],
        "added": [],
        "removed": [],
    }
    if d is None:
        return ctx
    ctx["prev_href"] = _report_link(reports_dir, d.a.run_id, "index.html", "../")
    ctx["changed"] = [
        {"before": side(d.a, c.before), "after": side(d.b, c.after)} for c in d.changed
    ]
    ctx["added"] = [side(d.b, c) for c in d.added]
    ctx["removed"] = [side(d.a, c) for c in d.removed]
    ctx["metrics"] = [metric_row(m) for m in d.metrics]
    ctx["metric_changes"] = [r for r in ctx["metrics"] if r["called"]]
    ctx["metric_rule"] = metric_rule(d)
    return ctx


def _percent(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:+.1f}%"


def metric_row(m: MetricChange) -> dict[str, Any]:
    """A compared metric as the diff page and the terminal show it."""
    c = m.comparison
    interval = (
        "—" if c.low is None or c.high is None else f"{_percent(c.low)} to {_percent(c.high)}"
    )
    return {
        "name": m.name,
        "before": m.before,
        "after": m.after,
        "metric": m.metric.title,
        "median_before": shown(c.median_a, m.metric),
        "median_after": shown(c.median_b, m.metric),
        "trials": f"{c.n_a} vs {c.n_b}",
        "change": _percent(c.change),
        "interval": interval,
        "p": f"{c.p_value:.3g}",
        "test": c.test,
        "called": c.called,
        "direction": m.direction,
    }


def metric_rule(d: RunDiff) -> str:
    """How a metric change is called, with this diff's thresholds."""
    return (
        f"called when significant at alpha {d.alpha:g} and the median moved at least "
        f"{d.min_change * 100:g}%; the Mann-Whitney U test (exact) decides when the trials "
        f"can reach alpha, else the bootstrap interval of the ratio of medians must exclude "
        f"no change; at least 3 trials a side"
    )


def index_context(runs: list[RunSummary], reports_dir: Path) -> dict[str, Any]:
    """Every run, newest first, with what changed since its previous comparable run."""
    entries = []
    for run in reversed(runs):
        prev = previous_comparable(runs, run)
        d = diff(prev, run) if prev else None
        entries.append(
            {
                "run": run,
                "kernels": sorted(run.releases.items()),
                "counts": [(v, run.counts.get(v, 0)) for v in VERDICT_ORDER],
                "report_href": _report_link(reports_dir, run.run_id, "index.html"),
                "diff_href": _report_link(reports_dir, run.run_id, "diff.html"),
                "previous": prev.run_id if prev else None,
                "diff": d,
            }
        )
    return {"manifest": _page_manifest("runs"), "entries": entries}


def render_history(run_dir: Path, out_dir: Path, roots: list[Path]) -> tuple[Path, Path]:
    """Write `out_dir/diff.html` for this run and `out_dir/../index.html` for every run.

    The runs are those under `roots` plus this one, wherever its directory is.
    """
    from matrix.report.render import environment

    out_dir = Path(out_dir)
    reports_dir = out_dir.parent
    runs = load_runs(*roots, run_dir)
    current = _find(runs, run_dir) or summarize(run_dir)
    prev = previous_comparable(runs, current)
    env = environment()
    d = diff(prev, current) if prev else None
    out_dir.mkdir(parents=True, exist_ok=True)
    diff_page = out_dir / "diff.html"
    ctx = diff_context(d, current, reports_dir)
    rundir.write_text_atomic(diff_page, env.get_template("diff.html").render(ctx))
    index = reports_dir / "index.html"
    html = env.get_template("runs.html").render(index_context(runs, reports_dir))
    rundir.write_text_atomic(index, html)
    return index, diff_page


def _find(runs: list[RunSummary], run_dir: Path) -> RunSummary | None:
    target = Path(run_dir).resolve()
    return next((r for r in runs if r.run_dir.resolve() == target), None)


def print_diff(d: RunDiff, console: Console | None = None) -> None:
    """The diff in the terminal, a line per change so CI logs stay greppable.

    Every guest string is plain `Text` with control characters removed (no markup).
    """
    console = console or Console(highlight=False, soft_wrap=True)
    console.print(Text(f"{clean(d.a.run_id)} -> {clean(d.b.run_id)}", style="bold"))
    for name, before, after in d.releases:
        console.print(Text(f"  new build of {clean(name)}: {clean(before)} -> {clean(after)}"))
    for c in d.changed:
        line = Text(f"  changed: {clean(c.after.name)}: ")
        line.append_text(_verdict(c.before))
        line.append(" -> ")
        line.append_text(_verdict(c.after))
        line.append(f" ({clean(c.after.reason)})")
        console.print(line)
    for label, cells in (("added", d.added), ("removed", d.removed)):
        for cell in cells:
            console.print(Text(f"  {label}: {clean(cell.name)} ({cell.verdict})"))
    for m in d.metric_changes:
        r = metric_row(m)
        console.print(
            Text(
                f"  metric: {clean(r['name'])}: {r['metric']} {clean(r['median_before'])} -> "
                f"{clean(r['median_after'])}, {r['change']} ({(1 - d.alpha) * 100:g}% interval "
                f"{r['interval']}; {r['test']} p={r['p']}, {r['trials']} trials)"
                + (f" {r['direction']}" if r["direction"] else "")
            )
        )
    console.print(
        Text(
            f"{len(d.changed)} verdicts changed, {len(d.added)} cells added, "
            f"{len(d.removed)} removed, {len(d.releases)} kernels rebuilt, "
            f"{d.unchanged} unchanged; {len(d.metric_changes)} metrics changed of "
            f"{d.metrics_testable} tested (min change {d.min_change * 100:g}%, "
            f"alpha {d.alpha:g})"
        )
    )
    if d.metrics and not d.metrics_testable:
        console.print(
            Text("  metrics not tested: fewer than 3 trials a side (run with --trials 3 or more)")
        )


def _verdict(cell: CellState) -> Text:
    text = Text(cell.verdict, style=COLOURS.get(cell.verdict, ""))
    text.append(f" [{clean(cell.key_figure)}]")
    return text
