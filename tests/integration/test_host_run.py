"""`kmatrix run` end to end on the running kernel: real namespaces, real sysctls, real loops.

The port range is shrunk inside each cell's namespace so that 2B exhausts it in
a fraction of a second instead of the ~14,000 connections the default range takes.
Assertions stay on what does not depend on the machine's load: whether the loop died,
and how far it got, rather than exact rates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

WATCHED = ("net/ipv4/tcp_tw_reuse", "net/ipv4/tcp_max_tw_buckets", "net/ipv4/ip_local_port_range")

CONFIG = """
[sweep]
scenarios = ["1A", "1B", "2A", "2B"]
window_s = 4
iteration_cap = 200000
stall_s = 3
[sweep.sysctls]
"net.ipv4.tcp_max_tw_buckets" = [200, 65535]
"net.ipv4.tcp_tw_reuse" = [0]
[sweep.fixed]
"net.ipv4.ip_local_port_range" = "40000 40999"
[[kernel]]
name = "host"
source = "host"
"""


def host_sysctls() -> dict[str, str]:
    return {k: Path("/proc/sys", k).read_text() for k in WATCHED}


def kmatrix(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "matrix", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[dict], subprocess.CompletedProcess[str]]:
    tmp = tmp_path_factory.mktemp("hostrun")
    (tmp / "kernels.toml").write_text(CONFIG)
    before = host_sysctls()
    proc = kmatrix("run", "--out", str(tmp / "run"), cwd=tmp)
    assert host_sysctls() == before, "the host namespace's sysctls changed"
    rows = [
        json.loads(line)
        for line in kmatrix("results", str(tmp / "run"), "--json", cwd=tmp).stdout.splitlines()
    ]
    return tmp, rows, proc


def cell(rows: list[dict], scenario: str, buckets: str = "", reuse: str = "") -> dict:
    for r in rows:
        s = r["sysctls"]
        if r["scenario"] == scenario and (
            not buckets
            or (s["net.ipv4.tcp_max_tw_buckets"] == buckets and s["net.ipv4.tcp_tw_reuse"] == reuse)
        ):
            return r
    raise AssertionError(f"no {scenario} {buckets} {reuse} row")


def test_run_finishes_and_every_cell_is_measured(run: tuple) -> None:
    _, rows, proc = run
    assert proc.returncode == 0, proc.stderr
    assert len(rows) == 2 + 2 * 2
    assert all(r["verdict"] != "infra" for r in rows)
    assert all(r["kernel_release"] == os.uname().release for r in rows)


def test_sysctls_were_read_back_in_the_cell_namespace(run: tuple) -> None:
    _, rows, _ = run
    r = cell(rows, "2B", "65535", "0")
    assert r["sysctls"]["net.ipv4.ip_local_port_range"].split() == ["40000", "40999"]
    assert r["sysctls"]["net.ipv4.tcp_max_tw_buckets"] == "65535"


def test_2a_never_dies(run: tuple) -> None:
    _, rows, _ = run
    for r in (cell(rows, "2A", b, "0") for b in ("200", "65535")):
        assert r["verdict"] in ("success", "slowdown") and r["error_name"] is None, r
        assert r["iterations"] > 20 * 1000


def test_2b_exhausts_the_ports_only_when_time_wait_is_kept(run: tuple) -> None:
    _, rows, _ = run
    bad = cell(rows, "2B", "65535", "0")
    assert bad["verdict"] in ("slowdown", "error", "hang"), bad
    if bad["verdict"] == "slowdown":
        assert bad["late_rate"] < bad["early_rate"] / 2
    if bad["verdict"] == "error":
        assert bad["error_name"] == "EADDRNOTAVAIL"
        assert 900 <= bad["error_iteration"] <= 1000
    good = cell(rows, "2B", "200", "0")
    assert good["verdict"] == "success" and good["error_name"] is None, good
    assert good["iterations"] > 20 * 1000


def test_puzzle1_poll_stops_at_about_two_thirds(run: tuple) -> None:
    _, rows, _ = run
    a, b = cell(rows, "1A")["bytes_queued"], cell(rows, "1B")["bytes_queued"]
    assert 0.55 < b / a < 0.8, (a, b)


def test_resume_runs_nothing_when_complete_and_only_missing_cells_otherwise(run: tuple) -> None:
    tmp, rows, _ = run
    run_dir = tmp / "run"
    victim = cell(rows, "1B")["cell_id"]
    kept = {p.name: p.stat().st_mtime_ns for p in (run_dir / "cells").glob("*.json")}
    (run_dir / "cells" / f"{victim}.json").unlink()
    proc = kmatrix("run", "--resume", str(run_dir), "--no-report", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert "1 cells left" in proc.stderr
    after = {p.name: p.stat().st_mtime_ns for p in (run_dir / "cells").glob("*.json")}
    assert set(after) == set(kept)
    changed = [n for n in after if after[n] != kept.get(n)]
    assert changed == [f"{victim}.json"]
