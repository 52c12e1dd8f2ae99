"""The vng runner without a VM: command lines, deadlines, console handling, and the
supervision loop driven by a stand-in for vng that is an ordinary Python process."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from matrix.collect.sanitize import clean as clean_text
from matrix.collect.sanitize import tail as console_tail
from matrix.errors import PrerequisiteError
from matrix.model import Batch, Cell, DebianSource, KernelSpec, Limits, ResolvedKernel
from matrix.run import procs
from matrix.runners import accel, vng
from matrix.runners.agent_io import ResultCollector, agent_argv, agent_path
from matrix.runners.vng import (
    ConsoleWatch,
    VngRunner,
    batch_deadline_s,
    is_bzimage,
    stage_kernel,
    vng_argv,
)


def make_kernel(tmp_path: Path, image: bytes | None = None) -> ResolvedKernel:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    mods = root / "lib" / "modules" / "6.1.0-9-amd64"
    mods.mkdir(parents=True)
    vmlinuz = root / "boot" / "vmlinuz-6.1.0-9-amd64"
    vmlinuz.write_bytes(image if image is not None else b"\0" * 0x202 + b"HdrS" + b"\0" * 64)
    spec = KernelSpec("deb", DebianSource("bookworm", "linux-image-*"))
    return ResolvedKernel(spec=spec, release="6.1.0-9-amd64", vmlinuz=vmlinuz, modules_dir=mods)


def make_batch(kernel: ResolvedKernel, n: int = 2, window_s: float = 1.0) -> Batch:
    limits = Limits(window_s=window_s, stall_s=1.0)
    return Batch(kernel, tuple(Cell("deb", f"S{i}", (), 0, limits) for i in range(n)))


def test_argv_for_tcg_pins_the_accelerator_and_exports_the_workdir(tmp_path: Path) -> None:
    argv = vng_argv(
        image=tmp_path / "vmlinuz",
        accel="tcg",
        memory_mb=1024,
        cpus=2,
        rwdirs=[tmp_path],
        exec_cmd="python3 agent.py",
    )
    assert argv[argv.index("--run") + 1] == str(tmp_path / "vmlinuz")
    for flag in ("--force-9p", "--verbose", "--disable-kvm", f"--rwdir={tmp_path}"):
        assert flag in argv
    assert argv[argv.index("--memory") + 1] == "1024"
    assert argv[argv.index("--cpus") + 1] == "2"
    assert argv[argv.index("--user") + 1] == "root"
    assert argv[argv.index("--exec") + 1] == "python3 agent.py"


def test_argv_for_kvm_forbids_a_silent_tcg_fallback(tmp_path: Path) -> None:
    argv = vng_argv(
        image=tmp_path / "k", accel="kvm", memory_mb=512, cpus=1, rwdirs=[], exec_cmd="true"
    )
    assert "--disable-kvm" not in argv
    assert "--qemu-opts=-machine accel=kvm" in argv


def test_agent_command_names_the_batch_files(tmp_path: Path) -> None:
    argv = agent_argv(Path("/w d"), "/usr/bin/python3")
    assert argv == [
        "/usr/bin/python3",
        "-S",
        str(agent_path()),
        "--cells",
        "/w d/cells.json",
        "--out",
        "/w d/out",
    ]
    assert agent_path().is_file()


def test_deadline_is_boot_plus_each_cells_bound(tmp_path: Path) -> None:
    batch = make_batch(make_kernel(tmp_path), n=3, window_s=25.0)
    assert batch_deadline_s(batch.cells, 120.0, 30.0) == 120.0 + 3 * (25.0 + 1.0 + 30.0)
    assert batch_deadline_s((), 120.0, 30.0) == 120.0


def test_clean_text_keeps_newlines_and_tabs_only() -> None:
    assert clean_text("a\tb\r\nc\x1b[31mred\x1b[0m\x07\x00d\n") == "a\tb\ncredd\n"


def test_console_tail_is_the_last_lines_cleaned(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("".join(f"line {i}\x1b[0m\n" for i in range(100)))
    tail = console_tail(log, lines=60)
    assert tail.split("\n") == [f"line {i}" for i in range(40, 100)]
    assert console_tail(tmp_path / "absent") == ""


def test_console_watch_sees_markers_split_across_reads(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("[0.0] Linux version 6.1\nKMATRIX-AGENT-")
    watch = ConsoleWatch(log, time.monotonic())
    watch.scan()
    assert watch.kernel_spoke and not watch.agent_started
    with open(log, "a") as f:
        f.write("START 6.1.0-9-amd64\n[9.9] Kernel panic - not syncing: boom\n")
    watch.scan()
    assert watch.agent_started and watch.boot_s is not None
    assert watch.problem == "kernel panic"


def test_collector_waits_for_half_written_files_until_final(tmp_path: Path) -> None:
    seen: list[str] = []
    collector = ResultCollector(tmp_path, ["a", "b", "c"], lambda i, d: seen.append(i))
    (tmp_path / "a.json").write_text(json.dumps({"id": "a"}))
    (tmp_path / "b.json").write_text('{"id": "b", "trunc')
    collector.poll()
    collector.poll()
    assert seen == ["a"] and collector.missing() == ["b", "c"]
    collector.poll(final=True)
    assert seen == ["a", "b"] and collector.malformed == ["b"]
    assert collector.results["b"]["status"] == "rejected"
    assert "malformed result JSON" in collector.results["b"]["status_detail"]
    assert collector.missing() == ["c"]


def test_stage_kernel_links_image_and_modules(tmp_path: Path) -> None:
    kernel = make_kernel(tmp_path)
    image = stage_kernel(kernel, tmp_path / "stage")
    assert image == tmp_path / "stage" / "boot" / "vmlinuz-6.1.0-9-amd64"
    assert image.resolve() == kernel.vmlinuz
    linked = tmp_path / "stage" / "lib" / "modules" / kernel.release
    assert linked.resolve() == kernel.modules_dir
    assert stage_kernel(kernel, tmp_path / "stage") == image


def test_is_bzimage(tmp_path: Path) -> None:
    assert is_bzimage(make_kernel(tmp_path).vmlinuz)
    (tmp_path / "junk").write_bytes(b"x" * 4096)
    assert not is_bzimage(tmp_path / "junk")
    assert not is_bzimage(tmp_path / "absent")


def test_check_names_each_missing_tool_and_its_package(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(vng, "find_tool", lambda name: None if name in ("vng", "depmod") else "/x")
    with pytest.raises(PrerequisiteError) as err:
        VngRunner().check()
    assert "vng (pip package virtme-ng)" in str(err.value)
    assert "depmod (apt package kmod)" in str(err.value)
    assert "busybox" not in str(err.value)


def test_probe_without_dev_kvm_returns_false_without_booting(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(accel, "KVM_DEVICE", tmp_path / "no-kvm")
    monkeypatch.setattr(accel, "_boot_probe", lambda *a: pytest.fail("booted"))
    ok, reason = accel.probe_kvm(make_kernel(tmp_path))
    assert not ok and "absent" in reason


def test_probe_is_cached_per_kernel(monkeypatch, tmp_path) -> None:
    calls: list[str] = []
    monkeypatch.setattr(accel, "KVM_DEVICE", tmp_path)
    monkeypatch.setattr(accel.os, "access", lambda *a: True)
    monkeypatch.setattr(accel, "_boot_probe", lambda k, t: calls.append(k.release) or (False, "x"))
    accel.clear_cache()
    kernel = make_kernel(tmp_path)
    assert accel.probe_kvm(kernel) == accel.probe_kvm(kernel) == (False, "x")
    assert calls == [kernel.release]
    accel.clear_cache()


def test_garbage_image_fails_at_once_without_a_vm(tmp_path: Path) -> None:
    kernel = make_kernel(tmp_path, image=b"\x7fELF not a kernel" * 100)
    out = VngRunner(accel="tcg").run_batch(
        make_batch(kernel), tmp_path / "wd", threading.Event(), lambda i, d: None
    )
    assert "not a bootable x86 kernel image" in out.failure
    assert out.results == {} and out.wall_s < 5
    assert "not a bootable" in out.console_tail


FAKE_VNG = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    mode, wd = sys.argv[1], sys.argv[2]
    print("[0.0] Linux version 6.1.0-9-amd64", flush=True)
    subprocess.Popen(["sleep", "300", wd])  # a 'qemu' that would outlive us
    cells = json.load(open(os.path.join(wd, "cells.json")))["cells"]
    print("KMATRIX-AGENT-START 6.1.0-9-amd64", flush=True)
    if mode == "hang":
        time.sleep(300)
    if mode in ("beating", "beat-then-silent"):
        for n in range(10**6 if mode == "beating" else 2):
            print(f"KMATRIX-ALIVE {time.monotonic():.3f} {cells[0]['id']}", flush=True)
            time.sleep(0.2)
        time.sleep(300)
    if mode == "panic":
        print("Kernel panic - not syncing: Attempted to kill init!", flush=True)
        time.sleep(300)
    for cell in cells[: 1 if mode == "partial" else None]:
        with open(os.path.join(wd, "out", cell["id"] + ".json"), "w") as f:
            json.dump({"id": cell["id"], "status": "ok"}, f)
    if mode == "ok":
        open(os.path.join(wd, "out", "agent.json"), "w").write("{}")
        time.sleep(300 if len(sys.argv) > 3 else 0)
    """
)


