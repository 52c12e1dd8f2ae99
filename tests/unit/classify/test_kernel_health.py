"""The kernel's health per cell: figures added to every verdict, never deciding one.

A cell's result carries the kernel log records and taint flags of its time (the agent's
`kernel` record) and how its program met its deadline (`liveness`). The classifier adds
them to the cell's figures whatever the verdict, and the table shows `kernel_health`
(the most severe kind of trouble the kernel logged) so that a cell whose program
succeeded on a kernel that warned or locked up can be marked.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from matrix.classify.rules import classify, kernel_figures, taint_text
from matrix.collect import guest_result
from matrix.model import Verdict
from matrix.results.table import KERNEL_COLUMNS, build_rows, kernel_summaries

RUN = Path(__file__).resolve().parents[2] / "fixtures" / "run_host_recorded"
PLAN = json.loads((RUN / "plan.json").read_text())
RAW = {p.stem: json.loads(p.read_text()) for p in sorted((RUN / "cells").glob("*.json"))}
P1 = next(doc for doc in RAW.values() if doc["scenario"] == "1A")


def event(kind: str, line: str = "", origin: str = "kernel") -> dict[str, Any]:
    return {"kind": kind, "line": line or f"a {kind} line", "t": 12.5, "origin": origin}


def kernel(events: list[dict[str, Any]], before: int = 0, after: int = 0, **kw: Any) -> dict:
    """The agent's `kernel` record (collectors/agent_kmsg.py)."""
    letters = {0: [], 64: ["U"], 512: ["W"], 576: ["U", "W"], 1 << 14: ["L"]}
    doc = {
        "source": "/dev/kmsg",
        "shared": False,
        "error": "",
        "records": 30,
        "lost": 0,
        "truncated": False,
        "log": ["[   12.500000] " + e["line"] for e in events],
        "events": events,
        "taint_before": before,
        "taint_after": after,
        "taint_flags_before": letters[before],
        "taint_flags_after": letters[after],
        "tainted_by_cell": [f for f in letters[after] if f not in letters[before]],
    }
    return dict(doc, **kw)


