"""The shape check of a guest's result: every key the pipeline reads, named when wrong."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from matrix.collect import guest_result

RECORDED = Path(__file__).resolve().parents[2] / "fixtures" / "run_host_recorded" / "cells"


def recorded(scenario: str) -> dict[str, Any]:
    for path in sorted(RECORDED.glob("*.json")):
        doc = json.loads(path.read_text())
        if doc["scenario"] == scenario:
            return doc
    raise AssertionError(scenario)


def with_(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `doc` with the value at a dotted path (numbers index lists) replaced."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


def test_every_recorded_result_passes_unchanged() -> None:
    for path in sorted(RECORDED.glob("*.json")):
        doc = json.loads(path.read_text())
        assert guest_result.problem(doc) == "", path.name
        assert guest_result.vet(doc, path.stem) is doc


P2, P1 = recorded("2A"), recorded("1A")
CASES = [
    ([], "the result is a list, not an object"),
    ("ok", "the result is a string, not an object"),
    (None, "the result is null, not an object"),
    (with_(P2, "metrics.iterations", "20000"), "metrics.iterations is a string, not a number"),
    (with_(P2, "metrics.iterations", None), "metrics.iterations is null, not a number"),
    (with_(P2, "metrics.iterations", True), "metrics.iterations is a boolean, not a number"),
    (with_(P2, "metrics.iterations", 10**30), "metrics.iterations is out of range"),
    (with_(P2, "metrics", []), "metrics is a list, not an object"),
    (with_(P2, "metrics", None), "metrics is null, not an object"),
    (with_(P2, "metrics.elapsed_s", {"x": 1}), "metrics.elapsed_s is an object, not a number"),
    (with_(P2, "metrics.port_range", [40000]), "metrics.port_range is not a pair of port numbers"),
    (with_(P2, "metrics.port_range", "40000 40999"), "metrics.port_range is not a pair"),
    (with_(P2, "metrics.latency_us", [1, 2]), "metrics.latency_us is a list, not an object"),
    (with_(P2, "metrics.latency_us.p50", "12"), "metrics.latency_us.p50 is a string"),
    (with_(P2, "metrics.nstat.TcpExtTW", [1]), "metrics.nstat.TcpExtTW is a list, not a number"),
    (with_(P2, "metrics.ended_by", 3), "metrics.ended_by is a number, not a string"),
    (with_(P2, "series", {"t": 1}), "series is an object, not a list"),
    (with_(P2, "series.2", [0.4, 10316]), "series[2] is a list, not an object"),
    (with_(P2, "series.2.t", "0.4"), "series[2].t is a string, not a number"),
    (with_(P2, "series.2", {"t": 0.4}), "series[2].iterations is missing"),
    (with_(P2, "series.3.state", ["R"]), "series[3].state is a list, not a string"),
    (with_(P2, "evidence", "stalled"), "evidence is a string, not an object"),
    (with_(P2, "evidence.stall", ["S"]), "evidence.stall is a list, not an object"),
    (with_(P2, "evidence.stall", {"iterations": None}), "evidence.stall.iterations is null"),
    (with_(P2, "evidence.final.wchan", 0), "evidence.final.wchan is a number, not a string"),
    (with_(P2, "error", "EADDRNOTAVAIL"), "error is a string, not an object"),
    (with_(P2, "error", {"name": "EADDRNOTAVAIL"}), "error.iteration is missing"),
    (with_(P2, "error", {"iteration": "?"}), "error.iteration is a string, not a number"),
    (with_(P2, "sysctls", None), "sysctls is null, not an object"),
    (with_(P2, "sysctls.read_back", ["200"]), "sysctls.read_back is a list, not an object"),
    (with_(P2, "sysctls.read_back.net\\x", {}), "is an object, not a string or a number"),
    (with_(P2, "sysctls.problems", None), "sysctls.problems is null, not a list"),
    (with_(P2, "sysctls.problems", [{"key": "k"}]), "sysctls.problems[0].problem is missing"),
    (with_(P2, "sysctls.problems", ["bad"]), "sysctls.problems[0] is a string, not an object"),
    (with_(P2, "status", 1), "status is a number, not a string"),
    (with_(P2, "kernel_release", ["6.1"]), "kernel_release is a list, not a string"),
    (with_(P2, "log_tail", {"a": 1}), "log_tail is an object, not a string"),
    (with_(P2, "limits.knee_margin", "many"), "limits.knee_margin is a string, not a number"),
    (with_(P2, "netns.inode", -(2**70)), "netns.inode is out of range"),
    (with_(P1, "metrics.bytes_queued", "lots"), "metrics.bytes_queued is a string, not a number"),
    (with_(P1, "metrics.sndbuf_after", [1]), "metrics.sndbuf_after is a list, not a number"),
    (with_(P2, "metrics.\u202eevil" + "x" * 60, 10**19), "metrics.'\\u202eevilxxx"),
]


@pytest.mark.parametrize(("doc", "why"), CASES, ids=[w for _, w in CASES])
def test_a_wrong_shape_is_named(doc: Any, why: str) -> None:
    assert why in guest_result.problem(doc)
    stand_in = guest_result.vet(doc, "c1")
    assert stand_in == {
        "cell_id": "c1",
        "status": "rejected",
        "status_detail": f"malformed result: {guest_result.problem(doc)}",
    }
    assert guest_result.problem(stand_in) == ""


def test_unknown_keys_and_nulls_the_agent_writes_pass() -> None:
    doc = with_(P2, "metrics.tw_max", None)
    doc = with_(doc, "series.1.state", None)
    doc["metrics"]["something_new"] = {"nested": [1, "x"]}
    doc["error"] = {}
    assert guest_result.problem(doc) == ""


def test_a_result_the_classifier_raises_on_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: Any, **_k: Any) -> Any:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(guest_result, "classify", boom)
    why = guest_result.problem(P2)
    assert why == "the classifier cannot read it (ZeroDivisionError: division by zero)"


def test_read_turns_every_failure_into_a_stand_in(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"status": "ok", "metrics": {"iterations": NaN}}')
    (tmp_path / "b.json").symlink_to(RECORDED / "3f9141a07e4e9320.json")
    (tmp_path / "c.json").write_text(json.dumps(with_(P2, "metrics.iterations", "1")))
    details = {p: guest_result.read(tmp_path / f"{p}.json", p)["status_detail"] for p in "abc"}
    assert details == {
        "a": "malformed result JSON: NaN is not a number JSON allows",
        "b": "unreadable result: b.json is a symbolic link, not a regular file",
        "c": "malformed result: metrics.iterations is a string, not a number",
    }
