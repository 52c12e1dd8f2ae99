"""The report rendered from a run recorded on a real kernel (tests/fixtures/run_host_recorded).

The fixture is the run directory of `kmatrix run --kernels host --scenarios 1A,1B,2A,2B
--sysctl net.ipv4.tcp_max_tw_buckets=200,65535 --sysctl net.ipv4.tcp_tw_reuse=0
--sysctl "net.ipv4.ip_local_port_range=40000 40999" --window 2`, kept as it came back
(minus the agent's scratch directory), so these tests see real collector output.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from matrix.report import render as report
from matrix.results import exports
from matrix.results import table as results

RECORDED = Path(__file__).resolve().parents[2] / "fixtures" / "run_host_recorded"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> results.RunData:
    copy = tmp_path_factory.mktemp("recorded") / "run"
    shutil.copytree(RECORDED, copy)
    return results.load_run(copy)


def verdict(run: results.RunData, scenario: str, buckets: str = "") -> dict:
    for row in run.table.to_dict(orient="records"):
        if row["scenario"] == scenario and buckets in (
            "",
            row["sysctls"].get("net.ipv4.tcp_max_tw_buckets"),
        ):
            return row
    raise AssertionError(scenario)


def test_the_recorded_run_classifies_as_measured(run: results.RunData) -> None:
    assert len(run.table) == 6
    bad = verdict(run, "2B", "65535")
    assert bad["verdict"] == "error" and bad["error_name"] == "EADDRNOTAVAIL"
    assert verdict(run, "2B", "200")["verdict"] == "success"
    assert {verdict(run, "2A", b)["verdict"] for b in ("200", "65535")} == {"success"}
    ratio = verdict(run, "1B")["bytes_queued"] / verdict(run, "1A")["bytes_queued"]
    assert 0.6 < ratio < 0.7


def test_the_recorded_run_renders(run: results.RunData, tmp_path: Path) -> None:
    index = report.render_report(run, tmp_path / "report")
    html = index.read_text()
    assert "EADDRNOTAVAIL @ " in html
    assert run.manifest["host_kernel"] in html
    bad = verdict(run, "2B", "200")
    page = (index.parent / "cells" / f"{bad['cell_id']}.html").read_text()
    assert "<svg" in page and "net.ipv4.ip_local_port_range" in page


def test_the_recorded_run_exports_junit(run: results.RunData) -> None:
    xml = exports.junit_xml(run.table.to_dict(orient="records"), run.run_dir.name)
    assert xml.count("<testcase") == 6 and xml.count("<failure") == 1
