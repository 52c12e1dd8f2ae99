"""Kernel health per cell in a real guest: bookworm's 6.1 under TCG, the real agent.

A fixture scenario makes the guest kernel report trouble of its own: a hung task
(khungtaskd's "INFO: task ... blocked for more than 1 seconds."), then the U taint flag;
a third cell asks nothing. Each record must sit on the cell that caused it, through to
`kmatrix results --json`. A second boot runs a program that sleeps past a batch
deadline shorter than the agent's own: the heartbeat shows the kernel was alive.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from matrix.runners.vng import VngRunner
from tests.fixtures.agent_cells import FIXTURES
from tests.fixtures.kernels import fetch_61
from tests.integration.test_faults import (
    assert_no_leftovers,
    batch_of,
    needs_vng,
    path_kernel,
    rows_of,
    run_in_process,
    write_config,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces and the guest agent"),
    needs_vng,
]


@pytest.fixture(scope="module")
def k61() -> tuple[Path, Path]:
    return fetch_61()


def sweep(scenario: str, trials: int = 1) -> str:
    return f'[sweep]\nscenarios = ["{scenario}"]\ntrials = {trials}\n[sweep.sysctls]\n'


def cell_doc(run_dir: Path, row: dict[str, Any]) -> dict[str, Any]:
    return json.loads((run_dir / "cells" / f"{row['measured_id']}.json").read_text())


def test_the_kernels_own_reports_are_recorded_on_the_cell_that_caused_them(
    tmp_path: Path, k61: tuple[Path, Path]
) -> None:
    cfg = write_config(
        tmp_path,
        path_kernel("k61", *k61),
        extra=f'scenario_dirs = ["{FIXTURES}"]',
        sweep=sweep("kernel-trouble"),
    )
    run_dir = run_in_process(cfg, VngRunner(accel="tcg", cpus=1, boot_timeout_s=120))
    assert_no_leftovers(tmp_path)
    rows = {r["params"]["what"]: r for r in rows_of(cfg, run_dir)}
    assert batch_of(run_dir, "k61")["failure"] == "" and batch_of(run_dir, "k61")["liveness"] == ""
    for r in rows.values():
        assert r["verdict"] == "success", r["reason"]
        assert r["kernel_release"].startswith("6.1.") and r["kernel_log_shared"] is False

    hung = rows["hung_task"]
    assert hung["kernel_health"] == "hung_task" and hung["kernel_flagged"] is True
    assert hung["kernel_events"] >= 1 and hung["kernel_tainted_by_cell"] == ""
    record = cell_doc(run_dir, hung)["kernel"]
    [report] = [e for e in record["events"] if e["kind"] == "hung_task"][:1]
    assert report["origin"] == "kernel"
    hung_line = r"INFO: task python3:\d+ blocked for more than \d+ seconds\."
    assert re.fullmatch(hung_line, report["line"]), report["line"]
    at = next(n for n, line in enumerate(record["log"]) if report["line"] in line)
    trace = " ".join(record["log"][at : at + 1 + 16])
    assert "hung_task_timeout_secs" in trace and "state:D" in trace

    taint = rows["taint"]
    assert taint["kernel_health"] == "" and taint["kernel_flagged"] is False
    assert taint["kernel_tainted_by_cell"] == "U" and taint["kernel_tainted"] is True
    record = cell_doc(run_dir, taint)["kernel"]
    assert record["tainted_by_cell"] == ["U"] and record["taint_after"] & 64
    assert not record["taint_before"] & 64

    quiet = rows["quiet"]
    assert quiet["kernel_health"] == "" and quiet["kernel_events"] == 0
    assert quiet["kernel_tainted_by_cell"] == "" and "U" in quiet["kernel_taint_flags"]
    record = cell_doc(run_dir, quiet)["kernel"]
    assert record["taint_before"] & 64 and record["tainted_by_cell"] == []
    assert not [line for line in record["log"] if "blocked for more than" in line]


def test_a_batch_deadline_with_the_kernel_alive_says_the_program_was_stuck(
    tmp_path: Path, k61: tuple[Path, Path]
) -> None:
    """Two sleepers (timeout_s 2): the agent would kill each 32 s after it starts, the
    batch deadline is 40 + 2 x (2 + 1) = 46 s, so at the deadline a sleeper is running
    and the agent beating, wherever the boot ended."""
    cfg = write_config(
        tmp_path,
        path_kernel("k61", *k61),
        extra=f'scenario_dirs = ["{FIXTURES}"]',
        sweep=sweep("sleeper", trials=2),
    )
    runner = VngRunner(accel="tcg", cpus=1, boot_timeout_s=40.0, extra_per_cell_s=1.0)
    run_dir = run_in_process(cfg, runner)
    assert_no_leftovers(tmp_path)
    batch = batch_of(run_dir, "k61")
    assert re.fullmatch(
        r"batch deadline \(46s\) passed with results for [01] of 2 cells; kernel alive "
        r"\(last heartbeat \d+ s ago, in cell [0-9a-f]{16}\): the program was stuck",
        batch["failure"],
    ), batch["failure"]
    assert batch["liveness"] == "alive" and 0 <= batch["heartbeat_age_s"] < 20
    assert "KMATRIX-ALIVE" not in batch["console_tail"]
    assert "KMATRIX-ALIVE" in (run_dir / batch["console_log"]).read_text()
    rows = rows_of(cfg, run_dir)
    missing = [r for r in rows if r["reason"].startswith("no result: ")]
    assert missing and all(r["verdict"] == "infra" for r in missing)
    assert all("kernel alive" in r["reason"] and r["batch_liveness"] == "alive" for r in missing)
    for r in rows:
        if r not in missing:
            live = cell_doc(run_dir, r)["liveness"]
            assert r["reason"].startswith("collector timeout: ") and live["overran"] is True
