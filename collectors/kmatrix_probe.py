"""What a scenario program that measures a process needs: a shared counter, samples of
the process, the stall rule, and the result document.

Stdlib only, Python 3.8+; the agent puts this directory on PYTHONPATH, so a program does
`import kmatrix_probe`. The pattern (puzzle 2's): fork the measured loop, which bumps a
counter in `Shared`; the parent runs `monitor` over a `Watch`, which samples
/proc/PID every sample_s into a series {t, <counter>, state, utime, stime, wchan, ...},
keeps evidence (state, wchan, stack, syscall) of a loop that stops making progress for
stall_s, and kills it. `limit` reads the sweep's limits the agent passes (KMATRIX_*),
`write_result` writes result.json where the agent looks for it.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import signal
import sys
import time

TYPE_CHECKING = False
"""typing costs ~0.15 s of a guest's start under TCG: its names are for checkers only."""
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

COUNTER, CODE, ERRNO, ERR_AT, ERR_PHASE, STOP, ELAPSED = range(7)
"""The shared header's 8-byte words: the counter, an end code, an errno, the count at
the error, the phase of the error, a stop request (from the monitor), the loop's own
elapsed seconds (a float64). One float64 slot per count follows the header."""
HEADER_WORDS = 8
HEADER_SIZE = 8 * HEADER_WORDS
WINDOW_GRACE_S = 1.0
"""A loop checks the window itself; the monitor kills one still alive this long after."""
STARTED = time.monotonic()


class Shared:
    """An anonymous MAP_SHARED region a forked loop writes and the monitor reads.

    Every slot is one aligned 8-byte word, stored and loaded through a memoryview cast
    to int64 or float64: one machine store and one load each, so the monitor never sees
    half a value. (`struct.pack_into` zeroes its target before writing it, so a reader
    racing it could see 0 in the middle of a run.)
    """

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self.mem = mmap.mmap(-1, HEADER_SIZE + 8 * self.slots)
        self.words = memoryview(self.mem).cast("q")
        self.floats = memoryview(self.mem).cast("d")

    def header(self) -> tuple:
        """(counter, end code, errno, count at the error, phase of the error)."""
        w = self.words
        return (w[COUNTER], w[CODE], w[ERRNO], w[ERR_AT], w[ERR_PHASE])

    def count(self) -> int:
        return self.words[COUNTER]

    def elapsed(self) -> float:
        return self.floats[ELAPSED]

    def request_stop(self) -> None:
        self.words[STOP] = 1

    def values(self, start: int, stop: int) -> list:
        """The float slots of counts [start, stop) (e.g. one latency per iteration)."""
        stop = min(stop, self.slots)
        if stop <= start:
            return []
        return self.floats[HEADER_WORDS + start : HEADER_WORDS + stop].tolist()

    def close(self) -> None:
        self.words.release()
        self.floats.release()
        self.mem.close()


def read_text(path: str) -> str:
    """A /proc file's text, or "error: ..." so that evidence records why it is missing."""
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        return f"error: {e.strerror or e}"


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int) -> tuple:
    """(state, utime s, stime s) from /proc/PID/stat; (None, None, None) if unreadable."""
    text = read_text(f"/proc/{pid}/stat")
    fields = text[text.rfind(")") + 2 :].split()
    if text.startswith("error:") or len(fields) < 13:
        return None, None, None
    return fields[0], int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def wchan(pid: int) -> str:
    """The kernel function the process sleeps in; "" when running ("0" on some kernels)."""
    text = read_text(f"/proc/{pid}/wchan").strip()
    return "" if text == "0" else text


def evidence(pid: int, state: str | None = None, sleeping_in: str | None = None) -> dict[str, Any]:
    """What the process is doing now, for telling a CPU-bound crawl from a blocked hang;
    `state` and `sleeping_in`, when a sample has just read them, are not read again
    (every read is taken from the loop's CPU time on a one-vCPU guest)."""
    return {
        "state": proc_stat(pid)[0] if state is None else state,
        "wchan": wchan(pid) if sleeping_in is None else sleeping_in,
        "stack": read_text(f"/proc/{pid}/stack"),
        "syscall": read_text(f"/proc/{pid}/syscall").strip(),
    }


