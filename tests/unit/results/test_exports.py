"""JUnit and JSONL exports: structure CI systems read, and guest text that cannot break them."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from matrix.cli import main as cli
from matrix.results import exports
from matrix.results import table as results
from matrix.run import job


@pytest.fixture
def run_dir(make_run: Callable[..., Path], hostile: str) -> Path:
    buckets = {"net.ipv4.tcp_max_tw_buckets": "65535"}
    return make_run(
        "r1",
        "2026-01-01T00:00:00+00:00",
        {"6.1": "6.1.0-40-amd64", "evil": "6.9" + hostile},
        [
            ("6.1", "1A", {}, 0, "p1"),
            ("6.1", "2B", buckets, 0, "success"),
            ("6.1", "2B", buckets, 1, "slowdown"),
            ("evil", "2B", buckets, 0, "hang"),
            ("evil", "2B", buckets, 1, "error"),
            ("evil", "2A", {}, 0, "infra"),
        ],
    )


def rows_of(run_dir: Path) -> list[dict]:
    return results.load_run(run_dir).table.to_dict(orient="records")


def test_junit_has_a_suite_per_kernel_and_a_case_per_cell(run_dir: Path) -> None:
    root = ET.fromstring(exports.junit_xml(rows_of(run_dir), "r1"))
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("6", "2", "1")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"6.1", "evil"}
    good = suites["6.1"]
    assert (good.get("tests"), good.get("failures"), good.get("skipped")) == ("3", "0", "0")
    names = [c.get("name") for c in good.findall("testcase")]
    assert names == ["1A defaults trial 0", "2B buckets=65535 trial 0", "2B buckets=65535 trial 1"]
    assert {c.get("classname") for c in good.findall("testcase")} == {"kmatrix.6.1"}


def test_verdicts_map_to_failure_skipped_and_pass(run_dir: Path) -> None:
    root = ET.fromstring(exports.junit_xml(rows_of(run_dir), "r1"))
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    slow = cases[("kmatrix.6.1", "2B buckets=65535 trial 1")]
    assert slow.find("failure") is None and slow.find("skipped") is None
    out = slow.find("system-out").text
    assert "verdict: slowdown" in out and "1,000/s → 10/s" in out and "rate fell from" in out
    hang = cases[("kmatrix.evil", "2B buckets=65535 trial 0")].find("failure")
    assert hang.get("type") == "hang" and "no progress" in hang.get("message")
    error = cases[("kmatrix.evil", "2B buckets=65535 trial 1")].find("failure")
    assert error.get("type") == "error" and "EADDRNOTAVAIL" in error.get("message")
    skipped = cases[("kmatrix.evil", "2A defaults trial 0")].find("skipped")
    assert skipped.get("message").startswith("infra: no result")


def test_hostile_guest_text_is_escaped_and_stripped(run_dir: Path) -> None:
    text = exports.junit_xml(rows_of(run_dir), "r1\x07<x>")
    root = ET.fromstring(text)
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "\x1b" not in text and "\x07" not in text and "[31m" not in text
    error = [f for f in root.iter("failure") if f.get("type") == "error"][0]
    assert "<script>alert(1)</script>redbell" in error.get("message")
    release = root.find("testsuite[@name='evil']/properties/property[@name='kernel_release']")
    assert release.get("value") == "6.9<script>alert(1)</script>redbell"


def test_every_xml_invalid_character_is_removed() -> None:
    raw = "a\x00b\x0bc\x1fd\ud800e\ufffef\x1b[1mg\tnewline\n"
    assert exports.xml_text(raw) == "abcdefg\tnewline\n"
    row = {"kernel": "k\x01", "scenario": "2B", "trial": 0, "verdict": "error", "reason": raw}
    ET.fromstring(exports.junit_xml([row], "r"))


def test_jsonl_is_the_results_json_lines(run_dir: Path) -> None:
    rows = rows_of(run_dir)
    lines = exports.jsonl(rows).splitlines()
    assert lines == results.json_lines(rows)
    docs = [json.loads(line) for line in lines]
    assert [d["verdict"] for d in docs] == [r["verdict"] for r in rows]
    assert docs[0]["bytes_queued"] == 3_973_120


def test_finish_run_writes_junit_next_to_jsonl(run_dir: Path) -> None:
    job.finish_run(run_dir, interrupted=False)
    assert (run_dir / "results.jsonl").is_file()
    root = ET.parse(run_dir / "results.junit.xml").getroot()
    assert root.get("tests") == "6"


def test_export_command_writes_stdout_or_a_file(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["export", str(run_dir), "--format", "junit"]) == 0
    assert ET.fromstring(capsys.readouterr().out).get("tests") == "6"
    out = tmp_path / "r.jsonl"
    assert cli.main(["export", str(run_dir), "--format", "jsonl", "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 6
    assert cli.main(["export", str(tmp_path / "nope"), "--format", "junit"]) == 2
