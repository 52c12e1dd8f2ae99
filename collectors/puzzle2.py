"""Puzzle 2: the seed's connect/accept/close loop (2A: server closes first, 2B: client first).

Stdlib only, Python 3.8+. `run(cell, log)` runs in the cell's own network namespace. The
loop runs in a forked child so that a crawl or a hang can be watched and killed; it
reports through an anonymous shared mmap (iteration counter, error slot, one connect()
latency per iteration). The parent is the monitor: it samples /proc every sample_s.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import signal
import socket
import struct
import time
import traceback
from collections.abc import Callable
from typing import Any

PORT = 1234
PHASES = ("socket", "connect", "accept", "close", "bind", "listen")
RUNNING, CAP, WINDOW, ERROR = 0, 1, 2, 3
ENDED_BY = {CAP: "cap", WINDOW: "window", ERROR: "error"}
# Shared header, 8-byte slots: iterations, end code, errno, error iteration, error phase,
# the loop's own elapsed seconds. One float64 latency per iteration follows it.
HEADER = struct.Struct("<qqqqqd")
HEADER_SIZE = 64
WINDOW_GRACE_S = 1.0  # the loop checks the window itself; the monitor kills it after this
COLLAPSE_RATIO = 0.1
"""Below this share of its best rate for collapse_s, a loop is stopped early."""
NSTAT_KEYS = (
    "TcpExtTW",
    "TcpExtTWRecycled",
    "TcpExtTWKilled",
    "TcpExtTCPTimeWaitOverflow",
    "TcpActiveOpens",
    "TcpExtListenOverflows",
)


class Shared:
    """The anonymous MAP_SHARED region the loop child writes and the monitor reads."""

    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self.mem = mmap.mmap(-1, HEADER_SIZE + 8 * self.cap)

    def header(self) -> tuple:
        return HEADER.unpack_from(self.mem, 0)

    def iterations(self) -> int:
        return struct.unpack_from("<q", self.mem, 0)[0]

    def latencies(self, start: int, stop: int) -> list:
        """connect() latencies in microseconds of iterations [start, stop)."""
        stop = min(stop, self.cap)
        if stop <= start:
            return []
        return list(struct.unpack_from(f"<{stop - start}d", self.mem, HEADER_SIZE + 8 * start))


def _one_iteration(s: socket.socket, scenario: str, phase: list) -> float:
    """The seed's loop body; returns connect()'s microseconds, `phase[0]` names the call."""
    phase[0] = 0
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    phase[0] = 1
    t0 = time.perf_counter()
    c.connect(("127.0.0.1", PORT))
    took = (time.perf_counter() - t0) * 1e6
    phase[0] = 2
    sc, _ = s.accept()
    phase[0] = 3
    if scenario == "2A":
        sc.close()
        c.close()
    else:
        c.close()
        sc.close()
    return took


def _loop(shared: Shared, scenario: str, window_s: float) -> None:
    """The child's work: listen on :1234, then iterate until the cap, window or an error."""
    start = time.monotonic()
    deadline = start + window_s
    mem, i, phase, code = shared.mem, 0, [0], WINDOW
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
        phase[0] = 4
        s.bind(("127.0.0.1", PORT))
        phase[0] = 5
        s.listen(16)
        while True:
            if i >= shared.cap:
                code = CAP
                break
            if time.monotonic() >= deadline:
                break
            took = _one_iteration(s, scenario, phase)
            struct.pack_into("<d", mem, HEADER_SIZE + 8 * i, took)
            i += 1
            struct.pack_into("<q", mem, 0, i)
    except OSError as e:
        struct.pack_into("<qqq", mem, 16, e.errno or 0, i, phase[0])
        code = ERROR
    struct.pack_into("<d", mem, 40, time.monotonic() - start)
    struct.pack_into("<q", mem, 8, code)


def _read(path: str) -> str:
    """A /proc file's text, or "error: ..." so that evidence records why it is missing."""
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        return f"error: {e.strerror or e}"


def _proc_stat(pid: int) -> tuple:
    """(state, utime s, stime s) from /proc/PID/stat; (None, None, None) if unreadable."""
    text = _read(f"/proc/{pid}/stat")
    fields = text[text.rfind(")") + 2 :].split()
    if text.startswith("error:") or len(fields) < 13:
        return None, None, None
    tick = os.sysconf("SC_CLK_TCK")
    return fields[0], int(fields[11]) / tick, int(fields[12]) / tick


def _wchan(pid: int) -> str:
    """The kernel function the process sleeps in; "" when running ("0" on some kernels)."""
    text = _read(f"/proc/{pid}/wchan").strip()
    return "" if text == "0" else text


