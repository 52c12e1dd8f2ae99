"""Running one cell's program: a forked child sets up its namespace and execs the
program; the parent waits under the deadline and reads back what it reported.

Stdlib only, Python 3.8+. The child tells the parent how the setup went (and why an
exec failed) over a close-on-exec pipe, so a program that ran closes it by running.
The program's stdout and stderr go to files the agent holds; its result.json goes to a
directory of its own that is removed after the cell.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import time

import agent_netns as netns
import agent_report as report

TYPE_CHECKING = False
"""typing and pathlib cost ~0.35 s of a guest's start under TCG: its names are for checkers only."""
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Any

DEADLINE_SLACK_S = 30.0
"""What the agent allows on top of the cell's timeout_s: setup, settling, writing."""
TAIL_CHARS = 4000
STDOUT_SCAN_BYTES = 16 << 20
"""How much of a program's stdout is read for LAVA and TAP lines (from its start)."""
SETUP_REPORT_BYTES = 1 << 20
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COLLECTORS = os.path.dirname(os.path.realpath(__file__))
"""On the program's PYTHONPATH, so that it can `import kmatrix_probe`."""
HEARTBEAT = "KMATRIX-ALIVE"
HEARTBEAT_S = 5.0
"""How often the agent says on its stdout (a VM's console) that it still runs, while a
cell runs: when a batch's deadline passes, beats that go on mean a stuck program, beats
that stopped mean a kernel that stopped answering."""
KILL_WAIT_S = 10.0
"""How long a program killed at its deadline may take to die. A task stuck in the
kernel (state D) ignores SIGKILL; the agent records that and goes on."""
WAIT_POLL_S = 0.05


