"""Bounded, no-follow, non-blocking reads of guest-written files, and strict guest JSON."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from matrix.collect import guest_files
from matrix.collect.guest_files import GuestFileError

SECRET = "root:$6$not-for-guests"


def finishes(fn: Callable[[], Any], fifos: list[Path], timeout_s: float = 10.0) -> Any:
    """fn() in a thread; if it is stuck (on a FIFO), unblock it and fail."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout_s)
        pytest.fail(f"blocked on a FIFO for {timeout_s:g}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "shadow"
    path.write_text(SECRET)
    return path


def test_a_regular_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_bytes(b"x" * 100)
    assert guest_files.read_bounded(path, limit=100) == b"x" * 100
    assert guest_files.read_tail(path, 10) == b"x" * 10
    assert guest_files.read_from(path, 95, limit=3) == b"xxx"


def test_a_file_over_the_bound_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_bytes(b"x" * 101)
    with pytest.raises(GuestFileError, match="larger than 100 bytes"):
        guest_files.read_bounded(path, limit=100)


def test_a_symlink_is_never_followed(tmp_path: Path, secret: Path) -> None:
    link = tmp_path / "r.json"
    link.symlink_to(secret)
    for read in (
        lambda: guest_files.read_bounded(link),
        lambda: guest_files.read_tail(link, 100),
        lambda: guest_files.read_from(link, 0),
    ):
        with pytest.raises(GuestFileError, match="r.json is a symbolic link"):
            read()
    assert not guest_files.copy_tail(link, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    assert not guest_files.is_regular(link) and guest_files.lexists(link)


def test_a_linked_directory_below_the_root_is_refused(tmp_path: Path, secret: Path) -> None:
    """out/ replaced by a link to a directory of the host's: nothing below it is read."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "out").symlink_to(tmp_path)
    with pytest.raises(GuestFileError, match="out is not a plain directory"):
        guest_files.read_bounded(tmp_path / "work" / "out" / "shadow", root=tmp_path / "work")


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_fifo_or_directory_is_refused_without_blocking(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "r.json"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    want = "a FIFO" if kind == "fifo" else "a directory"
    for read in (guest_files.read_bounded, lambda p: guest_files.read_tail(p, 10)):
        with pytest.raises(GuestFileError, match=f"r.json is {want}, not a regular file"):
            finishes(lambda r=read: r(path), [path])
    assert not finishes(lambda: guest_files.copy_tail(path, tmp_path / "copy"), [path])


def test_a_missing_file_is_an_ordinary_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        guest_files.read_bounded(tmp_path / "absent.json")
    assert not guest_files.lexists(tmp_path / "absent.json")


def test_copy_tail_keeps_the_end_of_a_huge_log(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    with open(log, "wb") as f:
        f.truncate(64 << 20)  # sparse: 64 MiB of zeros costs no disk
        f.seek(0, os.SEEK_END)
        f.write(b"Kernel panic - the end\n")
    dest = tmp_path / "run" / "console" / "k.log"
    assert guest_files.copy_tail(log, dest, limit=1 << 20)
    data = dest.read_bytes()
    assert data.startswith(b"# kmatrix: log cut to its last 1,048,576 of ")
    assert data.endswith(b"Kernel panic - the end\n") and len(data) < (1 << 20) + 100


def test_copy_tail_copies_a_small_log_as_is(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"Linux version 6.1\n")
    assert guest_files.copy_tail(log, tmp_path / "k.log")
    assert (tmp_path / "k.log").read_bytes() == b"Linux version 6.1\n"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"a": NaN}', "NaN is not a number JSON allows"),
        ('{"a": Infinity}', "Infinity is not a number JSON allows"),
        ('{"a": -Infinity}', "-Infinity is not a number JSON allows"),
        ('{"a": 1e999}', "overflows a float"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply to parse"),
        ("[" * 65 + "]" * 65, "nested deeper than 64 levels"),
        ('{"a": ' + "9" * 5000 + "}", "digits"),
        ('{"a": "\\ud800 \xff"}', ""),
    ],
    ids=["nan", "inf", "-inf", "overflow", "recursion", "depth", "long-int", "lone-surrogate"],
)
def test_strict_json_refuses_what_no_agent_writes(text: str, why: str) -> None:
    if not why:
        assert guest_files.parse_json(text) == {"a": "\ud800 \xff"}
        return
    with pytest.raises(ValueError, match=why):
        guest_files.parse_json(text.encode())


def test_invalid_utf8_is_a_valueerror() -> None:
    with pytest.raises(ValueError):
        guest_files.parse_json(b'{"a": "\xff\xfe"}')


def test_strict_json_keeps_a_real_result() -> None:
    doc = {"status": "ok", "metrics": {"iterations": 3, "elapsed_s": 0.5}, "series": [[{}]]}
    assert guest_files.parse_json(json.dumps(doc).encode()) == doc
    assert guest_files.depth(doc) == 4 and guest_files.depth(7) == 0
