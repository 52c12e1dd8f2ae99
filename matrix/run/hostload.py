"""How loaded this machine was while each cell ran, seen from the orchestrator.

A verdict from a guest that was starved of CPU is weaker evidence than one from a quiet
machine, so every result that arrives is stamped with what the host saw since the
previous result of the same batch: the load average, the share of CPU time the
hypervisor under this machine stole (it is often a VM itself), and the share of time
the batch's busiest QEMU thread (the vCPU, under TCG) sat runnable but unscheduled
(`/proc/PID/task/*/schedstat`, the second field). Remote hosts are not sampled: only
what can be seen from here counts.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matrix.run import procs

SAMPLE_S = 1.0


def _read(path: str | Path) -> str:
    try:
        with open(path) as f:
            return f.read(65536)
    except OSError:
        return ""


def load1() -> float | None:
    words = _read("/proc/loadavg").split()
    try:
        return float(words[0])
    except (IndexError, ValueError):
        return None


def cpu_ticks() -> tuple[int, int] | None:
    """(total, steal) ticks of the aggregate CPU line of /proc/stat."""
    for line in _read("/proc/stat").splitlines():
        words = line.split()
        if words[:1] == ["cpu"] and len(words) >= 9:
            values = [int(w) for w in words[1:9]]
            return sum(values), values[7]
    return None


def wait_ns(pids: list[int]) -> dict[str, int]:
    """Per thread of `pids`: nanoseconds spent runnable but not running."""
    out = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            fields = _read(task / "schedstat").split()
            if len(fields) >= 2 and fields[1].isdigit():
                out[f"{pid}/{task.name}"] = int(fields[1])
    return out


def qemu_pids(marker: str) -> list[int]:
    """The QEMU processes of one batch: those whose command line names its workdir."""
    out = []
    for pid in procs.find_by_marker(marker):
        exe = _read(f"/proc/{pid}/comm").strip()
        if exe.startswith("qemu"):
            out.append(pid)
    return out


@dataclass
class Window:
    """What was seen of one batch since its previous result."""

    started: float
    loads: list[float] = field(default_factory=list)
    ticks: tuple[int, int] | None = None
    wait: dict[str, int] | None = None


class HostLoad:
    """A sampling thread; `stamp(batch, result)` adds a `host_load` figure set to a
    result and starts the batch's next window."""

    def __init__(self, sample_s: float = SAMPLE_S) -> None:
        self.sample_s = sample_s
        self.lock = threading.Lock()
        self.windows: dict[str, Window] = {}
        self.markers: dict[str, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hostload", daemon=True)

    def __enter__(self) -> HostLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=2 * self.sample_s)

    def begin(self, batch: str, marker: str = "") -> None:
        """A batch starts; `marker` (its workdir) finds its QEMU, if it has one."""
        with self.lock:
            self.markers[batch] = marker
            self.windows[batch] = self._new_window(batch)

    def end(self, batch: str) -> None:
        with self.lock:
            self.windows.pop(batch, None)
            self.markers.pop(batch, None)

    def _new_window(self, batch: str) -> Window:
        marker = self.markers.get(batch, "")
        wait = wait_ns(qemu_pids(marker)) if marker else None
        return Window(time.monotonic(), ticks=cpu_ticks(), wait=wait)

    def _run(self) -> None:
        while not self.stop.wait(self.sample_s):
            value = load1()
            if value is None:
                continue
            with self.lock:
                for w in self.windows.values():
                    w.loads.append(value)

    def stamp(self, batch: str, result: dict[str, Any]) -> None:
        """Add the figures of the window that this result closes, then open the next."""
        with self.lock:
            w = self.windows.get(batch)
            if w is None:
                return
            result["host_load"] = self._figures(batch, w)
            self.windows[batch] = self._new_window(batch)

    def _figures(self, batch: str, w: Window) -> dict[str, Any]:
        span = time.monotonic() - w.started
        loads = w.loads or [v for v in [load1()] if v is not None]
        out: dict[str, Any] = {
            "span_s": round(span, 2),
            "cores": os.cpu_count(),
            "load1_mean": round(sum(loads) / len(loads), 2) if loads else None,
            "load1_max": max(loads) if loads else None,
            "steal_share": None,
            "vm_wait_share": None,
        }
        now = cpu_ticks()
        if w.ticks and now and now[0] > w.ticks[0]:
            out["steal_share"] = round((now[1] - w.ticks[1]) / (now[0] - w.ticks[0]), 3)
        marker = self.markers.get(batch, "")
        if marker and w.wait is not None and span > 0:
            now_wait = wait_ns(qemu_pids(marker))
            if now_wait:
                waited = max(v - w.wait.get(tid, 0) for tid, v in now_wait.items())
                out["vm_wait_share"] = round(max(0, waited) / 1e9 / span, 3)
        return out
