"""The matrix page's explanations: what each scenario shows, with this run's own figures.

The mechanism is the scenario manifest's `explanation`; every number in the findings is
computed here from the run's table (which cells collapsed, from what rate to what, at
how much of the manifest's context metric; a pair's ratio range; a key metric's span per
kernel), so the paragraph can never disagree with the matrix below it. Which text a
scenario gets follows from its manifest alone (a series-rate rule, a ratio to another
scenario, or neither), never from its name. The strings are plain text: the template
escapes them like any other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from matrix.classify.figures import shown
from matrix.model import Verdict
from matrix.scenarios.manifest import MetricSpec, Scenario

COLLAPSED = ("slowdown", "hang", "error", "fail")
NOT_MEASURED = ("infra", "skip")
MAX_LISTED = 6
VERDICT_ORDER = tuple(v.value for v in Verdict)


def value_of(row: Mapping[str, Any], name: str) -> Any:
    """A metric of a row: its `metrics` dict (every scalar metric, by the scenario's own
    names), else the table column of that name (rows of older runs have only those)."""
    metrics = row.get("metrics")
    if isinstance(metrics, Mapping) and name in metrics:
        return metrics[name]
    return row.get(name)


def number(value: Any) -> float | None:
    """A finite number, or None for anything else (a guest may report a string)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return float(value)


def cell_label(row: Mapping[str, Any]) -> str:
    """A cell's settings for people: its sysctl label, then its parameters."""
    params = row.get("params") or {}
    named = " ".join(f"{k}={v}" for k, v in params.items()) if isinstance(params, dict) else ""
    return " · ".join(p for p in (row.get("sysctl_label") or "", named) if p)


def _n(value: Any) -> str:
    v = number(value)
    return "?" if v is None else f"{v:,.0f}"


