"""Metric changes in `kmatrix diff` and the diff page: synthetic runs with several trials
per cell, with a known shift, with none, and between two kernels of one run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from matrix.cli import main as cli
from matrix.report.history import render_history
from matrix.results import history

Values = dict[str, dict[str, list[float]]]
"""kernel -> scenario -> one value per trial: 1A's bytes_queued, 2B's connection rate."""


def _series(rate: float) -> list[dict]:
    return [
        {"t": float(t), "iterations": int(rate * t), "tw": 0, "state": "R", "wchan": ""}
        for t in range(11)
    ]


def write_run(root: Path, run_id: str, started: str, values: Values) -> Path:
    """A run directory whose cells measured exactly `values` (one cell per trial)."""
    run = root / run_id
    (run / "cells").mkdir(parents=True)
    (run / "batches").mkdir()
    cells = []
    for kernel, scenarios in values.items():
        for scenario, trials in scenarios.items():
            for trial, v in enumerate(trials):
                cid = hashlib.sha256(f"{run_id}{kernel}{scenario}{trial}".encode()).hexdigest()
                cid = cid[:16]
                cells.append(
                    {
                        "id": cid,
                        "kernel": kernel,
                        "scenario": scenario,
                        "sysctls": {},
                        "trial": trial,
                        "window_s": 10.0,
                        "iteration_cap": 200000,
                        "stall_s": 3.0,
                        "sample_s": 0.2,
                    }
                )
                doc = {"cell_id": cid, "scenario": scenario, "status": "ok", "error": None}
                if scenario == "1A":
                    doc["metrics"] = {"bytes_queued": v, "sends": 200}
                else:
                    doc["series"] = _series(v)
                    doc["metrics"] = {"iterations": int(v * 10), "elapsed_s": 10.0}
                (run / "cells" / f"{cid}.json").write_text(json.dumps(doc))
        batch = {"runner": "vng", "accelerator": "kvm", "host": "b", "failure": ""}
        (run / "batches" / f"{kernel}.json").write_text(json.dumps(batch))
    kernels = [{"name": k, "kind": "debian", "release": f"{k}.0-1-amd64"} for k in values]
    plan = {"cells": cells, "kernels": kernels, "fixed_sysctls": []}
    (run / "plan.json").write_text(json.dumps(plan))
    manifest = {"run_id": run_id, "started_at": started, "ended_at": started}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


BEFORE: Values = {
    "6.1": {"1A": [4_000_000, 4_040_000, 3_980_000], "2B": [1000, 1010, 990, 1005, 995]},
    "6.12": {"1A": [4_000_000, 4_010_000, 3_990_000]},
}


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """r2: 6.1's 1A queues 30% less, its 2B rate (and so its count) rises 20%; 6.12's 1A
    moves by noise within 1%."""
    after: Values = {
        "6.1": {"1A": [2_800_000, 2_820_000, 2_790_000], "2B": [1200, 1215, 1190, 1205, 1195]},
        "6.12": {"1A": [4_020_000, 3_995_000, 4_005_000]},
    }
    r1 = write_run(tmp_path / "runs", "r1", "2026-01-01T00:00:00+00:00", BEFORE)
    r2 = write_run(tmp_path / "runs", "r2", "2026-01-02T00:00:00+00:00", after)
    return r1, r2


def called(d: history.RunDiff) -> set[tuple[str, str, str, str]]:
    return {(m.name, m.metric.name, m.direction, m.comparison.test) for m in d.metric_changes}


def test_a_known_shift_is_called_with_its_direction(runs: tuple[Path, Path]) -> None:
    d = history.diff(history.summarize(runs[0]), history.summarize(runs[1]))
    assert called(d) == {
        ("6.1 1A defaults", "bytes_queued", "worse", "bootstrap"),
        ("6.1 2B defaults", "iterations", "better", "U"),
        ("6.1 2B defaults", "early_rate", "better", "U"),
        ("6.1 2B defaults", "late_rate", "better", "U"),
    }
    assert not d.verdicts_changed and d.metrics_changed and not d.empty
    q = next(m for m in d.metric_changes if m.metric.name == "bytes_queued")
    assert q.comparison.change == pytest.approx(-0.30)
    compared = {(m.name, m.metric.name) for m in d.metrics}
    assert ("6.12 1A defaults", "bytes_queued") in compared and d.metrics_testable == len(compared)


def test_identical_runs_call_nothing(runs: tuple[Path, Path], tmp_path: Path) -> None:
    same = write_run(tmp_path / "other", "r1b", "2026-01-03T00:00:00+00:00", BEFORE)
    d = history.diff(history.summarize(runs[0]), history.summarize(same))
    assert d.metrics and not d.metric_changes and d.empty


def test_one_trial_per_cell_is_compared_but_never_called(tmp_path: Path) -> None:
    a = write_run(tmp_path, "a", "2026-01-01", {"6.1": {"1A": [4_000_000]}})
    b = write_run(tmp_path, "b", "2026-01-02", {"6.1": {"1A": [1_000_000]}})
    d = history.diff(history.summarize(a), history.summarize(b))
    assert [m.comparison.test for m in d.metrics] == ["too few trials"]
    assert not d.metrics_changed and d.metrics_testable == 0


@pytest.mark.parametrize(
    ("flags", "code"),
    [
        ([], 0),
        (["--fail-on-change"], 0),
        (["--fail-on-change", "verdict"], 0),
        (["--fail-on-change", "metric"], 1),
        (["--fail-on-change", "any"], 1),
        (["--fail-on-change", "metric", "--min-change", "40%"], 0),
        (["--fail-on-change", "metric", "--min-change", "25"], 1),
    ],
)
def test_fail_on_change_verdict_metric_or_any(
    runs: tuple[Path, Path], flags: list[str], code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["diff", str(runs[0]), str(runs[1]), *flags]) == code
    out = capsys.readouterr().out
    if "--min-change" not in flags:
        assert "metric: 6.1 1A defaults: bytes queued 4.00 MB -> 2.80 MB, -30.0%" in out
        assert "4 metrics changed of 5 tested (min change 5%, alpha 0.05)" in out


def test_bad_thresholds_are_refused(
    runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for flags in (["--min-change", "five"], ["--alpha", "1.5"], ["--fail-on-change", "x"]):
        with pytest.raises(SystemExit) as e:
            cli.main(["diff", str(runs[0]), str(runs[1]), *flags])
        assert e.value.code == 2
    capsys.readouterr()


def test_two_kernels_of_one_run(
    runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["diff", str(runs[1]), "--kernels", "6.12,6.1", "--fail-on-change", "metric"]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "metric: 6.12 → 6.1 1A defaults: bytes queued 4.00 MB -> 2.80 MB, -30.1%" in out
    assert "5 cells added" in out, "6.1's 2B has no counterpart on 6.12"
    same = ["diff", str(runs[0]), "--kernels", "6.1,6.12", "--fail-on-change", "metric"]
    assert cli.main(same) == 0
    assert cli.main(["diff", str(runs[0]), "--kernels", "6.1,7.0"]) == 2
    assert "no kernel '7.0' in this run; it has 6.1, 6.12" in capsys.readouterr().err
    assert cli.main(["diff", str(runs[0])]) == 2


def test_run_fail_on_change_metric_uses_the_previous_comparable_run(
    runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = runs[0].parent
    assert cli._verdicts_changed(runs[1], root, "metric") is True
    assert cli._verdicts_changed(runs[1], root, "verdict") is False
    assert cli._verdicts_changed(runs[1], root, "metric", min_change=0.5) is False
    capsys.readouterr()


def test_the_diff_page_lists_metric_changes(runs: tuple[Path, Path], tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    index, page = render_history(runs[1], reports / "r2", [runs[0].parent])
    html = page.read_text()
    assert "4 metrics changed" in html and 'id="metric-changes"' in html
    changes = html.split('id="metric-changes"')[1].split("</table>")[0]
    assert changes.count("<tr>") == 5, "a header and four called changes"
    assert "-30.0%" in changes and "bootstrap" in changes and "worse" in changes
    assert "Every compared metric (5)" in html
    assert "4 metrics changed" in index.read_text()
