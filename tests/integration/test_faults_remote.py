"""Fault injection on SSH hosts and on how kmatrix was installed.

Against real sshd servers on loopback (tests/fixtures/sshd.py, whose sessions have a
home of their own and a login PATH without any virtualenv): another user's
/var/tmp/kmatrix and a remote cache directory that is not private are not used, a
kernel copy that does not match is replaced, and a batch whose connection is cut does
not keep running over there. Then kmatrix from a fresh virtualenv, run by its path with
only /usr/bin:/bin on PATH, runs host cells and boots a VM with the venv's virtme-ng.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from matrix.model import KernelSpec, PathSource, ResolvedKernel
from matrix.plan.hosts import HostSpec
from matrix.runners.ssh import connect
from tests.fixtures import sshd
from tests.fixtures.kernels import fetch_61

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and sshd"),
    pytest.mark.skipif(not Path(sshd.SSHD).is_file(), reason="needs openssh-server"),
]
REPO = Path(__file__).resolve().parents[2]
VAR_TMP = Path("/var/tmp/kmatrix")
NOBODY = 65534
PLAIN_PATH = "/usr/bin:/bin"
VIRTME_TOOLS = ("vng", "virtme-run", "virtme-ng", "virtme-ng-init")
SYSTEM_BINS = ("/usr/local/bin", "/usr/local/sbin", "/usr/bin", "/usr/sbin", "/bin", "/sbin")
CONFIG = """
[settings]
known_hosts = "known_hosts"
identity = "client_key"
[sweep]
scenarios = ["{scenario}"]
window_s = {window}
iteration_cap = 10000000
stall_s = 5
[sweep.sysctls]
"net.ipv4.tcp_tw_reuse" = [0, 1]
[sweep.fixed]
"net.ipv4.ip_local_port_range" = "40000 40999"
[[kernel]]
name = "host"
source = "host"
"""

Server = Callable[[str], sshd.Sshd]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Server]]:
    """A directory with a client key, a known_hosts and a server factory."""
    tmp = tmp_path_factory.mktemp("faults-remote")
    sshd.keygen(tmp / "client_key")
    (tmp / "known_hosts").write_text("")
    servers: list[sshd.Sshd] = []

    def server(name: str) -> sshd.Sshd:
        s = sshd.start(tmp, name, tmp / "client_key.pub")
        servers.append(s)
        with (tmp / "known_hosts").open("a") as f:
            f.write(s.known_hosts_line())
        return s

    yield tmp, server
    for s in servers:
        if s.proc.poll() is None:
            s.kill()


def config(tmp: Path, name: str, scenario: str = "1A", window: float = 3) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(CONFIG.format(scenario=scenario, window=window))
    return path


def kmatrix(tmp: Path, cfg: Path, *args: str, wait: bool = True) -> subprocess.Popen | Any:
    """`kmatrix --config cfg ARGS` from this checkout, HOME in the test's directory."""
    cmd = [sys.executable, "-m", "matrix", "--config", str(cfg), *args]
    env = dict(os.environ, HOME=str(tmp), PYTHONPATH=str(REPO))
    if not wait:
        log = (tmp / f"kmatrix-{time.monotonic_ns()}.log").open("w")
        return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


