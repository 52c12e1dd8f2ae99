"""The remote runner against real OpenSSH servers on loopback.

Each server is an sshd with its own host key; kmatrix connects as root with a generated
key and checks host keys against a generated known_hosts (HOME points at the test's
directory, so the user's own ~/.ssh plays no part); on the "remote" side each server's
sessions have a home of their own, where kmatrix keeps its files, and a login PATH
without any virtualenv. The batches are host-kernel batches (the "remote" kernel is
this machine's), with cells of ~3 s and a shrunken port range.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from matrix.plan.hosts import HostSpec
from matrix.runners.ssh import connect, sh
from tests.fixtures import sshd

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and sshd"),
    pytest.mark.skipif(not Path(sshd.SSHD).is_file(), reason="needs openssh-server"),
]
REPO = Path(__file__).resolve().parents[2]
CONFIG = """
[settings]
known_hosts = "known_hosts"
identity = "client_key"
[sweep]
scenarios = ["1A", "2A", "2B"]
window_s = 3
iteration_cap = 200000
stall_s = 2
knee_margin_s = 1   # the goal past the knee must fit in the window
[sweep.sysctls]
"net.ipv4.tcp_max_tw_buckets" = [200, 65535]
"net.ipv4.tcp_tw_reuse" = [0]
[sweep.fixed]
"net.ipv4.ip_local_port_range" = "40000 40999"
[[kernel]]
name = "hostA"
source = "host"
[[kernel]]
name = "hostB"
source = "host"
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    """A directory with kernels.toml, a client key, and a server factory."""
    tmp = tmp_path_factory.mktemp("remote")
    sshd.keygen(tmp / "client_key")
    (tmp / "kernels.toml").write_text(CONFIG)
    (tmp / "known_hosts").write_text("")
    servers: list[sshd.Sshd] = []

    def server(name: str, known: bool = True) -> sshd.Sshd:
        s = sshd.start(tmp, name, tmp / "client_key.pub")
        servers.append(s)
        if known:
            with (tmp / "known_hosts").open("a") as f:
                f.write(s.known_hosts_line())
        return s

    yield tmp, server
    for s in servers:
        if s.proc.poll() is None:
            s.kill()


def kmatrix(tmp: Path, *args: str, wait: bool = True):
    cmd = [sys.executable, "-m", "matrix", *args]
    env = dict(os.environ, HOME=str(tmp), PYTHONPATH=str(REPO))
    if not wait:
        out = (tmp / f"kmatrix-{time.monotonic_ns()}.log").open("w")
        return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


def rows(tmp: Path, run: Path) -> list[dict]:
    out = kmatrix(tmp, "results", str(run), "--json").stdout
    return [json.loads(line) for line in out.splitlines()]


def verdicts(table: list[dict]) -> dict[tuple, str]:
    """Per cell: "progress" (success or slowdown, which CPU load can swap), else the verdict."""
    coarse = {"success": "progress", "slowdown": "progress"}
    return {
        (r["kernel"], r["scenario"], json.dumps(r["sysctls"])): coarse.get(
            r["verdict"], r["verdict"]
        )
        for r in table
    }


def marker(run: Path) -> str:
    """What the command lines of the run's remote processes hold: their batch directory,
    kmatrix-remote/runs/<run-id>-<kernel>-XXXXXXXX in the server's home."""
    return f"/kmatrix-remote/runs/{run.name}-"


def assert_no_leftovers(run: Path, servers: list[sshd.Sshd]) -> None:
    """No agent or puzzle of the run, no SSH session on a server still up, no batch
    directory left on a server."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        marked = sshd.marked(marker(run))
        sessions = [
            p for s in servers if s.proc.poll() is None for p in sshd.descendants(s.proc.pid)
        ]
        if not marked and not sessions:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"left behind: run processes {marked}, ssh sessions {sessions}")
    dirs = [d for s in servers for d in s.runs.glob(f"{run.name}-*")]
    assert not dirs, f"batch directories left behind: {dirs}"


def wait_for_result_from(run: Path, host: str, timeout_s: float = 60) -> set[str]:
    """Cell ids pulled back from `host` once there is at least one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = set()
        for p in (run / "cells").glob("*.json"):
            try:
                if json.loads(p.read_text()).get("run_host") == host:
                    got.add(p.stem)
            except ValueError:
                continue
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"no result from {host} in {timeout_s}s")


def test_two_hosts_give_the_local_verdicts_with_the_host_filled(lab) -> None:
    tmp, server = lab
    a, b = server("a"), server("b")
    local = kmatrix(tmp, "run", "--jobs", "1", "--out", str(tmp / "local"), "--no-report")
    assert local.returncode == 0, local.stderr
    hosts = f"{a.address},{b.address}"
    remote = kmatrix(
        tmp, "run", "--hosts", hosts, "--jobs", "0", "--out", str(tmp / "r1"), "--no-report"
    )
    assert remote.returncode == 0, remote.stdout + remote.stderr
    table = rows(tmp, tmp / "r1")
    assert len(table) == 10
    assert {r["host"] for r in table} == {a.address, b.address}
    assert {r["runner"] for r in table} == {"remote"}
    assert verdicts(table) == verdicts(rows(tmp, tmp / "local"))
    assert_no_leftovers(tmp / "r1", [a, b])


