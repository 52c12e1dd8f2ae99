"""The agent's network-namespace work: unshare, bring lo up, write and read back sysctls.

Stdlib only, Python 3.8+, no `ip` or `sysctl` binary needed. `setup_namespace` runs in
the cell's forked child before its program; `read_sysctl`/`write_sysctl` also serve the
agent's leak check in the namespace it started in.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct

TYPE_CHECKING = False
"""typing costs ~0.15 s of a guest's start under TCG: its names are for checkers only."""
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
AF_INET, SOCK_DGRAM, SOCK_CLOEXEC = 2, 2, 0o2000000
NET_PREFIX = "net."
"""Sysctls under net. are per network namespace (or absent from a non-initial one)."""


def netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def normalise(text: str) -> str:
    """sysctl values compare by words: "32768\\t60999" equals "32768 60999"."""
    return " ".join(text.split())


def sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def read_sysctl(key: str) -> str | None:
    try:
        with open(sysctl_path(key)) as f:
            return normalise(f.read())
    except OSError:
        return None


def write_sysctl(key: str, value: str) -> None:
    with open(sysctl_path(key), "w") as f:
        f.write(value)


def _libc_call(name: str, *args: int) -> int:
    """A libc call that sets errno; OSError when it returns -1."""
    ret = getattr(ctypes.CDLL(None, use_errno=True), name)(*args)
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}(): {os.strerror(err)}")
    return ret


def unshare_net() -> None:
    """unshare(CLONE_NEWNET) through libc: os.unshare exists only from Python 3.12."""
    _libc_call("unshare", CLONE_NEWNET)


def loopback_up() -> None:
    """Set IFF_UP on lo with SIOCSIFFLAGS, on a socket from libc's socket(): Python's
    socket module costs the agent ~0.4 s of its start in a TCG guest (its enums, and
    selectors), ctypes is loaded anyway."""
    fd = _libc_call("socket", AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)
    try:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(fd, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(fd, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
    finally:
        os.close(fd)


def apply_sysctl(key: str, value: str) -> tuple:
    """Write one sysctl and read it back; returns (read_back, problem or None)."""
    if not os.path.exists(sysctl_path(key)):
        return None, {
            "key": key,
            "problem": "missing",
            "detail": f"{sysctl_path(key)} does not exist",
        }
    try:
        write_sysctl(key, value)
    except OSError as e:
        return read_sysctl(key), {
            "key": key,
            "problem": "write_failed",
            "detail": f"{e.strerror or e} writing {value!r}",
        }
    got = read_sysctl(key)
    if got != normalise(value):
        return got, {
            "key": key,
            "problem": "mismatch",
            "detail": f"wrote {value!r}, read back {got!r}",
        }
    return got, None


def apply_sysctls(requested: dict[str, str]) -> tuple:
    """Every sysctl of the cell, in order; returns (read_back, problems)."""
    read_back: dict[str, str | None] = {}
    problems = []
    for key, value in requested.items():
        read_back[key], problem = apply_sysctl(key, str(value))
        if problem:
            problems.append(problem)
    return read_back, problems


def refused_sysctls(requested: dict[str, Any]) -> list:
    """For a machine that is kept: a problem for each sysctl outside net.*, which a
    namespace does not confine (kernel.*, vm.*: one write changes the machine)."""
    return [
        {
            "key": key,
            "problem": "refused",
            "detail": "not a net.* sysctl: on a machine that is kept (--net-only) only "
            "per-namespace net.* keys are written",
        }
        for key in requested
        if not key.startswith(NET_PREFIX)
    ]


def setup_namespace(result: dict[str, Any], log: Callable[[str], None]) -> bool:
    """Enter a new namespace, bring lo up, set the sysctls; False if the program must
    not run (`result` then says why: status setup_failed and its detail)."""
    unshare_net()
    inode = netns_inode()
    result["netns"]["inode"] = inode
    if inode == result["netns"]["parent_inode"]:
        result["status"] = "setup_failed"
        result["status_detail"] = "unshare left the process in the starting namespace"
        return False
    loopback_up()
    log(f"netns {inode} (parent {result['netns']['parent_inode']}), lo up")
    read_back, problems = apply_sysctls(result["sysctls"]["requested"])
    result["sysctls"].update(read_back=read_back, problems=problems)
    for p in problems:
        log(f"sysctl {p['key']}: {p['problem']}: {p['detail']}")
    if problems:
        result["status"] = "setup_failed"
        result["status_detail"] = "sysctl problems: " + ", ".join(
            f"{p['key']} {p['problem']}" for p in problems
        )
        return False
    return True
