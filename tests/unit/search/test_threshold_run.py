"""The threshold search's rounds with a fake runner: cells in, verdicts by value out."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from matrix.model import Cell, HostSource, KernelSpec, ResolvedKernel
from matrix.scenarios.catalogue import builtin
from matrix.search.threshold_run import Search, run_search, summary_lines

KEY = "net.ipv4.tcp_max_tw_buckets"


@dataclass
class FakeRounds:
    """2B crawls once buckets reach half of an 8,192-port range."""

    run_dir: Path
    kernels: dict[str, ResolvedKernel]
    config: object = field(default_factory=lambda: SimpleNamespace(catalogue=builtin()))
    stop: threading.Event = field(default_factory=threading.Event)
    batches: int = 0

    def run(self, new: dict[str, list[Cell]]) -> dict[str, str]:
        self.batches += 1
        out = {}
        for cells in new.values():
            for c in cells:
                value = int(dict(c.sysctls)[KEY])
                out[c.id] = "success" if value < 4096 else "slowdown"
        return out

    def batch_failure(self, kernel: str) -> str:
        return ""


def test_search_rounds_are_batches_and_land_on_the_flip(tmp_path: Path) -> None:
    host = ResolvedKernel(KernelSpec("host", HostSource()), release="6.x")
    rounds = FakeRounds(tmp_path, {"host": host})
    search = Search(
        "2B",
        KEY,
        1000,
        70000,
        points=4,
        trials=2,
        resolution=50,
        fixed=(("net.ipv4.tcp_tw_reuse", "0"),),
    )
    state = run_search(search, rounds)  # type: ignore[arg-type]
    doc = json.loads((tmp_path / "threshold.json").read_text())
    b = doc["kernels"]["host"]["bracket"]
    assert b["lo"] < 4096 <= b["hi"] and b["width"] <= 50
    assert rounds.batches == len(doc["kernels"]["host"]["rounds"]) <= 6
    assert all(len(p["cells"]) == 2 for p in doc["kernels"]["host"]["probes"])
    assert "within the resolution" in summary_lines(state)[0]
