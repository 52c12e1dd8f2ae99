"""The kernel's account of a cell: /dev/kmsg records parsed, the lines that report
trouble picked with their call trace, the reads bounded, and taint masks decoded.

collectors/ holds stdlib scripts run inside guests, so the module is imported by path.
/dev/kmsg itself is played by a fake read (one record per call, as the kernel gives
them); the real device is read by tests/integration/test_agent_kernel_log.py.
"""

from __future__ import annotations

import errno
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

COLLECTORS = Path(__file__).resolve().parents[3] / "collectors"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"collector_{name}", COLLECTORS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


kmsg = _load("agent_kmsg")


def record(text: str, seq: int = 1, prio: int = 4, usec: int = 1_500_000) -> bytes:
    """A /dev/kmsg record as the kernel hands one out, with a dictionary line."""
    return f"{prio},{seq},{usec},-,caller=T1;{text}\n SUBSYSTEM=test\n".encode()


def parsed(text: str, seq: int = 1, facility: int = 0) -> dict:
    return {"level": 4, "facility": facility, "seq": seq, "t": seq / 10, "text": text}


# --- records --------------------------------------------------------------------------


def test_a_record_is_split_into_level_facility_sequence_time_and_message() -> None:
    got = kmsg.parse_record(record("WARNING: CPU: 1 PID: 77 at net/core/dev.c:1 f+0x1/0x2", 42))
    assert got == {
        "level": 4,
        "facility": 0,
        "seq": 42,
        "t": 1.5,
        "text": "WARNING: CPU: 1 PID: 77 at net/core/dev.c:1 f+0x1/0x2",
    }


def test_a_line_a_process_wrote_carries_its_facility() -> None:
    """`echo '<4>...' > /dev/kmsg` keeps facility LOG_USER: prio 12, level 4."""
    got = kmsg.parse_record(b"12,341,12610775348,-;kmatrix probe line\n")
    assert got is not None
    assert (got["level"], got["facility"], got["text"]) == (4, 1, "kmatrix probe line")


@pytest.mark.parametrize(
    "data", [b"", b"no header at all\n", b"4,x,1,-;text\n", b"4,1;short\n", b"\xff\xfe;"]
)
def test_what_is_not_a_record_is_none(data: bytes) -> None:
    assert kmsg.parse_record(data) is None


def test_a_long_message_is_cut() -> None:
    got = kmsg.parse_record(record("x" * 9000))
    assert got is not None and len(got["text"]) == kmsg.LINE_CHARS


# --- what counts as trouble -----------------------------------------------------------

LINES = [
    ("WARNING: CPU: 0 PID: 1 at kernel/sched/core.c:1234 foo+0x10/0x20", "warn"),
    ("WARNING: CPU: 0 PID: 1 at kmatrix-test", "warn"),
    ("WARNING: possible circular locking dependency detected", "warn"),
    ("WARNING: suspicious RCU usage", "warn"),
    ("kernel BUG at mm/slub.c:4321!", "bug"),
    ("BUG: unable to handle page fault for address: ffff888000000000", "bug"),
    ("BUG: KASAN: slab-use-after-free in tcp_v4_rcv+0x1/0x2", "bug"),
    ("BUG: sleeping function called from invalid context at mm/slab.h:1", "bug"),
    ("Oops: 0000 [#1] PREEMPT SMP NOPTI", "oops"),
    ("Oops: general protection fault, probably for non-canonical address", "oops"),
    ("Internal error: Oops: 0000000096000004 [#1] SMP", "oops"),
    ("watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [python3:123]", "soft_lockup"),
    ("NMI watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [a:1]", "soft_lockup"),
    ("rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", "rcu_stall"),
    ("rcu: INFO: rcu_sched self-detected stall on CPU", "rcu_stall"),
    ("INFO: rcu_sched detected stalls on CPUs/tasks: { 1} (detected by 0)", "rcu_stall"),
    ("INFO: task python3:321 blocked for more than 120 seconds.", "hung_task"),
    ("INFO: task kworker/0:1:9 blocked for more than 2 seconds. [Warning #1]", "hung_task"),
    ("------------[ cut here ]------------", ""),
    ("Call Trace:", ""),
    ("systemd[1]: WARNING: not a kernel report", ""),
    ("a message about a BUG: in the middle", ""),
    ("usb 1-1: new high-speed USB device number 2 using xhci_hcd", ""),
]


