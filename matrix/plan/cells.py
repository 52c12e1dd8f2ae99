"""Kernels x scenarios x sysctl combinations x trials -> cells.

Pure: the same config and kernels always give the same cells with the same ids, so a
nightly job can skip what it already knows and `--resume` can finish a killed run.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from matrix.model import (
    Batch,
    Cell,
    DebianSource,
    HostSource,
    KernelSource,
    KernelSpec,
    Limits,
    PathSource,
    ResolvedKernel,
    Sweep,
)


def combinations(sweep: Sweep) -> list[tuple[tuple[str, str], ...]]:
    """Every combination of the swept values, with the fixed sysctls added to each."""
    names = [name for name, _ in sweep.sysctls]
    combos = itertools.product(*(values for _, values in sweep.sysctls))
    return [tuple(zip(names, combo, strict=True)) + sweep.fixed for combo in combos]


def cells_for(kernel: ResolvedKernel, sweep: Sweep) -> tuple[Cell, ...]:
    """The cells of one kernel, in a stable order: scenario, then sysctls, then trial."""
    out: list[Cell] = []
    for scenario in sweep.scenarios:
        settings = combinations(sweep) if scenario in sweep.swept_scenarios else [()]
        for sysctls in settings:
            for trial in range(sweep.trials):
                out.append(
                    Cell(
                        kernel=kernel.spec.name,
                        scenario=scenario,
                        sysctls=sysctls,
                        trial=trial,
                        limits=sweep.limits,
                        kernel_identity=kernel.identity,
                    )
                )
    return tuple(out)


def plan(kernels: list[ResolvedKernel], sweep: Sweep) -> list[Batch]:
    """One batch per kernel: a runner boots each kernel once for all its cells."""
    return [Batch(kernel=k, cells=cells_for(k, sweep)) for k in kernels]


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


def to_doc(batches: list[Batch], fixed: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """plan.json: enough to resume or report a run without the config that made it."""
    return {
        "fixed_sysctls": [k for k, _ in fixed],
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
    )