def read_nstat() -> dict[str, int]:
    """Counters of /proc/net/netstat and /proc/net/snmp, named as nstat names them."""
    counters: dict[str, int] = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        lines = read_text(path).splitlines()
        for names, values in zip(lines[::2], lines[1::2]):  # noqa: B905 (runs on 3.8)
            prefix, _, keys = names.partition(":")
            for key, value in zip(keys.split(), values.partition(":")[2].split()):  # noqa: B905
                if value.lstrip("-").isdigit():
                    counters[prefix + key] = int(value)
    return counters


def percentiles(values: list) -> dict[str, Any]:
    """Nearest-rank p50/p90/p99 and max; None for each when there are no values."""
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float | None:
        return round(ordered[min(n - 1, math.ceil(q * n) - 1)], 1) if n else None

    return {"count": n, "p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": rank(1.0)}


def cpu_times() -> list | None:
    """The machine's aggregate CPU line of /proc/stat (user .. steal, in ticks)."""
    for line in read_text("/proc/stat").splitlines():
        words = line.split()
        if words[:1] == ["cpu"] and len(words) >= 9:
            return [int(w) for w in words[1:9]]
    return None


def cpu_shares(before: list | None, after: list | None) -> dict[str, Any]:
    """How the CPUs spent the time between two cpu_times(): busy and steal (time the
    hypervisor ran something else, where the guest can see it: KVM reports it, TCG
    does not)."""
    if not before or not after:
        return {"busy_share": None, "steal_share": None}
    d = [b - a for a, b in zip(before, after)]  # noqa: B905 (runs on 3.8)
    total = sum(d)
    if total <= 0:
        return {"busy_share": None, "steal_share": None}
    idle = d[3] + d[4]
    return {"busy_share": round(1 - idle / total, 3), "steal_share": round(d[7] / total, 3)}


def choice(argv: list | None, flag: str, choices: tuple, usage: str) -> str:
    """The value of the one required `flag VALUE` (or `flag=VALUE`) a program takes,
    one of `choices`; exits 2 with `usage` otherwise. argparse would cost a program
    ~0.8 s of its start in a TCG guest (it loads gettext, shutil, bz2 and lzma)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args in (["-h"], ["--help"]):
        print(usage)
        raise SystemExit(0)
    value = None
    if len(args) == 2 and args[0] == flag:
        value = args[1]
    elif len(args) == 1 and args[0].startswith(flag + "="):
        value = args[0][len(flag) + 1 :]
    if value not in choices:
        print(f"{usage}\nerror: expected {flag} {'|'.join(choices)}, got {args}", file=sys.stderr)
        raise SystemExit(2)
    return value


def limit(name: str, default: Any = None) -> Any:
    """The sweep's limit `name` (e.g. "window_s") from KMATRIX_<NAME>, as the agent passes
    the limits the manifest lists; `default` when it is not set. An int default gives an
    int. A value that is not a number raises ValueError: the program cannot go on."""
    text = os.environ.get("KMATRIX_" + name.upper())
    if text is None or text == "":
        return default
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"KMATRIX_{name.upper()}={text!r} is not a finite number")
    if isinstance(default, int) and not isinstance(default, bool) and value.is_integer():
        return int(value)
    return value


def param(name: str, default: str | None = None) -> str | None:
    """The scenario parameter `name` (an environment variable of that name)."""
    return os.environ.get(name, default)


def count_param(name: str, default: int, maximum: int | None = None) -> int:
    """A parameter that is a positive count (a duration, workers, streams); ValueError
    naming the parameter and what is expected otherwise."""
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1 or (maximum is not None and value > maximum):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise ValueError(f"{name}={raw!r}; expected an integer >= 1{bound}")
    return value


def log(message: str) -> None:
    """One line on stderr, seconds since the program started first; the agent keeps the
    tail of stderr in the cell's log_tail."""
    print(f"[{time.monotonic() - STARTED:7.3f}] {message}", file=sys.stderr, flush=True)


