"""The shape a guest's result must have before anything on the host uses it.

A result is whatever JSON the guest wrote. The classifier, the table and the report
read a known set of keys (status, scenario, metrics.*, series[*].t/iterations...,
evidence, error, sysctls, program, testcases, verdict, params, kernel, liveness) and
would raise on a string where a number goes or a list where an object goes. `problem`
checks exactly those keys (words from their fixed sets, strings and lists within the
agent's own bounds), and that every number anywhere in the document is finite and in
range, and names the first thing wrong; `vet` swaps a bad result for a stand-in that
classifies as infra ("result rejected: malformed result: metrics.iterations is a
string, not a number"), so one hostile cell never costs the run its table or report.
Nothing is coerced: a result either passes as it is or is replaced whole.
Stdlib only (with the classifier): the remote batch imports the runners on SSH hosts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matrix.classify.figures import key_figure
from matrix.classify.rules import classify, thin_reasons
from matrix.collect import guest_files

MAX_MAGNITUDE = 2**63
"""No count, time or counter a puzzle records comes near this; larger is not a reading."""
STATUSES = ("ok", "setup_failed", "timeout", "crashed", "no_result", "rejected")
"""What the agent writes (collectors/agent_exec.py), and `stand_in`'s own."""
OUTCOMES = ("pass", "fail", "skip", "error")
CASE_RESULTS = ("pass", "fail", "skip", "unknown", "error")
CASE_SOURCES = ("lava", "ktap")
CONVENTIONS = ("json", "lava", "ktap", "exit")
VERDICTS = ("success", "slowdown", "hang", "error", "fail", "skip")
"""A program's own verdict in its result.json (collectors/agent_report.py)."""
MAX_TESTCASES = 2000
NAME_CHARS, UNITS_CHARS, SIGNAL_CHARS, TAIL_CHARS = 256, 64, 32, 4000
MAX_ARGS, ARG_CHARS = 256, 4096
MAX_PARAMS, PARAM_CHARS = 64, 4096
"""The agent's own bounds on what it writes; anything past them is not its document."""
KERNEL_EVENT_KINDS = ("oops", "bug", "soft_lockup", "rcu_stall", "hung_task", "warn")
"""What a kernel log line may report (collectors/agent_kmsg.py), most severe first."""
EVENT_ORIGINS = ("kernel", "user")
"""Who wrote the line: the kernel, or a process writing to /dev/kmsg."""
MAX_KERNEL_LINES, MAX_KERNEL_EVENTS, KERNEL_LINE_CHARS = 256, 64, 512
MAX_TAINT_FLAGS, WCHAN_CHARS = 64, 128

Check = Callable[[Any, str], str]
"""(value, its path) -> "" or what is wrong with it."""


def stand_in(cell_id: str, detail: str) -> dict[str, Any]:
    """What replaces a result that cannot be used: a rejected one, with the reason."""
    return {"cell_id": cell_id, "status": "rejected", "status_detail": detail}


def vet(doc: Any, cell_id: str) -> dict[str, Any]:
    """`doc` itself when the pipeline can use it, else a stand-in naming the problem."""
    why = problem(doc)
    return stand_in(cell_id, f"malformed result: {why}") if why else doc


def read(path: Path, cell_id: str, root: Path | None = None) -> dict[str, Any]:
    """A result file read, parsed and vetted; every way it can fail becomes a stand-in."""
    try:
        doc = guest_files.parse_json(guest_files.read_bounded(path, root=root))
    except OSError as e:
        return stand_in(cell_id, f"unreadable result: {e.strerror or e}")
    except ValueError as e:
        return stand_in(cell_id, f"malformed result JSON: {e}")
    return vet(doc, cell_id)


def problem(doc: Any) -> str:
    """The first reason the pipeline cannot use `doc`, or ""."""
    if not isinstance(doc, dict):
        return f"the result is {_what(doc)}, not an object"
    why = _numbers_in_range(doc) or _fields(doc, "", TOP)
    return why or _classifies(doc)


