"""The guest collectors on this machine's kernel: real namespaces, real sysctls, real loops.

The built-in puzzles run as the agent runs them (their manifests' commands, limits from
KMATRIX_*), so these prove what they measure. Each cell runs in its own network
namespace, so these tests never change the host's sysctls; the last test checks that.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent_cells import (
    AGENT,
    BUILTIN,
    COLLECTORS,
    FIXTURES,
    cell,
    load_collector,
    run_agent,
)

HOST_KEYS = ("net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_max_tw_buckets", "net.ipv4.ip_local_port_range")
SMALL_RANGE = "40000 40999"  # 1000 ports: 2B runs out of them in well under a second
FULL_RANGE = "32768 60999"
TW_SEED = {"net.ipv4.tcp_max_tw_buckets": "65535", "net.ipv4.tcp_tw_reuse": "0"}


def _read_host(key: str) -> str:
    return " ".join(Path("/proc/sys", *key.split(".")).read_text().split())


HOST_BEFORE = {k: _read_host(k) for k in HOST_KEYS}

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="needs root: the agent unshares network namespaces and writes sysctls",
    ),
]


agent = load_collector(AGENT)
netns = load_collector(COLLECTORS / "agent_netns.py")
puzzle2 = load_collector(BUILTIN / "puzzle2.py")


def half_rates(doc: dict[str, Any]) -> tuple:
    """Connections per second in the first and the second half of the loop's run."""
    live = [s for s in doc["series"] if s["state"] != "Z"]
    end = live[-1]
    mid = min(live, key=lambda s: abs(s["t"] - end["t"] / 2))
    return (
        mid["iterations"] / mid["t"],
        (end["iterations"] - mid["iterations"]) / (end["t"] - mid["t"]),
    )


@pytest.fixture(scope="module")
def puzzle1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("p1") / "out"
    return run_agent(out, [cell("p1a", "1A"), cell("p1b", "1B")])


@pytest.fixture(scope="module")
def puzzle2_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    small = dict(TW_SEED, **{"net.ipv4.ip_local_port_range": SMALL_RANGE})
    reuse = dict(
        TW_SEED, **{"net.ipv4.ip_local_port_range": FULL_RANGE, "net.ipv4.tcp_tw_reuse": "1"}
    )
    out = tmp_path_factory.mktemp("p2") / "out"
    return run_agent(
        out,
        [cell("a_small", "2A", small), cell("b_small", "2B", small), cell("b_reuse", "2B", reuse)],
    )


def test_pollout_stops_sender_at_two_thirds_of_what_eagain_allows(puzzle1: dict) -> None:
    a, b = puzzle1["p1a"], puzzle1["p1b"]
    assert a["status"] == b["status"] == "ok"
    assert a["metrics"]["ended_by"] == "eagain"
    assert b["metrics"]["ended_by"] == "pollout"
    assert a["series"] == b["series"] == []
    bytes_a, bytes_b = a["metrics"]["bytes_queued"], b["metrics"]["bytes_queued"]
    assert 0 < bytes_b < bytes_a
    assert 0.5 < bytes_b / bytes_a < 0.85, (bytes_a, bytes_b)
    for doc in (a, b):
        m = doc["metrics"]
        assert m["outq"] is not None and 0 < m["outq"] <= m["bytes_queued"]
        assert m["sndbuf_before"] > 0 and m["tcp_wmem"]


def test_2a_keeps_its_rate_when_ports_are_few(puzzle2_runs: dict) -> None:
    doc = puzzle2_runs["a_small"]
    assert doc["status"] == "ok" and doc["error"] is None
    assert doc["sysctls"]["problems"] == []
    assert doc["sysctls"]["read_back"]["net.ipv4.ip_local_port_range"] == SMALL_RANGE
    m = doc["metrics"]
    assert m["ended_by"] == "window"
    assert m["iterations"] > 10 * 1000  # many times the port range: ports are reused
    early, late = half_rates(doc)
    assert late >= 0.5 * early, (early, late)
    assert m["latency_us"]["count"] == m["iterations"]
    assert doc["evidence"]["final"]["state"] == m["final_state"]
    assert "do_exit" not in doc["evidence"]["final"]["stack"]
    profile = doc["evidence"]["profile"]
    assert set(profile) <= {"before_knee", "past_knee"}, profile
    assert sum(p["samples"] for p in profile.values()) >= 3, profile
    assert all(p["empty"] + sum(p["leaf"].values()) <= p["samples"] for p in profile.values())


def test_2b_collapses_or_fails_when_ports_are_few(puzzle2_runs: dict) -> None:
    doc = puzzle2_runs["b_small"]
    assert doc["status"] == "ok"
    m = doc["metrics"]
    assert m["tw_max"] >= min(m["iterations"], 1000) * 0.9
    if m["ended_by"] == "error":
        assert doc["error"]["name"] == "EADDRNOTAVAIL"
        assert doc["error"]["phase"] == "connect"
        assert doc["error"]["iteration"] <= 1000
        assert m["iterations"] == doc["error"]["iteration"]
    else:
        early, late = half_rates(doc)
        assert late < 0.1 * early, (early, late)