def _span(values: list[Any]) -> str:
    """'13,000' when every value rounds the same, else '9,800-13,000'."""
    lo, hi = _n(min(values)), _n(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def _figure(value: Any, spec: MetricSpec | None) -> str:
    """An exact figure with its unit (bytes as bytes, not rounded to MB)."""
    v = number(value)
    if v is None:
        return "?" if value is None else str(value)
    text = f"{v:,.0f}" if v.is_integer() else f"{v:,.3f}".rstrip("0").rstrip(".")
    return text + (f" {spec.unit}" if spec and spec.unit else "")


def _where(row: Mapping[str, Any]) -> str:
    return f"{row['kernel']} with {cell_label(row) or 'defaults'}"


def _unit_of(spec: Scenario, name: str | None, fallback: str = "") -> str:
    """What one count of a metric is, for prose: its unit, else its label, else its name."""
    if not name:
        return fallback
    m = spec.metric(name)
    return (m.unit or m.label if m else "") or fallback or name


def _collapse_text(row: Mapping[str, Any], spec: Scenario) -> str:
    """One collapsed cell: what happened, with its rates and the context metric."""
    ctx = spec.report.context
    value = value_of(row, ctx) if ctx else None
    tw = f" with {_n(value)} {_unit_of(spec, ctx)}" if number(value) else ""
    verdict = row["verdict"]
    if verdict == "error":
        err = row.get("error_name") or "setup failure"
        at = f" at iteration {_n(row.get('error_iteration'))}" if row.get("error_iteration") else ""
        return f"{_where(row)} died with {err}{at}{tw}"
    if verdict == "fail":
        return f"{_where(row)} failed{tw}"
    if verdict == "hang":
        rule = spec.series_rule()
        counter = rule.counter if rule else "iterations"
        unit = _unit_of(spec, counter, spec.report.counter_unit)
        done = f"stalled after {_n(value_of(row, counter))} {unit}"
        return f"{_where(row)} {done}{tw} (state {row.get('evidence_state') or '?'})"
    rate = f"fell from {_n(row.get('early_rate'))}/s to {_n(row.get('late_rate'))}/s"
    return f"{_where(row)} {rate}{tw}"


def _collapsed_settings(
    bad: list[Mapping[str, Any]], measured: list[Mapping[str, Any]], spec: Scenario
) -> list[str]:
    """One entry per (kernel, setting), its first collapsed trial, and how many trials did."""
    trials = Counter((r["kernel"], cell_label(r)) for r in measured)
    groups: dict[tuple[Any, Any], list[Mapping[str, Any]]] = {}
    for r in bad:
        groups.setdefault((r["kernel"], cell_label(r)), []).append(r)
    return [
        _collapse_text(rs[0], spec)
        + (f" ({len(rs)} of {trials[k]} trials)" if trials[k] > 1 else "")
        for k, rs in groups.items()
    ]


def _measured(rows: Iterable[Mapping[str, Any]], scenario: str) -> list[Mapping[str, Any]]:
    return [r for r in rows if r["scenario"] == scenario and r["verdict"] not in NOT_MEASURED]


def _by_setting(rows: list[Mapping[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    """Settings that collapsed on every kernel, held on every kernel, or depend on it."""
    outcome: dict[str, set[bool]] = {}
    for r in rows:
        outcome.setdefault(cell_label(r) or "defaults", set()).add(r["verdict"] in COLLAPSED)
    always = sorted(k for k, v in outcome.items() if v == {True})
    never = sorted(k for k, v in outcome.items() if v == {False})
    mixed = sorted(k for k, v in outcome.items() if len(v) > 1)
    return always, never, mixed


def series_findings(rows: list[Mapping[str, Any]], spec: Scenario) -> str:
    """What this run measured in a series-rate scenario: which cells collapsed, from what
    rate to what, at how much of the manifest's context metric (`report.context`)."""
    scenario = spec.name
    measured = _measured(rows, scenario)
    text: list[str] = []
    if not measured:
        return f"No {scenario} cell was measured in this run."
    bad = [r for r in measured if r["verdict"] in COLLAPSED]
    kernels = len({r["kernel"] for r in measured})
    where = f"{scenario} cells on {kernels} kernel{'s' if kernels != 1 else ''}"
    if bad:
        items = _collapsed_settings(bad, measured, spec)
        listed = "; ".join(items[:MAX_LISTED])
        more = f"; and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
        text.append(
            f"In this run {len(bad)} of {len(measured)} measured {where} collapsed: {listed}{more}."
        )
    else:
        text.append(f"In this run none of the {len(measured)} measured {where} collapsed.")
    held = [r for r in measured if r["verdict"] not in COLLAPSED]
    if held:
        early = [r["early_rate"] for r in held if number(r.get("early_rate")) is not None]
        ctx = spec.report.context
        context = [v for r in held if ctx and number(v := value_of(r, ctx)) is not None]
        figures = f" at {_span(early)}/s" if early else ""
        if context:
            figures += f", with at most {_n(max(context))} {_unit_of(spec, ctx)}"
        text.append(f"{len(held)} cells kept their rate{figures}.")
    if kernels > 1:
        text.append(_settings_sentence(measured))
    return " ".join(t for t in text if t)


def _settings_sentence(measured: list[Mapping[str, Any]]) -> str:
    always, never, mixed = _by_setting(measured)
    parts = []
    if always:
        parts.append("collapsed on every kernel: " + ", ".join(always))
    if never:
        parts.append("held on every kernel: " + ", ".join(never))
    if mixed:
        parts.append("depended on the kernel: " + ", ".join(mixed))
    return ("By setting, " + "; ".join(parts) + ".") if parts else ""


def pair_findings(prows: list[Mapping[str, Any]], a: Scenario, b: Scenario) -> str:
    """The b/a ratio of the pair's metric across kernels (the rows of the pair's table),
    against the value the manifest expects (`report.ratio.expect`, within `slack`)."""
    spec = b.report.ratio
    if spec is None:
        return ""
    metric = b.metric(spec.metric) or a.metric(spec.metric)
    label = metric.title if metric else spec.metric
    ratios = [(p["ratio"], p) for p in prows if p.get("ratio") is not None]
    if not ratios:
        return f"No kernel in this run measured both {a.name} and {b.name}."
    lo, lo_p = min(ratios, key=lambda x: x[0])
    hi, hi_p = max(ratios, key=lambda x: x[0])
    names = sorted({p["kernel"]["name"] for _, p in ratios})
    if len(ratios) == 1:
        found = f"In this run {b.name}'s {label} was {lo:.3f} of {a.name}'s on {names[0]}"
    elif f"{lo:.3f}" == f"{hi:.3f}":
        found = (
            f"In this run {b.name}'s {label} was {lo:.3f} of {a.name}'s on all {len(names)} kernels"
        )
    else:
        found = (
            f"In this run the {b.name} / {a.name} ratio of {label} ranged from "
            f"{lo:.3f} ({lo_p['kernel']['name']}) to {hi:.3f} ({hi_p['kernel']['name']}) "
            f"across {len(names)} kernels"
        )
    ra, rb = lo_p["a"], lo_p["b"]
    va, vb = (_figure(value_of(r, spec.metric), metric) for r in (ra, rb))
    found += f" (e.g. {va} vs {vb}{_context(spec.context_metric, ra, rb, a, b)})."
    return found + _expected(spec.expect, spec.expect_text, spec.slack, ratios, len(names))


def _context(
    name: str | None, ra: Mapping[str, Any], rb: Mapping[str, Any], *specs: Scenario
) -> str:
    """The pair's context metric beside the example, from the first side that has it."""
    if not name:
        return ""
    value = next((v for r in (ra, rb) if (v := value_of(r, name)) is not None), None)
    if value is None:
        return ""
    metric = next((m for s in specs if (m := s.metric(name))), None)
    return f"; {metric.title if metric else name}: {_figure(value, metric)}"


def _expected(
    expect: float | None, text: str, slack: float, ratios: list[tuple[float, Any]], kernels: int
) -> str:
    """How the ratios stand against the expected one; nothing when none is expected."""
    if expect is None:
        return ""
    expected = text or f"{expect:g}"
    odd = sorted({p["kernel"]["name"] for r, p in ratios if abs(r - expect) > slack})
    if odd:
        tail = f" More than {slack:g} from {expected}, so the mechanism differs on: "
        return tail + ", ".join(odd) + "."
    if kernels > 1:
        return f" Every kernel is within {slack:g} of {expected}: the same mechanism everywhere."
    return f" That is within {slack:g} of {expected}: the mechanism as described."


def scenario_findings(rows: list[Mapping[str, Any]], spec: Scenario) -> str:
    """Any other scenario: its verdicts, and its key metric's span on each kernel, printed
    as the manifest says to print it."""
    own = [r for r in rows if r["scenario"] == spec.name]
    if not own:
        return f"No {spec.name} cell was measured in this run."
    counts = Counter(str(r["verdict"]) for r in own)
    names = [v for v in VERDICT_ORDER if counts[v]] + sorted(set(counts) - set(VERDICT_ORDER))
    listed = ", ".join(f"{counts[v]} {v}" for v in names)
    text = f"In this run {spec.name} had {len(own)} cell{'s' if len(own) != 1 else ''}: {listed}."
    key = spec.report.key
    if not key:
        return text
    metric = spec.metric(key)
    per_kernel: dict[str, list[float]] = {}
    for r in own:
        v = number(value_of(r, key))
        if v is not None and r["verdict"] not in NOT_MEASURED:
            per_kernel.setdefault(str(r["kernel"]), []).append(v)
    if not per_kernel:
        return text
    spans = []
    for kernel, values in per_kernel.items():
        lo, hi = shown(min(values), metric), shown(max(values), metric)
        spans.append(f"{kernel} {lo}" if lo == hi else f"{kernel} {lo} to {hi}")
    label = metric.title if metric else key
    return f"{text} {label[:1].upper()}{label[1:]} per kernel: {'; '.join(spans)}."


def findings(rows: list[Mapping[str, Any]], spec: Scenario) -> str:
    """The findings a scenario's manifest calls for: a series-rate rule's, else generic."""
    if spec.series_rule():
        return series_findings(rows, spec)
    return scenario_findings(rows, spec)


def paragraphs(
    rows: list[Mapping[str, Any]],
    alone: list[Scenario],
    pairs: list[tuple[Scenario, Scenario, list[Mapping[str, Any]]]],
) -> list[dict[str, Any]]:
    """A section's explanation: each scenario shown on its own with its mechanism and
    findings, then each pair with both mechanisms and the pair's findings."""
    out: list[dict[str, Any]] = [
        {
            "scenario": s.name,
            "mechanisms": [s.explanation] if s.explanation else [],
            "findings": findings(rows, s),
        }
        for s in alone
    ]
    for a, b, prows in pairs:
        out.append(
            {
                "scenario": "",
                "mechanisms": [s.explanation for s in (a, b) if s.explanation],
                "findings": pair_findings(prows, a, b),
            }
        )
    return out
