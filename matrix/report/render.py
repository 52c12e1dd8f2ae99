"""The static HTML report: a matrix page for a run and a page per cell.

Everything shown comes from guests and collectors, so it is untrusted: Jinja2 escapes
every expression (autoescape) and `clean` strips control characters and terminal escape
sequences from every printed string (it is the environment's `finalize`, so a template
cannot forget it). StrictUndefined turns a field missing from the run into an error
instead of a silently blank page. The output needs no network: CSS and plots are inline.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import sys
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from matrix.collect import sanitize
from matrix.report import explain
from matrix.report.plots import RatePlotter
from matrix.report.threshold import is_threshold_run, render_threshold
from matrix.results.table import RunData, records
from matrix.run import rundir
from matrix.scenarios.catalogue import SCENARIOS

VERDICTS = ("success", "slowdown", "hang", "error", "infra")
_SEVERITY = {"infra": 0, "success": 1, "slowdown": 2, "error": 3, "hang": 4}
PUZZLE1 = ("1A", "1B")
_POOL_MIN_PAGES = 64
"""Below this many cell pages a process pool costs more than it saves."""


def clean(value: Any) -> Any:
    """Strip terminal escapes and control characters from a string; keep newlines and tabs.

    A console tail or a /proc stack can carry colour codes, bells or bidi overrides that
    garble or disguise the page. Markup built by this module (the plots) is left alone.
    """
    if isinstance(value, Markup) or not isinstance(value, str):
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


def environment(path: Path | None = None) -> jinja2.Environment:
    """A Jinja2 environment that escapes and cleans everything and tolerates no gaps."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(path or template_dir())),
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


def _sysctl_key(row: Mapping[str, Any]) -> str:
    """Folding key for a sysctl set: the label is for people, the dict is the identity."""
    return json.dumps(row.get("sysctls") or {}, sort_keys=True, default=str)


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
    Infra only colours a cell when no trial measured anything.
    """
    trials = sorted(rows, key=lambda r: r["trial"] or 0)
    verdicts = [r["verdict"] for r in trials]
    measured = [v for v in verdicts if v != "infra"] or verdicts
    worst = max(measured, key=lambda v: _SEVERITY.get(v, 0))
    return {
        "verdict": worst,
        "flaky": len(set(verdicts)) > 1,
        "confirmation": confirmation_mark(trials[0]),
        "key_figure": trials[0]["key_figure"],
        "reason": trials[0]["reason"],
        "href": "cells/" + page_name(trials[0]["cell_id"]),
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


def matrix_grid(rows: list[dict[str, Any]], kernels: list[dict[str, Any]]) -> dict[str, Any]:
    """Puzzle 2 as a grid: columns grouped by scenario then sysctl label, a row per kernel."""
    columns: dict[tuple[str, str], str] = {}
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["scenario"] in PUZZLE1:
            continue
        col = (row["scenario"], _sysctl_key(row))
        columns.setdefault(col, row["sysctl_label"] or "")
        groups.setdefault((row["kernel"], *col), []).append(row)
    order = sorted(columns, key=lambda c: (c[0], natural_key(columns[c]), c[1]))
    scenarios: list[dict[str, Any]] = []
    for scen, _ in order:
        if not scenarios or scenarios[-1]["name"] != scen:
            title = SCENARIOS[scen].title if scen in SCENARIOS else ""
            scenarios.append({"name": scen, "title": title, "span": 0})
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
    labels = [columns[c] or "defaults" for c in order]
    return {
        "scenarios": scenarios,
        "labels": labels,
        "columns": [c[0] for c in order],
        "rows": grid,
    }


def _first_trial(rows: list[dict[str, Any]], scenario: str) -> dict[str, Any] | None:
    picked = sorted((r for r in rows if r["scenario"] == scenario), key=lambda r: r["trial"] or 0)
    return picked[0] if picked else None


def puzzle1_rows(rows: list[dict[str, Any]], kernels: list[dict[str, Any]]) -> list[dict]:
    """Puzzle 1 per kernel and sysctl set: bytes queued by 1A and 1B and their ratio.

    The first trial is shown; puzzle 1 is deterministic for a kernel and a buffer size,
    and any other trials are one click away on the cell pages.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["scenario"] in PUZZLE1:
            groups.setdefault((row["kernel"], _sysctl_key(row)), []).append(row)
    out = []
    for kernel in kernels:
        keys = sorted((g for g in groups if g[0] == kernel["name"]), key=lambda g: g[1])
        for key in keys:
            a, b = _first_trial(groups[key], "1A"), _first_trial(groups[key], "1B")
            qa = a["bytes_queued"] if a else None
            qb = b["bytes_queued"] if b else None
            ratio = qb / qa if qa and qb is not None else None
            label = (a or b or {}).get("sysctl_label") or ""
            out.append({"kernel": kernel, "label": label, "a": a, "b": b, "ratio": ratio})
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