def write_result(doc: dict[str, Any]) -> None:
    """result.json in $KMATRIX_RESULT_DIR, written whole (temporary file, fsync, rename)
    so the agent never reads half of one; without the variable (a program run by hand)
    the document goes to stdout. NaN and Infinity raise: the host refuses them."""
    text = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False)
    directory = os.environ.get("KMATRIX_RESULT_DIR")
    if not directory:
        print(text, flush=True)
        return
    tmp = os.path.join(directory, ".result.json.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(directory, "result.json"))


def spawn(work: Callable[[], None]) -> int:
    """Fork a child that runs `work` and exits (1 with a traceback if it raises); it
    never returns into the caller's code."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        work()
        code = 0
    except BaseException:
        import traceback  # only here: ~0.2 s of a guest's start under TCG

        traceback.print_exc()
    finally:
        os._exit(code)


def exited(pid: int) -> bool:
    """True once the child has exited, leaving it a zombie so /proc/PID stays readable."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


EXIT_PATH = ("do_exit", "do_group_exit", "exit_mmap", "get_signal")
"""Frames of a process on its way out: its stack then says how it dies, not what it did."""
PROFILE_TOP = 20


def frames(stack: str) -> list:
    """Function names of a /proc/PID/stack text, leaf first ("[<0>] fn+0x1/0x2" -> fn)."""
    if stack.startswith("error:"):
        return []
    out = []
    for line in stack.splitlines():
        word = line.split("]", 1)[-1].strip().split("+", 1)[0].strip()
        if word:
            out.append(word)
    return out


def exiting(stack: str) -> bool:
    return any(f in EXIT_PATH for f in frames(stack))


class StackProfile:
    """Kernel stacks sampled while the loop runs, counted per phase: how often each
    function was the innermost frame (leaf) or anywhere on the stack (inclusive). On a
    one-vCPU guest the sampler runs only while the loop is preempted, so this is where
    the loop was when the timer took the CPU: a sampling profile of its kernel time."""

    def __init__(self) -> None:
        self.phases: dict = {}

    def add(self, phase: str, stack: str, state: str | None) -> None:
        p = self.phases.setdefault(phase, {"samples": 0, "empty": 0, "leaf": {}, "inclusive": {}})
        p["samples"] += 1
        names = frames(stack)
        if not names:
            p["empty"] += 1
            return
        p["leaf"][names[0]] = p["leaf"].get(names[0], 0) + 1
        for name in set(names):
            p["inclusive"][name] = p["inclusive"].get(name, 0) + 1

    def summary(self) -> dict:
        """Per phase: samples, those with no readable stack, and the top functions."""

        def top(counts: dict) -> dict:
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:PROFILE_TOP]
            return dict(ranked)

        return {
            phase: {
                "samples": p["samples"],
                "empty": p["empty"],
                "leaf": top(p["leaf"]),
                "inclusive": top(p["inclusive"]),
            }
            for phase, p in self.phases.items()
        }


