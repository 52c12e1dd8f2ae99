"""The virtme-ng command line: where vng is, how a kernel is laid out for it, and the
flags every boot needs (see `matrix.runners.vng` for why each one). Shared by the vng
runner and the KVM probe (`matrix.runners.accel`), which boot the same way.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from matrix.errors import PrerequisiteError
from matrix.model import ResolvedKernel
from matrix.run import procs


def find_tool(name: str) -> str | None:
    """vng from our own environment first (pyenv shims hide it from PATH), else PATH/sbin."""
    beside = Path(sys.executable).parent / name
    if name == "vng" and beside.is_file():
        return str(beside)
    return procs.find_executable(name)


def vng_env(vng: str) -> dict[str, str]:
    """Our environment with PATH starting at the directory of the vng that runs: vng
    starts its helpers (virtme-run, virtme-ng-init...) by name, and a venv's bin is
    often not on PATH (kmatrix run by its path, an SSH session). The sbin directories
    come last, for depmod and modprobe, as `check` finds them."""
    dirs = [str(Path(vng).parent)] if os.path.isabs(vng) else []
    dirs += os.environ.get("PATH", os.defpath).split(os.pathsep) + list(procs.SBIN_DIRS)
    path = os.pathsep.join(dict.fromkeys(d for d in dirs if d))
    return dict(os.environ, PATH=path)


def is_bzimage(path: Path) -> bool:
    """True when `path` has the x86 boot header: QEMU hangs forever on anything else."""
    try:
        with open(path, "rb") as f:
            f.seek(0x202)
            return f.read(4) == b"HdrS"
    except OSError:
        return False


def ensure_modules_dep(kernel: ResolvedKernel, staged: Path) -> None:
    """Run the depmod vng would run at boot, once and under a lock: two batches of one
    kernel may boot together (a split tail), and two depmods writing one tree at once
    could leave a broken modules.dep."""
    if kernel.modules_dir is None:
        return
    modules = Path(kernel.modules_dir)
    if (modules / "modules.dep").is_file():
        return
    depmod = find_tool("depmod")
    if depmod is None:
        return
    with open(modules.parent / f".{modules.name}.depmod.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (modules / "modules.dep").is_file():
            subprocess.run(
                [depmod, "-a", "-b", str(staged), kernel.release],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=300,
            )


def stage_kernel(kernel: ResolvedKernel, dest: Path, boot: Path | None = None) -> Path:
    """Lay out symlinks the way vng looks for a kernel and its modules; return the image.
    `boot` is the file to boot in place of the bzImage (its PVH ELF, `matrix.runners.pvh`)."""
    if kernel.vmlinuz is None:
        raise PrerequisiteError(f"kernel {kernel.spec.name} has no vmlinuz to boot")
    modules = dest / "lib" / "modules"
    modules.mkdir(parents=True, exist_ok=True)
    (dest / "boot").mkdir(exist_ok=True)
    image = dest / "boot" / f"vmlinuz-{kernel.release}"
    _symlink(Path(boot or kernel.vmlinuz).resolve(), image)
    if kernel.modules_dir is not None:
        _symlink(Path(kernel.modules_dir).resolve(), modules / kernel.release)
    return image


def _symlink(target: Path, link: Path) -> None:
    link.unlink(missing_ok=True)
    link.symlink_to(target)


def accel_flags(accel: str) -> list[str]:
    """vng flags that pin the accelerator, so the recorded one is the one used."""
    if accel == "kvm":
        return ["--qemu-opts=-machine accel=kvm"]
    return ["--disable-kvm"]


def vng_argv(
    *, image: Path, accel: str, memory_mb: int, cpus: int, rwdirs: Iterable[Path], exec_cmd: str
) -> list[str]:
    """The full vng command line (see the module docstring for why each flag)."""
    argv = [find_tool("vng") or "vng", "--run", str(image), "--force-9p", "--verbose"]
    argv += ["--user", "root", "--memory", str(memory_mb), "--cpus", str(cpus)]
    argv += [f"--rwdir={d}" for d in rwdirs]
    argv += ["--exec", exec_cmd]
    return argv + accel_flags(accel)
