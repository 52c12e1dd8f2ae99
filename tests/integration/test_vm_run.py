"""`kmatrix` end to end on a real Debian kernel: fetch it, boot it under QEMU, run cells.

The kernel is bookworm's 6.1 from the packaged catalogue, fetched through the machine's
apt mirror into the user's cache (a second run reuses it). The port range is shrunk in
the cells' namespaces so that 2B runs out of ports within seconds even under TCG.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from matrix.run import procs
from matrix.runners.vng import find_tool

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="the guest agent needs root"),
    pytest.mark.skipif(find_tool("vng") is None, reason="virtme-ng is not installed"),
]


def kmatrix(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "matrix", "--config", str(REPO / "kernels.toml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    fetch = kmatrix("kernels", "fetch", "6.1")
    assert fetch.returncode == 0, fetch.stderr
    run_dir = tmp_path_factory.mktemp("vmrun") / "run"
    proc = kmatrix(
        "run", "--kernels", "6.1", "--scenarios", "1A,2B", "--accel", "tcg",
        "--sysctl", "net.ipv4.tcp_max_tw_buckets=200,65535",
        "--sysctl", "net.ipv4.tcp_tw_reuse=0",
        "--sysctl", "net.ipv4.ip_local_port_range=40000 40999",
        "--window", "8", "--cap", "100000", "--stall", "4",
        "--out", str(run_dir), "--no-report",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert procs.find_by_marker(str(run_dir)) == [], "a process of this run outlived it"
    out = kmatrix("results", str(run_dir), "--json").stdout
    return [json.loads(line) for line in out.splitlines()]


def by(rows: list[dict], scenario: str, buckets: str = "") -> dict:
    for r in rows:
        if r["scenario"] == scenario and (
            not buckets or r["sysctls"]["net.ipv4.tcp_max_tw_buckets"] == buckets
        ):
            return r
    raise AssertionError(f"no row {scenario} {buckets}")


def test_cells_ran_in_the_guest_kernel_under_tcg(rows: list[dict]) -> None:
    """--sysctl applies to every scenario of the run: 1A and 2B each at both bucket values."""
    assert len(rows) == 4
    assert sorted(r["scenario"] for r in rows) == ["1A", "1A", "2B", "2B"]
    for r in rows:
        assert r["runner"] == "vng" and r["accelerator"] == "tcg"
        assert r["kernel_release"].startswith("6.1.0-") and r["kernel_release"].endswith("-amd64")
        assert r["kernel_release"] != os.uname().release


def test_puzzle1_measured_in_the_guest(rows: list[dict]) -> None:
    r = by(rows, "1A")
    assert r["verdict"] == "success" and r["bytes_queued"] > 100_000 and r["sends"] > 5


def test_2b_runs_out_of_ports_only_when_time_wait_is_kept(rows: list[dict]) -> None:
    bad = by(rows, "2B", "65535")
    assert bad["sysctls"]["net.ipv4.ip_local_port_range"].split() == ["40000", "40999"]
    assert bad["verdict"] in ("error", "slowdown"), bad
    if bad["verdict"] == "error":
        assert bad["error_name"] == "EADDRNOTAVAIL" and 900 <= bad["error_iteration"] <= 1000
    good = by(rows, "2B", "200")
    assert good["verdict"] == "success" and good["error_name"] is None, good
    assert good["iterations"] > 2000
