"""The file contract with the guest agent, shared by every runner.

The runner writes cells.json, the agent writes one <id>.json per cell into out/
(atomically) and agent.json when it is done; the runner hands each new result on as
soon as it appears, so nothing measured is lost if the batch dies later.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from matrix.model import Batch, Limits
from matrix.runners import OnResult

AGENT_SLACK_S = 30.0
"""Per-cell allowance on top of a puzzle's own bounds: namespace setup, settling, writing."""


def agent_path() -> Path:
    """collectors/agent.py as installed (or in the checkout, for an editable install)."""
    return Path(str(resources.files("matrix.collectors") / "agent.py"))


def prepare(batch: Batch, workdir: Path) -> tuple[Path, Path]:
    """Write the agent's input; return (cells.json, out dir)."""
    out = workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    cells = workdir / "cells.json"
    cells.write_text(json.dumps({"cells": [c.to_agent() for c in batch.cells]}, indent=1))
    return cells, out


def cell_budget_s(limits: Limits, slack_s: float = AGENT_SLACK_S) -> float:
    return limits.window_s + limits.stall_s + slack_s


def batch_budget_s(batch: Batch, slack_s: float = AGENT_SLACK_S) -> float:
    return sum(cell_budget_s(c.limits, slack_s) for c in batch.cells)


class ResultWatcher:
    """Finds result files the agent has finished since the last look."""

    def __init__(self, out_dir: Path, on_result: OnResult, expected: set[str]) -> None:
        self.out_dir = out_dir
        self.on_result = on_result
        self.expected = expected
        self.results: dict[str, dict[str, Any]] = {}

    def poll(self) -> int:
        """Hand on every new complete result; return how many were new."""
        new = 0
        for p in sorted(self.out_dir.glob("*.json")):
            cid = p.stem
            if cid in self.results or cid not in self.expected:
                continue
            try:
                doc = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError) as e:
                doc = {"status": "crashed", "status_detail": f"malformed result JSON: {e}"}
            self.results[cid] = doc
            self.on_result(cid, doc)
            new += 1
        return new

    def agent_done(self) -> bool:
        return (self.out_dir / "agent.json").exists()
