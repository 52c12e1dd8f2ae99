"""The static HTML report: a matrix page for a run and a page per cell.

Everything shown comes from guests and collectors, so it is untrusted: Jinja2 escapes
every expression (autoescape) and `clean` strips control characters and terminal escape
sequences from every printed string (it is the environment's `finalize`, so a template
cannot forget it). StrictUndefined turns a field missing from the run into an error
instead of a silently blank page. The output needs no network: CSS is inline, and the
plots are data in each page drawn by uPlot from the report's own assets/ folder.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from matrix.classify.figures import shown
from matrix.collect import sanitize
from matrix.model import Verdict
from matrix.plan import cells
from matrix.report import explain
from matrix.report.plots import category_plot, plot_json, time_plot, traces
from matrix.report.threshold import is_threshold_run, render_threshold
from matrix.results.table import RunData, records
from matrix.run import rundir
from matrix.scenarios.catalogue import Catalogue
from matrix.scenarios.manifest import MetricSpec, RatioSpec, Scenario

VERDICTS = tuple(v.value for v in Verdict)
_SEVERITY = {"infra": 0, "skip": 1, "success": 2, "slowdown": 3, "fail": 4, "error": 5, "hang": 6}
"""For a folded cell's colour: a hang among trials is the news, a skip the least of it."""
_POOL_MIN_PAGES = 64
"""Below this many cell pages a second process costs more than it saves."""
ASSETS = "assets"
"""The report's folder of scripts and styles that pages share (uPlot and its glue)."""
_ASSET_FILES = (
    ("vendor/uplot/uPlot.iife.min.js", "uPlot.iife.min.js"),
    ("vendor/uplot/uPlot.min.css", "uPlot.min.css"),
    ("vendor/uplot/LICENSE", "uPlot.LICENSE"),
    ("plot.js", "plot.js"),
)


def clean(value: Any) -> Any:
    """Strip terminal escapes and control characters from a string; keep newlines and tabs.

    A console tail or a /proc stack can carry colour codes, bells or bidi overrides that
    garble or disguise the page. Markup built by this module (the plots' JSON) is left alone,
    and so is a string `isprintable` (no control, format or separator character but a
    space), which is most of them and costs one C call.
    """
    if isinstance(value, Markup) or not isinstance(value, str) or value.isprintable():
        return value
    return sanitize.clean(value)


def num(value: Any, digits: int | None = None) -> str:
    """A figure for a table: thousands separators, a dash where nothing was measured.

    With no `digits`, whole numbers print without decimals and others with up to three,
    so a counter never reads "14,100.000" and a ratio never reads "0".
    """
    if value is None or isinstance(value, bool) or (isinstance(value, float) and value != value):
        return "—"
    if not isinstance(value, int | float):
        return str(value)
    if digits is None:
        if float(value).is_integer():
            return f"{int(value):,}"
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    return f"{value:,.{digits}f}"


def natural_key(text: str) -> tuple[tuple[int, int, str], ...]:
    """Sort "5.10.0" before "6.1.0" before "6.12.0", which string order gets wrong."""
    parts = re.split(r"(\d+)", text or "")
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p)


def page_name(cell_id: str) -> str:
    """A file name for a cell page that cannot escape the cells/ folder."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(cell_id))[:120] + ".html"


def template_dir() -> Path:
    """Where the templates are: the installed package data, else the source tree."""
    try:
        probe = resources.files("matrix.templates").joinpath("index.html")
        if probe.is_file():
            return Path(str(probe)).parent
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "templates"


def bytecode_cache() -> jinja2.BytecodeCache | None:
    """Compiled templates kept between runs: compiling the templates is ~0.35 s of every
    report, rendering a short run's pages less. Keyed by each template's source, so an
    edited template is compiled again; None (compile every time) where the directory
    cannot be made."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    directory = base / "kmatrix" / "templates"
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return None
    return jinja2.FileSystemBytecodeCache(str(directory)) if os.access(directory, os.W_OK) else None


