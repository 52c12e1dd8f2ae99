"""A cell whose kernel logged trouble or was tainted is marked in the matrix, and its
page shows the lines and the taint flags."""

from __future__ import annotations

from matrix.report import render


def test_a_cell_on_a_kernel_that_warned_is_marked() -> None:
    clean = [{"kernel_health": "", "kernel_tainted_by_cell": ""}]
    assert render.kernel_mark(clean) is None
    assert render.kernel_mark([{}]) is None
    warned = render.kernel_mark([{"kernel_health": "warn"}, {"kernel_tainted_by_cell": "W"}])
    assert warned == {"text": "⚠", "title": "the kernel logged or tainted: warn, tainted W"}
    assert render.kernel_mark([{"kernel_tainted_by_cell": "U"}])["text"] == "T"


def test_the_cell_page_lists_the_kernels_lines_and_taint() -> None:
    detail = {
        "kernel": {
            "taint_flags_before": [],
            "taint_flags_after": ["U"],
            "tainted_by_cell": ["U"],
            "events": [{"kind": "hung_task", "origin": "kernel", "line": "INFO: task x blocked"}],
            "log": ["INFO: task x blocked", "Call Trace:"],
            "shared": False,
        }
    }
    shown = render.kernel_log(detail)
    assert shown["taint_before"] == "none" and shown["tainted_by_cell"] == "U"
    assert shown["events"] == [("hung_task", "kernel", "INFO: task x blocked")]
    assert shown["log"] == "INFO: task x blocked\nCall Trace:"
    assert render.kernel_log({}) is None


def test_the_cell_page_profile_gives_each_functions_share() -> None:
    profile = {
        "past_knee": {
            "samples": 16,
            "empty": 2,
            "leaf": {"__inet_hash_connect": 13, "__dentry_kill": 1},
            "inclusive": {"__inet_hash_connect": 13, "__sys_connect": 13, "__fput": 1},
        },
        "before_knee": {"samples": 2, "empty": 0, "leaf": {"x": 2}, "inclusive": {"x": 2}},
    }
    (past, before) = render.stack_profile(profile)
    assert past["title"] == "past the knee" and before["title"] == "before the knee"
    assert past["rows"][0] == ("__inet_hash_connect", 13 / 16, 13 / 16)
    assert render.stack_profile(None) == []
