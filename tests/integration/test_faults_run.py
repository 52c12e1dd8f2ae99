"""Faults around a whole run: two runs at once, kmatrix itself killed, a report being
rewritten under a reader, and a starting namespace whose sysctls change mid-batch.

`kmatrix run` is driven as a subprocess through a small harness that can freeze the
clock (two runs in the same second), hold the run without running it, or swap in a
test agent; everything else is the real command. The namespace tests run the agent in
a throwaway network namespace made by `unshare --net`: nothing here writes a sysctl of
the machine's own namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from io import StringIO
from pathlib import Path

import pytest
from markupsafe import escape
from rich.console import Console

from matrix.report.render import render_report
from matrix.results import table as results
from matrix.run import factory, procs
from matrix.run.progress import Display
from matrix.runners.host import HostRunner
from tests.fixtures.kernels import fetch_61
from tests.fixtures.sshd import descendants
from tests.integration.test_faults import (
    HOST,
    agent_script,
    batch_of,
    kmatrix,
    needs_vng,
    path_kernel,
    rows_of,
    run_in_process,
    write_config,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces and the guest agent"),
]

HARNESS = """
import os, sys, time
from datetime import datetime
from pathlib import Path
from matrix.cli import main as cli
from matrix.run import job
from matrix.run import rundir
from matrix.runners import agent_io

if os.environ.get("FROZEN_NOW"):
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.fromisoformat(os.environ["FROZEN_NOW"])
    rundir.datetime = Frozen
if os.environ.get("HOLD_S"):
    def hold(*args, **kwargs):
        time.sleep(float(os.environ["HOLD_S"]))
        return False
    job.execute = hold
if os.environ.get("AGENT"):
    agent_io.agent_path = lambda: Path(os.environ["AGENT"])
