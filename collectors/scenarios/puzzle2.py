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
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PORT = 1234
PHASES = ("socket", "connect", "accept", "close", "bind", "listen")
RUNNING, CAP, WINDOW, ERROR, TARGET = 0, 1, 2, 3, 4
ENDED_BY = {CAP: "cap", WINDOW: "window", ERROR: "error", TARGET: "target"}
# Shared header, 8-byte words: iterations, end code, errno, error iteration, error phase,
# stop request (from the monitor), the loop's own elapsed seconds (a float64). One
# float64 connect() latency per iteration follows the header.
ITERATIONS, CODE, ERRNO, ERR_ITERATION, ERR_PHASE, STOP, ELAPSED = range(7)
HEADER_WORDS = 8
HEADER_SIZE = 8 * HEADER_WORDS
WINDOW_GRACE_S = 1.0  # the loop checks the window itself; the monitor kills it after this
TARGET_GRACE_S = 5.0  # after a stop request the loop ends at its next iteration
COLLAPSE_RATIO = 0.1
"""Past the knee, below this share of the rate before it for collapse_s, a loop is
stopped early: the crawl is established."""
NSTAT_KEYS = (
    "TcpExtTW",
    "TcpExtTWRecycled",
    "TcpExtTWKilled",
    "TcpExtTCPTimeWaitOverflow",
    "TcpActiveOpens",
    "TcpExtListenOverflows",
)


class Shared:
    """The anonymous MAP_SHARED region the loop child writes and the monitor reads.

    Every slot is one aligned 8-byte word, stored and loaded through a memoryview cast
    to int64 or float64: one machine store and one load each, so the monitor never sees
    half a value. (`struct.pack_into` zeroes its target before writing it, so a reader
    racing it could see 0 in the middle of a run.)
    """

    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self.mem = mmap.mmap(-1, HEADER_SIZE + 8 * self.cap)
        self.words = memoryview(self.mem).cast("q")
        self.floats = memoryview(self.mem).cast("d")

    def header(self) -> tuple:
        w = self.words
        return (w[ITERATIONS], w[CODE], w[ERRNO], w[ERR_ITERATION], w[ERR_PHASE])

    def iterations(self) -> int:
        return self.words[ITERATIONS]

    def elapsed(self) -> float:
        return self.floats[ELAPSED]

    def request_stop(self) -> None:
        self.words[STOP] = 1

    def latencies(self, start: int, stop: int) -> list:
        """connect() latencies in microseconds of iterations [start, stop)."""
        stop = min(stop, self.cap)
        if stop <= start:
            return []
        return self.floats[HEADER_WORDS + start : HEADER_WORDS + stop].tolist()

    def close(self) -> None:
        self.words.release()
        self.floats.release()
        self.mem.close()


def _loop(shared: Shared, scenario: str, window_s: float) -> None:
    """The child's work: listen on :1234, then the seed's loop body until the cap, the
    window, a stop request or an error. Kept flat and lean: every extra step per
    iteration slows the very rate being measured."""
    start = time.monotonic()
    deadline = start + window_s
    words, floats, cap = shared.words, shared.floats, shared.cap
    server_first = scenario == "2A"
    i, phase, code = 0, 0, WINDOW
    perf, mono = time.perf_counter, time.monotonic
    new_socket, af, stream, addr = (
        socket.socket,
        socket.AF_INET,
        socket.SOCK_STREAM,
        ("127.0.0.1", PORT),
    )
    try:
        s = new_socket(af, stream, 0)
        phase = 4
        s.bind(addr)
        phase = 5
        s.listen(16)
        while True:
            if i >= cap:
                code = CAP
                break
            if words[STOP]:
                code = TARGET
                break
            if not i & 15 and mono() >= deadline:
                break
            phase = 0
            c = new_socket(af, stream, 0)
            phase = 1
            t0 = perf()
            c.connect(addr)
            took = perf() - t0
            phase = 2
            sc, _ = s.accept()
            phase = 3
            if server_first:
                sc.close()
                c.close()
            else:
                c.close()
                sc.close()
            floats[HEADER_WORDS + i] = took * 1e6
            i += 1
            words[ITERATIONS] = i
    except OSError as e:
        words[ERRNO], words[ERR_ITERATION], words[ERR_PHASE] = e.errno or 0, i, phase
        code = ERROR
    floats[ELAPSED] = time.monotonic() - start
    words[CODE] = code


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