def run_fake(monkeypatch, tmp_path: Path, mode: str, stop: threading.Event | None = None, **kw):
    """Drive run_batch with the fake vng in place of the real one."""
    script = tmp_path / "fake_vng.py"
    script.write_text(FAKE_VNG)
    wd = (tmp_path / "wd").resolve()
    argv = [sys.executable, str(script), mode, str(wd)]
    argv += kw.pop("extra", [])
    monkeypatch.setattr(vng, "vng_argv", lambda **_: argv)
    monkeypatch.setattr(vng, "POLL_S", 0.05)
    runner = VngRunner(accel="tcg", **kw)
    got: dict[str, dict] = {}
    batch = make_batch(make_kernel(tmp_path), n=2)
    outcome = runner.run_batch(batch, wd, stop or threading.Event(), got.__setitem__)
    assert procs.find_by_marker(str(wd)) == []
    return outcome, got, batch


def test_supervision_collects_every_result(monkeypatch, tmp_path) -> None:
    out, got, batch = run_fake(monkeypatch, tmp_path, "ok")
    assert out.failure == "" and set(out.results) == set(got) == {c.id for c in batch.cells}
    assert out.accelerator == "tcg" and out.runner == "vng" and out.boot_s is not None
    assert "KMATRIX-AGENT-START" in out.console_tail


