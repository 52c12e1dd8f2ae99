"""A run as a KCIDB I/O document (schema v5.3), for the Linux kernel CI database.

KCIDB links a checkout (source), its builds and their tests. kmatrix builds no kernel,
so the run is the checkout, each kernel of the run a build of it, and each cell a test
of that build. Ids start with the origin ("kmatrix", which the schema's `[a-z0-9_]+`
allows) and a colon, then the run id, so they are unique across runs. A test's path is
dotted words of `[a-zA-Z0-9_-]`: "kmatrix", the scenario, then each swept sysctl and
parameter as name-value; trials of a setting share the path and differ by id.

The document is built with the standard library only; the `kcidb-io` package (a test
dependency) validates it in the tests.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from matrix.collect import sanitize
from matrix.plan.cells import scenarios_from
from matrix.results.table import RunData, json_lines
from matrix.run import rundir
from matrix.scenarios.manifest import Scenario

ORIGIN = "kmatrix"
VERSION = {"major": 5, "minor": 3}
STATUS = {
    "success": "PASS",
    "slowdown": "FAIL",
    "hang": "FAIL",
    "fail": "FAIL",
    "error": "ERROR",
    "skip": "SKIP",
    "infra": "MISS",
}
"""A slowdown and a hang are the kernel's behaviour, so FAIL; infra measured nothing (MISS:
the harness failed, the tested code's status is unknown)."""
WITH_NUMBER = frozenset({"PASS", "FAIL", "ERROR", "DONE"})
"""The schema: a test's number counts only when the test ran."""
MAX_EXCERPT = 16384
_NOT_PATH = re.compile(r"[^A-Za-z0-9_-]+")
_ARCH = {"amd64": "x86_64", "arm64": "arm64", "i386": "i386", "ppc64el": "ppc64le"}


def path_word(text: str) -> str:
    """One component of a test path: runs of other characters become '_'."""
    return _NOT_PATH.sub("_", text).strip("_") or "_"


def test_path(
    scenario: str, sysctls: dict[str, Any], params: dict[str, Any], fixed: set[str]
) -> str:
    """kmatrix.<scenario>.<sysctl>-<value>...<param>-<value>: a sysctl by its last word
    (tcp_tw_reuse), by its whole name where two of the cell's keys share a last word;
    the run's fixed sysctls are left out, as in the matrix's labels."""
    swept = {k: v for k, v in sysctls.items() if k not in fixed}
    leaves = [k.rsplit(".", 1)[-1] for k in swept]
    words = ["kmatrix", path_word(scenario)]
    for key, value in swept.items():
        leaf = key.rsplit(".", 1)[-1]
        name = leaf if leaves.count(leaf) == 1 else key
        words.append(f"{path_word(name)}-{path_word(str(value))}")
    words += [f"{path_word(k)}-{path_word(str(v))}" for k, v in params.items()]
    return ".".join(words)


def _time(value: Any) -> str | None:
    """An RFC 3339 date-time from an epoch (a cell's started_at) or an ISO string."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return datetime.fromtimestamp(value, UTC).isoformat()
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value).isoformat()
        except ValueError:
            return None
    return None


def _text(value: Any, limit: int | None = None) -> str:
    """Guest text without terminal escapes or control characters (NUL included)."""
    text = sanitize.clean(str(value or ""))
    return text[-limit:] if limit else text


def _some(doc: dict[str, Any]) -> dict[str, Any]:
    """Without the keys that have no value (KCIDB has no nulls), every string cleaned."""
    return {k: _cleaned(v) for k, v in doc.items() if v is not None}


def _cleaned(value: Any) -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {str(k): _cleaned(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_cleaned(v) for v in value]
    return value


def _architecture(release: str) -> str | None:
    """x86_64 for a Debian -amd64 kernel, and so on; None when the release does not say."""
    return _ARCH.get(release.rsplit("-", 1)[-1])


def key_number(row: dict[str, Any], spec: Scenario | None) -> dict[str, Any] | None:
    """The test's number: the scenario's key metric, else a series-rate scenario's late
    rate, with the metric's unit."""
    metrics = row.get("metrics") or {}
    name = spec.report.key if spec else None
    unit = ""
    if name:
        declared = spec.metric(name) if spec else None
        unit = declared.unit if declared else ""
    elif spec and spec.series_rule():
        name, unit = "late_rate", f"{spec.report.counter_unit or 'counts'}/s"
    value = metrics.get(name) if name else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return {"value": value, **({"unit": unit} if unit else {})}


def _checkout(run: RunData, checkout_id: str) -> dict[str, Any]:
    man = run.manifest
    doc: dict[str, Any] = {
        "id": checkout_id,
        "origin": ORIGIN,
        "comment": _text(f"kmatrix run {man.get('run_id', run.run_dir.name)}"),
        "valid": True,
        "misc": _some(
            {
                key: man.get(key)
                for key in (
                    "command",
                    "host",
                    "host_kernel",
                    "kmatrix_version",
                    "qemu_version",
                    "interrupted",
                    "allow_unverified",
                )
            }
        ),
    }
    if start := _time(man.get("started_at")):
        doc["start_time"] = start
    if (end := _time(man.get("ended_at"))) and not man.get("interrupted"):
        doc["origin_builds_finish_time"] = end
        doc["origin_tests_finish_time"] = end
    return doc