def index_context(run: RunData, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the matrix page shows, computed once so the template only lays it out."""
    kernels = sorted_kernels(run)
    counts = {v: sum(1 for r in rows if r["verdict"] == v) for v in VERDICTS}
    puzzle1 = puzzle1_rows(rows, kernels)
    return {
        "manifest": run.manifest,
        "kernels": kernels,
        "grid": matrix_grid(rows, kernels),
        "puzzle1": puzzle1,
        "explain": explain.paragraphs(rows, puzzle1),
        "legend": _legend(run.manifest),
        "thresholds": dict(run.manifest["thresholds"], **run.manifest.get("cell_limits", {})),
        "counts": counts,
        "total": len(rows),
        "failures": [k for k in kernels if k["failure"]],
        "threshold_page": is_threshold_run(run.run_dir),
    }


_P2_METRICS = (
    ("iterations", "iterations", None),
    ("elapsed_s", "elapsed (s)", 2),
    ("early_rate", "early rate (/s)", 0),
    ("late_rate", "late rate (/s)", 0),
    ("rate_ratio", "late / early", 3),
    ("tw_max", "TIME-WAIT max", None),
    ("lat_p50_us", "connect() p50 (µs)", 1),
    ("lat_p99_us", "connect() p99 (µs)", 1),
    ("stime_share", "system time share", 3),
    ("error_name", "error", None),
    ("error_iteration", "error at iteration", None),
    ("knee_t", "past the knee at (s)", 2),
    ("rate_cv", "pre-knee rate std/mean", 3),
    ("host_load1", "host load average", 2),
    ("host_steal_share", "host steal share", 3),
    ("vm_wait_share", "VM waiting for a CPU", 3),
    ("guest_steal_share", "guest steal share", 3),
)
_P1_METRICS = (
    ("bytes_queued", "bytes queued", None),
    ("sends", "send() calls", None),
    ("last_send", "last send (B)", None),
    ("sndbuf_before", "SO_SNDBUF before", None),
    ("sndbuf", "SO_SNDBUF after", None),
    ("outq", "SIOCOUTQ", None),
    ("outq_nsd", "SIOCOUTQNSD", None),
    ("error_name", "error", None),
)


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


def cell_context(
    row: dict[str, Any],
    detail: Mapping[str, Any],
    kernel: Mapping[str, Any] | None,
    manifest: Mapping[str, Any],
) -> dict[str, Any]:
    """A cell page's content; the plot is drawn later, by whichever process writes the page."""
    metrics = detail.get("metrics") or {}
    evidence = detail.get("evidence") or {}
    stall = evidence.get("stall")
    spec = _P1_METRICS if row["scenario"] in PUZZLE1 else _P2_METRICS
    nstat = metrics.get("nstat") or detail.get("nstat") or {}
    scen = SCENARIOS.get(row["scenario"])
    return {
        "row": row,
        "kernel": kernel,
        "manifest": manifest,
        "status": detail.get("status"),
        "scenario_title": scen.title if scen else "",
        "sysctl_rows": sysctl_rows(row, detail),
        "metrics": [
            (label, num(row.get(key), d)) for key, label, d in spec if row.get(key) is not None
        ],
        "latency": [(k, v) for k, v in _scalars(metrics) if k.startswith("lat")],
        "all_metrics": _scalars(metrics),
        "nstat": _scalars(nstat),
        "evidence": [
            (name, evidence.get(name)) for name in ("stall", "final") if evidence.get(name)
        ],
        "error": detail.get("error"),
        "log_tail": detail.get("log_tail") or "",
        "console_tail": row.get("console_tail") or (kernel or {}).get("console_tail") or "",
        "series": detail.get("series") or [],
        "stall_t": stall.get("t") if isinstance(stall, dict) else None,
    }


def _render_pages(tdir: str, cells_dir: str, pages: list[dict[str, Any]]) -> int:
    """Write cell pages with one environment and one reused figure (runs in a worker)."""
    template = environment(Path(tdir)).get_template("cell.html")
    plotter = RatePlotter()
    for page in pages:
        stall_t = page["stall_t"] if isinstance(page["stall_t"], int | float) else None
        svg = plotter.svg(page["series"], stall_t) if page["series"] else ""
        html = template.render(page, plot_svg=Markup(svg))
        rundir.write_text_atomic(Path(cells_dir, page_name(page["row"]["cell_id"])), html)
    return len(pages)


def _workers(pages: int) -> int:
    """Plots dominate render time; spread them over processes when there are many."""
    if pages < _POOL_MIN_PAGES or not sys.platform.startswith("linux"):
        return 1
    return max(1, min(os.cpu_count() or 1, 8, pages // (_POOL_MIN_PAGES // 2)))


def render_cells(pages: list[dict[str, Any]], cells_dir: Path, tdir: Path) -> None:
    """Render every cell page, in parallel (fork) when the run is large."""
    jobs = _workers(len(pages))
    if jobs == 1:
        _render_pages(str(tdir), str(cells_dir), pages)
        return
    chunks = [pages[i::jobs] for i in range(jobs)]
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        list(pool.map(_render_pages, [str(tdir)] * jobs, [str(cells_dir)] * jobs, chunks))


def render_report(run: RunData, out_dir: Path) -> Path:
    """Write out_dir/index.html (the matrix) and out_dir/cells/<cell_id>.html; return the index.

    The index is rendered first so that a run with a missing field fails before any
    (slow) cell page is drawn.
    """
    out_dir = Path(out_dir)
    tdir = template_dir()
    rows = records(run.table)
    index_html = environment(tdir).get_template("index.html").render(index_context(run, rows))
    kernels = {k["name"]: k for k in run.manifest["kernels"]}
    pages = [
        cell_context(
            row, run.details.get(row["cell_id"]) or {}, kernels.get(row["kernel"]), run.manifest
        )
        for row in rows
    ]
    cells_dir = out_dir / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    render_cells(pages, cells_dir, tdir)
    index = out_dir / "index.html"
    rundir.write_text_atomic(index, index_html)
    if is_threshold_run(run.run_dir):
        render_threshold(run, out_dir, environment(tdir))
    return index