class Heartbeat:
    """`KMATRIX-ALIVE <monotonic> [<cell id>]` lines, at most one per period. Beaten from
    the agent's own wait loop rather than a thread, so that no thread is running when
    a cell's child is forked."""

    def __init__(self, period_s: float = HEARTBEAT_S, out: IO[str] | None = None) -> None:
        self.period_s, self.out = period_s, out
        self.due = 0.0

    def beat(self, cell_id: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.due:
            return
        self.due = now + self.period_s
        words = [HEARTBEAT, f"{now:.3f}"] + ([cell_id] if cell_id else [])
        with contextlib.suppress(OSError, ValueError):  # a closed console costs no cell
            print(" ".join(words), file=self.out or sys.stdout, flush=True)


def _no_beat() -> None:
    """The beat of a wait nobody listens to."""


def resolve_argv(cell: dict[str, Any]) -> list:
    """The command with each relative element that names a path existing under the
    scenario's directory made absolute (`../puzzle2.py`); the rest as given (`python3`
    is looked up on PATH)."""
    out = []
    for arg in cell["command"]:
        candidate = os.path.normpath(os.path.join(cell["scenario_dir"], arg))
        out.append(candidate if not os.path.isabs(arg) and os.path.exists(candidate) else arg)
    return out


def program_env(cell: dict[str, Any], result_dir: str) -> dict[str, str]:
    """The program's whole environment: a plain base, the cell's identity and the limits
    its manifest lists (KMATRIX_*), its parameters under their own lower-case names."""
    env = {str(k): str(v) for k, v in cell.get("params", {}).items()}
    env.update(
        PATH=os.environ.get("PATH") or STANDARD_PATH,
        HOME=os.environ.get("HOME") or "/root",
        LANG="C.UTF-8",
        PYTHONPATH=str(COLLECTORS),
        KMATRIX_RESULT_DIR=result_dir,
        KMATRIX_CELL_ID=str(cell["id"]),
        KMATRIX_SCENARIO=str(cell["scenario"]),
        KMATRIX_TRIAL=str(cell["trial"]),
        KMATRIX_ATTEMPT=str(cell.get("attempt", 1)),
        KMATRIX_SCENARIO_DIR=str(cell["scenario_dir"]),
    )
    for name in cell.get("env_limits", []):
        env["KMATRIX_" + name.upper()] = str(cell[name])
    return env


def _send(fd: int, record: dict[str, Any]) -> None:
    """One JSON line to the parent over the report pipe."""
    data = (json.dumps(record) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


def _default_signals() -> None:
    """Dispositions exec keeps must be the defaults: Python ignores SIGPIPE and SIGXFSZ,
    and an ignored signal stays ignored in the program."""
    for name in ("SIGPIPE", "SIGXFSZ", "SIGTERM", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)


def child(cell: dict[str, Any], result: dict[str, Any], run: dict[str, Any], pipe: int) -> None:
    """The forked child: its own process group, a new namespace, the sysctls, then the
    program by exec. It never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        _default_signals()
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(run["stdout"].fileno(), 1)
        os.dup2(run["stderr"].fileno(), 2)
        sys.stdout = sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        lines: list = []

        def log(message: str) -> None:
            lines.append(f"[{time.time() - result['started_at']:7.3f}] {message}")

        try:
            ready = netns.setup_namespace(result, log)
        except OSError as e:
            ready = False
            result["status"] = "setup_failed"
            result["status_detail"] = f"namespace setup: {e}"
            log(result["status_detail"])
        setup = {
            "ready": ready,
            "inode": result["netns"]["inode"],
            "read_back": result["sysctls"]["read_back"],
            "problems": result["sysctls"]["problems"],
            "detail": result["status_detail"],
            "lines": lines,
        }
        _send(pipe, {"setup": setup, "exec_at": time.monotonic()})
        code = 0
        if ready:
            argv = run["argv"]
            try:
                os.chdir(cell["scenario_dir"])
                os.execvpe(argv[0], argv, run["env"])
            except OSError as e:
                _send(pipe, {"exec_errno": e.errno or 0})
                code = 127
    except BaseException:
        import traceback  # only here: ~0.2 s of a guest's start under TCG

        traceback.print_exc()
        sys.stderr.flush()
        code = 1
    finally:
        os._exit(code)


def _drain(fd: int, buf: bytearray) -> bool:
    """Read what `fd` holds now into `buf` (up to SETUP_REPORT_BYTES); True at its end."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return False
        if not chunk:
            return True
        buf.extend(chunk[: max(0, SETUP_REPORT_BYTES - len(buf))])


def wait_child(pid: int, pipe: int, deadline: float, beat: Callable[[], None] = _no_beat) -> tuple:
    """(the child's wait status, None if it outlived the deadline; its report records),
    reading the pipe as it goes so that a long report never blocks the child, and
    beating the heartbeat while it waits."""
    os.set_blocking(pipe, False)
    buf = bytearray()
    ended, status = False, None
    while True:
        ended = ended or _drain(pipe, buf)
        got, st = os.waitpid(pid, os.WNOHANG)
        if got:
            status = st
            break
        if time.monotonic() >= deadline:
            break
        beat()
        time.sleep(WAIT_POLL_S)
    if status is not None and not ended:
        _drain(pipe, buf)
    records: dict[str, Any] = {}
    for line in bytes(buf).decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict):
                records.update(doc)
    return status, records


def kill_group(pgid: int) -> None:
    with contextlib.suppress(OSError):  # the group is already gone
        os.killpg(pgid, signal.SIGKILL)


def proc_state(pid: int) -> tuple:
    """(state letter, wchan) of a live process from /proc; None for what it cannot say.
    Read just before an overrunning program is killed: S or D in a wait, R spinning."""
    state = wchan = None
    with contextlib.suppress(OSError, IndexError), open(f"/proc/{pid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    with contextlib.suppress(OSError), open(f"/proc/{pid}/wchan") as f:
        wchan = f.read().strip()[:128]
    return state, wchan


def reap(pid: int, wait_s: float, beat: Callable[[], None] = _no_beat) -> bool:
    """Wait up to `wait_s` for a killed child; False if it is still there (stuck in the
    kernel: SIGKILL is only acted on when it leaves an uninterruptible wait)."""
    end = time.monotonic() + wait_s
    while True:
        try:
            got, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if got:
            return True
        if time.monotonic() >= end:
            return False
        beat()
        time.sleep(WAIT_POLL_S)


def signal_name(sig: int) -> str:
    names = {s.value: s.name for s in signal.Signals}
    return names.get(sig, f"signal {sig}")


def describe_status(status: int) -> str:
    """A wait() status in words, for status_detail."""
    if not os.WIFSIGNALED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    sig = os.WTERMSIG(status)
    return f"killed by signal {sig} ({signal_name(sig)})"


def read_tail(f: IO[bytes], chars: int) -> str:
    """The last `chars` characters of a captured stream."""
    fd = f.fileno()
    size = os.fstat(fd).st_size
    start = max(0, size - 4 * chars)
    return os.pread(fd, size - start, start).decode(errors="replace")[-chars:]


def read_stdout(f: IO[bytes]) -> tuple:
    """(the lines read for LAVA and TAP, the tail, a note when stdout was longer)."""
    fd = f.fileno()
    size = os.fstat(fd).st_size
    data = report.read_bounded_fd(fd, STDOUT_SCAN_BYTES)
    note = ""
    if size > STDOUT_SCAN_BYTES:
        note = f"stdout: {size:,} bytes; only the first {STDOUT_SCAN_BYTES:,} were read"
    lines = [ln.rstrip("\r") for ln in data.decode(errors="replace").split("\n")]
    return lines, read_tail(f, TAIL_CHARS), note


def make_result_dir(cell_id: str, root: str | None) -> str:
    """The cell's private KMATRIX_RESULT_DIR (0700, absolute: the program runs elsewhere):
    under `root` (the batch's directory, beside out/, which the runners clean up), else
    under /tmp where `root` cannot take it (a guest that may not write there).

    os.mkdir with a random name rather than tempfile, here and for the captured output:
    tempfile's imports (shutil, random, bz2, lzma) cost ~0.45 s of a guest's start under
    TCG."""
    if root is not None:
        with contextlib.suppress(OSError):
            return _private_dir(os.path.abspath(root), f".scratch-{cell_id}-")
    return _private_dir("/tmp", f"kmatrix-{cell_id}-")


def _private_dir(parent: str, prefix: str) -> str:
    for _ in range(100):
        path = os.path.join(parent, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, "no free name", os.path.join(parent, prefix))


def capture_file(directory: str) -> IO[bytes]:
    """An unnamed file for a program's stdout or stderr: O_TMPFILE where the filesystem
    has it, else a file unlinked as soon as it is open (so nothing is left behind)."""
    with contextlib.suppress(OSError):
        return os.fdopen(os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600), "w+b")
    path = os.path.join(directory, ".capture-" + os.urandom(6).hex())
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.unlink(path)
    return os.fdopen(fd, "w+b")


def remove_result_dir(path: str) -> None:
    """Remove the cell's directory, never following a link the program put in its place
    (os.walk bottom-up does not descend into links; each is unlinked as a name)."""
    with contextlib.suppress(OSError):
        if os.path.islink(path) or not os.path.isdir(path):
            os.unlink(path)
            return
        for top, dirs, files in os.walk(path, topdown=False):
            for name in files:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(top, name))
            for name in dirs:
                full = os.path.join(top, name)
                remove = os.unlink if os.path.islink(full) else os.rmdir
                with contextlib.suppress(OSError):
                    remove(full)
        os.rmdir(path)