def test_lingering_vm_after_agent_done_is_killed_without_failure(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(vng, "EXIT_GRACE_S", 0.5)
    out, got, _ = run_fake(monkeypatch, tmp_path, "ok", extra=["linger"])
    assert out.failure == "" and len(got) == 2 and out.wall_s < 10


def test_partial_results_name_the_missing_cells(monkeypatch, tmp_path) -> None:
    out, got, _ = run_fake(monkeypatch, tmp_path, "partial")
    assert out.failure == "agent exited without results for 1 cells" and len(got) == 1


def test_panic_is_caught_early(monkeypatch, tmp_path) -> None:
    out, _, _ = run_fake(monkeypatch, tmp_path, "panic")
    assert out.failure == "kernel panic" and out.wall_s < 20
    assert "Kernel panic" in out.console_tail


def test_deadline_kills_the_whole_group(monkeypatch, tmp_path) -> None:
    out, _, _ = run_fake(monkeypatch, tmp_path, "hang", boot_timeout_s=0.5, extra_per_cell_s=0)
    assert out.failure == "batch deadline (4.5s) passed with results for 0 of 2 cells"
    assert out.liveness == "unknown" and out.heartbeat_age_s is None


def test_a_deadline_with_the_heartbeat_going_on_says_the_kernel_is_alive(
    monkeypatch, tmp_path
) -> None:
    out, _, batch = run_fake(
        monkeypatch, tmp_path, "beating", boot_timeout_s=0.5, extra_per_cell_s=0
    )
    first = batch.cells[0].id
    assert out.failure == (
        "batch deadline (4.5s) passed with results for 0 of 2 cells; kernel alive (last "
        f"heartbeat 0 s ago, in cell {first}): the program was stuck"
    )
    assert out.liveness == "alive" and out.heartbeat_age_s is not None
    assert out.heartbeat_age_s < 1.0
    assert "KMATRIX-ALIVE" not in out.console_tail and "KMATRIX-AGENT-START" in out.console_tail


def test_a_deadline_after_the_heartbeat_stopped_says_the_kernel_stopped(
    monkeypatch, tmp_path
) -> None:
    monkeypatch.setattr(vng, "ALIVE_WITHIN_S", 1.0)
    out, _, _ = run_fake(
        monkeypatch, tmp_path, "beat-then-silent", boot_timeout_s=0.5, extra_per_cell_s=0
    )
    assert out.failure.startswith("batch deadline (4.5s) passed with results for 0 of 2 cells; ")
    assert out.failure.endswith(" s: the kernel stopped answering (dead or hung)")
    assert "; no heartbeat for " in out.failure
    assert out.liveness == "silent" and out.heartbeat_age_s is not None
    assert out.heartbeat_age_s > 1.0


def test_console_watch_counts_each_heartbeat_once_even_split_across_reads(tmp_path) -> None:
    log = tmp_path / "console.log"
    log.write_text("KMATRIX-AGENT-START 6.1\r\nKMATRIX-ALIVE 10.000\r\nKMATRIX-ALIVE 15.0")
    watch = ConsoleWatch(log, time.monotonic(), ["abc", "def.a2"])
    watch.scan()
    assert watch.heartbeats == 1 and watch.last_beat_cell == ""
    with open(log, "a") as f:
        f.write("00 def.a2\r\n[  20.1] some kernel line\n")
    watch.scan()
    assert watch.heartbeats == 2 and watch.last_beat_cell == "def.a2"
    with open(log, "a") as f:
        f.write("KMATRIX-ALIVE 20.000 not-our-cell\nKMATRIX-ALIVE 25.000 <b>x\n")
    watch.scan()
    assert watch.heartbeats == 3 and watch.last_beat_cell == ""
    assert watch.last_line() == "[  20.1] some kernel line"


def test_liveness_is_told_by_the_age_of_the_last_heartbeat(tmp_path) -> None:
    watch = ConsoleWatch(tmp_path / "console.log", 0.0, ["c1"])
    assert watch.liveness(100.0) == ("unknown", None, "")
    watch.last_beat_at, watch.last_beat_cell = 98.0, "c1"
    state, age, words = watch.liveness(100.0)
    assert (state, age) == ("alive", 2.0)
    assert words == "kernel alive (last heartbeat 2 s ago, in cell c1): the program was stuck"
    state, age, words = watch.liveness(98.0 + vng.ALIVE_WITHIN_S + 20)
    assert state == "silent" and age == vng.ALIVE_WITHIN_S + 20
    assert words == (f"no heartbeat for {age:.0f} s: the kernel stopped answering (dead or hung)")


def test_console_tail_leaves_out_heartbeats(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("boot\n" + "KMATRIX-ALIVE 1.000 c1\n" * 100 + "last\n")
    assert console_tail(log, skip=vng.HEARTBEAT_LINE) == "boot\nlast"


def test_stop_interrupts(monkeypatch, tmp_path) -> None:
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    out, _, _ = run_fake(monkeypatch, tmp_path, "hang", stop=stop)
    assert out.failure == "interrupted" and out.wall_s < 10


def test_leftover_marker_does_not_match_a_longer_sibling_path(tmp_path: Path) -> None:
    """The workdir of kernel 6.1 is a prefix of 6.12's: killing one must spare the other."""
    sibling = tmp_path / "work" / "6.12"
    sibling.mkdir(parents=True)
    proc = procs.start_session(
        [sys.executable, "-c", "import time; time.sleep(30)", f"--rwdir={sibling}"],
        tmp_path / "log",
    )
    try:
        time.sleep(0.2)
        assert procs.find_by_marker(str(tmp_path / "work" / "6.1")) == []
        assert procs.find_by_marker(str(sibling)) == [proc.pid]
    finally:
        procs.kill_group(proc)
