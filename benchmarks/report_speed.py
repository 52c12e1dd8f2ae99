"""How long the HTML report takes at 1,000 and 10,000 cells, on this machine.

    python benchmarks/report_speed.py [--cells 1000,10000] [--samples 0] [--repeats 1]

Builds each run directory from the cells recorded on a real kernel
(tests/fixtures/run_host_recorded), replicated into the default sweep's shape over as
many kernels as the size needs (14 cells a kernel, each with its own id, kernel and
sysctls; see tests/fixtures/recorded_runs.py), then times reading and classifying the
run (`load_run`) and rendering its report (`render_report`: the matrix page, one page
per cell, the plot assets) separately, and prints each render time against its goal:
under 1.5 s for 1,000 cells and under 10 s for 10,000. The recorded series have 2 to 5
samples; `--samples N` stretches each to N (interpolated), the size of a cell of the
default profile (100-750), to show what the plots' data costs. Needs no root.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.recorded_runs import numbered_kernels, sweep_cells, sweep_run  # noqa: E402

GOALS = {1000: 1.5, 10000: 10.0}
"""Render seconds per report size (README "Performance")."""
CELLS_PER_KERNEL = len(sweep_cells([("k", "debian", "")]))


def _at(pts: list[tuple[float, float]], t: float) -> float:
    for (t0, v0), (t1, v1) in zip(pts, pts[1:], strict=False):
        if t1 >= t:
            return v0 + (v1 - v0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.0)
    return pts[-1][1]


def stretch(doc: dict[str, Any], samples: int) -> dict[str, Any]:
    """The result with `samples` samples over the same time, its counts interpolated
    between the recorded ones and every other field taken from the sample before."""
    series = doc.get("series") or []
    if len(series) < 2 or samples <= len(series):
        return doc
    end = series[-1]["t"]
    numeric = [k for k, v in series[0].items() if isinstance(v, int | float) and k != "t"]
    lines = {
        k: [(s["t"], s[k]) for s in series if isinstance(s.get(k), int | float)] for k in numeric
    }
    out = []
    for i in range(samples):
        t = end * i / (samples - 1)
        before = max((s for s in series if s["t"] <= t), key=lambda s: s["t"])
        sample = dict(before, t=round(t, 4))
        for k, pts in lines.items():
            value = _at(pts, t)
            sample[k] = round(value) if isinstance(series[0][k], int) else round(value, 3)
        out.append(sample)
    doc["series"] = out
    return doc


def build(root: Path, cells: int, samples: int) -> Path:
    """A run directory of `cells` cells from the recorded ones."""
    run = sweep_run(
        root / f"run-{cells}", numbered_kernels(math.ceil(cells / CELLS_PER_KERNEL)), cells
    )
    if samples:
        for path in (run / "cells").glob("*.json"):
            path.write_text(json.dumps(stretch(json.loads(path.read_text()), samples)))
    return run


def measure(root: Path, cells: int, samples: int, repeats: int) -> tuple[float, float, int]:
    """(median load seconds, median render seconds, cell pages written) over `repeats`."""
    from matrix.report.render import render_report
    from matrix.results.table import load_run

    run = build(root, cells, samples)
    loads, renders = [], []
    pages = 0
    for i in range(repeats):
        started = time.monotonic()
        data = load_run(run)
        loaded = time.monotonic()
        out = root / f"report-{cells}-{i}"
        render_report(data, out)
        renders.append(time.monotonic() - loaded)
        loads.append(loaded - started)
        pages = len(list((out / "cells").glob("*.html")))
    return statistics.median(loads), statistics.median(renders), pages


def load_text() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default="1000,10000", help="report sizes, comma-separated")
    p.add_argument("--samples", type=int, default=0, help="stretch each series to N samples")
    p.add_argument("--repeats", type=int, default=1, help="renders per size (median)")
    args = p.parse_args(argv)
    sizes = [int(n) for n in args.cells.split(",") if n]
    print(f"machine: {os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} usable; {load_text()}")
    samples = f"{args.samples} samples each" if args.samples else "series as recorded, 2-5 samples"
    missed = False
    with tempfile.TemporaryDirectory(prefix="kmatrix-report-speed-") as d:
        for n in sizes:
            load_s, render_s, pages = measure(Path(d), n, args.samples, args.repeats)
            goal = GOALS.get(n)
            verdict = "" if goal is None else ("met" if render_s < goal else "MISSED")
            missed |= verdict == "MISSED"
            target = f"goal < {goal:g} s, {verdict}" if goal else "no goal"
            print(
                f"report of {n:,} cells ({samples}): render {render_s:.2f} s ({target}); "
                f"load + classify {load_s:.2f} s; {pages:,} cell pages"
            )
    print(f"at the end: {load_text()}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
