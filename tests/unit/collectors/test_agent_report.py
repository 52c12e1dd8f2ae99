"""How the agent reads what a program reported: LAVA lines, KTAP/TAP lines, exit
statuses, result.json, and how they add up to one outcome.

collectors/ holds stdlib scripts run inside guests, not modules of the package, so the
module is imported by path. The result.json reads use real files, links and FIFOs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

COLLECTORS = Path(__file__).resolve().parents[3] / "collectors"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"collector_{name}", COLLECTORS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


report = _load("agent_report")


def case(name: str, result: str, source: str, measurement=None, units=None) -> dict:
    return {
        "name": name,
        "result": result,
        "measurement": measurement,
        "units": units,
        "source": source,
    }


# LAVA


def test_lava_lines_as_lava_test_case_prints_them() -> None:
    lines = [
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=connect RESULT=pass>",
        "+ lava-test-case throughput --result pass --measurement 42.5 --units MB/s",
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=throughput RESULT=pass UNITS=MB/s MEASUREMENT=42.5>",
        "noise before <LAVA_SIGNAL_TESTCASE RESULT=FAIL TEST_CASE_ID=late> and after",
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=count RESULT=skip MEASUREMENT=7>",
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=odd RESULT=unknown>",
    ]
    assert report.lava_cases(lines) == [
        case("connect", "pass", "lava"),
        case("throughput", "pass", "lava", 42.5, "MB/s"),
        case("late", "fail", "lava"),
        case("count", "skip", "lava", 7),
        case("odd", "unknown", "lava"),
    ]


@pytest.mark.parametrize(
    "line",
    [
        "<LAVA_SIGNAL_TESTCASE RESULT=pass>",
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x>",
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=passed>",
        "<LAVA_SIGNAL_STARTTC x>",
        "LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=pass",
    ],
)
def test_a_lava_line_lava_would_refuse_is_no_test_case(line: str) -> None:
    assert report.lava_cases([line]) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1.5", 1.5),
        ("-3", -3),
        ("nan", None),
        ("inf", None),
        ("1e999", None),
        ("x", None),
        ("9" * 30, None),
        ("1" * 70, None),
    ],
)
def test_a_measurement_is_a_finite_number_or_none(text: str, value: object) -> None:
    line = f"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=m RESULT=pass MEASUREMENT={text}>"
    assert report.lava_cases([line])[0]["measurement"] == value


def test_names_and_units_are_cut_to_the_hosts_bounds() -> None:
    line = f"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID={'n' * 999} RESULT=pass UNITS={'u' * 999}>"
    [got] = report.lava_cases([line])
    assert len(got["name"]) == report.NAME_CHARS and len(got["units"]) == report.UNITS_CHARS


# KTAP / TAP


KTAP = """\
KTAP version 1
1..5
# a diagnostic line
    KTAP version 1
    1..2
    ok 1 nested_pass
    not ok 2 nested_fail