def _classifies(doc: dict[str, Any]) -> str:
    """The checked shape must also get through the classifier (its rules change more
    often than this schema), else live progress or re-measuring would raise on it."""
    try:
        c = classify(doc)
        key_figure(str(doc.get("scenario", "")), c)
        thin_reasons(doc, c)
    except Exception as e:  # noqa: BLE001 - any failure here means the result is unusable
        return f"the classifier cannot read it ({type(e).__name__}: {str(e)[:200]})"
    return ""


def _what(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,40}")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    shown = key if _PLAIN_KEY.fullmatch(key) else repr(key[:40])
    return f"{path}.{shown}" if path else shown


def _numbers_in_range(doc: Any) -> str:
    """Every number anywhere in the document finite and within ±2**63 (no recursion)."""
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, _join(path, k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, _join(path, i)) for i, v in enumerate(value))
        elif _is_number(value) and not (math.isfinite(value) and abs(value) < MAX_MAGNITUDE):
            return f"{path} is out of range"
    return ""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(wanted: str, test: Callable[[Any], bool], nullable: bool = True) -> Check:
    def check(value: Any, path: str) -> str:
        if value is None and nullable:
            return ""
        return "" if test(value) else f"{path} is {_what(value)}, not {wanted}"

    return check


NUMBER = _kind("a number", _is_number)
COUNT = _kind("a number", _is_number, nullable=False)
STRING = _kind("a string", lambda v: isinstance(v, str))
WORD = _kind("a string", lambda v: isinstance(v, str), nullable=False)
SCALAR = _kind("a string or a number", lambda v: isinstance(v, str | int | float))
BOOL = _kind("true or false", lambda v: isinstance(v, bool))


def _shape(value: Any, path: str, kind: type, wanted: str, nullable: bool) -> str | None:
    """ "" when `value` is an allowed null, the problem when it is not a `kind`, else None
    (it is one, and its contents are to be checked)."""
    if value is None and nullable:
        return ""
    return None if isinstance(value, kind) else f"{path} is {_what(value)}, not {wanted}"


def _object(fields: dict[str, Check], required: tuple[str, ...] = (), nullable: bool = True):
    """An object whose listed keys pass their checks; other keys are left alone."""

    def check(value: Any, path: str) -> str:
        why = _shape(value, path, dict, "an object", nullable)
        return why if why is not None else _fields(value, path, fields, required)

    return check


def _each(item: Check, nullable: bool = True) -> Check:
    """A list whose every element passes `item`."""

    def check(value: Any, path: str) -> str:
        why = _shape(value, path, list, "a list", nullable)
        if why is not None:
            return why
        return next((w for i, v in enumerate(value) if (w := item(v, _join(path, i)))), "")

    return check


def _values(item: Check) -> Check:
    """An object (or null) whose every value passes `item`, whatever the keys."""

    def check(value: Any, path: str) -> str:
        why = _shape(value, path, dict, "an object", True)
        if why is not None:
            return why
        return next((w for k, v in value.items() if (w := item(v, _join(path, k)))), "")

    return check


def _capped(chars: int, nullable: bool = True) -> Check:
    """A string of at most `chars` characters."""
    kind = _kind("a string", lambda v: isinstance(v, str), nullable)

    def check(value: Any, path: str) -> str:
        why = kind(value, path)
        if why or value is None or len(value) <= chars:
            return why
        return f"{path} is longer than {chars} characters"

    return check


def _one_of(names: tuple[str, ...], nullable: bool = True) -> Check:
    """One of a fixed set of words."""

    def check(value: Any, path: str) -> str:
        if value is None and nullable:
            return ""
        if not isinstance(value, str):
            return f"{path} is {_what(value)}, not a string"
        return "" if value in names else f"{path} is {value[:40]!r}, not one of {', '.join(names)}"

    return check


def _at_most(count: int, check: Check) -> Check:
    """A list or object (as `check` wants it) of at most `count` items."""

    def bounded(value: Any, path: str) -> str:
        if isinstance(value, list | dict) and len(value) > count:
            return f"{path} has more than {count} items"
        return check(value, path)

    return bounded


