"""The file contract with the guest agent, shared by every runner.

The runner writes cells.json, the agent writes one <id>.json per cell into out/
(atomically) and agent.json when it is done; the runner hands each new result on as
soon as it appears, so nothing measured is lost if the batch dies later.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from matrix.collect import guest_files, guest_result
from matrix.model import Batch, Cell
from matrix.runners import OnResult

AGENT_SLACK_S = 30.0
"""Per-cell allowance on top of a puzzle's own bounds: namespace setup, settling, writing."""
HEARTBEAT = re.compile(
    r"KMATRIX-ALIVE ([0-9]{1,12}(?:\.[0-9]{1,9})?)(?: ([A-Za-z0-9_.-]{1,128}))?\r?\n"
)
"""The agent's `KMATRIX-ALIVE <monotonic> [<cell id>]` on its stdout while a cell runs
(collectors/agent_exec.py), a whole line: one cut by a read is taken when its end
arrives."""
HEARTBEAT_LINE = re.compile(r"KMATRIX-ALIVE\b")
"""A heartbeat line, to leave out of a console tail shown to people."""


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


def cell_budget_s(cell: Cell, slack_s: float = AGENT_SLACK_S) -> float:
    """The program's own deadline (its manifest's timeout, or its window and a stall)
    plus the agent's allowance."""
    return cell.deadline_s + slack_s


def batch_budget_s(batch: Batch, slack_s: float = AGENT_SLACK_S) -> float:
    return sum(cell_budget_s(c, slack_s) for c in batch.cells)


def agent_argv(
    workdir: Path, python: str, agent: Path | None = None, net_only: bool = False
) -> list[str]:
    """The agent's command line for a batch prepared in `workdir`; `agent` replaces the
    real one (tests use it to play a guest that crashes, lies or never answers).
    `net_only` for a machine that is kept: the agent then refuses any cell that would
    write a sysctl outside net.*. `-S`: the agent is stdlib-only, and skipping `site`
    (site-packages, .pth files) saves ~0.3 s of a guest's start under TCG."""
    out = workdir / "out"
    script = str(agent or agent_path())
    argv = [python, "-S", script, "--cells", str(workdir / "cells.json"), "--out", str(out)]
    return argv + (["--net-only"] if net_only else [])


class ResultCollector:
    """Picks up the agent's per-cell files as they appear and hands each on once.

    out/ is the guest's: every file is read through `guest_files` (no links, no FIFOs,
    at most MAX_RESULT_BYTES) and vetted by `guest_result` before it is handed on.
    """

    def __init__(self, out_dir: Path, ids: Sequence[str], on_result: OnResult) -> None:
        self.out_dir, self.ids, self.on_result = out_dir, list(ids), on_result
        self.results: dict[str, dict[str, Any]] = {}
        self.malformed: list[str] = []
        self.first_result_at: float | None = None

    @property
    def agent_done(self) -> bool:
        """agent.json is there as a regular file (a link or a FIFO does not count)."""
        return guest_files.is_regular(self.out_dir / "agent.json")

    def poll(self, final: bool = False) -> None:
        """Read new results; an unreadable or unparsable file counts as malformed only
        when `final` (the agent renames complete files into place, but a runner that
        copies them from elsewhere may see one mid-copy). A result that parses but has
        the wrong shape is final at once."""
        for cid in self.ids:
            path = self.out_dir / f"{cid}.json"
            if cid in self.results or not guest_files.lexists(path):
                continue
            try:
                data = guest_files.read_bounded(path, root=self.out_dir.parent)
                doc = guest_files.parse_json(data)
            except OSError as exc:
                if final:
                    self._reject(cid, f"unreadable result: {exc.strerror or exc}")
                continue
            except ValueError as exc:
                if final:
                    self._reject(cid, f"malformed result JSON: {exc}")
                continue
            why = guest_result.problem(doc)
            if why:
                self._reject(cid, f"malformed result: {why}")
            else:
                self._take(cid, doc)

    def _reject(self, cid: str, detail: str) -> None:
        self.malformed.append(cid)
        self._take(cid, guest_result.stand_in(cid, detail))

    def _take(self, cid: str, doc: dict[str, Any]) -> None:
        if self.first_result_at is None:
            self.first_result_at = time.monotonic()
        self.results[cid] = doc
        self.on_result(cid, doc)

    def missing(self) -> list[str]:
        return [cid for cid in self.ids if cid not in self.results]

    def host_sysctl(self) -> tuple[tuple[dict[str, Any], ...], str]:
        """agent.json's leak check: (changes, one-line error); nothing if it is absent."""
        try:
            marker = guest_files.read_bounded(self.out_dir / "agent.json", root=self.out_dir.parent)
            doc = guest_files.parse_json(marker)
        except (OSError, ValueError):
            return (), ""
        changes = doc.get("host_sysctl_changed") if isinstance(doc, dict) else None
        if not isinstance(changes, list) or not changes:
            return (), ""
        found = tuple(c for c in changes if isinstance(c, dict))
        return found, str(doc.get("host_sysctl_error") or "starting namespace sysctls changed")
