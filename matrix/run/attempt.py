"""One try of one batch on one runner: the single place where a runner's exceptions
become an outcome. Used by the local pool and by the multi-host scheduler alike."""

from __future__ import annotations

import shutil
import threading
import time
import traceback
from pathlib import Path

from matrix.errors import HostLost, KmatrixError
from matrix.model import Batch, BatchOutcome
from matrix.runners import OnResult, Runner


def fresh_workdir(run_dir: Path, name: str) -> Path:
    """A batch's private directory, emptied: a resumed batch must not see old results."""
    workdir = run_dir / "work" / name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    return workdir


def failed(runner: Runner, why: str, wall_s: float = 0.0, tail: str = "") -> BatchOutcome:
    return BatchOutcome({}, runner.name, "", "", failure=why, console_tail=tail, wall_s=wall_s)


def attempt(
    runner: Runner, batch: Batch, workdir: Path, stop: threading.Event, keep: OnResult
) -> BatchOutcome:
    """Run the batch; a runner that raises ends as a failed outcome. HostLost is passed
    on: only the scheduler knows whether another host can take the cells."""
    start = time.monotonic()
    try:
        return runner.run_batch(batch, workdir, stop, keep)
    except HostLost:
        raise
    except KmatrixError as e:
        return failed(runner, str(e), time.monotonic() - start)
    except Exception as e:  # noqa: BLE001 - a runner bug must not take the run down
        tail = traceback.format_exc(limit=5)
        return failed(runner, f"runner error: {e!r}", time.monotonic() - start, tail)
