"""How fast kmatrix is, side by side with what it wraps, on this machine, in one run.

    python benchmarks/bench.py [--repeats 3] [--skip-vm-run] [--cells 1000]

Prints, for the goals in README.md's "Performance" section:
- bare `vng --exec true` on the cached bookworm 6.1 (staged as the runner stages it)
  vs kmatrix's boot-to-first-cell (VngRunner, one 1A cell), medians of `--repeats`;
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from matrix.kernels.catalog import Catalog  # noqa: E402
from matrix.model import Batch, Cell, Limits, ResolvedKernel  # noqa: E402
from matrix.plan import cells as plan  # noqa: E402
from matrix.plan import config  # noqa: E402
from matrix.run import procs  # noqa: E402
from matrix.runners.vng import VngRunner, find_tool, stage_kernel, vng_env  # noqa: E402
from matrix.scenarios.catalogue import builtin, load_catalogue  # noqa: E402

Row = tuple[str, str, str, bool | None]
"""(figure, measured, goal, met); met is None where there is no goal."""


def kernel_61() -> ResolvedKernel:
    """bookworm's 6.1 through the catalog: from the cache, no network when it is there."""
    cfg = config.load(REPO / "kernels.toml")
    return Catalog(cfg.settings.cache_dir).fetch(cfg.kernel("6.1"))


def bare_vng(kernel: ResolvedKernel, work: Path) -> float:
    """Wall seconds of `vng --exec true` with the flags the runner needs to boot at all."""
    image = stage_kernel(kernel, work / "kernel")
    argv = [find_tool("vng") or "vng", "--run", str(image), "--force-9p", "--disable-kvm"]
    argv += ["--memory", "2048", "--cpus", "1", "--exec", "true"]
    started = time.monotonic()
    session = procs.start_session(argv, work / "vng.log", cwd=work, env=vng_env(argv[0]))
    try:
        session.proc.wait(timeout=180)
    finally:
        procs.kill_group(session)
    return time.monotonic() - started


def kmatrix_first_cell(kernel: ResolvedKernel, work: Path) -> tuple[float, float]:
    """(boot_s as the runner records it, seconds from run_batch to the first result)."""
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
    return outcome.boot_s or 0.0, first[0] - started


def boot_rows(kernel: ResolvedKernel, tmp: Path, repeats: int) -> list[Row]:
    """Alternate bare and kmatrix boots so that drift in the machine's load hits both."""
    bare, boot, first = [], [], []
    for i in range(repeats):
        bare.append(bare_vng(kernel, tmp / f"bare{i}"))
        b, f = kmatrix_first_cell(kernel, tmp / f"km{i}")
        boot.append(b)
        first.append(f)
    mb, mboot, mf = (statistics.median(x) for x in (bare, boot, first))
    spread = ", ".join(f"{x:.1f}" for x in bare)
    return [
        (f"bare vng --exec true (median of {repeats})", f"{mb:.1f} s ({spread})", "", None),
        ("kmatrix boot to agent start (boot_s)", f"{mboot:.1f} s", "", None),
        (
            "kmatrix boot to first 1A result",
            f"{mf:.1f} s = {mf / mb:.2f}x bare",
            "<= 1.2x bare vng",
            mf <= 1.2 * mb,
        ),
    ]


SEED_CONNECTIONS = 8000
"""Below the knee (half the default port range, ~14,100): both loops at full speed."""


def rate_at(series: list[dict], n: int) -> float | None:
    """Connections per second from the loop's start to its n-th connection, the time
    interpolated between the two samples around n."""
    points = [(p["iterations"], p["t"]) for p in series if p.get("iterations") is not None]
    for (i0, t0), (i1, t1) in zip(points, points[1:]):
        if i0 < n <= i1 and i1 > i0:
            t = t0 + (t1 - t0) * (n - i0) / (i1 - i0)
            return n / t if t > 0 else None
    return None


