"""`guest_user`: QEMU serves the host's files to the guest as an unprivileged user.

The guest reads this machine's root through QEMU's 9p server, so it can read whatever
the QEMU process can. kmatrix runs as root, and so would QEMU: the guest could read
/root, /etc/gshadow, SSH host keys. With a guest user QEMU gets `-runas NAME`: it opens
the kernel, the initramfs, its console and /dev/kvm as root, then drops to NAME's uid,
gid and groups before the guest runs, and every file the guest touches afterwards is
opened with NAME's permissions. vng itself stays root, because it reads the kernel from
the cache (under /root by default) and may run depmod into it, and because its own
interpreter often lives where NAME cannot read (a pyenv under /root).

What the guest needs to reach, as NAME, over the host's root: the batch directory (its
`--rwdir`) and its out/, which kmatrix hands to NAME, the python it runs and the agent's
directory, and the kernel's modules (the guest links them into /lib/modules). Each is
checked before the boot and named when it is out of reach.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matrix.errors import PrerequisiteError
from matrix.runners.guest_python import SYSTEM_PYTHON

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
"""vng passes QEMU's options through a shell unquoted: only plain user names."""
CHECK_SCRIPT = (
    'while [ "$#" -gt 1 ]; do ok=1;'
    ' case $1 in *r*) test -r "$2" || ok=0;; esac;'
    ' case $1 in *x*) test -x "$2" || ok=0;; esac;'
    ' [ "$ok" = 1 ] || printf "%s\\n" "$2"; shift 2; done'
)
"""Prints each path the user lacks the permission for: "r" read, "x" search or run."""


@dataclass(frozen=True)
class GuestUser:
    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> GuestUser:
        """The account `name`; refused when it is missing, root, or not a plain name."""
        if not NAME.match(name):
            raise PrerequisiteError(f"guest_user {name!r}: not a plain user name")
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise PrerequisiteError(f"guest_user {name!r}: no such user on this machine") from None
        if entry.pw_uid == 0:
            raise PrerequisiteError(f"guest_user {name!r}: is root; name an unprivileged user")
        return cls(name, entry.pw_uid, entry.pw_gid)

    def qemu_flags(self) -> list[str]:
        """vng flags that make QEMU drop to this user before the guest starts."""
        return [f"--qemu-opts=-runas {self.name}"]

    def unreachable(self, checks: Sequence[tuple[str, Path]]) -> list[str]:
        """Of (mode, path) pairs, the paths this user cannot use, checked as the user
        (a child with its uid, gid and groups), so ACLs and every parent count."""
        args = [part for mode, path in checks for part in (mode, str(path))]
        try:
            proc = subprocess.run(
                ["/bin/sh", "-c", CHECK_SCRIPT, "sh", *args],
                capture_output=True,
                text=True,
                user=self.uid,
                group=self.gid,
                extra_groups=os.getgrouplist(self.name, self.gid),
                cwd="/",
                check=False,
            )
        except OSError as e:
            raise PrerequisiteError(f"guest_user {self.name}: kmatrix must be root ({e})") from None
        if proc.returncode != 0:
            raise PrerequisiteError(f"guest_user {self.name}: cannot check paths as it")
        return proc.stdout.splitlines()

    def give(self, out: Path) -> None:
        """Hand the directory the guest writes its results into to the user, links
        changed, never followed. Only that one: the batch directory above it (the staged
        kernel, the cells file) stays root's, so no process of the user can swap what
        vng reads as root."""
        for top, dirs, files in os.walk(out):
            for name in (*dirs, *files):
                os.chown(Path(top) / name, self.uid, self.gid, follow_symlinks=False)
        os.chown(out, self.uid, self.gid, follow_symlinks=False)

    def python(self, preferred: str) -> str:
        """`preferred` when the user can run it, else the system's python3."""
        for exe in dict.fromkeys((preferred, SYSTEM_PYTHON)):
            if not self.unreachable([("rx", Path(exe))]):
                return exe
        raise PrerequisiteError(
            f"guest_user {self.name}: can run neither {preferred} nor {SYSTEM_PYTHON}"
            " (the guest runs the agent with it, reading it as that user)"
        )

    def check_batch(self, workdir: Path, agent: Path, modules: Path | None) -> None:
        """Name everything the guest needs and cannot reach as this user, all at once."""
        needs = {
            workdir.parent: ("x", "the guest mounts the batch directory below it"),
            agent: ("r", "the guest agent"),
            agent.parent: ("rx", "the agent's directory (it imports its neighbours)"),
        }
        if modules is not None:
            needs[modules] = ("rx", "the kernel's modules; set cache_dir where it can read")
        bad = set(self.unreachable([(mode, path) for path, (mode, _) in needs.items()]))
        lines = [f"{p} ({why})" for p, (_, why) in needs.items() if str(p) in bad]
        if lines:
            raise PrerequisiteError(f"guest_user {self.name} cannot reach: " + "; ".join(lines))
