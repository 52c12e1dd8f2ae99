"""`kmatrix export --format kcidb`: the document validates against the KCIDB I/O schema
(kcidb-io, the newest 5.x it knows), for a recorded host run and for every verdict."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import kcidb_io
import pytest

from matrix.cli import main as cli
from matrix.results import kcidb
from matrix.results import table as results

RECORDED = Path(__file__).parents[2] / "fixtures" / "run_host_recorded"
SCHEMA = kcidb_io.schema.V5_3


def test_the_export_targets_the_newest_v5_schema_kcidb_io_knows() -> None:
    newest = kcidb_io.schema.LATEST
    assert newest.major == 5 and (newest.major, newest.minor) == (SCHEMA.major, SCHEMA.minor)
    assert (kcidb.VERSION["major"], kcidb.VERSION["minor"]) == (SCHEMA.major, SCHEMA.minor)


def test_a_recorded_host_run_is_a_valid_kcidb_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "kcidb.json"
    assert cli.main(["export", str(RECORDED), "--format", "kcidb", "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    SCHEMA.validate(doc)
    assert [c["id"] for c in doc["checkouts"]] == ["kmatrix:run"]
    assert [(b["id"], b["checkout_id"], b["status"]) for b in doc["builds"]] == [
        ("kmatrix:run:host", "kmatrix:run", "PASS")
    ]
    tests = {t["path"]: t for t in doc["tests"]}
    assert len(doc["tests"]) == 6 and len({t["id"] for t in doc["tests"]}) == 6
    assert {t["build_id"] for t in doc["tests"]} == {"kmatrix:run:host"}
    assert set(tests) == {
        "kmatrix.1A",
        "kmatrix.1B",
        *(
            f"kmatrix.{s}.ip_local_port_range-40000_40999.tcp_max_tw_buckets-{b}.tcp_tw_reuse-0"
            for s in ("2A", "2B")
            for b in (200, 65535)
        ),
    }
    one_a = tests["kmatrix.1A"]
    assert one_a["status"] == "PASS" and one_a["number"]["unit"] == "B"
    assert one_a["number"]["value"] == one_a["misc"]["metrics"]["bytes_queued"]
    crawl = tests[
        "kmatrix.2B.ip_local_port_range-40000_40999.tcp_max_tw_buckets-65535.tcp_tw_reuse-0"
    ]
    rows = {r["cell_id"]: r for r in results.load_run(RECORDED).table.to_dict(orient="records")}
    assert crawl["status"] == kcidb.STATUS[rows[crawl["misc"]["cell_id"]]["verdict"]]
    assert crawl["number"] == {"value": crawl["misc"]["metrics"]["late_rate"], "unit": "conns/s"}
    assert one_a["start_time"].endswith("+00:00") and one_a["duration"] >= 0


def test_every_verdict_maps_to_its_status(make_run: Callable[..., Path]) -> None:
    run = make_run(
        "20260101-000000",
        "2026-01-01T00:00:00+00:00",
        {"6.1": "6.1.0-40-amd64"},
        [
            ("6.1", "2B", {"net.ipv4.tcp_max_tw_buckets": "2000"}, 0, "success"),
            ("6.1", "2B", {"net.ipv4.tcp_max_tw_buckets": "65535"}, 0, "slowdown"),
            ("6.1", "2B", {"net.ipv4.tcp_max_tw_buckets": "65535"}, 1, "hang"),
            ("6.1", "2B", {"net.ipv4.tcp_max_tw_buckets": "65535"}, 2, "error"),
            ("6.1", "2A", {"net.ipv4.tcp_max_tw_buckets": "65535"}, 0, "infra"),
            ("6.1", "1A", {}, 0, "p1"),
        ],
    )
    doc = kcidb.document(results.load_run(run))
    SCHEMA.validate(doc)
    got = [(t["misc"]["verdict"], t["status"]) for t in doc["tests"]]
    assert got == [
        ("success", "PASS"),
        ("slowdown", "FAIL"),
        ("hang", "FAIL"),
        ("error", "ERROR"),
        ("infra", "MISS"),
        ("success", "PASS"),
    ]
    assert "number" in doc["tests"][1] and "number" not in doc["tests"][4], "none for a MISS"
    assert "log_excerpt" not in doc["tests"][0] and "log_excerpt" not in doc["tests"][5]
    trials = [t["path"] for t in doc["tests"][1:4]]
    assert trials == ["kmatrix.2B.tcp_max_tw_buckets-65535"] * 3, "trials share a path"
    assert doc["builds"][0]["architecture"] == "x86_64"
    text = kcidb.dumps(doc)
    assert "</script>redbell" in text, "the guest's text, cleaned"
    assert "\\u001b" not in text and "\\u0007" not in text


@pytest.mark.parametrize("status", ["fail", "skip"])
def test_program_verdicts_fail_and_skip(status: str) -> None:
    assert kcidb.STATUS[status] == status.upper()


def test_paths_are_valid_words_for_any_sysctl_or_parameter() -> None:
    path = kcidb.test_path(
        "my-probe",
        {
            "net.ipv4.ip_local_port_range": "32768 60999",
            "net.ipv4.conf.all.forwarding": "1",
            "net.ipv6.conf.all.forwarding": "0",
            "net.core.fixed": "9",
        },
        {"size": "64 KiB", "mode": "a.b"},
        {"net.core.fixed"},
    )
    assert path == (
        "kmatrix.my-probe.ip_local_port_range-32768_60999"
        ".net_ipv4_conf_all_forwarding-1.net_ipv6_conf_all_forwarding-0"
        ".size-64_KiB.mode-a_b"
    )
    assert SCHEMA.path_re.fullmatch(path)


def test_the_validator_rejects_what_the_schema_forbids() -> None:
    """The check above is not vacuous: a bad path or origin fails validation."""
    doc = kcidb.document(results.load_run(RECORDED))
    for key, bad in (("path", "kmatrix..1A"), ("origin", "KMatrix")):
        broken = json.loads(json.dumps(doc))
        broken["tests"][0][key] = bad
        with pytest.raises(Exception, match="does not match"):
            SCHEMA.validate(broken)
