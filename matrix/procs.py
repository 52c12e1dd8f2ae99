"""Process-group helpers for commands that must never outlive their run.

`vng` has no timeout of its own and QEMU does not exit when a guest is stuck (it even
sits forever after `KVM: emulation failure`). Killing `vng` alone leaves QEMU running,
so every such command starts in a session of its own and is torn down by process
group; anything that escaped the group is found by a marker (a path private to the
run) in its command line.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
GRACE_S = 3.0
"""How long a group gets between SIGTERM and SIGKILL: QEMU exits at once on SIGTERM,
vng needs a moment to remove its temporary files."""


def find_executable(name: str) -> str | None:
    """`name` on PATH or in the sbin directories that a non-root PATH often lacks."""
    found = shutil.which(name)
    if found:
        return found
    return next((str(Path(d) / name) for d in SBIN_DIRS if (Path(d) / name).is_file()), None)


@dataclass
class Session:
    """A command leading its own process group, its output pumped into a log file."""

    proc: subprocess.Popen
    pump: threading.Thread

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()


def start_session(argv: Sequence[str], log_path: Path, cwd: Path | None = None) -> Session:
    """Start `argv` as the leader of a new session; stdout and stderr go to `log_path`.

    Through a pipe and a thread, not by handing the file to the child: vng makes QEMU
    reopen /proc/self/fd/1 and /proc/self/fd/2, which for a regular file truncates it
    and writes from offset 0, so a log file given directly ends up overwritten.
    """
    log = open(log_path, "ab")  # noqa: SIM115 - the pump thread owns and closes it
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        start_new_session=True,
    )
    pump = threading.Thread(target=_pump, args=(proc.stdout, log), daemon=True)
    pump.start()
    return Session(proc, pump)


def _pump(stream: IO[bytes], log: IO[bytes]) -> None:
    """Copy the pipe to the log until every writer (vng, QEMU) has closed it."""
    fd = stream.fileno()
    with log:
        while chunk := os.read(fd, 65536):
            log.write(chunk)
            log.flush()
    stream.close()


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def _group_alive(pgid: int) -> bool:
    return _signal_group(pgid, 0)


def kill_group(session: Session, grace_s: float = GRACE_S) -> None:
    """SIGTERM the session's whole group, SIGKILL what is left after `grace_s`, reap it.

    The group id is the leader's pid (start_session made it a session leader), and it
    stays valid after the leader exits as long as any member lives, so QEMU is reached
    even when vng has already gone.
    """
    proc, pgid = session.proc, session.pid
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(pgid):
            break
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _wait_group_gone(pgid, grace_s)
    session.pump.join(timeout=grace_s)


def _wait_group_gone(pgid: int, timeout_s: float) -> None:
    """Members of the group are not our children, so we cannot wait(); poll instead."""
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        _signal_group(pgid, signal.SIGKILL)
        time.sleep(0.05)


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def find_by_marker(marker: str) -> list[int]:
    """Pids (other than ours) whose command line mentions `marker` as a whole path.

    The marker is a directory private to one batch (its workdir): QEMU's command line
    names it as a 9p export, vng's as --rwdir, so a match is ours. "Whole" matters:
    the workdir of kernel 6.1 is a prefix of the one of kernel 6.12.
    """
    me = os.getpid()
    pattern = re.compile(re.escape(marker) + r"(?![^/\s,'\"=:])")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        if pattern.search(_cmdline(int(entry.name))):
            found.append(int(entry.name))
    return found


def kill_leftovers(marker: str, timeout_s: float = GRACE_S) -> list[int]:
    """SIGKILL every process that still mentions `marker`; return the pids that were found.

    A process that escaped the group (a helper that called setsid) would otherwise run
    forever, holding memory and CPU that the next batch needs.
    """
    pids = find_by_marker(marker)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
    deadline = time.monotonic() + timeout_s
    while find_by_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def peak_rss_kb(pid: int) -> int | None:
    """VmHWM (peak resident set) of a live process in KiB, None when it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
