"""Decide between KVM and TCG once per machine, by booting a kernel, not by looking at /dev/kvm.

On PVM hosts (`kvm_pvm`) /dev/kvm exists and KVM_CREATE_VM succeeds, yet an unmodified
distro kernel cannot run: with vng's `-cpu host` QEMU aborts at once ("failed to set
MSR 0x10a"), with other CPU models the guest dies in its decompressor with
`KVM: emulation failure` and QEMU sits there until killed. Such a host's CPU shows no
vmx/svm flag, so that alone answers TCG without a boot; otherwise the answer is a real
boot that writes a marker file through a --rwdir, stopped as soon as the console shows
it is going nowhere.

The answer belongs to the machine, not to a kernel: it is kept on disk (`cache_path()`),
keyed by what it depends on (`HostKey`), written atomically under a file lock so that
parallel runs wait for one probe, and read back by later runs while the key matches.
`KMATRIX_ACCEL_PROBE=1` boots a probe even when the CPU flags say no, and replaces the
cached answer.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matrix.model import Batch, ResolvedKernel
from matrix.run import rundir
from matrix.runners.kvm_probe import INCONCLUSIVE, ProbeLimits
from matrix.runners.kvm_probe import boot_probe as _boot_probe

_CACHE: dict[tuple[str, str], tuple[bool, str]] = {}
_LOCK = threading.Lock()
_DECIDE_LOCK = threading.Lock()
KVM_DEVICE = Path("/dev/kvm")
CPUINFO = Path("/proc/cpuinfo")
KEY_FLAGS = ("hypervisor", "svm", "vmx")
CACHE_ENV = "KMATRIX_ACCEL_CACHE"
PROBE_ENV = "KMATRIX_ACCEL_PROBE"
MAX_CACHE_BYTES = 16 * 1024
"""A cache file larger than this is not ours (or is damaged): refused unread."""
LOCK_WAIT_S = 120.0
"""Longest wait for another process's probe; then decide alone rather than hang."""
FORMAT = 1


@dataclass(frozen=True)
class HostKey:
    """What the accelerator answer depends on; a cached answer holds while all match."""

    host_kernel: str
    qemu: str
    cpu_flags: tuple[str, ...]
    kvm_device: str
    """"absent", or the device number as "major:minor"."""

    def to_doc(self) -> dict[str, Any]:
        return {**asdict(self), "cpu_flags": list(self.cpu_flags)}


@dataclass(frozen=True)
class Decision:
    """The machine's accelerator, why, and how this process came by it."""

    accel: str
    reason: str
    source: str
    """"probe" (a boot decided), "cpu flags" (no vmx/svm) or "kvm device" (absent or
    not usable by this user)."""
    key: HostKey
    decided_at: str
    from_cache: bool = False
    decide_s: float = 0.0
    """Seconds this process spent getting the answer (reading the cache, or probing)."""

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["key"] = self.key.to_doc()
        return doc


_DECIDED: list[Decision] = []
"""This process's answer, once it has a final one."""


def cache_path() -> Path:
    """~/.cache/kmatrix/accel.json, or the file `KMATRIX_ACCEL_CACHE` names."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path.home() / ".cache" / "kmatrix" / "accel.json"


def probe_asked() -> bool:
    return os.environ.get(PROBE_ENV, "").strip().lower() in ("1", "yes", "true", "on")


# --- the key ------------------------------------------------------------------------------


def host_key() -> HostKey:
    return HostKey(platform.release(), qemu_version(), cpu_flags(), kvm_device())


def qemu_version() -> str:
    """The first line of `qemu-system-x86_64 --version`, "" without QEMU."""
    exe = shutil.which("qemu-system-x86_64")
    if not exe:
        return ""
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.splitlines()[0].strip() if out.stdout else ""


def cpu_flags(path: Path | None = None) -> tuple[str, ...]:
    """Those of vmx/svm/hypervisor that the first CPU's flags line shows, sorted."""
    try:
        with open(path or CPUINFO, errors="replace") as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return ()
    shown = set(line.partition(":")[2].split())
    return tuple(f for f in KEY_FLAGS if f in shown)


def kvm_device() -> str:
    try:
        rdev = KVM_DEVICE.stat().st_rdev
    except OSError:
        return "absent"
    return f"{os.major(rdev)}:{os.minor(rdev)}"


# --- the cache file -----------------------------------------------------------------------


