"""The verdict rules on synthetic series, one per verdict."""

from __future__ import annotations

from typing import Any

import pytest

from matrix.classify import Thresholds, classify, key_figure, rules
from matrix.model import Verdict


def series(rates: list[float], dt: float = 0.5, state: str = "R", wchan: str = "") -> list[dict]:
    out, n, t = [], 0.0, 0.0
    for i, r in enumerate(rates):
        t, n = (i + 1) * dt, n + r * dt
        out.append(
            {
                "t": t,
                "iterations": int(n),
                "tw": int(n),
                "state": state,
                "utime": 0.1 * t,
                "stime": 0.9 * t,
                "wchan": wchan,
            }
        )
    return out


def result(scenario: str = "2B", **kw: Any) -> dict[str, Any]:
    s = kw.pop("series", [])
    doc = {
        "status": "ok",
        "scenario": scenario,
        "series": s,
        "error": None,
        "evidence": {"stall": None, "final": None},
        "metrics": {
            "iterations": s[-1]["iterations"] if s else 0,
            "elapsed_s": s[-1]["t"] if s else 0,
            "ended_by": "window",
        },
    }
    doc.update(kw)
    return doc


def test_steady_loop_succeeds() -> None:
    c = classify(result(series=series([10000] * 20)))
    assert c.verdict is Verdict.SUCCESS
    assert c.metrics["early_rate"] == pytest.approx(10000, rel=0.05)
    assert c.metrics["late_rate"] == pytest.approx(10000, rel=0.05)


def test_collapse_is_a_slowdown_with_cpu_bound_evidence() -> None:
    c = classify(result(series=series([13000] * 4 + [200] * 40)))
    assert c.verdict is Verdict.SLOWDOWN
    assert c.metrics["early_rate"] > 10000 and c.metrics["late_rate"] < 300
    assert "CPU-bound crawl" in c.reason and "90% system time" in c.reason
    assert key_figure("2B", c).endswith("/s → 200/s")


def test_mild_dip_above_threshold_is_success_but_below_is_slowdown() -> None:
    assert classify(result(series=series([1000] * 10 + [300] * 10))).verdict is Verdict.SUCCESS
    assert classify(result(series=series([1000] * 10 + [150] * 10))).verdict is Verdict.SLOWDOWN
    strict = Thresholds(success_min_ratio=0.7)
    assert (
        classify(result(series=series([1000] * 10 + [600] * 10)), t=strict).verdict
        is Verdict.SLOWDOWN
    )


def test_stall_is_a_hang_and_blocked_is_told_from_spinning() -> None:
    stall = {
        "t": 12.0,
        "iterations": 14100,
        "state": "S",
        "wchan": "inet_wait_for_connect",
        "stack": "",
        "syscall": "",
    }
    doc = result(
        series=series([1000] * 5 + [0] * 20, state="S", wchan="inet_wait_for_connect"),
        evidence={"stall": stall, "final": None},
    )
    doc["metrics"]["ended_by"] = "stall"
    c = classify(doc)
    assert (
        c.verdict is Verdict.HANG and "blocked" in c.reason and "inet_wait_for_connect" in c.reason
    )
    doc["evidence"]["stall"] = dict(stall, state="R", wchan="")
    assert "spinning" in classify(doc).reason


def test_errno_is_an_error_with_iteration() -> None:
    err = {
        "errno": 99,
        "name": "EADDRNOTAVAIL",
        "message": "Cannot assign requested address",
        "iteration": 28231,
        "phase": "connect",
    }
    c = classify(result(series=series([1000] * 10), error=err))
    assert c.verdict is Verdict.ERROR
    assert "EADDRNOTAVAIL at iteration 28,231" in c.reason
    assert key_figure("2B", c) == "EADDRNOTAVAIL @ 28,231"


def test_sysctl_problems_are_errors_naming_the_key() -> None:
    doc = result(
        status="setup_failed",
        sysctls={
            "problems": [
                {
                    "key": "net.ipv4.tcp_tw_reuse_delay",
                    "problem": "missing",
                    "detail": "no such file",
                }
            ]
        },
    )
    c = classify(doc)
    assert c.verdict is Verdict.ERROR and "net.ipv4.tcp_tw_reuse_delay missing" in c.reason


@pytest.mark.parametrize(
    "doc",
    [
        None,
        {},
        {"status": "timeout", "status_detail": "killed"},
        {"status": "crashed", "status_detail": "signal 9"},
    ],
)
def test_no_measurement_is_infra(doc: dict | None) -> None:
    c = classify(doc, failure="kernel panic")
    assert c.verdict is Verdict.INFRA
    if doc is None:
        assert "kernel panic" in c.reason


def test_puzzle1_reports_bytes() -> None:
    doc = result("1A", metrics={"bytes_queued": 3973120, "sends": 243})
    c = classify(doc)
    assert c.verdict is Verdict.SUCCESS and key_figure("1A", c) == "3.97 MB"


def test_rules_text_follows_thresholds() -> None:
    text = dict(rules(Thresholds(success_min_ratio=0.3)))
    assert set(text) == {v.value for v in Verdict}
    assert "0.3x" in text["success"]


def test_a_steady_loop_short_of_half_the_port_range_is_inconclusive() -> None:
    doc = result(series=series([500] * 20))
    doc["metrics"]["port_range"] = [32768, 60999]
    c = classify(doc)
    assert c.verdict is Verdict.INFRA
    assert "inconclusive: 5,000 connections never reached half the port range (14,116)" in c.reason
    doc["metrics"]["port_range"] = [40000, 40999]
    assert classify(doc).verdict is Verdict.SUCCESS


def test_a_loop_stopped_for_collapse_is_a_slowdown() -> None:
    doc = result(series=series([13000] * 4 + [200] * 16))
    doc["metrics"].update(ended_by="collapse", port_range=[32768, 60999])
    assert classify(doc).verdict is Verdict.SLOWDOWN
