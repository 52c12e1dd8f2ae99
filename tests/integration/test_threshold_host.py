"""`kmatrix threshold` end to end on the running kernel, for tcp_max_tw_buckets in 2B.

What the host kernel was measured to do (tcp_tw_reuse=0, 2-3 s cells): with 8,192
ports (4,096 per parity) the loop keeps its rate up to ~4,080 buckets and crawls
(~14x slower, state R, EADDRNOTAVAIL only once buckets reach the whole range) from
~4,100: the flip sits just below half the range, as the seed's explanation predicts.
With only 2,000 ports the crawl after one parity fills is 4-7x and starts inside the
early-rate window, so the verdict stays "success" until EADDRNOTAVAIL at 2,000 buckets:
the range here is large enough that the half-range flip is a verdict flip.
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

CONFIG = """
[sweep]
scenarios = ["2B"]
window_s = 6
iteration_cap = 200000
stall_s = 2
[sweep.sysctls]
"net.ipv4.tcp_max_tw_buckets" = [1000]
[sweep.fixed]
"net.ipv4.ip_local_port_range" = "32768 40959"
[[kernel]]
name = "host"
source = "host"
"""
HALF = 4096


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("threshold")
    cfg = tmp / "kernels.toml"
    cfg.write_text(CONFIG + f'[settings]\nreports_dir = "{tmp / "reports"}"\n')
    run_dir = tmp / "run"
    argv = ["--config", str(cfg), "threshold", "--scenario", "2B"]
    argv += ["--sysctl", "net.ipv4.tcp_max_tw_buckets", "--range", "2000:8000"]
    argv += ["--resolution", "250", "--out", str(run_dir)]
    proc = subprocess.run(
        [sys.executable, "-m", "matrix", *argv], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "threshold.json").read_text()), tmp


def test_flip_lands_near_half_the_port_range(search: tuple[dict, Path]) -> None:
    doc, _ = search
    b = doc["kernels"]["host"]["bracket"]
    assert b["found"] and b["low_side"] is True and b["changes"] == 1
    assert b["lo"] < HALF * 1.02 and b["hi"] > HALF * 0.95
    assert 0.75 * HALF <= b["lo"] < b["hi"] <= 1.25 * HALF
    assert doc["fixed"]["net.ipv4.tcp_tw_reuse"] == "0"


def test_run_directory_and_report(search: tuple[dict, Path]) -> None:
    doc, tmp = search
    run = tmp / "run"
    cells = {c for p in doc["kernels"]["host"]["probes"] for c in p["cells"]}
    assert cells == {p.stem for p in (run / "cells").glob("*.json")}
    plan = json.loads((run / "plan.json").read_text())
    assert {c["id"] for c in plan["cells"]} == cells
    page = (tmp / "reports" / "run" / "threshold.html").read_text()
    assert "half the port range (8,192 ports)" in page and 'class="plot-data"' in page
    assert 'href="threshold.html"' in (tmp / "reports" / "run" / "index.html").read_text()
