"""The kernel's own account of a cell: the kernel log records written while it ran, and
the taint flags before and after it.

Stdlib only, Python 3.8+. A green cell can hide a kernel that warned, oopsed or locked
up under it; kirk and NIPA record the kernel log and the taint per test for that reason.
The agent opens /dev/kmsg before the cell (non-blocking, positioned at its end, so only
what comes after is read), reads the new records after it within fixed bounds, and keeps
the lines that report trouble with a few lines of context each (the call trace).
On a machine that is kept (the host) the log is the machine's: other processes write
there too, and the record says so (`shared`).
"""

from __future__ import annotations

import errno
import os
import re

TYPE_CHECKING = False
"""typing costs ~0.15 s of a guest's start under TCG: its names are for checkers only."""
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

KMSG = "/dev/kmsg"
TAINTED = "/proc/sys/kernel/tainted"
RECORD_BYTES = 8192
"""One read returns one record; the kernel refuses a buffer smaller than the record
(CONSOLE_EXT_LOG_MAX is 8 KiB)."""
MAX_RECORDS = 512
MAX_BYTES = 256 << 10
"""At most this much of the log is read after a cell; the rest is left unread."""
CONTEXT_RECORDS = 16
"""Lines kept after each reported event (or `cut here` marker): its call trace."""
MAX_LOG_LINES = 256
MAX_EVENTS = 64
LINE_CHARS = 512
ERROR_CHARS = 300

TAINT_FLAGS = (
    ("P", "PROPRIETARY_MODULE"),
    ("F", "FORCED_MODULE"),
    ("S", "CPU_OUT_OF_SPEC"),
    ("R", "FORCED_RMMOD"),
    ("M", "MACHINE_CHECK"),
    ("B", "BAD_PAGE"),
    ("U", "USER"),
    ("D", "DIE"),
    ("A", "OVERRIDDEN_ACPI_TABLE"),
    ("W", "WARN"),
    ("C", "CRAP"),
    ("I", "FIRMWARE_WORKAROUND"),
    ("O", "OOT_MODULE"),
    ("E", "UNSIGNED_MODULE"),
    ("L", "SOFTLOCKUP"),
    ("K", "LIVEPATCH"),
    ("X", "AUX"),
    ("T", "RANDSTRUCT"),
    ("N", "TEST"),
    ("J", "FWCTL"),
)
"""Bit n of /proc/sys/kernel/tainted is TAINT_FLAGS[n], as kernel/panic.c's taint_flags
lists them (Documentation/admin-guide/tainted-kernels.rst). A set bit past the table
(a newer kernel) is named `bit<n>`."""

EVENT_KINDS = ("oops", "bug", "soft_lockup", "rcu_stall", "hung_task", "warn")
"""Most severe first: a cell's health is the first of these among its events."""
_PATTERNS = (
    ("soft_lockup", re.compile(r"\bBUG: soft lockup\b")),
    ("rcu_stall", re.compile(r"\brcu_\w+ (?:self-)?detected stall")),
    ("hung_task", re.compile(r"\bINFO: task \S.* blocked for more than \d+ seconds")),
    ("oops", re.compile(r"^(?:Internal error: )?Oops\b")),
    ("bug", re.compile(r"^(?:BUG: |kernel BUG at )")),
    ("warn", re.compile(r"^WARNING: ")),
)
"""Checked in this order, the first match wins: "watchdog: BUG: soft lockup" is a soft
lockup, not any BUG."""
CUT_HERE = "------------[ cut here ]------------"
END_TRACE = re.compile(r"^---\[ end trace\b")
TAINT_NOTE = re.compile(r"taint", re.IGNORECASE)
"""Lines that say why the kernel is now tainted ("... - tainting kernel"): kept too."""


def event_kind(text: str) -> str:
    """The kind of trouble a log line reports, or ""."""
    for kind, pattern in _PATTERNS:
        if pattern.search(text):
            return kind
    return ""


def taint_letters(mask: int | None) -> list:
    """The flags set in a taint mask, in bit order: 512 -> ["W"]."""
    if not mask:
        return []
    return [
        TAINT_FLAGS[bit][0] if bit < len(TAINT_FLAGS) else f"bit{bit}"
        for bit in range(mask.bit_length())
        if mask >> bit & 1
    ]


def read_taint(path: str = TAINTED) -> int | None:
    """/proc/sys/kernel/tainted as an integer; None when it cannot be read."""
    try:
        with open(path) as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return value if value >= 0 else None