def test_a_dropped_host_has_its_cells_rerun_on_the_other(lab) -> None:
    tmp, server = lab
    c, d = server("c"), server("d")
    run = tmp / "r2"
    hosts = f"{c.address},{d.address}"
    proc = kmatrix(tmp, "run", "--hosts", hosts, "--jobs", "0", "--out", str(run), wait=False)
    kept = wait_for_result_from(run, c.address)
    mtimes = {cid: (run / "cells" / f"{cid}.json").stat().st_mtime_ns for cid in kept}
    c.kill()
    assert proc.wait(timeout=240) == 0
    table = rows(tmp, run)
    assert all(r["verdict"] != "infra" for r in table), [r["reason"] for r in table]
    by_id = {r["cell_id"]: r for r in table}
    assert {by_id[cid]["host"] for cid in kept} == {c.address}
    assert all((run / "cells" / f"{cid}.json").stat().st_mtime_ns == m for cid, m in mtimes.items())
    moved = [r for r in table if r["kernel"] == by_id[next(iter(kept))]["kernel"]]
    assert {r["host"] for r in moved} == {c.address, d.address}
    assert verdicts(table) == verdicts(rows(tmp, tmp / "local"))
    assert_no_leftovers(run, [d])


def test_with_no_host_left_the_cells_end_infra_with_the_reason(lab) -> None:
    tmp, server = lab
    e = server("e")
    run = tmp / "r3"
    args = ("run", "--hosts", e.address, "--jobs", "0", "--kernels", "hostA", "--out", str(run))
    proc = kmatrix(tmp, *args, "--no-report", wait=False)
    kept = wait_for_result_from(run, e.address)
    e.kill()
    assert proc.wait(timeout=120) == 1
    table = rows(tmp, run)
    infra = [r for r in table if r["verdict"] == "infra"]
    assert infra and len(infra) + len(kept) == len(table)
    assert all(f"host {e.address} dropped" in r["reason"] for r in infra), infra[0]["reason"]
    assert all("no other slot left" in r["reason"] for r in infra)
    assert all(r["verdict"] != "infra" for r in table if r["cell_id"] in kept)
    assert not sshd.marked(marker(run))


def test_an_unknown_host_key_is_refused(lab) -> None:
    tmp, server = lab
    stranger = server("stranger", known=False)
    proc = kmatrix(tmp, "run", "--hosts", stranger.address, "--jobs", "0", "--out", str(tmp / "r4"))
    assert proc.returncode == 3, proc.stderr
    assert "host key not in known_hosts, refusing to connect" in proc.stderr
    assert stranger.address in proc.stderr
    assert not sshd.descendants(stranger.proc.pid)


def cached_kernel() -> tuple[Path, Path] | None:
    """A Debian kernel the catalog has cached: (vmlinuz, modules tree)."""
    root = Path("~/.cache/kmatrix/kernels").expanduser()
    for image in sorted(root.glob("*/boot/vmlinuz-*")):
        release = image.name.removeprefix("vmlinuz-")
        for mods in (image.parents[1] / "lib/modules", image.parents[1] / "usr/lib/modules"):
            if (mods / release).is_dir():
                return image, mods / release
    return None


@pytest.mark.vm
@pytest.mark.skipif(cached_kernel() is None, reason="no cached kernel (kmatrix kernels fetch)")
def test_a_vm_batch_runs_over_ssh(lab) -> None:
    """With the venv's python named as the host's, and the venv not on the login PATH:
    vng must still find its helpers. The kernel is copied into the host's cache."""
    tmp, server = lab
    v = server("v")
    venv_bin = str(Path(sys.executable).parent)
    assert venv_bin not in login_path(tmp, v).split(":")
    image, mods = cached_kernel()  # type: ignore[misc]
    (tmp / "vm.toml").write_text(
        CONFIG.split("[[kernel]]")[0].replace('["1A", "2A", "2B"]', '["1A"]')
        + f'[[kernel]]\nname = "vm"\nsource = "path"\nvmlinuz = "{image}"\nmodules = "{mods}"\n'
        + f'[[host]]\naddress = "{v.address}"\npython = "{sys.executable}"\n'
    )
    run = tmp / "rvm"
    args = ("--config", "vm.toml", "run", "--jobs", "0", "--sysctl", "net.ipv4.tcp_tw_reuse=0")
    proc = kmatrix(tmp, *args, "--out", str(run), "--no-report")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = rows(tmp, run)
    assert (row["runner"], row["host"]) == ("remote", v.address)
    assert row["accelerator"] in ("kvm", "tcg")
    assert row["kernel_release"] == image.name.removeprefix("vmlinuz-")
    assert row["verdict"] == "success", row["reason"]
    assert_no_leftovers(run, [v])
    assert list((v.home / ".cache/kmatrix-remote/kernels").glob(f"{row['kernel_release']}-*"))


def login_path(tmp: Path, server: sshd.Sshd) -> str:
    """$PATH of a command run over SSH on `server`, as kmatrix's commands get it."""
    host = HostSpec("127.0.0.1", "root", server.port, identity=tmp / "client_key")
    c = connect(host, tmp / "known_hosts")
    try:
        return sh(c, "echo $PATH")[1]
    finally:
        c.close()
