"""Guest agent: runs each cell of a batch in a fresh network namespace, one JSON result each.

Stdlib only, Python 3.8+, run as root as a plain script:

    python3 agent.py --cells CELLS.json --out OUT_DIR [--net-only]

Each cell runs in a forked child that unshares its network namespace before it touches
anything, so sysctls written for a cell never reach the namespace the agent started in;
the agent re-reads those sysctls after every cell to prove it. The child then execs the
cell's program (agent_exec.py); the agent knows no scenario, only the cell's command and
the convention it reports in (agent_report.py). Around each cell it reads the kernel
log and taint flags (agent_kmsg.py), and while a cell runs it says on stdout that it is
alive (KMATRIX-ALIVE). With --net-only (a machine that is kept: the host, a remote
host's own kernel) a cell that would write a sysctl outside net.* is refused before
anything runs, and the kernel log is marked as shared with the machine's other
processes. See README.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import signal
import sys
import time

TYPE_CHECKING = False
"""typing and pathlib cost ~0.35 s of a guest's start under TCG: its names are for checkers only."""
if TYPE_CHECKING:
    from typing import Any

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # loaded by path, not run
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import agent_exec  # noqa: E402
import agent_kmsg  # noqa: E402
import agent_report  # noqa: E402
from agent_netns import (  # noqa: E402
    NET_PREFIX,
    netns_inode,
    normalise,
    read_sysctl,
    refused_sysctls,
    write_sysctl,
)

SCHEMA = 1
LIMIT_NAMES = (
    "window_s",
    "iteration_cap",
    "stall_s",
    "sample_s",
    "collapse_s",
    "knee_margin",
    "knee_margin_s",
)
"""The sweep's limits a cell may carry; those named in its env_limits reach the program."""
CELL_KEYS = ("id", "scenario", "sysctls", "trial", "command", "scenario_dir", "result", "timeout_s")
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SCENARIO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
PARAM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
"""Lower case: a parameter cannot clobber PATH, HOME or a KMATRIX_* variable."""
SYSCTL_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$")
MAX_ARGS, ARG_CHARS = 256, 4096
MAX_PARAMS, PARAM_CHARS = 64, 4096
EXIT_BAD_INPUT, EXIT_NOT_ROOT, EXIT_HOST_CHANGED = 2, 3, 4


def emit(*words: object) -> None:
    """One progress line on stdout, flushed at once so a serial console shows it."""
    print(" ".join(str(w) for w in words), flush=True)


def python_version() -> str:
    """As platform.python_version() says it ("3.11.2"), without importing platform."""
    return sys.version.split()[0]


def write_atomic(path: str, doc: dict[str, Any]) -> None:
    """Write, fsync, rename: a reader (or a resumed run) never sees half a file."""
    directory, name = os.path.split(os.fspath(path))
    tmp = os.path.join(directory, f".{os.path.splitext(name)[0]}.tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # some shared filesystems (9p) refuse fsync on a directory


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _plain_string(value: Any, chars: int) -> bool:
    return isinstance(value, str) and len(value) <= chars and "\0" not in value


def check_cell(n: int, cell: Any) -> None:
    """ValueError naming what is wrong with one cell of the batch."""
    if not isinstance(cell, dict):
        raise ValueError(f"cell {n}: not an object")
    missing = [k for k in CELL_KEYS if k not in cell]
    if missing:
        raise ValueError(f"cell {n}: missing {', '.join(missing)}")
    if not all(isinstance(cell.get(k, 1), int) for k in ("trial", "attempt")):
        raise ValueError(f"cell {n}: trial and attempt must be integers")
    if not isinstance(cell["scenario"], str) or not SCENARIO_NAME.match(cell["scenario"]):
        raise ValueError(f"cell {n}: scenario {cell['scenario']!r} is not a scenario name")
    sysctls = cell["sysctls"]
    if not isinstance(sysctls, dict) or not all(
        isinstance(k, str) and SYSCTL_KEY.match(k) for k in sysctls
    ):
        raise ValueError(f"cell {n}: sysctls must map dotted sysctl names to values")
    if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in sysctls.values()):
        raise ValueError(f"cell {n}: a sysctl value must be a string or an integer")
    command = cell["command"]
    if (
        not isinstance(command, list)
        or not 0 < len(command) <= MAX_ARGS
        or not all(_plain_string(a, ARG_CHARS) and a for a in command)
    ):
        raise ValueError(f"cell {n}: command must be a list of 1 to {MAX_ARGS} non-empty strings")
    directory = cell["scenario_dir"]
    if not _plain_string(directory, ARG_CHARS) or not os.path.isabs(directory):
        raise ValueError(f"cell {n}: scenario_dir must be an absolute path")
    if cell["result"] not in agent_report.RESULTS:
        raise ValueError(f"cell {n}: result must be one of {', '.join(agent_report.RESULTS)}")
    if not _is_number(cell["timeout_s"]) or cell["timeout_s"] <= 0:
        raise ValueError(f"cell {n}: timeout_s must be a positive number")
    params = cell.get("params", {})
    if (
        not isinstance(params, dict)
        or len(params) > MAX_PARAMS
        or not all(isinstance(k, str) and PARAM_NAME.match(k) for k in params)
        or not all(_plain_string(v, PARAM_CHARS) for v in params.values())
    ):
        raise ValueError(f"cell {n}: params must map lower-case names to strings")
    env_limits = cell.get("env_limits", [])
    if not isinstance(env_limits, list) or not all(
        lim in LIMIT_NAMES and _is_number(cell.get(lim)) for lim in env_limits
    ):
        raise ValueError(f"cell {n}: env_limits must name limits the cell gives as numbers")


