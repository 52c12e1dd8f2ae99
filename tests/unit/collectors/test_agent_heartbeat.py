"""The agent's heartbeat and how it records a program that overran its deadline.

The heartbeat is what lets the host tell a stuck program (beats go on) from a kernel
that stopped answering (they stop) when a batch's deadline passes; the host reads it
with the pattern in matrix/runners/agent_io.py, checked here against what the agent
prints.
"""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import pytest

from matrix.runners.agent_io import HEARTBEAT, HEARTBEAT_LINE
from tests.fixtures.agent_cells import AGENT, load_collector

agent_exec = load_collector(AGENT).agent_exec


def test_beats_are_one_per_period_and_the_host_reads_each(monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(agent_exec.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    beat = agent_exec.Heartbeat(period_s=5.0, out=out)
    beat.beat(force=True)
    for step in range(20):
        clock[0] = 100.0 + step * 0.5
        beat.beat("3f2a9c.a2")
    beat.beat("3f2a9c.a2", force=True)
    lines = out.getvalue().splitlines()
    assert lines == [
        "KMATRIX-ALIVE 100.000",
        "KMATRIX-ALIVE 105.000 3f2a9c.a2",
        "KMATRIX-ALIVE 109.500 3f2a9c.a2",
    ]
    found = [m.groups() for m in HEARTBEAT.finditer(out.getvalue())]
    assert found == [("100.000", None), ("105.000", "3f2a9c.a2"), ("109.500", "3f2a9c.a2")]
    assert all(HEARTBEAT_LINE.match(line) for line in lines)


def test_a_closed_console_costs_no_cell() -> None:
    out = io.StringIO()
    out.close()
    agent_exec.Heartbeat(out=out).beat(force=True)


def test_the_wait_loop_beats_while_the_program_runs() -> None:
    beats: list[float] = []
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        time.sleep(0.6)
        os._exit(0)
    os.close(write_end)
    try:
        status, _ = agent_exec.wait_child(
            pid, read_end, time.monotonic() + 30, lambda: beats.append(time.monotonic())
        )
    finally:
        os.close(read_end)
    assert status is not None and os.WIFEXITED(status)
    assert len(beats) >= 5


def test_a_live_process_state_and_a_killed_child_reaped() -> None:
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        state, wchan = agent_exec.proc_state(pid)
        while state != "S" and time.monotonic() < deadline:
            time.sleep(0.02)
            state, wchan = agent_exec.proc_state(pid)
        assert state == "S" and isinstance(wchan, str)
    finally:
        os.kill(pid, signal.SIGKILL)
    assert agent_exec.reap(pid, 10.0) is True
    assert agent_exec.proc_state(pid) == (None, None)


def test_a_child_that_does_not_die_is_given_up_on_in_time(monkeypatch) -> None:
    monkeypatch.setattr(agent_exec.os, "waitpid", lambda pid, flags: (0, 0))
    beats: list[int] = []
    began = time.monotonic()
    assert agent_exec.reap(12345, 0.3, lambda: beats.append(1)) is False
    assert 0.3 <= time.monotonic() - began < 2 and beats


@pytest.mark.parametrize("reaped", [True, False])
def test_an_overrun_is_told_in_the_detail_only_when_the_program_did_not_die(
    tmp_path: Path, reaped: bool
) -> None:
    result = {
        "status": "crashed",
        "status_detail": "",
        "netns": {"inode": None},
        "sysctls": {},
        "program": {"signal": None, "stdout_tail": ""},
        "testcases": [],
        "liveness": {"overran": True, "state": "D", "wchan": "down_write", "reaped": reaped},
    }
    with open(tmp_path / "out", "w+b") as stdout, open(tmp_path / "err", "w+b") as stderr:
        run = {"budget": 32.0, "stdout": stdout, "stderr": stderr, "argv": ["x"]}
        agent_exec.finish({}, result, run, None, {})
    detail = "no result within 32 s; process group killed"
    if not reaped:
        detail += "; the program did not die within 10 s (state D in down_write)"
    assert result["status"] == "timeout" and result["status_detail"] == detail
