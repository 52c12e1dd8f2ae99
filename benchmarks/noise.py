"""How steady kmatrix's verdicts are when something else wants the same CPUs.

    python benchmarks/noise.py [--kernels host,6.1,6.12] [--runs 3]
                               [--burner low|same|none] [--out DIR]

Runs `kmatrix run` (the default sweep, the config kmatrix finds from the repository)
`--runs` times with `stress-ng --cpu 2` burning both cores beside it. Without
`--burner`, run 1 has the burner at a lower priority (nice 19) and every later run at
the same priority as kmatrix (nice 0); `--burner` gives every run the one setting.
Prints per run: wall time, infra cells, verdict counts, the host's load average sampled
during the run; then how many cells have the same verdict in every run (matched by
kernel, scenario, requested sysctls and trial, from `kmatrix results RUN_DIR --json`),
and each cell that does not, with its verdict and reason in every run.
Needs root, stress-ng (Debian package `stress-ng`) unless `--burner none`, and the
kernels' downloads (kmatrix fetches what is missing). Three runs of host, 6.1 and 6.12
take about 30 minutes of both cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from matrix.run import procs  # noqa: E402

NICE = {"low": 19, "same": 0}
LOAD_EVERY_S = 2.0
CellKey = tuple[str, str, str, int]
"""(kernel, scenario, requested sysctls as k=v,k=v, trial): one cell across runs."""


@dataclass(frozen=True)
class RunResult:
    number: int
    burner: str
    run_dir: Path
    wall_s: float
    returncode: int
    load: tuple[float, ...]
    rows: tuple[dict[str, Any], ...]


def kmatrix_exe() -> Path:
    """kmatrix from this interpreter's environment, never whatever PATH finds first."""
    exe = Path(sys.executable).parent / "kmatrix"
    if not exe.is_file():
        raise SystemExit(f"noise: {exe} not found; install kmatrix into this environment")
    return exe


def burner_plan(runs: int, burner: str | None) -> list[str]:
    """Run 1 at a lower priority and the rest at the same one, unless one is asked for."""
    if burner:
        return [burner] * runs
    return ["low"] + ["same"] * (runs - 1)


def check_burner(plan: list[str]) -> None:
    if any(b != "none" for b in plan) and shutil.which("stress-ng") is None:
        raise SystemExit(
            "noise: stress-ng is missing: install the Debian package (apt-get install "
            "stress-ng), or run with --burner none"
        )


@contextmanager
def burning(burner: str, log: Path) -> Iterator[None]:
    """`stress-ng --cpu 2` at the plan's priority for the duration; nothing for "none"."""
    if burner == "none":
        yield
        return
    argv = ["nice", "-n", str(NICE[burner]), "stress-ng", "--cpu", "2", "--quiet"]
    session = procs.start_session(argv, log)
    time.sleep(1.0)
    try:
        yield
    finally:
        procs.kill_group(session)


class LoadSampler:
    """The 1-minute load average every few seconds while a run goes on."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(LOAD_EVERY_S):
                return


def child_env() -> dict[str, str]:
    """vng starts its own helpers (virtme-run) by name: let them be found beside kmatrix."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(kmatrix_exe().parent), env.get("PATH", "")])
    return env


def one_run(number: int, burner: str, kernels: str, out: Path) -> RunResult:
    run_dir = out / f"run-{number}"
    argv = [str(kmatrix_exe()), "run", "--kernels", kernels, "--out", str(run_dir), "--no-report"]
    started = time.monotonic()
    with burning(burner, out / f"burner-{number}.log"), LoadSampler() as load:
        proc = subprocess.run(
            argv, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    wall = time.monotonic() - started
    if proc.returncode not in (0, 1):
        err = proc.stderr.decode(errors="replace")[-2000:]
        raise SystemExit(f"noise: kmatrix run {number} failed ({proc.returncode}):\n{err}")
    rows = tuple(results_of(run_dir))
    return RunResult(number, burner, run_dir, wall, proc.returncode, tuple(load.samples), rows)


def results_of(run_dir: Path) -> list[dict[str, Any]]:
    argv = [str(kmatrix_exe()), "results", str(run_dir), "--json"]
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def cell_key(row: dict[str, Any]) -> CellKey:
    sysctls = row.get("sysctls_requested") or {}
    text = ",".join(f"{k}={v}" for k, v in sorted(sysctls.items()))
    return str(row["kernel"]), str(row["scenario"]), text, int(row.get("trial") or 0)


def summary_line(r: RunResult) -> str:
    verdicts = Counter(str(row["verdict"]) for row in r.rows)
    counts = ", ".join(f"{v} {n}" for v, n in sorted(verdicts.items()))
    load = r.load or (0.0,)
    nice = "no burner" if r.burner == "none" else f"burner nice {NICE[r.burner]}"
    return (
        f"run {r.number} ({nice}): wall {r.wall_s:.0f} s, infra {verdicts.get('infra', 0)}, "
        f"verdicts: {counts or 'none'}; load (1 min) mean {statistics.mean(load):.1f}, "
        f"max {max(load):.1f} over {len(r.load)} samples; exit {r.returncode}; {r.run_dir}"
    )


def disagreements(runs: list[RunResult]) -> tuple[int, list[tuple[CellKey, list[str]]]]:
    """(cells in any run, [(cell, "verdict (reason)" per run)] for those that differ)."""
    by_run = [{cell_key(row): row for row in r.rows} for r in runs]
    keys = sorted(set().union(*by_run))
    differ = []
    for key in keys:
        seen = [rows.get(key) for rows in by_run]
        verdicts = {row["verdict"] if row else None for row in seen}
        if len(verdicts) > 1:
            differ.append((key, [_verdict_text(row) for row in seen]))
    return len(keys), differ


def _verdict_text(row: dict[str, Any] | None) -> str:
    if row is None:
        return "(no cell)"
    reason = str(row.get("reason") or "").replace("\n", " ")
    return f"{row['verdict']} ({reason[:160]})"


def print_agreement(runs: list[RunResult]) -> None:
    total, differ = disagreements(runs)
    print(f"\n{total - len(differ)} of {total} cells agree across {len(runs)} runs")
    for (kernel, scenario, sysctls, trial), texts in differ:
        print(f"  {kernel} {scenario} [{sysctls or 'defaults'}] trial {trial}:")
        for r, text in zip(runs, texts, strict=True):
            print(f"    run {r.number}: {text}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernels", default="host,6.1,6.12", help="as kmatrix run --kernels")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--burner", choices=("low", "same", "none"), help="the same for every run")
    p.add_argument("--out", type=Path, help="where the runs go (default runs/noise-<time>)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("noise: needs root (namespaces, the guest agent)")
    if args.runs < 1:
        raise SystemExit("noise: --runs must be at least 1")
    plan = burner_plan(args.runs, args.burner)
    check_burner(plan)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = (args.out or REPO / "runs" / f"noise-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"noise: {args.runs} runs of {args.kernels}, burners {plan}, into {out}", flush=True)
    runs = []
    for number, burner in enumerate(plan, 1):
        runs.append(one_run(number, burner, args.kernels, out))
        print(summary_line(runs[-1]), flush=True)
    print_agreement(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