def load_cells(path: str) -> list:
    """The batch, checked enough that a bad cell stops the agent before any cell runs."""
    with open(path) as f:
        cells = json.load(f)["cells"]
    if not isinstance(cells, list):
        raise ValueError("cells is not a list")
    seen = set()
    for n, cell in enumerate(cells):
        check_cell(n, cell)
        if not SAFE_ID.match(str(cell["id"])) or cell["id"] in seen | {"agent"}:
            raise ValueError(f"cell {n}: id {cell['id']!r} is not a unique file-safe name")
        seen.add(cell["id"])
    return cells


def new_result(cell: dict[str, Any], parent_inode: int, started_at: float) -> dict[str, Any]:
    """A result with every key present; each path through a cell fills in its part."""
    return {
        "schema": SCHEMA,
        "cell_id": cell["id"],
        "scenario": cell["scenario"],
        "trial": cell["trial"],
        "kernel_release": os.uname().release,
        "python": python_version(),
        "started_at": started_at,
        "ended_at": None,
        "status": "crashed",
        "status_detail": "",
        "netns": {"inode": None, "parent_inode": parent_inode},
        "sysctls": {
            "requested": dict(cell["sysctls"]),
            "read_back": {k: None for k in cell["sysctls"]},
            "problems": [],
        },
        "limits": {k: cell[k] for k in LIMIT_NAMES if k in cell},
        "attempt": cell.get("attempt", 1),
        "params": dict(cell.get("params", {})),
        "program": {
            "argv": list(cell.get("command", [])),
            "exit_code": None,
            "signal": None,
            "outcome": None,
            "reported": [],
            "stdout_tail": "",
        },
        "testcases": [],
        "verdict": None,
        "metrics": {},
        "series": [],
        "evidence": {"stall": None, "final": None},
        "error": None,
        "log_tail": "",
        "kernel": None,
        "liveness": {
            "agent_alive": True,
            "overran": False,
            "state": None,
            "wchan": None,
            "reaped": None,
        },
    }


def execute(
    cell: dict[str, Any],
    parent_inode: int,
    out: str,
    net_only: bool = False,
    heartbeat: agent_exec.Heartbeat | None = None,
) -> str:
    """Run one cell under its deadline; always leaves a result file behind, with the
    kernel log records and taint flags of the cell's time."""
    path = os.path.join(out, f"{cell['id']}.json")
    with contextlib.suppress(FileNotFoundError):  # a malformed leftover must not count
        os.unlink(path)
    result = new_result(cell, parent_inode, time.time())
    argv = agent_exec.resolve_argv(cell)
    result["program"]["argv"] = argv
    beat = agent_exec._no_beat
    if heartbeat is not None:
        heartbeat.beat(cell["id"], force=True)
        beat = functools.partial(heartbeat.beat, cell["id"])
    kernel_log = agent_kmsg.KernelLog(shared=net_only)
    kernel_log.start()
    refused = refused_sysctls(cell["sysctls"]) if net_only else []
    if refused:
        result["sysctls"]["problems"] = refused
        result["status"] = "setup_failed"
        result["status_detail"] = "refused (--net-only): " + ", ".join(
            f"{p['key']} is not a net.* sysctl" for p in refused
        )
        result["log_tail"] = result["status_detail"]
    else:
        agent_exec.run_program(cell, result, argv, os.path.dirname(os.path.abspath(out)), beat)
    result["kernel"] = kernel_log.finish()
    result["ended_at"] = time.time()
    write_atomic(path, result)
    return result["status"]


