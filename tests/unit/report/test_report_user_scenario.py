"""A user's scenarios, known only by their manifests, get a report like the puzzles do.

The run directory is built the way tests/fixtures/run_small is (manifest, table rows,
cell details), with the scenarios' manifests in plan.json as a real run records them.
Nothing in the report's code names these scenarios: their sections, key figures, pair
table, test cases and plots all come from the manifests written here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from matrix.classify.figures import key_figure
from matrix.model import Classified, Verdict
from matrix.report import render as report
from matrix.results.table import RunData
from matrix.run import rundir
from matrix.scenarios.catalogue import builtin
from matrix.scenarios.manifest import Scenario, load

ECHO = """
title = "echo round trips over a veth pair"
command = ["./echo.sh"]
result = "lava"
timeout_s = 30
explanation = "Each case sends one datagram of `size` bytes and times the echo."

[params]
size = [64, 1500]

[metrics.rtt_us]
unit = "µs"
better = "lower"
label = "round trip"
scale = 0.001
display_unit = "ms"
digits = 3

[report]
key = "rtt_us"
plot = "inflight"
"""
RING = """
title = "{title}"
command = ["./ring.sh"]
result = "json"
timeout_s = 30

[metrics.ops]
unit = "ops/s"
label = "operations"

[metrics.depth]
label = "ring depth"

[report]
key = "ops"
section = "Rings: polled vs interrupt-driven"
section_note = "operations per second of each mode"
"""
RATIO = """
[report.ratio]
of = "ring-poll"
metric = "ops"
expect = 0.5
slack = 0.1
columns = ["depth"]
"""
KERNELS = (("6.1", "6.1.0-40-amd64"), ("6.12", "6.12.48+deb12-amd64"))
CASES = [
    {"name": "echo-64", "result": "pass", "measurement": 0.85, "units": "ms", "source": "lava"},
    {"name": "echo-mtu", "result": "fail", "measurement": None, "units": None, "source": "lava"},
    {"name": "echo-<b>", "result": "skip", "measurement": None, "units": None, "source": "lava"},
]


def write_scenarios(root: Path) -> list[Scenario]:
    """Three manifests in a user's scenario directory, read as the catalogue reads them."""
    texts = {
        "lava-echo": ECHO,
        "ring-poll": RING.format(title="ring, polled"),
        "ring-irq": RING.format(title="ring, interrupt-driven") + RATIO,
    }
    for name, text in texts.items():
        (root / name).mkdir(parents=True)
        (root / name / "scenario.toml").write_text(text)
    return [load(root / name, str(root)) for name in texts]


def cell(
    spec: Scenario, kernel: tuple[str, str], verdict: str, metrics: dict[str, Any], **params: str
) -> dict[str, Any]:
    """A table row as the results table makes one, its key figure from the classifier."""
    name, release = kernel
    label = " ".join(f"{k}{v}" for k, v in params.items()) or "defaults"
    return {
        "cell_id": f"{name}-{spec.name}-{label}",
        "kernel": name,
        "kernel_kind": "debian",
        "kernel_release": release,
        "scenario": spec.name,
        "trial": 1,
        "sysctls": {},
        "sysctls_read": {},
        "sysctl_label": "",
        "params": params,
        "metrics": metrics,
        "runner": "vng",
        "accelerator": "kvm",
        "host": "builder-1",
        "console_tail": "",
        "repro": f"kmatrix run --kernels {name} --scenarios {spec.name}",
        "verdict": verdict,
        "reason": f"{verdict} as reported",
        "key_figure": key_figure(spec, Classified(Verdict(verdict), "", dict(metrics))),
    }


