"""Kernels x scenarios x sysctl combinations x trials -> cells.

Pure: the same config and kernels always give the same cells with the same ids, so a
nightly job can skip what it already knows and `--resume` can finish a killed run.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from matrix.model import (
    LIMIT_NAMES,
    Batch,
    Cell,
    DebianSource,
    HostSource,
    KernelSource,
    KernelSpec,
    Limits,
    PathSource,
    Program,
    ResolvedKernel,
    Sweep,
)
from matrix.scenarios import manifest
from matrix.scenarios.catalogue import Catalogue, builtin
from matrix.scenarios.manifest import Scenario
from matrix.scenarios.sysctls import check_host_cells

Axes = tuple[tuple[str, tuple[str, ...]], ...]


def combinations(sweep: Sweep) -> list[tuple[tuple[str, str], ...]]:
    """Every combination of the sweep's own sysctl values, with the fixed ones added."""
    return _settings(sweep.sysctls or (), sweep.fixed)


def _product(axes: Axes) -> list[tuple[tuple[str, str], ...]]:
    """Lists multiply (lkp-tests' rule): one tuple per combination, in axis order."""
    names = [name for name, _ in axes]
    combos = itertools.product(*(values for _, values in axes))
    return [tuple(zip(names, combo, strict=True)) for combo in combos]


def _settings(axes: Axes, fixed: tuple[tuple[str, str], ...]) -> list[tuple[tuple[str, str], ...]]:
    swept = {name for name, _ in axes}
    rest = tuple((k, v) for k, v in fixed if k not in swept)
    return [combo + rest for combo in _product(axes)]


def sysctl_axes(scenario: Scenario, sweep: Sweep) -> Axes:
    """The run's sysctl sweep where it applies to this scenario, else the scenario's own."""
    if sweep.sysctls is None:
        return scenario.sysctls
    swept = sweep.swept_scenarios
    applies = scenario.name in swept if swept is not None else bool(scenario.sysctls)
    return sweep.sysctls if applies else scenario.sysctls


def param_axes(scenario: Scenario, sweep: Sweep) -> Axes:
    """The scenario's parameters, with the run's values for those it declares."""
    run = dict(sweep.params)
    return tuple((name, run.get(name, values)) for name, values in scenario.params)


def program(scenario: Scenario) -> Program:
    return Program(
        command=scenario.command,
        directory=str(scenario.directory),
        result=scenario.result,
        timeout_s=scenario.timeout_s,
        limits=scenario.limits,
    )


def cells_for(
    kernel: ResolvedKernel, sweep: Sweep, cat: Catalogue | None = None
) -> tuple[Cell, ...]:
    """The cells of one kernel, in a stable order: scenario, sysctls, parameters, trial."""
    cat = cat or builtin()
    out: list[Cell] = []
    for name in sweep.scenarios:
        scenario = cat.get(name)
        prog = program(scenario)
        for sysctls in _settings(sysctl_axes(scenario, sweep), sweep.fixed):
            for params in _product(param_axes(scenario, sweep)):
                for trial in range(sweep.trials):
                    out.append(
                        Cell(
                            kernel=kernel.spec.name,
                            scenario=name,
                            sysctls=sysctls,
                            trial=trial,
                            limits=sweep.limits,
                            kernel_identity=kernel.identity,
                            params=params,
                            program=prog,
                        )
                    )
    return tuple(out)


def plan(kernels: list[ResolvedKernel], sweep: Sweep, cat: Catalogue | None = None) -> list[Batch]:
    """One batch per kernel: a runner boots each kernel once for all its cells. A kernel
    that runs on this machine (no VM) may only set sysctls that stay in a namespace."""
    batches = [Batch(kernel=k, cells=cells_for(k, sweep, cat)) for k in kernels]
    for b in batches:
        if b.kernel.spec.kind == "host":
            keys = {k for c in b.cells for k, _ in c.sysctls}
            check_host_cells("sweep", b.kernel.spec.name, keys)
    return batches