def environment(path: Path | None = None) -> jinja2.Environment:
    """A Jinja2 environment that escapes and cleans everything and tolerates no gaps."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(path or template_dir())),
        bytecode_cache=bytecode_cache(),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=clean,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["clean"] = clean
    env.filters["num"] = num
    env.filters["page"] = page_name
    env.globals["VERDICTS"] = VERDICTS
    return env


def sorted_kernels(run: RunData) -> list[dict[str, Any]]:
    """Manifest kernels by release in natural order; kernels only the table knows are added."""
    kernels = [dict(k) for k in run.manifest["kernels"]]
    known = {k["name"] for k in kernels}
    extra = run.table.drop_duplicates("kernel") if len(run.table) else run.table
    for row in records(extra):
        if row["kernel"] not in known:
            kernels.append(
                {
                    "name": row["kernel"],
                    "kind": row["kernel_kind"],
                    "release": row["kernel_release"],
                    "package_version": "",
                    "accelerator": row["accelerator"],
                    "runner": row["runner"],
                    "host": row["host"],
                    "boot_s": None,
                    "failure": "",
                    "console_tail": "",
                }
            )
    return sorted(kernels, key=lambda k: (natural_key(str(k["release"])), str(k["name"])))


def fold(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Trials of one (kernel, scenario, sysctls) as one cell; flaky when verdicts differ.

    The colour is the worst measured verdict: one hang among successes is the news.
    Infra only colours a cell when no trial measured anything; one stopped short of its
    goal is labelled inconclusive, since its figures were measured.
    """
    trials = sorted(rows, key=lambda r: r["trial"] or 0)
    verdicts = [r["verdict"] for r in trials]
    measured = [v for v in verdicts if v != "infra"] or verdicts
    worst = max(measured, key=lambda v: _SEVERITY.get(v, 0))
    return {
        "verdict": worst,
        "label": "inconclusive" if worst == "infra" and _inconclusive(trials[0]) else worst,
        "flaky": len(set(verdicts)) > 1,
        "confirmation": confirmation_mark(trials[0]),
        "key_figure": trials[0]["key_figure"],
        "reason": trials[0]["reason"],
        "href": "cells/" + page_name(trials[0]["cell_id"]),
        "health": kernel_mark(trials),
        "trials": [
            {
                "trial": r["trial"],
                "verdict": r["verdict"],
                "key_figure": r["key_figure"],
                "reason": r["reason"],
                "href": "cells/" + page_name(r["cell_id"]),
            }
            for r in trials
        ],
    }


def kernel_mark(trials: list[Mapping[str, Any]]) -> dict[str, str] | None:
    """What the kernel logged or tainted during a cell's trials, for a mark in the matrix:
    a green cell on a kernel that warned is not the same as a clean one."""
    kinds = sorted({str(r.get("kernel_health")) for r in trials if r.get("kernel_health")})
    taint = sorted(
        {str(r.get("kernel_tainted_by_cell")) for r in trials if r.get("kernel_tainted_by_cell")}
    )
    if not kinds and not taint:
        return None
    text = ", ".join(kinds + [f"tainted {t}" for t in taint])
    return {"text": "⚠" if kinds else "T", "title": f"the kernel logged or tainted: {text}"}


def _inconclusive(row: Mapping[str, Any]) -> bool:
    return bool(explain.value_of(row, "inconclusive"))


def _cell_key(row: Mapping[str, Any]) -> str:
    """Folding key for a cell's settings: sysctls and parameters, by identity not label."""
    key = {"sysctls": row.get("sysctls") or {}, "params": row.get("params") or {}}
    return json.dumps(key, sort_keys=True, default=str)


def _full_settings(row: Mapping[str, Any]) -> str:
    """Every sysctl by its full name and every parameter, for a column's title."""
    sysctls = row.get("sysctls") if isinstance(row.get("sysctls"), dict) else {}
    params = row.get("params") if isinstance(row.get("params"), dict) else {}
    items = [f"{k}={v}" for k, v in (sysctls or {}).items()]
    items += [f"{k}={v}" for k, v in (params or {}).items()]
    return ", ".join(items) or "kernel defaults"


