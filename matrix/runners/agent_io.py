"""The file contract with the guest agent, shared by every runner.

The runner writes cells.json, the agent writes one <id>.json per cell into out/
(atomically) and agent.json when it is done; the runner hands each new result on as
soon as it appears, so nothing measured is lost if the batch dies later.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
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


def agent_argv(workdir: Path, python: str, agent: Path | None = None) -> list[str]:
    """The agent's command line for a batch prepared in `workdir`; `agent` replaces the
    real one (tests use it to play a guest that crashes, lies or never answers)."""
    out = workdir / "out"
    script = str(agent or agent_path())
    return [python, script, "--cells", str(workdir / "cells.json"), "--out", str(out)]


class ResultCollector:
    """Picks up the agent's per-cell files as they appear and hands each on once."""

    def __init__(self, out_dir: Path, ids: Sequence[str], on_result: OnResult) -> None:
        self.out_dir, self.ids, self.on_result = out_dir, list(ids), on_result
        self.results: dict[str, dict[str, Any]] = {}
        self.malformed: list[str] = []
        self.first_result_at: float | None = None

    @property
    def agent_done(self) -> bool:
        return (self.out_dir / "agent.json").exists()

    def poll(self, final: bool = False) -> None:
        """Read new results; an unparsable file counts as malformed only when `final`
        (the agent renames complete files into place, but a runner that copies them
        from elsewhere may see one mid-copy)."""
        for cid in self.ids:
            path = self.out_dir / f"{cid}.json"
            if cid in self.results or not path.exists():
                continue
            try:
                doc = json.loads(path.read_text())
                if not isinstance(doc, dict):
                    raise ValueError(f"a JSON {type(doc).__name__}, not an object")
            except (OSError, ValueError) as exc:
                if final:
                    self.malformed.append(cid)
                    detail = f"malformed result JSON: {exc}"
                    self._take(cid, {"cell_id": cid, "status": "crashed", "status_detail": detail})
                continue
            self._take(cid, doc)

    def _take(self, cid: str, doc: dict[str, Any]) -> None:
        if self.first_result_at is None:
            self.first_result_at = time.monotonic()
        self.results[cid] = doc
        self.on_result(cid, doc)

    def missing(self) -> list[str]:
        return [cid for cid in self.ids if cid not in self.results]
