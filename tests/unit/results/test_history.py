"""Runs over time: matching cells across kernel builds, the previous comparable run,
and the index and diff pages (with guest text that must stay inert)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from matrix.cli import main as cli
from matrix.report.history import render_history
from matrix.results import history

B65 = {"net.ipv4.tcp_max_tw_buckets": "65535"}
B2K = {"net.ipv4.tcp_max_tw_buckets": "2000"}


@pytest.fixture
def runs(make_run: Callable[..., Path], hostile: str) -> dict[str, Path]:
    """r1 and r3 share 6.1/2B (6.1 rebuilt in between); r2 only measured 5.10."""
    r1 = make_run(
        "20260101-000000",
        "2026-01-01T00:00:00+00:00",
        {"6.1": "6.1.0-40-amd64", "5.10": "5.10.0-35-amd64"},
        [
            ("6.1", "2B", B65, 0, "success"),
            ("6.1", "2B", B2K, 0, "success"),
            ("6.1", "1A", {}, 0, "p1"),
            ("5.10", "2B", B65, 0, "hang"),
        ],
    )
    r2 = make_run(
        "20260102-000000",
        "2026-01-02T00:00:00+00:00",
        {"5.10": "5.10.0-35-amd64"},
        [("5.10", "2A", {}, 0, "success")],
    )
    r3 = make_run(
        "20260103-000000",
        "2026-01-03T00:00:00+00:00",
        {"6.1": "6.1.0-41-amd64" + hostile, "5.10": "5.10.0-35-amd64"},
        [
            ("6.1", "2B", B65, 0, "error"),
            ("6.1", "2B", B2K, 0, "success"),
            ("6.1", "2B", B2K, 1, "success"),
            ("5.10", "2B", B65, 0, "hang"),
        ],
    )
    return {"r1": r1, "r2": r2, "r3": r3}


def test_cells_match_across_a_new_kernel_build(runs: dict[str, Path]) -> None:
    a, b = history.summarize(runs["r1"]), history.summarize(runs["r3"])
    ids_a = {s.cell_id for s in a.cells.values() if s.kernel == "6.1"}
    assert not ids_a & {s.cell_id for s in b.cells.values()}
    d = history.diff(a, b)
    assert [(c.before.verdict, c.after.verdict, c.after.name) for c in d.changed] == [
        ("success", "error", "6.1 2B buckets=65535 trial 0")
    ]
    assert [c.name for c in d.added] == ["6.1 2B buckets=2000 trial 1"]
    assert [c.name for c in d.removed] == ["6.1 1A defaults trial 0"]
    assert [(k, old) for k, old, _ in d.releases] == [("6.1", "6.1.0-40-amd64")]
    assert d.unchanged == 2 and d.verdicts_changed and not d.empty


def test_same_run_has_an_empty_diff(runs: dict[str, Path]) -> None:
    a = history.summarize(runs["r1"])
    d = history.diff(a, a)
    assert d.empty and not d.verdicts_changed and d.unchanged == 4


def test_previous_comparable_skips_runs_without_a_shared_kernel_and_scenario(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "runs" / "not-a-run").mkdir()
    found = history.load_runs(tmp_path / "runs")
    assert [r.run_id for r in found] == ["20260101-000000", "20260102-000000", "20260103-000000"]
    r1, r2, r3 = found
    assert history.previous_comparable(found, r3).run_id == r1.run_id
    assert history.previous_comparable(found, r2) is None
    assert history.previous_comparable(found, r1) is None


def test_diff_command_prints_and_fails_only_when_asked(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["diff", str(runs["r1"]), str(runs["r3"])]) == 0
    out = capsys.readouterr().out
    assert "6.1 2B buckets=65535 trial 0" in out and "1 verdicts changed" in out
    assert "\x1b[31m" not in out and "\x07" not in out and "6.1.0-41-amd64<script>" in out
    assert cli.main(["diff", str(runs["r1"]), str(runs["r3"]), "--fail-on-change"]) == 1
    same = ["diff", str(runs["r2"]), str(runs["r2"]), "--fail-on-change"]
    assert cli.main(same) == 0


def test_run_fail_on_change_compares_with_the_previous_comparable_run(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = runs["r1"].parent
    assert cli._verdicts_changed(runs["r3"], root) is True
    assert cli._verdicts_changed(runs["r2"], root) is False
    assert "no previous comparable run" in capsys.readouterr().err


def _inert(html: str) -> None:
    assert "<script>alert" not in html
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", html)


def test_index_and_diff_pages(runs: dict[str, Path], tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    for rid in ("20260101-000000", "20260103-000000"):
        (reports / rid).mkdir(parents=True)
        (reports / rid / "index.html").write_text("matrix")
    index, diff_page = render_history(runs["r3"], reports / "20260103-000000", [runs["r1"].parent])
    assert index == reports / "index.html"
    html = index.read_text()
    _inert(html)
    assert html.index("20260103-000000") < html.index("20260102-000000")
    assert 'href="20260103-000000/index.html"' in html
    assert 'href="20260103-000000/diff.html"' in html
    assert "20260102-000000 <span" in html and "(no report)" in html
    assert "1 verdict changed" in html and "first run of these kernels" in html
    assert "6.1.0-41-amd64&lt;script&gt;alert(1)&lt;/script&gt;redbell" in html
    page = diff_page.read_text()
    _inert(page)
    assert 'href="../20260101-000000/index.html"' in page
    assert "EADDRNOTAVAIL" in page and "&lt;script&gt;" in page
    assert "6.1.0-40-amd64" in page and "Cells only in this run (1)" in page


def test_diff_page_of_a_first_run_says_there_is_nothing_to_compare(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    _, page = render_history(runs["r2"], tmp_path / "reports" / "r2", [runs["r1"].parent])
    assert "nothing to compare with" in page.read_text()
