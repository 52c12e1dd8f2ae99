"""scenario.toml -> a validated, frozen Scenario: what runs, how it reports, how it is judged.

A scenario is a directory NAME/ holding scenario.toml and its program. The schema is the
dataclasses below (as in vmtest, the config structs are the schema); `parse` checks a
whole manifest in one pass and each error names the file, the key and what is expected.
The built-in puzzles are manifests in exactly this format.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matrix import tomlcheck as tc
from matrix.errors import ConfigError
from matrix.model import LIMIT_NAMES

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""A scenario's name: its directory's name, a column of the matrix, part of file names."""
PARAM = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
"""A parameter reaches the program as an environment variable of this (lower-case) name,
as lkp-tests passes job parameters; lower case cannot clobber PATH, HOME or KMATRIX_*."""
SYSCTL = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_-]+)+$")
"""A sysctl key as sysctl(8) writes it; it becomes a path under /proc/sys."""
RESULTS = ("json", "lava", "ktap", "exit")
"""How a program reports: a result.json, LAVA signal lines, KTAP/TAP lines, or only its
exit code (kselftest's: 0 pass, 1 fail, 4 skip, anything else an error)."""
LIMITS = LIMIT_NAMES
"""The sweep's limits a program may honour (passed as KMATRIX_<NAME> upper-cased)."""
BETTER = ("higher", "lower")
VERDICT_NAMES = ("success", "slowdown", "hang", "error", "fail", "skip", "infra")
OPS = (">", ">=", "<", "<=", "==", "!=")


