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
    if c.verdict is Verdict.INFRA and m.get("inconclusive"):
        unit = (spec.report.counter_unit if spec else "") or "counts"
        count = m.get(rule.counter if rule else "iterations", 0) or 0
        return f"{count:,} {unit}, short of the goal"
    if c.verdict is Verdict.INFRA:
        return "no result"
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
