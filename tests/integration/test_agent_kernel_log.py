"""The agent records the kernel log lines and taint of each cell's time, on this
machine's kernel (its log is shared: `--net-only`, as the host runner runs the agent),
and says while a cell runs that it is alive.

A fixture scenario writes a WARN-shaped report into /dev/kmsg tagged with a token of
this test's own; it must be on that cell's record (as written by a process, not the
kernel) and on no other cell's.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from matrix.classify.rules import classify
from matrix.collect import guest_result
from matrix.model import Verdict
from tests.fixtures.agent_cells import AGENT, FIXTURES, cell, load_collector, run_agent

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root: namespaces, and writing to /dev/kmsg"
    ),
    pytest.mark.skipif(not os.path.exists("/dev/kmsg"), reason="no /dev/kmsg"),
]

agent = load_collector(AGENT)


def vetted(doc: dict[str, Any]) -> dict[str, Any]:
    assert guest_result.problem(doc) == "", doc
    return doc


def test_a_warning_is_recorded_on_its_cell_and_not_on_the_next(tmp_path: Path) -> None:
    tag = f"kmatrix-test-{uuid.uuid4().hex[:12]}"
    cells = [
        cell("before", FIXTURES / "exit-code", params={"code": "0"}),
        cell("warn", FIXTURES / "kmsg-warn", params={"tag": tag}),
        cell("after", FIXTURES / "exit-code", params={"code": "0"}),
    ]
    results = run_agent(tmp_path / "out", cells, flags=("--net-only",))
    warn = vetted(results["warn"])["kernel"]
    assert warn["source"] == "/dev/kmsg" and warn["shared"] is True and warn["error"] == ""
    assert not warn["truncated"] and warn["records"] >= 4
    ours = [e for e in warn["events"] if tag in e["line"]]
    assert [(e["kind"], e["line"], e["origin"]) for e in ours] == [
        ("warn", f"WARNING: CPU: 0 PID: 1 at {tag}", "user")
    ]
    kept = [line.split("] ", 1)[1] for line in warn["log"]]
    start = kept.index("------------[ cut here ]------------")
    assert kept[start : start + 4] == [
        "------------[ cut here ]------------",
        f"WARNING: CPU: 0 PID: 1 at {tag}",
        f"Call Trace: {tag}",
        f"---[ end trace {tag} ]---",
    ]
    for other in ("before", "after"):
        record = vetted(results[other])["kernel"]
        assert record["shared"] is True and record["error"] == ""
        assert not any(tag in line for line in record["log"]), other
        assert not any(tag in e["line"] for e in record["events"]), other
    for doc in results.values():
        k = doc["kernel"]
        assert isinstance(k["taint_before"], int) and isinstance(k["taint_after"], int)
        assert k["taint_flags_after"] == agent.agent_kmsg.taint_letters(k["taint_after"])
    c = classify(results["warn"])
    assert c.verdict is Verdict.SUCCESS
    assert c.metrics["kernel_user_events"] >= 1 and c.metrics["kernel_log_shared"] is True
    assert c.metrics["kernel_health"] == "", "a line a process wrote is not the kernel's"


def test_the_agent_beats_while_a_cell_runs_and_records_an_overrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sleeper overruns timeout_s 2 plus a slack cut to 1 s: the agent, alive by
    definition, records the state it killed the program in and that it died."""
    monkeypatch.setattr(agent.agent_exec, "DEADLINE_SLACK_S", 1.0)
    beats = io.StringIO()
    heartbeat = agent.agent_exec.Heartbeat(period_s=0.5, out=beats)
    c = cell("sleeper", FIXTURES / "sleeper")
    status = agent.execute(c, agent.netns_inode(), tmp_path, heartbeat=heartbeat)
    doc = vetted(json.loads((tmp_path / "sleeper.json").read_text()))
    assert status == doc["status"] == "timeout"
    live = doc["liveness"]
    assert live["agent_alive"] is True and live["overran"] is True and live["reaped"] is True
    assert live["state"] == "S" and live["wchan"]
    assert doc["status_detail"] == "no result within 3 s; process group killed"
    lines = beats.getvalue().splitlines()
    assert len(lines) >= 5 and all(line.endswith(" sleeper") for line in lines)
    m = classify(doc).metrics
    assert m["agent_alive"] is True and m["overran_state"] == "S" and m["overran_reaped"] is True
    assert doc["kernel"]["shared"] is False, "execute without --net-only: a guest's own log"
