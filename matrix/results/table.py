"""Raw collector results + the plan -> one tidy pandas table per run.

The table is always rebuilt from what the run directory holds (plan, cell results,
batch outcomes), so `report` and `results` work on an interrupted run as well as a
finished one, and a change of thresholds re-classifies without re-measuring.
"""

from __future__ import annotations

import json
import math
import numbers
import shlex
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matrix.classify.figures import key_figure
from matrix.classify.remeasure import Folded, attempts_of, fold
from matrix.classify.rules import DEFAULT_THRESHOLDS, Baseline, Thresholds, remeasure_rule, rules
from matrix.collect import guest_result
from matrix.model import Classified, Verdict
from matrix.plan import cells
from matrix.plan.cells import sysctl_label
from matrix.run import rundir
from matrix.scenarios.manifest import Scenario

if TYPE_CHECKING:
    import pandas as pd

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
    "knee_t",
    "host_load1",
    "host_steal_share",
    "vm_wait_share",
    "guest_steal_share",
    "rate_cv",
)
KERNEL_COLUMNS = (
    "kernel_health",
    "kernel_event_kinds",
    "kernel_events",
    "kernel_user_events",
    "kernel_tainted",
    "kernel_taint_flags",
    "kernel_tainted_by_cell",
    "kernel_log_shared",
)
"""The kernel's health during the cell (`rules.kernel_figures`); None for a result
that did not record it. `kernel_health` is "" when the kernel logged no trouble, else
the most severe kind: oops, bug, soft_lockup, rcu_stall, hung_task, warn."""


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
    """One row per planned cell, in plan order; a cell with no result is infra. A cell
    measured more than once shows the verdict folded over its attempts."""
    kernels = {k["name"]: k for k in plan["kernels"]}
    fixed = set(plan.get("fixed_sysctls", []))
    scenarios = cells.scenarios_from(plan)
    raw = {cid: guest_result.vet(doc, cid) for cid, doc in raw.items()}
    base = Baselines(plan, raw)
    rows = []
    for cell in plan["cells"]:
        batch = batches.get(cell.get("batch") or cell["kernel"]) or batches.get(cell["kernel"], {})
        failure = batch_failure(batches, cell["kernel"]) or "not run (run interrupted?)"
        spec = scenarios.find(cell["scenario"])
        try:
            got = attempts_of(cell["id"], raw)
            folded = fold(cell["id"], got, failure, t, scenarios, base.lookup(cell))
            result = raw.get(folded.chosen_id)
            row = _row(cell, kernels[cell["kernel"]], batch, result, folded.classified, fixed, spec)
        except Exception as e:  # noqa: BLE001 - one unreadable cell must not cost the table
            folded = unclassifiable(cell["id"], e)
            row = _row(cell, kernels[cell["kernel"]], batch, None, folded.classified, fixed, spec)
        rows.append(dict(row, **confirmation_columns(folded)))
    return rows


def unclassifiable(cell_id: str, error: Exception) -> Folded:
    """An infra verdict for a result the classifier raised on, with the reason; the
    results were vetted at intake (`guest_result`), so this is the last resort."""
    why = f"result could not be classified ({type(error).__name__}: {str(error)[:200]})"
    return Folded(Classified(Verdict.INFRA, why), cell_id, (), "single-shot", True)


def batch_failure(batches: dict[str, dict[str, Any]], kernel: str) -> str:
    """Why a kernel's cells may lack a first measurement: the failures of the batches that
    ran them, `<kernel>`, its parts (`<kernel>+p2`) and its shards in a merged run
    (`<kernel>+s2`); re-measurements (`+r2`) do not count."""
    names = [
        n
        for n in sorted(batches, key=lambda n: (n != kernel, n))
        if n.partition("+")[0] == kernel and not any(t[:1] == "r" for t in n.split("+")[1:])
    ]
    failures = [batches[n].get("failure") for n in names]
    return "; ".join(dict.fromkeys(f for f in failures if f))


def confirmation_columns(folded: Folded) -> dict[str, Any]:
    """How firmly a verdict stands: its attempts, their verdicts, and why it was re-measured."""
    return {
        "measured_id": folded.chosen_id,
        "attempts": len(folded.attempts),
        "attempt_verdicts": [a.classified.verdict.value for a in folded.attempts],
        "confirmation": folded.confirmation,
        "remeasured_because": folded.remeasured_because,
    }


def _row(
    cell: dict[str, Any],
    kernel: dict[str, Any],
    batch: dict[str, Any],
    result: dict[str, Any] | None,
    c: Any,
    fixed: set[str],
    spec: Scenario | None = None,
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
        "key_figure": key_figure(spec or cell["scenario"], c),
        "params": dict(cell.get("params") or {}),
        "metrics": scalar_metrics(m),
        "runner": batch.get("runner", ""),
        "accelerator": batch.get("accelerator", ""),
        "host": (result or {}).get("run_host") or batch.get("host", ""),
        "console_tail": batch.get("console_tail", "") if result is None else "",
        "batch_liveness": batch.get("liveness", "") if result is None else "",
        "repro": repro_command(cell),
    }
    for col in METRIC_COLUMNS + KERNEL_COLUMNS:
        row[col] = m.get(col)
    row["kernel_flagged"] = c.verdict is Verdict.SUCCESS and bool(m.get("kernel_health"))
    row["lat_p50_us"], row["lat_p99_us"] = lat.get("p50"), lat.get("p99")
    row["sndbuf"] = m.get("sndbuf_after", m.get("sndbuf"))
    return row