def join_log(lines: list, stderr: str) -> str:
    """The agent's own lines first, then as much of the program's stderr as fits."""
    own = "\n".join(lines)[:TAIL_CHARS]
    room = TAIL_CHARS - len(own) - (1 if own else 0)
    tail = stderr[-room:] if room > 0 and stderr else ""
    return "\n".join(p for p in (own, tail) if p)


def _found(convention: str, fields: Any, lava: list, seen_tap: bool) -> bool:
    """Whether the program reported in the convention its manifest declares."""
    return {"json": fields is not None, "lava": bool(lava), "ktap": seen_tap}.get(convention, True)


def _missing(convention: str, json_why: str) -> str:
    return {
        "json": json_why,
        "lava": "no LAVA_SIGNAL_TESTCASE line on stdout",
        "ktap": "no TAP or KTAP line on stdout",
    }[convention]


def _summary(code: int, cases: list) -> str:
    """status_detail of an ok result whose program gave none."""
    text = f"exit status {code}"
    if cases:
        counts = {k: sum(1 for c in cases if c["result"] == k) for k in ("pass", "fail", "skip")}
        text += (
            f"; {len(cases)} test cases: {counts['pass']} passed, {counts['fail']} failed,"
            f" {counts['skip']} skipped"
        )
    return text


