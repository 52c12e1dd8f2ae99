"""The main command's physical bound: how fast any tool could have measured what a run
of `kmatrix run` measured, on this machine.

    python benchmarks/bound.py RUN_DIR [--jobs N]

A puzzle-2 cell must make its connections up to the knee (half the port range), then
stay past it as long as its rules ask (knee_margin connections and knee_margin_s, or
collapse_s of a crawl): that part is the kernel's behaviour, taken from the cell's own
series. The connections up to the knee are timed at the seed's bare loop rate on the
same kernel (`seed-2B` in benchmarks/scenarios, one boot per kernel with three loops,
which also gives the kernel's boot time), measured with as many VMs at once as the run
had slots: what this machine's cores give when every slot is busy (two one-vCPU TCG
guests on two cores here each ran ~70% of one guest alone). Only loops that ran while
every other slot was running one too count (the first loop of a boot may start while
the other VM still boots, the last may end after the others): the share of overlap is
printed with each rate. A cell
without a series (puzzle 1, a workload) counts as long as it took. The VM kernels'
boots and cells are spread over the slots (at best evenly, never below the longest
kernel's share); the host kernel's cells run alone on the machine, so they add. The
bound leaves out everything else: starting Python for each cell, the agent, pulling
results back, the report.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from matrix.classify import remeasure  # noqa: E402
from matrix.model import Batch, Cell, ResolvedKernel  # noqa: E402
from matrix.plan import cells as plan  # noqa: E402
from matrix.plan import config  # noqa: E402
from matrix.run import job  # noqa: E402
from matrix.runners.host import HostRunner  # noqa: E402
from matrix.runners.vng import VngRunner  # noqa: E402
from matrix.scenarios.catalogue import load_catalogue  # noqa: E402

SEED_CONNECTIONS = 8000
"""Below the knee (half the default port range, ~14,100): the loop at full speed."""
SEED_LOOPS = 3
"""Seed loops per boot: the middle one overlaps the other slots' loops."""
CONTENDED = 0.75
"""A loop counts as contended when every other slot ran a loop this share of its time
(between its loops a guest starts the next program, which keeps its core busy too)."""


@dataclass(frozen=True)
class Loop:
    """One seed loop: when it ran (wall clock, from its end and its own elapsed time)
    and its rate."""

    start: float
    end: float
    rate: float


@dataclass(frozen=True)
class KernelBare:
    """The seed's bare loop on one kernel: its rate with every slot busy (or alone, on
    the host), the share of its time the other slots were looping too, the boot."""

    rate: float
    boot_s: float
    overlap: float = 1.0


def seed_cell(kernel: ResolvedKernel, trial: int = 0) -> Cell:
    """The seed's bare 2B loop as a cell, at the repository's fixed sysctls."""
    cfg = config.load(REPO / "kernels.toml")
    seed = load_catalogue([REPO / "benchmarks" / "scenarios"]).get("seed-2B")
    sysctls = tuple(sorted({"net.ipv4.tcp_tw_reuse": "0", **dict(cfg.sweep.fixed)}.items()))
    return Cell(
        kernel.spec.name,
        seed.name,
        sysctls,
        trial,
        cfg.sweep.limits,
        kernel.identity,
        params=(("connections", str(SEED_CONNECTIONS)),),
        program=plan.program(seed),
    )


def bare_loops(kernel: ResolvedKernel, work: Path) -> tuple[float, list[Loop]]:
    """One boot of `kernel` (or the host runner for the running kernel) with SEED_LOOPS
    seed cells: (boot_s, the loops)."""
    cells = tuple(seed_cell(kernel, trial) for trial in range(SEED_LOOPS))
    work.mkdir(parents=True, exist_ok=True)
    if kernel.spec.kind == "host":
        runner = HostRunner()
    else:
        runner = VngRunner(accel="tcg", cpus=1, memory_mb=2048)
    outcome = runner.run_batch(Batch(kernel, cells), work, threading.Event(), lambda *_: None)
    loops = []
    for c in cells:
        doc = outcome.results.get(c.id)
        if doc is None:
            raise SystemExit(f"bound: no bare loop result on {kernel.spec.name}: {outcome.failure}")
        m = doc["metrics"]
        end = float(doc["ended_at"])
        loops.append(Loop(end - float(m["elapsed_s"]), end, float(m["rate"])))
    return float(outcome.boot_s or 0.0), loops


def overlap(loop: Loop, others: list[list[Loop]], need: int) -> float:
    """The share of `loop`'s time during which at least `need` of the other VMs were
    running a loop of their own."""
    if need <= 0:
        return 1.0
    times = (t for vm in others for o in vm for t in (o.start, o.end))
    edges = sorted({loop.start, loop.end, *times})
    busy = 0.0
    for a, b in zip(edges, edges[1:], strict=False):
        if a < loop.start or b > loop.end:
            continue
        mid = (a + b) / 2
        running = sum(any(o.start <= mid < o.end for o in vm) for vm in others)
        busy += (b - a) if running >= need else 0.0
    return busy / max(1e-9, loop.end - loop.start)


def contended(boot_s: float, mine: list[Loop], others: list[list[Loop]], slots: int) -> KernelBare:
    """The mean rate of the loops that ran with every other slot looping (CONTENDED);
    when none did, of those that overlapped most, with that share."""
    shares = [overlap(lp, others, min(slots - 1, len(others))) for lp in mine]
    full = [lp.rate for lp, s in zip(mine, shares, strict=True) if s >= CONTENDED]
    if full:
        kept = [s for s in shares if s >= CONTENDED]
        return KernelBare(statistics.mean(full), boot_s, statistics.mean(kept))
    best = max(shares)
    rates = [lp.rate for lp, s in zip(mine, shares, strict=True) if s == best]
    return KernelBare(statistics.mean(rates), boot_s, best)


