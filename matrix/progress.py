"""What the terminal shows: live progress per kernel, a line per finished cell, tables.

Everything that came from a guest is printed with markup off and control characters
removed, so a hostile collector string cannot drive the terminal.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from matrix import sanitize
from matrix.classify import classify, key_figure
from matrix.model import Batch, KernelSpec
from matrix.plan import sysctl_label

COLOURS = {
    "success": "green",
    "slowdown": "yellow",
    "hang": "red",
    "error": "magenta",
    "infra": "bright_black",
}


def clean(text: Any) -> str:
    """Strip terminal escape sequences and control characters (newlines and tabs stay)."""
    return sanitize.clean(str(text))


def task_label(text: Any) -> str:
    """A progress-bar description: rich parses those as markup, so a release or a file
    name holding "[/]" would crash the display and "[red]" would restyle it."""
    return escape(clean(text))


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
        self.lock = threading.Lock()

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
        self, run_dir: Path, batches: list[Batch], failures: dict[str, str], fixed: set[str]
    ) -> None:
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
        if event != "result" or result is None:
            return
        c = classify(result)
        label = self.labels.get(str(result.get("cell_id")), str(result.get("scenario")))
        line = Text(f"{kernel:>8} {clean(label):<28} ")
        line.append(f"{c.verdict.value:<8}", style=COLOURS[c.verdict.value])
        line.append(" " + clean(key_figure(str(result.get("scenario", "")), c)))
        self.progress.console.print(line)
        if kernel in self.tasks:
            self.progress.advance(self.tasks[kernel])

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
