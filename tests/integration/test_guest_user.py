"""What a guest reads of this machine, with and without `guest_user`.

kmatrix runs as root and QEMU serves the host's root to the guest over 9p. A test
agent reads files only root may read (/etc/gshadow, a 0600 file this test puts under
/root) and writes what it got, a SHA-256 or the error's name, into its results directory;
then it runs the real agent, so the batch's results come back as usual. Without a
guest user the guest reads both; with `nobody` it reads neither.

The guest reaches everything as `nobody` over the host's root, so the test's files live
in a world-searchable directory of their own (pytest's tmp_path is not), and the kernel
is the cached bookworm 6.1 hard-linked there (the cache under /root is out of reach).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from matrix.errors import PrerequisiteError
from matrix.model import Batch, Cell, KernelSpec, Limits, PathSource, ResolvedKernel
from matrix.runners.vng import VngRunner, find_tool
from tests.fixtures.agent_cells import builtin_program
from tests.fixtures.kernels import fetch_61

REPO = Path(__file__).resolve().parents[2]
COLLECTORS = REPO / "collectors"
USER = "nobody"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: QEMU drops from root to the user"),
    pytest.mark.skipif(find_tool("vng") is None, reason="virtme-ng is not installed"),
]

PROBE_AGENT = """
import hashlib, json, sys
from pathlib import Path
sys.path.insert(0, {collectors!r})
import agent

def probe(path):
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as e:
        return type(e).__name__

args = agent.parse_args(None)
seen = {{p: probe(p) for p in {paths!r}}}
Path(args.out).mkdir(exist_ok=True)
Path(args.out, "exposure.json").write_text(json.dumps(seen))
sys.exit(agent.main())
"""


def kernel_in(root: Path) -> ResolvedKernel:
    image = next((root / "boot").glob("vmlinuz-*"))
    release = image.name.removeprefix("vmlinuz-")
    spec = KernelSpec("k61", PathSource(image))
    return ResolvedKernel(spec, release, image, root / "lib" / "modules" / release)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A directory every user can search, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="kmatrix-guest-user-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def kernel(base: Path) -> ResolvedKernel:
    """The cached 6.1, hard-linked (copied across filesystems) into `base`."""
    found = fetch_61()[0].parents[1]
    dest = base / "kernel"
    linked = subprocess.run(["cp", "-al", str(found), str(dest)], capture_output=True)
    if linked.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(found, dest, symlinks=True)
    return kernel_in(dest)


@pytest.fixture(scope="module")
def secret() -> Iterator[Path]:
    """A file under /root that only root may read."""
    path = Path("/root") / f".kmatrix-guest-user-{secrets.token_hex(6)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(64))
    yield path
    path.unlink(missing_ok=True)


def agent(base: Path, paths: list[str]) -> Path:
    script = base / "probe_agent.py"
    script.write_text(PROBE_AGENT.format(collectors=str(COLLECTORS), paths=paths))
    script.chmod(0o644)
    return script


def boot(base: Path, kernel: ResolvedKernel, secret: Path, user: str | None) -> tuple:
    """One 1A cell in one boot; (outcome, what the guest read, the workdir)."""
    paths = ["/etc/gshadow", str(secret), "/etc/shadow"]
    runner = VngRunner(accel="tcg", cpus=1, agent=agent(base, paths), guest_user=user)
    cell = Cell(
        "test",
        "1A",
        (),
        0,
        Limits(window_s=2.0, stall_s=2.0, iteration_cap=500),
        program=builtin_program("1A"),
    )
    workdir = base / f"wd-{user or 'root'}"
    outcome = runner.run_batch(Batch(kernel, (cell,)), workdir, threading.Event(), lambda *_: None)
    exposure = workdir / "out" / "exposure.json"
    seen = json.loads(exposure.read_text()) if exposure.is_file() else {}
    return outcome, seen, workdir


def assert_no_qemu_left(workdir: Path) -> None:
    out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True)
    assert [ln for ln in out.stdout.splitlines() if str(workdir) in ln] == []


@pytest.mark.vm
def test_without_guest_user_the_guest_reads_root_only_files(
    base: Path, kernel: ResolvedKernel, secret: Path
) -> None:
    """The exposure: QEMU runs as root, so the guest reads what root reads."""
    outcome, seen, workdir = boot(base, kernel, secret, None)
    assert_no_qemu_left(workdir)
    assert outcome.failure == "", outcome.console_tail
    assert seen["/etc/gshadow"] == sha256(Path("/etc/gshadow"))
    assert seen[str(secret)] == sha256(secret)
    assert seen["/etc/shadow"] != sha256(Path("/etc/shadow")), "virtme-ng mounts its own"


@pytest.mark.vm
def test_with_guest_user_the_guest_reads_neither(
    base: Path, kernel: ResolvedKernel, secret: Path
) -> None:
    """QEMU drops to `nobody` before the guest starts: both reads are refused, and the
    batch still returns its result through the workdir handed to that user."""
    outcome, seen, workdir = boot(base, kernel, secret, USER)
    assert_no_qemu_left(workdir)
    assert f"-runas {USER}" in outcome.console_log.read_text()
    assert outcome.failure == "", outcome.console_tail
    assert len(outcome.results) == 1
    assert seen["/etc/gshadow"] == "PermissionError"
    assert seen[str(secret)] == "PermissionError"
    assert (workdir / "out").stat().st_uid == pwd.getpwnam(USER).pw_uid
    assert workdir.stat().st_uid == 0 and (workdir / "kernel").stat().st_uid == 0


def test_kernel_out_of_the_users_reach_is_named(tmp_path: Path) -> None:
    """The cache under /root: the guest could not load a module, so no boot at all."""
    found = fetch_61()[0].parents[1]
    runner = VngRunner(accel="tcg", guest_user=USER)
    cell = Cell(
        "test",
        "1A",
        (),
        0,
        Limits(window_s=1.0, stall_s=1.0, iteration_cap=10),
        program=builtin_program("1A"),
    )
    batch = Batch(kernel_in(found), (cell,))
    with pytest.raises(PrerequisiteError, match="cannot reach") as e:
        runner.run_batch(batch, tmp_path / "wd", threading.Event(), lambda *_: None)
    assert "kernel's modules" in str(e.value)
