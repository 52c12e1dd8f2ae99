"""The example workloads for real: iperf3 and stress-ng in a fresh network namespace.

Each program runs as kmatrix's agent would leave it, in its own namespace with `lo` up
(`unshare -n`), for a couple of seconds; the namespace is thrown away afterwards, so the
congestion control set here never reaches this machine's own. The last tests plan the
workloads profile's cells for this machine's kernel, as `kmatrix run --profile workloads
--kernels host` does, and run them through the real agent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from matrix.model import HostSource, KernelSpec, ResolvedKernel
from matrix.plan import cells, config

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "collectors" / "agent.py"
SCENARIOS = ROOT / "collectors" / "scenarios"
IPERF3 = SCENARIOS / "iperf3" / "iperf3_loopback.py"
STRESS = SCENARIOS / "stress-ng-sock" / "stress_ng_sock.py"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: unshare -n"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs ip (iproute2)"),
]
needs_iperf3 = pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3")
needs_stress_ng = pytest.mark.skipif(shutil.which("stress-ng") is None, reason="needs stress-ng")


def in_netns(
    program: Path, env: dict[str, str], before: str = "", result_dir: Path | None = None
) -> tuple[int, dict[str, Any], str]:
    """Run `program` in a new network namespace: exit status, result document, stderr."""
    run_env = {k: v for k, v in os.environ.items() if k != "KMATRIX_RESULT_DIR"} | env
    if result_dir is not None:
        run_env["KMATRIX_RESULT_DIR"] = str(result_dir)
    script = f'ip link set lo up && {before} exec python3 "$0"'
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", script, str(program)],
        cwd=program.parent,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    text = (result_dir / "result.json").read_text() if result_dir else proc.stdout
    return proc.returncode, json.loads(text), proc.stderr


@needs_iperf3
def test_iperf3_measures_loopback_throughput_by_hand() -> None:
    code, doc, err = in_netns(IPERF3, {"duration": "2", "streams": "2"})
    assert code == 0, err
    assert doc["error"] is None
    m = doc["metrics"]
    assert m["throughput_bps"] > 0 and m["sent_bps"] > 0
    assert m["retransmits"] >= 0 and m["streams"] == 2
    assert 1.5 < m["seconds"] < 3
    series = doc["series"]
    assert len(series) >= 2
    assert all(s["bits_per_second"] > 0 for s in series)
    assert [s["t"] for s in series] == sorted(s["t"] for s in series)
    cc = doc["evidence"]["congestion"]
    assert cc["sender"] == cc["receiver"] == cc["sysctl"]
    assert f"congestion control {cc['sender']}" in doc["status_detail"]


@needs_iperf3
def test_iperf3_uses_the_namespaces_congestion_control(tmp_path: Path) -> None:
    """Also: iperf3 keeps its buffers under $TMPDIR, which the program points at the
    cell's result directory, so an unusable TMPDIR (a read-only guest /tmp) is no matter."""
    before = "echo reno > /proc/sys/net/ipv4/tcp_congestion_control &&"
    env = {"duration": "2", "TMPDIR": "/nonexistent"}
    code, doc, err = in_netns(IPERF3, env, before, result_dir=tmp_path)
    assert code == 0, err
    assert doc["metrics"]["throughput_bps"] > 0
    assert doc["evidence"]["congestion"]["sender"] == "reno"
    assert doc["evidence"]["congestion"]["receiver"] == "reno"
    assert "congestion control reno" in doc["status_detail"]


@needs_stress_ng
def test_stress_ng_sock_measures_bogo_ops(tmp_path: Path) -> None:
    code, doc, err = in_netns(STRESS, {"duration": "2", "workers": "1"}, result_dir=tmp_path)
    assert code == 0, err
    assert doc["error"] is None
    m = doc["metrics"]
    assert m["bogo_ops"] > 0 and isinstance(m["bogo_ops"], int)
    assert m["bogo_ops_per_s"] > 0
    assert 1.5 < m["wall_clock_s"] < 3
    assert doc["series"] == []
    assert (tmp_path / "stress-ng.yaml").is_file()
    assert "bogo ops/s" in doc["status_detail"]
    assert "dispatching hogs: 1 sock" in err


@needs_stress_ng
def test_stress_ng_sock_by_hand_prints_the_result() -> None:
    code, doc, err = in_netns(STRESS, {"duration": "2", "workers": "2"})
    assert code == 0, err
    assert doc["metrics"]["bogo_ops_per_s"] > 0


def _allowed_in_a_child_netns(algorithm: str) -> bool:
    """A cell may pick an unrestricted algorithm only (see iperf3/scenario.toml)."""
    allowed = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read_text().split()
    return algorithm in allowed


@pytest.fixture(scope="module")
def agent_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The workloads profile's cells for this machine's kernel, planned as `kmatrix run`
    plans them (2 s each), run by the real agent; results by (scenario, sysctls)."""
    cfg = config.apply_profile(config.load(ROOT / "kernels.toml"), "workloads")
    sweep = replace(cfg.sweep, params=(("duration", ("2",)),))
    kernel = ResolvedKernel(KernelSpec("host", HostSource()), os.uname().release)
    (batch,) = cells.plan([kernel], sweep, cfg.catalogue)
    docs = [c.to_agent() for c in batch.cells]
    out = tmp_path_factory.mktemp("workloads") / "out"
    out.mkdir()
    cells_file = out.parent / "cells.json"
    cells_file.write_text(json.dumps({"cells": docs}))
    proc = subprocess.run(
        ["python3", str(AGENT), "--cells", str(cells_file), "--out", str(out), "--net-only"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = {}
    for d in docs:
        doc = json.loads((out / f"{d['id']}.json").read_text())
        cc = d["sysctls"].get("net.ipv4.tcp_congestion_control", "")
        results[f"{d['scenario']} {cc}".strip()] = doc
    return results


@needs_iperf3
@needs_stress_ng
@pytest.mark.parametrize("algorithm", ["cubic", "reno"])
def test_agent_runs_iperf3_per_congestion_control(
    agent_results: dict[str, dict[str, Any]], algorithm: str
) -> None:
    doc = agent_results[f"iperf3 {algorithm}"]
    if not _allowed_in_a_child_netns(algorithm):
        assert doc["status"] == "setup_failed", doc["status_detail"]
        (problem,) = doc["sysctls"]["problems"]
        assert problem["key"] == "net.ipv4.tcp_congestion_control"
        return
    assert doc["status"] == "ok", doc.get("log_tail")
    assert doc["program"]["exit_code"] == 0 and "json" in doc["program"]["reported"]
    assert doc["params"] == {"duration": "2", "streams": "1"}
    assert doc["sysctls"]["read_back"]["net.ipv4.tcp_congestion_control"] == algorithm
    assert doc["metrics"]["throughput_bps"] > 0
    assert doc["series"] and all(s["bits_per_second"] > 0 for s in doc["series"])
    assert f"congestion control {algorithm}" in doc["status_detail"]


@needs_iperf3
@needs_stress_ng
def test_agent_runs_stress_ng_sock(agent_results: dict[str, dict[str, Any]]) -> None:
    doc = agent_results["stress-ng-sock"]
    assert doc["status"] == "ok", doc.get("log_tail")
    assert doc["program"]["exit_code"] == 0 and "json" in doc["program"]["reported"]
    assert doc["params"] == {"duration": "2", "workers": "1"}
    assert doc["metrics"]["bogo_ops"] > 0 and doc["metrics"]["bogo_ops_per_s"] > 0
    assert doc["error"] is None
