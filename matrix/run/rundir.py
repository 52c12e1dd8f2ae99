"""The on-disk layout of one run, and atomic writes into it.

runs/<run-id>/
  manifest.json        what ran where: versions, host, accelerator, start/end, command
  plan.json            the kernels and cells, so `--resume` and `report` need no config
  cells/<id>.json      each collector result as it came back (never rewritten)
  batches/<kernel>.json  how each kernel's batch went: runner, accelerator, failure,
                       liveness at a deadline, console tail
  console/<kernel>.log the VM console of that kernel's boot
  results.jsonl        the tidy table, one row per cell (rebuilt from the above)
  results.junit.xml    the same as JUnit, for CI systems
  .lock                flock'ed by the kmatrix process using the directory; holds its pid
A result is written the moment it arrives, so an interrupted run loses nothing measured.
A run id is the start time plus a random suffix, and a new run directory is made with an
exclusive mkdir, so two runs started in the same second never share one.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matrix.collect import guest_result
from matrix.errors import KmatrixError

LOCK_NAME = ".lock"
RUN_ID_TRIES = 20


def new_run_id(now: datetime | None = None) -> str:
    """Start time to the second (so ids sort by time), then 4 random hex digits."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def create_run_dir(runs_dir: Path) -> Path:
    """A new, empty run directory under `runs_dir`, claimed with an exclusive mkdir.

    mkdir fails when the name exists, so of two runs that draw the same id only one
    gets it; the other draws again.
    """
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KmatrixError(
            f"{runs_dir}: cannot create the runs directory ({e.strerror}); "
            "set runs_dir in kernels.toml or pass --out"
        ) from None
    for _ in range(RUN_ID_TRIES):
        path = runs_dir / new_run_id()
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            raise KmatrixError(
                f"{path}: cannot create the run directory ({e.strerror}); pass --out"
            ) from None
        return path
    raise KmatrixError(f"{runs_dir}: no free run id in {RUN_ID_TRIES} tries; pass --out")


@dataclass
class RunLock:
    """An open, flock'ed lock file: the lock lasts as long as the descriptor is open."""

    path: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run(run_dir: Path) -> RunLock:
    """Claim `run_dir` for this process, or refuse if another kmatrix holds it.

    flock belongs to the open file, so the kernel drops it when the process ends,
    however it ends (kill -9, the OOM killer): there is never a stale lock to clear.
    The descriptor is close-on-exec, so VMs and agents do not keep it.
    """
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise KmatrixError(f"{path}: cannot open the run's lock file ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise KmatrixError(
            f"{run_dir}: in use by another kmatrix run (pid {holder}); wait for it to "
            "end, or choose another directory with --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RunLock(path, fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a page under a temporary name and rename it into place, so a reader (a
    browser, a web server) or a crash mid-render never sees half a page. The temporary
    file is made with mode 0666 less the umask, as a plain write would be."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, doc: Any) -> None:
    """Write then rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise KmatrixError(f"{path}: not found; is this a kmatrix run directory?") from None
    except json.JSONDecodeError as e:
        raise KmatrixError(f"{path}: not valid JSON ({e})") from None


def check_writable(run_dir: Path) -> None:
    """Fail before any VM boots if results could not be kept."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise KmatrixError(
            f"{run_dir}: cannot write results there ({e.strerror}); choose another --out"
        ) from None


def cell_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every collector result kept so far, vetted (see `guest_result`): a file that is
    not a regular file, does not parse or has the wrong shape is reported as such."""
    cells = sorted((run_dir / "cells").glob("*.json"))
    return {p.stem: guest_result.read(p, p.stem) for p in cells}


def kernel_batches(batches: dict[str, dict[str, Any]], kernel: str) -> list[dict[str, Any]]:
    """A kernel's batch and those of its rounds of re-measurements (`<kernel>+<round>`)."""
    return [b for name, b in batches.items() if name.partition("+")[0] == kernel]


def batches(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: read_json(p) for p in sorted((run_dir / "batches").glob("*.json"))}
