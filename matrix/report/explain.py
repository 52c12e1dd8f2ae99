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


def setting_parts(row: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """A cell's settings as (short name, value) pairs: its sysctl label's words, then its
    parameters, so that settings can be compared one sysctl at a time."""
    label = str(row.get("sysctl_label") or "")
    parts = [tuple(w.split("=", 1)) for w in label.split() if "=" in w]
    params = row.get("params") or {}
    if isinstance(params, dict):
        parts += [(str(k), str(v)) for k, v in params.items()]
    return tuple((k, v) for k, v in parts)


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
    kernels: list[str] | None = None,
    details: Mapping[str, Mapping[str, Any]] | None = None,
    min_ratio: float = 0.2,
) -> list[dict[str, Any]]:
    """A section's explanation: each scenario shown on its own with its mechanism,
    findings and what each kernel did, then each pair likewise."""
    order = kernels or sorted({str(r["kernel"]) for r in rows})
    out: list[dict[str, Any]] = [
        {
            "scenario": s.name,
            "mechanisms": [s.explanation] if s.explanation else [],
            "findings": findings(rows, s),
            "per_kernel": per_kernel(rows, s, order, details or {}, min_ratio),
        }
        for s in alone
    ]
    for a, b, prows in pairs:
        out.append(
            {
                "scenario": "",
                "mechanisms": [s.explanation for s in (a, b) if s.explanation],
                "findings": pair_findings(prows, a, b),
                "per_kernel": pair_per_kernel(prows, a, b, order),
            }
        )
    return out


ALIKE = 1.25
"""Two settings with the same verdict whose figures are within this factor behave alike."""
RATE_MEASURED = ("success", "slowdown")
"""Verdicts whose late rate describes the loop (an errno or a stall ends it early)."""


