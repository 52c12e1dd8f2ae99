"""SSH hosts that run batches: `[[host]]` tables of kernels.toml and `run --hosts`.

Only what identifies a host and how much it may run lives here; authentication is the
user's SSH agent and keys, checked against known_hosts, so no secret is ever in a file
that kmatrix reads.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matrix.errors import ConfigError

_ADDRESS = re.compile(
    r"(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*))"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
HOST_KEYS = {"address", "capacity", "identity", "python"}


@dataclass(frozen=True)
class HostSpec:
    """One SSH host: where it is, how many batches at once, which key and python."""

    host: str
    user: str | None = None
    port: int = 22
    capacity: int = 1
    identity: Path | None = None
    python: str = "python3"

    @property
    def name(self) -> str:
        """user@host[:port], the form the report's host column shows."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        return f"{user}{host}" + (f":{self.port}" if self.port != 22 else "")


def parse_address(src: str, key: str, text: Any) -> tuple[str | None, str, int]:
    """ "user@host:port" -> (user, host, port); the error says which form is expected."""
    m = _ADDRESS.fullmatch(text) if isinstance(text, str) else None
    port = int(m["port"]) if m and m["port"] else 22
    if not m or not 1 <= port <= 65535:
        raise ConfigError(
            src, key, f"{text!r}; expected an SSH address like user@host, host:2222, user@[::1]:22"
        )
    return m["user"], m["v6"] or m["host"], port


def from_table(src: str, i: int, t: Any, base: Path) -> HostSpec:
    """A `[[host]]` table, validated key by key; a relative identity is from the file."""
    where = f"host[{i}]"
    if not isinstance(t, dict):
        raise ConfigError(src, where, "expected a [[host]] table")
    extra = sorted(set(t) - HOST_KEYS)
    if extra:
        expected = ", ".join(sorted(HOST_KEYS))
        raise ConfigError(src, f"{where}.{extra[0]}", f"unknown key; expected one of {expected}")
    if "address" not in t:
        raise ConfigError(src, f"{where}.address", "missing; expected e.g. user@host:22")
    user, host, port = parse_address(src, f"{where}.address", t["address"])
    cap = t.get("capacity", 1)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ConfigError(src, f"{where}.capacity", f"{cap!r}; expected an integer >= 1")
    identity = None
    if "identity" in t:
        identity = base / Path(os.path.expanduser(_text(src, f"{where}.identity", t["identity"])))
    python = _text(src, f"{where}.python", t.get("python", "python3"))
    return HostSpec(host, user, port, cap, identity, python)


def from_option(text: str, capacity: int, identity: Path | None) -> tuple[HostSpec, ...]:
    """`--hosts user@h1,h2:2222` with `--host-capacity N` for each."""
    if capacity < 1:
        raise ConfigError("command line", "--host-capacity", f"{capacity}; expected >= 1")
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        user, host, port = parse_address("command line", f"--hosts {part}", part)
        out.append(HostSpec(host, user, port, capacity, identity))
    if not out:
        raise ConfigError("command line", "--hosts", "empty; expected user@host[:port],...")
    names = [h.name for h in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError("command line", "--hosts", f"{dup} given twice; use --host-capacity")
    return tuple(out)


def _text(src: str, key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(src, key, f"{v!r}; expected a non-empty string")
    return v