def _stdout_cases(result: dict[str, Any], run: dict[str, Any], notes: list) -> tuple:
    """Test cases from stdout into `result`; returns (LAVA cases, TAP cases, TAP seen)."""
    lines, result["program"]["stdout_tail"], note = read_stdout(run["stdout"])
    if note:
        notes.append(note)
    lava = report.lava_cases(lines)
    tap, seen_tap = report.tap_cases(lines)
    cases = lava + tap
    result["testcases"] = cases[: report.MAX_TESTCASES]
    if len(cases) > report.MAX_TESTCASES:
        notes.append(f"{len(cases)} test cases; the first {report.MAX_TESTCASES} are kept")
    return lava, tap, seen_tap


def collect(cell: dict[str, Any], result: dict[str, Any], run: dict[str, Any], status: int) -> list:
    """Fill `result` from what a program that ended reported; returns the agent's notes."""
    notes: list = []
    program = result["program"]
    lava, tap, seen_tap = _stdout_cases(result, run, notes)
    reported = (["lava"] if lava else []) + (["ktap"] if seen_tap else [])
    if os.WIFSIGNALED(status):
        program.update(signal=signal_name(os.WTERMSIG(status)), reported=reported)
        result["status"] = "crashed"
        result["status_detail"] = f"the program was {describe_status(status)}"
        return notes
    code = os.WEXITSTATUS(status)
    fields, json_why = report.read_result_json(run["result_dir"])
    if fields is not None:
        reported.insert(0, "json")
        for key in ("metrics", "series", "evidence", "error", "verdict"):
            if key in fields:
                result[key] = fields[key]
    elif cell["result"] != "json" and json_why != report.NO_RESULT_JSON:
        notes.append(f"result.json ignored: {json_why}")
    for case in lava:
        if case["measurement"] is not None:
            result["metrics"].setdefault(case["name"], case["measurement"])
    program.update(
        exit_code=code,
        reported=reported + ["exit"],
        outcome=report.outcome(result["verdict"], lava + tap, code),
    )
    if _found(cell["result"], fields, lava, seen_tap):
        result["status"] = "ok"
        result["status_detail"] = (fields or {}).get("status_detail") or _summary(code, lava + tap)
    else:
        result["status"] = "no_result"
        result["status_detail"] = (
            f"result = {cell['result']!r}, but {_missing(cell['result'], json_why)}"
            f" ({describe_status(status)})"
        )
    return notes


