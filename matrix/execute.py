"""Run batches on their runners, several at once, and keep every result as it arrives.

Exceptions become data here and only here: a runner that raises, a kernel that does
not boot or a stop request all end as a batch outcome with a failure, and the other
batches go on.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from matrix import rundir
from matrix.errors import KmatrixError
from matrix.model import Batch, BatchOutcome
from matrix.runners import Runner
from matrix.schedule import Machine, Scheduler

Progress = Callable[[str, str, dict[str, Any] | None], None]
"""Called with (kernel, event, result): event is 'start', 'result' or 'done'."""


def run_batches(
    batches: list[Batch],
    runner_for: Callable[[Batch], Runner],
    run_dir: Path,
    jobs: int,
    stop: threading.Event,
    progress: Progress,
    remotes: Sequence[Machine] = (),
) -> dict[str, BatchOutcome]:
    """Host batches first and alone (their timings must not share the CPU with VMs),
    then the rest `jobs` at a time. With SSH hosts (`remotes`), slots of every machine
    take batches as they free up (see `matrix.schedule`)."""
    if remotes:
        local = Machine(socket.gethostname(), jobs, runner_for)
        sched = Scheduler([local, *remotes], run_dir, stop, progress, record_outcome)
        return sched.run(batches)
    exclusive = [b for b in batches if runner_for(b).name == "host"]
    shared = [b for b in batches if b not in exclusive]
    outcomes: dict[str, BatchOutcome] = {}
    for b in exclusive:
        outcomes[b.kernel.spec.name] = _one(b, runner_for(b), run_dir, stop, progress)
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="batch") as pool:
        futures = {pool.submit(_one, b, runner_for(b), run_dir, stop, progress): b for b in shared}
        for fut, b in futures.items():
            outcomes[b.kernel.spec.name] = fut.result()
    return outcomes


def _one(
    batch: Batch, runner: Runner, run_dir: Path, stop: threading.Event, progress: Progress
) -> BatchOutcome:
    name = batch.kernel.spec.name
    if stop.is_set():
        outcome = _failed(runner, "interrupted before it started")
    elif not batch.cells:
        outcome = _failed(runner, "")
    else:
        progress(name, "start", None)
        workdir = run_dir / "work" / name
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)

        def keep(cell_id: str, result: dict[str, Any]) -> None:
            rundir.write_json(run_dir / "cells" / f"{cell_id}.json", result)
            progress(name, "result", result)

        start = time.monotonic()
        try:
            outcome = runner.run_batch(batch, workdir, stop, keep)
        except KmatrixError as e:
            outcome = _failed(runner, str(e), time.monotonic() - start)
        except Exception as e:  # noqa: BLE001 - a runner bug must not take the run down
            detail = traceback.format_exc(limit=5)
            outcome = _failed(runner, f"runner error: {e!r}", time.monotonic() - start, detail)
    record_outcome(run_dir, name, outcome)
    progress(name, "done", None)
    return outcome


def _failed(runner: Runner, why: str, wall_s: float = 0.0, tail: str = "") -> BatchOutcome:
    return BatchOutcome(
        results={},
        runner=runner.name,
        accelerator="",
        host="",
        failure=why,
        console_tail=tail,
        wall_s=wall_s,
    )


def record_outcome(run_dir: Path, kernel: str, outcome: BatchOutcome) -> None:
    """batches/<kernel>.json, and the console log copied next to it."""
    console = ""
    if outcome.console_log and Path(outcome.console_log).exists():
        dest = run_dir / "console" / f"{kernel}.log"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(Path(outcome.console_log).read_bytes())
        console = str(dest.relative_to(run_dir))
    rundir.write_json(
        run_dir / "batches" / f"{kernel}.json",
        {
            "runner": outcome.runner,
            "accelerator": outcome.accelerator,
            "host": outcome.host,
            "failure": outcome.failure,
            "console_tail": outcome.console_tail,
            "console_log": console,
            "boot_s": outcome.boot_s,
            "wall_s": outcome.wall_s,
            "results": len(outcome.results),
        },
    )
