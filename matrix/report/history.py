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
from matrix.results.history import (
    CellState,
    RunDiff,
    RunSummary,
    diff,
    load_runs,
    previous_comparable,
    summarize,
)
from matrix.run import rundir
from matrix.run.progress import COLOURS, clean

VERDICT_ORDER = ("success", "slowdown", "hang", "error", "infra")


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
    return ctx


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
    console.print(
        Text(
            f"{len(d.changed)} verdicts changed, {len(d.added)} cells added, "
            f"{len(d.removed)} removed, {len(d.releases)} kernels rebuilt, "
            f"{d.unchanged} unchanged"
        )
    )


def _verdict(cell: CellState) -> Text:
    text = Text(cell.verdict, style=COLOURS.get(cell.verdict, ""))
    text.append(f" [{clean(cell.key_figure)}]")
    return text
