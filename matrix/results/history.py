"""Runs over time: find the runs on disk, and say what changed between two of them.

Cells are matched by what they measure, (kernel, scenario, requested sysctls, trial),
never by cell id: an id hashes the kernel build too, so a nightly run on a kernel that
got a new Debian upload would otherwise share no cell with the night before. A new
build shows up as a release change of that kernel instead.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matrix.results import table as results

CellKey = tuple[str, str, str, int]
"""(kernel, scenario, sysctls as sorted JSON, trial)."""


@dataclass(frozen=True)
class CellState:
    """What a run found for one cell: enough to show a change without reloading the run."""

    kernel: str
    scenario: str
    sysctl_label: str
    trial: int
    verdict: str
    key_figure: str
    reason: str
    cell_id: str

    @property
    def name(self) -> str:
        return f"{self.kernel} {self.scenario} {self.sysctl_label or 'defaults'} trial {self.trial}"


@dataclass(frozen=True)
class RunSummary:
    """One run as the history sees it: its provenance, kernels, verdicts and cells."""

    run_id: str
    run_dir: Path
    started_at: str
    ended_at: str
    interrupted: bool
    releases: dict[str, str]
    accelerators: tuple[str, ...]
    counts: dict[str, int]
    cells: dict[CellKey, CellState]

    @property
    def pairs(self) -> set[tuple[str, str]]:
        """The (kernel, scenario) pairs this run measured: what makes two runs comparable."""
        return {(k[0], k[1]) for k in self.cells}

    @property
    def order(self) -> tuple[str, str]:
        return (self.started_at, self.run_id)


@dataclass(frozen=True)
class VerdictChange:
    before: CellState
    after: CellState


@dataclass(frozen=True)
class RunDiff:
    """What changed from run `a` (earlier) to run `b` (later)."""

    a: RunSummary
    b: RunSummary
    changed: list[VerdictChange] = field(default_factory=list)
    added: list[CellState] = field(default_factory=list)
    removed: list[CellState] = field(default_factory=list)
    releases: list[tuple[str, str, str]] = field(default_factory=list)
    """(kernel, release in a, release in b) for kernels whose build changed."""
    unchanged: int = 0

    @property
    def verdicts_changed(self) -> bool:
        return bool(self.changed)

    @property
    def empty(self) -> bool:
        return not (self.changed or self.added or self.removed or self.releases)


def cell_key(row: dict[str, Any]) -> CellKey:
    """A cell across runs: kernel, scenario, its sysctls and parameters, trial."""
    setting = dict(row.get("sysctls") or {})
    params = row.get("params")
    if isinstance(params, dict) and params:
        setting["params"] = params
    sysctls = json.dumps(setting, sort_keys=True, default=str)
    return (str(row["kernel"]), str(row["scenario"]), sysctls, int(row["trial"]))


def is_run_dir(path: Path) -> bool:
    return (path / "manifest.json").is_file() and (path / "plan.json").is_file()


def summarize(run_dir: Path) -> RunSummary:
    """Load and classify a run, keeping only what the history needs (no time series)."""
    data = results.load_run(Path(run_dir))
    rows = data.table.to_dict(orient="records")
    man = data.manifest
    cells = {cell_key(r): _state(r) for r in rows}
    accels = sorted({str(k["accelerator"]) for k in man["kernels"] if k.get("accelerator")})
    return RunSummary(
        run_id=str(man.get("run_id") or Path(run_dir).name),
        run_dir=Path(run_dir),
        started_at=str(man.get("started_at") or ""),
        ended_at=str(man.get("ended_at") or ""),
        interrupted=bool(man.get("interrupted")),
        releases={str(k["name"]): str(k["release"]) for k in man["kernels"]},
        accelerators=tuple(accels),
        counts=dict(Counter(str(r["verdict"]) for r in rows)),
        cells=cells,
    )


def _state(row: dict[str, Any]) -> CellState:
    return CellState(
        kernel=str(row["kernel"]),
        scenario=str(row["scenario"]),
        sysctl_label=str(row.get("sysctl_label") or ""),
        trial=int(row["trial"]),
        verdict=str(row["verdict"]),
        key_figure=str(row.get("key_figure") or ""),
        reason=str(row.get("reason") or ""),
        cell_id=str(row["cell_id"]),
    )


def find_runs(*roots: Path) -> list[Path]:
    """Run directories directly under each root (or the root itself), each found once."""
    seen: dict[Path, Path] = {}
    for root in roots:
        root = Path(root)
        candidates = [root] if is_run_dir(root) else []
        if root.is_dir():
            candidates += [p for p in sorted(root.iterdir()) if p.is_dir() and is_run_dir(p)]
        for p in candidates:
            seen.setdefault(p.resolve(), p)
    return list(seen.values())


def load_runs(*roots: Path) -> list[RunSummary]:
    """Every readable run under the roots, oldest first; an unreadable one is left out."""
    out = []
    for path in find_runs(*roots):
        try:
            out.append(summarize(path))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(out, key=lambda r: r.order)


def previous_comparable(runs: list[RunSummary], run: RunSummary) -> RunSummary | None:
    """The latest run before `run` that measured at least one of its (kernel, scenario)."""
    mine = run.pairs
    earlier = [
        r
        for r in runs
        if r.order < run.order and r.run_dir.resolve() != run.run_dir.resolve() and r.pairs & mine
    ]
    return max(earlier, key=lambda r: r.order) if earlier else None


def diff(a: RunSummary, b: RunSummary) -> RunDiff:
    """Cells whose verdict changed from `a` to `b`, cells only one has, new kernel builds."""
    changed, unchanged = [], 0
    for key in sorted(a.cells.keys() & b.cells.keys()):
        before, after = a.cells[key], b.cells[key]
        if before.verdict != after.verdict:
            changed.append(VerdictChange(before, after))
        else:
            unchanged += 1
    releases = [
        (name, a.releases[name], b.releases[name])
        for name in sorted(a.releases.keys() & b.releases.keys())
        if a.releases[name] != b.releases[name]
    ]
    return RunDiff(
        a=a,
        b=b,
        changed=changed,
        added=[b.cells[k] for k in sorted(b.cells.keys() - a.cells.keys())],
        removed=[a.cells[k] for k in sorted(a.cells.keys() - b.cells.keys())],
        releases=releases,
        unchanged=unchanged,
    )
