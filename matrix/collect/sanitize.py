"""Guest text made safe to show: one definition for the terminal, the report and logs.

A console tail or a /proc stack can carry colour codes, bells, OSC sequences or bidi
overrides that would drive a terminal or disguise a page.
"""

from __future__ import annotations

import re
from pathlib import Path

from matrix.collect import guest_files

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """Strip escape sequences and control characters; keep newlines and tabs."""
    return _CONTROL.sub("", _ANSI.sub("", text.replace("\r\n", "\n")))


def tail(
    path: Path, lines: int = 60, max_bytes: int = 65536, skip: re.Pattern[str] | None = None
) -> str:
    """The last `lines` lines of a log, cleaned, leaving out those matching `skip` (the
    agent's heartbeats would fill a stuck batch's tail); "" when there is no log, or
    when the guest put a link, a FIFO or anything else but a regular file in its place."""
    try:
        text = guest_files.read_tail(path, max_bytes).decode(errors="replace")
    except OSError:
        return ""
    kept = clean(text).rstrip("\n").split("\n")
    if skip is not None:
        kept = [ln for ln in kept if not skip.match(ln)]
    return "\n".join(kept[-lines:])
