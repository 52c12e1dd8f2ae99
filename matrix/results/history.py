"""Runs over time: find the runs on disk, and say what changed between two of them:
verdicts, and metrics over the trials of each setting (see `matrix.results.stats`).

Cells are matched by what they measure, (kernel, scenario, requested sysctls, trial),
never by cell id: an id hashes the kernel build too, so a nightly run on a kernel that
got a new Debian upload would otherwise share no cell with the night before. A new
build shows up as a release change of that kernel instead.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from matrix.errors import KmatrixError
from matrix.plan.cells import scenarios_from
from matrix.results import stats
from matrix.results import table as results
from matrix.run import rundir
from matrix.scenarios.catalogue import Catalogue
from matrix.scenarios.manifest import MetricSpec

CellKey = tuple[str, str, str, int]
"""(kernel, scenario, sysctls as sorted JSON, trial)."""
SettingKey = tuple[str, str, str]
"""A cell's key without its trial: the trials of one setting are its samples."""

DEFAULT_MIN_CHANGE = 0.05
DEFAULT_ALPHA = 0.05
RATE_METRICS = ("early_rate", "late_rate")
"""The figures of a series-rate rule, compared for the scenarios that have one."""


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
    samples: dict[SettingKey, dict[str, tuple[float, ...]]] = field(default_factory=dict)
    """Per setting, each compared metric's values over its measured trials."""
    settings: dict[SettingKey, CellState] = field(default_factory=dict)
    """Per setting, its first trial: what names it."""
    metric_specs: dict[str, tuple[MetricSpec, ...]] = field(default_factory=dict)
    """Per scenario, the metrics compared between runs (see `compared_metrics`)."""
    shard: str = ""
    """"I/N" for a shard of a plan (`run --shard`), else empty."""

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
class MetricChange:
    """One metric of one setting, compared over its trials in two runs (or two kernels)."""

    before: CellState
    after: CellState
    metric: MetricSpec
    comparison: stats.Comparison

    @property
    def name(self) -> str:
        """The setting, as `CellState.name` without the trial; both kernels when they differ."""
        kernel = self.after.kernel
        if self.before.kernel != kernel:
            kernel = f"{self.before.kernel} → {kernel}"
        setting = self.after.sysctl_label or "defaults"
        return f"{kernel} {self.after.scenario} {setting}"

    @property
    def direction(self) -> str:
        """ "better" or "worse" by the metric's declared direction; "" when it declares none."""
        change = self.comparison.change
        if not self.metric.better or not change:
            return ""
        return "better" if (change > 0) == (self.metric.better == "higher") else "worse"


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
    metrics: list[MetricChange] = field(default_factory=list)
    """Every metric compared (both sides with at least one measured trial)."""
    min_change: float = DEFAULT_MIN_CHANGE
    alpha: float = DEFAULT_ALPHA

    @property
    def verdicts_changed(self) -> bool:
        return bool(self.changed)

    @property
    def metric_changes(self) -> list[MetricChange]:
        """The metrics whose change is called: significant and at least min_change."""
        return [m for m in self.metrics if m.comparison.called]

    @property
    def metrics_changed(self) -> bool:
        return bool(self.metric_changes)

    @property
    def metrics_testable(self) -> int:
        """How many compared metrics had enough trials on both sides to be tested."""
        return sum(m.comparison.test != "too few trials" for m in self.metrics)

    def failed(self, on: str | None) -> bool:
        """--fail-on-change: verdict, metric or any."""
        if on == "verdict":
            return self.verdicts_changed
        if on == "metric":
            return self.metrics_changed
        return on == "any" and (self.verdicts_changed or self.metrics_changed)

    @property
    def empty(self) -> bool:
        return not (
            self.changed or self.added or self.removed or self.releases or self.metric_changes
        )


def setting_key(key: CellKey) -> SettingKey:
    return key[:3]


