"""Backends that run a batch of cells on one kernel, behind one small interface.

A runner owns a kernel's lifecycle (nothing, a VM, a remote host) and returns the raw
collector results. It must never leave a process behind, whatever happens, and must
honour `stop` (set on Ctrl-C/SIGTERM) by tearing down promptly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from matrix.model import Batch, BatchOutcome

OnResult = Callable[[str, dict[str, Any]], None]
"""Called with (cell id, collector result) as soon as a result is back, so that a run
that is interrupted later keeps it."""


class Runner(Protocol):
    """What every backend provides."""

    name: str

    def check(self) -> None:
        """Raise PrerequisiteError naming what is missing, before anything starts."""

    def run_batch(
        self, batch: Batch, workdir: Path, stop: threading.Event, on_result: OnResult
    ) -> BatchOutcome:
        """Run every cell of the batch; `workdir` is private to this batch."""
