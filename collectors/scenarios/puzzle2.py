#!/usr/bin/env python3
"""Puzzle 2: the seed's connect/accept/close loop (2A: the server closes first, 2B: the
client first).

    puzzle2.py --close-first client|server

Stdlib only, Python 3.8+, run in the cell's own network namespace by the agent. The
loop runs in a forked child so that a crawl or a hang can be watched and killed; it
reports through kmatrix_probe.Shared (iteration counter, error slot, one connect()
latency per iteration). The parent is the monitor (kmatrix_probe.monitor): it samples
/proc every sample_s. What is puzzle 2's own is here: the loop body, the knee (half the
port range), the goal past the knee, the collapse rule and the TIME-WAIT count.
Limits come from KMATRIX_* (see kmatrix_probe.limit); the result goes to result.json,
or to stdout when run by hand.
"""

from __future__ import annotations

import collections
import errno
import os
import socket
import sys
import time

TYPE_CHECKING = False
"""typing and dataclasses cost ~0.6 s of a guest's start under TCG; these are for checkers."""
if TYPE_CHECKING:
    from typing import Any

try:
    import kmatrix_probe as probe
except ImportError:  # run by hand: the library is in the directory above
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import kmatrix_probe as probe

PORT = 1234
PHASES = ("socket", "connect", "accept", "close", "bind", "listen")
RUNNING, CAP, WINDOW, ERROR, TARGET = 0, 1, 2, 3, 4
ENDED_BY = {CAP: "cap", WINDOW: "window", ERROR: "error", TARGET: "target"}
ITERATIONS, CODE, ERRNO, ERR_ITERATION, ERR_PHASE, STOP, ELAPSED = (
    probe.COUNTER,
    probe.CODE,
    probe.ERRNO,
    probe.ERR_AT,
    probe.ERR_PHASE,
    probe.STOP,
    probe.ELAPSED,
)
HEADER_WORDS = probe.HEADER_WORDS
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
DEFAULTS = {"window_s": 25.0, "iteration_cap": 20000, "stall_s": 10.0, "sample_s": 0.2}
USAGE = "usage: puzzle2.py --close-first client|server  (Puzzle 2: the connect/accept/close loop.)"
"""Limits for a run by hand, where no KMATRIX_* variable is set."""


def _loop(shared: probe.Shared, server_first: bool, window_s: float) -> None:
    """The child's work: listen on :1234, then the seed's loop body until the cap, the
    window, a stop request or an error. Kept flat and lean: every extra step per
    iteration slows the very rate being measured."""
    start = time.monotonic()
    deadline = start + window_s
    words, floats, cap = shared.words, shared.floats, shared.slots
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


def sockstat_tw() -> int | None:
    """TIME-WAIT sockets in this namespace, from the "TCP:" line of /proc/net/sockstat."""
    for line in probe.read_text("/proc/net/sockstat").splitlines():
        words = line.split()
        if words[:1] == ["TCP:"] and "tw" in words:
            return int(words[words.index("tw") + 1])
    return None


class Goal(collections.namedtuple("Goal", ("knee", "margin", "margin_s"))):
    """When a loop has shown enough: `margin` connections and `margin_s` seconds past
    the knee (half the port range, where 2B's ports run out), so that a crawl would
    show in its late rate. None for the knee when the port range is unknown; None for
    the margins when the cell sets none (it then runs to its limits). Immutable."""

    __slots__ = ()


class Watch(probe.Watch):
    """The library's watch of the loop child, plus puzzle 2's own: connect() latencies
    and TIME-WAIT sockets in each sample, when the loop passed the knee, the goal past
    it and the collapse rule."""

    def __init__(
        self, pid: int, shared: probe.Shared, stall_s: float, collapse_s: float, goal: Goal
    ) -> None:
        super().__init__(pid, shared, stall_s, counter="iterations")
        self.collapse_s, self.goal = collapse_s, goal
        self.knee_t: float | None = None
        self.asked_at: float | None = None

    def fields(self, start: int, stop: int) -> dict[str, Any]:
        summary = probe.percentiles(self.shared.values(start, stop))
        return {"tw": sockstat_tw(), "lat_p50_us": summary["p50"], "lat_max_us": summary["max"]}

    def observed(self, point: dict[str, Any]) -> None:
        knee = self.goal.knee
        if self.knee_t is None and knee is not None and point["iterations"] >= knee:
            self.knee_t = point["t"]

    def phase(self) -> str:
        """Stacks before the knee and past it are counted apart: the crawl is past it."""
        if self.knee_t is None:
            return "before_knee" if self.goal.knee is not None else "run"
        return "past_knee"

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
        slow = self.rate_over(self.collapse_s)
        if slow is None or slow <= 0 or slow >= COLLAPSE_RATIO * before:
            return False
        self.remember()
        return True

    def check(self, now: float) -> str | None:
        """A collapse ends the watch; reaching the goal asks the loop to stop, and one
        that does not within TARGET_GRACE_S is killed ("target")."""
        if self.collapsed():
            return "collapse"
        if self.asked_at is None and self.reached_goal():
            self.shared.request_stop()
            self.asked_at = now
        if self.asked_at is not None and now - self.asked_at >= TARGET_GRACE_S:
            self.remember()
            return "target"
        return None


