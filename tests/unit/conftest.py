"""Synthetic run directories (manifest, plan, cells, batches) for history and export tests.

Each outcome is a collector result shaped like the real ones, small enough to read: the
classifier, not the test, decides the verdict.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HOSTILE = "<script>alert(1)</script>\x1b[31mred\x1b[0m\x07bell"

Cell = tuple[str, str, dict[str, str], int, str]
"""(kernel, scenario, sysctls, trial, outcome); outcome is a verdict name, or "p1"."""


def _series(rates: list[float], step: float = 1.0) -> list[dict[str, Any]]:
    out, n = [{"t": 0.0, "iterations": 0, "tw": 0, "state": "R", "wchan": ""}], 0.0
    for i, rate in enumerate(rates, 1):
        n += rate * step
        out.append({"t": i * step, "iterations": int(n), "tw": int(n), "state": "R", "wchan": ""})
    return out


def result_for(cell_id: str, scenario: str, outcome: str, release: str) -> dict[str, Any]:
    """A collector result that classifies as `outcome`."""
    doc: dict[str, Any] = {
        "cell_id": cell_id,
        "scenario": scenario,
        "status": "ok",
        "kernel_release": release,
        "error": None,
        "evidence": {"final": None, "stall": None},
        "series": [],
        "sysctls": {"problems": [], "read_back": {}, "requested": {}},
    }
    if outcome == "p1":
        queued = 3_973_120 if scenario == "1A" else 2_637_824
        doc["metrics"] = {"bytes_queued": queued, "sends": 200, "sndbuf_after": 4_194_304}
        return doc
    rates = {"success": [1000.0] * 10, "slowdown": [1000.0] * 5 + [10.0] * 5}
    doc["series"] = _series(rates.get(outcome, [1000.0] * 3))
    last = doc["series"][-1]
    doc["metrics"] = {"iterations": last["iterations"], "elapsed_s": last["t"], "tw_max": 3000}
    if outcome == "hang":
        doc["evidence"]["stall"] = {"t": 3.0, "iterations": 3000, "state": "S", "wchan": HOSTILE}
        doc["metrics"]["ended_by"] = "stall"
    if outcome == "error":
        doc["error"] = {
            "name": "EADDRNOTAVAIL",
            "errno": 99,
            "iteration": 3000,
            "phase": "connect",
            "message": HOSTILE,
        }
    return doc


def write_run(
    root: Path,
    run_id: str,
    started_at: str,
    releases: dict[str, str],
    cells: list[Cell],
) -> Path:
    """A run directory as `kmatrix run` leaves it; an "infra" cell simply has no result."""
    run = root / run_id
    (run / "cells").mkdir(parents=True)
    (run / "batches").mkdir()
    plan_cells = []
    for kernel, scenario, sysctls, trial, outcome in cells:
        key = f"{kernel}|{releases[kernel]}|{scenario}|{sorted(sysctls.items())}|{trial}"
        cell_id = hashlib.sha256(key.encode()).hexdigest()[:16]
        plan_cells.append(
            {
                "id": cell_id,
                "kernel": kernel,
                "scenario": scenario,
                "sysctls": sysctls,
                "trial": trial,
                "window_s": 10.0,
                "iteration_cap": 20000,
                "stall_s": 3.0,
                "sample_s": 0.2,
            }
        )
        if outcome != "infra":
            doc = result_for(cell_id, scenario, outcome, releases[kernel])
            (run / "cells" / f"{cell_id}.json").write_text(json.dumps(doc))
    kernels = [{"name": k, "kind": "debian", "release": r} for k, r in releases.items()]
    for k in releases:
        batch = {"runner": "vng", "accelerator": "tcg", "host": "builder", "failure": ""}
        (run / "batches" / f"{k}.json").write_text(json.dumps(batch))
    plan = {"cells": plan_cells, "kernels": kernels, "fixed_sysctls": []}
    (run / "plan.json").write_text(json.dumps(plan))
    manifest = {
        "run_id": run_id,
        "kmatrix_version": "0.1.0",
        "started_at": started_at,
        "ended_at": started_at,
        "interrupted": False,
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


@pytest.fixture
def hostile() -> str:
    """Markup, a colour escape and a bell, as a guest might print them."""
    return HOSTILE


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Path]:
    """write_run under tmp_path/runs."""

    def make(run_id: str, started_at: str, releases: dict[str, str], cells: list[Cell]) -> Path:
        return write_run(tmp_path / "runs", run_id, started_at, releases, cells)

    return make
