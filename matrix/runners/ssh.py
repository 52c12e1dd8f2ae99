"""The SSH side of the remote runner: connect safely, run short commands, ship files.

Host keys are verified against ~/.ssh/known_hosts and `settings.known_hosts`; an
unknown key is refused (paramiko's RejectPolicy), never accepted on first use, because
the batch runs as root over there. Authentication is the user's SSH agent and keys.
Every failure of the link itself becomes `HostLost`, so the scheduler can move the
batch; what the link says about the host (no python, no qemu) is a `PrerequisiteError`.
"""

from __future__ import annotations

import io
import json
import shlex
import socket
import tarfile
from pathlib import Path
from typing import Any

import paramiko
from fabric import Connection
from invoke.exceptions import CommandTimedOut

from matrix.errors import HostLost, PrerequisiteError
from matrix.hosts import HostSpec

LINK_ERRORS = (paramiko.SSHException, OSError, EOFError, socket.timeout)
REMOTE_BASE = "/var/tmp/kmatrix"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""The `matrix` package, shipped whole: the runners it needs remotely are stdlib-only."""

PROBE = (
    "import json,os,shutil,sys;"
    "p=os.pathsep.join([os.environ.get('PATH',''),os.path.dirname(sys.executable),"
    "'/usr/sbin','/sbin','/usr/local/sbin']);"
    "print(json.dumps({'python':list(sys.version_info[:3]),'euid':os.geteuid(),"
    "'tools':{t:shutil.which(t,path=p) for t in sys.argv[1:]}}))"
)
KILL_MARKED = (
    "import os,signal,sys\n"
    "m=sys.argv[1].encode();me={os.getpid(),os.getppid()}\n"
    "for p in os.listdir('/proc'):\n"
    " if not p.isdigit() or int(p) in me: continue\n"
    " try:\n"
    "  if m in open('/proc/%s/cmdline'%p,'rb').read(): os.kill(int(p),signal.SIGKILL)\n"
    " except OSError: pass\n"
)
"""Kill every process whose command line names the batch's private directory: the
agent forks its puzzles without exec, so they carry the path too."""


def connect(host: HostSpec, known_hosts: Path | None, timeout_s: float = 15.0) -> Connection:
    """An open connection whose host key was checked; errors say what to do."""
    kwargs: dict[str, Any] = {"banner_timeout": timeout_s, "auth_timeout": timeout_s}
    if host.identity:
        kwargs["key_filename"] = [str(host.identity)]
    c = Connection(
        host.host, user=host.user, port=host.port, connect_timeout=int(timeout_s),
        connect_kwargs=kwargs,
    )  # fmt: skip
    c.client.load_system_host_keys()
    if known_hosts:
        try:
            c.client.load_host_keys(str(known_hosts))
        except OSError as e:
            raise PrerequisiteError(f"settings.known_hosts {known_hosts}: {e.strerror}") from None
    c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        c.open()
    except paramiko.BadHostKeyException:
        raise PrerequisiteError(
            f"{host.name}: its host key does not match known_hosts (changed, or another "
            "machine answers); check the fingerprint, then fix known_hosts"
        ) from None
    except paramiko.AuthenticationException as e:
        raise PrerequisiteError(
            f"{host.name}: SSH authentication failed ({e}); load a key into ssh-agent or "
            "set identity (per [[host]] or in [settings])"
        ) from None
    except paramiko.SSHException as e:
        if "known_hosts" in str(e):
            raise PrerequisiteError(
                f"{host.name}: host key not in known_hosts, refusing to connect; check its "
                f"fingerprint, then add it (ssh-keyscan -p {host.port} {host.host} >> "
                "~/.ssh/known_hosts) or point settings.known_hosts at a file that has it"
            ) from None
        raise HostLost(f"{host.name}: SSH failed: {e}") from None
    except (OSError, EOFError) as e:
        raise HostLost(f"{host.name}: cannot connect: {e}") from None
    c.transport.set_keepalive(5)
    return c


def sh(c: Connection, cmd: str, timeout_s: float = 120.0) -> tuple[int, str]:
    """(exit status, output) of a short command; a dead link or a hang is HostLost."""
    try:
        r = c.run(cmd, hide=True, warn=True, timeout=timeout_s, in_stream=False)
    except CommandTimedOut:
        raise HostLost(f"{c.host}: `{cmd[:60]}` timed out after {timeout_s:g}s") from None
    except LINK_ERRORS as e:
        raise HostLost(f"{c.host}: connection lost: {e!r}") from None
    return r.exited, (r.stdout + r.stderr).strip()


def probe(c: Connection, python: str, tools: list[str]) -> dict[str, Any]:
    """Python version, euid and where each tool is, in one round trip."""
    code, out = sh(c, shlex.join([python, "-c", PROBE, *tools]), 60)
    if code != 0:
        raise PrerequisiteError(
            f"{c.host}: cannot run {python} ({out.splitlines()[-1] if out else code}); "
            "install python3 (apt package python3) or set the host's python"
        )
    return json.loads(out.splitlines()[-1])


def package_tar() -> bytes:
    """The matrix package and the collectors, as one small tar.gz."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for src, arc in _package_files():
            tar.add(src, arcname=arc, recursive=False)
    return buf.getvalue()


def _package_files() -> list[tuple[Path, str]]:
    """matrix/ with the collectors as matrix/collectors, the installed layout, which
    `agent_io.agent_path` finds; in a checkout they sit at ../collectors."""
    files = [(p, f"matrix/{p.relative_to(PACKAGE_ROOT)}") for p in PACKAGE_ROOT.rglob("*.py")]
    collectors = PACKAGE_ROOT.parent / "collectors"
    if (collectors / "agent.py").is_file():
        files += [(p, f"matrix/collectors/{p.name}") for p in collectors.glob("*.py")]
    return [(p, a) for p, a in files if "__pycache__" not in a]


def put_bytes(c: Connection, data: bytes, path: str) -> None:
    try:
        c.sftp().putfo(io.BytesIO(data), path)
    except LINK_ERRORS as e:
        raise HostLost(f"{c.host}: upload of {path} failed: {e!r}") from None


def stream_tree(c: Connection, items: list[tuple[Path, str]], dest: str, sudo: str) -> None:
    """Copy files/trees as one tar stream over SSH into `dest` (made complete or not at
    all: unpacked beside it, then renamed)."""
    tmp = f"{dest}.part"
    cmd = f"{sudo}sh -c " + shlex.quote(
        f"rm -rf {shlex.quote(tmp)} && mkdir -p {shlex.quote(tmp)} && "
        f"tar -xf - -C {shlex.quote(tmp)} && rm -rf {shlex.quote(dest)} && "
        f"mv {shlex.quote(tmp)} {shlex.quote(dest)}"
    )
    try:
        chan = c.client.get_transport().open_session()
        chan.exec_command(cmd)
        with chan.makefile("wb") as f, tarfile.open(fileobj=f, mode="w|") as tar:
            for src, arc in items:
                tar.add(str(src), arcname=arc)
        chan.shutdown_write()
        code = chan.recv_exit_status()
        err = b""
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        chan.close()
    except LINK_ERRORS as e:
        raise HostLost(f"{c.host}: copying to {dest} failed: {e!r}") from None
    if code != 0:
        raise PrerequisiteError(f"{c.host}: cannot unpack into {dest} ({code}): {err[-300:]!r}")