def monitor(
    pid: int,
    shared: probe.Shared,
    window_s: float,
    stall_s: float,
    sample_s: float,
    collapse_s: float = 0.0,
    goal: Goal | None = None,
) -> dict[str, Any]:
    """Watch the loop child `pid` to its end, kill it if needed, and reap it."""
    watch = Watch(pid, shared, stall_s, collapse_s, goal or Goal(None, None, None))
    watched = probe.monitor(watch, window_s, sample_s)
    watched["knee_t"] = watch.knee_t
    return watched


def _outcome(shared: probe.Shared, watched: dict[str, Any]) -> tuple:
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
        lo, hi = probe.read_text("/proc/sys/net/ipv4/ip_local_port_range").split()
        return [int(lo), int(hi)]
    except ValueError:
        return None


def knee(ports: list | None) -> int | None:
    """Half the port range: connect() fills one parity of the range first, so this is
    where a client that closes first (2B) can run out of ports."""
    return (ports[1] - ports[0] + 1) // 2 if ports else None


def _deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in NSTAT_KEYS if k in before and k in after}


def goal_for(margin: int | None, margin_s: float | None, ports: list | None) -> Goal:
    """The cell's goal; a cell that sets no margins runs to its limits."""
    if margin is None and margin_s is None:
        return Goal(knee(ports), None, None)
    return Goal(knee(ports), int(margin or 0), float(margin_s or 0.0))


def run(
    close_first: str,
    cap: int,
    window_s: float,
    stall_s: float,
    sample_s: float,
    collapse_s: float = 0.0,
    margin: int | None = None,
    margin_s: float | None = None,
) -> dict[str, Any]:
    """Run the loop under the monitor and summarise what it measured."""
    ports = port_range()
    goal = goal_for(margin, margin_s, ports)
    shared = probe.Shared(cap)
    before, cpu_before = probe.read_nstat(), probe.cpu_times()
    pid = probe.spawn(lambda: _loop(shared, close_first == "server", window_s))
    probe.log(
        f"{close_first} closes first: loop pid {pid}, knee {goal.knee}, goal +{goal.margin} "
        f"and +{goal.margin_s}s past it, safety limits {cap} and {window_s:g}s"
    )
    watched = monitor(pid, shared, window_s, stall_s, sample_s, collapse_s, goal)
    ended_by, error, elapsed = _outcome(shared, watched)
    iterations = shared.count()
    final = watched["final"]
    metrics = {
        "iterations": iterations,
        "elapsed_s": round(elapsed, 3),
        "ended_by": ended_by,
        "latency_us": probe.percentiles(shared.values(0, iterations)),
        "tw_max": max((s["tw"] for s in watched["series"] if s["tw"] is not None), default=None),
        "nstat": _deltas(before, probe.read_nstat()),
        "utime_s": watched["utime_s"],
        "stime_s": watched["stime_s"],
        "final_state": final["state"] if final else None,
        "port_range": ports,
        "knee": goal.knee,
        "knee_t": watched["knee_t"],
        "counter_regressions": watched["counter_regressions"],
        "guest_cpu": probe.cpu_shares(cpu_before, probe.cpu_times()),
    }
    shared.close()
    detail = f"ended_by={ended_by} iterations={iterations} elapsed_s={metrics['elapsed_s']}"
    probe.log(detail + (f" error={error['name']}" if error else ""))
    return {
        "metrics": metrics,
        "series": watched["series"],
        "evidence": {
            "stall": watched["stall"],
            "final": final,
            "profile": watched["stack_profile"],
        },
        "error": error,
        "status_detail": detail,
    }


def main(argv: list | None = None) -> int:
    close_first = probe.choice(argv, "--close-first", ("client", "server"), USAGE)
    doc = run(
        close_first,
        int(probe.limit("iteration_cap", DEFAULTS["iteration_cap"])),
        float(probe.limit("window_s", DEFAULTS["window_s"])),
        float(probe.limit("stall_s", DEFAULTS["stall_s"])),
        float(probe.limit("sample_s", DEFAULTS["sample_s"])),
        float(probe.limit("collapse_s", 0.0)),
        probe.limit("knee_margin", None),
        probe.limit("knee_margin_s", None),
    )
    probe.write_result(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
