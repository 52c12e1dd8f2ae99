"""`kmatrix run` as a tuple of small steps: select, resolve, plan, check, execute,
tabulate, report. Each step takes and returns plain data, so each can be tested alone."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matrix import __version__
from matrix.classify import remeasure
from matrix.classify.rules import DEFAULT_THRESHOLDS, Thresholds
from matrix.errors import CatalogError, ConfigError
from matrix.kernels import archive_trust
from matrix.model import Batch, BatchOutcome, KernelSpec, ResolvedKernel
from matrix.plan import cells as plan
from matrix.plan.config import Config
from matrix.results import exports
from matrix.results import table as results
from matrix.run import procs, rundir
from matrix.run.execute import FollowUp, Progress, record_outcome, run_batches
from matrix.runners import Runner, accel
from matrix.scenarios.catalogue import Catalogue


@dataclass(frozen=True)
class JobResult:
    run_dir: Path
    rows: list[dict[str, Any]]
    interrupted: bool
    report: Path | None


def select(config: Config, names: list[str] | None) -> list[KernelSpec]:
    return [config.kernel(n) for n in names] if names else list(config.kernels)


def resolve(specs: list[KernelSpec], catalog: Any) -> tuple[list[ResolvedKernel], dict[str, str]]:
    """Fetch what is needed; a kernel that cannot be had becomes a failure, not an abort."""
    kernels, failures = [], {}
    for spec in specs:
        try:
            kernels.append(catalog.fetch(spec))
        except CatalogError as e:
            failures[spec.name] = str(e)
            kernels.append(ResolvedKernel(spec, release="unresolved"))
    return kernels, failures


def auto_jobs(config: Config) -> int:
    """VMs at once that fit: one per `cpus` cores, leaving memory for the host."""
    if config.settings.jobs:
        return config.settings.jobs
    cores = os.cpu_count() or 1
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    by_mem = max(1, (mem_mb - 2048) // (config.settings.memory_mb + 512))
    return max(1, min(cores // config.settings.cpus, by_mem))


def start_run(
    run_dir: Path,
    batches: list[Batch],
    config: Config,
    argv: list[str],
    shard: dict[str, Any] | None = None,
) -> None:
    """plan.json and manifest.json, before anything runs; a shard's manifest says which
    part of which plan it holds (see `matrix.plan.shard`)."""
    rundir.check_writable(run_dir)
    doc = plan.to_doc(batches, config.sweep.fixed, config.catalogue, config.sweep.baseline)
    rundir.write_json(run_dir / "plan.json", doc)
    man = manifest(run_dir, config, argv)
    if shard is not None:
        man["shard"] = shard
    rundir.write_json(run_dir / "manifest.json", man)


def manifest(run_dir: Path, config: Config, argv: list[str]) -> dict[str, Any]:
    return {
        "run_id": run_dir.name,
        "kmatrix_version": __version__,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "ended_at": "",
        "command": " ".join(argv),
        "host": socket.gethostname(),
        "host_kernel": platform.release(),
        "python": platform.python_version(),
        "qemu_version": qemu_version(),
        "config_path": str(config.path),
        "allow_unverified": archive_trust.unverified_allowed(config.settings.allow_unverified),
        "guest_user": config.settings.guest_user or "",
        "interrupted": False,
    }


def qemu_version() -> str:
    exe = shutil.which("qemu-system-x86_64")
    if not exe:
        return ""
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else ""


def finish_run(run_dir: Path, interrupted: bool) -> list[dict[str, Any]]:
    """Rebuild the table from what the run directory holds and close the manifest."""
    doc = rundir.read_json(run_dir / "manifest.json")
    doc["ended_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    doc["interrupted"] = interrupted
    rundir.write_json(run_dir / "manifest.json", doc)
    return write_tables(run_dir)


def write_tables(run_dir: Path) -> list[dict[str, Any]]:
    """results.jsonl and results.junit.xml, rebuilt from what the run directory holds."""
    rows = results.load_run(run_dir).table.to_dict(orient="records")
    results.write_table(run_dir, rows)
    write_junit(run_dir, rows)
    return rows


def write_junit(run_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """results.junit.xml next to results.jsonl, for CI systems that read JUnit."""
    path = run_dir / "results.junit.xml"
    tmp = path.with_suffix(".xml.tmp")
    tmp.write_text(exports.junit_xml(rows, run_dir.name), encoding="utf-8")
    tmp.replace(path)
    return path


def pending(batches: list[Batch], run_dir: Path) -> list[Batch]:
    """For --resume: the batches with only their cells that have no result yet."""
    done = set(rundir.cell_results(run_dir))
    out = []
    for b in batches:
        cells = tuple(c for c in b.cells if c.id not in done)
        if cells:
            out.append(Batch(b.kernel, cells))
    return out


def execute(
    batches: list[Batch],
    runner_for: Any,
    run_dir: Path,
    jobs: int,
    progress: Progress,
    failures: dict[str, str],
    remotes: Any = (),
) -> bool:
    """Run everything; return True if a stop signal cut the run short.

    Under a guardian (see `matrix.run.procs`): if this process dies, however it dies, the
    VMs and agents it started die with it, found by group and by the run's work dir.
    """
    stop = threading.Event()
    for name, why in failures.items():
        record_outcome(run_dir, name, BatchOutcome({}, "catalog", "", "", failure=why))
    runnable = [b for b in batches if b.kernel.spec.name not in failures]
    with procs.guarded(Path(run_dir).resolve() / "work"), stop_on_signals(stop):
        if jobs:
            accel.decide_for_run(runnable, runner_for, run_dir, stop)
        follow = None if remotes else follow_up(run_dir)
        run_batches(runnable, runner_for, run_dir, jobs, stop, progress, remotes, "", follow)
        if remotes:
            remeasure_rounds(runnable, runner_for, run_dir, jobs, stop, progress, remotes)
    return stop.is_set()


def run_scenarios(run_dir: Path) -> Catalogue:
    """The scenarios a run was planned with, from its plan.json."""
    return plan.scenarios_from(rundir.read_json(run_dir / "plan.json"))


def follow_up(run_dir: Path, t: Thresholds = DEFAULT_THRESHOLDS) -> FollowUp:
    """After a batch: its cells whose verdict is not settled, as one more batch of that
    kernel; at most `t.remeasure_max` of them in a row, even when a re-measurement
    itself brings nothing back."""

    def next_batch(done: Batch, given: int) -> Batch | None:
        if given >= t.remeasure_max:
            return None
        planned = Batch(done.kernel, tuple(replace(c, attempt=1) for c in done.cells))
        raw = rundir.cell_results(run_dir)
        again = remeasure.next_round([planned], raw, t, run_scenarios(run_dir))
        return again[0] if again else None

    return next_batch


def remeasure_rounds(
    batches: list[Batch],
    runner_for: Any,
    run_dir: Path,
    jobs: int,
    stop: threading.Event,
    progress: Progress,
    remotes: Any = (),
    t: Thresholds = DEFAULT_THRESHOLDS,
) -> None:
    """With SSH hosts: measure again every cell whose verdict rests on a thin margin,
    one round (a boot per kernel) at a time, at most `t.remeasure_max` rounds."""
    for n in range(2, t.remeasure_max + 2):
        raw = rundir.cell_results(run_dir)
        again = remeasure.next_round(batches, raw, t, run_scenarios(run_dir))
        if stop.is_set() or not again:
            return
        for b in again:
            progress(b.kernel.spec.name, "remeasure", {"cells": len(b.cells), "attempt": n})
        run_batches(again, runner_for, run_dir, jobs, stop, progress, remotes, f"+r{n}")


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C or SIGTERM sets `stop`; runners then tear down and keep what they have."""

    def handler(signum: int, _frame: Any) -> None:
        print(
            f"\nkmatrix: {signal.Signals(signum).name}: stopping, keeping finished cells",
            file=sys.stderr,
        )
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def check_runners(batches: list[Batch], runner_for: Any, failures: dict[str, str]) -> None:
    """Every runner says what it is missing before any VM boots."""
    seen: set[str] = set()
    for b in batches:
        if b.kernel.spec.name in failures:
            continue
        r: Runner = runner_for(b)
        if r.name not in seen:
            r.check()
            seen.add(r.name)


def parse_sysctl_options(
    options: list[str], flag: str = "--sysctl", example: str = "net.ipv4.tcp_tw_reuse=0,1"
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """--sysctl KEY=V1,V2 ... (or --param NAME=V1,V2) -> the swept values."""
    out = []
    for opt in options:
        key, sep, values = opt.partition("=")
        if not sep or not values:
            raise ConfigError(
                "command line", f"{flag} {opt}", f"expected KEY=VALUE[,VALUE...], e.g. {example}"
            )
        out.append((key.strip(), tuple(v.strip() for v in values.split(","))))
    return tuple(out)
