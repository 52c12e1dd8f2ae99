"""Runs made of rounds: each round is one batch per kernel (one boot), and what a round
measures decides the next. Used by `kmatrix threshold` and `kmatrix bisect`.

The run directory keeps the normal layout (manifest.json, plan.json, cells/, batches/),
with plan.json rewritten after every round to hold every cell planned so far, so
`kmatrix results`, `report` and `export` read a search run like any other.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matrix.classify.rules import classify
from matrix.collect import sanitize
from matrix.model import Batch, Cell, Limits, ResolvedKernel
from matrix.plan import cells as plan
from matrix.plan.config import Config
from matrix.run import job, rundir
from matrix.run.execute import run_batches
from matrix.scenarios.catalogue import Catalogue, builtin
from matrix.scenarios.sysctls import check_host_cells


def print_progress(kernel: str, event: str, result: dict[str, Any] | None) -> None:
    """One line per finished cell on stderr: a search is a few dozen cells, not a matrix."""
    if event != "result" or result is None:
        return
    requested = (result.get("sysctls") or {}).get("requested") or {}
    verdict = classify(result).verdict.value
    values = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in requested.items())
    line = f"  {kernel}: {result.get('scenario')} {values}: {verdict}"
    print(sanitize.clean(line), file=sys.stderr, flush=True)


@dataclass
class Rounds:
    """The cells planned so far, per kernel, and how to run one more round of them."""

    run_dir: Path
    config: Config
    runner_for: Callable[[Batch], Any]
    jobs: int = 1
    progress: Callable[[str, str, dict[str, Any] | None], None] = print_progress
    fixed_keys: tuple[str, ...] = ()
    stop: threading.Event = field(default_factory=threading.Event)
    kernels: dict[str, ResolvedKernel] = field(default_factory=dict)
    cells: dict[str, list[Cell]] = field(default_factory=dict)

    def start(self, kernels: list[ResolvedKernel], argv: list[str]) -> None:
        """manifest.json and an empty plan, before anything boots."""
        for k in kernels:
            self.kernels[k.spec.name] = k
            self.cells.setdefault(k.spec.name, [])
        job.start_run(self.run_dir, self._batches(), self.config, argv)
        self._write_plan()

    def add_kernel(self, kernel: ResolvedKernel) -> None:
        """A kernel that joins mid-run (bisect fetches builds only when it needs them)."""
        self.kernels[kernel.spec.name] = kernel
        self.cells.setdefault(kernel.spec.name, [])
        self._write_plan()

    def run(self, new: dict[str, list[Cell]]) -> dict[str, str]:
        """Run one round (a batch per kernel with new cells); return verdict per cell id."""
        for name, cells in new.items():
            self.cells[name].extend(cells)
        self._write_plan()
        batches = [Batch(self.kernels[n], tuple(c)) for n, c in new.items() if c]
        with job.stop_on_signals(self.stop):
            run_batches(batches, self.runner_for, self.run_dir, self.jobs, self.stop, self.progress)
        return self.verdicts([c for b in batches for c in b.cells])

    def verdicts(self, cells: list[Cell]) -> dict[str, str]:
        """Each cell's verdict from what the run directory holds (infra when nothing)."""
        raw = rundir.cell_results(self.run_dir)
        outcomes = rundir.batches(self.run_dir)
        out = {}
        for c in cells:
            failure = (outcomes.get(c.kernel) or {}).get("failure") or "no result"
            found = classify(raw.get(c.id), failure, scenarios=self.config.catalogue)
            out[c.id] = found.verdict.value
        return out

    def batch_failure(self, kernel: str) -> str:
        doc = rundir.batches(self.run_dir).get(kernel) or {}
        return str(doc.get("failure") or "")

    def finish(self) -> list[dict[str, Any]]:
        return job.finish_run(self.run_dir, self.stop.is_set())

    def _batches(self) -> list[Batch]:
        return [Batch(self.kernels[n], tuple(c)) for n, c in self.cells.items()]

    def _write_plan(self) -> None:
        fixed = tuple((k, "") for k in self.fixed_keys)
        doc = plan.to_doc(self._batches(), fixed, self.config.catalogue)
        rundir.write_json(self.run_dir / "plan.json", doc)


def make_cell(
    kernel: ResolvedKernel,
    scenario: str,
    sysctls: tuple[tuple[str, str], ...],
    trial: int,
    limits: Limits,
    cat: Catalogue | None = None,
) -> Cell:
    """One probe cell, with its scenario's program (and its host-safety check)."""
    if kernel.spec.kind == "host":
        check_host_cells("command line", kernel.spec.name, {k for k, _ in sysctls})
    program = plan.program((cat or builtin()).get(scenario, "command line", "--scenario"))
    return Cell(
        kernel.spec.name, scenario, sysctls, trial, limits, kernel.identity, program=program
    )
