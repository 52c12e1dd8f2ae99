"""How fast kmatrix is, side by side with what it wraps, on this machine, in one run.

    python benchmarks/bench.py [--repeats 3] [--skip-vm-run] [--cells 1000]

Prints, for the goals in README.md's "Performance" section:
- bare `vng --exec true` on the cached bookworm 6.1 (staged as the runner stages it: the
  package's bzImage, and the unpacked PVH image kmatrix boots) vs kmatrix's
  boot-to-first-cell (VngRunner, one 1A cell), medians of `--repeats`, and where
  kmatrix's time after the agent started went (the cell's own `timing`);
- kmatrix's own overhead in real `kmatrix run`s (host kernel; one VM kernel): wall time
  minus the time inside cells (their started_at/ended_at) and boots (batches/*.json);
- cells per hour for the default profile, measured by the VM run above;
- report rendering time for `--cells` recorded cells, replicated, 100 samples each (see
  benchmarks/report_speed.py, which also times 10,000);
- peak RSS of the orchestrator process (VmHWM) and of this process and its children.
Needs root, QEMU, virtme-ng and the 6.1 kernel in the cache (`kmatrix kernels fetch 6.1`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import bound  # noqa: E402

from matrix.classify import series  # noqa: E402
from matrix.kernels.catalog import Catalog  # noqa: E402
from matrix.model import Batch, Cell, Limits, ResolvedKernel  # noqa: E402
from matrix.plan import cells as plan  # noqa: E402
from matrix.plan import config  # noqa: E402
from matrix.run import procs  # noqa: E402
from matrix.runners import pvh  # noqa: E402
from matrix.runners.vng import DEFAULT_IMAGE_CACHE, VngRunner, find_tool, stage_kernel, vng_env  # noqa: E402
from matrix.scenarios.catalogue import builtin  # noqa: E402

Row = tuple[str, str, str, bool | None]
"""(figure, measured, goal, met); met is None where there is no goal."""


def kernel_61(name: str = "6.1") -> ResolvedKernel:
    """A kernel of kernels.toml (bookworm's 6.1 by default) through the catalog: from
    the cache, no network when it is there."""
    cfg = config.load(REPO / "kernels.toml")
    return Catalog(cfg.settings.cache_dir).fetch(cfg.kernel(name))


def bare_vng(kernel: ResolvedKernel, work: Path, unpacked: bool = False) -> float:
    """Wall seconds of `vng --exec true` with the flags the runner needs to boot at all,
    on the package's bzImage or (`unpacked`) on the PVH image the runner boots."""
    boot = pvh.boot_image(Path(kernel.vmlinuz or ""), DEFAULT_IMAGE_CACHE) if unpacked else None
    if boot is not None and boot.kind != "pvh":
        raise SystemExit(f"bench: no PVH image for {kernel.vmlinuz}: {boot.reason}")
    image = stage_kernel(kernel, work / "kernel", boot.path if boot else None)
    argv = [find_tool("vng") or "vng", "--run", str(image), "--force-9p", "--disable-kvm"]
    argv += ["--memory", "2048", "--cpus", "1", "--exec", "true"]
    started = time.monotonic()
    session = procs.start_session(argv, work / "vng.log", cwd=work, env=vng_env(argv[0]))
    try:
        session.proc.wait(timeout=180)
    finally:
        procs.kill_group(session)
    return time.monotonic() - started


def kmatrix_first_cell(kernel: ResolvedKernel, work: Path) -> tuple[float, float, dict]:
    """(boot_s as the runner records it, seconds from run_batch to the first result,
    the cell's own timing: setup_s, program_s, collect_s)."""
    cell = Cell(
        "6.1",
        "1A",
        (),
        0,
        Limits(window_s=5.0, stall_s=5.0),
        kernel.identity,
        program=plan.program(builtin().get("1A")),
    )
    first: list[float] = []
    started = time.monotonic()
    outcome = VngRunner(accel="tcg", cpus=1, memory_mb=2048).run_batch(
        Batch(kernel, (cell,)), work, threading.Event(), lambda *_: first.append(time.monotonic())
    )
    if outcome.failure or not first:
        raise SystemExit(f"kmatrix boot failed: {outcome.failure}\n{outcome.console_tail}")
    if outcome.boot_image != "pvh":
        raise SystemExit(f"bench: kmatrix booted {outcome.boot_image}, not the PVH image")
    timing = next(iter(outcome.results.values())).get("timing") or {}
    return outcome.boot_s or 0.0, first[0] - started, timing


def boot_rows(kernel: ResolvedKernel, tmp: Path, repeats: int) -> list[Row]:
    """Alternate bare (bzImage, then the PVH image) and kmatrix boots so that drift in the
    machine's load hits all three."""
    pvh.boot_image(Path(kernel.vmlinuz or ""), DEFAULT_IMAGE_CACHE)  # unpacked before timing
    bare, bare_pvh, boot, first, timings = [], [], [], [], []
    for i in range(repeats):
        bare.append(bare_vng(kernel, tmp / f"bare{i}"))
        bare_pvh.append(bare_vng(kernel, tmp / f"barepvh{i}", unpacked=True))
        b, f, t = kmatrix_first_cell(kernel, tmp / f"km{i}")
        boot.append(b)
        first.append(f)
        timings.append(t)
    mb, mp, mboot, mf = (statistics.median(x) for x in (bare, bare_pvh, boot, first))

    def spread(xs: list[float]) -> str:
        return ", ".join(f"{x:.1f}" for x in xs)

    phase = {k: statistics.median(t.get(k, 0.0) for t in timings) for k in timings[0]}
    where = ", ".join(f"{k} {v:.2f}" for k, v in sorted(phase.items()))
    return [
        (
            f"bare vng --exec true, bzImage (median of {repeats})",
            f"{mb:.1f} s ({spread(bare)})",
            "",
            None,
        ),
        (
            "bare vng --exec true, the same kernel's PVH image",
            f"{mp:.1f} s ({spread(bare_pvh)})",
            "",
            None,
        ),
        ("kmatrix boot to agent start (boot_s)", f"{mboot:.1f} s ({spread(boot)})", "", None),
        ("kmatrix's first cell, median (s)", where, "", None),
        (
            "kmatrix boot to first 1A result",
            f"{mf:.1f} s ({spread(first)}) = {mf / mb:.2f}x bare vng, {mf / mp:.2f}x bare on PVH",
            "<= 1.1x bare vng",
            mf <= 1.1 * mb,
        ),
    ]


def rate_at(result: dict, n: int) -> float | None:
    """Connections per second from the loop's start to its n-th connection, the time
    interpolated between the samples around n as the classifier does; None short of n."""
    pts = series.points(result)
    if pts[-1][1] < n:
        return None
    t = series.time_at(pts, n)
    return n / t if t > 0 else None


def loop_cells(kernel: ResolvedKernel, repeats: int) -> list[Cell]:
    """Alternating, in one guest: the seed's bare 2B loop, then kmatrix's 2B cell (the
    seed's sysctls, the repository's sweep limits and port range)."""
    out = []
    for trial in range(repeats):
        seed = bound.seed_cell(kernel, trial)
        sysctls = tuple(
            sorted({**dict(seed.sysctls), "net.ipv4.tcp_max_tw_buckets": "65535"}.items())
        )
        ours = replace(
            seed,
            scenario="2B",
            sysctls=sysctls,
            params=(),
            program=plan.program(builtin().get("2B")),
        )
        out += [replace(seed, sysctls=sysctls), ours]
    return out


def loop_rows(kernel: ResolvedKernel, tmp: Path, repeats: int) -> list[Row]:
    """The collector's cost: the two loops' rates over their first bound.SEED_CONNECTIONS."""
    cells = loop_cells(kernel, repeats)
    outcome = VngRunner(accel="tcg", cpus=1, memory_mb=2048).run_batch(
        Batch(kernel, tuple(cells)), tmp / "loops", threading.Event(), lambda *_: None
    )
    bare, ours = [], []
    for cell in cells:
        result = outcome.results.get(cell.id)
        if result is None:
            raise SystemExit(f"loop benchmark: no result for {cell.scenario} ({outcome.failure})")
        if cell.scenario == "seed-2B":
            bare.append(float(result["metrics"]["rate"]))
        else:
            rate = rate_at(result, bound.SEED_CONNECTIONS)
            if rate is None:
                raise SystemExit("loop benchmark: the 2B cell never reached its first connections")
            ours.append(rate)
    mb, mo = statistics.median(bare), statistics.median(ours)

    def spread(xs: list[float]) -> str:
        return ", ".join(f"{x:.0f}" for x in xs)

    return [
        (
            f"seed's bare 2B loop, first {bound.SEED_CONNECTIONS:,} connections "
            f"(median of {repeats})",
            f"{mb:.0f}/s ({spread(bare)})",
            "",
            None,
        ),
        (
            "kmatrix's 2B cell, same guest, same connections",
            f"{mo:.0f}/s ({spread(ours)}) = {mo / mb:.1%} of bare",
            ">= 90% of bare",
            mo >= 0.9 * mb,
        ),
    ]


def run_config(
    tmp: Path,
    kernel: ResolvedKernel,
    jobs: int = 1,
    cpus: int = 1,
    extra: Sequence[ResolvedKernel] = (),
) -> Path:
    """The repository's sweep and profiles, private runs/reports dirs, host + 6.1 (path)
    and any `extra` kernels (path), under their names."""
    text = (REPO / "kernels.toml").read_text()
    sweep = text[text.index("[sweep]") : text.index("[[kernel]]")]
    path = tmp / f"kernels-{jobs}x{cpus}.toml"
    path.write_text(
        f'[settings]\nruns_dir = "{tmp}/runs"\nreports_dir = "{tmp}/reports"\n'
        f'accel = "tcg"\njobs = {jobs}\ncpus = {cpus}\n{sweep}\n'
        '[[kernel]]\nname = "host"\nsource = "host"\n'
        + "".join(
            f'[[kernel]]\nname = "{k.spec.name}"\nsource = "path"\nvmlinuz = "{k.vmlinuz}"\n'
            f'modules = "{k.modules_dir}"\n'
            for k in (kernel, *extra)
        )
    )
    return path


def timed_run(cfg: Path, run_dir: Path, args: list[str]) -> tuple[float, int]:
    """Wall seconds of a real `kmatrix run` and its peak RSS in KiB (VmHWM, polled)."""
    cmd = [sys.executable, "-m", "matrix", "--config", str(cfg), "run", "--out", str(run_dir)]
    started = time.monotonic()
    proc = subprocess.Popen([*cmd, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, procs.peak_rss_kb(proc.pid) or 0)
        time.sleep(0.2)
    wall = time.monotonic() - started
    if proc.returncode not in (0, 1):
        raise SystemExit(f"kmatrix run failed ({proc.returncode}): {proc.stderr.read()[-2000:]}")
    return wall, peak


def inside(run_dir: Path) -> tuple[float, float, dict[str, list[float]]]:
    """(seconds inside cells, seconds booting, cell durations by scenario) of a run."""
    cells, by_scenario = 0.0, {}
    for p in (run_dir / "cells").glob("*.json"):
        doc = json.loads(p.read_text())
        d = float(doc["ended_at"]) - float(doc["started_at"])
        cells += d
        by_scenario.setdefault(doc["scenario"], []).append(d)
    boots = sum(
        float(json.loads(p.read_text()).get("boot_s") or 0.0)
        for p in (run_dir / "batches").glob("*.json")
    )
    return cells, boots, by_scenario


def overhead_row(label: str, run_dir: Path, wall: float) -> tuple[Row, dict[str, list[float]]]:
    cells, boots, by_scenario = inside(run_dir)
    own = wall - cells - boots
    n = sum(len(v) for v in by_scenario.values())
    text = (
        f"{own / wall:.1%} ({own:.1f} s of {wall:.1f} s; {n} cells {cells:.1f} s, "
        f"boot {boots:.1f} s)"
    )
    return (f"overhead, {label}", text, "< 5%", own / wall < 0.05), by_scenario


def fixed_row(tmp: Path, kernel: ResolvedKernel, repeats: int) -> tuple[Row, int]:
    """kmatrix's fixed cost per run, where it shows: a host-kernel run of short cells
    (1A and 1B, three trials each: ~0.3 s a cell), report included. Fixed cost is the
    run's wall time minus the time inside its cells; median of `repeats` runs."""
    own = tmp / "short"
    own.mkdir()
    cfg = run_config(own, kernel)
    fixed, walls, peak = [], [], 0
    for i in range(repeats):
        run_dir = own / "runs" / f"short-{i}"
        args = ["--kernels", "host", "--scenarios", "1A,1B", "--trials", "3"]
        wall, p = timed_run(cfg, run_dir, args)
        cells, _, _ = inside(run_dir)
        fixed.append(wall - cells)
        walls.append(wall)
        peak = max(peak, p)
    f = statistics.median(fixed)
    text = f"{f:.2f} s (median of {repeats}: " + ", ".join(f"{x:.2f}" for x in fixed)
    text += f"; runs took {statistics.median(walls):.2f} s for 6 cells)"
    return ("fixed cost of a run: host kernel, 6 short cells, report", text, "< 1 s", f < 1.0), peak


def vm_run_rows(kernel: ResolvedKernel, tmp: Path) -> tuple[list[Row], int]:
    """One VM kernel with the default sweep: kmatrix's share of it, and cells per hour."""
    cfg = run_config(tmp, kernel)
    wall, peak = timed_run(cfg, tmp / "vm-run", ["--kernels", "6.1"])
    row, by_scenario = overhead_row("one VM kernel (6.1, TCG), default sweep", tmp / "vm-run", wall)
    n = sum(len(v) for v in by_scenario.values())
    rate = n * 3600 / wall
    text = f"{rate:.0f} per VM at a time (measured: this run's {n} cells in {wall:.0f} s)"
    return [row, ("cells per hour, default profile, TCG, one VM", text, "", None)], peak


def slot_rows(kernels: list[ResolvedKernel], tmp: Path) -> list[Row]:
    """VM slots on this machine's cores: the 2B sweep on two kernels (twelve cells) as
    VMs of one vCPU each, one per core, and as one VM with every core: cells per hour,
    and how steady the loop's rate before the knee is across the cells (coefficient of
    variation)."""
    cores = os.cpu_count() or 1
    names = ",".join(k.spec.name for k in kernels)
    rows = []
    for jobs, cpus in ((cores, 1), (1, cores)):
        own = tmp / f"slots-{jobs}x{cpus}"
        own.mkdir()
        cfg = run_config(own, kernels[0], jobs, cpus, extra=kernels[1:])
        run_dir = own / "runs" / "slots"
        wall, _ = timed_run(cfg, run_dir, ["--kernels", names, "--scenarios", "2B", "--no-report"])
        rates = []
        for p in (run_dir / "cells").glob("*.json"):
            rate = rate_at(json.loads(p.read_text()), bound.SEED_CONNECTIONS)
            if rate is not None:
                rates.append(rate)
        n = len(list((run_dir / "cells").glob("*.json")))
        cv = statistics.pstdev(rates) / statistics.mean(rates) if len(rates) > 1 else float("nan")
        text = (
            f"{n * 3600 / wall:.0f} cells/h ({n} cells in {wall:.0f} s); rate before the "
            f"knee {statistics.median(rates):.0f}/s median, CV {cv:.1%}"
            if rates
            else "no rates"
        )
        rows.append((f"slots: {jobs} VM x {cpus} vCPU, 2B on {names}", text, "", None))
    return rows


def render_rows(tmp: Path, n_cells: int) -> list[Row]:
    """Load (classify) and render a run of recorded cells replicated to `n_cells`, timed
    separately (benchmarks/report_speed.py; its goals)."""
    from report_speed import GOALS, measure

    load_s, render_s, _ = measure(tmp, n_cells, samples=100, repeats=1)
    goal = GOALS.get(n_cells, GOALS[1000] * n_cells / 1000)
    text = f"{render_s:.2f} s render (load + classify {load_s:.2f} s), 100 samples a cell"
    return [(f"report of {n_cells} cells with plots", text, f"< {goal:g} s", render_s < goal)]


def rss_rows(run_peaks_kb: list[int]) -> list[Row]:
    """The orchestrator's peak (the `kmatrix run` processes), then this process's own and
    its children's (QEMU included) from getrusage, for scale."""
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    peak = max(run_peaks_kb or [0]) / 1024
    return [
        ("peak RSS, `kmatrix run` process (VmHWM)", f"{peak:.0f} MB", "< 300 MB", peak < 300),
        ("peak RSS, bench process (renderer in-process)", f"{me:.0f} MB", "< 300 MB", me < 300),
        ("peak RSS, largest child (QEMU, vng, render workers)", f"{kids:.0f} MB", "", None),
    ]


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
    version = re.sub(r"\s+", " ", qemu.stdout.splitlines()[0]) if qemu.stdout else "?"
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM, kernel {platform.release()}, "
        f"{version}, Python {platform.python_version()}, "
        "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    )


def print_table(rows: list[Row]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'goal':<16}  {'':<6}  measured")
    for name, measured, goal, met in rows:
        flag = "" if met is None else ("met" if met else "MISSED")
        print(f"{name:<{width}}  {goal:<16}  {flag:<6}  {measured}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cells", type=int, default=1000, help="cells in the synthetic report")
    p.add_argument("--skip-vm-run", action="store_true", help="no default-sweep VM run")
    p.add_argument("--skip-slots", action="store_true", help="no VM slot comparison")
    p.add_argument(
        "--main-run",
        type=Path,
        help="a finished run of the main command (`scripts/nox -s matrix`): its wall time "
        "against its physical bound (benchmarks/bound.py)",
    )
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (namespaces, the guest agent)")
    print(f"machine: {machine()}", flush=True)
    kernel = kernel_61()
    with tempfile.TemporaryDirectory(prefix="kmatrix-bench-") as d:
        tmp = Path(d)
        rows = render_rows(tmp, args.cells)
        rows += boot_rows(kernel, tmp, args.repeats)
        row, peak = fixed_row(tmp, kernel, args.repeats)
        rows.append(row)
        peaks = [peak]
        rows += loop_rows(kernel, tmp, max(2, args.repeats))
        if not args.skip_vm_run:
            vm, peak = vm_run_rows(kernel, tmp)
            rows += vm
            peaks.append(peak)
        if not args.skip_slots:
            rows += slot_rows([kernel, kernel_61("6.12")], tmp)
        if args.main_run:
            cfg = REPO / "kernels.toml"
            for name, text, ratio in bound.rows(args.main_run, cfg, 0, tmp / "bound"):
                met = None if ratio is None else ratio <= bound.GOAL
                rows.append((name, text, "" if ratio is None else f"<= {bound.GOAL}x bound", met))
        rows += rss_rows(peaks)
    print_table(rows)
    print("load average at the end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
