"""The report rendered from a run recorded on a real kernel (tests/fixtures/run_host_recorded).

The fixture is the run directory of `kmatrix run --kernels host --scenarios 1A,1B,2A,2B
--sysctl net.ipv4.tcp_max_tw_buckets=200,65535 --sysctl net.ipv4.tcp_tw_reuse=0
--sysctl "net.ipv4.ip_local_port_range=40000 40999" --window 2`, kept as it came back
(minus the agent's scratch directory), so these tests see real collector output.
"""

from __future__ import annotations

import re
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
    assert 'class="plot-data" data-for="series-plot"' in page
    assert "net.ipv4.ip_local_port_range" in page


def kv(page: str, heading: str) -> dict[str, str]:
    table = page.split(f"<h2>{heading}</h2>", 1)[1].split("</table>", 1)[0]
    return dict(re.findall(r'<tr><th>([^<]*)</th><td class="num">([^<]*)</td>', table))


def test_the_recorded_run_shows_the_figures_it_always_showed(
    run: results.RunData, tmp_path: Path
) -> None:
    """The puzzles' figures as the report printed them before it read manifests."""
    index = report.render_report(run, tmp_path / "report")
    html = index.read_text()
    figures = re.findall(r'<span class="fig">([^<]*)</span>', html)
    assert figures == [
        "24,885/s → 25,003/s",
        "27,090/s → 26,583/s",
        "28,170/s → 26,594/s",
        "EADDRNOTAVAIL @ 1,000",
    ]
    heads = re.findall(r'<th class="mono sortable[^>]*title="([^"(]*)[^>]*>([^<]*)</th>', html)
    assert (
        heads
        == [
            ("ports=40000-40999 buckets=200 reuse=0 ", "200"),
            ("ports=40000-40999 buckets=65535 reuse=0 ", "65535"),
        ]
        * 2
    )
    assert html.count('In every column: <span class="mono">ports=40000-40999 reuse=0</span>') == 2
    pair = html.split('class="pairs"', 1)[1].split("</table>", 1)[0]
    cells = re.findall(r'<td class="num[^"]*">(?:<a [^>]*>|<b>)?([^<]*)', pair)
    assert cells == ["3,973,120", "2,637,824", "0.664", "243 / 161", "4,194,304 / 4,194,304"]
    assert re.findall(r'<td class="num pv (\w+)">', pair) == ["success", "success"]
    assert "1B&#39;s bytes queued was 0.664 of 1A&#39;s on host (e.g. 3,973,120 B vs" in html
    bad = verdict(run, "2B", "65535")
    page = (index.parent / "cells" / f"{bad['cell_id']}.html").read_text()
    assert kv(page, "Key metrics") == {
        "iterations": "1,000",
        "elapsed (s)": "0.07",
        "TIME-WAIT max": "1,000",
        "past the knee at (s)": "0.05",
        "early rate (/s)": "9,901",
        "late rate (/s)": "9,901",
        "late / early": "1.000",
        "error": "EADDRNOTAVAIL",
        "error at iteration": "1,000",
    }
    assert kv(page, "latency_us")["p99"] == "134.3"
    one = (index.parent / "cells" / f"{verdict(run, '1A')['cell_id']}.html").read_text()
    assert kv(one, "Key metrics")["bytes queued"] == "3.97 MB (3,973,120 B)"
    assert kv(one, "Key metrics")["SO_SNDBUF after"] == "4,194,304"
    assert "plot-data" not in one and "uPlot" not in one


def test_the_recorded_run_exports_junit(run: results.RunData) -> None:
    xml = exports.junit_xml(run.table.to_dict(orient="records"), run.run_dir.name)
    assert xml.count("<testcase") == 6 and xml.count("<failure") == 1


def test_a_cell_stopped_short_shows_what_it_measured(tmp_path: Path) -> None:
    """The default sweep's shape made of the recorded cells, one 2B cell stopped by its
    window before the knee: the matrix says inconclusive, with its count and why."""
    from tests.fixtures.recorded_runs import sweep_run

    run = sweep_run(tmp_path / "run", inconclusive=[("7.3-rc", "2B", "2000", "1")])
    html = report.render_report(results.load_run(run), tmp_path / "report").read_text()
    row = html.split('data-k="7.3-rc', 2)[2].split("</tr>", 1)[0]
    assert '<span class="label">inconclusive ' in row
    assert '<span class="fig">11,103 conns, stopped short of the knee</span>' in row
    assert 'title="infra: inconclusive: 11,103 connections in 1.1 s, stopped by the window_s' in row
    assert "no result<" not in html
    assert "Not counted: buckets=2000 reuse=1 (infra: 11,103 conns, stopped short" in html
