"""The per-machine accelerator decision without a VM: its key, the cache file (hit, miss,
a changed key, a damaged or oversized file), the no-vmx answer, the stall rule, the
runner's prepare hook and what the manifest records."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from matrix.model import Batch, DebianSource, KernelSpec, ResolvedKernel
from matrix.run import procs, rundir
from matrix.runners import accel, kvm_probe
from matrix.runners.accel import Decision, HostKey, ProbeLimits
from matrix.runners.vng import VngRunner

KVM_KEY = HostKey("6.18.0", "QEMU emulator version 7.2.22", ("hypervisor", "vmx"), "10:232")
PVM_KEY = HostKey("6.18.0", "QEMU emulator version 7.2.22", ("hypervisor",), "10:232")


def make_kernel(
    tmp_path: Path, name: str = "6.1", release: str = "6.1.0-9-amd64"
) -> ResolvedKernel:
    image = tmp_path / f"vmlinuz-{release}"
    image.write_bytes(b"\0" * 0x202 + b"HdrS" + b"\0" * 64)
    return ResolvedKernel(KernelSpec(name, DebianSource("bookworm", "x")), release, image)


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """A machine whose key, /dev/kvm and probe boot are the test's; the cache is private."""
    state: dict[str, Any] = {"key": KVM_KEY, "probes": [], "answer": (True, "a KVM guest ran")}

    def probe(kernel: ResolvedKernel, timeout_s: float, **_: Any) -> tuple[bool, str]:
        state["probes"].append(kernel.release)
        return state["answer"]

    monkeypatch.setenv(accel.CACHE_ENV, str(tmp_path / "cache" / "accel.json"))
    monkeypatch.delenv(accel.PROBE_ENV, raising=False)
    monkeypatch.setattr(accel, "host_key", lambda: state["key"])
    monkeypatch.setattr(accel, "KVM_DEVICE", tmp_path)
    monkeypatch.setattr(accel.os, "access", lambda *a: True)
    monkeypatch.setattr(accel, "_boot_probe", probe)
    accel.clear_cache()
    yield state
    accel.clear_cache()


def fresh_process() -> None:
    """What a new process starts with: nothing decided in memory, the file on disk."""
    accel.clear_cache()


# --- the key ------------------------------------------------------------------------------