def _build(
    kernel: dict[str, Any], planned: dict[str, Any], checkout_id: str, run: RunData
) -> dict[str, Any]:
    release = str(kernel.get("release") or "")
    doc: dict[str, Any] = {
        "id": f"{checkout_id}:{kernel['name']}",
        "checkout_id": checkout_id,
        "origin": ORIGIN,
        "comment": _text(
            f"{kernel['name']}: {release} {kernel.get('package_version') or ''}"
        ).strip(),
        "status": "MISS" if release in ("", "unresolved") else "PASS",
        "misc": _some(
            {
                "kernel": kernel["name"],
                "kind": kernel.get("kind", ""),
                "release": _text(release),
                "package_version": _text(kernel.get("package_version")),
                "sha256": planned.get("sha256") or "",
                "source": planned.get("source") or {},
                "runner": kernel.get("runner", ""),
                "accelerator": kernel.get("accelerator", ""),
                "host": kernel.get("host", ""),
                "boot_s": kernel.get("boot_s"),
                "failure": _text(kernel.get("failure")),
            }
        ),
    }
    if arch := _architecture(release):
        doc["architecture"] = arch
    if start := _time(run.manifest.get("started_at")):
        doc["start_time"] = start
    return doc


def _test(
    row: dict[str, Any],
    build_id: str,
    checkout_id: str,
    spec: Scenario | None,
    fixed: set[str],
    detail: dict[str, Any],
) -> dict[str, Any]:
    clean = json.loads(json_lines([row])[0])
    status = STATUS.get(str(row["verdict"]), "ERROR")
    doc: dict[str, Any] = {
        "id": f"{checkout_id}:{row['cell_id']}",
        "build_id": build_id,
        "origin": ORIGIN,
        "path": test_path(
            str(row["scenario"]), clean["sysctls_requested"], clean.get("params") or {}, fixed
        ),
        "status": status,
        "comment": _text(f"{row['verdict']}: {row.get('reason') or ''}").strip(),
        "environment": {
            "comment": _text(
                f"{row.get('runner') or '-'} runner on {row.get('host') or '-'}, "
                f"accelerator {row.get('accelerator') or '-'}"
            ),
            "misc": _some(
                {
                    k: clean.get(k)
                    for k in (
                        "host",
                        "runner",
                        "accelerator",
                        "host_load1",
                        "host_steal_share",
                        "vm_wait_share",
                        "guest_steal_share",
                        "rate_cv",
                    )
                }
            ),
        },
        "misc": _some(
            {
                k: clean.get(k)
                for k in (
                    "cell_id",
                    "kernel",
                    "kernel_release",
                    "scenario",
                    "trial",
                    "verdict",
                    "reason",
                    "key_figure",
                    "sysctls",
                    "sysctls_requested",
                    "params",
                    "metrics",
                    "attempts",
                    "attempt_verdicts",
                    "confirmation",
                    "repro",
                )
            }
        ),
    }
    number = key_number(clean, spec)
    if number is not None and status in WITH_NUMBER:
        doc["number"] = number
    if start := _time(detail.get("started_at")):
        doc["start_time"] = start
    began, ended = detail.get("started_at"), detail.get("ended_at")
    if isinstance(began, int | float) and isinstance(ended, int | float) and ended >= began:
        doc["duration"] = float(ended - began)
    if status != "PASS":
        excerpt = detail.get("log_tail") or row.get("console_tail")
        if excerpt:
            doc["log_excerpt"] = _text(excerpt, MAX_EXCERPT)
    return doc


def document(run: RunData) -> dict[str, Any]:
    """The run as one KCIDB document: a checkout, a build per kernel, a test per cell."""
    plan = rundir.read_json(run.run_dir / "plan.json")
    scenarios = scenarios_from(plan)
    fixed = set(plan.get("fixed_sysctls") or [])
    planned = {k["name"]: k for k in plan["kernels"]}
    checkout_id = f"{ORIGIN}:{run.manifest.get('run_id') or run.run_dir.name}"
    builds = [
        _build(k, planned.get(k["name"], {}), checkout_id, run) for k in run.manifest["kernels"]
    ]
    tests = [
        _test(
            row,
            f"{checkout_id}:{row['kernel']}",
            checkout_id,
            scenarios.find(str(row["scenario"])),
            fixed,
            run.details.get(str(row["cell_id"])) or {},
        )
        for row in run.table.to_dict(orient="records")
    ]
    return {
        "version": dict(VERSION),
        "checkouts": [_checkout(run, checkout_id)],
        "builds": builds,
        "tests": tests,
    }


def dumps(doc: dict[str, Any]) -> str:
    """Strict JSON (no NaN), one document."""
    return json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n"
