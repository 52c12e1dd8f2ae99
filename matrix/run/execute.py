"""Run batches on their runners, several at once, and keep every result as it arrives.

Exceptions become data here and only here: a runner that raises, a kernel that does
not boot or a stop request all end as a batch outcome with a failure, and the other
batches go on.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from matrix.collect import guest_files
from matrix.model import Batch, BatchOutcome
from matrix.run import rundir
from matrix.run.attempt import attempt, failed, fresh_workdir
from matrix.run.hostload import HostLoad
from matrix.run.schedule import Machine, Scheduler
from matrix.runners import Runner

Progress = Callable[[str, str, dict[str, Any] | None], None]
"""Called with (kernel, event, result): event is 'start', 'result' or 'done'."""


FollowUp = Callable[[Batch, int], Batch | None]
"""Called when a batch ends, with how many follow-ups its chain has had: the next batch
of the same kernel to run (re-measurements), or None."""


def balance(batches: list[Batch], slots: int) -> list[tuple[Batch, str]]:
    """(batch, label) for the pool. One boot per kernel, except at the tail: when more
    kernels than slots leave fewer kernels than slots for the last round, those are
    split over the idle slots (an extra boot each, instead of cores sitting idle under TCG while one
    guest runs alone). Parts are labelled "+p2", "+p3" in batches/ and work/."""
    rest = len(batches) % slots if len(batches) > slots > 1 else 0
    if not rest:
        return [(b, "") for b in batches]
    parts = slots // rest
    out = [(b, "") for b in batches[:-rest]]
    for b in batches[-rest:]:
        n = min(parts, len(b.cells))
        for i in range(n):
            out.append((Batch(b.kernel, b.cells[i::n]), f"+p{i + 1}" if i else ""))
    return out


def run_batches(
    batches: list[Batch],
    runner_for: Callable[[Batch], Runner],
    run_dir: Path,
    jobs: int,
    stop: threading.Event,
    progress: Progress,
    remotes: Sequence[Machine] = (),
    label: str = "",
    follow_up: FollowUp | None = None,
) -> dict[str, BatchOutcome]:
    """Host batches first and alone (their timings must not share the CPU with VMs),
    then the rest `jobs` at a time. With SSH hosts (`remotes`), slots of every machine
    take batches as they free up (see `matrix.run.schedule`). `label` tells a round of
    re-measurements apart in batches/ and work/, so the first boot's records stay.

    Locally, `follow_up` queues a kernel's re-measurements the moment its batch ends,
    so they fill a slot that would otherwise idle while the last kernels run."""

    def record(rd: Path, kernel: str, outcome: BatchOutcome) -> None:
        record_outcome(rd, kernel + label, outcome)

    if remotes:
        local = Machine(socket.gethostname(), jobs, runner_for)
        sched = Scheduler([local, *remotes], run_dir, stop, progress, record)
        return sched.run(batches)
    exclusive = [b for b in batches if runner_for(b).name == "host"]
    shared = [b for b in batches if b not in exclusive]
    outcomes: dict[str, BatchOutcome] = {}
    with HostLoad() as load:

        def one(b: Batch, tag: str) -> BatchOutcome:
            return _one(b, runner_for(b), run_dir, stop, progress, load, tag)

        def chain(b: Batch | None, tag: str) -> list[tuple[Batch, BatchOutcome]]:
            """A batch, then each follow-up of its cells, one after the other."""
            done: list[tuple[Batch, BatchOutcome]] = []
            while b is not None and not stop.is_set():
                outcome = one(b, f"{tag}+r{len(done) + 1}" if done else tag)
                done.append((b, outcome))
                retry = follow_up and not outcome.failure  # a failed batch is news already
                b = follow_up(b, len(done) - 1) if retry else None
                if b is not None:
                    progress(b.kernel.spec.name, "remeasure", _remeasure_note(b))
            return done

        for b in exclusive:
            for first, outcome in chain(b, label)[:1]:
                outcomes[first.kernel.spec.name] = outcome
        with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="batch") as pool:
            futures = [pool.submit(chain, b, label + part) for b, part in balance(shared, jobs)]
            for fut in futures:
                for first, outcome in fut.result()[:1]:
                    outcomes.setdefault(first.kernel.spec.name, outcome)
    return outcomes


def _remeasure_note(b: Batch) -> dict[str, Any]:
    return {"cells": len(b.cells), "attempt": max(c.attempt for c in b.cells)}


def _one(
    batch: Batch,
    runner: Runner,
    run_dir: Path,
    stop: threading.Event,
    progress: Progress,
    load: HostLoad,
    label: str,
) -> BatchOutcome:
    name = batch.kernel.spec.name
    if stop.is_set():
        outcome = failed(runner, "interrupted before it started")
    elif not batch.cells:
        outcome = failed(runner, "")
    else:
        progress(name, "start", None)
        workdir = fresh_workdir(run_dir, name + label)
        load.begin(name + label, str(workdir.resolve()))

        def keep(cell_id: str, result: dict[str, Any]) -> None:
            load.stamp(name + label, result)
            rundir.write_json(run_dir / "cells" / f"{cell_id}.json", result)
            progress(name, "result", result)

        try:
            outcome = attempt(runner, batch, workdir, stop, keep)
        finally:
            load.end(name + label)
    record_outcome(run_dir, name + label, outcome)
    progress(name, "done", None)
    return outcome


def record_outcome(run_dir: Path, kernel: str, outcome: BatchOutcome) -> None:
    """batches/<kernel>.json, and the console log copied next to it: its last
    MAX_CONSOLE_BYTES, and only if it is a regular file (it lies in the guest's directory)."""
    console = ""
    dest = run_dir / "console" / f"{kernel}.log"
    if outcome.console_log and guest_files.copy_tail(Path(outcome.console_log), dest):
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
            "host_sysctl_changed": list(outcome.host_sysctl_changed),
            "liveness": outcome.liveness,
            "heartbeat_age_s": outcome.heartbeat_age_s,
            "boot_image": outcome.boot_image,
        },
    )