@dataclass(frozen=True)
class MetricSpec:
    """One metric the program reports: its unit, which direction is better, and how the
    report prints it (value x scale, in display_unit, with digits decimals)."""

    name: str
    unit: str = ""
    better: str | None = None
    label: str = ""
    scale: float = 1.0
    display_unit: str = ""
    digits: int | None = None

    @property
    def title(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class SeriesRateRule:
    """Late rate against early rate of a cumulative counter in the time series (puzzle 2).

    With `knee_metric`, the early rate is the median 1-second rate before the counter
    reached that metric's value and the late rate runs from there to the end; with `goal`,
    a cell that did not get the sweep's knee_margin past the knee is inconclusive."""

    counter: str = "iterations"
    knee_metric: str | None = None
    knee_half_range: str | None = None
    """A metric holding a [low, high] range whose half is the knee (2B: the port range)."""
    min_ratio: float | None = None
    goal: bool = False
    kind: str = "series_rate"


@dataclass(frozen=True)
class MetricRule:
    """A metric against a constant: when `metric op value` does not hold, `otherwise`."""

    metric: str
    op: str
    value: float
    otherwise: str
    reason: str = ""
    kind: str = "metric"


@dataclass(frozen=True)
class BaselineRule:
    """A metric against the same cell on a baseline kernel of the run: below min_ratio
    of the baseline's (in the metric's better direction), `otherwise`."""

    metric: str
    min_ratio: float
    otherwise: str = "slowdown"
    kernel: str | None = None
    """The baseline kernel's name; None: the run's --baseline."""
    kind: str = "baseline"


Rule = SeriesRateRule | MetricRule | BaselineRule


@dataclass(frozen=True)
class RatioSpec:
    """Show this scenario beside another one per kernel, with the ratio of a metric
    (1B's bytes over 1A's), against an expected value when the mechanism predicts one."""

    of: str
    metric: str
    expect: float | None = None
    slack: float = 0.05
    expect_text: str = ""
    context_metric: str | None = None
    columns: tuple[str, ...] = ()
    """Further metrics shown side by side ("a / b") in the pair's table."""


@dataclass(frozen=True)
class ReportSpec:
    """What the matrix shows for this scenario."""

    key: str | None = None
    """The metric in a matrix cell (a series-rate rule shows its rates instead)."""
    success: str = ""
    """A success's reason, formatted with the cell's metrics, e.g. "queued {bytes_queued:,} B"."""
    context: str | None = None
    """A metric quoted beside collapses in the explanation (e.g. tw_max)."""
    ratio: RatioSpec | None = None
    plot: str | None = None
    """A series field to plot over time (a counter is plotted as its rate)."""
    counter_unit: str = ""
    """What one count of the counter is, for figures like "6,303 conns"."""
    section: str = ""
    """The matrix page's section this scenario is shown in (scenarios sharing a title
    share a section); empty: a section of its own, titled by its name and title."""
    section_note: str = ""
    """A line under the section's title: what a cell shows."""


@dataclass(frozen=True)
class Scenario:
    """One scenario, from its manifest: everything downstream reads this, never a name."""

    name: str
    title: str
    directory: Path
    command: tuple[str, ...]
    timeout_s: float
    result: str = "exit"
    explanation: str = ""
    limits: tuple[str, ...] = ()
    params: tuple[tuple[str, tuple[str, ...]], ...] = ()
    sysctls: tuple[tuple[str, tuple[str, ...]], ...] = ()
    metrics: tuple[MetricSpec, ...] = ()
    rules: tuple[Rule, ...] = ()
    report: ReportSpec = field(default_factory=ReportSpec)
    default: bool = True
    """In the default sweep when the run names no scenarios."""
    search_fixed: tuple[tuple[str, str], ...] = ()
    """Sysctls held fixed while `kmatrix threshold` searches another one."""
    origin: str = "built-in"

    def metric(self, name: str) -> MetricSpec | None:
        return next((m for m in self.metrics if m.name == name), None)

    def series_rule(self) -> SeriesRateRule | None:
        return next((r for r in self.rules if isinstance(r, SeriesRateRule)), None)

    def to_doc(self) -> dict[str, Any]:
        """The manifest as plan.json keeps it, so a run is reported as it was measured
        even after its scenario directory changed or went away."""
        return _doc(self)


_TOP = {
    "title",
    "command",
    "timeout_s",
    "result",
    "explanation",
    "limits",
    "params",
    "sysctls",
    "metrics",
    "rules",
    "report",
    "default",
    "search",
}


def load(directory: Path, origin: str) -> Scenario:
    """Read and check NAME/scenario.toml."""
    path = directory / "scenario.toml"
    src = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        expected = "not found; a scenario directory holds scenario.toml"
        raise ConfigError(src, "(file)", expected) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(src, "(file)", f"unreadable: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(src, "(syntax)", f"not valid TOML: {e}") from None
    return parse(src, directory.name, directory.resolve(), data, origin)


def parse(src: str, name: str, directory: Path, t: dict[str, Any], origin: str) -> Scenario:
    """One pass over a parsed manifest; the first problem raises ConfigError."""
    if not NAME.fullmatch(name):
        raise ConfigError(
            src,
            "(directory)",
            f"{name!r}; a scenario's directory name must be letters, "
            "digits, '_' or '-', starting with a letter or digit",
        )
    tc.only_keys(src, "", t, _TOP)
    command = tc.string_list(src, "command", tc.required(src, "", t, "command"))
    result = t.get("result", "exit")
    if result not in RESULTS:
        raise ConfigError(src, "result", f"{result!r}; expected one of {', '.join(RESULTS)}")
    limits = tc.string_list(src, "limits", t["limits"]) if "limits" in t else ()
    for lim in limits:
        if lim not in LIMITS:
            raise ConfigError(src, "limits", f"{lim!r}; expected some of {', '.join(LIMITS)}")
    metrics = _metrics(src, tc.table(src, "metrics", t.get("metrics", {})))
    known = {m.name for m in metrics}
    return Scenario(
        name=name,
        title=tc.string(src, "title", tc.required(src, "", t, "title")),
        directory=directory,
        command=command,
        timeout_s=tc.number(src, "timeout_s", tc.required(src, "", t, "timeout_s")),
        result=result,
        explanation=tc.string(src, "explanation", t["explanation"]) if "explanation" in t else "",
        limits=limits,
        params=_params(src, tc.table(src, "params", t.get("params", {}))),
        sysctls=sysctl_axes(src, "sysctls", tc.table(src, "sysctls", t.get("sysctls", {}))),
        metrics=metrics,
        rules=_rules(src, t.get("rules", []), known),
        report=_report(src, tc.table(src, "report", t.get("report", {}))),
        default=tc.boolean(src, "default", t.get("default", True)),
        search_fixed=_search(src, tc.table(src, "search", t.get("search", {}))),
        origin=origin,
    )


def sysctl_key(src: str, key: str, name: str) -> str:
    if not SYSCTL.fullmatch(name):
        raise ConfigError(
            src,
            f"{key}.{name}",
            "not a sysctl name; expected dotted words like net.ipv4.tcp_tw_reuse",
        )
    return name


def sysctl_axes(src: str, key: str, t: dict[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((sysctl_key(src, key, k), tc.axis(src, f"{key}.{k}", v)) for k, v in t.items())


def _params(src: str, t: dict[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    out = []
    for k, v in t.items():
        if not PARAM.fullmatch(k):
            raise ConfigError(
                src,
                f"params.{k}",
                "expected a lower-case name (letters, digits, '_'), "
                "which the program gets as an environment variable",
            )
        out.append((k, tc.axis(src, f"params.{k}", v)))
    return tuple(out)


def _metrics(src: str, t: dict[str, Any]) -> tuple[MetricSpec, ...]:
    out = []
    for name, spec in t.items():
        key = f"metrics.{name}"
        s = tc.table(src, key, spec)
        tc.only_keys(src, key, s, {"unit", "better", "label", "scale", "display_unit", "digits"})
        better = s.get("better")
        if better is not None and better not in BETTER:
            raise ConfigError(src, f"{key}.better", f"{better!r}; expected higher or lower")
        out.append(
            MetricSpec(
                name=name,
                unit=tc.string(src, f"{key}.unit", s["unit"]) if "unit" in s else "",
                better=better,
                label=tc.string(src, f"{key}.label", s["label"]) if "label" in s else "",
                scale=tc.number(src, f"{key}.scale", s.get("scale", 1.0)),
                display_unit=(
                    tc.string(src, f"{key}.display_unit", s["display_unit"])
                    if "display_unit" in s
                    else ""
                ),
                digits=tc.integer(src, f"{key}.digits", s["digits"], 0) if "digits" in s else None,
            )
        )
    return tuple(out)


class _Table:
    """Checked reads from one table of the manifest, each error naming its key."""

    def __init__(self, src: str, where: str, t: dict[str, Any], allowed: set[str]) -> None:
        tc.only_keys(src, where, t, allowed)
        self.src, self.where, self.t = src, where, t

    def key(self, k: str) -> str:
        return f"{self.where}.{k}"

    def required(self, k: str) -> Any:
        return tc.required(self.src, self.where, self.t, k)

    def string(self, k: str, default: str | None = None, required: bool = False) -> Any:
        if k not in self.t:
            return tc.string(self.src, self.key(k), self.required(k)) if required else default
        return tc.string(self.src, self.key(k), self.t[k])

    def number(self, k: str, default: float | None = None, zero: bool = False) -> Any:
        if k not in self.t:
            return default
        return tc.number(self.src, self.key(k), self.t[k], zero=zero)

    def verdict(self, k: str, default: str | None = None) -> str:
        v = self.t.get(k, default) if default is not None else self.required(k)
        if v not in VERDICT_NAMES:
            expected = ", ".join(VERDICT_NAMES)
            raise ConfigError(self.src, self.key(k), f"{v!r}; expected one of {expected}")
        return v

    def metric(self, k: str, known: set[str], required: bool = True) -> Any:
        if k not in self.t and not required:
            return None
        name = self.string(k, required=True)
        if name not in known:
            declared = ", ".join(sorted(known)) or "none"
            raise ConfigError(
                self.src, self.key(k), f"{name!r} is not a declared metric; declared: {declared}"
            )
        return name


def _rule(src: str, key: str, r: dict[str, Any], known: set[str]) -> Rule:
    kind = r.get("rule")
    if kind == "series_rate":
        allowed = {"rule", "counter", "knee_metric", "knee_half_range", "min_ratio", "goal"}
        s = _Table(src, key, r, allowed)
        return SeriesRateRule(
            counter=s.string("counter", "iterations"),
            knee_metric=s.metric("knee_metric", known, required=False),
            knee_half_range=s.metric("knee_half_range", known, required=False),
            min_ratio=s.number("min_ratio"),
            goal=tc.boolean(src, s.key("goal"), r.get("goal", False)),
        )
    if kind == "metric":
        s = _Table(src, key, r, {"rule", "metric", "op", "value", "otherwise", "reason"})
        op = s.required("op")
        if op not in OPS:
            raise ConfigError(src, s.key("op"), f"{op!r}; expected one of {' '.join(OPS)}")
        val = s.required("value")
        if isinstance(val, bool) or not isinstance(val, int | float):
            raise ConfigError(src, s.key("value"), f"{val!r}; expected a number")
        return MetricRule(
            metric=s.metric("metric", known),
            op=op,
            value=float(val),
            otherwise=s.verdict("otherwise"),
            reason=s.string("reason", ""),
        )
    if kind == "baseline":
        s = _Table(src, key, r, {"rule", "metric", "min_ratio", "otherwise", "kernel"})
        return BaselineRule(
            metric=s.metric("metric", known),
            min_ratio=tc.number(src, s.key("min_ratio"), s.required("min_ratio")),
            otherwise=s.verdict("otherwise", "slowdown"),
            kernel=s.string("kernel"),
        )
    raise ConfigError(
        src, f"{key}.rule", f"{kind!r}; expected one of series_rate, metric, baseline"
    )


def _rules(src: str, v: Any, known: set[str]) -> tuple[Rule, ...]:
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise ConfigError(src, "rules", "expected [[rules]] tables")
    return tuple(_rule(src, f"rules[{i}]", r, known) for i, r in enumerate(v))


def _report(src: str, t: dict[str, Any]) -> ReportSpec:
    allowed = {
        "key",
        "success",
        "context",
        "ratio",
        "plot",
        "counter_unit",
        "section",
        "section_note",
    }
    s = _Table(src, "report", t, allowed)
    ratio = None
    if "ratio" in t:
        r = _Table(
            src,
            "report.ratio",
            tc.table(src, "report.ratio", t["ratio"]),
            {"of", "metric", "expect", "slack", "expect_text", "context_metric", "columns"},
        )
        ratio = RatioSpec(
            of=r.string("of", required=True),
            metric=r.string("metric", required=True),
            expect=r.number("expect"),
            slack=r.number("slack", 0.05, zero=True),
            expect_text=r.string("expect_text", ""),
            context_metric=r.string("context_metric"),
            columns=(
                tc.string_list(src, "report.ratio.columns", r.t["columns"])
                if "columns" in r.t
                else ()
            ),
        )
    return ReportSpec(
        key=s.string("key"),
        success=s.string("success", ""),
        context=s.string("context"),
        ratio=ratio,
        plot=s.string("plot"),
        counter_unit=s.string("counter_unit", ""),
        section=s.string("section", ""),
        section_note=s.string("section_note", ""),
    )


def _search(src: str, t: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    tc.only_keys(src, "search", t, {"fixed"})
    fixed = tc.table(src, "search.fixed", t.get("fixed", {}))
    return tuple(
        (sysctl_key(src, "search.fixed", k), tc.value(src, f"search.fixed.{k}", v))
        for k, v in fixed.items()
    )


def _doc(s: Scenario) -> dict[str, Any]:
    """Back to the manifest's own shape (what `parse` reads), plus name and origin."""
    doc: dict[str, Any] = {
        "title": s.title,
        "command": list(s.command),
        "timeout_s": s.timeout_s,
        "result": s.result,
        "default": s.default,
    }
    if s.explanation:
        doc["explanation"] = s.explanation
    if s.limits:
        doc["limits"] = list(s.limits)
    if s.params:
        doc["params"] = {k: list(v) for k, v in s.params}
    if s.sysctls:
        doc["sysctls"] = {k: list(v) for k, v in s.sysctls}
    if s.metrics:
        doc["metrics"] = {
            m.name: {
                k: v
                for k, v in (
                    ("unit", m.unit),
                    ("better", m.better),
                    ("label", m.label),
                    ("scale", m.scale if m.scale != 1.0 else None),
                    ("display_unit", m.display_unit),
                    ("digits", m.digits),
                )
                if v not in (None, "")
            }
            for m in s.metrics
        }
    if s.rules:
        doc["rules"] = [
            {"rule": r.kind} | {k: v for k, v in vars(r).items() if k != "kind" and v is not None}
            for r in s.rules
        ]
    rep = {k: v for k, v in vars(s.report).items() if v not in (None, "") and k != "ratio"}
    if s.report.ratio:
        rep["ratio"] = {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in vars(s.report.ratio).items()
            if v not in (None, "", ())
        }
    if rep:
        doc["report"] = rep
    if s.search_fixed:
        doc["search"] = {"fixed": dict(s.search_fixed)}
    return {"name": s.name, "origin": s.origin, "directory": str(s.directory), "manifest": doc}


def from_doc(doc: dict[str, Any]) -> Scenario:
    """The inverse of Scenario.to_doc (for a run's plan.json)."""
    return parse(
        f"plan.json scenario {doc.get('name')!r}",
        str(doc["name"]),
        Path(doc["directory"]),
        dict(doc["manifest"]),
        str(doc.get("origin", "")),
    )
