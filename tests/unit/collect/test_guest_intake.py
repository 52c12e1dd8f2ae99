"""Where the host reads the guest's directory: results, the done marker, the console.

Each test puts what a hostile guest could into a batch's work directory (a link to a
secret, a FIFO, a huge or deeply nested file) and checks that the reader neither
follows, blocks, nor takes it as a measurement.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from matrix.collect import guest_files, sanitize
from matrix.model import BatchOutcome
from matrix.run import execute, rundir
from matrix.runners import remote
from matrix.runners.agent_io import ResultCollector
from matrix.runners.vng import ConsoleWatch
from tests.unit.collect.test_guest_files import SECRET, finishes
from tests.unit.collect.test_guest_result import P2, with_


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file the guest must never get into the run: valid result JSON, marked."""
    path = tmp_path / "secret.json"
    path.write_text(json.dumps(dict(P2, log_tail=SECRET)))
    return path


@pytest.fixture
def out(tmp_path: Path) -> Path:
    path = tmp_path / "work" / "out"
    path.mkdir(parents=True)
    return path


def collect(out: Path, ids: list[str], fifos: tuple[Path, ...] = ()) -> ResultCollector:
    seen: list[str] = []
    collector = ResultCollector(out, ids, lambda cid, _doc: seen.append(cid))
    finishes(lambda: collector.poll(final=True), list(fifos))
    assert seen == [cid for cid in ids if cid in collector.results]
    return collector


def detail(collector: ResultCollector, cid: str) -> str:
    doc = collector.results[cid]
    assert doc["status"] == "rejected" and cid in collector.malformed
    return doc["status_detail"]


def test_a_fifo_result_neither_blocks_nor_hides_the_others(out: Path) -> None:
    os.mkfifo(out / "a.json")
    (out / "b.json").write_text(json.dumps(P2))
    collector = collect(out, ["a", "b"], (out / "a.json",))
    assert detail(collector, "a") == "unreadable result: a.json is a FIFO, not a regular file"
    assert collector.results["b"] == P2


def test_a_result_linked_to_a_secret_is_not_read(out: Path, secret: Path) -> None:
    (out / "a.json").symlink_to(secret)
    collector = collect(out, ["a"])
    assert "a.json is a symbolic link" in detail(collector, "a")
    assert SECRET not in json.dumps(collector.results)


def test_an_out_dir_swapped_for_a_link_is_not_followed(tmp_path: Path, secret: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "out").symlink_to(tmp_path)
    os.link(secret, tmp_path / "a.json")
    collector = collect(work / "out", ["a"])
    assert "out is not a plain directory" in detail(collector, "a")


def test_a_result_over_the_bound_is_refused(out: Path) -> None:
    with open(out / "a.json", "wb") as f:
        f.truncate(guest_files.MAX_RESULT_BYTES + 1)  # sparse
    assert "a.json is larger than 16,777,216 bytes" in detail(collect(out, ["a"]), "a")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[" * 200_000 + "]" * 200_000, "malformed result JSON: nested too deeply to parse"),
        (json.dumps({"status": "ok", "x": [[[[[[[[]]]]]]]]} | {"n": [[]] * 2}), ""),
        ('{"status": "ok", "metrics": {"iterations": NaN}}', "malformed result JSON: NaN is"),
        ('{"status": "ok", "metrics": {"elapsed_s": Infinity}}', "malformed result JSON: Inf"),
        ('{"status": "ok", "metrics": {"elapsed_s": 1e400}}', "malformed result JSON: 1e400 over"),
        (json.dumps(with_(P2, "metrics.iterations", "many")), "malformed result: metrics.iter"),
        (json.dumps(with_(P2, "series", [[0, 1]])), "malformed result: series[0] is a list"),
        ("[1, 2]", "malformed result: the result is a list, not an object"),
    ],
    ids=["recursion", "nested-ok", "nan", "infinity", "overflow", "string", "list", "top-list"],
)
def test_hostile_json_is_one_malformed_cell(out: Path, text: str, why: str) -> None:
    (out / "a.json").write_text(text)
    (out / "b.json").write_text(json.dumps(P2))
    collector = collect(out, ["a", "b"])
    if why:
        assert detail(collector, "a").startswith(why)
    else:
        assert collector.results["a"]["status"] == "ok"
    assert collector.results["b"] == P2