def run_dir(tmp_path: Path) -> RunData:
    echo, poll, irq = write_scenarios(tmp_path / "scenarios")
    run = tmp_path / "run"
    run.mkdir()
    rundir.write_text_atomic(
        run / "plan.json",
        json.dumps({"scenarios": {s.name: s.to_doc() for s in (echo, poll, irq)}}),
    )
    rows = []
    for k in KERNELS:
        fast = k[0] == "6.1"
        rows.append(cell(echo, k, "success", {"rtt_us": 850.0 if fast else 910.0}, size="64"))
        rows.append(cell(echo, k, "fail" if fast else "success", {"rtt_us": 1200.0}, size="1500"))
        rows.append(cell(poll, k, "success", {"ops": 40000, "depth": 256}))
        rows.append(cell(irq, k, "success", {"ops": 20000 if fast else 30000, "depth": 128}))
    series = [{"t": t * 0.5, "iterations": 0, "inflight": [0, 3, 5, 2][t]} for t in range(4)]
    details = {
        r["cell_id"]: {"status": "ok", "metrics": dict(r["metrics"])}
        for r in rows
        if r["scenario"] != echo.name
    }
    for r in rows:
        if r["scenario"] == echo.name:
            details[r["cell_id"]] = {
                "status": "ok",
                "metrics": dict(r["metrics"]),
                "testcases": CASES,
                "program": {"outcome": "fail", "exit_code": 1},
                "series": series,
            }
    manifest = {
        "run_id": "user-scenarios",
        "kmatrix_version": "0.1.0",
        "started_at": "2026-01-01T00:00:00+00:00",
        "ended_at": "2026-01-01T00:05:00+00:00",
        "command": "kmatrix run --scenario-dir scenarios",
        "host": "builder-1",
        "host_kernel": "6.12.48+deb12-amd64",
        "qemu_version": "QEMU emulator version 7.2.19",
        "config_path": "kernels.toml",
        "kernels": [
            {
                "name": name,
                "kind": "debian",
                "release": release,
                "package_version": release,
                "accelerator": "kvm",
                "runner": "vng",
                "host": "builder-1",
                "boot_s": 4.2,
                "failure": "",
                "console_tail": "",
            }
            for name, release in KERNELS
        ],
        "rules": [["fail", "the program said the behaviour is wrong"]],
        "thresholds": {"success_min_ratio": 0.2},
    }
    return RunData(run, manifest, pd.DataFrame.from_records(rows), details)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("user")
    return report.render_report(run_dir(tmp), tmp / "report")


def section(html: str, scenarios: str) -> str:
    return html.split(f'data-scenarios="{scenarios}"', 1)[1].split("</section>", 1)[0]


def test_the_scenarios_are_not_built_in() -> None:
    assert not {"lava-echo", "ring-poll", "ring-irq"} & set(builtin().names())


def test_a_scenario_without_a_section_gets_its_own_grid(rendered: Path) -> None:
    html = rendered.read_text()
    order = re.findall(r'<section class="scenarios" data-scenarios="([^"]*)"', html)
    assert order == ["lava-echo", "ring-irq ring-poll"]
    grid = section(html, "lava-echo")
    assert "<h2>lava-echo: echo round trips over a veth pair</h2>" in grid
    assert re.findall(r'<th class="mono sortable[^>]*title="([^"(]*)[^>]*>([^<]*)</th>', grid) == [
        ("size=64 ", "64"),
        ("size=1500 ", "1500"),
    ]
    assert '<th class="keys" title="size">size</th>' in grid
    row = grid.split('data-k="6.1 6.1.0-40-amd64"', 1)[1].split("</tr>", 1)[0]
    assert '<a class="v success"' in row and '<a class="v fail"' in row
    assert re.findall(r'<span class="fig">([^<]*)</span>', row) == ["0.850 ms", "1.200 ms"]
    assert "<p><b>lava-echo.</b> Each case sends one datagram" in grid
    assert "In this run lava-echo had 4 cells: 3 success, 1 fail." in grid
    assert "Round trip per kernel: 6.1 0.850 ms to 1.200 ms; 6.12 0.910 ms to 1.200 ms." in grid