def valid_result(path: str, cell_id: str) -> dict[str, Any] | None:
    """The result at `path` if it is a complete schema-1 document for this cell."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(doc, dict) and doc.get("schema") == SCHEMA and doc.get("cell_id") == cell_id
    return doc if ok else None


def host_baseline(cells: list, net_only: bool = False) -> dict[str, str]:
    """Every sysctl any cell sets, as the starting namespace has it (where it exists);
    with `net_only` only net.* keys, the others are never touched at all."""
    keys = {k for cell in cells for k in cell["sysctls"]}
    if net_only:
        keys = {k for k in keys if k.startswith(NET_PREFIX)}
    values = {k: read_sysctl(k) for k in sorted(keys)}
    return {k: v for k, v in values.items() if v is not None}


def requested_values(cells: list) -> dict:
    """Per key, every value (normalised) that a cell of this batch asks for."""
    values: dict = {}
    for cell in cells:
        for key, value in cell["sysctls"].items():
            values.setdefault(key, set()).add(normalise(str(value)))
    return values


def restore_sysctl(key: str, value: str) -> bool:
    """Write `value` back; True if it reads back as written."""
    try:
        write_sysctl(key, value)
    except OSError:
        return False
    return read_sysctl(key) == value


def host_changes(baseline: dict[str, str], cell_id: str, ours: dict) -> list:
    """Sysctls of the starting namespace that differ from the baseline, each an error.

    The agent may only undo its own damage: a value that one of this batch's cells
    asked for (`ours`, from requested_values) is put back. Any other value was set by
    someone else (an administrator, another tool) and is left as it is.
    """
    changes = []
    for key, before in baseline.items():
        after = read_sysctl(key)
        if after == before:
            continue
        from_cell = after in ours.get(key, ())
        restored = from_cell and restore_sysctl(key, before)
        if restored:
            action = f"a cell's value; put back to {before!r}"
        elif from_cell:
            action = f"a cell's value; putting back {before!r} failed"
        else:
            action = "not a value any cell of this batch wrote; left alone"
        changes.append(
            {
                "cell_id": cell_id,
                "key": key,
                "before": before,
                "after": after,
                "from_cell": from_cell,
                "restored": restored,
                "action": action,
            }
        )
    return changes


def host_error(changes: list) -> str:
    """One line for people: what changed in the starting namespace, and what was done."""
    if not changes:
        return ""
    parts = [
        f"{c['key']} {c['before']!r} -> {c['after']!r} after cell {c['cell_id']} ({c['action']})"
        for c in changes
    ]
    return "sysctls of the starting network namespace changed: " + "; ".join(parts)


def run_batch(cells: list, out: str, net_only: bool = False) -> tuple:
    """Every cell in order, skipping finished ones; stops at the first host sysctl leak."""
    parent_inode = netns_inode()
    baseline, ours = host_baseline(cells, net_only), requested_values(cells)
    skipped, changed = 0, []
    heartbeat = agent_exec.Heartbeat()
    heartbeat.beat(force=True)
    for cell in cells:
        if valid_result(os.path.join(out, f"{cell['id']}.json"), cell["id"]):
            skipped += 1
            emit("KMATRIX-CELL", cell["id"], "skipped", cell["scenario"])
            continue
        status = execute(cell, parent_inode, out, net_only, heartbeat)
        emit("KMATRIX-CELL", cell["id"], status, cell["scenario"])
        changed = host_changes(baseline, cell["id"], ours)
        if changed:
            emit("KMATRIX-AGENT-HOST-SYSCTL-CHANGED", " ".join(c["key"] for c in changed))
            break
    return skipped, changed


class Args:
    """The command line, parsed."""

    def __init__(self, cells: str, out: str, net_only: bool) -> None:
        self.cells, self.out, self.net_only = cells, out, net_only


USAGE = "usage: agent.py --cells CELLS.json --out OUT_DIR [--net-only]"


def parse_args(argv: list | None) -> Args:
    """By hand, not argparse or getopt: in a guest under TCG their imports (gettext, re)
    take ~0.5 s of every boot, and this command line is three fixed flags."""
    words = list(sys.argv[1:] if argv is None else argv)
    given: dict = {}
    while words:
        word = words.pop(0)
        name, eq, value = word.partition("=")
        if name == "--net-only" and not eq:
            given[name] = True
        elif name in ("--cells", "--out") and (eq or words):
            given[name] = value if eq else words.pop(0)
        else:
            raise SystemExit(f"kmatrix agent: unexpected argument {word!r}\n{USAGE}")
    if "--cells" not in given or "--out" not in given:
        raise SystemExit(f"kmatrix agent: --cells and --out are required\n{USAGE}")
    return Args(given["--cells"], given["--out"], bool(given.get("--net-only")))


def main(argv: list | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print(f"kmatrix agent: must run as root (euid {os.geteuid()})", file=sys.stderr)
        return EXIT_NOT_ROOT
    try:
        cells = load_cells(args.cells)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"kmatrix agent: bad cells file {args.cells}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = args.out
    os.makedirs(out, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.time()
    emit("KMATRIX-AGENT-START", os.uname().release)
    skipped, changed = run_batch(cells, out, args.net_only)
    done = sum(1 for c in cells if valid_result(os.path.join(out, f"{c['id']}.json"), c["id"]))
    write_atomic(
        os.path.join(out, "agent.json"),
        {
            "kernel_release": os.uname().release,
            "python": python_version(),
            "started_at": started,
            "ended_at": time.time(),
            "cells_total": len(cells),
            "cells_done": done,
            "cells_skipped": skipped,
            "host_sysctl_changed": changed,
            "host_sysctl_error": host_error(changed),
        },
    )
    emit("KMATRIX-AGENT-DONE", done)
    return EXIT_HOST_CHANGED if changed else 0


if __name__ == "__main__":
    sys.exit(main())