def compared_metrics(catalogue: Catalogue) -> dict[str, tuple[MetricSpec, ...]]:
    """Per scenario: its declared metrics with a `better` direction, and the early and late
    rates for a scenario judged by a series-rate rule."""
    out = {}
    for s in catalogue.scenarios:
        specs = [m for m in s.metrics if m.better]
        if s.series_rule():
            unit = f"{s.report.counter_unit or 'counts'}/s"
            specs += [
                MetricSpec(name, unit=unit, better="higher", label=name.replace("_", " "), digits=0)
                for name in RATE_METRICS
                if not s.metric(name)
            ]
        out[s.name] = tuple(specs)
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def metric_samples(
    rows: list[dict[str, Any]], specs: dict[str, tuple[MetricSpec, ...]]
) -> dict[SettingKey, dict[str, tuple[float, ...]]]:
    """Per setting, each compared metric's values over the trials that measured something
    (infra is no measurement), from each row's `metrics`."""
    out: dict[SettingKey, dict[str, list[float]]] = {}
    for row in rows:
        if row["verdict"] == "infra":
            continue
        found = out.setdefault(setting_key(cell_key(row)), {})
        metrics = row.get("metrics") or {}
        for spec in specs.get(str(row["scenario"]), ()):
            value = _number(metrics.get(spec.name))
            if value is not None:
                found.setdefault(spec.name, []).append(value)
    return {k: {m: tuple(v) for m, v in ms.items()} for k, ms in out.items()}


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
    specs = compared_metrics(scenarios_from(rundir.read_json(Path(run_dir) / "plan.json")))
    settings: dict[SettingKey, CellState] = {}
    for key, state in cells.items():
        settings.setdefault(setting_key(key), state)
    shard = man.get("shard") if isinstance(man.get("shard"), dict) else None
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
        samples=metric_samples(rows, specs),
        settings=settings,
        metric_specs=specs,
        shard=f"{shard.get('index')}/{shard.get('count')}" if shard else "",
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
    """The latest run before `run` that measured at least one of its (kernel, scenario).
    A shard is a part of a run, so it is compared with only when `run` is a shard too."""
    mine = run.pairs
    earlier = [
        r
        for r in runs
        if r.order < run.order
        and r.run_dir.resolve() != run.run_dir.resolve()
        and r.pairs & mine
        and (run.shard or not r.shard)
    ]
    return max(earlier, key=lambda r: r.order) if earlier else None


def kernel_view(run: RunSummary, kernel: str) -> RunSummary:
    """`run` seen through one kernel, its cells keyed without the kernel's name, so that
    `diff` of two views compares two kernels cell by cell."""
    if kernel not in run.releases:
        known = ", ".join(sorted(run.releases)) or "none"
        raise KmatrixError(f"{run.run_dir}: no kernel {kernel!r} in this run; it has {known}")
    return replace(
        run,
        run_id=f"{run.run_id} {kernel}",
        releases={},
        cells={("",) + k[1:]: c for k, c in run.cells.items() if k[0] == kernel},
        samples={("",) + k[1:]: v for k, v in run.samples.items() if k[0] == kernel},
        settings={("",) + k[1:]: v for k, v in run.settings.items() if k[0] == kernel},
    )


def metric_changes(
    a: RunSummary, b: RunSummary, min_change: float, alpha: float
) -> list[MetricChange]:
    """Every metric both runs measured for a setting, compared over its trials."""
    out = []
    for key in sorted(a.samples.keys() & b.samples.keys()):
        before, after = a.settings.get(key), b.settings.get(key)
        if before is None or after is None:
            continue
        for spec in b.metric_specs.get(key[1], ()):
            xa, xb = a.samples[key].get(spec.name), b.samples[key].get(spec.name)
            if xa and xb:
                cmp = stats.compare(xa, xb, alpha, min_change)
                out.append(MetricChange(before, after, spec, cmp))
    return out


def diff(
    a: RunSummary,
    b: RunSummary,
    min_change: float = DEFAULT_MIN_CHANGE,
    alpha: float = DEFAULT_ALPHA,
) -> RunDiff:
    """Cells whose verdict changed from `a` to `b`, cells only one has, new kernel builds,
    and every compared metric (a called metric change is a signal of its own)."""
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
        metrics=metric_changes(a, b, min_change, alpha),
        min_change=min_change,
        alpha=alpha,
    )