def sysctl_label(sysctls: tuple[tuple[str, str], ...] | dict[str, str], fixed: set[str]) -> str:
    """A short column label, e.g. 'buckets=65535 reuse=0', leaving out the fixed ones."""
    short = {
        "net.ipv4.tcp_max_tw_buckets": "buckets",
        "net.ipv4.tcp_tw_reuse": "reuse",
        "net.ipv4.ip_local_port_range": "ports",
        "net.ipv4.tcp_timestamps": "ts",
    }
    items = sysctls.items() if isinstance(sysctls, dict) else sysctls
    parts = [
        f"{short.get(k, k.rsplit('.', 1)[-1])}={v.replace(' ', '-')}"
        for k, v in items
        if k not in fixed
    ]
    return " ".join(parts)


def to_doc(
    batches: list[Batch],
    fixed: tuple[tuple[str, str], ...],
    cat: Catalogue | None = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    """plan.json: enough to resume or report a run without the config that made it,
    including the manifests of its scenarios as they were when it was planned."""
    cat = cat or builtin()
    names = dict.fromkeys(c.scenario for b in batches for c in b.cells)
    return {
        "fixed_sysctls": [k for k, _ in fixed],
        "baseline": baseline,
        "scenarios": {n: cat.get(n).to_doc() for n in names if cat.find(n)},
        "kernels": [_kernel_doc(b.kernel) for b in batches],
        "cells": [
            dict(c.to_agent(), kernel=c.kernel, kernel_identity=c.kernel_identity)
            for b in batches
            for c in b.cells
        ],
    }


def from_doc(doc: dict[str, Any]) -> list[Batch]:
    """The inverse of to_doc, for `--resume`."""
    batches = []
    for k in doc["kernels"]:
        kernel = _kernel_from(k)
        cells = tuple(_cell_from(c) for c in doc["cells"] if c["kernel"] == k["name"])
        batches.append(Batch(kernel, cells))
    return batches


def _kernel_doc(k: ResolvedKernel) -> dict[str, Any]:
    src = k.spec.source
    return {
        "name": k.spec.name,
        "kind": k.spec.kind,
        "description": k.spec.description,
        "source": {key: str(v) if v is not None else None for key, v in vars(src).items()},
        "release": k.release,
        "vmlinuz": str(k.vmlinuz) if k.vmlinuz else None,
        "modules_dir": str(k.modules_dir) if k.modules_dir else None,
        "sha256": k.sha256,
        "package_version": k.package_version,
    }


def _kernel_from(d: dict[str, Any]) -> ResolvedKernel:
    s = d["source"]
    source: KernelSource
    if d["kind"] == "debian":
        source = DebianSource(s["suite"], s["package"], s.get("modules_package"))
    elif d["kind"] == "path":
        source = PathSource(Path(s["vmlinuz"]), Path(s["modules"]) if s.get("modules") else None)
    else:
        source = HostSource()
    spec = KernelSpec(d["name"], source, d.get("description", ""))
    return ResolvedKernel(
        spec,
        d["release"],
        Path(d["vmlinuz"]) if d["vmlinuz"] else None,
        Path(d["modules_dir"]) if d["modules_dir"] else None,
        d["sha256"],
        d["package_version"],
    )


def scenarios_from(doc: dict[str, Any]) -> Catalogue:
    """The run's own scenarios (plan.json), falling back to the built-in ones for a run
    planned before manifests were recorded."""
    own = [manifest.from_doc(s) for s in (doc.get("scenarios") or {}).values()]
    names = {s.name for s in own}
    return Catalogue(tuple(own) + tuple(s for s in builtin().scenarios if s.name not in names))


def _program_from(d: dict[str, Any]) -> Program | None:
    if "command" in d:
        return Program(
            tuple(d["command"]),
            d["scenario_dir"],
            d.get("result", "exit"),
            float(d["timeout_s"]),
            tuple(d.get("env_limits", LIMIT_NAMES)),
        )
    known = builtin().find(d["scenario"])
    return program(known) if known else None


def _cell_from(d: dict[str, Any]) -> Cell:
    limits = Limits(
        d["window_s"],
        d["iteration_cap"],
        d["stall_s"],
        d["sample_s"],
        d.get("collapse_s", 0.0),
        d.get("knee_margin", 0),
        d.get("knee_margin_s", 0.0),
    )
    return Cell(
        d["kernel"],
        d["scenario"],
        tuple(d["sysctls"].items()),
        d["trial"],
        limits,
        d["kernel_identity"],
        d.get("attempt", 1),
        tuple((d.get("params") or {}).items()),
        _program_from(d),
    )