def test_agent_done_needs_agent_json_itself(out: Path, secret: Path) -> None:
    collector = ResultCollector(out, [], lambda *_: None)
    (out / "agent.json").symlink_to(secret)
    assert not collector.agent_done
    (out / "agent.json").unlink()
    os.mkfifo(out / "agent.json")
    assert not collector.agent_done
    (out / "agent.json").unlink()
    (out / "agent.json").write_text("{}")
    assert collector.agent_done


def test_the_leak_check_marker_is_read_safely(out: Path) -> None:
    os.mkfifo(out / "agent.json")
    collector = ResultCollector(out, [], lambda *_: None)
    assert finishes(collector.host_sysctl, [out / "agent.json"]) == ((), "")
    (out / "agent.json").unlink()
    (out / "agent.json").write_text("[" * 100_000 + "]" * 100_000)
    assert collector.host_sysctl() == ((), "")


def test_cell_results_refuse_links_and_fifos_in_the_run(tmp_path: Path, secret: Path) -> None:
    cells = tmp_path / "cells"
    cells.mkdir()
    (cells / "a.json").symlink_to(secret)
    os.mkfifo(cells / "b.json")
    (cells / "c.json").write_text(json.dumps(with_(P2, "metrics", [])))
    (cells / "d.json").write_text(json.dumps(P2))
    got = finishes(lambda: rundir.cell_results(tmp_path), [cells / "b.json"])
    assert got["a"]["status_detail"] == (
        "unreadable result: a.json is a symbolic link, not a regular file"
    )
    assert got["b"]["status_detail"] == "unreadable result: b.json is a FIFO, not a regular file"
    assert got["c"]["status_detail"] == "malformed result: metrics is a list, not an object"
    assert got["d"] == P2 and SECRET not in json.dumps(got)


# --- the console log ------------------------------------------------------------------


