"""Decide between KVM and TCG by booting the kernel, not by looking at /dev/kvm.

On PVM hosts (`kvm_pvm`) /dev/kvm exists and KVM_CREATE_VM succeeds, yet an unmodified
distro kernel cannot run: with vng's `-cpu host` QEMU aborts at once ("failed to set
MSR 0x10a"), with other CPU models the guest dies in its decompressor with
`KVM: emulation failure` and QEMU sits there until killed. So the only trustworthy
answer is a real boot that writes a marker file through a --rwdir, under a deadline
of its own. The answer is cached per process and per kernel, so a run probes once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from matrix import procs
from matrix.model import ResolvedKernel

_CACHE: dict[tuple[str, str], tuple[bool, str]] = {}
_LOCK = threading.Lock()
KVM_DEVICE = Path("/dev/kvm")
FAILURE_SIGNS = ("KVM: emulation failure", "failed to set MSR", "kvm run failed")


def probe_kvm(kernel: ResolvedKernel, timeout_s: float = 30.0) -> tuple[bool, str]:
    """(True, why) when `kernel` boots and runs a command under KVM, else (False, why).

    Concurrent callers share one probe: the lock is held across the boot so that
    parallel batches of the same kernel do not each boot a probe VM.
    """
    if not KVM_DEVICE.exists():
        return False, f"{KVM_DEVICE} is absent"
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return False, f"{KVM_DEVICE} is not readable and writable by this user"
    key = (kernel.release, str(kernel.vmlinuz))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _boot_probe(kernel, timeout_s)
        return _CACHE[key]


def clear_cache() -> None:
    """Forget earlier answers (tests, or a long-lived process after a host change)."""
    with _LOCK:
        _CACHE.clear()


def _boot_probe(kernel: ResolvedKernel, timeout_s: float) -> tuple[bool, str]:
    # Imported here: the runner imports this module to choose its accelerator.
    from matrix.runners.vng import is_bzimage, stage_kernel, vng_argv

    if kernel.vmlinuz is None or not is_bzimage(Path(kernel.vmlinuz)):
        return False, f"no bootable kernel image to probe with: {kernel.vmlinuz}"
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
    started = time.monotonic()
    proc = procs.start_session(argv, log, cwd=probe_dir)
    try:
        return _await_probe(proc, marker, log, started, timeout_s)
    finally:
        procs.kill_group(proc)
        procs.kill_leftovers(str(probe_dir))
        shutil.rmtree(probe_dir, ignore_errors=True)


def _await_probe(
    proc: procs.Session, marker: Path, log: Path, started: float, timeout_s: float
) -> tuple[bool, str]:
    """Wait for the marker, a sign of failure, QEMU's exit, or the deadline."""
    while True:
        elapsed = time.monotonic() - started
        if marker.exists():
            return True, f"a KVM guest ran a command after {elapsed:.1f}s"
        text = log.read_text(errors="replace")
        sign = next((s for s in FAILURE_SIGNS if s in text), None)
        if sign:
            return False, f"KVM does not run this kernel ({sign}) after {elapsed:.1f}s; using TCG"
        if proc.poll() is not None:
            last = _last_line(text)
            return False, f"the KVM probe VM exited without running its command ({last}); using TCG"
        if elapsed > timeout_s:
            return False, f"the KVM probe did not finish within {timeout_s:.0f}s; using TCG"
        time.sleep(0.2)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"
