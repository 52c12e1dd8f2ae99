"""The HTML report: structure of the matrix, cell pages, and that guest text is defanged."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import jinja2
import pandas as pd
import pytest

from matrix.report import render as report
from matrix.results.table import RunData

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "run_small"


def load_fixture() -> RunData:
    return RunData(
        run_dir=FIXTURE,
        manifest=json.loads((FIXTURE / "manifest.json").read_text()),
        table=pd.read_json(FIXTURE / "table.jsonl", lines=True, dtype=False),
        details=json.loads((FIXTURE / "details.json").read_text()),
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    return report.render_report(load_fixture(), out)


def matrix_rows(html: str) -> list[str]:
    body = html.split('id="matrix"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<tr class="[^"]*" data-k="([^"]*)"', body)


def test_matrix_has_a_row_per_kernel_in_version_order(rendered: Path) -> None:
    rows = matrix_rows(rendered.read_text())
    names = [r.split()[0] for r in rows]
    assert names == ["bullseye", "bookworm", "custom", "backports", "host", "sid"]


def test_host_row_is_marked(rendered: Path) -> None:
    html = rendered.read_text()
    assert re.search(r'<tr class="hostrow" data-k="host 6\.18', html)


def kernel_rows(html: str, kernel: str) -> str:
    """A kernel's rows of every scenario's grid, one after the other."""
    return "".join(part.split("</tr>", 1)[0] for part in html.split(f'data-k="{kernel}')[1:])


def test_each_scenario_has_a_grid_of_its_own(rendered: Path) -> None:
    html = rendered.read_text()
    grids = re.findall(
        r'<div class="grid" data-s="([^"]*)">\s*<div [^>]*><table class="matrix" id="([^"]*)"', html
    )
    assert grids == [("2A", "matrix"), ("2B", "matrix-2")]


def test_cells_carry_verdict_classes_and_key_figures(rendered: Path) -> None:
    html = rendered.read_text()
    bullseye = kernel_rows(html, "bullseye")
    assert 'class="v error"' in bullseye and "13,000/s → 0/s" in bullseye
    assert bullseye.count('class="v success"') == 2
    sid = kernel_rows(html, "sid")
    assert sid.count('class="v infra"') == 3


def test_differing_trials_fold_into_one_flaky_cell(rendered: Path) -> None:
    html = rendered.read_text()
    bookworm = kernel_rows(html, "bookworm")
    assert 'class="v hang flaky"' in bookworm
    assert "#1 <b>hang</b>" in bookworm and "#2 <b>slowdown</b>" in bookworm
    assert bookworm.count('<td class="c') == 4


def test_puzzle1_ratio_and_legend(rendered: Path) -> None:
    html = rendered.read_text()
    assert "<b>0.664</b>" in html and "3,973,120" in html and "2,637,824" in html
    assert "kept at least half its early rate to the end" in html
    assert "success_ratio" in html and "QEMU emulator version 7.2.19" in html
    assert "boot timeout after 300 s" in html and "<details>" in html


def section(html: str, scenarios: str) -> str:
    return html.split(f'data-scenarios="{scenarios}"', 1)[1].split("</section>", 1)[0]


def test_sections_come_from_the_manifests_grids_first(rendered: Path) -> None:
    html = rendered.read_text()
    assert re.findall(r'<section class="scenarios" data-scenarios="([^"]*)"', html) == [
        "2A 2B",
        "1A 1B",
    ]
    grid = section(html, "2A 2B")
    assert '<h2>Puzzle 2: TIME-WAIT symmetry<span class="sub">early → late' in grid
    assert 'id="matrix"' in grid and 'class="pairs"' not in grid
    assert '<div class="explain" data-s="2B"><p><b>2B.</b> In 2B the client closes first' in grid
    assert "6 of 11 measured 2B cells on 5 kernels collapsed" in grid
    assert '<details class="per-kernel" open><summary>Per kernel</summary>' in grid
    assert (
        "<li><b>custom</b>: It stopped keeping its rate with buckets=65535 reuse=0 (fell below "
        "0.2x its early rate at 19,500 connections, 13,000/s → 200/s, TIME-WAIT max 14,100)."
        in grid
    )
    pair = section(html, "1A 1B")
    assert '<h2>Puzzle 1: write buffer vs POLLOUT<span class="sub">bytes queued' in pair
    assert "<p>1A calls send() until it returns EAGAIN" in pair and 'id="matrix"' not in pair
    heads = re.findall(r'<th class="num">([^<]*)</th>', pair)
    assert heads == [
        "1A bytes queued",
        "1B bytes queued",
        "1B / 1A",
        "send() calls 1A / 1B",
        "SO_SNDBUF after 1A / 1B",
    ]
    assert pair.count('<td class="num">243 / 161</td>') == 5
    assert pair.count('<td class="num">4,194,304 / 4,194,304</td>') == 5
    assert "1B&#39;s bytes queued was 0.664 of 1A&#39;s on all 5 kernels" in pair
    assert "SO_SNDBUF after: 4,194,304 B" in pair and "within 0.05 of 2/3" in pair


def test_filters_list_every_scenario_and_verdict(rendered: Path) -> None:
    html = rendered.read_text()
    scenarios = html.split('id="sfilter"', 1)[1].split("</select>", 1)[0]
    assert re.findall(r'<option value="([^"]*)"', scenarios) == ["", "1A", "1B", "2A", "2B"]
    verdicts = html.split('id="vfilter"', 1)[1].split("</select>", 1)[0]
    assert re.findall(r'<option value="([^"]*)"', verdicts) == ["", *report.VERDICTS]
    assert {"fail", "skip"} <= set(report.VERDICTS)
    assert '<span class="badge fail">fail 0</span>' in html
    assert "SEV = {infra: 0, skip: 1, success: 2, slowdown: 3, fail: 4, error: 5, hang: 6}" in html
    assert ".fail { background: var(--fail-bg)" in html and ".skip {" in html
    assert "data-p=" not in html


def test_a_folded_cell_is_coloured_by_its_worst_trial() -> None:
    def trial(n: int, verdict: str) -> dict:
        return {"trial": n, "verdict": verdict, "cell_id": f"c{n}", "key_figure": "", "reason": ""}

    assert report.fold([trial(1, "success"), trial(2, "fail")])["verdict"] == "fail"
    assert report.fold([trial(1, "skip"), trial(2, "success")])["verdict"] == "success"
    assert report.fold([trial(1, "error"), trial(2, "hang")])["verdict"] == "hang"
    assert report.fold([trial(1, "infra"), trial(2, "skip")])["verdict"] == "skip"


def test_every_link_to_a_cell_page_exists(rendered: Path) -> None:
    html = rendered.read_text()
    links = set(re.findall(r'href="(cells/[^"]+)"', html))
    assert len(links) == len(load_fixture().table)
    for link in links:
        assert (rendered.parent / link).is_file(), link


def test_cell_page_has_plot_evidence_and_repro(rendered: Path) -> None:
    page = (rendered.parent / "cells" / "bookworm-2B-buckets65535_reuse0-t1.html").read_text()
    plot = plot_data(page)
    assert [s["label"] for s in plot["series"]] == ["connections/s", "TIME-WAIT"]
    assert plot["axes"] == ["connections/s", "TIME-WAIT"] and plot["xlabel"] == "seconds"
    assert len(plot["x"]) == len(plot["series"][0]["values"]) == len(plot["series"][1]["values"])
    assert "<h2>Connections per second and TIME-WAIT<span" in page
    assert '<script src="../assets/uPlot.iife.min.js"></script>' in page
    assert "__inet_hash_connect" in page and "TcpExtTW" in page
    assert "kmatrix run --kernel bookworm --scenario 2B" in page


def plot_data(page: str) -> dict:
    """The plot a page embeds for the browser to draw, as the browser will parse it."""
    found = re.search(
        r'<script type="application/json" class="plot-data"[^>]*>([^<]*)</script>', page
    )
    assert found, "no plot data in the page"
    return json.loads(found.group(1))


def test_the_plot_assets_are_copied_into_the_report(rendered: Path) -> None:
    assets = rendered.parent / "assets"
    assert sorted(p.name for p in assets.iterdir()) == [
        "plot.js",
        "uPlot.LICENSE",
        "uPlot.iife.min.js",
        "uPlot.min.css",
    ]
    assert (
        (assets / "uPlot.iife.min.js")
        .read_text()
        .startswith("/*! https://github.com/leeoniya/uPlot (v1.6.31) */")
    )
    html = rendered.read_text()
    assert '<link rel="stylesheet" href="assets/uPlot.min.css">' in html
    assert "https://" not in html.split("<body>", 1)[1].replace("https://github.com", "")


def test_the_matrix_page_plots_each_scenario_across_kernels(rendered: Path) -> None:
    html = rendered.read_text()
    plots = re.findall(
        r'<script type="application/json" class="plot-data" '
        r'data-for="(kplot-\d+)">([^<]*)</script>',
        html,
    )
    specs = {k: json.loads(v) for k, v in plots}
    ratio = specs["kplot-2"]
    assert ratio["categories"] == ["bullseye", "bookworm", "custom", "backports", "host", "sid"]
    assert ratio["axes"] == ["late / early rate"] and ratio["hlines"][0]["y"] == 0.2
    lines = {s["label"]: s["values"] for s in ratio["series"]}
    assert set(lines) == {"buckets=2000 reuse=0", "buckets=65535 reuse=0"}
    assert lines["buckets=65535 reuse=0"][-1] is None
    pair = specs["kplot-3"]
    assert pair["axes"] == ["1B / 1A"] and pair["hlines"][0]["label"] == "expected 2/3"
    assert [round(v, 3) for v in pair["series"][0]["values"][:5]] == [0.664] * 5


def test_cell_page_key_metrics_come_from_the_manifest_and_the_rule(rendered: Path) -> None:
    page = (rendered.parent / "cells" / "bullseye-2B-buckets65535_reuse0-t1.html").read_text()
    keys = page.split("<h2>Key metrics</h2>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><th>([^<]*)</th><td class=\"num\">([^<]*)</td></tr>", keys)
    assert rows == [
        ("iterations", "14,100"),
        ("elapsed (s)", "25.00"),
        ("TIME-WAIT max", "14,100"),
        ("early rate (/s)", "13,000"),
        ("late rate (/s)", "0"),
        ("late / early", "0.000"),
        ("system time share", "0.930"),
        ("error", "EADDRNOTAVAIL"),
        ("error at iteration", "28,232"),
    ]


def test_a_scenario_without_a_plot_shows_none(rendered: Path) -> None:
    page = (rendered.parent / "cells" / "bookworm-1A-defaults-t1.html").read_text()
    assert "<svg" not in page and "per second" not in page
    assert '<tr><th>bytes queued</th><td class="num">3.97 MB (3,973,120 B)</td></tr>' in page
    assert '<tr><th>send() calls</th><td class="num">243</td></tr>' in page
    assert "early rate" not in page


def test_cell_page_flags_a_sysctl_that_did_not_take(rendered: Path) -> None:
    page = (rendered.parent / "cells" / "backports-2A-defaults-t1.html").read_text()
    assert '<tr class="problem">' in page and "did not take: wrote 1, read 2" in page


HOSTILE = ("<script>alert", "<img src=x", "<b>bold", "<b>not syncing")


def test_hostile_strings_are_escaped_and_cleaned_everywhere(rendered: Path) -> None:
    pages = [rendered, *sorted((rendered.parent / "cells").glob("*.html"))]
    seen_escaped = False
    for page in pages:
        html = page.read_text()
        for raw in HOSTILE:
            assert raw not in html, (page.name, raw)
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", html), page.name
        seen_escaped |= "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert seen_escaped
    assert "6.9.0-rc1&lt;b&gt;bold&lt;/b&gt;" in rendered.read_text()


def test_clean_strips_terminal_escapes_and_control_characters() -> None:
    assert report.clean("a\x1b[31mred\x1b[0m\x07b\r\n") == "aredb\n"
    assert report.clean("\x1b]0;title\x07x\u202eevil") == "xevil"
    assert report.clean(3) == 3


def test_clean_skips_only_strings_the_scrub_would_leave_alone() -> None:
    """The fast path (a printable string is returned as it is) must never skip a
    character the scrub removes."""
    from matrix.collect import sanitize

    stripped = [chr(c) for c in range(0x3000) if sanitize.clean(f"a{chr(c)}b") != f"a{chr(c)}b"]
    assert "\x1b" in stripped and "\u202e" in stripped and "\u200b" in stripped
    assert not any(f"a{ch}b".isprintable() for ch in stripped)
    assert all(report.clean(f"a{ch}b") == sanitize.clean(f"a{ch}b") for ch in stripped)


def test_natural_sort_of_releases() -> None:
    releases = ["6.12.48+deb12-amd64", "5.10.0-35-amd64", "6.1.0-40-amd64", "6.9.0"]
    assert sorted(releases, key=report.natural_key) == [
        "5.10.0-35-amd64",
        "6.1.0-40-amd64",
        "6.9.0",
        "6.12.48+deb12-amd64",
    ]


def test_missing_manifest_field_raises(tmp_path: Path) -> None:
    run = load_fixture()
    manifest = {k: v for k, v in run.manifest.items() if k != "host_kernel"}
    with pytest.raises(jinja2.UndefinedError):
        report.render_report(replace(run, manifest=manifest), tmp_path)


def test_many_cells_render_through_the_worker_pool(tmp_path: Path) -> None:
    run = load_fixture()
    p2 = run.table[run.table["scenario"].isin(["2A", "2B"]) & (run.table["verdict"] != "infra")]
    copies = []
    for i in range(4):
        copy = p2.copy()
        copy["cell_id"] = copy["cell_id"] + f"-x{i}"
        copy["trial"] = copy["trial"] + 10 * (i + 1)
        copies.append(copy)
    table = pd.concat([run.table, *copies], ignore_index=True)
    details = dict(run.details)
    for copy in copies:
        for cid in copy["cell_id"]:
            details[cid] = run.details[cid.rsplit("-x", 1)[0]]
    assert len(table) >= 64
    index = report.render_report(replace(run, table=table, details=details), tmp_path)
    assert len(list((tmp_path / "cells").glob("*.html"))) == len(table)
    assert plot_data((tmp_path / "cells" / f"{copies[0]['cell_id'].iloc[0]}.html").read_text())
    assert index.is_file()


def test_interval_rates_skip_gaps_and_stalled_clocks() -> None:
    from matrix.report.plots import interval_rates

    series = [
        {"t": 0, "iterations": 0},
        {"t": 0, "iterations": 5},
        {"t": 1, "iterations": None},
        {"t": 2, "iterations": 25},
        {"t": 2.5, "iterations": 25},
    ]
    assert interval_rates(series) == ([2.0, 2.5], [10.0, 0.0])


def test_a_field_that_is_no_counter_is_plotted_as_its_value() -> None:
    from matrix.report.plots import traces, values

    series = [{"t": 0, "bps": 2e9}, {"t": 1, "bps": None}, {"t": 2, "bps": 1e9, "tw": 3}]
    assert values(series, "bps", 1e-9) == ([0.0, 2.0], [2.0, 1.0])
    main, tw = traces(series, "bps", rate=False, label="Gbit/s", scale=1e-9)
    assert (main.values, main.label, tw.values, tw.label) == (
        [2.0, 1.0],
        "Gbit/s",
        [3.0],
        "TIME-WAIT",
    )
    assert traces(series, "other", rate=True, label="x/s") == [tw]


def test_a_cell_plot_is_data_on_one_time_axis_with_the_stall() -> None:
    from matrix.report.plots import time_plot, traces

    series = [{"t": i * 0.5, "iterations": 100 * i, "tw": 100 * i} for i in range(5)]
    plot = time_plot(traces(series, "iterations", rate=True, label="conns/s"), stall_t=1.5)
    assert plot["x"] == [0.0, 0.5, 1.0, 1.5, 2.0]
    rate, tw = plot["series"]
    assert rate["values"] == [None, 200.0, 200.0, 200.0, 200.0] and rate["axis"] == 0
    assert tw["values"] == [0.0, 100.0, 200.0, 300.0, 400.0] and tw["axis"] == 1
    assert plot["vlines"] == [{"x": 1.5, "colour": "#dc2626", "label": "stall"}]
    assert time_plot([]) is None
    one = time_plot(traces([{"t": 0, "v": 1.5}, {"t": 1, "v": 0.5}], "v", False, "ms"))
    assert [s["label"] for s in one["series"]] == ["ms"] and one["vlines"] == []


def test_plot_json_cannot_end_its_script_element() -> None:
    from matrix.report.plots import category_plot, plot_json

    plot = category_plot(["6.1</script><b>", "a&b"], [("x\x1b[31m", [1.0, None])], "y")
    text = str(plot_json(plot))
    assert "<" not in text and ">" not in text and "&" not in text
    back = json.loads(text)
    assert back["categories"] == ["6.1</script><b>", "a&b"]
    assert back["series"][0]["label"] == "x" and back["series"][0]["values"] == [1.0, None]
    assert category_plot(["6.1"], [("x", [None])], "y") is None


def test_column_heads_show_only_what_varies_and_name_it_once() -> None:
    def row(label: str, **params: str) -> dict:
        return {"sysctl_label": label, "params": params, "sysctls": {"net.ipv4.x": "1"}}

    heads = report.column_heads(
        [row("ports=1-2 buckets=2000 reuse=0"), row("ports=1-2 buckets=65535 reuse=0")]
    )
    assert [h["text"] for h in heads["heads"]] == ["2000", "65535"]
    assert heads["axis"] == "buckets" and heads["common"] == "ports=1-2 reuse=0"
    assert heads["heads"][0]["title"].startswith("ports=1-2 buckets=2000 reuse=0 (net.ipv4.x=1")
    mixed = report.column_heads([row("buckets=1"), row("reuse=0", size="64")])
    assert [h["text"] for h in mixed["heads"]] == ["buckets=1", "reuse=0 · size=64"]
    assert mixed["axis"] == "" and mixed["common"] == ""
    alone = report.column_heads([row("", size="64")])
    assert [h["text"] for h in alone["heads"]] == ["64"] and alone["axis"] == "size"
