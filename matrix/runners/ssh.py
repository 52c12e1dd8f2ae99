"""The SSH side of the remote runner: connect safely, run short commands, ship files.

Host keys are verified against ~/.ssh/known_hosts and `settings.known_hosts`; an
unknown key is refused (paramiko's RejectPolicy), never accepted on first use, because
the batch runs as root over there. Authentication is the user's SSH agent and keys.
Every failure of the link itself becomes `HostLost`, so the scheduler can move the
batch; what the link says about the host (no python, no qemu) is a `PrerequisiteError`.

Everything root runs over there lives under REMOTE_ROOT in the SSH user's home, a
directory that only that user can write (checked with lstat before each batch, its
parents included), never at a predictable path in a world-writable /tmp or /var/tmp:
each batch gets a fresh `tempfile.mkdtemp` directory in `runs/`, kernels are kept in
`kernels/`. A batch runs under GUARD, which stops it when the SSH channel closes.
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
from matrix.plan.hosts import HostSpec

LINK_ERRORS = (paramiko.SSHException, OSError, EOFError, socket.timeout)
REMOTE_ROOT = "~/.cache/kmatrix-remote"
GUARD_GRACE_S = 15.0
"""How long a cut batch gets to stop by itself: the VM batch kills vng and QEMU."""
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""The `matrix` package, shipped whole: the runners it needs remotely are stdlib-only."""

PROBE = (
    "import json,os,shutil,sys;"
    "p=os.pathsep.join([os.environ.get('PATH',''),os.path.dirname(sys.executable),"
    "'/usr/sbin','/sbin','/usr/local/sbin']);"
    "print(json.dumps({'python':list(sys.version_info[:3]),'euid':os.geteuid(),"
    "'tools':{t:shutil.which(t,path=p) for t in sys.argv[1:]}}))"
)
_MARKED = (
    "import os,re,signal,sys,time\n"
    "def kill_marked(work,skip):\n"
    " m=re.compile(re.escape(work.encode())+rb'(?![^/\\s,\\'\"=:])')\n"
    " for p in os.listdir('/proc'):\n"
    "  if not p.isdigit() or int(p) in skip: continue\n"
    "  try:\n"
    "   if m.search(open('/proc/%s/cmdline'%p,'rb').read()): os.kill(int(p),signal.SIGKILL)\n"
    "  except OSError: pass\n"
)
KILL_MARKED = _MARKED + "kill_marked(sys.argv[1],{os.getpid(),os.getppid()})\n"
"""Kill every process whose command line names the batch's private directory: the
agent forks its puzzles without exec, so they carry the path too."""

GUARD = _MARKED + (
    "import json,select,shutil,subprocess\n"
    "spec=json.loads(bytes.fromhex(sys.argv[1]))\n"
    "work,cwd,argv=spec['work'],spec['cwd'],spec['argv']\n"
    "log=open(os.path.join(work,'run.log'),'ab')\n"
    "p=subprocess.Popen(argv,cwd=cwd,stdin=subprocess.DEVNULL,stdout=log,stderr=log,"
    "start_new_session=True)\n"
    "cut=False\n"
    "while p.poll() is None and not cut:\n"
    " cut=bool(select.select([0],[],[],1.0)[0]) and not os.read(0,65536)\n"
    "if not cut: sys.exit(p.returncode)\n"
    f"for sig,grace in ((signal.SIGTERM,{GUARD_GRACE_S}),(signal.SIGKILL,5.0)):\n"
    " try: os.killpg(p.pid,sig)\n"
    " except OSError: pass\n"
    " end=time.monotonic()+grace\n"
    " while p.poll() is None and time.monotonic()<end: time.sleep(0.1)\n"
    "kill_marked(work,{os.getpid(),os.getppid()})\n"
    "shutil.rmtree(work,ignore_errors=True)\n"
    "sys.exit(255)\n"
)
"""`python -c GUARD SPEC`: run SPEC's argv in its cwd (output to WORK/run.log) as the
leader of its own process group, and when stdin (the SSH channel) reaches EOF because
the connection dropped, SIGTERM the group (the VM batch then tears down vng and QEMU
itself), SIGKILL it after GUARD_GRACE_S, kill whatever still names WORK, and remove
WORK: kmatrix, which would have cleaned up, has lost the host. SPEC is
{"work", "cwd", "argv"} as hex-encoded JSON (`guard_spec`), so that the guard's own
command line does not name WORK: the batch's cleanup kills whatever does."""

PRIVATE_WORKDIR = """
import json,os,stat,sys,tempfile
uid=os.geteuid()
def why_not_private(path):
    st=os.lstat(path)
    mode=stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode): return 'it is a symlink'
    if not stat.S_ISDIR(st.st_mode): return 'it is not a directory'
    if st.st_uid!=uid: return 'it is owned by uid %d, not %d' % (st.st_uid,uid)
    if mode!=0o700: return 'it has mode %o, not 700' % mode
    return ''
def why_shared(path):
    p=os.path.realpath(path)
    while True:
        st=os.stat(p)
        if st.st_uid not in (0,uid) or st.st_mode&0o022 and not st.st_mode&stat.S_ISVTX:
            return 'another user can change %s' % p
        if p=='/': return ''
        p=os.path.dirname(p)
def private(path,parents=False):
    try:
        os.makedirs(path,mode=0o700,exist_ok=True)
        why=(parents and why_shared(os.path.dirname(path))) or why_not_private(path)
    except OSError as e:
        why=e.strerror
    if why: sys.exit('kmatrix: refusing %s: %s' % (path,why))
    return path
root=os.path.expanduser(sys.argv[1])
if not os.path.isabs(root): sys.exit('kmatrix: no home directory for %s' % sys.argv[1])
private(root,parents=True)
runs,kernels=private(os.path.join(root,'runs')),private(os.path.join(root,'kernels'))
print(json.dumps({'work':private(tempfile.mkdtemp(prefix=sys.argv[2],dir=runs)),'kernels':kernels}))
"""
"""`python -c PRIVATE_WORKDIR ROOT PREFIX`: make ROOT, ROOT/runs and ROOT/kernels
private to the SSH user (0700, owned by it, not symlinks, no parent that another user
can write), then a fresh batch directory in runs/; prints {"work", "kernels"}."""

SHA256 = (
    "import hashlib,sys\n"
    "try: print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())\n"
    "except OSError: print('')\n"
)


def guard_spec(work: str, cwd: str, argv: list[str]) -> str:
    """GUARD's one argument."""
    return json.dumps({"work": work, "cwd": cwd, "argv": argv}).encode().hex()


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
        f"tar --no-same-owner -xf - -C {shlex.quote(tmp)} && rm -rf {shlex.quote(dest)} && "
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
