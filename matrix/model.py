"""The data that flows through the pipeline: plan -> run -> collect -> classify -> report.

Everything here is a frozen dataclass with no I/O, so every stage can be tested alone
and a value can be handed between threads without copying or locking.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class Verdict(StrEnum):
    """What a cell did. The rules that pick one live in `matrix.classify.rules`."""

    SUCCESS = "success"
    SLOWDOWN = "slowdown"
    HANG = "hang"
    FAIL = "fail"
    """The program said the behaviour is wrong (kselftest exit 1, LAVA/TAP fail)."""
    ERROR = "error"
    SKIP = "skip"
    """The program said it cannot test here (kselftest exit 4, LAVA/TAP skip)."""
    INFRA = "infra"


@dataclass(frozen=True)
class DebianSource:
    """A kernel resolved from a Debian suite: the newest package matching `package`."""

    suite: str
    package: str
    modules_package: str | None = None


@dataclass(frozen=True)
class PathSource:
    """A kernel you already have: a vmlinuz and, optionally, its modules tree."""

    vmlinuz: Path
    modules: Path | None = None


@dataclass(frozen=True)
class HostSource:
    """The running kernel; cells run in namespaces on this machine, no VM."""


KernelSource = DebianSource | PathSource | HostSource


@dataclass(frozen=True)
class KernelSpec:
    """One row of the matrix as declared in kernels.toml."""

    name: str
    source: KernelSource
    description: str = ""

    @property
    def kind(self) -> str:
        return {DebianSource: "debian", PathSource: "path", HostSource: "host"}[type(self.source)]


@dataclass(frozen=True)
class ResolvedKernel:
    """A kernel that is ready to boot: files on disk and what they are."""

    spec: KernelSpec
    release: str
    vmlinuz: Path | None = None
    modules_dir: Path | None = None
    sha256: str = ""
    package_version: str = ""

    @property
    def identity(self) -> str:
        """What makes two kernels the same for a cell id: the name plus the exact build."""
        return f"{self.spec.name}:{self.release}:{self.sha256 or self.package_version}"


@dataclass(frozen=True)
class Limits:
    """Bounds on one cell, so that no puzzle runs forever."""

    window_s: float = 25.0
    iteration_cap: int = 20000
    stall_s: float = 10.0
    sample_s: float = 0.2
    collapse_s: float = 0.0
    """Past the knee, stop a puzzle-2 loop that has run below a tenth of its rate before
    the knee this long (0: never)."""
    knee_margin: int = 1000
    """A puzzle-2 cell has shown enough this many connections past the knee (half the
    port range, where 2B runs out of ports)..."""
    knee_margin_s: float = 3.0
    """...and this many seconds past it; window_s and iteration_cap are then only
    safety limits, and a cell stopped by one of them short of the knee is inconclusive."""


@dataclass(frozen=True)
class Sweep:
    """Which scenarios run with which sysctl values; every combination becomes a cell."""

    scenarios: tuple[str, ...]
    sysctls: tuple[tuple[str, tuple[str, ...]], ...] | None
    """The run's sysctl sweep; None: each scenario sweeps its manifest's own."""
    fixed: tuple[tuple[str, str], ...] = ()
    trials: int = 1
    limits: Limits = field(default_factory=Limits)
    swept_scenarios: tuple[str, ...] | None = None
    """Scenarios the sweep's `sysctls` replace their own sweep for; None: every scenario
    whose manifest declares a sysctl sweep (the others run at their defaults)."""
    params: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Parameter values laid over the manifests' defaults, for scenarios declaring them."""
    baseline: str | None = None
    """The kernel a baseline rule compares with, when the rule names none."""


LIMIT_NAMES = (
    "window_s",
    "iteration_cap",
    "stall_s",
    "sample_s",
    "collapse_s",
    "knee_margin",
    "knee_margin_s",
)
"""Limits a scenario's program may honour; each reaches it as KMATRIX_<NAME>."""


