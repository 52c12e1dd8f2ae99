"""The slot scheduler with fake runners: re-queue on a lost host, infra when none is left,
host-kernel batches alone on their machine."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from matrix.errors import HostLost
from matrix.model import (
    Batch,
    BatchOutcome,
    Cell,
    HostSource,
    KernelSpec,
    Limits,
    PathSource,
    ResolvedKernel,
)
from matrix.run import execute, rundir
from matrix.run.schedule import Machine


def batch(name: str, n: int, host: bool = False) -> Batch:
    src = HostSource() if host else PathSource(Path("/k"))
    kernel = ResolvedKernel(KernelSpec(name, src), release="1.0")
    cells = tuple(Cell(name, "2B", (("t", str(i)),), 0, Limits()) for i in range(n))
    return Batch(kernel, cells)


class Fake:
    """Delivers results one by one; `lose_after` results in, it raises HostLost."""

    name = "fake"

    def __init__(self, host: str, lose_after: int | None = None, delay_s: float = 0.0) -> None:
        self.host, self.lose_after, self.delay_s = host, lose_after, delay_s
        self.ran: list[tuple[str, int]] = []
        self.live = 0
        self.overlap: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def check(self) -> None:
        pass

    def run_batch(self, b: Batch, workdir: Path, stop: threading.Event, on_result: Any) -> Any:
        with self.lock:
            self.live += 1
            self.overlap.append((b.kernel.spec.name, self.live))
        try:
            self.ran.append((b.kernel.spec.name, len(b.cells)))
            results = {}
            for i, c in enumerate(b.cells):
                if self.lose_after is not None and i >= self.lose_after:
                    raise HostLost(f"{self.host}: connection lost")
                time.sleep(self.delay_s)
                results[c.id] = {"status": "ok", "cell_id": c.id}
                on_result(c.id, results[c.id])
            return BatchOutcome(results, "fake", "none", self.host)
        finally:
            with self.lock:
                self.live -= 1


def run(tmp_path: Path, batches: list[Batch], local: Fake, jobs: int, remotes: list) -> dict:
    return execute.run_batches(
        batches, lambda _b: local, tmp_path, jobs, threading.Event(), lambda *a: None, remotes
    )


def test_a_lost_host_has_its_unfinished_cells_rerun_elsewhere(tmp_path: Path) -> None:
    a, b = Fake("a", lose_after=2, delay_s=0.05), Fake("b", delay_s=0.01)
    machines = [Machine("a", 1, lambda _b: a), Machine("b", 1, lambda _b: b)]
    out = run(tmp_path, [batch("k1", 5), batch("k2", 3)], Fake("local"), 0, machines)
    cells = rundir.cell_results(tmp_path)
    assert len(cells) == 8
    lost = [c for c in cells.values() if c["run_host"] == "a"]
    assert len(lost) == 2
    assert ("k1", 3) in b.ran or ("k2", 1) in b.ran
    assert all(o.failure == "" for o in out.values())


def test_with_no_machine_left_the_rest_ends_infra_with_the_reason(tmp_path: Path) -> None:
    a = Fake("a", lose_after=1)
    out = run(tmp_path, [batch("k1", 4)], Fake("local"), 0, [Machine("a", 1, lambda _b: a)])
    assert len(rundir.cell_results(tmp_path)) == 1
    why = out["k1"].failure
    assert "host a dropped: a: connection lost" in why and "re-run 3 cells" in why
    assert rundir.batches(tmp_path)["k1"]["failure"] == why


def test_a_machine_that_dropped_a_batch_never_gets_it_back(tmp_path: Path) -> None:
    a, b = Fake("a", lose_after=1), Fake("b", lose_after=1)
    machines = [Machine("a", 1, lambda _b: a), Machine("b", 1, lambda _b: b)]
    out = run(tmp_path, [batch("k1", 4)], Fake("local"), 0, machines)
    assert sorted(n for _k, n in a.ran + b.ran) == [3, 4]
    assert "host a dropped" in out["k1"].failure and "host b dropped" in out["k1"].failure


def test_host_kernel_batches_run_alone_on_their_machine(tmp_path: Path) -> None:
    r = Fake("r", delay_s=0.02)
    machines = [Machine("r", 3, lambda _b: r)]
    batches = [batch("vm1", 3), batch("h", 3, host=True), batch("vm2", 3), batch("vm3", 3)]
    run(tmp_path, batches, Fake("local"), 0, machines)
    assert r.ran[0][0] == "h"
    assert dict(r.overlap)["h"] == 1
    assert len(rundir.cell_results(tmp_path)) == 12


def test_local_slots_take_batches_alongside_hosts(tmp_path: Path) -> None:
    local, a = Fake("local", delay_s=0.05), Fake("a", delay_s=0.05)
    run(tmp_path, [batch(f"k{i}", 2) for i in range(4)], local, 1, [Machine("a", 1, lambda _b: a)])
    assert local.ran and a.ran
    assert {c["run_host"] for c in rundir.cell_results(tmp_path).values()} == {
        socket.gethostname(),
        "a",
    }