def _sockstat_tw() -> int | None:
    """TIME-WAIT sockets in this namespace, from the "TCP:" line of /proc/net/sockstat."""
    for line in _read("/proc/net/sockstat").splitlines():
        words = line.split()
        if words[:1] == ["TCP:"] and "tw" in words:
            return int(words[words.index("tw") + 1])
    return None


def read_nstat() -> dict[str, int]:
    """Counters of /proc/net/netstat and /proc/net/snmp, named as nstat names them."""
    counters: dict[str, int] = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        lines = _read(path).splitlines()
        for names, values in zip(lines[::2], lines[1::2]):  # noqa: B905 (runs on 3.8)
            prefix, _, keys = names.partition(":")
            for key, value in zip(keys.split(), values.partition(":")[2].split()):  # noqa: B905
                if value.lstrip("-").isdigit():
                    counters[prefix + key] = int(value)
    return counters


def evidence(pid: int) -> dict[str, Any]:
    """What the process is doing now, for telling a CPU-bound crawl from a blocked hang."""
    return {
        "state": _proc_stat(pid)[0],
        "wchan": _wchan(pid),
        "stack": _read(f"/proc/{pid}/stack"),
        "syscall": _read(f"/proc/{pid}/syscall").strip(),
    }


def percentiles(values: list) -> dict[str, Any]:
    """Nearest-rank p50/p90/p99 and max; None for each when there are no values."""
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float | None:
        return round(ordered[min(n - 1, math.ceil(q * n) - 1)], 1) if n else None

    return {"count": n, "p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": rank(1.0)}


class Watch:
    """The monitor's view of one loop child: its samples and when it last made progress."""

    def __init__(self, pid: int, shared: Shared, stall_s: float, collapse_s: float = 0.0) -> None:
        self.pid, self.shared, self.stall_s = pid, shared, stall_s
        self.collapse_s = collapse_s
        self.peak_rate = 0.0
        self.t0 = time.monotonic()
        self.series: list = []
        self.seen = 0
        self.progress_at = self.t0
        self.last_live: dict[str, Any] | None = None
        self.stall: dict[str, Any] | None = None

    def sample(self) -> None:
        """One series point; remembers the last evidence taken while the child was alive."""
        now = time.monotonic()
        iterations = self.shared.iterations()
        summary = percentiles(self.shared.latencies(self.seen, iterations))
        state, utime, stime = _proc_stat(self.pid)
        wchan = _wchan(self.pid)
        self.series.append(
            {
                "t": round(now - self.t0, 3),
                "iterations": iterations,
                "tw": _sockstat_tw(),
                "state": state,
                "utime": utime,
                "stime": stime,
                "wchan": wchan,
                "lat_p50_us": summary["p50"],
                "lat_max_us": summary["max"],
            }
        )
        if iterations != self.seen:
            self.seen, self.progress_at = iterations, now
        if state not in (None, "Z", "X"):
            self.last_live = evidence(self.pid)

    def _rate_over(self, span_s: float) -> float | None:
        """Connections/s over the last `span_s` of samples, None before that much time."""
        last = self.series[-1]
        for earlier in reversed(self.series):
            if last["t"] - earlier["t"] >= span_s:
                return (last["iterations"] - earlier["iterations"]) / (last["t"] - earlier["t"])
        return None

    def collapsed(self) -> bool:
        """Still progressing, but below COLLAPSE_RATIO of the best 1-second rate for a
        whole collapse_s: the outcome is clear, so the cell need not wait for its window.
        No progress at all is left to the stall rule, which keeps hang evidence."""
        if not self.collapse_s or not self.series:
            return False
        recent = self._rate_over(1.0)
        if recent is not None:
            self.peak_rate = max(self.peak_rate, recent)
        slow = self._rate_over(self.collapse_s)
        if slow is None or slow <= 0 or slow >= COLLAPSE_RATIO * self.peak_rate:
            return False
        self.last_live = evidence(self.pid)
        return True

    def stalled(self) -> bool:
        """No new iteration for stall_s: keep the evidence the stall rule needs."""
        now = time.monotonic()
        if now - self.progress_at < self.stall_s:
            return False
        self.stall = dict(evidence(self.pid), t=round(now - self.t0, 3), iterations=self.seen)
        return True