@dataclass(frozen=True)
class Goal:
    """When a loop has shown enough: `margin` connections and `margin_s` seconds past
    the knee (half the port range, where 2B's ports run out), so that a crawl would
    show in its late rate. None for the knee when the port range is unknown; None for
    the margins when the cell sets none (it then runs to its limits)."""

    knee: int | None
    margin: int | None
    margin_s: float | None


class Watch:
    """The monitor's view of one loop child: its samples, when it last made progress,
    and when it passed the knee."""

    def __init__(
        self, pid: int, shared: Shared, stall_s: float, collapse_s: float, goal: Goal
    ) -> None:
        self.pid, self.shared, self.stall_s = pid, shared, stall_s
        self.collapse_s, self.goal = collapse_s, goal
        self.t0 = time.monotonic()
        self.series: list = []
        self.seen = 0
        self.regressions = 0
        self.progress_at = self.t0
        self.knee_t: float | None = None
        self.last_live: dict[str, Any] | None = None
        self.stall: dict[str, Any] | None = None

    def _count(self) -> int:
        """The shared counter, which only grows: a smaller reading is impossible, so it
        is counted (it would mean a torn read) and the previous value is kept."""
        got = self.shared.iterations()
        if got < self.seen:
            self.regressions += 1
            return self.seen
        return got

    def sample(self) -> None:
        """One series point; remembers the last evidence taken while the child was alive."""
        now = time.monotonic()
        iterations = self._count()
        summary = percentiles(self.shared.latencies(self.seen, iterations))
        state, utime, stime = _proc_stat(self.pid)
        wchan = _wchan(self.pid)
        t = round(now - self.t0, 3)
        self.series.append(
            {
                "t": t,
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
        knee = self.goal.knee
        if self.knee_t is None and knee is not None and iterations >= knee:
            self.knee_t = t
        if state not in (None, "Z", "X"):
            self.last_live = evidence(self.pid)

    def _rate_over(self, span_s: float) -> float | None:
        """Connections/s over the last `span_s` of samples, None before that much time."""
        last = self.series[-1]
        for earlier in reversed(self.series):
            if last["t"] - earlier["t"] >= span_s:
                return (last["iterations"] - earlier["iterations"]) / (last["t"] - earlier["t"])
        return None

    def reached_goal(self) -> bool:
        """Past the knee by both margins: the cell has shown what it must."""
        goal = self.goal
        if self.knee_t is None or goal.knee is None or goal.margin is None:
            return False
        last = self.series[-1]
        return last["iterations"] >= goal.knee + goal.margin and last["t"] - self.knee_t >= (
            goal.margin_s or 0.0
        )

    def collapsed(self) -> bool:
        """Past the knee, still progressing, but below COLLAPSE_RATIO of the rate before
        the knee for a whole collapse_s: the crawl is clear, so the cell can stop. Before
        the knee nothing is stopped: a dip there is the machine, not the puzzle. No
        progress at all is left to the stall rule, which keeps hang evidence."""
        if not self.collapse_s or self.knee_t is None or not self.knee_t > 0:
            return False
        if self.series[-1]["t"] - self.knee_t < self.collapse_s:
            return False
        before = (self.goal.knee or 0) / self.knee_t
        slow = self._rate_over(self.collapse_s)
        if slow is None or slow <= 0 or slow >= COLLAPSE_RATIO * before:
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
    overruns the window ("window"). Reaching the goal asks the child to stop; one that
    does not within TARGET_GRACE_S is killed ("target")."""
    watch.sample()
    next_tick = watch.t0 + sample_s
    asked_at: float | None = None
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
            if asked_at is None and watch.reached_goal():
                watch.shared.request_stop()
                asked_at = now
            if asked_at is not None and now - asked_at >= TARGET_GRACE_S:
                watch.last_live = evidence(watch.pid)
                return "target"
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
    goal: Goal | None = None,
) -> dict[str, Any]:
    """Watch the loop child `pid` to its end, kill it if needed, and reap it."""
    watch = Watch(pid, shared, stall_s, collapse_s, goal or Goal(None, None, None))
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
        "knee_t": watch.knee_t,
        "counter_regressions": watch.regressions,
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
    iterations, code, err, err_iteration, err_phase = shared.header()
    elapsed = shared.elapsed()
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


def knee(ports: list | None) -> int | None:
    """Half the port range: connect() fills one parity of the range first, so this is
    where a client that closes first (2B) can run out of ports."""
    return (ports[1] - ports[0] + 1) // 2 if ports else None


def cpu_times() -> list | None:
    """The guest's aggregate CPU line of /proc/stat (user .. steal, in ticks)."""
    for line in _read("/proc/stat").splitlines():
        words = line.split()
        if words[:1] == ["cpu"] and len(words) >= 9:
            return [int(w) for w in words[1:9]]
    return None


def cpu_shares(before: list | None, after: list | None) -> dict[str, Any]:
    """How the guest's CPUs spent the cell: busy and steal (time the hypervisor ran
    something else, where the guest can see it: KVM reports it, TCG does not)."""
    if not before or not after:
        return {"busy_share": None, "steal_share": None}
    d = [b - a for a, b in zip(before, after)]  # noqa: B905 (runs on 3.8)
    total = sum(d)
    if total <= 0:
        return {"busy_share": None, "steal_share": None}
    idle = d[3] + d[4]
    return {"busy_share": round(1 - idle / total, 3), "steal_share": round(d[7] / total, 3)}


def _deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in NSTAT_KEYS if k in before and k in after}


def goal_for(cell: dict[str, Any], ports: list | None) -> Goal:
    """The cell's goal; a cell that sets no margins runs to its limits."""
    if "knee_margin" not in cell and "knee_margin_s" not in cell:
        return Goal(knee(ports), None, None)
    margin, margin_s = int(cell.get("knee_margin", 0)), float(cell.get("knee_margin_s", 0.0))
    return Goal(knee(ports), margin, margin_s)


def run(cell: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Run the loop for one cell under the monitor and summarise what it measured."""
    cap, window_s = int(cell["iteration_cap"]), float(cell["window_s"])
    ports = port_range()
    goal = goal_for(cell, ports)
    shared = Shared(cap)
    before, cpu_before = read_nstat(), cpu_times()
    pid = _start_loop(shared, cell["scenario"], window_s)
    log(
        f"{cell['scenario']}: loop pid {pid}, knee {goal.knee}, goal +{goal.margin} "
        f"and +{goal.margin_s}s past it, safety limits {cap} and {window_s:g}s"
    )
    watched = monitor(
        pid,
        shared,
        window_s,
        float(cell["stall_s"]),
        float(cell["sample_s"]),
        float(cell.get("collapse_s", 0.0)),
        goal,
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
        "port_range": ports,
        "knee": goal.knee,
        "knee_t": watched["knee_t"],
        "counter_regressions": watched["counter_regressions"],
        "guest_cpu": cpu_shares(cpu_before, cpu_times()),
    }
    shared.close()
    detail = f"ended_by={ended_by} iterations={iterations} elapsed_s={metrics['elapsed_s']}"
    log(f"{cell['scenario']}: {detail}" + (f" error={error['name']}" if error else ""))
    return {
        "metrics": metrics,
        "series": watched["series"],
        "evidence": {"stall": watched["stall"], "final": final},
        "error": error,
        "status_detail": detail,
    }