@pytest.mark.parametrize(("line", "kind"), LINES, ids=[t[:40] for t, _ in LINES])
def test_each_kind_of_trouble_is_named_and_ordinary_lines_are_not(line: str, kind: str) -> None:
    assert kmsg.event_kind(line) == kind


def test_every_kind_is_one_the_host_knows_in_its_order() -> None:
    from matrix.classify.rules import HEALTH_KINDS
    from matrix.collect.guest_result import KERNEL_EVENT_KINDS

    assert kmsg.EVENT_KINDS == KERNEL_EVENT_KINDS == HEALTH_KINDS
    assert {kind for _, kind in LINES if kind} == set(kmsg.EVENT_KINDS)


WARN_REPORT = [
    "eth0: link up",
    "------------[ cut here ]------------",
    "WARNING: CPU: 0 PID: 9 at net/ipv4/tcp.c:10 tcp_x+0x1/0x2",
    "Modules linked in: 9p",
    "CPU: 0 PID: 9 Comm: python3 Tainted: G        W          6.1.0-9-amd64 #1",
    "Call Trace:",
    " <TASK>",
    " tcp_sendmsg+0x10/0x20",
    " </TASK>",
    "---[ end trace 0000000000000000 ]---",
    "eth0: link down",
]


def test_a_report_is_kept_with_its_trace_to_its_end_and_nothing_around_it() -> None:
    log, events = kmsg.select(parsed(t, n) for n, t in enumerate(WARN_REPORT, 1))
    assert [line.split("] ", 1)[1] for line in log] == WARN_REPORT[1:-1]
    assert log[0] == "[    0.200000] ------------[ cut here ]------------"
    assert events == [
        {"kind": "warn", "line": WARN_REPORT[2], "t": 0.3, "origin": "kernel"},
    ]


def test_context_is_bounded_after_an_event_without_an_end_marker() -> None:
    lines = ["BUG: unable to handle page fault"] + [f" frame {i}" for i in range(40)]
    log, events = kmsg.select(parsed(t, n) for n, t in enumerate(lines, 1))
    assert len(log) == 1 + kmsg.CONTEXT_RECORDS
    assert [e["kind"] for e in events] == ["bug"]


def test_lines_about_taint_are_kept_alone() -> None:
    lines = [
        "usb 1-1: new device",
        "qlge: module is from the staging directory, the quality is unknown, you have been warned.",
        "foo: module verification failed: signature and/or required key missing - tainting kernel",
    ]
    log, events = kmsg.select(parsed(t, n) for n, t in enumerate(lines, 1))
    assert [line.split("] ", 1)[1] for line in log] == lines[2:]
    assert events == []


def test_a_report_a_process_wrote_is_of_origin_user() -> None:
    log, events = kmsg.select([parsed("WARNING: CPU: 0 PID: 1 at kmatrix-test", 1, facility=1)])
    assert len(log) == 1 and events[0]["origin"] == "user" and events[0]["kind"] == "warn"


def test_events_and_lines_are_bounded() -> None:
    lines = [f"WARNING: CPU: 0 PID: {i} at x" for i in range(1000)]
    log, events = kmsg.select(parsed(t, n) for n, t in enumerate(lines, 1))
    assert len(log) == kmsg.MAX_LOG_LINES and len(events) == kmsg.MAX_EVENTS


# --- reading the device ----------------------------------------------------------------


class FakeKmsg:
    """os.read on /dev/kmsg: one record per call, EPIPE where records were overwritten,
    EAGAIN at the end."""

    def __init__(self, items: list) -> None:
        self.items: Iterator = iter(items)
        self.reads = 0

    def read(self, fd: int, size: int) -> bytes:
        assert fd == 99 and size == kmsg.RECORD_BYTES
        self.reads += 1
        item = next(self.items, BlockingIOError(errno.EAGAIN, "again"))
        if isinstance(item, BaseException):
            raise item
        return item