ok 1 first
not ok 2 second
ok 3 third # SKIP no hardware
ok 4 - fourth
not ok 5 fifth # TODO not written yet
""".splitlines()


def test_ktap_top_level_results_with_directives() -> None:
    cases, seen = report.tap_cases(KTAP)
    assert seen
    assert [(c["name"], c["result"]) for c in cases] == [
        ("first", "pass"),
        ("second", "fail"),
        ("third", "skip"),
        ("fourth", "pass"),
        ("fifth", "skip"),
    ]
    assert {c["source"] for c in cases} == {"ktap"}


def test_kselftest_xfail_is_no_failure_and_timeout_is_an_error() -> None:
    cases, _ = report.tap_cases(["ok 1 x # XFAIL known", "not ok 2 y # TIMEOUT 45 s"])
    assert [c["result"] for c in cases] == ["pass", "error"]


def test_a_bail_out_is_an_error_and_ends_the_plan_check() -> None:
    cases, seen = report.tap_cases(["1..3", "ok 1 a", "Bail out! no network"])
    assert seen
    assert [(c["name"], c["result"]) for c in cases] == [
        ("a", "pass"),
        ("Bail out! no network", "error"),
    ]


def test_a_plan_the_results_miss_is_an_error_and_1_0_is_a_skip() -> None:
    cases, _ = report.tap_cases(["1..3", "ok 1 a", "ok 2 b"])
    assert cases[-1] == case("plan 1..3: 2 results", "error", "ktap")
    cases, seen = report.tap_cases(["1..0 # SKIP not on this kernel"])
    assert seen and cases == [case("plan 1..0 # SKIP not on this kernel", "skip", "ktap")]


def test_tap_without_numbers_or_names() -> None:
    cases, _ = report.tap_cases(["ok", "not ok 7"])
    assert [(c["name"], c["result"]) for c in cases] == [("test", "pass"), ("test 7", "fail")]


def test_lines_that_only_look_like_tap_are_not_tap() -> None:
    lines = ["okay then", "# ok 1 from a nested runner", "  ok 1 indented", "KTAP version 1"]
    assert report.tap_cases(lines) == ([], False)


# exit statuses and the outcome


@pytest.mark.parametrize(
    ("code", "outcome"), [(0, "pass"), (1, "fail"), (4, "skip"), (2, "error"), (127, "error")]
)
def test_kselftest_exit_statuses(code: int, outcome: str) -> None:
    assert report.exit_outcome(code) == outcome
    assert report.outcome(None, [], code) == outcome


def test_any_error_then_any_fail_then_any_pass_else_skip() -> None:
    assert report.combine(["pass", "fail", "error", "skip"]) == "error"
    assert report.combine(["pass", "fail", "skip"]) == "fail"
    assert report.combine(["skip", "pass"]) == "pass"
    assert report.combine(["skip"]) == "skip"
    assert report.combine([]) == "skip"


def test_the_outcome_adds_up_verdict_cases_and_exit_status() -> None:
    passed, failed = case("a", "pass", "lava"), case("b", "fail", "ktap")
    unknown = case("c", "unknown", "lava")
    assert report.outcome(None, [passed, failed], 0) == "fail"
    assert report.outcome(None, [unknown], None) == "skip"
    assert report.outcome(None, [unknown], 0) == "pass"
    assert report.outcome("slowdown", [], 0) == "pass"
    assert report.outcome("hang", [], None) == "pass"
    assert report.outcome("fail", [passed], 0) == "fail"
    assert report.outcome("skip", [], 0) == "pass"
    assert report.outcome("skip", [], 4) == "skip"
    assert report.outcome("error", [failed], 1) == "error"
    assert report.outcome(None, [passed], 2) == "error"


# result.json


def write(directory: Path, text: str) -> Path:
    path = directory / "result.json"
    path.write_text(text)
    return path


def test_result_json_keys_are_taken_and_others_ignored(tmp_path: Path) -> None:
    doc = {
        "metrics": {"x": 1},
        "series": [{"t": 0.0, "n": 1}, {"t": 0.5, "n": 3}],
        "evidence": {"why": "fast"},
        "error": None,
        "verdict": "slowdown",
        "status_detail": "d" * 5000,
        "status": "ok",
        "anything": [1, 2],
    }
    write(tmp_path, json.dumps(doc))
    fields, why = report.read_result_json(str(tmp_path))
    assert why == ""
    assert fields == {
        "metrics": {"x": 1},
        "series": doc["series"],
        "evidence": {"why": "fast"},
        "error": None,
        "verdict": "slowdown",
        "status_detail": "d" * report.DETAIL_CHARS,
    }


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[]", "result.json is not a JSON object"),
        ('{"metrics": [1]}', "metrics is not an object"),
        ('{"series": [{"n": 1}]}', "series[0] is not an object with a numeric t"),
        ('{"series": [{"t": "0"}]}', "series[0] is not an object with a numeric t"),
        ('{"series": {"t": 0}}', "series is not a list"),
        ('{"evidence": "x"}', "evidence is not an object"),
        ('{"error": "EPIPE"}', "error is neither null nor an object"),
        ('{"verdict": "great"}', "verdict is not one of"),
        ('{"status_detail": 3}', "status_detail is not a string"),
        ('{"metrics": {"x": NaN}}', "not valid JSON: NaN is not a number"),
        ('{"metrics": {"x": 1e999}}', "overflows a float"),
        ('{"metrics": ', "not valid JSON"),
        ("[" * 70 + "]" * 70, "nested deeper than 64 levels"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_a_result_json_that_cannot_be_used_says_why(tmp_path: Path, text: str, why: str) -> None:
    write(tmp_path, text)
    fields, got = report.read_result_json(str(tmp_path))
    assert fields is None and why in got


def test_result_json_is_never_followed_or_blocked_on(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"metrics": {"secret": 1}}')
    box = tmp_path / "box"
    box.mkdir()
    assert report.read_result_json(str(box)) == (None, report.NO_RESULT_JSON)
    (box / "result.json").symlink_to(secret)
    assert report.read_result_json(str(box)) == (
        None,
        "result.json is a symbolic link, not a regular file",
    )
    (box / "result.json").unlink()
    os.mkfifo(box / "result.json")
    assert report.read_result_json(str(box)) == (None, "result.json is a FIFO, not a regular file")
    (box / "result.json").unlink()
    (box / "result.json").mkdir()
    assert "a directory, not a regular file" in report.read_result_json(str(box))[1]
    (box / "result.json").rmdir()
    box.rmdir()
    box.symlink_to(tmp_path)
    assert report.read_result_json(str(box)) == (
        None,
        "the result directory was replaced by a link or a file",
    )


def test_a_result_json_over_the_bound_is_refused(tmp_path: Path) -> None:
    with open(tmp_path / "result.json", "wb") as f:
        f.truncate(report.MAX_RESULT_JSON_BYTES + 1)
    fields, why = report.read_result_json(str(tmp_path))
    assert fields is None and why == "result.json is larger than 8,388,608 bytes"