def _first_by_setting(rows: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """A kernel's cells of one scenario by setting: the first measured trial of each."""
    out: dict[str, Mapping[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r.get("trial") or 0):
        out.setdefault(cell_label(r) or "defaults", r)
    return out


def _full_metric(
    row: Mapping[str, Any], details: Mapping[str, Mapping[str, Any]], name: str | None
) -> Any:
    """A metric as the program reported it (a range is a list, which the table drops)."""
    if not name:
        return None
    doc = details.get(str(row.get("cell_id"))) or {}
    metrics = doc.get("metrics") if isinstance(doc.get("metrics"), Mapping) else {}
    return metrics.get(name, value_of(row, name))


def knee_of(
    rows: Iterable[Mapping[str, Any]], spec: Scenario, details: Mapping[str, Mapping[str, Any]]
) -> tuple[float | None, str]:
    """A series-rate scenario's knee from its own cells, and where it comes from: half
    the range the manifest names (`knee_half_range`), or the knee metric's value."""
    rule = spec.series_rule()
    if rule is None:
        return None, ""
    unit = _unit_of(spec, rule.counter, spec.report.counter_unit)
    for r in rows:
        span = _full_metric(r, details, rule.knee_half_range)
        if isinstance(span, list) and len(span) == 2 and all(number(v) is not None for v in span):
            lo, hi = int(span[0]), int(span[1])
            knee = (hi - lo + 1) // 2
            title = _title_of(spec, rule.knee_half_range)
            return knee, f"the knee is {knee:,} {unit}, half the {title} {lo}-{hi}"
        knee = number(_full_metric(r, details, rule.knee_metric))
        if knee is not None:
            return knee, f"the knee is {knee:,.0f} {unit}, the {_title_of(spec, rule.knee_metric)}"
    return None, ""


def _title_of(spec: Scenario, name: str | None) -> str:
    m = spec.metric(name) if name else None
    return (m.title if m else name) or ""


def stop_point(detail: Mapping[str, Any], counter: str, early: float, least: float) -> float | None:
    """The count where a loop's rate first fell below `least` x its early rate for a
    whole second, from its own samples: the start of the first one-second stretch that
    slow (None: it never was, or there are no samples)."""
    samples = [
        (number(s.get("t")), number(s.get(counter)))
        for s in detail.get("series") or []
        if isinstance(s, Mapping)
    ]
    pts = [(t, n) for t, n in samples if t is not None and n is not None]
    j = 0
    for t0, n0 in pts:
        while j < len(pts) and pts[j][0] - t0 < 1.0:
            j += 1
        if j == len(pts):
            return None
        t1, n1 = pts[j]
        if (n1 - n0) / (t1 - t0) < least * early:
            return n0
    return None


def _stopped(
    row: Mapping[str, Any],
    spec: Scenario,
    details: Mapping[str, Mapping[str, Any]],
    least: float,
    knee: float | None,
) -> str:
    """How one collapsed cell stopped keeping its rate: where (against the knee), and
    the context metric's value."""
    rule = spec.series_rule()
    counter = rule.counter if rule else "iterations"
    unit = _unit_of(spec, counter, spec.report.counter_unit)
    ctx = spec.report.context
    context = number(value_of(row, ctx)) if ctx else None
    tail = f", {_title_of(spec, ctx)} {context:,.0f}" if context is not None else ""

    def at(point: float | None) -> str:
        if point is None:
            return ""
        share = f", {point / knee:.2f}x the knee" if knee else ""
        return f" at {point:,.0f} {unit}{share}"

    verdict = row["verdict"]
    if verdict == "error":
        err = row.get("error_name") or "an error"
        return f"died with {err}{at(number(row.get('error_iteration')))}{tail}"
    if verdict == "hang":
        return f"stalled{at(number(value_of(row, counter)))}{tail}"
    if verdict == "fail":
        return f"failed{tail}"
    early = number(row.get("early_rate"))
    point = None
    if early:
        point = stop_point(details.get(str(row.get("cell_id"))) or {}, counter, early, least)
    rates = f"{_n(row.get('early_rate'))}/s → {_n(row.get('late_rate'))}/s"
    return f"fell below {least:g}x its early rate{at(point)}, {rates}{tail}"


def _grouped(items: Mapping[str, str]) -> str:
    """Settings sharing one description listed together: "a, b (what); c (other)"."""
    groups: dict[str, list[str]] = {}
    for label, text in items.items():
        groups.setdefault(text, []).append(label)
    return "; ".join(f"{', '.join(labels)} ({text})" for text, labels in groups.items())


def _kernel_rates(
    labels: Mapping[str, Mapping[str, Any]],
    spec: Scenario,
    details: Mapping[str, Mapping[str, Any]],
    least: float,
) -> str:
    """One kernel of a series-rate scenario: where the knee is, which settings stopped
    keeping their rate and where, and how far the others' context metric went."""
    knees = {k: knee_of([r], spec, details) for k, r in labels.items()}
    stated = {text for _, text in knees.values() if text}
    fell = {
        k: _stopped(r, spec, details, least, knees[k][0])
        for k, r in labels.items()
        if r["verdict"] in COLLAPSED
    }
    held = {k: r for k, r in labels.items() if r["verdict"] not in COLLAPSED}
    if len(stated) == 1:
        text = stated.pop()
        parts = [text[:1].upper() + text[1:]]
    else:
        parts = ["The knee differs between its settings"] if stated else []
    if fell:
        parts.append(f"It stopped keeping its rate with {_grouped(fell)}")
    if held:
        ctx = spec.report.context
        values = [v for r in held.values() if ctx and (v := number(value_of(r, ctx))) is not None]
        most = f" ({_title_of(spec, ctx)} {_span(values)})" if values else ""
        which = "every setting" if not fell else ", ".join(held)
        parts.append(f"It kept its rate with {which}{most}")
    return ". ".join(parts) + "."


def _measure(spec: Scenario) -> tuple[Any, Any, str]:
    """What two settings are compared by, how to print it and its name: the late rate
    for a series-rate rule (of cells that kept running), else the key metric."""
    if spec.series_rule():

        def late(r: Mapping[str, Any]) -> float | None:
            return number(value_of(r, "late_rate")) if r["verdict"] in RATE_MEASURED else None

        return late, (lambda v: f"{_n(v)}/s"), "late rate"
    key = spec.report.key
    if key:
        metric = spec.metric(key)
        return (
            (lambda r: number(value_of(r, key))),
            (lambda v: shown(v, metric)),
            _title_of(spec, key),
        )
    return (lambda r: None), str, "figure"


def _apart(labels: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, str, str, str, str]]:
    """Settings one sysctl (or parameter) apart, neighbours in that one's value order:
    (name, value 1, value 2, the settings they share, label 1, label 2)."""
    parts = {label: dict(setting_parts(r)) for label, r in labels.items()}
    out = []
    for name in dict.fromkeys(k for p in parts.values() for k in p):
        groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
        for label, p in parts.items():
            if name in p:
                rest = tuple((k, v) for k, v in p.items() if k != name)
                groups.setdefault(rest, []).append(label)
        for rest, members in groups.items():
            members.sort(key=lambda m: _value_key(parts[m][name]))
            shared = " ".join(f"{k}={v}" for k, v in rest)
            for l1, l2 in zip(members, members[1:], strict=False):
                out.append((name, parts[l1][name], parts[l2][name], shared, l1, l2))
    return out


def _value_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def compare_settings(
    labels: Mapping[str, Mapping[str, Any]], measure: Any, show: Any, what: str
) -> str:
    """Settings one sysctl apart on one kernel: which behave differently and by how
    much (their verdicts and key figures, or `what` by its figures), and which alike."""
    differ, alike = [], {}
    for name, v1, v2, shared, l1, l2 in _apart(labels):
        r1, r2 = labels[l1], labels[l2]
        m1, m2 = measure(r1), measure(r2)
        head = f"{name} {v1} → {v2}" + (f" (with {shared})" if shared else "")
        if r1["verdict"] != r2["verdict"]:
            sides = [
                r["verdict"] + (f" ({r['key_figure']})" if r.get("key_figure") else "")
                for r in (r1, r2)
            ]
            differ.append(f"{head}: {sides[0]} → {sides[1]}")
        elif m1 is not None and m2 is not None and (m1 > 0 or m2 > 0):
            lo, hi = min(m1, m2), max(m1, m2)
            if lo > 0 and hi / lo <= ALIKE:
                alike.setdefault(f"{name} {v1} vs {v2}", []).append(shared)
                continue
            factor = ""
            if lo > 0:
                factor = f" ({hi / lo:,.1f}x {'higher' if m2 > m1 else 'lower'})"
            elif lo == 0:
                factor = " (from 0)" if m1 == 0 else " (to 0)"
            differ.append(f"{head}: both {r1['verdict']}, {what} {show(m1)} → {show(m2)}{factor}")
        else:
            alike.setdefault(f"{name} {v1} vs {v2}", []).append(shared)
    text = []
    if differ:
        text.append("One setting apart: " + "; ".join(differ) + ".")
    if alike:
        listed = [
            f"{pair} (with {', '.join(c for c in ctx if c)})" if any(ctx) else pair
            for pair, ctx in alike.items()
        ]
        same = f"same verdict, {what} within {ALIKE:g}x where both have one"
        text.append(f"Alike ({same}): " + "; ".join(listed) + ".")
    return " ".join(text)


def per_kernel(
    rows: list[Mapping[str, Any]],
    spec: Scenario,
    kernels: list[str],
    details: Mapping[str, Mapping[str, Any]],
    min_ratio: float,
) -> list[dict[str, str]]:
    """What each kernel did in one scenario, from its own cells: for a series-rate rule,
    where it stopped keeping its rate (against the knee and the context metric); for
    any scenario, how settings one sysctl apart differ on that kernel."""
    own = [r for r in rows if r["scenario"] == spec.name]
    rule = spec.series_rule()
    least = rule.min_ratio if rule and rule.min_ratio is not None else min_ratio
    measure, show, what = _measure(spec)
    by_kernel: dict[str, list[Mapping[str, Any]]] = {}
    for r in own:
        by_kernel.setdefault(str(r["kernel"]), []).append(r)
    out = []
    for kernel in kernels:
        cells = by_kernel.get(kernel, [])
        measured = [r for r in cells if r["verdict"] not in NOT_MEASURED]
        if not cells:
            continue
        labels = _first_by_setting(measured)
        unsettled = {
            k: f"{r['verdict']}: {r.get('key_figure') or r.get('reason') or '-'}"
            for k, r in _first_by_setting(r for r in cells if r["verdict"] in NOT_MEASURED).items()
            if k not in labels
        }
        if not measured:
            out.append({"kernel": kernel, "text": f"No cell counted: {_grouped(unsettled)}."})
            continue
        text = [_kernel_rates(labels, spec, details, least)] if rule else []
        text.append(compare_settings(labels, measure, show, what))
        if unsettled:
            text.append(f"Not counted: {_grouped(unsettled)}.")
        if any(text):
            out.append({"kernel": kernel, "text": " ".join(t for t in text if t)})
    return out


def pair_per_kernel(
    prows: list[Mapping[str, Any]], a: Scenario, b: Scenario, kernels: list[str]
) -> list[dict[str, str]]:
    """A pair on each kernel: the ratio per setting against the expected one, and how
    settings one sysctl apart differ."""
    spec = b.report.ratio
    if spec is None:
        return []
    metric = b.metric(spec.metric) or a.metric(spec.metric)
    by_kernel: dict[str, list[Mapping[str, Any]]] = {}
    for p in prows:
        by_kernel.setdefault(str(p["kernel"]["name"]), []).append(p)
    out = []
    for kernel in kernels:
        mine = by_kernel.get(kernel, [])
        if not mine:
            continue
        text = []
        for p in mine:
            label = "" if len(mine) == 1 else f"{p.get('label') or 'defaults'}: "
            if p.get("ratio") is None:
                verdicts = ", ".join(
                    f"{s.name} {r['verdict'] if r else 'not run'}"
                    for s, r in ((a, p["a"]), (b, p["b"]))
                )
                text.append(f"{label}no ratio ({verdicts})")
                continue
            va, vb = (_figure(value_of(r, spec.metric), metric) for r in (p["a"], p["b"]))
            ctx = _context(spec.context_metric, p["a"], p["b"], a, b)
            text.append(f"{label}{p['ratio']:.3f} ({va} vs {vb}{ctx}){_against(p['ratio'], spec)}")
        line = f"{b.name} / {a.name} " + "; ".join(text) + "."
        sides = {
            (p.get("label") or "defaults"): dict(
                p["b"] or p["a"] or {},
                verdict=_pair_verdict(p),
                pair_ratio=p.get("ratio"),
                key_figure="",
            )
            for p in mine
        }
        compared = compare_settings(
            sides, lambda r: number(r.get("pair_ratio")), lambda v: f"{v:.3f}", "ratio"
        )
        out.append({"kernel": kernel, "text": " ".join(t for t in (line, compared) if t)})
    return out


def _pair_verdict(p: Mapping[str, Any]) -> str:
    verdicts = sorted({str(r.get("verdict") or "?") for r in (p["a"], p["b"]) if r})
    return " / ".join(verdicts) or "not run"


def _against(ratio: float, spec: Any) -> str:
    """How a ratio stands against the one the manifest expects."""
    if spec.expect is None:
        return ""
    expected = spec.expect_text or f"{spec.expect:g}"
    off = ratio - spec.expect
    if abs(off) <= spec.slack:
        return f", within {spec.slack:g} of {expected}"
    return f", {abs(off):.3f} {'above' if off > 0 else 'below'} {expected}"