sys.exit(cli.main(sys.argv[1:]))
"""
"""`kmatrix` with FROZEN_NOW (every run id drawn in that second), HOLD_S (the run holds
its directory this long instead of running) or AGENT (the host runner's agent)."""


def harness(cfg: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if k != "KMATRIX_MIRROR"} | env
    return subprocess.Popen(
        [sys.executable, "-c", HARNESS, "--config", str(cfg), *args],
        cwd=cfg.parent,
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(predicate: Callable[[], bool], timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc.poll() is None, f"kmatrix ended early: {proc.stderr and proc.stderr.read()}"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def gone_within(marker: Path, timeout_s: float) -> list[str]:
    """Command lines still naming `marker` after `timeout_s` (empty: all gone)."""
    deadline = time.monotonic() + timeout_s
    while procs.find_by_marker(str(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [procs._cmdline(p) for p in procs.find_by_marker(str(marker))]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


# --- run ids and the run directory's lock ------------------------------------------------


def test_two_runs_in_the_same_second_get_directories_of_their_own(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, HOST, extra=f'runs_dir = "{tmp_path}/runs"')
    now = {"FROZEN_NOW": "2030-01-02T03:04:05+00:00", "HOLD_S": "2"}
    runs = [harness(cfg, "run", "--no-report", **now) for _ in range(2)]
    for proc in runs:
        _, err = proc.communicate(timeout=120)
        assert "in use" not in err, err
    dirs = sorted((tmp_path / "runs").iterdir())
    assert len(dirs) == 2, dirs
    ids = {json.loads((d / "manifest.json").read_text())["run_id"] for d in dirs}
    assert ids == {d.name for d in dirs}
    assert all(d.name.startswith("20300102-030405-") for d in dirs)


def test_a_run_directory_in_use_is_refused_until_its_run_dies(tmp_path: Path) -> None:
    """A second `run --out` and a `run --resume` on a directory that a live run holds:
    exit 2, naming the directory and the holder's pid, nothing of it rewritten. Once the
    holder is killed (-9: no cleanup of its own) the directory can be resumed."""
    cfg = write_config(tmp_path, HOST)
    run_dir = (tmp_path / "run").resolve()
    holder = harness(cfg, "run", "--out", str(run_dir), "--no-report", HOLD_S="60")
    try:
        wait_until(lambda: (run_dir / "manifest.json").exists(), 60, holder)
        manifest = (run_dir / "manifest.json").read_bytes()
        refused = f"{run_dir}: in use by another kmatrix run (pid {holder.pid})"
        for args in (("--out", str(run_dir)), ("--resume", str(run_dir))):
            second = kmatrix(cfg, "run", *args, "--no-report")
            assert second.returncode == 2, second.stderr
            assert refused in second.stderr
        assert (run_dir / "manifest.json").read_bytes() == manifest
    finally:
        holder.send_signal(signal.SIGKILL)
        stop(holder)
    resumed = kmatrix(cfg, "run", "--resume", str(run_dir), "--no-report")
    assert "in use" not in resumed.stderr and resumed.returncode == 0, resumed.stderr[-2000:]
    assert "2 cells left" in resumed.stderr


# --- reports ----------------------------------------------------------------------------


def test_report_pages_are_replaced_never_rewritten_in_place(tmp_path: Path) -> None:
    """Every page of a re-rendered report is a new file renamed into place: a reader of
    the old page (a browser, a web server) still reads all of it, and no temporary file
    is left behind."""
    run_dir = run_in_process(write_config(tmp_path, HOST), HostRunner())
    out = tmp_path / "reports" / "run"
    factory.render(run_dir, out)
    pages = sorted(out.parent.rglob("*.html"))
    assert len(pages) == 5, pages  # runs index, matrix, diff, two cells
    inodes = {p: p.stat().st_ino for p in pages}
    with open(out / "index.html", encoding="utf-8") as reader:
        factory.render(run_dir, out)
        old = reader.read()
    assert old.rstrip().endswith("</html>")
    assert [p for p in pages if p.stat().st_ino == inodes[p]] == []
    assert sorted(out.parent.rglob("*.html")) == pages
    assert [p for p in out.parent.rglob("*") if p.name.startswith(".")] == []


# --- kmatrix killed ---------------------------------------------------------------------

SLEEPER_AGENT = """
import subprocess
out = sys.argv[sys.argv.index("--out") + 1]
# a child that leaves the agent's session and names the batch's directory
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", out],
                 start_new_session=True)
print("KMATRIX-AGENT-START sleeper", flush=True)
time.sleep(3600)
"""


def guardians_of(pid: int) -> list[int]:
    return [p for p in descendants(pid) if "matrix.run.procs import guard" in procs._cmdline(p)]


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_kill_9_of_kmatrix_ends_its_agents(tmp_path: Path) -> None:
    """The host runner's agent and a child that escaped its session both end within
    seconds of kmatrix's death by SIGKILL; the guardian that ended them, deaf to a
    Ctrl-C meant for kmatrix, exits too."""
    cfg = write_config(tmp_path, HOST)
    run_dir = (tmp_path / "run").resolve()
    agent = agent_script(tmp_path, "sleeper", SLEEPER_AGENT)
    proc = harness(cfg, "run", "--out", str(run_dir), "--no-report", AGENT=str(agent))
    try:
        wait_until(
            lambda: len(procs.find_by_marker(str(run_dir))) >= 2 and guardians_of(proc.pid),
            60,
            proc,
        )
        (guardian,) = guardians_of(proc.pid)
        os.kill(guardian, signal.SIGINT)
        time.sleep(0.5)
        assert alive(guardian)
        proc.send_signal(signal.SIGKILL)
        stop(proc)
        left = gone_within(run_dir, 10)
        deadline = time.monotonic() + 10
        while alive(guardian) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(guardian), "the guardian outlived its cleanup"
    finally:
        procs.kill_leftovers(str(run_dir))
        stop(proc)
    assert left == [], f"left behind: {left}"


@pytest.fixture
def kernel61() -> tuple[Path, Path]:
    """The bookworm 6.1 (vmlinuz, modules) as a path kernel; fetched if not cached."""
    return fetch_61()


def _qemu_running(run_dir: Path) -> bool:
    return any("qemu-system" in procs._cmdline(p) for p in procs.find_by_marker(str(run_dir)))


@needs_vng
@pytest.mark.vm
def test_kill_9_of_kmatrix_mid_vm_batch_leaves_no_qemu(
    tmp_path: Path, kernel61: tuple[Path, Path]
) -> None:
    """QEMU is vng's child, in a session kmatrix made: only the guardian can end it
    once kmatrix is gone. Nothing naming the run directory may outlive kmatrix by 10 s."""
    cfg = write_config(tmp_path, path_kernel("k61", *kernel61))
    run_dir = (tmp_path / "run").resolve()
    cmd = [sys.executable, "-m", "matrix", "--config", str(cfg), "run", "--out", str(run_dir)]
    proc = subprocess.Popen(
        [*cmd, "--no-report", "--accel", "tcg"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: _qemu_running(run_dir), 120, proc)
        proc.send_signal(signal.SIGKILL)
        stop(proc)
        left = gone_within(run_dir, 10)
    finally:
        procs.kill_leftovers(str(run_dir))
        stop(proc)
    assert left == [], f"left behind: {left}"


# --- the starting namespace -------------------------------------------------------------

KEY = "net.ipv4.tcp_tw_reuse"
LEAK_SWEEP = f"""
[sweep]
scenarios = ["2A", "2B"]
window_s = 1
iteration_cap = 200
stall_s = 1
[sweep.sysctls]
"{KEY}" = [1]
"""
LEAK_AGENT = """
from pathlib import Path
import agent

KEY, LEAK, FINAL, TESTS_NETNS = {key!r}, {leak!r}, {final!r}, {netns!r}
if agent.netns_inode() in (TESTS_NETNS, os.stat("/proc/%d/ns/net" % os.getppid()).st_ino):
    sys.exit("refusing: not in a throwaway network namespace")
agent.write_sysctl(KEY, "0")  # the throwaway namespace's value before the batch
real_execute = agent.execute


def execute(cell, *args):
    status = real_execute(cell, *args)
    agent.write_sysctl(KEY, LEAK)  # as if the cell had reached its parent namespace
    return status


agent.execute = execute
code = agent.main()
Path(FINAL).write_text(agent.read_sysctl(KEY))
sys.exit(code)
"""


def throwaway_netns_python(tmp: Path) -> Path:
    """An interpreter for the host runner that starts in a network namespace of its own."""
    wrapper = tmp / "netns-python"
    wrapper.write_text(f'#!/bin/sh\nexec unshare --net -- {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def host_value() -> str:
    return Path("/proc/sys/" + KEY.replace(".", "/")).read_text()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
@pytest.mark.parametrize(
    ("leak", "from_cell", "final", "action"),
    [
        ("1", True, "0", "a cell's value; put back to '0'"),
        ("2", False, "2", "not a value any cell of this batch wrote; left alone"),
    ],
    ids=["a-cells-value-is-put-back", "a-foreign-value-is-left-alone"],
)
def test_a_changed_starting_namespace_is_an_error(
    tmp_path: Path, leak: str, from_cell: bool, final: str, action: str
) -> None:
    """After the first cell the agent's own namespace (a throwaway one) shows a changed
    sysctl: the agent stops, only a value that a cell asked for is put back, and the
    change is an error in agent.json, the batch outcome, the live display and the report."""
    before = host_value()
    cfg = write_config(tmp_path, HOST, sweep=LEAK_SWEEP)
    final_file = tmp_path / "final"
    agent = agent_script(
        tmp_path,
        "leak",
        LEAK_AGENT.format(
            key=KEY, leak=leak, final=str(final_file), netns=os.stat("/proc/self/ns/net").st_ino
        ),
    )
    live = StringIO()
    runner = HostRunner(python=str(throwaway_netns_python(tmp_path)), agent=agent)
    run_dir = run_in_process(cfg, runner, Display(Console(file=live, width=400)))
    assert host_value() == before
    summary = json.loads((run_dir / "work" / "host" / "out" / "agent.json").read_text())
    (first,) = [p.stem for p in (run_dir / "cells").glob("*.json") if "." not in p.stem]
    expected = {"cell_id": first, "key": KEY, "before": "0", "after": leak}
    expected |= {"from_cell": from_cell, "restored": from_cell, "action": action}
    assert summary["host_sysctl_changed"] == [expected]
    assert final_file.read_text() == final
    error = summary["host_sysctl_error"]
    assert (
        error.startswith("sysctls of the starting network namespace changed: ") and action in error
    )
    batch = batch_of(run_dir, "host")
    assert batch["host_sysctl_changed"] == [expected] and batch["failure"] == error
    rows = {r["cell_id"]: r for r in rows_of(cfg, run_dir)}
    assert [r["reason"] for c, r in rows.items() if c != first] == [f"no result: {error}"]
    shown = f"host: error: sysctl {KEY} of the starting network namespace changed from 0 to {leak}"
    assert live.getvalue().count(f"{shown} after cell {first}: {action}") == 1
    page = render_report(results.load_run(run_dir), tmp_path / "report").read_text()
    assert "The starting network namespace changed" in page and str(escape(action)) in page