def loop_cells(kernel: ResolvedKernel, repeats: int) -> list[Cell]:
    """Alternating, in one guest: the seed's bare 2B loop, then kmatrix's 2B cell (the
    seed's sysctls, the repository's sweep limits and port range)."""
    cfg = config.load(REPO / "kernels.toml")
    cat = load_catalogue([REPO / "benchmarks" / "scenarios"])
    seed, ours = cat.get("seed-2B"), cat.get("2B")
    sysctls = tuple(
        sorted(
            {
                "net.ipv4.tcp_max_tw_buckets": "65535",
                "net.ipv4.tcp_tw_reuse": "0",
                **dict(cfg.sweep.fixed),
            }.items()
        )
    )
    out = []
    for trial in range(repeats):
        for scenario, params in ((seed, (("connections", str(SEED_CONNECTIONS)),)), (ours, ())):
            out.append(
                Cell(
                    kernel.spec.name,
                    scenario.name,
                    sysctls,
                    trial,
                    cfg.sweep.limits,
                    kernel.identity,
                    params=params,
                    program=plan.program(scenario),
                )
            )
    return out


def loop_rows(kernel: ResolvedKernel, tmp: Path, repeats: int) -> list[Row]:
    """The collector's cost: the two loops' rates over their first SEED_CONNECTIONS."""
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
            rate = rate_at(result.get("series") or [], SEED_CONNECTIONS)
            if rate is None:
                raise SystemExit("loop benchmark: the 2B cell never reached its first connections")
            ours.append(rate)
    mb, mo = statistics.median(bare), statistics.median(ours)

    def spread(xs: list[float]) -> str:
        return ", ".join(f"{x:.0f}" for x in xs)

    return [
        (
            f"seed's bare 2B loop, first {SEED_CONNECTIONS:,} connections (median of {repeats})",
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


def run_config(tmp: Path, kernel: ResolvedKernel) -> Path:
    """The repository's sweep and profiles, private runs/reports dirs, host + 6.1 (path)."""
    text = (REPO / "kernels.toml").read_text()
    sweep = text[text.index("[sweep]") : text.index("[[kernel]]")]
    path = tmp / "kernels.toml"
    path.write_text(
        f'[settings]\nruns_dir = "{tmp}/runs"\nreports_dir = "{tmp}/reports"\n'
        f'accel = "tcg"\njobs = 1\n{sweep}\n[[kernel]]\nname = "host"\nsource = "host"\n'
        f'[[kernel]]\nname = "6.1"\nsource = "path"\nvmlinuz = "{kernel.vmlinuz}"\n'
        f'modules = "{kernel.modules_dir}"\n'
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


def run_rows(kernel: ResolvedKernel, tmp: Path, skip_vm: bool) -> tuple[list[Row], list[int]]:
    """Real runs: the host row with the default sweep; one VM kernel with the default sweep."""
    cfg = run_config(tmp, kernel)
    rows, peaks = [], []
    wall, peak = timed_run(cfg, tmp / "host-run", ["--kernels", "host"])
    row, _ = overhead_row("host kernel, default sweep (14 cells)", tmp / "host-run", wall)
    rows.append(row)
    peaks.append(peak)
    if skip_vm:
        return rows, peaks
    wall, peak = timed_run(cfg, tmp / "vm-run", ["--kernels", "6.1"])
    row, by_scenario = overhead_row("one VM kernel (6.1, TCG), default sweep", tmp / "vm-run", wall)
    rows.append(row)
    peaks.append(peak)
    n = sum(len(v) for v in by_scenario.values())
    rate = n * 3600 / wall
    text = f"{rate:.0f} per VM at a time (measured: this run's {n} cells in {wall:.0f} s)"
    rows.append(("cells per hour, default profile, TCG", text, "", None))
    return rows, peaks


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
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (namespaces, the guest agent)")
    print(f"machine: {machine()}", flush=True)
    kernel = kernel_61()
    with tempfile.TemporaryDirectory(prefix="kmatrix-bench-") as d:
        tmp = Path(d)
        rows = render_rows(tmp, args.cells)
        rows += boot_rows(kernel, tmp, args.repeats)
        run, peaks = run_rows(kernel, tmp, args.skip_vm_run)
        rows += run + rss_rows(peaks)
    print_table(rows)
    print("load average at the end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
