"""The `host` runner: the running kernel, each cell in a fresh network namespace.

No VM: the guest agent runs as a child process of kmatrix on this machine. The agent
unshares a namespace per cell before it writes any sysctl, so the machine's own
settings are never touched.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from matrix.collect import sanitize
from matrix.errors import PrerequisiteError
from matrix.model import Batch, BatchOutcome
from matrix.run import procs
from matrix.runners import OnResult
from matrix.runners.agent_io import (
    HEARTBEAT_LINE,
    ResultCollector,
    agent_argv,
    batch_budget_s,
    prepare,
)

_UNSHARE_PROBE = (
    "import ctypes,sys; libc=ctypes.CDLL(None, use_errno=True); "
    "sys.exit(0 if libc.unshare(0x40000000) == 0 else ctypes.get_errno())"
)


class HostRunner:
    """Runs a batch on the machine's own kernel."""

    name = "host"

    def __init__(
        self, python: str = sys.executable, poll_s: float = 0.1, agent: Path | None = None
    ) -> None:
        self.python = python
        self.poll_s = poll_s
        self.agent = agent
        """The agent script to run; None is the real one (see `agent_io.agent_argv`)."""

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
        _, out = prepare(batch, workdir)
        log_path = workdir / "agent.log"
        collector = ResultCollector(out, [c.id for c in batch.cells], on_result)
        deadline = start + batch_budget_s(batch)
        argv = agent_argv(workdir, self.python, self.agent, net_only=True)
        session = procs.start_session(argv, log_path, cwd=workdir)
        try:
            failure = self._wait(session, collector, stop, deadline)
        finally:
            procs.kill_group(session)
        collector.poll(final=True)
        missing = len(collector.missing()) + len(collector.malformed)
        if not failure and missing:
            failure = f"agent exited ({session.poll()}) without results for {missing} cells"
        host_changes, host_error = collector.host_sysctl()
        failure = host_error or failure
        return BatchOutcome(
            results=dict(collector.results),
            runner=self.name,
            accelerator="none (host)",
            host=socket.gethostname(),
            console_log=log_path,
            console_tail=sanitize.tail(log_path, skip=HEARTBEAT_LINE) if failure else "",
            failure=failure,
            boot_s=0.0,
            wall_s=time.monotonic() - start,
            host_sysctl_changed=host_changes,
        )

    def _wait(
        self,
        session: procs.Session,
        collector: ResultCollector,
        stop: threading.Event,
        deadline: float,
    ) -> str:
        """Hand on results until the agent exits; the caller kills it on stop or deadline."""
        while session.poll() is None:
            collector.poll()
            if stop.is_set():
                return "interrupted"
            if time.monotonic() > deadline:
                return "batch deadline passed; the agent was killed"
            stop.wait(self.poll_s)
        return ""
