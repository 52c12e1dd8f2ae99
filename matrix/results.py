"""Raw collector results + the plan -> one tidy pandas table per run.

The table is always rebuilt from what the run directory holds (plan, cell results,
batch outcomes), so `report` and `results` work on an interrupted run as well as a
finished one, and a change of thresholds re-classifies without re-measuring.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from matrix import rundir
from matrix.classify import DEFAULT_THRESHOLDS, Thresholds, classify, key_figure, rules
from matrix.plan import sysctl_label

METRIC_COLUMNS = (
    "iterations",
    "elapsed_s",
    "early_rate",
    "late_rate",
    "rate_ratio",
    "tw_max",
    "lat_p50_us",
    "lat_p99_us",
    "error_name",
    "error_iteration",
    "bytes_queued",
    "sends",
    "last_send",
    "sndbuf",
    "sndbuf_before",
    "outq",
    "outq_nsd",
    "evidence_state",
    "evidence_wchan",
    "stime_share",
)


@dataclass(frozen=True)
class RunData:
    """Everything the report needs about one run."""

    run_dir: Path
    manifest: dict[str, Any]
    table: pd.DataFrame
    details: dict[str, dict[str, Any]]


def build_rows(
    plan: dict[str, Any],
    raw: dict[str, dict[str, Any]],
    batches: dict[str, dict[str, Any]],
    t: Thresholds = DEFAULT_THRESHOLDS,
) -> list[dict[str, Any]]:
    """One row per planned cell, in plan order; a cell with no result is infra."""
    kernels = {k["name"]: k for k in plan["kernels"]}
    fixed = set(plan.get("fixed_sysctls", []))
    rows = []
    for cell in plan["cells"]:
        batch = batches.get(cell["kernel"], {})
        result = raw.get(cell["id"])
        c = classify(result, batch.get("failure") or "not run (run interrupted?)", t)
        rows.append(_row(cell, kernels[cell["kernel"]], batch, result, c, fixed))
    return rows


def _row(
    cell: dict[str, Any],
    kernel: dict[str, Any],
    batch: dict[str, Any],
    result: dict[str, Any] | None,
    c: Any,
    fixed: set[str],
) -> dict[str, Any]:
    m = c.metrics
    lat = m.get("latency_us") or {}
    read_back = ((result or {}).get("sysctls") or {}).get("read_back") or {}
    row = {
        "cell_id": cell["id"],
        "kernel": cell["kernel"],
        "kernel_kind": kernel["kind"],
        "kernel_release": (result or {}).get("kernel_release") or kernel.get("release", ""),
        "scenario": cell["scenario"],
        "trial": cell["trial"],
        "sysctls": cell["sysctls"],
        "sysctls_read": read_back,
        "sysctl_label": sysctl_label(cell["sysctls"], fixed),
        "verdict": c.verdict.value,
        "reason": c.reason,
        "key_figure": key_figure(cell["scenario"], c),
        "runner": batch.get("runner", ""),
        "accelerator": batch.get("accelerator", ""),
        "host": (result or {}).get("run_host") or batch.get("host", ""),
        "console_tail": batch.get("console_tail", "") if result is None else "",
        "repro": repro_command(cell),
    }
    for col in METRIC_COLUMNS:
        row[col] = m.get(col)
    row["lat_p50_us"], row["lat_p99_us"] = lat.get("p50"), lat.get("p99")
    row["sndbuf"] = m.get("sndbuf_after", m.get("sndbuf"))
    return row


def repro_command(cell: dict[str, Any]) -> str:
    """The command that runs exactly this one cell again."""
    parts = ["kmatrix", "run", "--kernels", cell["kernel"], "--scenarios", cell["scenario"]]
    for k, v in cell["sysctls"].items():
        parts += ["--sysctl", f"{k}={v}"]
    parts += [
        "--trials",
        "1",
        "--window",
        f"{cell['window_s']:g}",
        "--cap",
        str(cell["iteration_cap"]),
        "--stall",
        f"{cell['stall_s']:g}",
        "--collapse",
        f"{cell.get('collapse_s', 0):g}",
    ]
    return shlex.join(parts)


def table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame.from_records(rows)


def write_table(run_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """results.jsonl: the table as JSON lines, readable without kmatrix."""
    path = run_dir / "results.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(_jsonable(row), sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def load_run(run_dir: Path, t: Thresholds = DEFAULT_THRESHOLDS) -> RunData:
    """Read a run directory, classify every cell, and return the table and details."""
    manifest = rundir.read_json(run_dir / "manifest.json")
    plan = rundir.read_json(run_dir / "plan.json")
    raw = rundir.cell_results(run_dir)
    batches = rundir.batches(run_dir)
    rows = build_rows(plan, raw, batches, t)
    manifest = dict(
        manifest,
        kernels=kernel_summaries(plan, batches),
        rules=[list(r) for r in rules(t)],
        thresholds=asdict(t),
    )
    return RunData(run_dir, manifest, table(rows), raw)


def kernel_summaries(plan: dict[str, Any], batches: dict[str, dict[str, Any]]) -> list[dict]:
    """Per kernel: what it is, and how its batch went (for the report's header)."""
    out = []
    for k in plan["kernels"]:
        b = batches.get(k["name"], {})
        out.append(
            {
                "name": k["name"],
                "kind": k["kind"],
                "release": k["release"],
                "package_version": k.get("package_version", ""),
                "accelerator": b.get("accelerator", ""),
                "runner": b.get("runner", ""),
                "host": b.get("host", ""),
                "boot_s": b.get("boot_s"),
                "failure": b.get("failure", ""),
                "console_tail": b.get("console_tail", ""),
            }
        )
    return out


def json_lines(rows: list[dict[str, Any]]) -> list[str]:
    """`kmatrix results --json`: the row with `sysctls` as read back, one object per line."""
    out = []
    for row in rows:
        doc = _jsonable(row)
        doc["sysctls_requested"] = doc["sysctls"]
        doc["sysctls"] = doc["sysctls_read"] or doc["sysctls"]
        out.append(json.dumps(doc, sort_keys=True))
    return out


INT_COLUMNS = frozenset(
    {
        "trial",
        "iterations",
        "tw_max",
        "error_iteration",
        "bytes_queued",
        "sends",
        "last_send",
        "sndbuf",
        "sndbuf_before",
        "outq",
        "outq_nsd",
    }
)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """NaN -> null and counts back to integers (pandas stores a column with gaps as float)."""
    out = {}
    for k, v in row.items():
        if isinstance(v, float) and v != v:
            v = None
        elif k in INT_COLUMNS and v is not None:
            v = int(v)
        out[k] = v
    return out