class Watch:
    """The monitor's view of one loop child: its samples and when it last made progress.

    A subclass adds its own fields to each sample (`fields`), notes what a sample shows
    (`observed`), and ends the watch for reasons of its own (`check`)."""

    def __init__(self, pid: int, shared: Shared, stall_s: float, counter: str = "iterations"):
        self.pid, self.shared, self.stall_s, self.counter = pid, shared, stall_s, counter
        self.t0 = time.monotonic()
        self.series: list = []
        self.seen = 0
        self.regressions = 0
        self.progress_at = self.t0
        self.last_live: dict[str, Any] | None = None
        self.stall: dict[str, Any] | None = None
        self.profile = StackProfile()

    def _count(self) -> int:
        """The shared counter, which only grows: a smaller reading is impossible, so it
        is counted (it would mean a torn read) and the previous value is kept."""
        got = self.shared.count()
        if got < self.seen:
            self.regressions += 1
            return self.seen
        return got

    def fields(self, start: int, stop: int) -> dict[str, Any]:
        """Extra fields of a sample; [start, stop) are the counts since the last one."""
        return {}

    def observed(self, point: dict[str, Any]) -> None:
        """Called with each new sample, after progress is noted."""

    def phase(self) -> str:
        """Which part of the run a stack sample belongs to (a subclass splits it)."""
        return "run"

    def check(self, now: float) -> str | None:
        """A reason to end the watch now (the child is then killed), or None."""
        return None

    def sample(self) -> dict[str, Any]:
        """One series point; remembers the last evidence taken while the child was alive."""
        now = time.monotonic()
        count = self._count()
        extra = self.fields(self.seen, count)
        state, utime, stime = proc_stat(self.pid)
        sleeping_in = wchan(self.pid)
        point = {"t": round(now - self.t0, 3), self.counter: count}
        point.update(state=state, utime=utime, stime=stime, wchan=sleeping_in)
        point.update(extra)
        self.series.append(point)
        if count != self.seen:
            self.seen, self.progress_at = count, now
        self.observed(point)
        if state not in (None, "Z", "X"):
            seen = evidence(self.pid, state, sleeping_in)
            if not exiting(seen["stack"]):
                self.last_live = seen
                self.profile.add(self.phase(), seen["stack"], state)
        return point

    def remember(self) -> None:
        """Take evidence now, as the last of the live process's unless it is exiting."""
        seen = evidence(self.pid)
        if not exiting(seen["stack"]):
            self.last_live = seen

    def rate_over(self, span_s: float) -> float | None:
        """Counts/s over the last `span_s` of samples, None before that much time."""
        last, key = self.series[-1], self.counter
        for earlier in reversed(self.series):
            if last["t"] - earlier["t"] >= span_s:
                return (last[key] - earlier[key]) / (last["t"] - earlier["t"])
        return None

    def stalled(self) -> bool:
        """No progress for stall_s: keep the evidence the stall rule needs."""
        now = time.monotonic()
        if now - self.progress_at < self.stall_s:
            return False
        self.stall = dict(evidence(self.pid), t=round(now - self.t0, 3))
        self.stall[self.counter] = self.seen
        return True


def watch_until(watch: Watch, window_s: float, sample_s: float) -> str | None:
    """Sample until the child ends (None), stalls ("stall"), `watch.check` gives a
    reason, or it overruns the window ("window").

    Between samples the monitor sleeps, woken early only by SIGCHLD (blocked meanwhile,
    so that it waits for sigtimedwait): on a one-vCPU guest every wake-up is CPU taken
    from the loop being measured (see benchmarks/bench.py, the loop rows)."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        return _watch(watch, window_s, sample_s)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _watch(watch: Watch, window_s: float, sample_s: float) -> str | None:
    watch.sample()
    next_tick = watch.t0 + sample_s
    while True:
        if exited(watch.pid):
            watch.sample()
            return None
        now = time.monotonic()
        if now >= next_tick:
            watch.sample()
            next_tick = max(next_tick + sample_s, now)
            if watch.stalled():
                return "stall"
            reason = watch.check(now)
            if reason:
                return reason
            if now - watch.t0 >= window_s + WINDOW_GRACE_S:
                watch.remember()
                return "window"
            continue
        signal.sigtimedwait([signal.SIGCHLD], next_tick - now)


def monitor(watch: Watch, window_s: float, sample_s: float) -> dict[str, Any]:
    """Watch the loop child to its end, kill it if needed, and reap it."""
    killed_for = watch_until(watch, window_s, sample_s)
    if killed_for:
        os.kill(watch.pid, signal.SIGKILL)
    _, status, usage = os.wait4(watch.pid, 0)
    return {
        "killed_for": killed_for,
        "status": status,
        "elapsed_s": time.monotonic() - watch.t0,
        "series": watch.series,
        "stall": watch.stall,
        "final": watch.last_live,
        "stack_profile": watch.profile.summary(),
        "counter_regressions": watch.regressions,
        "utime_s": round(usage.ru_utime, 3),
        "stime_s": round(usage.ru_stime, 3),
    }