def test_cpu_flags_keeps_only_the_flags_that_matter(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor: 0\nflags\t\t: fpu vme svm sse hypervisor avx\nflags: vmx\n")
    assert accel.cpu_flags(info) == ("hypervisor", "svm")
    info.write_text("processor: 0\nflags: fpu sse\n")
    assert accel.cpu_flags(info) == ()
    assert accel.cpu_flags(tmp_path / "absent") == ()


def test_host_key_of_this_machine_names_each_part() -> None:
    key = accel.host_key()
    assert key.host_kernel == os.uname().release
    assert set(key.cpu_flags) <= {"hypervisor", "svm", "vmx"}
    assert key.kvm_device == "absent" or key.kvm_device.count(":") == 1
    assert key.qemu == "" or key.qemu.startswith("QEMU")


def test_kvm_device_absent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(accel, "KVM_DEVICE", tmp_path / "no-kvm")
    assert accel.kvm_device() == "absent"


# --- the cache ----------------------------------------------------------------------------


def test_miss_probes_once_then_later_processes_hit_the_cache(machine, tmp_path) -> None:
    kernel = make_kernel(tmp_path)
    first = accel.decide(kernel)
    assert (first.accel, first.source, first.from_cache) == ("kvm", "probe", False)
    assert accel.decide(make_kernel(tmp_path, "6.12", "6.12.1-amd64")) == first
    fresh_process()
    again = accel.decide(kernel)
    assert (again.accel, again.reason, again.from_cache) == ("kvm", first.reason, True)
    assert machine["probes"] == [kernel.release]


def test_a_changed_key_invalidates_the_cached_answer(machine, tmp_path) -> None:
    kernel = make_kernel(tmp_path)
    accel.decide(kernel)
    for change in (
        {"host_kernel": "6.19.0"},
        {"qemu": "QEMU emulator version 9.2.0"},
        {"cpu_flags": ("hypervisor", "svm")},
        {"kvm_device": "10:233"},
    ):
        fresh_process()
        machine["key"] = HostKey(**{**KVM_KEY.__dict__, **change})
        assert not accel.decide(kernel).from_cache, change
    assert len(machine["probes"]) == 5


def test_the_cache_file_is_written_atomically_and_whole(machine, tmp_path) -> None:
    accel.decide(make_kernel(tmp_path))
    path = accel.cache_path()
    doc = json.loads(path.read_text())
    assert doc["format"] == accel.FORMAT and doc["key"] == KVM_KEY.to_doc()
    assert doc["decision"]["accel"] == "kvm"
    assert [p.name for p in path.parent.iterdir()] == sorted(["accel.json", "accel.json.lock"])


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        b"[]",
        b'{"format": 1, "key": {}, "decision": {}}',
        b"\xff\xfe\x00garbage",
        b"[" * 5000 + b"]" * 5000,
    ],
    ids=["truncated", "empty", "a-list", "wrong-shape", "binary", "deep"],
)
def test_a_damaged_cache_is_refused_and_reprobed(machine, tmp_path, content: bytes) -> None:
    path = accel.cache_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    d = accel.decide(make_kernel(tmp_path))
    assert not d.from_cache and machine["probes"] == ["6.1.0-9-amd64"]
    assert accel.read_cached(path, KVM_KEY) is not None


def test_a_cache_with_a_bad_accelerator_is_refused(machine, tmp_path) -> None:
    accel.decide(make_kernel(tmp_path))
    path = accel.cache_path()
    doc = json.loads(path.read_text())
    doc["decision"]["accel"] = "xen"
    path.write_text(json.dumps(doc))
    assert accel.read_cached(path, KVM_KEY) is None


def test_an_oversized_cache_file_is_refused_unread(machine, tmp_path) -> None:
    accel.decide(make_kernel(tmp_path))
    path = accel.cache_path()
    doc = json.loads(path.read_text())
    doc["decision"]["reason"] = "x" * accel.MAX_CACHE_BYTES
    path.write_text(json.dumps(doc))
    assert accel.read_cached(path, KVM_KEY) is None
    fresh_process()
    assert not accel.decide(make_kernel(tmp_path)).from_cache


