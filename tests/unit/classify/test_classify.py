"""The verdict rules on synthetic series, one per verdict."""

from __future__ import annotations

from typing import Any

import pytest

from matrix.classify.figures import key_figure
from matrix.classify.rules import Thresholds, classify, rules
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
        {"status": "no_result", "status_detail": "no result.json"},
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
    assert c.reason.startswith("inconclusive: 5,000 connections in 10.0 s")
    assert "short of the knee (14,116, half the port range)" in c.reason
    assert c.metrics["inconclusive"] is True
    doc["metrics"]["port_range"] = [40000, 40999]
    assert classify(doc).verdict is Verdict.SUCCESS


def test_a_loop_stopped_for_collapse_is_a_slowdown() -> None:
    doc = result(series=series([13000] * 4 + [200] * 16))
    doc["metrics"].update(ended_by="collapse", port_range=[32768, 60999])
    assert classify(doc).verdict is Verdict.SLOWDOWN


KNEE_RANGE = [32768, 60999]  # knee at 14,116


def knee_result(rates: list[float], margin: int = 1000, margin_s: float = 3.0, **kw: Any) -> dict:
    doc = result(series=series(rates), **kw)
    doc["metrics"]["port_range"] = KNEE_RANGE
    doc["limits"] = {"knee_margin": margin, "knee_margin_s": margin_s}
    return doc


def test_success_needs_the_margins_past_the_knee() -> None:
    """The 7.2 case: a window that ended 42 connections past the knee, the crawl only in
    its last second, is not a success: it is inconclusive, with its figures."""
    doc = knee_result([1000] * 28 + [158] * 2)  # 0.5 s samples: 14,000, then 158 in 1 s
    doc["metrics"]["ended_by"] = "window"
    c = classify(doc)
    assert c.verdict is Verdict.INFRA and c.metrics["inconclusive"]
    assert "stopped by the window_s" in c.reason and "past the knee (14,116)" in c.reason
    assert key_figure("2B", c) == "14,158 conns, 0.3 s past the knee, short of the goal"


def test_an_infra_cell_shows_what_it_measured_and_why_it_does_not_count() -> None:
    short = knee_result([1000] * 12)  # 6,000 connections in 6 s, the knee at 14,116
    c = classify(short)
    assert c.verdict is Verdict.INFRA and c.metrics["inconclusive"]
    assert key_figure("2B", c) == "6,000 conns, stopped short of the knee"
    empty = classify(result())  # no samples: no rates to judge
    assert empty.verdict is Verdict.INFRA and empty.reason == "too few samples to compute rates"
    assert key_figure("2B", empty) == "0 conns, too few samples to compute rates"
    assert key_figure("2B", classify(None, "boot timeout")) == "no result"
    assert key_figure("2B", classify({"status": "timeout", "status_detail": "60 s"})) == "no result"


def test_a_loop_past_both_margins_is_judged_on_its_post_knee_rate() -> None:
    steady = knee_result([1000] * 40)  # 20,000 connections, 5.9 s past the knee
    steady["metrics"]["ended_by"] = "target"
    c = classify(steady)
    assert c.verdict is Verdict.SUCCESS
    assert c.metrics["knee_t"] == pytest.approx(14.116, abs=0.01)
    crawl = knee_result([1000] * 29 + [50] * 80)  # crawls from 14,500 on
    crawl["metrics"]["ended_by"] = "collapse"
    c = classify(crawl)
    assert c.verdict is Verdict.SLOWDOWN
    assert c.metrics["late_rate"] < 100


def test_a_crawl_before_the_knee_stopped_by_the_window_is_inconclusive() -> None:
    doc = knee_result([1000] * 10 + [20] * 40)
    doc["metrics"]["ended_by"] = "window"
    c = classify(doc)
    assert c.verdict is Verdict.INFRA and "short of the knee" in c.reason


def test_thin_margins_are_named() -> None:
    from matrix.classify.rules import thin_reasons

    near = knee_result([1000] * 29 + [200] * 20)  # late/early 0.23 on a steady loop
    near["metrics"]["ended_by"] = "target"
    c = classify(near)
    assert c.verdict is Verdict.SUCCESS and c.metrics["rate_cv"] == 0.0
    (reason,) = thin_reasons(near, c)
    assert reason.startswith("late/early 0.2") and "within 1.25x of the 0.2 threshold" in reason
    clear = knee_result([1000] * 29 + [20] * 80)
    clear["metrics"]["ended_by"] = "collapse"
    c = classify(clear)
    assert c.verdict is Verdict.SLOWDOWN and thin_reasons(clear, c) == []
    loaded = dict(near, host_load={"vm_wait_share": 0.4})
    loaded_c = classify(loaded)
    assert loaded_c.metrics["vm_wait_share"] == 0.4
    assert "3x" in thin_reasons(loaded, loaded_c)[0]
    dip = knee_result([1000] * 29 + [20] * 30 + [900] * 2)
    dip["metrics"]["ended_by"] = "target"
    c = classify(dip)
    assert any("a dip" in r for r in thin_reasons(dip, c))


def test_a_steady_7x_crawl_stands_and_a_noisy_one_is_measured_again() -> None:
    """A guest crawl like 6.1's (950/s to ~130/s past the knee) is clear of the 5x line
    when the loop is steady; the same ratio from a loop whose rate wobbles is not."""
    from matrix.classify.rules import thin_reasons

    steady = knee_result([950] * 30 + [120] * 30)
    steady["metrics"]["ended_by"] = "target"
    c = classify(steady)
    assert c.verdict is Verdict.SLOWDOWN and thin_reasons(steady, c) == []
    noisy = knee_result(([1300] * 4 + [650] * 4) * 4 + [120] * 30)
    noisy["metrics"]["ended_by"] = "target"
    c = classify(noisy)
    assert c.verdict is Verdict.SLOWDOWN and c.metrics["rate_cv"] > 0.1
    assert thin_reasons(noisy, c), c.metrics


def test_a_crashed_program_is_an_error_not_a_missing_result() -> None:
    c = classify({"status": "crashed", "status_detail": "killed by signal 11 (SIGSEGV)"})
    assert c.verdict is Verdict.ERROR and "SIGSEGV" in c.reason
