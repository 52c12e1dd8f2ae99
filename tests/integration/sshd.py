"""Throwaway OpenSSH servers on loopback for the remote-runner tests.

Each server has its own host key and accepts one generated client key for root; the
test writes a known_hosts for them, so kmatrix's host-key checking runs for real.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"

CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_key
AuthorizedKeysFile {keys}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile {dir}/sshd.pid
Subsystem sftp internal-sftp
LogLevel ERROR
"""


@dataclass
class Sshd:
    port: int
    dir: Path
    proc: subprocess.Popen

    @property
    def address(self) -> str:
        return f"root@127.0.0.1:{self.port}"

    def known_hosts_line(self) -> str:
        kind, key = (self.dir / "host_key.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}\n"

    def tree(self) -> list[int]:
        """The server and every process below it (sessions, the commands they run)."""
        return [self.proc.pid, *descendants(self.proc.pid)]

    def kill(self) -> None:
        """Kill the server and its sessions at once, as a host that dies would."""
        for pid in self.tree():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        self.proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )


def start(tmp: Path, name: str, authorized: Path) -> Sshd:
    """A server on a free loopback port, ready to accept connections."""
    d = tmp / name
    d.mkdir()
    keygen(d / "host_key")
    port = free_port()
    (d / "sshd_config").write_text(CONFIG.format(port=port, dir=d, keys=authorized))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = (d / "sshd.log").open("wb")
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Sshd(port, d, proc)
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"sshd did not start: {(d / 'sshd.log').read_text()}")


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, found through /proc's parent links."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def marked(marker: str) -> list[int]:
    """Processes whose command line contains `marker` (a path private to one run)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if marker.encode() in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
            except OSError:
                continue
    return out
