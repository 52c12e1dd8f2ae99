"""Sessions: `tests` (everything, as CI runs it), `unit`, `lint`, `matrix` (the main job),
`nightly` (the full profile, failing on a changed verdict, with a JUnit file for CI),
`bench` (kmatrix against bare vng and its own goals; see README "Performance"),
`report_speed` (the report at 1,000 and 10,000 cells), `noise` (verdicts under a CPU burner).

Run them through `scripts/nox`, which installs the system packages first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session) -> None:
    session.install("-e", ".[test]")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: style and common bugs."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def unit(session: nox.Session) -> None:
    """Fast tests only: no namespaces, VMs, sshd or browser."""
    _install(session)
    session.run("pytest", "-m", "not integration", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Every test: unit, then integration (real namespaces, a real Debian kernel under QEMU)."""
    _install(session)
    session.run("pytest", *session.posargs)


@nox.session
def matrix(session: nox.Session) -> None:
    """The main job: run the default sweep (fetching the kernels it needs), write the report.

    Extra arguments go to `kmatrix run`, e.g. `-- --profile quick` or `-- --kernels host`.
    """
    _install(session)
    session.run("kmatrix", "run", *session.posargs)


@nox.session
def nightly(session: nox.Session) -> None:
    """Fetch, run the full profile, fail if a verdict changed, export JUnit either way.

    `nox -s nightly -- PATH` writes the JUnit file to PATH (default ./kmatrix-junit.xml).
    The export runs even when the run fails, so CI shows which cells changed or broke.
    """
    _install(session)
    junit = session.posargs[0] if session.posargs else "kmatrix-junit.xml"
    run_dir = Path("runs") / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    session.run("kmatrix", "kernels", "fetch")
    try:
        session.run(
            "kmatrix", "run", "--profile", "full", "--fail-on-change", "--out", str(run_dir)
        )
    finally:
        if (run_dir / "plan.json").is_file():
            session.run("kmatrix", "export", str(run_dir), "--format", "junit", "--output", junit)


@nox.session
def bench(session: nox.Session) -> None:
    """Boot, overhead, report and memory figures against their goals, printed as a table.

    Extra arguments go to benchmarks/bench.py, e.g. `-- --skip-vm-run --repeats 1`.
    """
    _install(session)
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session
def report_speed(session: nox.Session) -> None:
    """Render times of reports of 1,000 and 10,000 recorded cells against their goals;
    no root, no VM. Extra arguments go to benchmarks/report_speed.py, e.g.
    `-- --samples 200` or `-- --cells 1000`.
    """
    _install(session)
    session.run("python", "benchmarks/report_speed.py", *session.posargs)


@nox.session
def noise(session: nox.Session) -> None:
    """Verdicts under a CPU burner (stress-ng, which `scripts/nox -s noise` installs): three
    runs of host, 6.1 and 6.12 and the cells that disagree; ~30 minutes of both cores.

    Extra arguments go to benchmarks/noise.py, e.g. `-- --kernels host --runs 2`.
    """
    _install(session)
    session.run("python", "benchmarks/noise.py", *session.posargs)
