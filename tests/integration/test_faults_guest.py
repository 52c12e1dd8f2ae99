"""Fault injection: a guest that turns the shared directory against the host.

The agent's out/ directory and the console log lie in a directory the guest can write
(9p --rwdir). Each test plays a guest that puts something hostile there (a FIFO, a link
to a secret, JSON nested past the parser's stack, wrong types, NaN, a huge log) through
a test-only agent run by the host runner, then checks that the run ends, the hostile
cell is one infra row with the reason, the other cells are measured, results.jsonl is
strict JSON and the report renders.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from matrix.runners.host import HostRunner
from tests.integration.test_faults import (
    HOST,
    agent_script,
    assert_no_leftovers,
    batch_of,
    kmatrix,
    rows_of,
    run_in_process,
    write_config,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces and the guest agent"),
]

SECRET = "root:$6$guest-must-never-see-this"
SWEEP = """
[sweep]
scenarios = ["1A", "1B"]
trials = 2
window_s = 1
iteration_cap = 200
stall_s = 1
[sweep.sysctls]
"""
"""Four quick cells: the first is the guest's victim, the other three are measured."""

HEAD = """
from pathlib import Path
import agent
args = agent.parse_args(None)
cells = agent.load_cells(args.cells)
out = Path(args.out)
victim = out / (cells[0]["id"] + ".json")
Path(__file__).with_name("victim").write_text(cells[0]["id"])
"""
REST = "agent.run_batch(cells[1:], out)\n"


def guest(tmp: Path, name: str, body: str) -> tuple[Path, str]:
    """Run a batch whose agent is HEAD + body; fail (not hang) if the run got stuck.

    Returns (run dir, the victim cell's id)."""
    cfg = write_config(tmp, HOST, sweep=SWEEP)
    runner = HostRunner(agent=agent_script(tmp, name, HEAD + body))
    done, blocked = threading.Event(), threading.Event()

    def watchdog() -> None:
        """After 60 s the run is stuck on a FIFO: note it, and keep unblocking readers."""
        if done.wait(60):
            return
        blocked.set()
        while not done.wait(1):
            unblock(tmp)

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        run_dir = run_in_process(cfg, runner)
    finally:
        done.set()
    assert not blocked.is_set(), "the run blocked on a file the guest wrote"
    assert_no_leftovers(tmp)
    return run_dir, (tmp / "agents" / "victim").read_text()


def unblock(tmp: Path) -> None:
    """Open every FIFO under `tmp` for writing, so a reader stuck on one returns."""
    for path in tmp.rglob("*"):
        if path.is_fifo():
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                continue


def rows(tmp: Path, run_dir: Path) -> dict[str, dict[str, Any]]:
    return {r["cell_id"]: r for r in rows_of(tmp / "kernels.toml", run_dir)}