def parse_record(data: bytes) -> dict[str, Any] | None:
    """One /dev/kmsg record: "prio,seq,usec,flags[,...];message\\n" and, on lines that
    start with a space, its dictionary (left out). The kernel has already escaped
    unprintable bytes (\\xNN). None for anything else."""
    text = data.decode("utf-8", "replace")
    head, sep, body = text.partition(";")
    fields = head.split(",")
    if not sep or len(fields) < 3:
        return None
    try:
        prio, seq, usec = int(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        return None
    message = body.split("\n", 1)[0].rstrip("\r")[:LINE_CHARS]
    return {
        "level": prio & 7,
        "facility": prio >> 3,
        "seq": seq,
        "t": usec / 1e6,
        "text": message,
    }


def log_line(record: dict[str, Any]) -> str:
    """A record as dmesg prints it."""
    return f"[{record['t']:12.6f}] {record['text']}"[:LINE_CHARS]


def select(records: Iterable[dict[str, Any]]) -> tuple:
    """(the log lines kept, the events): every line reporting trouble with the
    CONTEXT_RECORDS after it (up to its `end trace`), `cut here` markers and what follows
    them, and lines about taint. A line a process wrote (facility not 0: userspace can
    write to /dev/kmsg) is an event of origin "user", not the kernel's."""
    log: list = []
    events: list = []
    until = -1
    for n, record in enumerate(records):
        text = record["text"]
        kind = event_kind(text)
        if kind or text.startswith(CUT_HERE):
            until = max(until, n + CONTEXT_RECORDS)
        if kind and len(events) < MAX_EVENTS:
            origin = "kernel" if record["facility"] == 0 else "user"
            events.append({"kind": kind, "line": text, "t": record["t"], "origin": origin})
        if (n <= until or TAINT_NOTE.search(text)) and len(log) < MAX_LOG_LINES:
            log.append(log_line(record))
        if END_TRACE.match(text) and not kind:
            until = min(until, n)
    return log, events


def read_records(fd: int, max_records: int = MAX_RECORDS, max_bytes: int = MAX_BYTES) -> tuple:
    """(the records now readable at `fd`, up to the bounds; stats: records, bytes, lost
    (at least this many records were overwritten in the ring buffer before they could be
    read), truncated, error). A log written faster than it is read cannot keep it here:
    the reads are bounded too."""
    records: list = []
    stats: dict[str, Any] = {"records": 0, "bytes": 0, "lost": 0, "truncated": False, "error": ""}
    last_seq = None
    for _ in range(2 * max_records + 8):
        try:
            data = os.read(fd, RECORD_BYTES)
        except BlockingIOError:
            break
        except InterruptedError:
            continue
        except OSError as e:
            if e.errno == errno.EPIPE:  # overwritten: the next read resumes past the gap
                stats["lost"] += 1 if last_seq is None else 0
                continue
            stats["error"] = f"reading {KMSG}: {e.strerror or e}"[:ERROR_CHARS]
            break
        if not data:
            break
        if stats["records"] >= max_records or stats["bytes"] >= max_bytes:
            stats["truncated"] = True
            break
        stats["records"] += 1
        stats["bytes"] += len(data)
        record = parse_record(data)
        if record is None:
            continue
        if last_seq is not None and record["seq"] > last_seq + 1:
            stats["lost"] += record["seq"] - last_seq - 1
        last_seq = record["seq"]
        records.append(record)
    return records, stats


class KernelLog:
    """One cell's window on the kernel log and taint: `start` before the cell, `finish`
    after it (returns the result's "kernel" object). Never raises: a log that cannot be
    read is recorded with the reason, and the cell runs as it would without it."""

    def __init__(self, shared: bool = False, kmsg: str = KMSG, tainted: str = TAINTED) -> None:
        self.shared, self.kmsg, self.tainted = shared, kmsg, tainted
        self.fd: int | None = None
        self.error = ""
        self.taint_before: int | None = None

    def start(self) -> None:
        self.taint_before = read_taint(self.tainted)
        try:
            self.fd = os.open(self.kmsg, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as e:
            self.error = f"cannot read {self.kmsg}: {e.strerror or e}"[:ERROR_CHARS]
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def finish(self) -> dict[str, Any]:
        records: list = []
        stats: dict[str, Any] = {"records": 0, "lost": 0, "truncated": False, "error": ""}
        if self.fd is not None:
            try:
                records, stats = read_records(self.fd)
            finally:
                self.close()
        after = read_taint(self.tainted)
        log, events = select(records)
        before = self.taint_before
        new = after & ~before if after is not None and before is not None else 0
        return {
            "source": self.kmsg,
            "shared": self.shared,
            "error": self.error or stats["error"],
            "records": stats["records"],
            "lost": stats["lost"],
            "truncated": stats["truncated"],
            "log": log,
            "events": events,
            "taint_before": before,
            "taint_after": after,
            "taint_flags_before": taint_letters(before),
            "taint_flags_after": taint_letters(after),
            "tainted_by_cell": taint_letters(new),
        }
