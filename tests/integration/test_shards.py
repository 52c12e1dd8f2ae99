"""Shards end to end on the running kernel: `run --shard 1/2` and `2/2`, merged, are the
run `kmatrix run` makes in one go, and every command works on the merged run.

1A and 1B with three trials: quick (send() until the buffer is full), and one kernel is
fewer kernels than shards, so the host kernel's cells are split between the shards, a
setting's trials staying together.
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
[settings]
runs_dir = "runs"
reports_dir = "reports"
[sweep]
scenarios = ["1A", "1B"]
trials = 3
[[kernel]]
name = "host"
source = "host"
"""
RUN = ("run", "--kernels", "host", "--scenarios", "1A,1B", "--no-report")


def kmatrix(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "matrix", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def table(run: Path, cwd: Path) -> list[dict]:
    proc = kmatrix("results", str(run), "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    tmp = tmp_path_factory.mktemp("shards")
    (tmp / "kernels.toml").write_text(CONFIG)
    whole = tmp / "whole"
    proc = kmatrix(*RUN, "--out", str(whole), cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    shards = []
    for i in (1, 2):
        shards.append(tmp / "shards" / f"s{i}")
        proc = kmatrix(*RUN, "--shard", f"{i}/2", "--out", str(shards[-1]), cwd=tmp)
        assert proc.returncode == 0, proc.stderr
        assert f"shard {i}/2: 3 of 6 cells" in proc.stderr
    merged = tmp / "runs" / "merged"
    proc = kmatrix("merge", *map(str, reversed(shards)), "--out", str(merged), cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return tmp, whole, [merged, *shards]


def test_merged_shards_have_the_cells_and_verdicts_of_one_run(runs: tuple) -> None:
    tmp, whole, (merged, *shards) = runs
    one = [(r["cell_id"], r["scenario"], r["trial"], r["verdict"]) for r in table(whole, tmp)]
    assert [
        (r["cell_id"], r["scenario"], r["trial"], r["verdict"]) for r in table(merged, tmp)
    ] == one
    assert {v for *_, v in one} == {"success"}
    parts = [{(r["scenario"], r["trial"]) for r in table(s, tmp)} for s in shards]
    assert parts == [{("1A", t) for t in range(3)}, {("1B", t) for t in range(3)}]


def test_the_merged_run_has_one_manifest_batches_and_a_report(runs: tuple) -> None:
    tmp, _, (merged, *_) = runs
    man = json.loads((merged / "manifest.json").read_text())
    assert [s["index"] for s in man["shards"]] == [1, 2] and not man["interrupted"]
    assert sorted(p.name for p in (merged / "batches").glob("*.json")) == [
        "host+s2.json",
        "host.json",
    ]
    assert (merged / "results.jsonl").is_file() and (merged / "results.junit.xml").is_file()
    assert (tmp / "reports" / "merged" / "index.html").is_file()
    assert (tmp / "reports" / "merged" / "diff.html").is_file()


def test_export_and_diff_work_on_the_merged_run(runs: tuple) -> None:
    tmp, whole, (merged, *_) = runs
    for fmt in ("junit", "jsonl", "kcidb"):
        proc = kmatrix("export", str(merged), "--format", fmt, cwd=tmp)
        assert proc.returncode == 0 and proc.stdout, proc.stderr
    doc = json.loads(kmatrix("export", str(merged), "--format", "kcidb", cwd=tmp).stdout)
    assert {t["path"] for t in doc["tests"]} == {"kmatrix.1A", "kmatrix.1B"}
    proc = kmatrix("diff", str(whole), str(merged), "--fail-on-change", "verdict", cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 verdicts changed" in proc.stdout and "6 unchanged" in proc.stdout
    assert "of 2 tested" in proc.stdout, "1A and 1B's bytes_queued over three trials each"


def test_shards_of_another_plan_are_refused(runs: tuple) -> None:
    tmp, _, (_, first, _) = runs
    other = tmp / "shards" / "other"
    proc = kmatrix(*RUN, "--trials", "1", "--shard", "2/2", "--out", str(other), cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    proc = kmatrix("merge", str(first), str(other), "--out", str(tmp / "bad"), cwd=tmp)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"kmatrix: error: {other}: a different plan from {first}: cells 2 here, 6 there"
    )


def test_resume_of_the_merged_run_measures_only_what_is_missing(runs: tuple) -> None:
    tmp, _, (merged, *_) = runs
    victim = table(merged, tmp)[4]["cell_id"]
    (merged / "cells" / f"{victim}.json").unlink()
    proc = kmatrix("run", "--resume", str(merged), "--no-report", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert "1 cells left" in proc.stderr
    assert (merged / "cells" / f"{victim}.json").is_file()
    assert {r["verdict"] for r in table(merged, tmp)} == {"success"}