def read_cached(path: Path, key: HostKey) -> Decision | None:
    """The cached decision for `key`; None when absent, for another key, or not sound."""
    doc = _read_bounded_json(path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return None
    if doc.get("key") != key.to_doc():
        return None
    d = doc.get("decision")
    if not isinstance(d, dict) or d.get("accel") not in ("kvm", "tcg"):
        return None
    fields = (d.get("reason"), d.get("source"), d.get("decided_at"))
    if not all(isinstance(v, str) for v in fields):
        return None
    return Decision(d["accel"], d["reason"], d["source"], key, d["decided_at"], from_cache=True)


def _read_bounded_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CACHE_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_CACHE_BYTES:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def write_cached(path: Path, decision: Decision) -> None:
    """Atomically (write, then rename); a failure to write costs only the next probe."""
    doc = {
        "format": FORMAT,
        "key": decision.key.to_doc(),
        "decision": {
            "accel": decision.accel,
            "reason": decision.reason,
            "source": decision.source,
            "decided_at": decision.decided_at,
        },
    }
    with suppress(OSError):
        rundir.write_json(path, doc)


@contextmanager
def file_lock(path: Path, stop: threading.Event | None = None) -> Iterator[bool]:
    """Hold an exclusive lock on `path`; yields False when it could not be had in time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    try:
        yield _acquire(fd, stop)
    finally:
        os.close(fd)


def _acquire(fd: int, stop: threading.Event | None) -> bool:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                return False
            time.sleep(0.1)


# --- the decision -------------------------------------------------------------------------


def decide(
    kernel: ResolvedKernel | None,
    *,
    stop: threading.Event | None = None,
    limits: ProbeLimits | None = None,
) -> Decision:
    """The machine's accelerator: this process's earlier answer, the cached one, or a new one.

    Threads wait for one another and processes for one probe (the file lock); `kernel`
    is what a probe boots, when one is needed.
    """
    with _DECIDE_LOCK:
        if _DECIDED:
            return _DECIDED[0]
        started = time.monotonic()
        decision, final = _decide_once(kernel, stop, limits or ProbeLimits())
        decision = replace(decision, decide_s=round(time.monotonic() - started, 3))
        if final and not _stopped(stop):
            _DECIDED.append(decision)
        return decision


def _stopped(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def _decide_once(
    kernel: ResolvedKernel | None, stop: threading.Event | None, limits: ProbeLimits
) -> tuple[Decision, bool]:
    """(decision, final): a decision that is not final (nothing could be booted to
    probe with, or the run was stopped) is neither cached nor kept for this process.
    A /dev/kvm that is absent or not ours is checked first: a cached "kvm" would not do."""
    key, path, forced = host_key(), cache_path(), probe_asked()
    unusable = _kvm_unusable()
    if unusable:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        return Decision("tcg", f"{unusable}; using TCG", "kvm device", key, now), True
    cached = None if forced else read_cached(path, key)
    if cached is not None:
        return cached, True
    with file_lock(path.with_name(path.name + ".lock"), stop):
        cached = None if forced else read_cached(path, key)
        if cached is not None:
            return cached, True
        decision, keep = fresh_decision(key, kernel, forced, stop, limits)
        if keep and not _stopped(stop):
            write_cached(path, decision)
        return decision, keep


def fresh_decision(
    key: HostKey,
    kernel: ResolvedKernel | None,
    forced: bool,
    stop: threading.Event | None,
    limits: ProbeLimits,
) -> tuple[Decision, bool]:
    """(decision, worth caching): without a boot where the key already tells, else a probe."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if not forced and not {"vmx", "svm"} & set(key.cpu_flags):
        why = (
            "the CPU shows no vmx or svm flag, so KVM cannot run a stock kernel here "
            f"(e.g. a PVM host); using TCG without a probe ({PROBE_ENV}=1 probes anyway)"
        )
        return Decision("tcg", why, "cpu flags", key, now), True
    if kernel is None:
        return Decision("tcg", "no kernel to probe KVM with; using TCG", "probe", key, now), False
    ok, why = _boot_probe(kernel, limits.deadline_s, stop=stop, limits=limits)
    conclusive = not why.startswith(INCONCLUSIVE)
    return Decision("kvm" if ok else "tcg", why, "probe", key, now), conclusive


def clear_cache() -> None:
    """Forget this process's answers (tests, or a long-lived process after a host change)."""
    with _LOCK:
        _CACHE.clear()
    with _DECIDE_LOCK:
        _DECIDED.clear()


def decide_for_run(
    batches: Sequence[Batch],
    runner_for: Callable[[Batch], Any],
    run_dir: Path,
    stop: threading.Event | None = None,
) -> None:
    """Before any batch starts: each runner with a `prepare` hook gets its batches (the vng
    runner decides its accelerator then, so no probe VM shares the CPU with a batch's VM),
    and the run's manifest records what was decided."""
    groups: dict[int, tuple[Any, list[Batch]]] = {}
    for b in batches:
        runner = runner_for(b)
        if callable(getattr(runner, "prepare", None)):
            groups.setdefault(id(runner), (runner, []))[1].append(b)
    for runner, own in groups.values():
        runner.prepare(own, stop)
        record(run_dir, runner)


def record(run_dir: Path, runner: Any) -> None:
    """manifest.json: the machine's decision and each kernel's (accelerator, why)."""
    path = run_dir / "manifest.json"
    if not path.is_file():
        return
    doc = rundir.read_json(path)
    decision = getattr(runner, "accel_decision", None)
    doc["accelerator"] = decision.to_doc() if decision is not None else None
    choices = getattr(runner, "accel_choices", {})
    doc["accel_choices"] = {rel: {"accel": a, "reason": w} for rel, (a, w) in choices.items()}
    rundir.write_json(path, doc)


# --- the probe boot -----------------------------------------------------------------------


def probe_kvm(kernel: ResolvedKernel, timeout_s: float = 30.0) -> tuple[bool, str]:
    """(True, why) when `kernel` boots and runs a command under KVM, else (False, why).

    A real boot every time it is asked for a new kernel (`decide` is the per-machine
    answer). Concurrent callers share one probe: the lock is held across the boot.
    """
    unusable = _kvm_unusable()
    if unusable:
        return False, unusable
    key = (kernel.release, str(kernel.vmlinuz))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _boot_probe(kernel, timeout_s)
        return _CACHE[key]


def _kvm_unusable() -> str:
    if not KVM_DEVICE.exists():
        return f"{KVM_DEVICE} is absent"
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return f"{KVM_DEVICE} is not readable and writable by this user"
    return ""
