"""Sessions: `tests` (everything, as CI runs it), `unit`, `lint`, `matrix` (the main job).

Run them through `scripts/nox`, which installs the system packages first.
"""

from __future__ import annotations

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
    """The main job: fetch the default kernels, run the quick profile, write the report."""
    _install(session)
    session.run("kmatrix", "kernels", "fetch")
    session.run("kmatrix", "run", "--profile", "quick", *session.posargs)