def scalar_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """Every scalar metric of a cell (the program's and the rules' figures), for
    `results --json` and the exports: what any scenario measured, by its own names."""
    return {str(k): v for k, v in m.items() if isinstance(v, int | float | str | bool) or v is None}


class Baselines:
    """The baseline kernel's value of a metric for the same cell (scenario, sysctls,
    parameters, trial folded): the median over its trials and attempts."""

    def __init__(self, plan: dict[str, Any], raw: dict[str, dict[str, Any]]) -> None:
        self.default = plan.get("baseline")
        self.values: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for cell in plan["cells"]:
            for doc in attempts_of(cell["id"], raw):
                if doc.get("status") == "ok":
                    self.values.setdefault(_same_cell(cell) + (cell["kernel"],), []).append(
                        doc.get("metrics") or {}
                    )

    def lookup(self, cell: dict[str, Any]) -> Baseline:
        def value(metric: str, kernel: str | None) -> float | None:
            name = kernel or self.default
            if not name or name == cell["kernel"]:
                return None
            found = [
                m[metric]
                for m in self.values.get(_same_cell(cell) + (name,), [])
                if isinstance(m.get(metric), int | float)
            ]
            return statistics.median(found) if found else None

        return value


def _same_cell(cell: dict[str, Any]) -> tuple[str, str]:
    key = {"sysctls": cell.get("sysctls") or {}, "params": cell.get("params") or {}}
    return cell["scenario"], json.dumps(key, sort_keys=True)


def repro_command(cell: dict[str, Any]) -> str:
    """The command that runs exactly this one cell again."""
    parts = ["kmatrix", "run", "--kernels", cell["kernel"], "--scenarios", cell["scenario"]]
    for k, v in cell["sysctls"].items():
        parts += ["--sysctl", f"{k}={v}"]
    for k, v in (cell.get("params") or {}).items():
        parts += ["--param", f"{k}={v}"]
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
    if "knee_margin" in cell:
        parts += ["--knee-margin", str(cell["knee_margin"])]
        parts += ["--knee-margin-s", f"{cell['knee_margin_s']:g}"]
    return shlex.join(parts)


def table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """pandas is imported here, not at the top: `kmatrix run` starts without it (~0.4 s)
    and `matrix.run.warm` loads it beside the first cells."""
    import pandas as pd

    return pd.DataFrame.from_records(rows)


def records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain dicts, with pandas' NaN/NA/NaT turned into None for the templates."""
    import pandas as pd

    rows = table.to_dict("records")
    for row in rows:
        for key, value in row.items():
            if not isinstance(value, dict | list | tuple | str) and pd.isna(value):
                row[key] = None
    return rows


def write_table(run_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """results.jsonl: the table as JSON lines, readable without kmatrix."""
    path = run_dir / "results.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(_jsonable(row), sort_keys=True, allow_nan=False) + "\n")
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
        remeasure_rule=remeasure_rule(t),
        thresholds=asdict(t),
        cell_limits=cell_limits(plan),
    )
    details = {r["cell_id"]: raw[r["measured_id"]] for r in rows if r["measured_id"] in raw}
    return RunData(run_dir, manifest, table(rows), details)


LIMIT_KEYS = ("knee_margin", "knee_margin_s", "collapse_s", "stall_s", "window_s", "iteration_cap")


def cell_limits(plan: dict[str, Any]) -> dict[str, Any]:
    """The cells' stopping rules (their goal past the knee and the safety limits), as
    the legend shows them next to the thresholds; a range when cells differ."""
    out: dict[str, Any] = {}
    cells = [c for c in plan.get("cells", []) if c.get("knee_margin") is not None]
    for key in LIMIT_KEYS:
        values = sorted({c[key] for c in cells if key in c})
        if values:
            out[f"cell {key}"] = values[0] if len(values) == 1 else f"{values[0]}-{values[-1]}"
    return out


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
                "liveness": b.get("liveness", ""),
                "console_tail": b.get("console_tail", ""),
                "host_sysctl_changed": [
                    c
                    for r in rundir.kernel_batches(batches, k["name"])
                    for c in r.get("host_sysctl_changed") or []
                ],
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
        out.append(json.dumps(doc, sort_keys=True, allow_nan=False))
    return out


INT_COLUMNS = frozenset(
    {
        "trial",
        "attempts",
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
        "kernel_events",
        "kernel_user_events",
    }
)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """Strict JSON: NaN and infinities -> null, at any depth (a rate over a tiny time can
    overflow), and whole counts back to integers (pandas stores a column with gaps as
    float)."""
    out = {}
    for k, v in row.items():
        v = _finite(v)
        if k in INT_COLUMNS and _is_count(v):
            v = int(v)
        out[k] = v
    return out


def _is_count(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == int(value)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
