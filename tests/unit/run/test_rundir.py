"""Run ids, the run directory's lock, and atomic page writes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from matrix.errors import KmatrixError
from matrix.run import rundir

HOLD = """
import sys, time
from pathlib import Path
from matrix.run import rundir
lock = rundir.lock_run(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(60)
"""


def test_run_ids_of_the_same_second_differ() -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    ids = {rundir.new_run_id(now) for _ in range(50)}
    assert len(ids) > 40
    assert all(re.fullmatch(r"20300102-030405-[0-9a-f]{4}", i) for i in ids)


def test_create_run_dir_draws_again_when_the_id_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "20300102-030405-aaaa").mkdir()
    drawn = iter(["20300102-030405-aaaa", "20300102-030405-bbbb"])
    monkeypatch.setattr(rundir, "new_run_id", lambda now=None: next(drawn))
    assert rundir.create_run_dir(tmp_path) == tmp_path / "20300102-030405-bbbb"
    assert (tmp_path / "20300102-030405-bbbb").is_dir()


def test_create_run_dir_gives_up_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "taken").mkdir()
    monkeypatch.setattr(rundir, "new_run_id", lambda now=None: "taken")
    with pytest.raises(KmatrixError, match="no free run id in 20 tries; pass --out"):
        rundir.create_run_dir(tmp_path)


def test_a_second_lock_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with rundir.lock_run(tmp_path), pytest.raises(KmatrixError) as err:
        rundir.lock_run(tmp_path)
    assert str(err.value).startswith(
        f"{tmp_path}: in use by another kmatrix run (pid {os.getpid()})"
    )
    assert err.value.exit_code == 2
    rundir.lock_run(tmp_path).release()


def _holder(run_dir: Path) -> subprocess.Popen[str]:
    repo = Path(__file__).resolve().parents[3]
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, cwd=repo
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_the_lock_goes_when_its_process_is_killed(tmp_path: Path) -> None:
    """flock belongs to the open file: kill -9 leaves no stale lock behind."""
    holder = _holder(tmp_path)
    try:
        with pytest.raises(KmatrixError, match=f"pid {holder.pid}"):
            rundir.lock_run(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    rundir.lock_run(tmp_path).release()


def test_write_text_atomic_replaces_the_file(tmp_path: Path) -> None:
    """A new inode each time: a reader holding the old page keeps the whole old page."""
    page = tmp_path / "index.html"
    rundir.write_text_atomic(page, "old page")
    before = page.stat().st_ino
    with open(page) as reader:
        rundir.write_text_atomic(page, "new page")
        assert reader.read() == "old page"
    assert page.read_text() == "new page" and page.stat().st_ino != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]


def test_write_text_atomic_keeps_the_old_page_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = tmp_path / "index.html"
    rundir.write_text_atomic(page, "old page")

    def full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rundir.os, "replace", full)
    with pytest.raises(OSError):
        rundir.write_text_atomic(page, "new page")
    assert page.read_text() == "old page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]


def test_write_text_atomic_honours_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        rundir.write_text_atomic(tmp_path / "p.html", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "p.html").stat().st_mode & 0o777 == 0o644


def test_a_kernels_batches_include_its_rounds_of_remeasurement() -> None:
    batches = {"k": {"n": 1}, "k+r2": {"n": 2}, "k2": {"n": 3}, "k2+r2": {"n": 4}}
    assert rundir.kernel_batches(batches, "k") == [{"n": 1}, {"n": 2}]