_PARAM = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _params(value: Any, path: str) -> str:
    """The cell's parameters: lower-case names to bounded strings."""
    why = _shape(value, path, dict, "an object", True)
    if why is not None:
        return why
    bad = next((k for k in value if not _PARAM.fullmatch(k)), None)
    if bad is not None:
        return f"{_join(path, bad)} is not a parameter name"
    return _values(_capped(PARAM_CHARS, nullable=False))(value, path)


def _exit_code(value: Any, path: str) -> str:
    if value is None or (_is_integer(value) and 0 <= value <= 255):
        return ""
    return f"{path} is not an exit status (0-255)"


def _port_range(value: Any, path: str) -> str:
    if value is None:
        return ""
    ok = isinstance(value, list) and len(value) == 2 and all(_is_integer(v) for v in value)
    return "" if ok else f"{path} is not a pair of port numbers"


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _taint_mask(value: Any, path: str) -> str:
    """/proc/sys/kernel/tainted as the agent read it: a non-negative integer, or null."""
    if value is None or (_is_integer(value) and value >= 0):
        return ""
    return f"{path} is not a taint mask (a non-negative integer)"


_TAINT_FLAG = re.compile(r"[A-Z]|bit[0-9]{1,2}")


def _taint_flag(value: Any, path: str) -> str:
    """One taint flag: its letter, or `bit<n>` for a bit the agent has no letter for."""
    if isinstance(value, str) and _TAINT_FLAG.fullmatch(value):
        return ""
    return f"{path} is not a taint flag letter"


def _error(value: Any, path: str) -> str:
    """null or {} means no error; a real one needs the iteration it happened at."""
    why = _shape(value, path, dict, "an object", True)
    if why is not None or not value:
        return why or ""
    return _fields(value, path, ERROR_FIELDS, required=("iteration",))


def _fields(
    doc: dict[str, Any], path: str, fields: dict[str, Check], required: tuple[str, ...] = ()
) -> str:
    for key in required:
        if key not in doc:
            return f"{_join(path, key)} is missing"
    for key, check in fields.items():
        if key in doc and (why := check(doc[key], _join(path, key))):
            return why
    return ""


