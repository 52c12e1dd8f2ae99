"""Process-group helpers for commands that must never outlive their run.

`vng` has no timeout of its own and QEMU does not exit when a guest is stuck (it even
sits forever after `KVM: emulation failure`). Killing `vng` alone leaves QEMU running,
so every such command starts in a session of its own and is torn down by process
group; anything that escaped the group is found by a marker (a path private to the
run) in its command line.

That teardown runs in kmatrix, so it does not happen when kmatrix itself is killed
(kill -9, the OOM killer, a CI job's timeout). For that a run has a guardian: a small
process (this module, `guard()`) started once per run in a session of its own, so a
Ctrl-C or a signal to kmatrix's process group does not reach it, and it ignores SIGINT,
SIGHUP and SIGTERM besides. Its stdin is a pipe whose write end only kmatrix holds
(close-on-exec, so no VM or agent inherits it). Over that pipe kmatrix names every
process group it starts and forgets it once torn down, and names the run's markers.
When the pipe reaches EOF, because kmatrix exited or died however it died, the guardian
SIGKILLs the groups still named and every process whose command line names a marker,
waits a few seconds for them to go, and exits. PR_SET_PDEATHSIG is not used: it fires
when the *thread* that started a child exits (batches start from pool threads), and it
would reach only vng, not QEMU, its grandchild.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from matrix.errors import PrerequisiteError

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


def start_session(
    argv: Sequence[str],
    log_path: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Session:
    """Start `argv` as the leader of a new session; stdout and stderr go to `log_path`.

    `env` replaces the environment when given (vng needs its own bin dir on PATH).

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
        env=env,
        start_new_session=True,
    )
    _tell_guardian("group", proc.pid)
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
    _tell_guardian("forget", pgid)
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


GUARD_SWEEP_S = 5.0
"""How long the guardian keeps killing after kmatrix has gone before it gives up."""
_GUARDIAN_MAIN = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from matrix.run.procs import guard; sys.exit(guard(sys.stdin.buffer))"
)


class Guardian:
    """kmatrix's end of the guardian's pipe (see the module docstring)."""

    def __init__(self, proc: subprocess.Popen, fd: int) -> None:
        self.proc, self.fd = proc, fd
        self.lock = threading.Lock()

    @classmethod
    def start(cls) -> Guardian:
        read_end, write_end = os.pipe()
        package_parent = str(Path(__file__).resolve().parents[2])
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _GUARDIAN_MAIN, package_parent],
                stdin=read_end,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd="/",
                start_new_session=True,
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        guardian = cls(proc, write_end)
        guardian.wait_ready()
        return guardian

    def wait_ready(self) -> None:
        """Until the guardian ignores signals: before that a stray SIGINT would kill it."""
        assert self.proc.stdout is not None
        with self.proc.stdout:
            ready = self.proc.stdout.readline()
        if ready.strip() != b"ready":
            self.close()
            raise PrerequisiteError(
                f"the process guardian did not start ({sys.executable} -I -c ...: exit "
                f"{self.proc.returncode}); is the matrix package importable by that python?"
            )

    def tell(self, verb: str, arg: object) -> None:
        """One line per message; a guardian that has gone is not an error for the run."""
        with self.lock:
            if self.fd < 0:
                return
            with suppress(OSError):
                os.write(self.fd, f"{verb} {arg}\n".encode())

    def close(self, timeout_s: float = GUARD_SWEEP_S + 5.0) -> None:
        """A clean end: every group was torn down here, so the guardian only kills what
        still names a marker (nothing should) and exits; reap it."""
        self.tell("done", "")
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_guardian: Guardian | None = None


def _tell_guardian(verb: str, arg: object) -> None:
    if _guardian is not None:
        _guardian.tell(verb, arg)


@contextmanager
def guarded(*markers: Path | str) -> Iterator[Guardian]:
    """Within this block every session started is killed by the guardian if kmatrix dies,
    and so is every process whose command line names one of `markers`."""
    global _guardian
    guardian = Guardian.start()
    for marker in markers:
        guardian.tell("marker", marker)
    previous, _guardian = _guardian, guardian
    try:
        yield guardian
    finally:
        _guardian = previous
        guardian.close()


def guard(stream: IO[bytes]) -> int:
    """The guardian's whole life: collect groups and markers until EOF, then kill them.

    "done" is kmatrix's clean goodbye: its groups are gone already, and a group id
    killed long after its group ended could by then name someone else's processes."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    groups: set[int] = set()
    markers: set[str] = set()
    for raw in stream:
        verb, _, arg = raw.decode(errors="replace").rstrip("\n").partition(" ")
        if verb == "group" and arg.isdigit():
            groups.add(int(arg))
        elif verb == "forget" and arg.isdigit():
            groups.discard(int(arg))
        elif verb == "marker" and arg.startswith("/"):
            markers.add(arg)
        elif verb == "done":
            groups.clear()
            break
    sweep(groups, markers, GUARD_SWEEP_S)
    return 0


def sweep(groups: set[int], markers: set[str], timeout_s: float) -> None:
    """SIGKILL the groups and the marked processes until none is left or time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        live = {g for g in groups if _signal_group(g, signal.SIGKILL)}
        pids = {p for m in markers for p in find_by_marker(m)}
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
        if not pids and not live or time.monotonic() > deadline:
            return
        time.sleep(0.1)