def finish(
    cell: dict[str, Any], result: dict[str, Any], run: dict[str, Any], status: Any, records: dict
) -> None:
    """The result document from the child's report, its wait status (None: it timed
    out) and what the program left."""
    setup = records.get("setup")
    setup = setup if isinstance(setup, dict) else None
    lines: list = []
    if setup:
        result["netns"]["inode"] = setup.get("inode")
        result["sysctls"].update(read_back=setup.get("read_back"), problems=setup.get("problems"))
        lines += [str(x) for x in setup.get("lines") or []]
    if status is None:
        result["status"] = "timeout"
        result["status_detail"] = f"no result within {run['budget']:.0f} s; process group killed"
        live = result.get("liveness") or {}
        if live.get("reaped") is False:
            result["status_detail"] += (
                f"; the program did not die within {KILL_WAIT_S:g} s"
                f" (state {live.get('state') or '?'} in {live.get('wchan') or '?'})"
            )
        if setup and setup.get("ready") and "exec_errno" not in records:
            _stdout_cases(result, run, lines)
            result["program"]["signal"] = "SIGKILL"
    elif setup is None:
        result["status"] = "crashed"
        ended = describe_status(status)
        result["status_detail"] = f"the cell ended before its program ran: {ended}"
    elif not setup.get("ready"):
        result["status"] = "setup_failed"
        result["status_detail"] = str(setup.get("detail") or "namespace setup failed")
    elif "exec_errno" in records:
        err = int(records.get("exec_errno") or 0)
        result["status"] = "crashed"
        why = f"{os.strerror(err)} (errno {err} {errno.errorcode.get(err, '?')})"
        result["status_detail"] = f"cannot run {run['argv'][0]}: {why}"
    else:
        lines += collect(cell, result, run, status)
    result["log_tail"] = join_log(lines, read_tail(run["stderr"], TAIL_CHARS))


def run_program(
    cell: dict[str, Any],
    result: dict[str, Any],
    argv: list,
    root: str | None = None,
    beat: Callable[[], None] = _no_beat,
) -> None:
    """Fork the cell's child, wait for it under the deadline (timeout_s + slack), kill
    what is left of its process group, then fill in `result`. The program's result
    directory goes under `root` where it can (see make_result_dir); `beat` is called
    while the agent waits. A program that overran is recorded in `liveness`: the agent
    was alive to kill it, the state it was killed in, and whether it died."""
    budget = float(cell["timeout_s"]) + DEADLINE_SLACK_S
    began = time.monotonic()
    result_dir = make_result_dir(str(cell["id"]), root)
    try:
        tmp = "/tmp" if os.path.isdir("/tmp") else result_dir
        with capture_file(tmp) as stdout, capture_file(tmp) as stderr:
            run = {
                "argv": argv,
                "env": program_env(cell, result_dir),
                "stdout": stdout,
                "stderr": stderr,
                "result_dir": result_dir,
                "budget": budget,
            }
            read_end, write_end = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                os.close(read_end)
                child(cell, result, run, write_end)
            os.close(write_end)
            with contextlib.suppress(OSError):  # the child did it first, or has exited
                os.setpgid(pid, pid)
            live = result.setdefault("liveness", {})
            try:
                status, records = wait_child(pid, read_end, time.monotonic() + budget, beat)
                if status is None:
                    state, wchan = proc_state(pid)
                    live.update(overran=True, state=state, wchan=wchan)
            finally:
                kill_group(pid)
                os.close(read_end)
            if status is None:
                live["reaped"] = reap(pid, KILL_WAIT_S, beat)
            exited = time.monotonic()
            finish(cell, result, run, status, records)
            result["timing"] = timing(began, records.get("exec_at"), exited, time.monotonic())
    finally:
        remove_result_dir(result_dir)


def timing(began: float, exec_at: Any, exited: float, done: float) -> dict[str, float]:
    """Where a cell's time went: setup_s (fork, namespace, sysctls, up to the program's
    exec), program_s (exec to exit: the interpreter's start, its imports and its run),
    collect_s (reading what it reported). exec_at is the child's clock (the same
    CLOCK_MONOTONIC); without it the program's share includes the setup."""
    if not isinstance(exec_at, (int, float)) or not began <= exec_at <= exited:
        exec_at = began
    return {
        "setup_s": round(exec_at - began, 3),
        "program_s": round(exited - exec_at, 3),
        "collect_s": round(done - exited, 3),
    }