def cell_need_s(doc: dict, rate: float) -> float:
    """What the cell had to take: the connections to its knee at the bare rate, plus
    what its rules kept it past the knee; without a knee, its connections at the bare
    rate plus any time without progress (a stall waits stall_s by definition); without
    a series, as long as it took."""
    series = doc.get("series") or []
    metrics = doc.get("metrics") or {}
    if not series or "iterations" not in series[-1]:
        return float(doc["ended_at"]) - float(doc["started_at"])
    end_t = float(series[-1]["t"])
    knee, knee_t = metrics.get("knee"), metrics.get("knee_t")
    if knee and knee_t is not None:
        return int(knee) / rate + max(0.0, end_t - float(knee_t))
    done = int(series[-1]["iterations"] or 0)
    progress_t = next((float(p["t"]) for p in series if (p["iterations"] or 0) >= done), end_t)
    return done / rate + max(0.0, end_t - progress_t)


def read_cells(run_dir: Path) -> dict[str, list[dict]]:
    """The run's cell results by kernel name (first attempts and re-measurements alike:
    the run had to make each one)."""
    by_kernel: dict[str, list[dict]] = {}
    plan_doc = json.loads((run_dir / "plan.json").read_text())
    kernel_of = {c["id"]: c["kernel"] for c in plan_doc["cells"]}
    for p in sorted((run_dir / "cells").glob("*.json")):
        doc = json.loads(p.read_text())
        name = kernel_of.get(remeasure.base_of(str(doc.get("cell_id"))), "?")
        by_kernel.setdefault(name, []).append(doc)
    return by_kernel


def wall_s(run_dir: Path) -> float:
    """The run's wall time from its manifest (started_at and ended_at, ISO 8601)."""
    man = json.loads((run_dir / "manifest.json").read_text())
    started, ended = (datetime.fromisoformat(man[k]) for k in ("started_at", "ended_at"))
    return (ended - started).total_seconds()


def bound_s(
    needs: dict[str, list[float]], bare: dict[str, KernelBare], host: set[str], slots: int
) -> float:
    """Host kernels' cells one after another, then the VM kernels' boots and cells over
    the slots: at best evenly spread, never faster than the longest single kernel's
    boot and longest cell (a cell cannot be split)."""
    host_s = sum(sum(needs[k]) for k in needs if k in host)
    vm = [k for k in needs if k not in host]
    if not vm:
        return host_s
    total = sum(bare[k].boot_s + sum(needs[k]) for k in vm)
    longest = max(bare[k].boot_s + max(needs[k], default=0.0) for k in vm)
    return host_s + max(total / max(1, slots), longest)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--jobs", type=int, default=0, help="VM slots the run had (0: as kmatrix)")
    p.add_argument("--config", type=Path, default=REPO / "kernels.toml")
    args = p.parse_args(argv)
    for name, figure, _ in rows(args.run_dir, args.config, args.jobs, Path("/tmp/kmatrix-bound")):
        print(f"{name}: {figure}")
    return 0


GOAL = 1.25
"""The main command's wall time against its bound, at most."""


def rows(
    run_dir: Path, cfg_path: Path, jobs: int, work: Path
) -> list[tuple[str, str, float | None]]:
    """(figure, text, wall/bound or None) lines: per kernel the bare rate, boot and
    need, then the bound and the run's wall time against it."""
    from matrix.kernels.catalog import Catalog

    cfg = config.load(cfg_path)
    slots = jobs or job.auto_jobs(cfg)
    by_kernel = read_cells(run_dir)
    catalog = Catalog(cfg.settings.cache_dir)
    kernels = {name: catalog.fetch(cfg.kernel(name)) for name in sorted(by_kernel)}
    host = {name for name, k in kernels.items() if k.spec.kind == "host"}
    bare: dict[str, KernelBare] = {}
    for name in sorted(host):
        boot_s, loops = bare_loops(kernels[name], work / name)
        bare[name] = KernelBare(statistics.mean(lp.rate for lp in loops), boot_s)
    with ThreadPoolExecutor(max_workers=slots) as pool:
        vm = sorted(set(kernels) - host)
        runs = pool.map(lambda n: bare_loops(kernels[n], work / n), vm)
        measured = dict(zip(vm, runs, strict=True))
    for name, (boot_s, loops) in measured.items():
        others = [lp for other, (_, lp) in measured.items() if other != name]
        bare[name] = contended(boot_s, loops, others, slots)
    needs, out = {}, []
    for name in sorted(by_kernel):
        needs[name] = [cell_need_s(d, bare[name].rate) for d in by_kernel[name]]
        out.append(
            (
                f"bound, kernel {name}",
                f"bare loop {bare[name].rate:.0f}/s ({bare[name].overlap:.0%} overlapped), "
                f"boot {bare[name].boot_s:.1f} s, "
                f"{len(needs[name])} cells need {sum(needs[name]):.0f} s",
                None,
            )
        )
    bound = bound_s(needs, bare, host, slots)
    wall = wall_s(run_dir)
    cells = sum(len(v) for v in needs.values())
    median = statistics.median(sum(needs.values(), []))
    out.append(("physical bound", f"{bound:.0f} s ({cells} cells, {slots} VM slots)", None))
    out.append(("median need per cell", f"{median:.1f} s", None))
    out.append(
        ("main command wall time", f"{wall:.0f} s = {wall / bound:.2f}x the bound", wall / bound)
    )
    return out


if __name__ == "__main__":
    sys.exit(main())
