"""The on-disk layout of one run, and atomic writes into it.

runs/<run-id>/
  manifest.json        what ran where: versions, host, accelerator, start/end, command
  plan.json            the kernels and cells, so `--resume` and `report` need no config
  cells/<id>.json      each collector result as it came back (never rewritten)
  batches/<kernel>.json  how each kernel's batch went: runner, accelerator, failure, console tail
  console/<kernel>.log the VM console of that kernel's boot
  results.jsonl        the tidy table, one row per cell (rebuilt from the above)
  results.junit.xml    the same as JUnit, for CI systems
A result is written the moment it arrives, so an interrupted run loses nothing measured.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matrix.errors import KmatrixError


def new_run_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%d-%H%M%S")


def write_json(path: Path, doc: Any) -> None:
    """Write then rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise KmatrixError(f"{path}: not found; is this a kmatrix run directory?") from None
    except json.JSONDecodeError as e:
        raise KmatrixError(f"{path}: not valid JSON ({e})") from None


def check_writable(run_dir: Path) -> None:
    """Fail before any VM boots if results could not be kept."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise KmatrixError(
            f"{run_dir}: cannot write results there ({e.strerror}); choose another --out"
        ) from None


def cell_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every collector result kept so far; a file that does not parse is reported as such."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted((run_dir / "cells").glob("*.json")):
        try:
            out[p.stem] = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            out[p.stem] = {"status": "crashed", "status_detail": f"malformed result JSON: {e}"}
    return out


def batches(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: read_json(p) for p in sorted((run_dir / "batches").glob("*.json"))}