def test_a_ratio_between_two_scenarios_makes_a_pair_table(rendered: Path) -> None:
    html = rendered.read_text()
    pair = section(html, "ring-irq ring-poll")
    assert "<h2>Rings: polled vs interrupt-driven" in pair
    assert '<span class="sub">operations per second of each mode</span>' in pair
    heads = re.findall(r'<th class="num">([^<]*)</th>', pair)
    assert heads == [
        "ring-poll operations",
        "ring-irq operations",
        "ring-irq / ring-poll",
        "ring depth ring-poll / ring-irq",
    ]
    assert "<b>0.500</b>" in pair and "<b>0.750</b>" in pair and "256 / 128" in pair
    assert "ratio of operations ranged from 0.500 (6.1) to 0.750 (6.12)" in pair
    assert "More than 0.1 from 0.5, so the mechanism differs on: 6.12." in pair
    assert 'id="matrix"' not in pair


def test_the_filters_offer_every_scenario_and_verdict(rendered: Path) -> None:
    html = rendered.read_text()
    scenarios = html.split('id="sfilter"', 1)[1].split("</select>", 1)[0]
    assert re.findall(r'<option value="([^"]*)"', scenarios) == [
        "",
        "lava-echo",
        "ring-irq",
        "ring-poll",
    ]
    assert '<span class="badge fail">fail 1</span>' in html


def test_a_cell_page_shows_key_figure_test_cases_program_and_plot(rendered: Path) -> None:
    page = (rendered.parent / "cells" / report.page_name("6.1-lava-echo-size1500")).read_text()
    assert "<h1>lava-echo <small>echo round trips over a veth pair</small></h1>" in page
    assert "<dt>params</dt><dd>size=1500</dd>" in page
    assert '<tr><th>round trip</th><td class="num">1.200 ms (1,200 µs)</td></tr>' in page
    cases = page.split("<h2>Test cases", 1)[1].split("</table>", 1)[0]
    rows = re.findall(
        r'<tr><td class="mono">([^<]*)</td><td><span class="badge (\w+)">(\w+)</span></td>'
        r'<td class="num">([^<]*)</td><td>([^<]*)</td></tr>',
        cases,
    )
    assert rows == [
        ("echo-64", "success", "pass", "0.85", "ms"),
        ("echo-mtu", "fail", "fail", "—", ""),
        ("echo-&lt;b&gt;", "skip", "skip", "—", ""),
    ]
    program = page.split("<h2>Program</h2>", 1)[1].split("</table>", 1)[0]
    assert '<tr><th>outcome</th><td class="num">fail</td></tr>' in program
    assert '<tr><th>exit status</th><td class="num">1</td></tr>' in program
    assert "<h2>Inflight<span" in page
    data = page.split('class="plot-data" data-for="series-plot">', 1)[1].split("</script>", 1)[0]
    plot = json.loads(data)
    assert plot["series"][0]["values"] == [0.0, 3.0, 5.0, 2.0] and plot["axes"] == ["inflight"]
    assert "TIME-WAIT" not in page and "per second" not in page


def test_a_scenario_without_a_plot_or_test_cases_shows_neither(rendered: Path) -> None:
    page = (rendered.parent / "cells" / report.page_name("6.1-ring-irq-defaults")).read_text()
    assert "plot-data" not in page and "Test cases" not in page and "<h2>Program</h2>" not in page
    assert '<tr><th>operations</th><td class="num">20,000</td></tr>' in page
    assert '<tr><th>ring depth</th><td class="num">128</td></tr>' in page


def test_the_report_code_names_no_scenario() -> None:
    """The project's rule: no code outside a scenario tests a scenario's name."""
    root = Path(report.__file__).resolve().parents[2]
    sources = [*sorted((root / "matrix" / "report").glob("*.py"))]
    sources += sorted((root / "templates").glob("*.html"))
    names = set(builtin().names()) | {"lava-echo", "ring-poll", "ring-irq"}
    for path in sources:
        text = path.read_text()
        for name in names:
            assert not re.search(rf"[\"']{re.escape(name)}[\"']", text), (path.name, name)
