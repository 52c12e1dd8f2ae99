"""What the terminal shows: live progress per kernel, a line per finished cell, tables.

Everything that came from a guest is printed with markup off and control characters
removed, so a hostile collector string cannot drive the terminal.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from matrix.classify.figures import key_figure
from matrix.classify.remeasure import attempts_of, base_of, fold, wants_more
from matrix.collect import sanitize
from matrix.model import Batch, KernelSpec
from matrix.plan.cells import sysctl_label
from matrix.scenarios.catalogue import Catalogue

COLOURS = {
    "success": "green",
    "slowdown": "yellow",
    "hang": "red",
    "fail": "red",
    "error": "magenta",
    "skip": "cyan",
    "infra": "bright_black",
}


def clean(text: Any) -> str:
    """Strip terminal escape sequences and control characters (newlines and tabs stay)."""
    return sanitize.clean(str(text))


def task_label(text: Any) -> str:
    """A progress-bar description: rich parses those as markup, so a release or a file
    name holding "[/]" would crash the display and "[red]" would restyle it."""
    return escape(clean(text))


def host_sysctl_line(batch: str, change: dict[str, Any]) -> str:
    """One agent.json leak-check entry in words, cleaned: it comes from the guest."""
    c = change
    return clean(
        f"{batch}: error: sysctl {c.get('key')} of the starting network namespace changed "
        f"from {c.get('before')} to {c.get('after')} after cell {c.get('cell_id')}: "
        f"{c.get('action')}"
    )


class Display:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.labels: dict[str, str] = {}
        self.scenarios: Catalogue | None = None
        self.seen: dict[str, dict[str, Any]] = {}
        """Every result shown so far, by attempt id: a verdict is folded over them."""
        self.lock = threading.Lock()
        self.run_dir: Path | None = None
        self.shown_host: set[tuple[str, int]] = set()

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def note(self, text: str) -> None:
        self.console.print(Text(clean(text)))

    def download(self, label: str, done: int, total: int) -> None:
        """Catalog progress: one bar per file being downloaded."""
        with self.lock:
            if label not in self.tasks:
                self.tasks[label] = self.progress.add_task(task_label(label), total=total or None)
                self.progress.start()
            self.progress.update(self.tasks[label], completed=done)
            if total and done >= total:
                self.progress.stop()

    def start(
        self,
        run_dir: Path,
        batches: list[Batch],
        failures: dict[str, str],
        fixed: set[str],
        scenarios: Catalogue | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.scenarios = scenarios
        self.note(f"run directory: {run_dir}")
        for name, why in failures.items():
            self.console.print(Text(f"{name}: not run: {clean(why)}", style="red"))
        for b in batches:
            if b.kernel.spec.name not in failures:
                self.tasks[b.kernel.spec.name] = self.progress.add_task(
                    task_label(f"{b.kernel.spec.name} ({b.kernel.release})"), total=len(b.cells)
                )
                for c in b.cells:
                    self.labels[c.id] = f"{c.scenario} {sysctl_label(c.sysctls, fixed)}"

    def event(self, kernel: str, event: str, result: dict[str, Any] | None) -> None:
        if event == "done":
            self.host_sysctl_error(kernel)
        if event == "remeasure" and result:
            self.note(
                f"{kernel}: measuring {result['cells']} cells again (attempt {result['attempt']})"
            )
            if kernel in self.tasks:
                self.progress.update(self.tasks[kernel], total=None)
            return
        if event != "result" or result is None:
            return
        cell_id = str(result.get("cell_id"))
        base = base_of(cell_id)
        with self.lock:
            self.seen[cell_id] = result
            folded = fold(base, attempts_of(base, self.seen), scenarios=self.scenarios)
        c = folded.classified
        label = self.labels.get(base, str(result.get("scenario")))
        line = Text(f"{kernel:>8} {clean(label):<28} ")
        line.append(f"{c.verdict.value:<8}", style=COLOURS[c.verdict.value])
        scenario = str(result.get("scenario", ""))
        line.append(" " + clean(key_figure(scenario, c, self.scenarios)))
        if wants_more(folded):
            thin = next((a.thin for a in reversed(folded.attempts) if a.thin), ())
            line.append(" · thin margin: " + clean("; ".join(thin) or folded.confirmation))
        elif len(folded.attempts) > 1:
            line.append(f" · {folded.confirmation} over {len(folded.attempts)} attempts")
        self.progress.console.print(line)
        if kernel in self.tasks and base == cell_id:
            self.progress.advance(self.tasks[kernel])

    def host_sysctl_error(self, kernel: str) -> None:
        """Batches whose agent saw its starting namespace change: one red line per sysctl,
        read from batches/*.json (a batch's file is written just before its "done"; a
        round of re-measurements has a file of its own), each line shown once."""
        if self.run_dir is None:
            return
        for path in sorted((self.run_dir / "batches").glob("*.json")):
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            changes = doc.get("host_sysctl_changed") if isinstance(doc, dict) else None
            for n, c in enumerate(changes if isinstance(changes, list) else []):
                if isinstance(c, dict) and (path.stem, n) not in self.shown_host:
                    self.shown_host.add((path.stem, n))
                    line = Text(host_sysctl_line(path.stem, c), style="bold red")
                    self.progress.console.print(line)

    def summary(self, rows: list[dict[str, Any]], run_dir: Path, report: Path | None) -> None:
        counts = Counter(r["verdict"] for r in rows)
        parts = [f"{counts[v]} {v}" for v in COLOURS if counts[v]]
        self.note(f"{len(rows)} cells: " + ", ".join(parts))
        self.note(f"results: {run_dir / 'results.jsonl'}")
        if report:
            self.note(f"report: {report}")

    def results_table(self, rows: list[dict[str, Any]]) -> None:
        t = Table(
            "kernel", "release", "scenario", "sysctls", "trial", "verdict", "figure", "reason"
        )
        for r in rows:
            t.add_row(
                *(
                    Text(clean(r[k]))
                    for k in ("kernel", "kernel_release", "scenario", "sysctl_label", "trial")
                ),
                Text(r["verdict"], style=COLOURS[r["verdict"]]),
                Text(clean(r["key_figure"])),
                Text(clean(r["reason"])),
            )
        Console(highlight=False).print(t)

    def scenarios_table(self, scenarios: Any) -> None:
        """`kmatrix scenarios`: each with where it comes from and what it sweeps."""
        t = Table("name", "from", "title", "reports", "parameters", "sysctl sweep", "default")
        for s in scenarios:
            params = " ".join(f"{k}={','.join(v)}" for k, v in s.params) or "-"
            sweep = " ".join(f"{k.rsplit('.', 1)[-1]}={','.join(v)}" for k, v in s.sysctls)
            t.add_row(
                *(Text(clean(x)) for x in (s.name, s.origin, s.title, s.result, params, sweep)),
                "yes" if s.default else "no",
            )
        Console(highlight=False).print(t)

    def kernels_table(self, specs: list[KernelSpec], catalog: Any) -> None:
        t = Table("name", "source", "resolved", "cached")
        for s in specs:
            src = s.source
            where = (
                f"{src.suite}: {src.package}"
                if s.kind == "debian"
                else str(getattr(src, "vmlinuz", "running kernel"))
            )
            k = catalog.cached(s)
            t.add_row(s.name, f"{s.kind} ({where})", k.release if k else "-", "yes" if k else "no")
        Console(highlight=False).print(t)
