"""The one short figure a matrix cell shows, from the verdict and the scenario's manifest."""

from __future__ import annotations

from typing import Any

from matrix.model import Classified, Verdict
from matrix.scenarios.catalogue import Catalogue, builtin
from matrix.scenarios.manifest import MetricSpec, Scenario


def shown(value: Any, spec: MetricSpec | None) -> str:
    """A metric as the manifest says to print it: scaled, with its unit and digits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    if spec is None:
        return f"{value:,.4g}" if isinstance(value, float) else f"{value:,}"
    scaled = value * spec.scale
    digits = spec.digits if spec.digits is not None else (0 if float(scaled).is_integer() else 3)
    unit = spec.display_unit or spec.unit
    return f"{scaled:,.{digits}f}" + (f" {unit}" if unit else "")


def key_figure(scenario: Scenario | str, c: Classified, scenarios: Catalogue | None = None) -> str:
    """The figure in a matrix cell: a series-rate scenario's rates, else its key metric,
    else what the program reported (test cases, exit status)."""
    spec = scenario if isinstance(scenario, Scenario) else (scenarios or builtin()).find(scenario)
    m = c.metrics
    rule = spec.series_rule() if spec else None
    if c.verdict is Verdict.INFRA:
        return _not_counted(spec, c)
    key = spec.report.key if spec else None
    if key:
        value = m.get(key)
        return shown(value, spec.metric(key)) if value else "-"
    if c.verdict is Verdict.ERROR:
        err = m.get("error_name")
        if err:
            return f"{err} @ {m.get('error_iteration', 0):,}"
        return "setup failed" if rule or "exit_code" not in m else f"exit {m['exit_code']}"
    if c.verdict is Verdict.HANG:
        return f"stalled @ {m.get('iterations', 0):,}"
    if rule:
        if m.get("early_rate") is None:
            return "-"
        return f"{m['early_rate']:,.0f}/s → {m['late_rate']:,.0f}/s"
    return _reported(m)


def _not_counted(spec: Scenario | None, c: Classified) -> str:
    """An infra cell: what it measured and why that does not count ("6,303 conns, stopped
    short of the knee"); "no result" only when nothing was measured at all."""
    m = c.metrics
    rule = spec.series_rule() if spec else None
    measured = ""
    if rule and isinstance(m.get(rule.counter), int | float):
        unit = (spec.report.counter_unit if spec else "") or rule.counter
        measured = f"{m[rule.counter]:,.0f} {unit}"
    elif spec and spec.report.key and isinstance(m.get(spec.report.key), int | float):
        measured = shown(m[spec.report.key], spec.metric(spec.report.key))
    if not measured:
        return "no result"
    if not m.get("inconclusive"):
        return f"{measured}, {c.reason.split(':', 1)[0].split(';', 1)[0]}"
    knee_t, end = m.get("knee_t"), m.get("elapsed_s")
    if not isinstance(knee_t, int | float):
        return f"{measured}, stopped short of the knee"
    if isinstance(end, int | float) and end >= knee_t:
        return f"{measured}, {end - knee_t:.1f} s past the knee, short of the goal"
    return f"{measured}, past the knee, short of the goal"


def _reported(m: dict[str, Any]) -> str:
    """A program with no key metric: its test cases, else its exit status."""
    if m.get("testcases"):
        failed, total = m.get("testcases_failed", 0), m["testcases"]
        return (
            f"{failed}/{total} failed" if failed else f"{m.get('testcases_passed', 0)}/{total} pass"
        )
    if m.get("exit_code") is not None:
        return f"exit {m['exit_code']}"
    return "-"