def with_kernel(doc: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["kernel"] = record
    assert guest_result.problem(out) == ""
    return out


def without_kernel_figures(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if not k.startswith("kernel_")}


def test_a_warning_leaves_the_verdict_and_is_in_the_figures() -> None:
    plain = classify(P1)
    warned = classify(with_kernel(P1, kernel([event("warn")], 0, 512)))
    assert plain.verdict is warned.verdict is Verdict.SUCCESS
    assert warned.reason == plain.reason
    assert without_kernel_figures(warned.metrics) == plain.metrics
    assert {k: v for k, v in warned.metrics.items() if k.startswith("kernel_")} == {
        "kernel_health": "warn",
        "kernel_event_kinds": "warn",
        "kernel_events": 1,
        "kernel_user_events": 0,
        "kernel_tainted": True,
        "kernel_taint_flags": "W",
        "kernel_tainted_by_cell": "W",
        "kernel_log_shared": False,
    }


def test_a_result_without_the_record_gets_no_kernel_figures() -> None:
    """Results written before the agent recorded the kernel stay as they were."""
    assert not [k for k in classify(P1).metrics if k.startswith("kernel_")]
    assert kernel_figures(P1) == {} and kernel_figures(dict(P1, kernel=None)) == {}


def test_a_quiet_kernel_is_an_empty_health() -> None:
    m = classify(with_kernel(P1, kernel([], 64, 64))).metrics
    assert m["kernel_health"] == "" and m["kernel_events"] == 0
    assert m["kernel_tainted"] is True and m["kernel_tainted_by_cell"] == ""
    assert m["kernel_taint_flags"] == "U"


def test_the_most_severe_kind_is_the_health() -> None:
    events = [event("warn"), event("hung_task"), event("oops"), event("warn")]
    m = kernel_figures(with_kernel(P1, kernel(events)))
    assert m["kernel_health"] == "oops"
    assert m["kernel_event_kinds"] == "oops,hung_task,warn" and m["kernel_events"] == 4


def test_lines_a_process_wrote_are_not_the_kernels() -> None:
    m = kernel_figures(with_kernel(P1, kernel([event("warn", origin="user")])))
    assert m["kernel_health"] == "" and m["kernel_events"] == 0
    assert m["kernel_user_events"] == 1


def test_a_shared_log_and_an_unreadable_one_are_said() -> None:
    m = kernel_figures(with_kernel(P1, kernel([], shared=True, error="cannot read /dev/kmsg")))
    assert m["kernel_log_shared"] is True and m["kernel_log_error"] == "cannot read /dev/kmsg"


@pytest.mark.parametrize(
    ("status", "verdict", "reason"),
    [
        ("crashed", Verdict.ERROR, "program crashed: the program was killed by signal 11"),
        ("setup_failed", Verdict.ERROR, "sysctl setup failed: the program was killed"),
    ],
)
def test_every_status_carries_the_kernel_figures(
    status: str, verdict: Verdict, reason: str
) -> None:
    doc = dict(P1, status=status, status_detail="the program was killed by signal 11")
    doc["sysctls"] = dict(doc["sysctls"], problems=[])
    c = classify(with_kernel(doc, kernel([event("oops"), event("bug")])))
    assert c.verdict is verdict and c.reason.startswith(reason.split(":")[0])
    assert c.metrics["kernel_health"] == "oops"


def test_an_overrun_says_the_agent_was_alive_and_how_the_program_was() -> None:
    doc = dict(
        P1,
        status="timeout",
        status_detail="no result within 32 s; process group killed",
        liveness={
            "agent_alive": True,
            "overran": True,
            "state": "D",
            "wchan": "down_write",
            "reaped": True,
        },
    )
    assert guest_result.problem(doc) == ""
    c = classify(doc)
    assert c.verdict is Verdict.INFRA
    assert c.reason == "collector timeout: no result within 32 s; process group killed"
    assert c.metrics == {
        "agent_alive": True,
        "overran_state": "D",
        "overran_wchan": "down_write",
        "overran_reaped": True,
    }
    not_overrun = dict(doc, liveness=dict(doc["liveness"], overran=False))
    assert classify(not_overrun).metrics == {}


def test_taint_text_is_compact_letters() -> None:
    assert taint_text(["U", "W"]) == "UW"
    assert taint_text(["W", "bit20"]) == "W bit20"
    assert taint_text(None) == ""


def test_rows_carry_the_health_and_flag_a_success_on_a_troubled_kernel() -> None:
    raw = copy.deepcopy(RAW)
    one = next(cid for cid, doc in raw.items() if doc["scenario"] == "1A")
    raw[one] = with_kernel(raw[one], kernel([event("soft_lockup")], 0, 1 << 14, shared=True))
    missing = next(cid for cid in raw if cid != one)
    del raw[missing]
    batches = {"host": {"runner": "host", "failure": "batch deadline passed", "liveness": "alive"}}
    rows = {r["cell_id"]: r for r in build_rows(PLAN, raw, batches)}
    flagged = rows[one]
    assert flagged["verdict"] == "success" and flagged["kernel_flagged"] is True
    assert flagged["kernel_health"] == "soft_lockup" and flagged["kernel_taint_flags"] == "L"
    assert flagged["kernel_tainted"] is True and flagged["kernel_log_shared"] is True
    assert flagged["metrics"]["kernel_events"] == 1 and flagged["batch_liveness"] == ""
    gone = rows[missing]
    assert gone["verdict"] == "infra" and gone["batch_liveness"] == "alive"
    assert all(gone[col] is None for col in KERNEL_COLUMNS) and gone["kernel_flagged"] is False
    others = [r for cid, r in rows.items() if cid not in (one, missing)]
    assert others and all(r["kernel_health"] is None and not r["kernel_flagged"] for r in others)
    [summary] = kernel_summaries(PLAN, batches)
    assert summary["liveness"] == "alive"