def strict_lines(path: Path) -> list[Any]:
    def refuse(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def check_run(tmp: Path, run_dir: Path, victim: str, why: str) -> dict[str, dict[str, Any]]:
    """The victim is infra with `why`, the rest measured, the table strict, the report up."""
    got = rows(tmp, run_dir)
    assert got[victim]["verdict"] == "infra" and why in got[victim]["reason"], got[victim]
    assert [r["verdict"] for cid, r in got.items() if cid != victim] == ["success"] * 3
    assert len(strict_lines(run_dir / "results.jsonl")) == 4
    report = kmatrix(tmp / "kernels.toml", "report", str(run_dir), "--out", str(tmp / "report"))
    assert report.returncode == 0, report.stderr[-2000:]
    assert len(list((tmp / "report" / "cells").glob("*.html"))) == 4
    return got


def no_secret_anywhere(tmp: Path) -> None:
    for root in (tmp / "runs", tmp / "report"):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert SECRET not in path.read_text(errors="replace"), path


def test_a_fifo_result_neither_blocks_nor_loses_the_run(tmp_path: Path) -> None:
    """A FIFO where a result goes used to block the runner's thread in open() forever."""
    run_dir, victim = guest(tmp_path, "fifo", REST + "os.mkfifo(victim)\n")
    check_run(tmp_path, run_dir, victim, "a FIFO, not a regular file")
    assert "without results for 1 cells" in batch_of(run_dir, "host")["failure"]


@pytest.mark.parametrize("target", ["secret-result", "/etc/shadow"])
def test_a_result_linked_to_a_host_file_is_never_read(tmp_path: Path, target: str) -> None:
    """A link to a file of the host's: a valid result there (or /etc/shadow) stays unread."""
    if target == "secret-result":
        path = tmp_path / "secret.json"
        doc = {"cell_id": "x", "status": "ok", "scenario": "1A", "log_tail": SECRET}
        path.write_text(json.dumps(dict(doc, metrics={"bytes_queued": 1, "sends": 1})))
        target = str(path)
    run_dir, victim = guest(tmp_path, "link", REST + f"os.symlink({target!r}, victim)\n")
    check_run(tmp_path, run_dir, victim, "a symbolic link, not a regular file")
    assert not (run_dir / "cells" / f"{victim}.json").read_text().count("root:")
    no_secret_anywhere(tmp_path)


def test_json_nested_past_the_parser_stack_costs_one_cell(tmp_path: Path) -> None:
    """200,000 open brackets used to raise RecursionError out of the collector and lose
    the whole batch, the measured cells included."""
    body = "victim.write_text('[' * 200000 + ']' * 200000)\n" + REST
    run_dir, victim = guest(tmp_path, "nested", body)
    check_run(tmp_path, run_dir, victim, "malformed result JSON: nested too deeply to parse")


WRONG_SHAPE = """
doc = agent.new_result(cells[0], 1, time.time())
doc.update(status="ok", metrics=dict(bytes_queued=4096, sends=3))
{change}
agent.write_atomic(victim, doc)
"""


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ('doc["metrics"]["bytes_queued"] = "lots"', "metrics.bytes_queued is a string"),
        ('doc["metrics"]["sndbuf_after"] = [1]', "metrics.sndbuf_after is a list"),
        ('doc["sysctls"] = []', "sysctls is a list, not an object"),
        ('doc["error"] = {"name": "EPIPE"}', "error.iteration is missing"),
    ],
    ids=["metric-string", "metric-list", "sysctls-list", "error-without-iteration"],
)
def test_a_result_of_the_wrong_shape_is_infra_with_the_reason(
    tmp_path: Path, change: str, why: str
) -> None:
    body = WRONG_SHAPE.format(change=change) + REST
    run_dir, victim = guest(tmp_path, "shape", body)
    got = check_run(tmp_path, run_dir, victim, f"malformed result: {why}")
    assert got[victim]["key_figure"] == "no result"


NON_FINITE = """
doc = agent.new_result(cells[0], 1, time.time())
doc.update(status="ok", metrics=dict(bytes_queued={value}, sends=3))
agent.write_atomic(victim, doc)
"""


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("float('nan')", "NaN is not a number JSON allows"),
        ("float('inf')", "Infinity is not a number JSON allows"),
        ("10 ** 40", "metrics.bytes_queued is out of range"),
    ],
    ids=["nan", "inf", "huge"],
)
def test_non_finite_and_huge_numbers_keep_the_table_strict(
    tmp_path: Path, value: str, why: str
) -> None:
    """NaN used to reach results.jsonl as a bare NaN, which strict JSON readers reject."""
    run_dir, victim = guest(tmp_path, "nonfinite", NON_FINITE.format(value=value) + REST)
    check_run(tmp_path, run_dir, victim, why)


SWAP_LOG = """
agent.run_batch(cells[1:], out)
os.unlink("agent.log")
{make}
"""
SWAPS = {
    "fifo": 'os.mkfifo("agent.log")',
    "link": f"os.symlink({str(Path('/etc/shadow'))!r}, 'agent.log')",
    "huge": (
        "f = open('agent.log', 'wb'); f.truncate(40 << 20); f.seek(0, 2);"
        " f.write(b'guest says bye\\n'); f.close()"
    ),
}


@pytest.mark.parametrize("swap", list(SWAPS))
def test_a_console_log_swapped_by_the_guest(tmp_path: Path, swap: str) -> None:
    """The log the host tails and copies, replaced by a FIFO (a reader used to block in
    open() forever), a link (its target used to be copied into the run) or a 40 MiB
    file (copied whole, into memory first)."""
    run_dir, victim = guest(tmp_path, "swap", SWAP_LOG.format(make=SWAPS[swap]))
    check_run(tmp_path, run_dir, victim, "no result: agent exited (0) without results")
    batch = batch_of(run_dir, "host")
    copy = run_dir / "console" / "host.log"
    if swap == "huge":
        assert batch["console_tail"].endswith("guest says bye")
        assert batch["console_log"] == "console/host.log"
        assert 16 << 20 < copy.stat().st_size < (16 << 20) + 200
    else:
        assert batch["console_tail"] == "" and batch["console_log"] == ""
        assert not copy.exists()
    no_secret_anywhere(tmp_path)
