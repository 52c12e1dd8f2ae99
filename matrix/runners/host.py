"""The `host` runner: the running kernel, each cell in a fresh network namespace.

No VM: the guest agent runs as a child process of kmatrix on this machine. The agent
unshares a namespace per cell before it writes any sysctl, so the machine's own
settings are never touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from matrix.errors import PrerequisiteError
from matrix.model import Batch, BatchOutcome
from matrix.runners import OnResult
from matrix.runners.agent_io import ResultWatcher, agent_path, batch_budget_s, prepare

_UNSHARE_PROBE = (
    "import ctypes,sys; libc=ctypes.CDLL(None, use_errno=True); "
    "sys.exit(0 if libc.unshare(0x40000000) == 0 else ctypes.get_errno())"
)


class HostRunner:
    """Runs a batch on the machine's own kernel."""

    name = "host"

    def __init__(self, python: str = sys.executable, poll_s: float = 0.3) -> None:
        self.python = python
        self.poll_s = poll_s

    def check(self) -> None:
        if os.geteuid() != 0:
            raise PrerequisiteError(
                "the host runner needs root (it creates network namespaces and writes "
                "sysctls inside them); run kmatrix as root, e.g. with sudo"
            )
        probe = subprocess.run([self.python, "-c", _UNSHARE_PROBE], capture_output=True)
        if probe.returncode != 0:
            raise PrerequisiteError(
                f"cannot create a network namespace (unshare(CLONE_NEWNET) failed with errno "
                f"{probe.returncode}); kmatrix needs CAP_SYS_ADMIN and a kernel with CONFIG_NET_NS"
            )

    def run_batch(
        self, batch: Batch, workdir: Path, stop: threading.Event, on_result: OnResult
    ) -> BatchOutcome:
        start = time.monotonic()
        cells, out = prepare(batch, workdir)
        log_path = workdir / "agent.log"
        watcher = ResultWatcher(out, on_result, {c.id for c in batch.cells})
        deadline = start + batch_budget_s(batch)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [self.python, str(agent_path()), "--cells", str(cells), "--out", str(out)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            failure = self._wait(proc, watcher, stop, deadline)
        watcher.poll()
        missing = len(batch.cells) - len(watcher.results)
        if not failure and missing:
            failure = f"agent exited ({proc.returncode}) without results for {missing} cells"
        return BatchOutcome(
            results=dict(watcher.results),
            runner=self.name,
            accelerator="none (host)",
            host=socket.gethostname(),
            console_log=log_path,
            console_tail=_tail(log_path) if failure else "",
            failure=failure,
            boot_s=0.0,
            wall_s=time.monotonic() - start,
        )

    def _wait(
        self,
        proc: subprocess.Popen[bytes],
        watcher: ResultWatcher,
        stop: threading.Event,
        deadline: float,
    ) -> str:
        """Hand on results until the agent exits; kill it on stop or at the deadline."""
        while proc.poll() is None:
            watcher.poll()
            if stop.is_set():
                kill_group(proc)
                return "interrupted"
            if time.monotonic() > deadline:
                kill_group(proc)
                return "batch deadline passed; the agent was killed"
            stop.wait(self.poll_s)
        return ""


def kill_group(proc: subprocess.Popen[bytes], grace_s: float = 3.0) -> None:
    """TERM then KILL the whole process group, so no collector outlives its batch."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