_NUMERIC_METRICS = (
    "elapsed_s",
    "early_rate",
    "late_rate",
    "rate_ratio",
    "tw_max",
    "lat_p50_us",
    "lat_p99_us",
    "error_iteration",
    "bytes_queued",
    "sends",
    "last_send",
    "sndbuf",
    "sndbuf_after",
    "sndbuf_before",
    "outq",
    "outq_nsd",
    "recv_inq",
    "stime_share",
    "utime_s",
    "stime_s",
    "settle_s",
    "knee_t",
    "host_load1",
    "host_steal_share",
    "vm_wait_share",
    "guest_steal_share",
    "rate_cv",
)
_STRING_METRICS = (
    "ended_by",
    "final_state",
    "error_name",
    "evidence_state",
    "evidence_wchan",
    "tcp_wmem",
    "tcp_notsent_lowat",
)
METRICS: dict[str, Check] = {
    "iterations": COUNT,
    **dict.fromkeys(_NUMERIC_METRICS, NUMBER),
    **dict.fromkeys(_STRING_METRICS, STRING),
    "latency_us": _values(NUMBER),
    "nstat": _values(NUMBER),
    "port_range": _port_range,
    "guest_cpu": _values(NUMBER),
}
_PROC_FIELDS = dict.fromkeys(("state", "wchan", "stack", "syscall"), STRING)
SAMPLE: dict[str, Check] = {
    "t": COUNT,
    "iterations": COUNT,
    **dict.fromkeys(("tw", "utime", "stime", "lat_p50_us", "lat_max_us"), NUMBER),
    "state": STRING,
    "wchan": STRING,
}
PROFILE_PHASE: dict[str, Check] = {
    "samples": COUNT,
    "empty": COUNT,
    "leaf": _values(COUNT),
    "inclusive": _values(COUNT),
}
EVIDENCE: dict[str, Check] = {
    "stall": _object({"t": NUMBER, "iterations": COUNT, **_PROC_FIELDS}),
    "final": _object(_PROC_FIELDS),
    "profile": _values(_object(PROFILE_PHASE, nullable=False)),
}
ERROR_FIELDS: dict[str, Check] = {
    "iteration": COUNT,
    "errno": NUMBER,
    "name": STRING,
    "message": STRING,
    "phase": STRING,
}
PROBLEM: dict[str, Check] = {"key": WORD, "problem": WORD, "detail": STRING}
SYSCTLS: dict[str, Check] = {
    "requested": _values(SCALAR),
    "read_back": _values(SCALAR),
    "problems": _each(_object(PROBLEM, required=("key", "problem"), nullable=False), False),
}
PROGRAM: dict[str, Check] = {
    "argv": _at_most(MAX_ARGS, _each(_capped(ARG_CHARS, nullable=False))),
    "exit_code": _exit_code,
    "signal": _capped(SIGNAL_CHARS),
    "outcome": _one_of(OUTCOMES),
    "reported": _at_most(len(CONVENTIONS), _each(_one_of(CONVENTIONS, nullable=False))),
    "stdout_tail": _capped(TAIL_CHARS),
}
TESTCASE: dict[str, Check] = {
    "name": _capped(NAME_CHARS, nullable=False),
    "result": _one_of(CASE_RESULTS, nullable=False),
    "measurement": NUMBER,
    "units": _capped(UNITS_CHARS),
    "source": _one_of(CASE_SOURCES, nullable=False),
}
KERNEL_EVENT: dict[str, Check] = {
    "kind": _one_of(KERNEL_EVENT_KINDS, nullable=False),
    "line": _capped(KERNEL_LINE_CHARS, nullable=False),
    "t": NUMBER,
    "origin": _one_of(EVENT_ORIGINS),
}
_TAINT_FLAGS = _at_most(MAX_TAINT_FLAGS, _each(_taint_flag))
KERNEL: dict[str, Check] = {
    "source": _capped(ARG_CHARS),
    "shared": BOOL,
    "error": _capped(TAIL_CHARS),
    "records": NUMBER,
    "lost": NUMBER,
    "truncated": BOOL,
    "log": _at_most(MAX_KERNEL_LINES, _each(_capped(KERNEL_LINE_CHARS, nullable=False))),
    "events": _at_most(
        MAX_KERNEL_EVENTS,
        _each(_object(KERNEL_EVENT, required=("kind", "line"), nullable=False)),
    ),
    "taint_before": _taint_mask,
    "taint_after": _taint_mask,
    "taint_flags_before": _TAINT_FLAGS,
    "taint_flags_after": _TAINT_FLAGS,
    "tainted_by_cell": _TAINT_FLAGS,
}
"""The kernel log and taint of the cell's time (collectors/agent_kmsg.py)."""
LIVENESS: dict[str, Check] = {
    "agent_alive": BOOL,
    "overran": BOOL,
    "reaped": BOOL,
    "state": _capped(SIGNAL_CHARS),
    "wchan": _capped(WCHAN_CHARS),
}
"""How a cell's program ended against its deadline (collectors/agent_exec.py)."""
TOP: dict[str, Check] = {
    **dict.fromkeys(("status_detail", "cell_id", "scenario", "kernel_release", "run_host"), STRING),
    "status": _one_of(STATUSES),
    "log_tail": STRING,
    "metrics": _object(METRICS, nullable=False),
    "series": _each(_object(SAMPLE, required=("t",), nullable=False)),
    "evidence": _object(EVIDENCE),
    "error": _error,
    "sysctls": _object(SYSCTLS, nullable=False),
    "limits": _values(NUMBER),
    "host_load": _values(NUMBER),
    "program": _object(PROGRAM),
    "testcases": _at_most(
        MAX_TESTCASES,
        _each(_object(TESTCASE, required=("name", "result", "source"), nullable=False)),
    ),
    "verdict": _one_of(VERDICTS),
    "params": _at_most(MAX_PARAMS, _params),
    "kernel": _object(KERNEL),
    "liveness": _object(LIVENESS),
    "timing": _object(dict.fromkeys(("setup_s", "program_s", "collect_s"), NUMBER)),
}