def test_console_watch_does_not_block_on_a_fifo(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    os.mkfifo(log)
    watch = ConsoleWatch(log, time.monotonic())
    finishes(watch.scan, [log])
    assert finishes(watch.last_line, [log]) == "" and watch.offset == 0


def test_console_watch_does_not_follow_a_link(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("Linux version 6.1\nKernel panic\n" + SECRET)
    log = tmp_path / "console.log"
    log.symlink_to(tmp_path / "secret")
    watch = ConsoleWatch(log, time.monotonic())
    watch.scan()
    assert not watch.kernel_spoke and not watch.problem and SECRET not in watch.last_line()


def test_console_watch_reads_a_bounded_slice_per_scan(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    with open(log, "wb") as f:
        f.truncate(3 * guest_files.MAX_SCAN_BYTES)
        f.seek(0, os.SEEK_END)
        f.write(b"Kernel panic - not syncing\n")
    watch = ConsoleWatch(log, time.monotonic())
    watch.scan()
    assert watch.offset == guest_files.MAX_SCAN_BYTES and not watch.problem
    for _ in range(3):
        watch.scan()
    assert watch.problem == "kernel panic"


def test_console_tail_is_empty_for_a_fifo_or_a_link(tmp_path: Path) -> None:
    fifo, link = tmp_path / "fifo.log", tmp_path / "link.log"
    os.mkfifo(fifo)
    (tmp_path / "secret").write_text(SECRET)
    link.symlink_to(tmp_path / "secret")
    assert finishes(lambda: sanitize.tail(fifo), [fifo]) == ""
    assert sanitize.tail(link) == ""


def outcome(console: Path) -> BatchOutcome:
    return BatchOutcome({}, "vng", "tcg", "h", console_log=console)


@pytest.mark.parametrize("kind", ["fifo", "link"])
def test_record_outcome_copies_no_fifo_and_no_link(tmp_path: Path, kind: str) -> None:
    (tmp_path / "secret").write_text(SECRET)
    log = tmp_path / "work" / "console.log"
    log.parent.mkdir()
    os.mkfifo(log) if kind == "fifo" else log.symlink_to(tmp_path / "secret")
    run = tmp_path / "run"
    finishes(lambda: execute.record_outcome(run, "k", outcome(log)), [log])
    assert json.loads((run / "batches" / "k.json").read_text())["console_log"] == ""
    assert not (run / "console" / "k.log").exists()


def test_record_outcome_keeps_the_liveness_at_the_deadline(tmp_path: Path) -> None:
    run = tmp_path / "run"
    execute.record_outcome(run, "k", outcome(tmp_path / "absent"))
    doc = json.loads((run / "batches" / "k.json").read_text())
    assert doc["liveness"] == "" and doc["heartbeat_age_s"] is None
    alive = replace(outcome(tmp_path / "absent"), liveness="alive", heartbeat_age_s=2.5)
    execute.record_outcome(run, "k", alive)
    doc = json.loads((run / "batches" / "k.json").read_text())
    assert doc["liveness"] == "alive" and doc["heartbeat_age_s"] == 2.5


@pytest.mark.parametrize(
    ("doc", "taken"),
    [
        (
            {"liveness": "alive", "heartbeat_age_s": 1.5},
            {"liveness": "alive", "heartbeat_age_s": 1.5},
        ),
        (
            {"liveness": "silent", "heartbeat_age_s": "40"},
            {"liveness": "silent", "heartbeat_age_s": None},
        ),
        (
            {"liveness": "silent", "heartbeat_age_s": float("nan")},
            {"liveness": "silent", "heartbeat_age_s": None},
        ),
        ({"liveness": "<b>alive</b>", "heartbeat_age_s": 1.0}, {}),
        ({"liveness": ["alive"]}, {}),
        ({}, {}),
    ],
)
def test_a_remote_batchs_liveness_is_taken_in_its_own_words_only(doc: dict, taken: dict) -> None:
    assert remote.remote_liveness(doc) == taken


def test_record_outcome_keeps_the_end_of_a_huge_console(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    with open(log, "wb") as f:
        f.truncate(guest_files.MAX_CONSOLE_BYTES + (8 << 20))
        f.seek(0, os.SEEK_END)
        f.write(b"Kernel panic - not syncing\n")
    run = tmp_path / "run"
    execute.record_outcome(run, "k", outcome(log))
    copy = run / "console" / "k.log"
    assert copy.stat().st_size < guest_files.MAX_CONSOLE_BYTES + 200
    with open(copy, "rb") as f:
        assert f.readline().startswith(b"# kmatrix: log cut to its last 16,777,216 of ")
        f.seek(-27, os.SEEK_END)
        assert f.read() == b"Kernel panic - not syncing\n"


# --- files pulled from an SSH host ---------------------------------------------------


class FakeSftp:
    """The two SFTP calls the remote runner reads with, over a dict of (mode, bytes)."""

    def __init__(self, files: dict[str, tuple[int, bytes]]) -> None:
        self.files, self.opened = files, []

    def lstat(self, path: str) -> Any:
        if path not in self.files:
            raise FileNotFoundError(path)
        mode, data = self.files[path]
        return type("Attrs", (), {"st_mode": mode, "st_size": len(data)})()

    def open(self, path: str) -> BytesIO:
        self.opened.append(path)
        return BytesIO(self.files[path][1])


REG, FIFO, LINK = stat.S_IFREG | 0o644, stat.S_IFIFO | 0o644, stat.S_IFLNK | 0o777


def test_pulled_results_are_regular_bounded_and_vetted() -> None:
    sftp = FakeSftp(
        {
            "out/a.json": (FIFO, b""),
            "out/b.json": (LINK, b""),
            "out/c.json": (REG, json.dumps(with_(P2, "error", [])).encode()),
            "out/d.json": (REG, b"[" * 100_000),
            "out/e.json": (REG, json.dumps(P2).encode()),
        }
    )
    got = {c: remote._pull_result(sftp, f"out/{c}.json", c) for c in "abcde"}
    assert got["a"]["status_detail"] == "unreadable result: a.json is not a regular file"
    assert got["b"]["status_detail"] == "unreadable result: b.json is not a regular file"
    assert got["c"]["status_detail"] == "malformed result: error is a list, not an object"
    assert got["d"]["status_detail"] == "malformed result JSON: nested too deeply to parse"
    assert got["e"] == P2
    assert sftp.opened == ["out/c.json", "out/d.json", "out/e.json"]


def test_pulled_logs_keep_their_end_and_results_their_bound() -> None:
    sftp = FakeSftp({"run.log": (REG, b"x" * 100 + b"END"), "r.json": (REG, b"{}" * 10)})
    assert remote._read_remote(sftp, "run.log", 10, tail=True) == b"x" * 7 + b"END"
    with pytest.raises(guest_files.GuestFileError, match="r.json is larger than 10 bytes"):
        remote._read_remote(sftp, "r.json", 10)
