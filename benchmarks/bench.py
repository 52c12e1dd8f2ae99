"""How fast kmatrix is, side by side with what it wraps, on this machine, in one run.

    python benchmarks/bench.py [--repeats 3] [--skip-vm-run] [--cells 1000]

Prints, for the goals in README.md's "Performance" section:
- bare `vng --exec true` on the cached bookworm 6.1 (staged as the runner stages it)
  vs kmatrix's boot-to-first-cell (VngRunner, one 1A cell), medians of `--repeats`;
- kmatrix's own overhead in real `kmatrix run`s (host kernel; one VM kernel): wall time
  minus the time inside cells (their started_at/ended_at) and boots (batches/*.json);
- cells per hour for the default profile, measured by the VM run above;
- report rendering time for a synthetic run of `--cells` cells (~100 samples each);
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
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from matrix.kernels.catalog import Catalog  # noqa: E402
from matrix.model import Batch, Cell, Limits, ResolvedKernel  # noqa: E402
from matrix.plan import config  # noqa: E402
from matrix.run import procs  # noqa: E402
from matrix.runners.vng import VngRunner, find_tool, stage_kernel, vng_env  # noqa: E402

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
    cell = Cell("6.1", "1A", (), 0, Limits(window_s=5.0, stall_s=5.0), kernel.identity)
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


def synthetic_run(root: Path, n_cells: int) -> Path:
    """A run directory of `n_cells` puzzle-2 and puzzle-1 results, ~100 samples each."""
    run = root / "synthetic"
    (run / "cells").mkdir(parents=True)
    (run / "batches").mkdir()
    kernels = [f"k{i}" for i in range(max(1, n_cells // 100))]
    cells = []
    for i in range(n_cells):
        kernel, scenario = kernels[i % len(kernels)], ("1A", "1B", "2A", "2B")[i % 4]
        cell = {"id": f"c{i:05d}", "kernel": kernel, "scenario": scenario, "trial": 0}
        cell |= {"sysctls": {"net.ipv4.tcp_tw_reuse": str(i // 4 % 50)}, "window_s": 25.0}
        cell |= {"iteration_cap": 20000, "stall_s": 10.0, "sample_s": 0.2}
        cells.append(cell)
        (run / "cells" / f"{cell['id']}.json").write_text(json.dumps(_result(cell, i)))
    for k in kernels:
        batch = {"runner": "vng", "accelerator": "tcg", "host": "bench", "failure": ""}
        (run / "batches" / f"{k}.json").write_text(json.dumps(batch | {"boot_s": 15.0}))
    plan = {
        "cells": cells,
        "kernels": [
            {"name": k, "kind": "debian", "release": f"6.{i}.0-1-amd64"}
            for i, k in enumerate(kernels)
        ],
        "fixed_sysctls": [],
    }
    (run / "plan.json").write_text(json.dumps(plan))
    manifest = {"run_id": "synthetic", "kmatrix_version": "bench", "command": "bench"}
    manifest |= {"started_at": "2026-01-01T00:00:00+00:00", "ended_at": "", "host": "bench"}
    manifest |= {"host_kernel": "", "python": "", "qemu_version": "", "config_path": ""}
    (run / "manifest.json").write_text(json.dumps(manifest | {"interrupted": False}))
    return run


def _result(cell: dict[str, Any], i: int) -> dict[str, Any]:
    """A collector result shaped like a real one: a crawl every third puzzle-2 cell."""
    doc: dict[str, Any] = {"cell_id": cell["id"], "scenario": cell["scenario"], "status": "ok"}
    doc |= {"kernel_release": "6.1.0-1-amd64", "error": None, "started_at": 0, "ended_at": 25}
    doc |= {"evidence": {"stall": None, "final": {"state": "R", "wchan": "", "stack": ""}}}
    doc["sysctls"] = {"requested": cell["sysctls"], "read_back": cell["sysctls"], "problems": []}
    if cell["scenario"] in ("1A", "1B"):
        doc |= {"series": [], "metrics": {"bytes_queued": 3_973_120, "sends": 243}}
        return doc
    series, n = [], 0
    for k in range(100):
        n += 800 if (i % 3 or k < 30) else 40
        series.append(
            {
                "t": k * 0.25,
                "iterations": n,
                "tw": min(n, 14100),
                "state": "R",
                "wchan": "",
                "utime": k * 0.05,
                "stime": k * 0.2,
            }
        )
    doc |= {"series": series, "metrics": {"iterations": n, "elapsed_s": 25.0, "tw_max": 14100}}
    return doc


def render_rows(tmp: Path, n_cells: int) -> list[Row]:
    """Load (classify) and render a synthetic run, timed separately."""
    from matrix.report.render import render_report
    from matrix.results.table import load_run

    run = synthetic_run(tmp, n_cells)
    started = time.monotonic()
    data = load_run(run)
    loaded = time.monotonic()
    render_report(data, tmp / "synthetic-report")
    done = time.monotonic()
    total = done - started
    text = f"{total:.2f} s (load + classify {loaded - started:.2f} s, render {done - loaded:.2f} s)"
    return [(f"report of {n_cells} cells with plots", text, "< 3 s", total < 3.0)]


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
