"""Reading files a guest could have written: bounded, never through a link, never blocking.

A batch's work directory is shared with the guest (9p --rwdir), so the guest can put
anything there in place of a result, a marker or the console log: a symbolic link to
/etc/shadow, a FIFO that blocks a reader forever, a file of many gigabytes, JSON nested
deep enough to exhaust the parser's stack. Every host-side read of such a file goes
through here: opened with O_NOFOLLOW | O_NONBLOCK (no component below the trusted root
may be a link), checked with fstat to be a regular file, and read up to a bound.

JSON from a guest is strict: NaN, Infinity and numbers that overflow a float
(e.g. 1e999) are refused rather than mapped to None, because the real agent never
writes them and a document holding one is not a measurement this tool made.
Stdlib only: the remote batch runs this module on SSH hosts.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

MAX_RESULT_BYTES = 16 << 20
"""A real result is a few hundred KB at most (series of a long window)."""
MAX_CONSOLE_BYTES = 16 << 20
"""A console log copied into the run keeps at most its last 16 MiB."""
MAX_SCAN_BYTES = 4 << 20
"""One scan of a growing console reads this much at most; the next scan goes on."""
MAX_DEPTH = 64
"""Nesting a result may have; the agent's own documents are five levels deep."""
_CHUNK = 1 << 20
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class GuestFileError(OSError):
    """A guest-written path that is not a plain file of a sane size; never read."""


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def _refuse(path: Path, mode: int) -> GuestFileError:
    return GuestFileError(f"{path.name} is {_kind(mode)}, not a regular file")


def _open_dir_fd(root: Path, parts: tuple[str, ...]) -> int:
    """The directory `root/parts...`, each part opened without following a link."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise GuestFileError(f"{part} is not a plain directory") from None
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path: Path, root: Path | None = None) -> int:
    """A read-only descriptor of `path` if it is a regular file, else GuestFileError.

    `root` is the trusted directory the guest cannot replace; every component of `path`
    below it is opened without following links (default: the parent, so only the last).
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    rel = path.relative_to(root).parts
    dir_fd = _open_dir_fd(root, rel[:-1])
    try:
        fd = os.open(rel[-1], _FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise GuestFileError(f"{path.name} is a symbolic link, not a regular file") from None
    finally:
        os.close(dir_fd)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _refuse(path, mode)
    return fd


def read_bounded(path: Path, limit: int = MAX_RESULT_BYTES, root: Path | None = None) -> bytes:
    """The whole file, or GuestFileError if it is larger than `limit` bytes."""
    fd = open_regular(path, root)
    try:
        data = _read_fd(fd, 0, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise GuestFileError(f"{Path(path).name} is larger than {limit:,} bytes")
    return data


def read_from(path: Path, offset: int, limit: int = MAX_SCAN_BYTES) -> bytes:
    """At most `limit` bytes from `offset`: the new part of a growing log."""
    fd = open_regular(path)
    try:
        return _read_fd(fd, offset, limit)
    finally:
        os.close(fd)


def read_tail(path: Path, limit: int) -> bytes:
    """The last `limit` bytes (all of a shorter file)."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        return _read_fd(fd, max(0, size - limit), limit)
    finally:
        os.close(fd)


def copy_tail(src: Path, dest: Path, limit: int = MAX_CONSOLE_BYTES) -> bool:
    """Copy the last `limit` bytes of `src` to `dest`; False (nothing written) when `src`
    is missing or not a regular file. A cut copy starts with a line saying so."""
    try:
        fd = open_regular(src)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - limit)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as out:
            if start:
                out.write(f"# kmatrix: log cut to its last {limit:,} of {size:,} bytes\n".encode())
            _copy_fd(fd, out, start, limit)
    finally:
        os.close(fd)
    return True


def is_regular(path: Path) -> bool:
    """True only for a regular file itself (lstat: a link to one does not count)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def lexists(path: Path) -> bool:
    """Whether anything, a dangling link included, is at `path`."""
    try:
        os.lstat(path)
    except OSError:
        return False
    return True


def _chunks(fd: int, offset: int, limit: int) -> Iterator[bytes]:
    """At most `limit` bytes of `fd` from `offset`, a chunk at a time, until its end."""
    done = 0
    while done < limit:
        chunk = os.pread(fd, min(_CHUNK, limit - done), offset + done)
        if not chunk:
            return
        yield chunk
        done += len(chunk)


def _read_fd(fd: int, offset: int, limit: int) -> bytes:
    return b"".join(_chunks(fd, offset, limit))


def _copy_fd(src: int, dest: BinaryIO, offset: int, limit: int) -> None:
    for chunk in _chunks(src, offset, limit):
        dest.write(chunk)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} overflows a float")
    return value


def parse_json(data: bytes | str) -> Any:
    """Strict JSON: ValueError for NaN/Infinity, float overflow, bad UTF-8, or nesting
    deeper than MAX_DEPTH (checked without recursion, after the parser's own limit)."""
    try:
        doc = json.loads(data, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None
    if depth(doc) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return doc


def depth(doc: Any) -> int:
    """How deeply lists and objects nest in `doc` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in value)
    return deepest
