"""Any JSON a guest can write goes through load -> classify -> table -> report as one
infra row with the reason, and never costs the run its table or its report.

The run is the recorded host run (tests/fixtures/run_host_recorded) with extra planned
cells, each holding one hostile document: a hand-written list of nasty cases (files
that are not files, JSON that is not JSON, wrong shapes), and mutations of the recorded
results with a fixed seed, each putting a wrong-typed value at a key the pipeline reads.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from matrix.collect import guest_result
from matrix.report import render as report
from matrix.results import table as results
from tests.unit.collect.test_guest_result import CASES, P2

RECORDED = Path(__file__).resolve().parents[2] / "fixtures" / "run_host_recorded"
SECRET = "root:$6$never-in-a-report"

RAW: list[tuple[str, bytes, str]] = [
    ("empty", b"", "malformed result JSON: Expecting value"),
    ("truncated", b'{"status": "ok", "metr', "malformed result JSON: "),
    ("list", b"[]", "malformed result: the result is a list, not an object"),
    ("string", b'"ok"', "malformed result: the result is a string, not an object"),
    ("number", b"42", "malformed result: the result is a number, not an object"),
    ("null", b"null", "malformed result: the result is null, not an object"),
    ("nan", b'{"status": "ok", "metrics": {"iterations": NaN}}', "NaN is not a number"),
    ("inf", b'{"status": "ok", "metrics": {"elapsed_s": Infinity}}', "Infinity is not"),
    ("-inf", b'{"status": "ok", "series": [{"t": -Infinity}]}', "-Infinity is not"),
    ("overflow", b'{"status": "ok", "metrics": {"elapsed_s": 1e999}}', "overflows a float"),
    ("recursion", b"[" * 200_000 + b"]" * 200_000, "nested too deeply to parse"),
    ("deep", b'{"a":' * 80 + b"1" + b"}" * 80, "nested deeper than 64 levels"),
    ("long-int", b'{"metrics": {"iterations": ' + b"7" * 5000 + b"}}", "malformed result JSON"),
    ("bad-utf8", b'{"status": "ok\xff\xfe"}', "malformed result JSON"),
    ("nul-bytes", b"\x00" * 64, "malformed result JSON"),
    ("big-float", b'{"status": "ok", "started_at": 1e300}', "started_at is out of range"),
]


def write_nasty_files(cells: Path, secret: Path) -> dict[str, str]:
    """Files in cells/ that are not plain files, or too big: name -> expected reason."""
    (cells / "x-link.json").symlink_to(secret)
    os.mkfifo(cells / "x-fifo.json")
    (cells / "x-dir.json").mkdir()
    with open(cells / "x-huge.json", "wb") as f:
        f.truncate((16 << 20) + 1)
    return {
        "x-link": "unreadable result: x-link.json is a symbolic link, not a regular file",
        "x-fifo": "unreadable result: x-fifo.json is a FIFO, not a regular file",
        "x-dir": "unreadable result: x-dir.json is a directory, not a regular file",
        "x-huge": "unreadable result: x-huge.json is larger than 16,777,216 bytes",
    }


NUMBER_KEYS = ("iterations", "elapsed_s", "tw_max", "bytes_queued", "sends", "sndbuf_after")
WRONG = {
    "number": ["12", [], {}, True, 10**20, -1e300, [1]],
    "string": [1, [], {}, False, 2.5],
    "object": [[], "x", 3, True],
    "list": [{}, "x", 3],
    "scalar": [[], {}],
}


def checked_paths(doc: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """Paths in a real result that the schema checks, with the kind each must be."""
    paths: list[tuple[tuple[Any, ...], str]] = [
        (("status",), "string"),
        (("metrics",), "object"),
        (("sysctls",), "object"),
        (("sysctls", "problems"), "list"),
        (("evidence",), "object"),
    ]
    m = doc["metrics"]
    paths += [(("metrics", k), "number") for k in NUMBER_KEYS if m.get(k) is not None]
    paths += [(("metrics", "ended_by"), "string")]
    for i in range(len(doc["series"])):
        paths += [(("series", i, "t"), "number"), (("series", i, "iterations"), "number")]
        paths += [(("series", i), "object")]
    if doc["series"]:
        paths += [(("series",), "list")]
    paths += [(("sysctls", "read_back", k), "scalar") for k in doc["sysctls"]["read_back"]]
    if m.get("latency_us"):
        paths += [
            (("metrics", "latency_us"), "object"),
            (("metrics", "latency_us", "p50"), "number"),
        ]
    return paths


def mutants(n: int, seed: int = 20240601) -> list[dict[str, Any]]:
    """`n` recorded results, each with one wrong-typed value where the pipeline reads."""
    rng = random.Random(seed)
    originals = [json.loads(p.read_text()) for p in sorted((RECORDED / "cells").glob("*.json"))]
    out = []
    for _ in range(n):
        doc = copy.deepcopy(rng.choice(originals))
        path, kind = rng.choice(checked_paths(doc))
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = rng.choice(WRONG[kind])
        out.append(doc)
    return out


def strict(line: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(line, parse_constant=refuse)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The recorded run plus one planned cell per hostile document: (run dir, reasons)."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    shutil.copytree(RECORDED, run)
    secret = run.parent / "secret.json"
    secret.write_text(json.dumps(dict(P2, log_tail=SECRET)))
    plan = json.loads((run / "plan.json").read_text())
    template = {c["scenario"]: c for c in plan["cells"]}
    cells = run / "cells"
    expected: dict[str, str] = {}
    for name, data, why in RAW:
        (cells / f"raw-{name}.json").write_bytes(data)
        expected[f"raw-{name}"] = why
    expected.update(write_nasty_files(cells, secret))
    for n, (doc, why) in enumerate(CASES):
        (cells / f"case-{n:02d}.json").write_text(json.dumps(doc))
        expected[f"case-{n:02d}"] = why
    for n, doc in enumerate(mutants(30)):
        (cells / f"mut-{n:02d}.json").write_text(json.dumps(doc))
        expected[f"mut-{n:02d}"] = "malformed result: "
    for cid in expected:
        parsed = cid.startswith(("case-", "mut-"))
        doc = json.loads((cells / f"{cid}.json").read_text()) if parsed else {}
        scenario = doc.get("scenario") if isinstance(doc, dict) else None
        plan["cells"].append(dict(template[scenario or "2A"], id=cid))
    (run / "plan.json").write_text(json.dumps(plan))
    return run, expected


def rows_by_id(run: results.RunData) -> dict[str, dict[str, Any]]:
    return {r["cell_id"]: r for r in run.table.to_dict(orient="records")}


def test_each_hostile_document_is_one_infra_row_with_its_reason(
    hostile: tuple[Path, dict[str, str]],
) -> None:
    run_dir, expected = hostile
    rows = rows_by_id(results.load_run(run_dir))
    assert len(rows) == 6 + len(expected)
    for cid, why in expected.items():
        assert rows[cid]["verdict"] == "infra", (cid, rows[cid]["reason"])
        assert why in rows[cid]["reason"], (cid, rows[cid]["reason"])
        assert rows[cid]["key_figure"] == "no result"
        assert cid.startswith(("raw-", "x-")) or "malformed result: " in rows[cid]["reason"]


def test_the_other_cells_are_untouched(
    hostile: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    clean = tmp_path / "clean"
    shutil.copytree(RECORDED, clean)
    want = rows_by_id(results.load_run(clean))
    got = rows_by_id(results.load_run(hostile[0]))
    for cid, row in want.items():
        assert (got[cid]["verdict"], got[cid]["reason"]) == (row["verdict"], row["reason"])


def test_results_jsonl_and_json_lines_are_strict_json(
    hostile: tuple[Path, dict[str, str]],
) -> None:
    run_dir, expected = hostile
    run = results.load_run(run_dir)
    rows = run.table.to_dict(orient="records")
    path = results.write_table(run_dir, rows)
    table = [strict(line) for line in path.read_text().splitlines()]
    printed = [strict(line) for line in results.json_lines(rows)]
    assert len(table) == len(printed) == 6 + len(expected)
    assert SECRET not in path.read_text()


def test_the_report_renders_with_every_hostile_cell(
    hostile: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    run_dir, expected = hostile
    index = report.render_report(results.load_run(run_dir), tmp_path / "report")
    assert "infra" in index.read_text()
    pages = list((tmp_path / "report" / "cells").glob("*.html"))
    assert len(pages) == 6 + len(expected)
    assert not [p for p in pages if SECRET in p.read_text()]


def test_a_classifier_failure_is_one_infra_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """What vetting misses (a rule that raises on some figure) still costs one cell only."""
    plan = json.loads((RECORDED / "plan.json").read_text())
    raw = {p.stem: json.loads(p.read_text()) for p in (RECORDED / "cells").glob("*.json")}
    victim = plan["cells"][2]["id"]
    real_fold = results.fold

    def fold(cell_id: str, *args: Any) -> Any:
        if cell_id == victim:
            raise KeyError("late_rate")
        return real_fold(cell_id, *args)

    monkeypatch.setattr(results, "fold", fold)
    batches = {"host": json.loads((RECORDED / "batches" / "host.json").read_text())}
    rows = {r["cell_id"]: r for r in results.build_rows(plan, raw, batches)}
    assert rows[victim]["verdict"] == "infra"
    assert rows[victim]["reason"] == "result could not be classified (KeyError: 'late_rate')"
    assert rows[victim]["attempts"] == 0
    assert all(r["verdict"] != "infra" for cid, r in rows.items() if cid != victim)


def test_mutants_are_reproducible_and_all_refused() -> None:
    first, again = mutants(30), mutants(30)
    assert first == again
    assert all(guest_result.problem(doc) for doc in first)
