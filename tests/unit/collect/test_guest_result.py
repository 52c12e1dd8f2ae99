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
    (with_(P2, "series.2", {"iterations": 4}), "series[2].t is missing"),
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


PROGRAM = {
    "argv": ["python3", "/s/puzzle2.py", "--close-first", "server"],
    "exit_code": 0,
    "signal": None,
    "outcome": "pass",
    "reported": ["json", "exit"],
    "stdout_tail": "",
}
CASE = {
    "name": "throughput",
    "result": "pass",
    "measurement": 1.5,
    "units": "MB/s",
    "source": "lava",
}
P2X = dict(
    P2,
    program=PROGRAM,
    testcases=[CASE, dict(CASE, name="x", measurement=None, units=None, source="ktap")],
    verdict="slowdown",
    params={"streams": "4"},
)
NEW_CASES = [
    (with_(P2X, "status", "exploded"), "status is 'exploded', not one of ok, setup_failed"),
    (with_(P2X, "verdict", "great"), "verdict is 'great', not one of success"),
    (with_(P2X, "verdict", 1), "verdict is a number, not a string"),
    (with_(P2X, "program", []), "program is a list, not an object"),
    (with_(P2X, "program.argv", "python3 x"), "program.argv is a string, not a list"),
    (with_(P2X, "program.argv", ["x"] * 257), "program.argv has more than 256 items"),
    (with_(P2X, "program.argv", ["x" * 4097]), "program.argv[0] is longer than 4096"),
    (with_(P2X, "program.argv", [None]), "program.argv[0] is null, not a string"),
    (with_(P2X, "program.exit_code", 300), "program.exit_code is not an exit status"),
    (with_(P2X, "program.exit_code", "0"), "program.exit_code is not an exit status"),
    (with_(P2X, "program.signal", "S" * 33), "program.signal is longer than 32"),
    (with_(P2X, "program.outcome", "passed"), "program.outcome is 'passed', not one of"),
    (with_(P2X, "program.reported", ["xml"]), "program.reported[0] is 'xml', not one of"),
    (with_(P2X, "program.reported", ["json"] * 5), "program.reported has more than 4 items"),
    (with_(P2X, "program.stdout_tail", "x" * 4001), "program.stdout_tail is longer than 4000"),
    (with_(P2X, "testcases", {"a": CASE}), "testcases is an object, not a list"),
    (with_(P2X, "testcases", [CASE] * 2001), "testcases has more than 2000 items"),
    (with_(P2X, "testcases.0", "ok 1"), "testcases[0] is a string, not an object"),
    (
        with_(P2X, "testcases.0", {"result": "pass", "source": "lava"}),
        "testcases[0].name is missing",
    ),
    (with_(P2X, "testcases.0.name", "n" * 257), "testcases[0].name is longer than 256"),
    (with_(P2X, "testcases.0.result", "maybe"), "testcases[0].result is 'maybe', not one of"),
    (with_(P2X, "testcases.0.source", "junit"), "testcases[0].source is 'junit', not one of"),
    (with_(P2X, "testcases.0.measurement", "1.5"), "testcases[0].measurement is a string"),
    (with_(P2X, "testcases.0.measurement", float("nan")), "testcases[0].measurement is out of"),
    (with_(P2X, "testcases.1.units", "u" * 65), "testcases[1].units is longer than 64"),
    (with_(P2X, "params", ["streams"]), "params is a list, not an object"),
    (with_(P2X, "params", {"PATH": "/tmp"}), "params.PATH is not a parameter name"),
    (with_(P2X, "params.streams", 4), "params.streams is a number, not a string"),
    (with_(P2X, "params.streams", "4" * 4097), "params.streams is longer than 4096"),
    (with_(P2X, "params", {f"p{i}": "1" for i in range(65)}), "params has more than 64 items"),
    (with_(P2X, "metrics.elapsed_s", float("inf")), "metrics.elapsed_s is out of range"),
]


def test_the_new_keys_within_bounds_pass() -> None:
    assert guest_result.problem(P2X) == ""
    for status in guest_result.STATUSES:
        assert guest_result.problem(dict(P2X, status=status)) == "", status
    assert guest_result.problem(dict(P2X, program=None, verdict=None, params={})) == ""


@pytest.mark.parametrize(("doc", "why"), NEW_CASES, ids=[w for _, w in NEW_CASES])
def test_a_new_key_out_of_bounds_is_named(doc: Any, why: str) -> None:
    assert why in guest_result.problem(doc)
    assert guest_result.vet(doc, "c1")["status"] == "rejected"


