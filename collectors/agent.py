"""Guest agent: runs each cell of a batch in a fresh network namespace, one JSON result each.

Stdlib only, Python 3.8+, run as root as a plain script:

    python3 agent.py --cells CELLS.json --out OUT_DIR

Each cell runs in a forked child that unshares its network namespace before it touches
anything, so sysctls written for a cell never reach the namespace the agent started in;
the agent re-reads those sysctls after every cell to prove it. See README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import importlib.util
import json
import os
import platform
import re
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

SCHEMA = 1
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
SCENARIOS = {"1A": "puzzle1", "1B": "puzzle1", "2A": "puzzle2", "2B": "puzzle2"}
LIMIT_KEYS = ("window_s", "iteration_cap", "stall_s", "sample_s")
OPTIONAL_LIMIT_KEYS = ("collapse_s", "knee_margin", "knee_margin_s")
CELL_KEYS = ("id", "scenario", "sysctls", "trial") + LIMIT_KEYS
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DEADLINE_SLACK_S = 30.0
TAIL_CHARS = 4000
EXIT_BAD_INPUT, EXIT_NOT_ROOT, EXIT_HOST_CHANGED = 2, 3, 4


def emit(*words: object) -> None:
    """One progress line on stdout, flushed at once so a serial console shows it."""
    print(" ".join(str(w) for w in words), flush=True)


def netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def normalise(text: str) -> str:
    """sysctl values compare by words: "32768\\t60999" equals "32768 60999"."""
    return " ".join(text.split())


def sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def read_sysctl(key: str) -> str | None:
    try:
        with open(sysctl_path(key)) as f:
            return normalise(f.read())
    except OSError:
        return None


def write_sysctl(key: str, value: str) -> None:
    with open(sysctl_path(key), "w") as f:
        f.write(value)


def write_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Write, fsync, rename: a reader (or a resumed run) never sees half a file."""
    tmp = path.with_name(f".{path.stem}.tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # some shared filesystems (9p) refuse fsync on a directory


def load_puzzle(name: str) -> Any:
    """Import a sibling puzzle module by path, so the agent runs as a plain file anywhere."""
    spec = importlib.util.spec_from_file_location(
        f"kmatrix_{name}", Path(__file__).resolve().with_name(f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def load_cells(path: str) -> list:
    """The batch, checked enough that a bad cell stops the agent before any cell runs."""
    with open(path) as f:
        cells = json.load(f)["cells"]
    seen = set()
    for n, cell in enumerate(cells):
        missing = [k for k in CELL_KEYS if k not in cell]
        if missing:
            raise ValueError(f"cell {n}: missing {', '.join(missing)}")
        if cell["scenario"] not in SCENARIOS:
            raise ValueError(f"cell {cell['id']}: unknown scenario {cell['scenario']!r}")
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
        "kernel_release": platform.release(),
        "python": platform.python_version(),
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
        "limits": {k: cell[k] for k in LIMIT_KEYS + OPTIONAL_LIMIT_KEYS if k in cell},
        "attempt": cell.get("attempt", 1),
        "metrics": {},
        "series": [],
        "evidence": {"stall": None, "final": None},
        "error": None,
        "log_tail": "",
    }


def unshare_net() -> None:
    """unshare(CLONE_NEWNET) through libc: os.unshare exists only from Python 3.12."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")


def loopback_up() -> None:
    """Set IFF_UP on lo with SIOCSIFFLAGS, so no `ip` binary is needed in the guest."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def apply_sysctl(key: str, value: str) -> tuple:
    """Write one sysctl and read it back; returns (read_back, problem or None)."""
    if not os.path.exists(sysctl_path(key)):
        return None, {
            "key": key,
            "problem": "missing",
            "detail": f"{sysctl_path(key)} does not exist",
        }
    try:
        write_sysctl(key, value)
    except OSError as e:
        return read_sysctl(key), {
            "key": key,
            "problem": "write_failed",
            "detail": f"{e.strerror or e} writing {value!r}",
        }
    got = read_sysctl(key)
    if got != normalise(value):
        return got, {
            "key": key,
            "problem": "mismatch",
            "detail": f"wrote {value!r}, read back {got!r}",
        }
    return got, None


def apply_sysctls(requested: dict[str, str]) -> tuple:
    """Every sysctl of the cell, in order; returns (read_back, problems)."""
    read_back: dict[str, str | None] = {}
    problems = []
    for key, value in requested.items():
        read_back[key], problem = apply_sysctl(key, str(value))
        if problem:
            problems.append(problem)
    return read_back, problems


def setup_namespace(result: dict[str, Any], log: Callable[[str], None]) -> bool:
    """Enter a new namespace, bring lo up, set the sysctls; False if the puzzle must not run."""
    unshare_net()
    inode = netns_inode()
    result["netns"]["inode"] = inode
    if inode == result["netns"]["parent_inode"]:
        result["status"] = "setup_failed"
        result["status_detail"] = "unshare left the process in the starting namespace"
        return False
    loopback_up()
    log(f"netns {inode} (parent {result['netns']['parent_inode']}), lo up")
    read_back, problems = apply_sysctls(result["sysctls"]["requested"])
    result["sysctls"].update(read_back=read_back, problems=problems)
    for p in problems:
        log(f"sysctl {p['key']}: {p['problem']}: {p['detail']}")
    if problems:
        result["status"] = "setup_failed"
        result["status_detail"] = "sysctl problems: " + ", ".join(
            f"{p['key']} {p['problem']}" for p in problems
        )
        return False
    return True


def run_cell(cell: dict[str, Any], puzzle: Any, result: dict[str, Any], out: Path) -> None:
    """The child's whole job; an exception escapes to the parent as "crashed"."""
    lines: list = []

    def log(message: str) -> None:
        line = f"[{time.time() - result['started_at']:7.3f}] {message}"
        lines.append(line)
        print(line, file=sys.stderr, flush=True)

    try:
        ready = setup_namespace(result, log)
    except OSError as e:
        ready = False
        result["status"] = "setup_failed"
        result["status_detail"] = f"namespace setup: {e}"
        log(result["status_detail"])
    if ready:
        result.update(puzzle.run(cell, log))
        result["status"] = "ok"
    result["ended_at"] = time.time()
    result["log_tail"] = "\n".join(lines)[-TAIL_CHARS:]
    write_atomic(out / f"{cell['id']}.json", result)


def valid_result(path: Path, cell_id: str) -> dict[str, Any] | None:
    """The result at `path` if it is a complete schema-1 document for this cell."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(doc, dict) and doc.get("schema") == SCHEMA and doc.get("cell_id") == cell_id
    return doc if ok else None


def fork_cell(
    cell: dict[str, Any], puzzle: Any, result: dict[str, Any], out: Path, stderr: IO[bytes]
) -> int:
    """Fork the cell's child in its own process group, stdout and stderr to `stderr`."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        with contextlib.suppress(OSError):  # the child did it first, or has exited
            os.setpgid(pid, pid)
        return pid
    code = 1
    try:
        os.setpgid(0, 0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.dup2(stderr.fileno(), 1)
        os.dup2(stderr.fileno(), 2)
        sys.stdout = sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        run_cell(cell, puzzle, result, out)
        code = 0
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(code)


def wait_deadline(pid: int, deadline: float) -> int | None:
    """The child's wait status, or None if it outlived the deadline."""
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def kill_group(pgid: int) -> None:
    with contextlib.suppress(OSError):  # the group is already gone
        os.killpg(pgid, signal.SIGKILL)


def describe_status(status: int) -> str:
    """A wait() status in words, for status_detail."""
    if not os.WIFSIGNALED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    sig = os.WTERMSIG(status)
    names = {s.value: s.name for s in signal.Signals}
    return f"killed by signal {sig} ({names.get(sig, 'unnamed')})"


def execute(cell: dict[str, Any], puzzle: Any, parent_inode: int, out: Path) -> str:
    """Run one cell in a child under a deadline; always leaves a result file behind."""
    path = out / f"{cell['id']}.json"
    with contextlib.suppress(FileNotFoundError):  # a malformed leftover must not count
        path.unlink()
    result = new_result(cell, parent_inode, time.time())
    budget = float(cell["window_s"]) + float(cell["stall_s"]) + DEADLINE_SLACK_S
    with tempfile.TemporaryFile() as stderr:
        pid = fork_cell(cell, puzzle, result, out, stderr)
        try:
            status = wait_deadline(pid, time.monotonic() + budget)
        finally:
            kill_group(pid)
        written = valid_result(path, cell["id"]) if status is not None else None
        if written:
            return written["status"]
        if status is None:
            os.waitpid(pid, 0)
            result.update(
                status="timeout",
                status_detail=f"no result within {budget:.0f} s; process group killed",
            )
        else:
            result["status_detail"] = f"ended without a valid result: {describe_status(status)}"
        stderr.seek(0)
        result["log_tail"] = stderr.read().decode(errors="replace")[-TAIL_CHARS:]
    result["ended_at"] = time.time()
    write_atomic(path, result)
    return result["status"]


def host_baseline(cells: list) -> dict[str, str]:
    """Every sysctl any cell sets, as the starting namespace has it (where it exists)."""
    keys = {k for cell in cells for k in cell["sysctls"]}
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


def run_batch(cells: list, out: Path) -> tuple:
    """Every cell in order, skipping finished ones; stops at the first host sysctl leak."""
    puzzles = {name: load_puzzle(name) for name in set(SCENARIOS.values())}
    parent_inode = netns_inode()
    baseline, ours = host_baseline(cells), requested_values(cells)
    skipped, changed = 0, []
    for cell in cells:
        if valid_result(out / f"{cell['id']}.json", cell["id"]):
            skipped += 1
            emit("KMATRIX-CELL", cell["id"], "skipped", cell["scenario"])
            continue
        status = execute(cell, puzzles[SCENARIOS[cell["scenario"]]], parent_inode, out)
        emit("KMATRIX-CELL", cell["id"], status, cell["scenario"])
        changed = host_changes(baseline, cell["id"], ours)
        if changed:
            emit("KMATRIX-AGENT-HOST-SYSCTL-CHANGED", " ".join(c["key"] for c in changed))
            break
    return skipped, changed


def parse_args(argv: list | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run kmatrix cells, one netns each.")
    parser.add_argument("--cells", required=True, help='JSON file: {"cells": [cell, ...]}')
    parser.add_argument("--out", required=True, help="directory for <cell id>.json results")
    return parser.parse_args(argv)


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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.time()
    emit("KMATRIX-AGENT-START", platform.release())
    skipped, changed = run_batch(cells, out)
    done = sum(1 for c in cells if valid_result(out / f"{c['id']}.json", c["id"]))
    write_atomic(
        out / "agent.json",
        {
            "kernel_release": platform.release(),
            "python": platform.python_version(),
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