def column_heads(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Short column headings for a grid: only the values of the settings that vary
    between its columns, their names once (`axis`) and the settings every column shares
    (`common`); each heading's title has the full sysctl names and values."""
    parts = [dict(explain.setting_parts(r)) for r in rows]
    names = list(dict.fromkeys(k for p in parts for k in p))
    same_keys = all(list(p) == names for p in parts)
    varying = [k for k in names if len({p.get(k) for p in parts}) > 1]
    shown = (varying or names) if same_keys else []
    heads = []
    for row, p in zip(rows, parts, strict=True):
        if shown:
            text = " · ".join(str(p[k]) for k in shown)
        else:
            text = explain.cell_label(row) or "defaults"
        heads.append(
            {
                "text": text,
                "title": f"{explain.cell_label(row) or 'defaults'} "
                f"({_full_settings(row)}); click to sort by this column",
            }
        )
    common = [f"{k}={parts[0][k]}" for k in names if same_keys and k not in shown]
    return {"heads": heads, "axis": " · ".join(shown), "common": " ".join(common)}


def matrix_grid(
    rows: list[dict[str, Any]], kernels: list[dict[str, Any]], specs: list[Scenario]
) -> dict[str, Any]:
    """Scenarios as a grid: columns grouped by scenario then settings, a row per kernel."""
    names = {s.name: s for s in specs}
    columns: dict[tuple[str, str], str] = {}
    firsts: dict[tuple[str, str], dict[str, Any]] = {}
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["scenario"] not in names:
            continue
        col = (row["scenario"], _cell_key(row))
        columns.setdefault(col, explain.cell_label(row))
        firsts.setdefault(col, row)
        groups.setdefault((row["kernel"], *col), []).append(row)
    order = sorted(columns, key=lambda c: (natural_key(c[0]), natural_key(columns[c]), c[1]))
    scenarios: list[dict[str, Any]] = []
    for scen, _ in order:
        if not scenarios or scenarios[-1]["name"] != scen:
            scenarios.append({"name": scen, "title": names[scen].title, "span": 0})
        scenarios[-1]["span"] += 1
    grid = [
        {
            "kernel": k,
            "cells": [
                fold(groups[(k["name"], *c)]) if (k["name"], *c) in groups else None for c in order
            ],
        }
        for k in kernels
    ]
    heads = column_heads([firsts[c] for c in order])
    return {
        "scenarios": scenarios,
        "heads": heads["heads"],
        "axis": heads["axis"],
        "common": heads["common"],
        "columns": [c[0] for c in order],
        "rows": grid,
    }


def _first_trial(rows: list[dict[str, Any]], scenario: str) -> dict[str, Any] | None:
    picked = sorted((r for r in rows if r["scenario"] == scenario), key=lambda r: r["trial"] or 0)
    return picked[0] if picked else None


def pair_rows(
    rows: list[dict[str, Any]],
    kernels: list[dict[str, Any]],
    a: Scenario,
    b: Scenario,
    ratio: RatioSpec,
) -> list[dict[str, Any]]:
    """A pair per kernel and settings: a's and b's metric, b/a, and the further columns.

    The first trial is shown; a pair's scenarios are expected to be deterministic for a
    kernel and its settings, and any other trials are one click away on the cell pages.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["scenario"] in (a.name, b.name):
            groups.setdefault((row["kernel"], _cell_key(row)), []).append(row)
    by_kernel: dict[str, list[tuple[str, str]]] = {}
    for g in groups:
        by_kernel.setdefault(g[0], []).append(g)
    out = []
    for kernel in kernels:
        for key in sorted(by_kernel.get(kernel["name"], []), key=lambda g: g[1]):
            ra, rb = _first_trial(groups[key], a.name), _first_trial(groups[key], b.name)
            va = explain.value_of(ra, ratio.metric) if ra else None
            vb = explain.value_of(rb, ratio.metric) if rb else None
            na, nb = explain.number(va), explain.number(vb)
            out.append(
                {
                    "kernel": kernel,
                    "label": explain.cell_label(ra or rb or {}),
                    "a": ra,
                    "b": rb,
                    "values": (va, vb),
                    "ratio": nb / na if na and nb is not None else None,
                    "columns": [
                        tuple(explain.value_of(r, c) if r else None for r in (ra, rb))
                        for c in ratio.columns
                    ],
                }
            )
    return out


def _title(a: Scenario, b: Scenario, name: str) -> str:
    metric = b.metric(name) or a.metric(name)
    return metric.title if metric else name


def pair_table(
    rows: list[dict[str, Any]],
    kernels: list[dict[str, Any]],
    a: Scenario,
    b: Scenario,
    ratio: RatioSpec,
) -> dict[str, Any]:
    """A pair's table: its headings from the metrics' labels, and its rows."""
    return {
        "a": a.name,
        "b": b.name,
        "metric": _title(a, b, ratio.metric),
        "columns": [_title(a, b, c) for c in ratio.columns],
        "rows": pair_rows(rows, kernels, a, b, ratio),
    }


def bare(name: str) -> Scenario:
    """A scenario the run's plan does not describe: shown by what its cells reported."""
    return Scenario(name=name, title="", directory=Path("."), command=("true",), timeout_s=1.0)


def run_scenarios(run: RunData) -> Catalogue:
    """The run's own manifests, from its plan.json, so that a run reads as it was measured
    (the built-in ones for a run directory without a plan)."""
    path = Path(run.run_dir) / "plan.json"
    return cells.scenarios_from(rundir.read_json(path) if path.is_file() else {})


def _median_by(
    rows: Iterable[Mapping[str, Any]], value: Any, keep: Any
) -> dict[tuple[str, str], float]:
    """The median of `value(row)` per (setting, kernel) over the rows `keep` accepts."""
    found: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        v = explain.number(value(r)) if keep(r) else None
        if v is not None:
            found.setdefault((explain.cell_label(r) or "defaults", str(r["kernel"])), []).append(v)
    return {k: statistics.median(vs) for k, vs in found.items()}


def _lines(values: Mapping[tuple[str, str], float], names: list[str]) -> list[tuple[str, list]]:
    labels = sorted({label for label, _ in values}, key=natural_key)
    return [(label, [values.get((label, k)) for k in names]) for label in labels]


def _plot(scenario: str, title: str, sub: str, spec: dict[str, Any] | None) -> dict | None:
    """A plot of the matrix page (its id is given once the sections are in order)."""
    if spec is None:
        return None
    return {
        "id": "",
        "scenario": scenario,
        "title": title,
        "sub": sub,
        "json": plot_json(spec),
    }


def scenario_plot(
    rows: list[dict[str, Any]], names: list[str], spec: Scenario, min_ratio: float
) -> dict[str, Any] | None:
    """A scenario's key figure against kernel version, a line per setting: the late/early
    rate for a series-rate rule (with the success line), else its key metric."""
    own = [r for r in rows if r["scenario"] == spec.name]
    rule = spec.series_rule()
    if rule:
        least = rule.min_ratio if rule.min_ratio is not None else min_ratio
        values = _median_by(
            own,
            lambda r: explain.value_of(r, "rate_ratio"),
            lambda r: r["verdict"] in explain.RATE_MEASURED,
        )
        plot = category_plot(
            names, _lines(values, names), "late / early rate", [(least, f"success from {least:g}")]
        )
        sub = (
            "the late rate (from the knee to the end) over the rate before the knee, "
            "for cells that kept running (success or slowdown); hover for each setting"
        )
        return _plot(spec.name, f"{spec.name}: late / early rate per kernel", sub, plot)
    key = spec.report.key
    if not key:
        return None
    metric = spec.metric(key)
    scale = metric.scale if metric else 1.0
    values = _median_by(
        own,
        lambda r: (
            v * scale if (v := explain.number(explain.value_of(r, key))) is not None else None
        ),
        lambda r: r["verdict"] not in explain.NOT_MEASURED,
    )
    unit = (metric.display_unit or metric.unit) if metric else ""
    title = metric.title if metric else key
    axis = f"{title} ({unit})" if unit else title
    plot = category_plot(names, _lines(values, names), axis)
    sub = "the median over trials of each measured cell; hover for each setting"
    return _plot(spec.name, f"{spec.name}: {title} per kernel", sub, plot)


def pair_plot(view: dict[str, Any], names: list[str], ratio: RatioSpec) -> dict | None:
    """A pair's ratio against kernel version, a line per setting, the expected one dotted."""
    values = {
        (p["label"] or "defaults", p["kernel"]["name"]): p["ratio"]
        for p in view["rows"]
        if p["ratio"] is not None
    }
    expected = []
    if ratio.expect is not None:
        expected = [(ratio.expect, f"expected {ratio.expect_text or f'{ratio.expect:g}'}")]
    axis = f"{view['b']} / {view['a']}"
    plot = category_plot(names, _lines(values, names), axis, expected)
    title = f"{axis}: {view['metric']} per kernel"
    return _plot("", title, "the first trial of each; hover for each setting", plot)


def sections(
    rows: list[dict[str, Any]],
    kernels: list[dict[str, Any]],
    cat: Catalogue,
    details: Mapping[str, Mapping[str, Any]] | None = None,
    min_ratio: float = 0.2,
) -> list[dict[str, Any]]:
    """The matrix page's sections, by the manifests' `report.section`: a scenario with a
    ratio to another one of its section is shown as a pair, every other one in a grid of
    its own, each with its key figure plotted across kernels. Sections of grids come
    first, then those with pairs."""
    names = sorted({str(r["scenario"]) for r in rows}, key=natural_key)
    kernel_names = [str(k["name"]) for k in kernels]
    grouped: dict[str, list[Scenario]] = {}
    for spec in (cat.find(n) or bare(n) for n in names):
        key = f"section {spec.report.section}" if spec.report.section else f"own {spec.name}"
        grouped.setdefault(key, []).append(spec)
    out = []
    for specs in grouped.values():
        first = specs[0]
        members = {s.name: s for s in specs}
        pairs = [
            (members[r.of], s, r)
            for s in specs
            if (r := s.report.ratio) and r.of in members and r.of != s.name
        ]
        paired = {s.name for a, b, _ in pairs for s in (a, b)}
        alone = [s for s in specs if s.name not in paired]
        pair_views = [(a, b, r, pair_table(rows, kernels, a, b, r)) for a, b, r in pairs]
        own = f"{first.name}: {first.title}" if first.title else first.name
        out.append(
            {
                "title": first.report.section or own,
                "note": next((s.report.section_note for s in specs if s.report.section_note), ""),
                "scenarios": [s.name for s in specs],
                "grids": [matrix_grid(rows, kernels, [s]) for s in alone],
                "pairs": [view for _, _, _, view in pair_views],
                "plots": [
                    p
                    for p in [scenario_plot(rows, kernel_names, s, min_ratio) for s in alone]
                    + [pair_plot(view, kernel_names, r) for _, _, r, view in pair_views]
                    if p
                ],
                "explain": explain.paragraphs(
                    rows,
                    alone,
                    [(a, b, view["rows"]) for a, b, _, view in pair_views],
                    kernel_names,
                    details,
                    min_ratio,
                ),
            }
        )
    out.sort(key=lambda sec: bool(sec["pairs"]))
    for i, grid in enumerate(g for sec in out for g in sec["grids"]):
        grid["id"] = "matrix" if i == 0 else f"matrix-{i + 1}"
    for i, pair in enumerate(p for sec in out for p in sec["pairs"]):
        pair["id"] = f"pairs-{i + 1}"
    for i, plot in enumerate(p for sec in out for p in sec["plots"]):
        plot["id"] = f"kplot-{i + 1}"
    return out


def confirmation_mark(row: Mapping[str, Any]) -> dict[str, str]:
    """A matrix cell's short mark for how firmly its verdict stands, and its title."""
    kind = str(row.get("confirmation") or "single-shot")
    verdicts = list(row.get("attempt_verdicts") or [])
    agree = sum(1 for v in verdicts if v == row.get("verdict"))
    text = {
        "confirmed": f"✓{agree}",
        "majority": f"{agree}/{len(verdicts)}",
        "unsettled": "unsettled",
    }.get(kind, "1×")
    why = str(row.get("remeasured_because") or "")
    title = (
        f"{kind}: "
        + (", ".join(verdicts) or "not measured")
        + (f"; re-measured: {why}" if why else "")
    )
    return {"kind": kind, "text": text, "title": title}


def _legend(manifest: Mapping[str, Any]) -> list[dict[str, str]]:
    """One entry per verdict: its rule text from the manifest (the classifier's own words)."""
    rules: dict[str, list[str]] = {}
    for verdict, text in manifest["rules"]:
        rules.setdefault(str(verdict), []).append(str(text))
    names = list(VERDICTS) + [v for v in rules if v not in VERDICTS]
    legend = [{"verdict": v, "rules": rules.get(v, [])} for v in names]
    if manifest.get("remeasure_rule"):
        legend.append({"verdict": "re-measured", "rules": [str(manifest["remeasure_rule"])]})
    return legend


def index_context(
    run: RunData, rows: list[dict[str, Any]], cat: Catalogue | None = None
) -> dict[str, Any]:
    """Everything the matrix page shows, computed once so the template only lays it out."""
    kernels = sorted_kernels(run)
    counts = {v: sum(1 for r in rows if r["verdict"] == v) for v in VERDICTS}
    least = (run.manifest.get("thresholds") or {}).get("success_min_ratio", 0.2)
    return {
        "manifest": run.manifest,
        "kernels": kernels,
        "sections": sections(rows, kernels, cat or run_scenarios(run), run.details, least),
        "scenario_names": sorted({str(r["scenario"]) for r in rows}, key=natural_key),
        "legend": _legend(run.manifest),
        "thresholds": dict(run.manifest["thresholds"], **run.manifest.get("cell_limits", {})),
        "counts": counts,
        "total": len(rows),
        "failures": [k for k in kernels if k["failure"]],
        "threshold_page": is_threshold_run(run.run_dir),
        "assets": f"{ASSETS}/",
    }


RULE_FIGURES = {
    "series_rate": (
        ("early_rate", "early rate (/s)", 0),
        ("late_rate", "late rate (/s)", 0),
        ("rate_ratio", "late / early", 3),
        ("knee_t", "past the knee at (s)", 2),
        ("stime_share", "system time share", 3),
        ("rate_cv", "pre-knee rate std/mean", 3),
        ("host_load1", "host load average", 2),
        ("host_steal_share", "host steal share", 3),
        ("vm_wait_share", "VM waiting for a CPU", 3),
        ("guest_steal_share", "guest steal share", 3),
    ),
}
"""The figures a rule computes, by the rule's kind: they belong to the rule, so every
scenario judged by it shows them under the same labels."""
ERROR_FIGURES = (("error_name", "error", None), ("error_iteration", "error at iteration", None))
"""What any program's error document names."""


def _same(a: Any, b: Any) -> bool:
    """Sysctl values compare by their words: "4096\t16384" reads back for "4096 16384"."""
    return str(a).split() == str(b).split()


def sysctl_rows(row: Mapping[str, Any], detail: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Requested vs read back per key, flagging what did not take (a silent "pass")."""
    info = detail.get("sysctls") or {}
    requested = dict(info.get("requested") or row.get("sysctls") or {})
    read_back = dict(info.get("read_back") or row.get("sysctls_read") or {})
    checked = bool(info) or bool(read_back)
    problems: dict[str, list[str]] = {}
    for p in info.get("problems") or []:
        text = ": ".join(str(x) for x in (p.get("problem"), p.get("detail")) if x)
        problems.setdefault(str(p.get("key")), []).append(text)
    out = []
    for key in sorted(set(requested) | set(read_back) | set(problems)):
        want, got = requested.get(key), read_back.get(key)
        mismatch = checked and want is not None and (got is None or not _same(want, got))
        note = "; ".join(problems.get(key, [])) or ("did not take" if mismatch else "")
        out.append({"key": key, "requested": want, "read_back": got, "problem": note})
    return out


def _scalars(mapping: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    return sorted((k, v) for k, v in (mapping or {}).items() if not isinstance(v, dict | list))


def _is_scalar(value: Any) -> bool:
    return value is not None and isinstance(value, int | float | str) and value == value


def metric_text(value: Any, spec: MetricSpec) -> str:
    """A declared metric on a cell page: as the manifest prints it, and the exact figure
    beside it when the manifest scales it (3.97 MB (3,973,120 B))."""
    if explain.number(value) is None or (spec.scale == 1.0 and not spec.display_unit):
        return num(value, spec.digits)
    exact = num(value) + (f" {spec.unit}" if spec.unit else "")
    return f"{shown(value, spec)} ({exact})"


def key_metrics(row: Mapping[str, Any], spec: Scenario) -> list[tuple[str, str]]:
    """The scenario's declared metrics, then its rules' figures, then the error's."""
    out = []
    seen = set()
    for m in spec.metrics:
        value = explain.value_of(row, m.name)
        if _is_scalar(value):
            out.append((m.title, metric_text(value, m)))
            seen.add(m.name)
    kinds = dict.fromkeys(rule.kind for rule in spec.rules)
    figures = [f for kind in kinds for f in RULE_FIGURES.get(kind, ())]
    for name, label, digits in (*figures, *ERROR_FIGURES):
        value = explain.value_of(row, name)
        if name not in seen and _is_scalar(value):
            out.append((label, num(value, digits)))
            seen.add(name)
    return out


def distributions(metrics: Mapping[str, Any], spec: Scenario) -> list[dict[str, Any]]:
    """Metrics that are a table of figures (latency percentiles), each shown as a table;
    nstat has a panel of its own."""
    out = []
    for name, value in sorted(metrics.items()):
        if name == "nstat" or not isinstance(value, dict):
            continue
        pairs = _scalars(value)
        if pairs:
            m = spec.metric(name)
            out.append({"title": m.title if m else name, "rows": pairs})
    return out


CASE_CLASS = {"pass": "success", "fail": "fail", "skip": "skip", "error": "error"}


def testcases(detail: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The program's test cases (LAVA, TAP/KTAP, or its result.json): name, result,
    measurement and units, as it reported them."""
    cases = detail.get("testcases")
    if not isinstance(cases, list):
        return []
    return [
        {
            "name": c.get("name"),
            "result": c.get("result"),
            "class": CASE_CLASS.get(str(c.get("result")), "infra"),
            "measurement": c.get("measurement"),
            "units": c.get("units") or "",
        }
        for c in cases
        if isinstance(c, dict)
    ]


def program_rows(detail: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """How the program ended: its outcome and exit status, when the agent recorded them."""
    prog = detail.get("program")
    if not isinstance(prog, dict):
        return []
    labels = (("outcome", "outcome"), ("exit_code", "exit status"))
    return [(label, prog[key]) for key, label in labels if _is_scalar(prog.get(key))]


def plot_spec(spec: Scenario, series: list[Any]) -> dict[str, Any] | None:
    """What the cell's plot shows (the manifest's `report.plot` field), or None."""
    field = spec.report.plot
    if not field or not series:
        return None
    rule = spec.series_rule()
    metric = spec.metric(field)
    has_tw = any(isinstance(s, Mapping) and explain.number(s.get("tw")) is not None for s in series)
    if rule and rule.counter == field:
        what = (metric.unit if metric else "") or spec.report.counter_unit or field
        heading = f"{what[:1].upper()}{what[1:]} per second"
        axis, scale = f"{what}/s", 1.0
        sub = "per sampling interval, over seconds since the program started"
    else:
        label = metric.title if metric else field
        unit = (metric.display_unit or metric.unit) if metric else ""
        heading = label[:1].upper() + label[1:]
        axis = f"{label} ({unit})" if unit else label
        scale = metric.scale if metric else 1.0
        sub = "at each sample, over seconds since the program started"
    tw = "; TIME-WAIT sockets on the right axis" if has_tw else ""
    return {
        "field": field,
        "rate": bool(rule and rule.counter == field),
        "scale": scale,
        "axis": axis,
        "heading": heading + (" and TIME-WAIT" if has_tw else ""),
        "sub": sub + tw + "; dashed line: stall detected; drag to zoom, double-click to reset",
    }


def cell_context(
    row: dict[str, Any],
    detail: Mapping[str, Any],
    kernel: Mapping[str, Any] | None,
    manifest: Mapping[str, Any],
    spec: Scenario | None = None,
) -> dict[str, Any]:
    """A cell page's content, its plot as data for the browser to draw."""
    spec = spec or bare(str(row["scenario"]))
    metrics = detail.get("metrics") or {}
    evidence = detail.get("evidence") or {}
    stall = evidence.get("stall")
    nstat = metrics.get("nstat") or detail.get("nstat") or {}
    series = detail.get("series") or []
    params = row.get("params") if isinstance(row.get("params"), dict) else {}
    plot = plot_spec(spec, series)
    drawn = None
    if plot:
        lines = traces(series, plot["field"], plot["rate"], plot["axis"], plot["scale"])
        stall_t = stall.get("t") if isinstance(stall, dict) else None
        drawn = time_plot(lines, stall_t if isinstance(stall_t, int | float) else None)
    return {
        "row": row,
        "kernel": kernel,
        "manifest": manifest,
        "status": detail.get("status"),
        "scenario_title": spec.title,
        "params": " ".join(f"{k}={v}" for k, v in params.items()) if params else "",
        "sysctl_rows": sysctl_rows(row, detail),
        "metrics": key_metrics(row, spec),
        "distributions": distributions(metrics, spec),
        "testcases": testcases(detail),
        "program": program_rows(detail),
        "all_metrics": _scalars(metrics),
        "nstat": _scalars(nstat),
        "evidence": [
            (name, evidence.get(name)) for name in ("stall", "final") if evidence.get(name)
        ],
        "profile": stack_profile(evidence.get("profile")),
        "error": detail.get("error"),
        "kernel_log": kernel_log(detail),
        "log_tail": detail.get("log_tail") or "",
        "console_tail": row.get("console_tail") or (kernel or {}).get("console_tail") or "",
        "plot": plot if drawn else None,
        "plot_json": plot_json(drawn) if drawn else "",
        "assets": f"../{ASSETS}/",
    }


PHASE_TITLES = {
    "past_knee": "past the knee",
    "before_knee": "before the knee",
    "run": "over the whole run",
}


def stack_profile(profile: Any) -> list[dict[str, Any]]:
    """Where the measured process spent its kernel time, per phase: each function's share
    of the stack samples as the innermost frame and anywhere on the stack (sampled by the
    program while it ran; stacks on the exit path are left out)."""
    if not isinstance(profile, dict):
        return []
    out = []
    for phase in sorted(
        profile, key=lambda p: list(PHASE_TITLES).index(p) if p in PHASE_TITLES else 9
    ):
        p = profile[phase]
        if not isinstance(p, dict) or not p.get("samples"):
            continue
        n = int(p["samples"])
        leaf, incl = p.get("leaf") or {}, p.get("inclusive") or {}
        names = sorted(set(leaf) | set(incl), key=lambda f: (-incl.get(f, 0), -leaf.get(f, 0), f))
        out.append(
            {
                "title": PHASE_TITLES.get(phase, phase),
                "samples": n,
                "empty": int(p.get("empty") or 0),
                "rows": [(f, leaf.get(f, 0) / n, incl.get(f, 0) / n) for f in names[:12]],
            }
        )
    return out


def kernel_log(detail: Mapping[str, Any]) -> dict[str, Any] | None:
    """The kernel's own health during the cell: its taint flags before and after, what
    the cell newly tainted, and the log lines reporting trouble (vetted at intake)."""
    k = detail.get("kernel")
    if not isinstance(k, dict):
        return None
    events = [e for e in k.get("events") or [] if isinstance(e, dict)]
    return {
        "taint_before": " ".join(k.get("taint_flags_before") or []) or "none",
        "taint_after": " ".join(k.get("taint_flags_after") or []) or "none",
        "tainted_by_cell": " ".join(k.get("tainted_by_cell") or []),
        "events": [
            (str(e.get("kind")), str(e.get("origin") or ""), str(e.get("line"))) for e in events
        ],
        "log": "\n".join(str(x) for x in k.get("log") or []),
        "shared": bool(k.get("shared")),
    }


@dataclass(frozen=True)
class CellPages:
    """What every cell page is made from, shared with forked workers (never pickled)."""

    rows: list[dict[str, Any]]
    run: RunData
    cat: Catalogue
    template: jinja2.Template
    cells_dir: Path

    def write(self, share: int, shares: int) -> int:
        """Render and write every `shares`-th page from `share` (plot-heavy and light
        pages interleave, so the shares take about as long)."""
        kernels = {k["name"]: k for k in self.run.manifest["kernels"]}
        done = 0
        for row in self.rows[share::shares]:
            page = cell_context(
                row,
                self.run.details.get(row["cell_id"]) or {},
                kernels.get(row["kernel"]),
                self.run.manifest,
                self.cat.find(str(row["scenario"])),
            )
            html = self.template.render(page)
            rundir.write_text_atomic(self.cells_dir / page_name(row["cell_id"]), html)
            done += 1
        return done


def _workers(pages: int) -> int:
    """One process per core the renderer may use, when there are enough pages to share."""
    if pages < _POOL_MIN_PAGES or not sys.platform.startswith("linux"):
        return 1
    cores = len(os.sched_getaffinity(0))
    return max(1, min(cores, 8, pages // (_POOL_MIN_PAGES // 2)))


def render_cells(job: CellPages) -> None:
    """Every cell page; with many, forked workers write their shares beside this process
    (fork: they start with the table, the details and the compiled template in memory)."""
    shares = _workers(len(job.rows))
    if shares == 1:
        job.write(0, 1)
        return
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=job.write, args=(i, shares)) for i in range(1, shares)]
    for w in workers:
        w.start()
    try:
        job.write(0, shares)
    finally:
        for w in workers:
            w.join()
    failed = [w.exitcode for w in workers if w.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} cell page worker(s) failed (exit {failed[0]})")


def copy_assets(out_dir: Path, tdir: Path) -> Path:
    """uPlot and the plot script, once per report, where every page links them."""
    dest = out_dir / ASSETS
    dest.mkdir(parents=True, exist_ok=True)
    for src, name in _ASSET_FILES:
        rundir.write_text_atomic(dest / name, (tdir / src).read_text(encoding="utf-8"))
    return dest


def render_report(run: RunData, out_dir: Path) -> Path:
    """Write out_dir/index.html (the matrix) and out_dir/cells/<cell_id>.html; return the index.

    The index is rendered first so that a run with a missing field fails before any
    cell page is written.
    """
    out_dir = Path(out_dir)
    tdir = template_dir()
    env = environment(tdir)
    rows = records(run.table)
    cat = run_scenarios(run)
    index_html = env.get_template("index.html").render(index_context(run, rows, cat))
    cells_dir = out_dir / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    copy_assets(out_dir, tdir)
    render_cells(CellPages(rows, run, cat, env.get_template("cell.html"), cells_dir))
    index = out_dir / "index.html"
    rundir.write_text_atomic(index, index_html)
    if is_threshold_run(run.run_dir):
        render_threshold(run, out_dir, env)
    return index