def test_2b_keeps_going_with_tw_reuse(puzzle2_runs: dict) -> None:
    doc = puzzle2_runs["b_reuse"]
    assert doc["status"] == "ok" and doc["error"] is None
    m = doc["metrics"]
    assert m["ended_by"] == "window"
    assert m["nstat"]["TcpExtTWRecycled"] > 0
    early, late = half_rates(doc)
    assert late >= 0.3 * early, (early, late)


def test_sysctl_that_is_missing_or_rejected_stops_the_cell(tmp_path: Path) -> None:
    results = run_agent(
        tmp_path / "out",
        [
            cell("missing", "2B", {"net.ipv4.does_not_exist": "1"}),
            cell("rejected", "2B", {"net.ipv4.tcp_tw_reuse": "7"}),
        ],
    )
    for cell_id, allowed in (("missing", {"missing"}), ("rejected", {"write_failed", "mismatch"})):
        doc = results[cell_id]
        assert doc["status"] == "setup_failed"
        assert doc["metrics"] == {} and doc["series"] == []
        [problem] = doc["sysctls"]["problems"]
        assert problem["problem"] in allowed, problem
    assert results["missing"]["sysctls"]["read_back"] == {"net.ipv4.does_not_exist": None}


def test_resume_skips_a_cell_that_has_a_result(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    kept = agent.new_result(cell("done", "1A"), 0, 1.0)
    kept.update(status="ok", status_detail="from an earlier run")
    (out / "done.json").write_text(json.dumps(kept))
    results = run_agent(out, [cell("done", "1A"), cell("fresh", "1B")])
    assert results["done"] == kept
    assert results["fresh"]["status"] == "ok"
    assert json.loads((out / "agent.json").read_text())["cells_skipped"] == 1


def _sleeper() -> int:
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(60)
        finally:
            os._exit(0)
    return pid


@pytest.mark.parametrize(
    ("window_s", "stall_s", "expected"), [(30.0, 1.0, "stall"), (0.5, 30.0, "window")]
)
def test_monitor_kills_a_loop_that_stops(window_s: float, stall_s: float, expected: str) -> None:
    shared = puzzle2.probe.Shared(16)
    watched = puzzle2.monitor(_sleeper(), shared, window_s, stall_s, 0.1)
    assert watched["killed_for"] == expected
    assert os.WIFSIGNALED(watched["status"])
    assert watched["final"]["state"] == "S"
    if expected == "stall":
        stall = watched["stall"]
        assert stall["iterations"] == 0 and stall["state"] == "S"
        assert stall["t"] >= stall_s
        assert stall["stack"] and stall["syscall"]


def _in_fresh_netns(fn: Callable[[], Any]) -> Any:
    """fn's JSON-able result, computed in a forked child that has unshared its netns."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            netns.unshare_net()
            payload = {"value": fn()}
        except BaseException:
            payload = {"exception": traceback.format_exc()}
        with os.fdopen(write_end, "w") as f:
            json.dump(payload, f)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        payload = json.load(f)
    os.waitpid(pid, 0)
    assert "exception" not in payload, payload.get("exception")
    return payload["value"]


def test_leak_check_puts_back_a_changed_sysctl() -> None:
    key = "net.ipv4.tcp_tw_reuse"

    def leak() -> dict:
        agent.write_sysctl(key, "2")
        cells = [{"sysctls": {key: "1", "net.ipv4.nope": "1"}}]
        baseline = agent.host_baseline(cells)
        agent.write_sysctl(key, "1")
        return {
            "baseline": baseline,
            "changes": agent.host_changes(baseline, "c1", agent.requested_values(cells)),
            "now": agent.read_sysctl(key),
        }

    got = _in_fresh_netns(leak)
    assert got["baseline"] == {key: "2"}
    assert got["changes"] == [
        {
            "cell_id": "c1",
            "key": key,
            "before": "2",
            "after": "1",
            "from_cell": True,
            "restored": True,
            "action": "a cell's value; put back to '2'",
        }
    ]
    assert got["now"] == "2"


def test_a_cell_without_a_command_is_bad_input(tmp_path: Path) -> None:
    """Nothing runs: exit 2 before the first cell, no result, no agent.json."""
    bare = cell("bare", "1A")
    del bare["command"]
    cells = tmp_path / "cells.json"
    cells.write_text(json.dumps({"cells": [cell("fine", "1B"), bare]}))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(AGENT), "--cells", str(cells), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "cell 1: missing command" in proc.stderr
    assert not out.exists()


def test_agent_refuses_to_run_without_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent.os, "geteuid", lambda: 1000)
    assert agent.main(["--cells", str(tmp_path / "none.json"), "--out", str(tmp_path)]) == 3


def _python38() -> str | None:
    for candidate in (os.environ.get("KMATRIX_PYTHON38"), shutil.which("python3.8")):
        if (
            candidate
            and subprocess.run(
                [candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 8)"],
                capture_output=True,
            ).returncode
            == 0
        ):
            return candidate
    return None


@pytest.mark.skipif(_python38() is None, reason="no working python3.8 (set KMATRIX_PYTHON38)")
def test_agent_runs_on_python38(tmp_path: Path) -> None:
    """The agent and both puzzle programs (run by the same interpreter) on 3.8, and the
    agent reading LAVA and KTAP lines there."""
    old = _python38()
    cells = [cell("old", "1B"), cell("old2", "2B", window_s=1)]
    for c in cells:
        c["command"][0] = old
    cells += [cell("lava", FIXTURES / "lava"), cell("ktap", FIXTURES / "ktap")]
    results = run_agent(tmp_path / "out", cells, python=old)
    assert results["old"]["python"].startswith("3.8")
    assert {doc["status"] for doc in results.values()} == {"ok"}
    assert results["old"]["metrics"]["ended_by"] == "pollout"
    assert results["old2"]["metrics"]["iterations"] > 0
    assert results["lava"]["metrics"] == {"throughput": 42.5}
    assert results["ktap"]["program"]["outcome"] == "fail"


def test_host_namespace_sysctls_are_unchanged() -> None:
    assert {k: _read_host(k) for k in HOST_KEYS} == HOST_BEFORE


def test_a_collapsed_loop_is_stopped_early_and_says_so(tmp_path: Path) -> None:
    """2B on the full range crawls after ~14,100 connections; with collapse_s the cell
    ends a few seconds into the crawl instead of at its window."""
    full = dict(TW_SEED, **{"net.ipv4.ip_local_port_range": FULL_RANGE})
    c = cell("collapse", "2B", full, window_s=30.0, collapse_s=2.0)
    doc = run_agent(tmp_path / "out", [c])["collapse"]
    m = doc["metrics"]
    assert m["ended_by"] == "collapse", m
    assert m["elapsed_s"] < 15.0
    assert m["iterations"] > 14_000
    assert m["port_range"] == [32768, 60999]
    assert doc["evidence"]["final"]["state"] == "R"


def _hammer(shared: Any, n: int) -> int:
    """A child that stores 1..n into the shared counter as fast as it can."""
    pid = os.fork()
    if pid == 0:
        words = shared.words
        for i in range(1, n + 1):
            words[puzzle2.probe.COUNTER] = i
        os._exit(0)
    return pid


def test_the_shared_counter_never_reads_torn() -> None:
    """One process stores the counter, another reads it without a pause: every read is
    a value that was stored (no zero in the middle, never smaller than the last)."""
    shared = puzzle2.probe.Shared(16)
    n = 3_000_000
    pid = _hammer(shared, n)
    reads, last, bad = 0, 0, []
    while last < n:
        got = shared.count()
        reads += 1
        if got < last:
            bad.append((last, got))
        last = max(last, got)
    os.waitpid(pid, 0)
    shared.close()
    assert not bad, bad[:5]
    assert reads > 1000


def test_the_monitor_treats_a_smaller_count_as_impossible() -> None:
    shared = puzzle2.probe.Shared(16)
    watch = puzzle2.Watch(os.getpid(), shared, 10.0, 0.0, puzzle2.Goal(None, None, None))
    shared.words[puzzle2.ITERATIONS] = 500
    watch.sample()
    shared.words[puzzle2.ITERATIONS] = 0
    watch.sample()
    shared.words[puzzle2.ITERATIONS] = 700
    watch.sample()
    shared.close()
    assert [s["iterations"] for s in watch.series] == [500, 500, 700]
    assert watch.regressions == 1


def test_a_loop_stops_once_past_the_knee_by_both_margins() -> None:
    """With a small range the knee comes early; the cell ends by its goal, well before
    its safety limits, and says where the knee was."""
    sysctls = dict(TW_SEED, **{"net.ipv4.ip_local_port_range": "32768 36863"})
    c = cell("goal", "2A", sysctls, window_s=60.0, knee_margin=500, knee_margin_s=1.0)
    out = Path(tempfile.mkdtemp(prefix="kmatrix-goal-")) / "out"
    doc = run_agent(out, [c])["goal"]
    m = doc["metrics"]
    assert m["ended_by"] == "target", m
    assert m["knee"] == 2048
    assert m["iterations"] >= 2048 + 500
    assert m["elapsed_s"] - m["knee_t"] >= 1.0
    assert m["elapsed_s"] < 30
    assert m["counter_regressions"] == 0
    assert doc["limits"]["knee_margin"] == 500
