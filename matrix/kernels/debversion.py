"""Debian version ordering (Debian Policy 5.6.12), so "newest kernel" means what apt means.

Plain string or `sort -V` ordering gets `7.3~rc7` (before 7.3) and epochs wrong; calling
`dpkg --compare-versions` per pair would be slow on a whole index and needs dpkg.
"""

from __future__ import annotations

import functools
import re

_VERSION_RE = re.compile(r"^(?:(\d+):)?(.+?)(?:-([^-]+))?$")


def split(version: str) -> tuple[int, str, str]:
    """Return (epoch, upstream, revision); a missing epoch is 0 and a missing revision ""."""
    match = _VERSION_RE.match(version.strip())
    if not match:
        raise ValueError(f"not a Debian version: {version!r}")
    epoch, upstream, revision = match.groups()
    return int(epoch or 0), upstream, revision or ""


def _order(text: str, pos: int) -> int:
    """Weight of the character at `pos` in a non-digit run: ~ < end/digit < letters < others."""
    if pos >= len(text) or text[pos].isdigit():
        return 0
    char = text[pos]
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_part(left: str, right: str) -> int:
    """Compare upstream or revision strings by alternating non-digit and digit runs."""
    i = j = 0
    while i < len(left) or j < len(right):
        diff = 0
        lc, rc = _order(left, i), _order(right, j)
        while lc or rc:
            if lc != rc:
                return -1 if lc < rc else 1
            i, j = i + 1, j + 1
            lc, rc = _order(left, i), _order(right, j)
        while i < len(left) and left[i] == "0":
            i += 1
        while j < len(right) and right[j] == "0":
            j += 1
        while i < len(left) and left[i].isdigit() and j < len(right) and right[j].isdigit():
            if not diff:
                diff = ord(left[i]) - ord(right[j])
            i, j = i + 1, j + 1
        if i < len(left) and left[i].isdigit():
            return 1
        if j < len(right) and right[j].isdigit():
            return -1
        if diff:
            return -1 if diff < 0 else 1
    return 0


def compare(left: str, right: str) -> int:
    """Return -1, 0 or 1 as `left` is older than, equal to or newer than `right`."""
    le, lu, lr = split(left)
    re_, ru, rr = split(right)
    if le != re_:
        return -1 if le < re_ else 1
    return _compare_part(lu, ru) or _compare_part(lr, rr)


sort_key = functools.cmp_to_key(compare)
"""Key for sorted()/max() over version strings."""