@dataclass(frozen=True)
class Program:
    """How the agent runs a cell's scenario, resolved from its manifest at planning time:
    the argv (relative paths resolved against `directory` by the agent), how the program
    reports, its deadline, and which of the sweep's limits it honours."""

    command: tuple[str, ...]
    directory: str
    result: str = "exit"
    timeout_s: float = 60.0
    limits: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cell:
    """One measurement: a scenario on a kernel with exact sysctls, one trial."""

    kernel: str
    scenario: str
    sysctls: tuple[tuple[str, str], ...]
    trial: int
    limits: Limits
    kernel_identity: str = ""
    attempt: int = 1
    """1 for the planned measurement; 2, 3... for automatic re-measurements of a cell
    whose verdict rested on a thin margin (see `matrix.classify.remeasure`)."""
    params: tuple[tuple[str, str], ...] = ()
    """The scenario's parameters for this cell (one value of each swept list)."""
    program: Program | None = None
    """What the agent runs; None only for cells built by hand before planning."""

    @property
    def honoured(self) -> tuple[str, ...]:
        """The limits this cell's program honours (all of them for a hand-built cell)."""
        return self.program.limits if self.program else LIMIT_NAMES

    @property
    def deadline_s(self) -> float:
        """How long the agent lets the program run: for a program that measures for the
        sweep's window_s, the window plus a stall (it ends itself by then); for any
        other, its manifest's timeout_s."""
        if "window_s" in self.honoured or self.program is None:
            return self.limits.window_s + self.limits.stall_s
        return self.program.timeout_s

    @property
    def base_id(self) -> str:
        """The planned cell's id: every attempt of it shares this."""
        key = {
            "kernel": self.kernel_identity or self.kernel,
            "scenario": self.scenario,
            "sysctls": sorted(self.sysctls),
            "trial": self.trial,
            "limits": [getattr(self.limits, k) for k in LIMIT_NAMES if k in self.honoured],
        }
        if self.params:
            key["params"] = sorted(self.params)
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def id(self) -> str:
        """Stable across runs, so a nightly job or `--resume` can skip what is known."""
        return self.base_id if self.attempt == 1 else f"{self.base_id}.a{self.attempt}"

    def to_agent(self) -> dict[str, Any]:
        """The cell as the guest agent reads it (see collectors/agent.py)."""
        return {
            "id": self.id,
            "scenario": self.scenario,
            "sysctls": dict(self.sysctls),
            "trial": self.trial,
            "window_s": self.limits.window_s,
            "iteration_cap": self.limits.iteration_cap,
            "stall_s": self.limits.stall_s,
            "sample_s": self.limits.sample_s,
            "collapse_s": self.limits.collapse_s,
            "knee_margin": self.limits.knee_margin,
            "knee_margin_s": self.limits.knee_margin_s,
            "attempt": self.attempt,
            "params": dict(self.params),
            "env_limits": list(self.honoured),
            "timeout_s": self.deadline_s,
            **(
                {
                    "command": list(self.program.command),
                    "scenario_dir": self.program.directory,
                    "result": self.program.result,
                }
                if self.program
                else {}
            ),
        }


@dataclass(frozen=True)
class Batch:
    """All cells of one kernel: a runner boots the kernel once and runs them all."""

    kernel: ResolvedKernel
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class BatchOutcome:
    """What a runner brings back: raw collector results by cell id, plus provenance.

    `results` maps cell id to the collector's JSON document. A cell missing from it had
    no result; `failure` then says why (boot failed, panic, deadline) and `console_tail`
    holds the evidence.
    """

    results: dict[str, dict[str, Any]]
    runner: str
    accelerator: str
    host: str
    console_log: Path | None = None
    console_tail: str = ""
    failure: str = ""
    boot_s: float | None = None
    wall_s: float = 0.0
    host_sysctl_changed: tuple[dict[str, Any], ...] = ()
    """The agent's leak check: sysctls of the namespace it started in that changed during
    the batch (agent.json's `host_sysctl_changed`); any entry is an error."""
    liveness: str = ""
    """When the batch deadline passed: "alive" (the agent's heartbeat went on: a program
    was stuck), "silent" (it had stopped: the kernel stopped answering, dead or hung),
    "unknown" (no heartbeat was ever seen); "" when no deadline passed."""
    heartbeat_age_s: float | None = None
    """How long before the deadline the last heartbeat was seen, when one was."""
    boot_image: str = ""
    """What a VM booted: "pvh" (the kernel's unpacked ELF) or "bzimage", with why when
    a PVH image was asked for and not used (`matrix.runners.pvh`); "" for no VM."""


@dataclass(frozen=True)
class Classified:
    """A verdict with the figures and the rule that produced it."""

    verdict: Verdict
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)
