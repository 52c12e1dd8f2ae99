"""Batches on slots: this machine's `jobs` plus each SSH host's capacity.

Each slot is a thread that takes the next batch its machine may run. A host-kernel
batch runs alone on its machine (its timings must not share the CPU with VMs). A
machine that drops mid-batch (`HostLost`) takes no more work; the cells it had not
sent back become a new batch for another machine, at most once per machine, and end
infra with the reason when no machine is left. Results already pulled back stay: they
were written the moment they arrived.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from matrix.errors import HostLost
from matrix.model import Batch, BatchOutcome
from matrix.run import rundir
from matrix.run.attempt import attempt, fresh_workdir
from matrix.runners import Runner

Progress = Callable[[str, str, dict[str, Any] | None], None]


@dataclass(eq=False)
class Machine:
    """A place with `slots` batch slots; `runner_for` picks its runner per batch."""

    name: str
    slots: int
    runner_for: Callable[[Batch], Runner]
    running: int = 0
    exclusive: bool = False
    lost: str = ""


@dataclass(frozen=True)
class Job:
    """A batch waiting for a slot; `lost_on` lists machines that dropped it, and why."""

    batch: Batch
    lost_on: tuple[tuple[str, str], ...] = ()

    @property
    def is_host(self) -> bool:
        return self.batch.kernel.spec.kind == "host"

    @property
    def workdir_name(self) -> str:
        name = self.batch.kernel.spec.name
        return f"{name}.retry{len(self.lost_on)}" if self.lost_on else name


@dataclass(eq=False)
class Scheduler:
    machines: list[Machine]
    run_dir: Path
    stop: threading.Event
    progress: Progress
    record: Callable[[Path, str, BatchOutcome], None]
    queue: deque[Job] = field(default_factory=deque)
    active: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)
    outcomes: dict[str, BatchOutcome] = field(default_factory=dict)

    def run(self, batches: list[Batch]) -> dict[str, BatchOutcome]:
        """Host-kernel batches first, then the rest; return the last outcome per kernel."""
        self.queue.extend(Job(b) for b in batches if b.kernel.spec.kind == "host")
        self.queue.extend(Job(b) for b in batches if b.kernel.spec.kind != "host")
        threads = [
            threading.Thread(target=self._slot, args=(m,), name=f"slot-{m.name}-{i}")
            for m in self.machines
            for i in range(m.slots)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._give_up_orphans()
        for job in self.queue:
            self._end(job, "interrupted before it started")
        return self.outcomes

    def _slot(self, machine: Machine) -> None:
        while (job := self._take(machine)) is not None:
            try:
                self._run(job, machine)
            finally:
                with self.cond:
                    self.active -= 1
                    machine.running -= 1
                    machine.exclusive = False if machine.running == 0 else machine.exclusive
                    self.cond.notify_all()

    def _take(self, machine: Machine) -> Job | None:
        """The first queued job this machine may run now; None when there is no more."""
        with self.cond:
            while True:
                self._give_up_orphans()
                if self.stop.is_set() or machine.lost or not (self.queue or self.active):
                    return None
                job = self._pick(machine)
                if job is not None:
                    self.queue.remove(job)
                    self.active += 1
                    machine.running += 1
                    machine.exclusive = job.is_host
                    return job
                self.cond.wait(0.5)

    def _pick(self, machine: Machine) -> Job | None:
        if machine.exclusive:
            return None
        for job in self.queue:
            if machine.name in dict(job.lost_on):
                continue
            if job.is_host and machine.running:
                return None
            return job
        return None

    def _give_up_orphans(self) -> None:
        """Jobs that no live machine may take end infra, saying which hosts dropped them."""
        live = [m.name for m in self.machines if m.slots and not m.lost]
        for job in list(self.queue):
            if not any(n not in dict(job.lost_on) for n in live):
                self.queue.remove(job)
                self._end(job, "")

    def _run(self, job: Job, machine: Machine) -> None:
        name = job.batch.kernel.spec.name
        runner = machine.runner_for(job.batch)
        workdir = fresh_workdir(self.run_dir, job.workdir_name)
        kept: set[str] = set()

        def keep(cell_id: str, result: dict[str, Any]) -> None:
            doc = dict(result, run_host=machine.name)
            rundir.write_json(self.run_dir / "cells" / f"{cell_id}.json", doc)
            kept.add(cell_id)
            self.progress(name, "result", result)

        self.progress(name, "start", None)
        try:
            outcome = attempt(runner, job.batch, workdir, self.stop, keep)
        except HostLost as e:
            self._lost(job, machine, kept, str(e))
            return
        self._finish(job, outcome)

    def _lost(self, job: Job, machine: Machine, kept: set[str], why: str) -> None:
        """The machine is gone: re-queue what it had not sent back, first in line."""
        rest = tuple(c for c in job.batch.cells if c.id not in kept)
        lost_on = (*job.lost_on, (machine.name, why))
        with self.cond:
            machine.lost = why
            if rest and not self.stop.is_set():
                self.queue.appendleft(Job(Batch(job.batch.kernel, rest), lost_on))
                self.cond.notify_all()
                return
        why = f"host {machine.name} dropped: {why}" if rest else ""
        self._finish(job, BatchOutcome({}, "remote", "", machine.name, failure=why))

    def _finish(self, job: Job, outcome: BatchOutcome) -> None:
        if job.lost_on and outcome.failure:
            outcome = replace(outcome, failure=f"{_dropped(job)}; then {outcome.failure}")
        self.outcomes[job.batch.kernel.spec.name] = outcome
        self.record(self.run_dir, job.batch.kernel.spec.name, outcome)
        self.progress(job.batch.kernel.spec.name, "done", None)

    def _end(self, job: Job, why: str) -> None:
        """A job that will not run (again): its cells without a result become infra."""
        if job.lost_on and not why:
            why = f"{_dropped(job)}; no other slot left to re-run {len(job.batch.cells)} cells"
        outcome = BatchOutcome({}, "remote" if job.lost_on else "", "", "", failure=why)
        self._finish(replace(job, lost_on=()), outcome)


def _dropped(job: Job) -> str:
    return "; ".join(f"host {n} dropped: {why}" for n, why in job.lost_on)