def results(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def bait_dir() -> Path:
    """A directory that user `nobody` owns and anyone may write: where an attacker
    would like root's files to land."""
    d = Path(tempfile.mkdtemp(prefix="kmatrix-bait-"))
    os.chown(d, NOBODY, NOBODY)
    d.chmod(0o777)
    return d


@contextlib.contextmanager
def foreign_var_tmp(run_id: str) -> Iterator[Path]:
    """/var/tmp/kmatrix made by `nobody`, writable by all, with the run's directory a
    symlink into a bait directory; whatever was there is put back afterwards."""
    aside = VAR_TMP.with_name(f"kmatrix.aside-{os.getpid()}")
    had = VAR_TMP.exists() or VAR_TMP.is_symlink()
    if had:
        VAR_TMP.rename(aside)
    bait = bait_dir()
    try:
        VAR_TMP.mkdir()
        VAR_TMP.chmod(0o777)
        (VAR_TMP / run_id).symlink_to(bait)
        (VAR_TMP / "kernels").symlink_to(bait)
        for link in (VAR_TMP / run_id, VAR_TMP / "kernels"):
            os.lchown(link, NOBODY, NOBODY)
        os.chown(VAR_TMP, NOBODY, NOBODY)
        yield bait
    finally:
        shutil.rmtree(VAR_TMP, ignore_errors=True)
        shutil.rmtree(bait, ignore_errors=True)
        if had:
            aside.rename(VAR_TMP)


def entries(*dirs: Path) -> set[str]:
    """Every path below `dirs`, symlinks not followed."""
    out = set()
    for d in dirs:
        for root, names, files in os.walk(d):
            out |= {os.path.join(root, n) for n in names + files}
    return out


def test_another_users_var_tmp_kmatrix_is_not_used(lab) -> None:
    """Watched while the batch runs, since a run that used it might tidy up after."""
    tmp, server = lab
    s = server("vartmp")
    run = tmp / f"vartmp-{os.getpid()}"
    cfg = config(tmp, "vartmp")
    with foreign_var_tmp(run.name) as bait:
        before = entries(VAR_TMP, bait)
        args = ("run", "--hosts", s.address, "--jobs", "0", "--out", str(run), "--no-report")
        proc = kmatrix(tmp, cfg, *args, wait=False)
        seen: set[str] = set()
        while proc.poll() is None:
            seen |= entries(VAR_TMP, bait) - before
            time.sleep(0.05)
        assert proc.wait(timeout=120) == 0
        assert not seen, f"kmatrix wrote into another user's directory: {sorted(seen)[:4]}"
        assert entries(VAR_TMP, bait) == before
    assert {r["host"] for r in results(run)} == {s.address}
    assert all(r["verdict"] != "infra" for r in results(run))


def test_a_remote_cache_that_is_not_private_is_refused(lab) -> None:
    """~/.cache/kmatrix-remote on the host is a symlink into a directory that another
    user owns: the batch fails naming it, and nothing is written there."""
    tmp, server = lab
    s = server("shared")
    bait = bait_dir()
    try:
        (s.home / ".cache").mkdir()
        (s.home / ".cache" / "kmatrix-remote").symlink_to(bait)
        run = tmp / "shared"
        proc = kmatrix(
            tmp,
            config(tmp, "shared"),
            "run",
            "--hosts",
            s.address,
            "--jobs",
            "0",
            "--out",
            str(run),
            "--no-report",
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        reasons = {r["reason"] for r in results(run)}
        assert all("kmatrix-remote: it is a symlink" in r for r in reasons), reasons
        assert list(bait.iterdir()) == []
    finally:
        shutil.rmtree(bait, ignore_errors=True)


def fake_kernel(tmp: Path) -> ResolvedKernel:
    """A kernel image and a modules tree that are only bytes: enough to copy."""
    root = tmp / "fake-kernel"
    release = "9.9.9-kmatrix"
    (root / "boot").mkdir(parents=True)
    image = root / "boot" / f"vmlinuz-{release}"
    image.write_bytes(b"HdrS" + os.urandom(4096))
    mods = root / "lib" / "modules" / release
    mods.mkdir(parents=True)
    (mods / "modules.dep").write_text("kernel/fs/9p/9p.ko:\n")
    spec = KernelSpec("fake", PathSource(image, mods))
    return ResolvedKernel(spec, release, image, mods, sha256="")


def test_a_kernel_copy_is_reused_only_when_its_sha256_matches(lab) -> None:
    """An intact copy is not sent again; one whose bytes changed (size and mtime kept)
    is replaced by ours before anything boots it."""
    from matrix.runners.remote import place_kernel

    tmp, server = lab
    s = server("kernels")
    kernel = fake_kernel(tmp)
    ours = Path(str(kernel.vmlinuz))
    cache = s.home / "kernels"
    cache.mkdir(mode=0o700)
    host = HostSpec("127.0.0.1", "root", s.port, identity=tmp / "client_key")
    c = connect(host, tmp / "known_hosts")
    try:
        first = place_kernel(c, kernel, str(cache), "", sys.executable)
        copy = Path(str(first.vmlinuz))
        assert copy.read_bytes() == ours.read_bytes()
        assert Path(str(first.modules_dir), "modules.dep").is_file()
        inode = copy.stat().st_ino
        assert place_kernel(c, kernel, str(cache), "", sys.executable) == first
        assert copy.stat().st_ino == inode, "an intact copy was sent again"
        copy.write_bytes(b"HdrS" + b"\0" * 4096)
        os.utime(copy, ns=(ours.stat().st_atime_ns, ours.stat().st_mtime_ns))
        again = place_kernel(c, kernel, str(cache), "", sys.executable)
    finally:
        c.close()
    assert again == first
    assert copy.read_bytes() == ours.read_bytes()


def remote_side(run: Path) -> list[int]:
    """The run's agent and puzzles (and whatever wraps them) on the "remote" side: their
    command lines name the agent in the run's batch directory there."""
    name = f"/{run.name}".encode()
    out = []
    for pid in sshd.marked("collectors/agent.py"):
        with contextlib.suppress(OSError):
            if name in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
    return out


def wait_for(what: Callable[[], list[int]], present: bool, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = what()
        if bool(found) == present:
            return found
        time.sleep(0.2)
    return what()


def test_a_cut_connection_stops_the_remote_batch(lab) -> None:
    """Cells of 30 s; the sshd session of the batch's connection is killed while one
    runs: the agent and its puzzle must be gone on the host within seconds."""
    tmp, server = lab
    s = server("cut")
    run = tmp / f"cut-{os.getpid()}"
    proc = kmatrix(
        tmp,
        config(tmp, "cut", scenario="2A", window=30),
        "run",
        "--hosts",
        s.address,
        "--jobs",
        "0",
        "--out",
        str(run),
        "--no-report",
        wait=False,
    )
    try:
        assert wait_for(lambda: remote_side(run), present=True, timeout_s=60), "no agent started"
        time.sleep(1)
        for pid in s.sessions():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        left = wait_for(lambda: remote_side(run), present=False, timeout_s=8)
        assert not left, f"still running on the host after the cut: {left}"
        assert not list(s.runs.glob(f"{run.name}-*")), "the batch directory was left behind"
        assert proc.wait(timeout=120) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in remote_side(run):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    reasons = {r["reason"] for r in results(run) if r["verdict"] == "infra"}
    assert reasons and all(f"host {s.address} dropped" in r for r in reasons), reasons


def fresh_venv() -> Path:
    """A virtualenv with this checkout installed editable, as a user would make it;
    made once under /tmp (under a lock, so parallel sessions share it) and reused while
    pyproject.toml is unchanged."""
    key = hashlib.sha256(str(REPO).encode() + (REPO / "pyproject.toml").read_bytes())
    venv = Path(tempfile.gettempdir()) / f"kmatrix-test-venv-{key.hexdigest()[:12]}"
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / "ready").is_file():
            shutil.rmtree(venv, ignore_errors=True)
            make = (
                f"{sys.executable} -m venv {venv} && "
                f"{venv}/bin/pip install --quiet --editable {shlex.quote(str(REPO))}"
            )
            proc = subprocess.run(["sh", "-c", make], capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            (venv / "ready").write_text("")
    return venv


@pytest.fixture(scope="session")
def venv() -> Path:
    return fresh_venv()


def hide_system_virtme(cmd: list[str]) -> list[str]:
    """`cmd` in a mount namespace where a system-wide virtme-ng, if any, is covered by
    /dev/null: only the venv's may be found, as on a machine without one."""
    found = [p for d in SYSTEM_BINS for t in VIRTME_TOOLS if (p := Path(d, t)).exists()]
    if not found:
        return cmd
    binds = "".join(f"mount --bind /dev/null {shlex.quote(str(p))} && " for p in found)
    shell = ["sh", "-c", binds + 'exec "$@"', "sh"]
    return ["/usr/bin/unshare", "--mount", "--propagation", "private", *shell, *cmd]


def run_by_path(venv: Path, tmp: Path, cfg: Path, *args: str) -> subprocess.CompletedProcess:
    """`<venv>/bin/kmatrix` by its path, the venv not activated, PATH=/usr/bin:/bin."""
    cmd = [str(venv / "bin" / "kmatrix"), "--config", str(cfg), *args]
    env = {"PATH": PLAIN_PATH, "HOME": str(tmp), "LANG": "C.UTF-8"}
    return subprocess.run(
        hide_system_virtme(cmd), cwd=tmp, env=env, capture_output=True, text=True, timeout=600
    )


def test_a_venv_kmatrix_run_by_path_runs_host_cells(venv, tmp_path: Path) -> None:
    cfg = config(tmp_path, "host")
    run = tmp_path / "run"
    proc = run_by_path(
        venv,
        tmp_path,
        cfg,
        "run",
        "--kernels",
        "host",
        "--scenarios",
        "1A",
        "--out",
        str(run),
        "--no-report",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {r["verdict"] for r in results(run)} != {"infra"}


@pytest.mark.vm
def test_a_venv_kmatrix_run_by_path_boots_a_vm(venv, tmp_path: Path) -> None:
    """vng is the venv's, found beside its python; its helpers must be found too."""
    image, mods = fetch_61()
    cfg = config(tmp_path, "vm")
    cfg.write_text(
        cfg.read_text()
        + f'[[kernel]]\nname = "vm61"\nsource = "path"\nvmlinuz = "{image}"\n'
        + f'modules = "{mods}"\n'
    )
    run = tmp_path / "run"
    args = ("run", "--kernels", "vm61", "--scenarios", "1A", "--accel", "tcg", "--jobs", "1")
    proc = run_by_path(venv, tmp_path, cfg, *args, "--out", str(run), "--no-report")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = results(run)
    assert {r["runner"] for r in rows} == {"vng"}
    assert all(r["verdict"] != "infra" for r in rows), [r["reason"] for r in rows]