def test_an_unwritable_cache_still_decides(machine, monkeypatch, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(accel.CACHE_ENV, str(blocker / "accel.json"))
    assert accel.decide(make_kernel(tmp_path)).accel == "kvm"


# --- answers without a boot ---------------------------------------------------------------


def test_no_vmx_nor_svm_answers_tcg_at_once_and_caches_it(machine, tmp_path) -> None:
    machine["key"] = PVM_KEY
    d = accel.decide(make_kernel(tmp_path))
    assert (d.accel, d.source, machine["probes"]) == ("tcg", "cpu flags", [])
    assert accel.PROBE_ENV in d.reason
    fresh_process()
    assert accel.decide(make_kernel(tmp_path)).from_cache


def test_asking_for_a_probe_boots_despite_the_flags_and_the_cache(
    machine, monkeypatch, tmp_path
) -> None:
    machine["key"], machine["answer"] = PVM_KEY, (False, "console silent")
    accel.decide(make_kernel(tmp_path))
    fresh_process()
    monkeypatch.setenv(accel.PROBE_ENV, "1")
    d = accel.decide(make_kernel(tmp_path))
    assert (d.accel, d.source, d.reason) == ("tcg", "probe", "console silent")
    assert len(machine["probes"]) == 1
    monkeypatch.delenv(accel.PROBE_ENV)
    fresh_process()
    assert accel.decide(make_kernel(tmp_path)).reason == "console silent"


def test_without_dev_kvm_tcg_without_a_boot_and_not_cached(machine, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(accel, "KVM_DEVICE", tmp_path / "no-kvm")
    d = accel.decide(make_kernel(tmp_path))
    assert (d.accel, d.source, machine["probes"]) == ("tcg", "kvm device", [])
    assert not accel.cache_path().exists()


def test_a_cached_kvm_answer_is_not_used_once_dev_kvm_is_not_ours(machine, monkeypatch, tmp_path):
    accel.decide(make_kernel(tmp_path))
    fresh_process()
    monkeypatch.setattr(accel.os, "access", lambda *a: False)
    d = accel.decide(make_kernel(tmp_path))
    assert (d.accel, d.source) == ("tcg", "kvm device") and "not readable" in d.reason


def test_an_unbootable_image_is_not_cached(machine, monkeypatch, tmp_path) -> None:
    machine["answer"] = (False, f"{kvm_probe.NO_IMAGE}: /x")
    accel.decide(make_kernel(tmp_path))
    fresh_process()
    machine["answer"] = (True, "ran")
    assert accel.decide(make_kernel(tmp_path)).accel == "kvm"


def test_a_stopped_probe_is_neither_cached_nor_kept(machine, tmp_path) -> None:
    stop = threading.Event()
    stop.set()
    machine["answer"] = (False, "the KVM probe was interrupted; using TCG")
    accel.decide(make_kernel(tmp_path), stop=stop)
    assert not accel.cache_path().exists()
    machine["answer"] = (True, "ran")
    assert accel.decide(make_kernel(tmp_path)).accel == "kvm"


def test_parallel_callers_share_one_probe(machine, tmp_path) -> None:
    kernel = make_kernel(tmp_path)
    out: list[Decision] = []
    threads = [threading.Thread(target=lambda: out.append(accel.decide(kernel))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 4 and len(set(out)) == 1 and len(machine["probes"]) == 1


# --- the stall rule -----------------------------------------------------------------------


def test_stall_rule() -> None:
    lim = ProbeLimits(quiet_s=5, banner_s=10)
    assert kvm_probe.stall_reason("Probing EDD", 4.0, 4.0, lim) == ""
    assert "silent" in kvm_probe.stall_reason("Probing EDD", 6.0, 5.5, lim)
    assert "Linux version" in kvm_probe.stall_reason("dots", 10.5, 0.1, lim)
    assert kvm_probe.stall_reason("[0.0] Linux version 6.1", 20.0, 1.0, lim) == ""


# --- the runner and the manifest ----------------------------------------------------------


def test_prepare_decides_once_for_every_kernel_and_the_manifest_records_it(
    machine, tmp_path
) -> None:
    run_dir = tmp_path / "run"
    rundir.write_json(run_dir / "manifest.json", {"run_id": "run"})
    kernels = [make_kernel(tmp_path), make_kernel(tmp_path, "6.12", "6.12.1-amd64")]
    runner = VngRunner()
    batches = [Batch(k, ()) for k in kernels]
    accel.decide_for_run(batches, lambda b: runner, run_dir, threading.Event())
    assert machine["probes"] == ["6.1.0-9-amd64"]
    assert runner.choose_accelerator(kernels[1]) == ("kvm", "a KVM guest ran")
    doc = rundir.read_json(run_dir / "manifest.json")
    assert doc["accelerator"]["accel"] == "kvm" and doc["accelerator"]["from_cache"] is False
    assert doc["accelerator"]["key"]["kvm_device"] == "10:232"
    assert set(doc["accel_choices"]) == {"6.1.0-9-amd64", "6.12.1-amd64"}
    assert machine["probes"] == ["6.1.0-9-amd64"]


def test_prepare_with_an_explicit_accelerator_boots_nothing(machine, tmp_path) -> None:
    runner = VngRunner(accel="tcg")
    runner.prepare([Batch(make_kernel(tmp_path), ())])
    assert machine["probes"] == [] and runner.accel_decision is None
    assert runner.accel_choices == {"6.1.0-9-amd64": ("tcg", "accelerator tcg was asked for")}


def test_runners_without_a_prepare_hook_are_left_alone(tmp_path) -> None:
    class Plain:
        name = "host"

    accel.decide_for_run([Batch(make_kernel(tmp_path), ())], lambda b: Plain(), tmp_path)
    assert not (tmp_path / "manifest.json").exists()


# --- the probe boot, with a stand-in for vng and QEMU ---------------------------------------

FAKE_VNG = textwrap.dedent(
    """
    import os, subprocess, sys, time
    mode, probe_dir, qemu = sys.argv[1:4]
    print("virtme: generating modules.dep file", flush=True)
    time.sleep(0.5)
    if mode == "no-qemu":
        sys.exit("/bin/sh: 1: virtme-run: not found")
    subprocess.Popen([qemu, "-c", "sleep 300; :", probe_dir])
    print("Probing EDD (edd=off to disable)... ok", flush=True)
    if mode == "msr":
        sys.exit("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x0")
    while mode == "dots":
        print(".", flush=True)
        time.sleep(0.2)
    if mode == "ok":
        print("[    0.000000] Linux version 6.1.0-9-amd64", flush=True)
        open(os.path.join(probe_dir, "ran-under-kvm"), "w").close()
    time.sleep(300)
    """
)
FAST = ProbeLimits(deadline_s=20.0, quiet_s=1.0, banner_s=2.0)


def fake_probe(monkeypatch, tmp_path: Path, mode: str) -> tuple[bool, str, float]:
    """_boot_probe with vng replaced by a script that starts a process named like QEMU."""
    script = tmp_path / "fake_vng.py"
    script.write_text(FAKE_VNG)
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.symlink_to("/bin/sh")
    dirs: list[Path] = []

    def argv(**kw: Any) -> list[str]:
        dirs.extend(kw["rwdirs"])
        return [sys.executable, str(script), mode, str(kw["rwdirs"][0]), str(qemu)]

    monkeypatch.setattr(kvm_probe, "vng_argv", argv)
    started = time.monotonic()
    ok, why = accel._boot_probe(make_kernel(tmp_path), FAST.deadline_s, limits=FAST)
    took = time.monotonic() - started
    assert procs.find_by_marker(str(dirs[0])) == [] and not dirs[0].exists()
    return ok, why, took


def test_probe_that_runs_its_command_says_kvm(monkeypatch, tmp_path) -> None:
    ok, why, _ = fake_probe(monkeypatch, tmp_path, "ok")
    assert ok and "ran a command" in why


def test_probe_whose_console_goes_silent_stops_early(monkeypatch, tmp_path) -> None:
    ok, why, took = fake_probe(monkeypatch, tmp_path, "silent")
    assert not ok and "console silent" in why and took < 8.0


def test_probe_without_a_kernel_banner_stops_early(monkeypatch, tmp_path) -> None:
    ok, why, took = fake_probe(monkeypatch, tmp_path, "dots")
    assert not ok and '"Linux version"' in why and took < 9.0


def test_probe_where_qemu_fails_says_why(monkeypatch, tmp_path) -> None:
    ok, why, _ = fake_probe(monkeypatch, tmp_path, "msr")
    assert not ok and "failed to set MSR" in why
    assert not why.startswith(kvm_probe.INCONCLUSIVE)


def test_probe_where_qemu_never_started_is_inconclusive(monkeypatch, tmp_path) -> None:
    ok, why, _ = fake_probe(monkeypatch, tmp_path, "no-qemu")
    assert not ok and why.startswith(kvm_probe.NO_QEMU) and "virtme-run" in why
