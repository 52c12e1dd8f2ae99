"""Which Python the guest runs, and its bytecode made ready before the boot.

The guest reads the host's root over 9p without a page cache, under TCG at a
twentieth of native speed, so what an interpreter reads at start is paid in full at
every start, once for the agent and once per cell. Measured in a bookworm 6.1 guest
(TCG, 2-vCPU AMD EPYC host): Debian's static `/usr/bin/python3` starts in 0.4-0.6 s, a
pyenv or venv interpreter linked to a 23 MB `libpython3.11.so` in 3.0-4.2 s. And the
guest cannot write `__pycache__` (the root is read-only), so a module without
bytecode beside it is compiled again at every start: the agent's own modules cost
~0.8 s that way. Hence the system interpreter first, and the host compiling the
collectors with the guest's interpreter before each boot.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
GUEST_HIDDEN = ("/proc", "/sys", "/dev", "/run")
"""The guest has its own of these: the host's files there are out of its sight."""
MIN_VERSION = (3, 8)
"""The agent's floor (collectors/agent.py)."""


@functools.cache
def version(python: str) -> tuple[int, int] | None:
    """(major, minor) of an interpreter, or None when it does not run."""
    try:
        out = subprocess.run(
            [python, "-S", "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        major, minor = (int(x) for x in out.stdout.split())
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    return major, minor


def _visible(python: str) -> bool:
    exe = Path(python).resolve()
    return exe.is_file() and not any(exe.is_relative_to(d) for d in GUEST_HIDDEN)


def guest_python() -> str:
    """The system's python3 when it can run the agent (the fast start, see above), else
    ours when the guest can see it, else the system's path for the guest to find."""
    system = version(SYSTEM_PYTHON) if os.access(SYSTEM_PYTHON, os.X_OK) else None
    if system is not None and system >= MIN_VERSION:
        return SYSTEM_PYTHON
    return sys.executable if _visible(sys.executable) else SYSTEM_PYTHON


def precompile(python: str, dirs: Iterable[Path]) -> None:
    """Write the bytecode `python` would write for itself, for the .py files in `dirs`
    (not below: a user's scenario directory may hold a tree). What is up to date is
    skipped, so a second batch costs one interpreter start. Best effort: what cannot be
    written here is compiled in the guest, as without this."""
    todo = [str(d) for d in dict.fromkeys(dirs) if d.is_dir() and os.access(d, os.W_OK)]
    if not todo or not os.access(python, os.X_OK):
        return
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(
            [python, "-m", "compileall", "-q", "-l", *todo],
            capture_output=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )
