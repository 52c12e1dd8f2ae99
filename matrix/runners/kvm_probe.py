"""One KVM probe boot: the kernel under `-accel kvm` with its own short deadline, which
answers whether KVM really runs a stock kernel here (see `matrix.runners.accel`, which decides
when to probe and caches the answer). A probe that cannot tell (no image, QEMU never
started, stopped) says so, and is never cached.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from matrix.model import ResolvedKernel
from matrix.run import procs
from matrix.runners.vng_cmd import is_bzimage, stage_kernel, vng_argv, vng_env

FAILURE_SIGNS = ("KVM: emulation failure", "failed to set MSR", "kvm run failed")


@dataclass(frozen=True)
class ProbeLimits:
    """When a probe boot gives up. Under working KVM a stock kernel prints its banner
    within a second of QEMU starting and the console keeps growing until the command
    runs; a PVM guest prints a line of real-mode setup and then nothing, for ever."""

    deadline_s: float = 30.0
    quiet_s: float = 5.0
    """The console has not grown for this long since QEMU started."""
    banner_s: float = 10.0
    """No "Linux version" line this long after QEMU started."""


NO_IMAGE = "no bootable kernel image to probe with"
NO_QEMU = "the KVM probe's QEMU never started"
INCONCLUSIVE = (NO_IMAGE, NO_QEMU)
"""Probe answers that say nothing about KVM (a broken image or vng): never cached."""


def boot_probe(
    kernel: ResolvedKernel,
    timeout_s: float,
    *,
    stop: threading.Event | None = None,
    limits: ProbeLimits | None = None,
) -> tuple[bool, str]:
    if kernel.vmlinuz is None or not is_bzimage(Path(kernel.vmlinuz)):
        return False, f"{NO_IMAGE}: {kernel.vmlinuz}"
    limits = replace(limits or ProbeLimits(), deadline_s=timeout_s)
    probe_dir = Path(tempfile.mkdtemp(prefix="kmatrix-kvm-probe-"))
    marker, log = probe_dir / "ran-under-kvm", probe_dir / "console.log"
    argv = vng_argv(
        image=stage_kernel(kernel, probe_dir / "kernel"),
        accel="kvm",
        memory_mb=512,
        cpus=1,
        rwdirs=[probe_dir],
        exec_cmd=f"touch {marker}",
    )
    proc = procs.start_session(argv, log, cwd=probe_dir, env=vng_env(argv[0]))
    try:
        return _await_probe(proc, probe_dir, marker, log, limits, stop)
    finally:
        procs.kill_group(proc)
        procs.kill_leftovers(str(probe_dir))
        shutil.rmtree(probe_dir, ignore_errors=True)


def _await_probe(
    proc: procs.Session,
    probe_dir: Path,
    marker: Path,
    log: Path,
    limits: ProbeLimits,
    stop: threading.Event | None,
) -> tuple[bool, str]:
    """Wait for an answer, a console that stopped growing once QEMU ran, or the deadline."""
    started = time.monotonic()
    qemu_at: float | None = None
    grew_at, size = started, -1
    while True:
        now = time.monotonic()
        text, grown = _read_log(log)
        answer = _settled(proc, marker, log, text, qemu_at is not None, stop, now - started)
        if answer is not None:
            return answer
        if grown != size:
            grew_at, size = now, grown
        if qemu_at is None and _qemu_started(probe_dir):
            qemu_at = grew_at = now
        stalled = qemu_at is not None and stall_reason(text, now - qemu_at, now - grew_at, limits)
        if stalled:
            return (
                False,
                f"the KVM probe made no progress ({stalled}, {now - started:.1f}s); using TCG",
            )
        if now - started > limits.deadline_s:
            what = "the KVM probe did not finish" if qemu_at is not None else NO_QEMU
            return False, f"{what} within {limits.deadline_s:.0f}s; using TCG"
        time.sleep(0.2)


def _settled(
    proc: procs.Session,
    marker: Path,
    log: Path,
    text: str,
    qemu_ran: bool,
    stop: threading.Event | None,
    elapsed: float,
) -> tuple[bool, str] | None:
    """The marker, a failure sign, the VM's exit or a stop request; None while none of them."""
    if marker.exists():
        return True, f"a KVM guest ran a command after {elapsed:.1f}s"
    exited = proc.poll() is not None
    if exited:
        proc.pump.join(timeout=2.0)
        text = _read_log(log)[0]
    sign = next((s for s in FAILURE_SIGNS if s in text), None)
    if sign:
        return False, f"KVM does not run this kernel ({sign}) after {elapsed:.1f}s; using TCG"
    if exited:
        what = "the KVM probe VM exited without running its command" if qemu_ran else NO_QEMU
        return False, f"{what} ({_last_line(text)}); using TCG"
    if stop is not None and stop.is_set():
        return False, "the KVM probe was interrupted; using TCG"
    return None


def stall_reason(text: str, since_qemu_s: float, quiet_s: float, limits: ProbeLimits) -> str:
    """Why a probe whose QEMU has run `since_qemu_s` is going nowhere; "" while it may still run."""
    if "Linux version" not in text and since_qemu_s > limits.banner_s:
        return f'no "Linux version" line {limits.banner_s:g}s after QEMU started'
    if quiet_s > limits.quiet_s:
        return f"console silent for {limits.quiet_s:g}s"
    return ""


def _qemu_started(probe_dir: Path) -> bool:
    """vng prepares (depmod, an initramfs) before QEMU runs; only QEMU's time counts."""
    for pid in procs.find_by_marker(str(probe_dir)):
        try:
            if Path(f"/proc/{pid}/comm").read_text().startswith("qemu"):
                return True
        except OSError:
            continue
    return False


def _read_log(log: Path, limit: int = 1 << 20) -> tuple[str, int]:
    """(the first `limit` bytes as text, the file's size): the size tells growth."""
    try:
        with open(log, "rb") as f:
            return f.read(limit).decode(errors="replace"), os.fstat(f.fileno()).st_size
    except OSError:
        return "", -1


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"