def test_records_are_read_until_there_are_no_more(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKmsg([record("one", 5), record("two", 6)])
    monkeypatch.setattr(kmsg.os, "read", fake.read)
    records, stats = kmsg.read_records(99)
    assert [r["text"] for r in records] == ["one", "two"]
    assert stats["records"] == 2 and stats["lost"] == 0 and not stats["truncated"]
    assert stats["error"] == ""


def test_overwritten_records_are_counted_as_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """EPIPE: the ring buffer moved past the reader; the sequence numbers show how far."""
    items = [OSError(errno.EPIPE, "Broken pipe"), record("a", 10), record("b", 14)]
    monkeypatch.setattr(kmsg.os, "read", FakeKmsg(items).read)
    records, stats = kmsg.read_records(99)
    assert [r["seq"] for r in records] == [10, 14]
    assert stats["lost"] == 1 + 3


def test_reading_stops_at_the_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKmsg([record(f"line {i}", i) for i in range(1, 100)])
    monkeypatch.setattr(kmsg.os, "read", fake.read)
    records, stats = kmsg.read_records(99, max_records=10)
    assert len(records) == 10 and stats["truncated"] and fake.reads == 11
    fake = FakeKmsg([record("y" * 400, i) for i in range(1, 100)])
    monkeypatch.setattr(kmsg.os, "read", fake.read)
    records, stats = kmsg.read_records(99, max_bytes=1000)
    assert len(records) == 3 and stats["truncated"]


def test_a_flood_of_overwrites_cannot_keep_the_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeKmsg([OSError(errno.EPIPE, "Broken pipe")] * 100_000)
    monkeypatch.setattr(kmsg.os, "read", fake.read)
    records, _ = kmsg.read_records(99, max_records=10)
    assert records == [] and fake.reads <= 2 * 10 + 8


def test_a_read_error_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kmsg.os, "read", FakeKmsg([OSError(errno.EIO, "I/O error")]).read)
    _, stats = kmsg.read_records(99)
    assert stats["error"] == "reading /dev/kmsg: I/O error"


# --- taint ---------------------------------------------------------------------------


def test_the_letters_are_the_kernels_in_bit_order() -> None:
    """kernel/panic.c taint_flags[] (and tainted-kernels.rst): P F S R M B U D A W C I O
    E L K X T N J for bits 0-19."""
    assert "".join(letter for letter, _ in kmsg.TAINT_FLAGS) == "PFSRMBUDAWCIOELKXTNJ"
    assert dict(kmsg.TAINT_FLAGS)["W"] == "WARN" and kmsg.TAINT_FLAGS[6] == ("U", "USER")


@pytest.mark.parametrize(
    ("mask", "letters"),
    [
        (0, []),
        (None, []),
        (1, ["P"]),
        (512, ["W"]),
        (64 | 512, ["U", "W"]),
        (1 << 14, ["L"]),
        (1 << 19, ["J"]),
        ((1 << 20) | (1 << 9), ["W", "bit20"]),
        (4097, ["P", "O"]),
    ],
)
def test_a_mask_decodes_to_its_letters(mask: int | None, letters: list[str]) -> None:
    assert kmsg.taint_letters(mask) == letters


def test_the_taint_file_is_read_as_an_integer(tmp_path: Path) -> None:
    path = tmp_path / "tainted"
    path.write_text("4608\n")
    assert kmsg.read_taint(str(path)) == 4608
    path.write_text("junk\n")
    assert kmsg.read_taint(str(path)) is None
    assert kmsg.read_taint(str(tmp_path / "absent")) is None


def test_a_window_records_what_the_cell_tainted(tmp_path: Path) -> None:
    """A regular file stands in for /dev/kmsg: at its end there is nothing to read."""
    tainted, log = tmp_path / "tainted", tmp_path / "kmsg"
    tainted.write_text("512\n")
    log.write_text("4,1,1,-;WARNING: before the cell\n")
    window = kmsg.KernelLog(shared=True, kmsg=str(log), tainted=str(tainted))
    window.start()
    tainted.write_text(str(512 | 64) + "\n")
    doc = window.finish()
    assert doc == {
        "source": str(log),
        "shared": True,
        "error": "",
        "records": 0,
        "lost": 0,
        "truncated": False,
        "log": [],
        "events": [],
        "taint_before": 512,
        "taint_after": 576,
        "taint_flags_before": ["W"],
        "taint_flags_after": ["U", "W"],
        "tainted_by_cell": ["U"],
    }
    assert window.fd is None


def test_a_log_that_cannot_be_opened_is_recorded_not_raised(tmp_path: Path) -> None:
    window = kmsg.KernelLog(kmsg=str(tmp_path / "no-kmsg"), tainted=str(tmp_path / "none"))
    window.start()
    doc = window.finish()
    assert doc["error"].startswith(f"cannot read {tmp_path / 'no-kmsg'}: No such file")
    assert doc["taint_before"] is doc["taint_after"] is None and doc["tainted_by_cell"] == []
    assert doc["shared"] is False