KERNEL = {
    "source": "/dev/kmsg",
    "shared": False,
    "error": "",
    "records": 12,
    "lost": 0,
    "truncated": False,
    "log": ["[   12.500000] WARNING: CPU: 0 PID: 1 at x", "[   12.500010] Call Trace:"],
    "events": [
        {"kind": "warn", "line": "WARNING: CPU: 0 PID: 1 at x", "t": 12.5, "origin": "kernel"}
    ],
    "taint_before": 0,
    "taint_after": 512 | (1 << 20),
    "taint_flags_before": [],
    "taint_flags_after": ["W", "bit20"],
    "tainted_by_cell": ["W", "bit20"],
}
LIVENESS = {
    "agent_alive": True,
    "overran": True,
    "state": "S",
    "wchan": "pipe_read",
    "reaped": True,
}
P2K = dict(P2X, kernel=KERNEL, liveness=LIVENESS)
KERNEL_CASES = [
    (with_(P2K, "kernel", []), "kernel is a list, not an object"),
    (with_(P2K, "kernel.shared", "yes"), "kernel.shared is a string, not true or false"),
    (with_(P2K, "kernel.truncated", 1), "kernel.truncated is a number, not true or false"),
    (with_(P2K, "kernel.error", "e" * 4001), "kernel.error is longer than 4000"),
    (with_(P2K, "kernel.log", "one line"), "kernel.log is a string, not a list"),
    (with_(P2K, "kernel.log", ["x"] * 257), "kernel.log has more than 256 items"),
    (with_(P2K, "kernel.log.1", "x" * 513), "kernel.log[1] is longer than 512"),
    (with_(P2K, "kernel.log.1", None), "kernel.log[1] is null, not a string"),
    (with_(P2K, "kernel.events", [KERNEL["events"][0]] * 65), "kernel.events has more than 64"),
    (with_(P2K, "kernel.events.0.kind", "panic"), "kernel.events[0].kind is 'panic', not one of"),
    (with_(P2K, "kernel.events.0", {"kind": "warn"}), "kernel.events[0].line is missing"),
    (with_(P2K, "kernel.events.0.line", "x" * 513), "kernel.events[0].line is longer than 512"),
    (with_(P2K, "kernel.events.0.origin", "guest"), "kernel.events[0].origin is 'guest'"),
    (with_(P2K, "kernel.events.0.t", "12.5"), "kernel.events[0].t is a string, not a number"),
    (with_(P2K, "kernel.taint_before", -1), "kernel.taint_before is not a taint mask"),
    (with_(P2K, "kernel.taint_after", 1.5), "kernel.taint_after is not a taint mask"),
    (with_(P2K, "kernel.taint_after", "512"), "kernel.taint_after is not a taint mask"),
    (with_(P2K, "kernel.taint_after", 2**70), "kernel.taint_after is out of range"),
    (with_(P2K, "kernel.tainted_by_cell", "W"), "kernel.tainted_by_cell is a string, not a list"),
    (with_(P2K, "kernel.tainted_by_cell.0", "w"), "kernel.tainted_by_cell[0] is not a taint flag"),
    (with_(P2K, "kernel.taint_flags_after.1", "bit999"), "taint_flags_after[1] is not a taint"),
    (with_(P2K, "kernel.taint_flags_before", ["W"] * 65), "has more than 64 items"),
    (with_(P2K, "liveness", "alive"), "liveness is a string, not an object"),
    (with_(P2K, "liveness.overran", "true"), "liveness.overran is a string, not true or false"),
    (with_(P2K, "liveness.reaped", 0), "liveness.reaped is a number, not true or false"),
    (with_(P2K, "liveness.wchan", "w" * 129), "liveness.wchan is longer than 128"),
    (with_(P2K, "liveness.state", ["S"]), "liveness.state is a list, not a string"),
]


def test_the_kernel_record_and_liveness_within_bounds_pass() -> None:
    assert guest_result.problem(P2K) == ""
    assert guest_result.problem(dict(P2K, kernel=None)) == ""
    quiet = dict(KERNEL, events=[], log=[], taint_after=None, taint_flags_after=[])
    assert guest_result.problem(dict(P2K, kernel=quiet)) == ""
    assert guest_result.problem(dict(P2K, liveness=dict(LIVENESS, state=None, reaped=None))) == ""


@pytest.mark.parametrize(("doc", "why"), KERNEL_CASES, ids=[w for _, w in KERNEL_CASES])
def test_a_kernel_record_out_of_bounds_is_named(doc: Any, why: str) -> None:
    assert why in guest_result.problem(doc)
    assert guest_result.vet(doc, "c1")["status"] == "rejected"