def _exited(pid: int) -> bool:
    """True once the child has exited, leaving it a zombie so /proc/PID stays readable."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _watch(watch: Watch, window_s: float, sample_s: float) -> str | None:
    """Sample until the child ends (None), stalls ("stall"), collapses ("collapse") or
    overruns the window ("window")."""
    watch.sample()
    next_tick = watch.t0 + sample_s
    while True:
        if _exited(watch.pid):
            watch.sample()
            return None
        now = time.monotonic()
        if now >= next_tick:
            watch.sample()
            next_tick = max(next_tick + sample_s, now)
            if watch.stalled():
                return "stall"
            if watch.collapsed():
                return "collapse"
            if now - watch.t0 >= window_s + WINDOW_GRACE_S:
                watch.last_live = evidence(watch.pid)
                return "window"
        time.sleep(max(0.0, min(0.05, next_tick - now)))


def monitor(
    pid: int,
    shared: Shared,
    window_s: float,
    stall_s: float,
    sample_s: float,
    collapse_s: float = 0.0,
) -> dict[str, Any]:
    """Watch the loop child `pid` to its end, kill it if needed, and reap it."""
    watch = Watch(pid, shared, stall_s, collapse_s)
    killed_for = _watch(watch, window_s, sample_s)
    if killed_for:
        os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    return {
        "killed_for": killed_for,
        "status": status,
        "elapsed_s": time.monotonic() - watch.t0,
        "series": watch.series,
        "stall": watch.stall,
        "final": watch.last_live,
        "utime_s": round(usage.ru_utime, 3),
        "stime_s": round(usage.ru_stime, 3),
    }


def _start_loop(shared: Shared, scenario: str, window_s: float) -> int:
    """Fork the loop child; it never returns into the caller's code."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _loop(shared, scenario, window_s)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def _outcome(shared: Shared, watched: dict[str, Any]) -> tuple:
    """(ended_by, error, elapsed_s) from what the loop wrote and how the monitor ended it."""
    iterations, code, err, err_iteration, err_phase, elapsed = shared.header()
    if code == RUNNING:
        if watched["killed_for"]:
            return watched["killed_for"], None, watched["elapsed_s"]
        status = watched["status"]
        how = (
            f"signal {os.WTERMSIG(status)}"
            if os.WIFSIGNALED(status)
            else f"exit {os.WEXITSTATUS(status)}"
        )
        message = f"loop process ended without a result ({how})"
        error = {
            "errno": None,
            "name": "loop_died",
            "message": message,
            "iteration": iterations,
            "phase": None,
        }
        return "error", error, watched["elapsed_s"]
    if code != ERROR:
        return ENDED_BY[code], None, elapsed
    error = {
        "errno": err,
        "name": errno.errorcode.get(err, str(err)),
        "message": os.strerror(err),
        "iteration": err_iteration,
        "phase": PHASES[err_phase],
    }
    return "error", error, elapsed


def port_range() -> list | None:
    """The namespace's ephemeral port range: how far 2B can get before ports run out."""
    try:
        lo, hi = _read("/proc/sys/net/ipv4/ip_local_port_range").split()
        return [int(lo), int(hi)]
    except ValueError:
        return None


def _deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in NSTAT_KEYS if k in before and k in after}


def run(cell: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Run the loop for one cell under the monitor and summarise what it measured."""
    cap, window_s = int(cell["iteration_cap"]), float(cell["window_s"])
    shared = Shared(cap)
    before = read_nstat()
    pid = _start_loop(shared, cell["scenario"], window_s)
    log(f"{cell['scenario']}: loop pid {pid}, cap {cap}, window {window_s}s")
    watched = monitor(
        pid,
        shared,
        window_s,
        float(cell["stall_s"]),
        float(cell["sample_s"]),
        float(cell.get("collapse_s", 0.0)),
    )
    ended_by, error, elapsed = _outcome(shared, watched)
    iterations = shared.iterations()
    final = watched["final"]
    metrics = {
        "iterations": iterations,
        "elapsed_s": round(elapsed, 3),
        "ended_by": ended_by,
        "latency_us": percentiles(shared.latencies(0, iterations)),
        "tw_max": max((s["tw"] for s in watched["series"] if s["tw"] is not None), default=None),
        "nstat": _deltas(before, read_nstat()),
        "utime_s": watched["utime_s"],
        "stime_s": watched["stime_s"],
        "final_state": final["state"] if final else None,
        "port_range": port_range(),
    }
    shared.mem.close()
    detail = f"ended_by={ended_by} iterations={iterations} elapsed_s={metrics['elapsed_s']}"
    log(f"{cell['scenario']}: {detail}" + (f" error={error['name']}" if error else ""))
    return {
        "metrics": metrics,
        "series": watched["series"],
        "evidence": {"stall": watched["stall"], "final": final},
        "error": error,
        "status_detail": detail,
    }
