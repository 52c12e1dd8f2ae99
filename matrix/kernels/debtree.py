"""Unpack kernel packages into a private tree and keep nothing that reaches outside it.

A package comes from a mirror we only partly trust: after `dpkg-deb -x` the tree is
walked, and a link that is absolute or leads out of it, or a device, FIFO or socket,
refuses the whole package; paths into it are resolved with every link followed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from matrix.errors import CatalogError


def extract(debs: list[Path], final: Path, what: str) -> tuple[Path, Path]:
    """Unpack into a private (0700) temp dir next to `final`, check it, rename it in;
    return (vmlinuz, modules dir) inside `final`. `what` names the packages in errors."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        for deb in debs:
            proc = subprocess.run(
                ["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True, text=True
            )
            if proc.returncode:
                raise CatalogError(f"{what}: dpkg-deb -x {deb.name} failed: {proc.stderr.strip()}")
        if problem := tree_problem(tmp):
            raise CatalogError(f"{what}: {problem}; refusing it")
        found = find_kernel(tmp)
        if found is None:
            raise CatalogError(
                f"{what} holds no vmlinuz with a modules dir (a meta package? in "
                "sid/experimental the kernel is in linux-binary-*)"
            )
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / found[0].relative_to(tmp), final / found[1].relative_to(tmp)


def within(path: Path | str, root: Path | str) -> bool:
    """Whether `path`, with every link followed, stays inside `root`."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, top]) == top


def child(root: Path, name: str, kernel: str) -> Path:
    """root/name, refused unless it is a direct child of `root` once links are followed."""
    path = root / name
    if path.parent != root or name == ".." or not within(path, root):
        raise CatalogError(
            f"kernel {kernel}: cache path {str(path)!r} would lie outside {root}; refusing it"
        )
    return path


def tree_problem(root: Path) -> str:
    """Why an extracted tree is unsafe to keep, or "": a link that is absolute or leads out
    of the tree, or a device, FIFO or socket. Setuid/setgid bits are dropped on the way."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(mode):
                target = os.readlink(path)
                if os.path.isabs(target) or not within(path, root):
                    return f"{rel} is a link to {target!r}, outside the package"
            elif stat.S_ISREG(mode):
                if mode & (stat.S_ISUID | stat.S_ISGID):
                    os.chmod(path, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))
            elif not stat.S_ISDIR(mode):
                return f"{rel} is a device, FIFO or socket"
    return ""


def find_kernel(root: Path) -> tuple[Path, Path] | None:
    """(vmlinuz, modules dir) in an extracted tree, for both the classic and split layouts;
    nothing reached through a link that leads out of `root` counts."""
    for modules_root in ("usr/lib/modules", "lib/modules"):
        if not within(root / modules_root, root):
            continue
        for modules in sorted((root / modules_root).glob("*")):
            for vmlinuz in (modules / "vmlinuz", root / "boot" / f"vmlinuz-{modules.name}"):
                inside = within(modules, root) and within(vmlinuz, root)
                if inside and modules.is_dir() and vmlinuz.is_file():
                    return vmlinuz, modules
    return None


def bzimage_release(vmlinuz: Path) -> str:
    """The release string of an x86 bzImage (what `file` prints), or "" if not one."""
    with vmlinuz.open("rb") as f:
        head = f.read(0x210)
        if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
            return ""
        f.seek(int.from_bytes(head[0x20E:0x210], "little") + 0x200)
        text = f.read(256).split(b"\0", 1)[0].decode("ascii", "replace")
    return text.split(" ", 1)[0] if text else ""
