"""The `remote` runner: a batch on an SSH host, through Fabric.

Each batch gets a fresh private directory on the host (see `ssh.PRIVATE_WORKDIR`:
~/.cache/kmatrix-remote/runs/<run-id>-<batch>-XXXXXXXX of the SSH user, 0700) holding
the `matrix` package and the collectors (shipped whole, a few hundred KB). A host-kernel
batch runs the agent there on the host's own kernel (its release is then the host's);
a VM batch runs `python3 -m matrix.runners.remote_batch`, i.e. the vng runner over there, with
the kernel copied once into ~/.cache/kmatrix-remote/kernels and reused only while its
SHA256 matches ours. Either runs under `ssh.GUARD`, so a dropped connection stops it.
Results are pulled back over SFTP every `poll_s` as the agent writes them, so a host
that dies later loses nothing already measured; a dead link raises `HostLost`.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import stat
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from fabric import Connection

from matrix.collect import guest_files, guest_result, sanitize
from matrix.errors import HostLost, PrerequisiteError
from matrix.model import Batch, BatchOutcome, Cell, ResolvedKernel
from matrix.plan import cells as plan
from matrix.plan.hosts import HostSpec
from matrix.run.schedule import Machine
from matrix.runners import OnResult
from matrix.runners.agent_io import HEARTBEAT_LINE, batch_budget_s
from matrix.runners.ssh import (
    GUARD,
    KILL_MARKED,
    LINK_ERRORS,
    PRIVATE_WORKDIR,
    REMOTE_ROOT,
    SHA256,
    connect,
    guard_spec,
    package_tar,
    probe,
    put_bytes,
    sh,
    stream_tree,
)
from matrix.runners.vng import TOOLS, batch_deadline_s

q = shlex.quote


class RemoteRunner:
    """Runs batches on one SSH host; `vm` (vng settings) when VM batches may come."""

    name = "remote"

    def __init__(
        self,
        host: HostSpec,
        *,
        run_id: str,
        known_hosts: Path | None = None,
        vm: dict[str, Any] | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.host, self.run_id, self.known_hosts = host, run_id, known_hosts
        self.vm, self.poll_s = vm, poll_s
        self._sudo: str | None = None

    def check(self) -> None:
        """Connect, then name everything the host lacks, with the package to install."""
        c = connect(self.host, self.known_hosts)
        try:
            self._sudo = self._privilege(c, need_vm=self.vm is not None)
        finally:
            c.close()

    def _privilege(self, c: Connection, need_vm: bool) -> str:
        """ "" as root, "sudo -n " with passwordless sudo; raise naming what is missing."""
        info = probe(c, self.host.python, list(TOOLS) if need_vm else [])
        least = (3, 11) if need_vm else (3, 8)
        problems = []
        if tuple(info["python"]) < least:
            have = ".".join(map(str, info["python"]))
            problems.append(f"python >= {'.'.join(map(str, least))} (has {have})")
        problems += [f"{t} ({TOOLS[t]})" for t, path in info["tools"].items() if not path]
        sudo = ""
        if info["euid"] != 0:
            sudo = "sudo -n "
            if sh(c, "sudo -n true", 30)[0] != 0:
                problems.append("root: log in as root or allow passwordless sudo")
        if problems:
            raise PrerequisiteError(f"remote host {self.host.name} needs: " + ", ".join(problems))
        return sudo

    def run_batch(
        self, batch: Batch, workdir: Path, stop: threading.Event, on_result: OnResult
    ) -> BatchOutcome:
        started = time.monotonic()
        vm = batch.kernel.spec.kind != "host"
        c = connect(self.host, self.known_hosts)
        try:
            if self._sudo is None:
                self._sudo = self._privilege(c, need_vm=vm)
            base, kernels = self._workdir(c, f"{self.run_id}-{workdir.name}-")
            self._stage(c, batch, base, kernels, vm)
            chan = self._launch(c, base, vm)
            failure, pulled = self._follow(c, chan, batch, base, stop, on_result)
            doc = self._finish(c, base, workdir, kill=bool(failure), vm=vm)
            code = chan.recv_exit_status() if not failure else None
        finally:
            c.close()
        missing = len(batch.cells) - len(pulled)
        if not failure and missing:
            failure = doc.get("failure") or f"exited ({code}) without results for {missing} cells"
        log = workdir / "console.log"
        return BatchOutcome(
            results=pulled,
            runner=self.name,
            accelerator=doc.get("accelerator", "none (remote host kernel)"),
            host=self.host.name,
            console_log=log,
            console_tail=(
                (doc.get("console_tail") or sanitize.tail(log, skip=HEARTBEAT_LINE))
                if failure
                else ""
            ),
            failure=failure,
            boot_s=doc.get("boot_s", 0.0),
            wall_s=time.monotonic() - started,
            **remote_liveness(doc),
        )

    def _workdir(self, c: Connection, prefix: str) -> tuple[str, str]:
        """(a fresh batch directory, the kernel cache), both checked private to the SSH
        user, so that nothing root runs there can be swapped by another user."""
        cmd = shlex.join([self.host.python, "-c", PRIVATE_WORKDIR, REMOTE_ROOT, prefix])
        code, out = sh(c, cmd, 60)
        if code != 0:
            raise PrerequisiteError(f"{self.host.name}: no private work directory: {out}")
        doc = json.loads(out.splitlines()[-1])
        return doc["work"], doc["kernels"]

    def _stage(self, c: Connection, batch: Batch, base: str, kernels: str, vm: bool) -> None:
        """The package, the cells and, for a VM, the kernel and batch.json."""
        code, out = sh(c, f"mkdir -p {q(base)}/out {q(base)}/pkg")
        if code != 0:
            raise PrerequisiteError(f"{self.host.name}: cannot create {base}: {out}")
        put_bytes(c, package_tar(), f"{base}/pkg.tgz")
        cmd = f"{q(self.host.python)} -m tarfile -e {q(base)}/pkg.tgz {q(base)}/pkg"
        code, out = sh(c, cmd)
        if code != 0:
            raise PrerequisiteError(f"{self.host.name}: cannot unpack the package: {out}")
        moved = self._ship_scenarios(c, batch, base)
        cells = {"cells": [cell.to_agent() for cell in moved]}
        put_bytes(c, json.dumps(cells, indent=1).encode(), f"{base}/cells.json")
        if vm:
            kernel = place_kernel(c, batch.kernel, kernels, self._sudo or "", self.host.python)
            doc = {"plan": plan.to_doc([Batch(kernel, moved)], ()), "vng": self.vm or {}}
            put_bytes(c, json.dumps(doc, indent=1).encode(), f"{base}/batch.json")

    def _ship_scenarios(self, c: Connection, batch: Batch, base: str) -> tuple[Cell, ...]:
        """Copy the folders holding the batch's scenarios (a scenario may use its
        siblings, as 1A uses ../puzzle1.py) to base/scenarios/N; the cells, pointed there."""
        roots = scenario_roots(batch.cells)
        for local, n in roots.items():
            _check_size(local)
            stream_tree(c, [(local, ".")], f"{base}/scenarios/{n}", "")
        return tuple(relocate(cell, roots, f"{base}/scenarios") for cell in batch.cells)

    def _launch(self, c: Connection, base: str, vm: bool) -> Any:
        """Start the batch on a channel of its own, under GUARD (which stops it when the
        channel closes); its output goes to run.log there."""
        py = self.host.python
        if vm:
            cwd, argv = f"{base}/pkg", [py, "-m", "matrix.runners.remote_batch", base]
        else:
            agent = f"{base}/pkg/matrix/collectors/agent.py"
            cwd, argv = base, [py, agent, "--cells", "cells.json", "--out", "out", "--net-only"]
        cmd = f"exec {self._sudo}" + shlex.join([py, "-c", GUARD, guard_spec(base, cwd, argv)])
        try:
            chan = c.client.get_transport().open_session()
            chan.exec_command(cmd)
        except LINK_ERRORS as e:
            raise HostLost(f"{self.host.name}: cannot start the batch: {e!r}") from None
        return chan

    def _follow(
        self,
        c: Connection,
        chan: Any,
        batch: Batch,
        base: str,
        stop: threading.Event,
        on_result: OnResult,
    ) -> tuple[str, dict[str, dict[str, Any]]]:
        """Pull results as they appear until the batch ends: ("" or why it was cut, results)."""
        ids = {cell.id for cell in batch.cells}
        pulled: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + self._budget_s(batch)
        sftp = c.sftp()
        sftp.get_channel().settimeout(60)
        while True:
            done = chan.exit_status_ready()
            try:
                for name in sorted(
                    set(sftp.listdir(f"{base}/out")) - {f"{i}.json" for i in pulled}
                ):
                    cid = name[: -len(".json")]
                    if name.endswith(".json") and cid in ids:
                        pulled[cid] = _pull_result(sftp, f"{base}/out/{name}", cid)
                        on_result(cid, pulled[cid])
            except LINK_ERRORS as e:
                raise HostLost(f"{self.host.name}: connection lost: {e!r}") from None
            if not c.transport.is_active():
                raise HostLost(f"{self.host.name}: connection lost")
            if done:
                return "", pulled
            if stop.is_set():
                return "interrupted", pulled
            if time.monotonic() > deadline:
                return "batch deadline passed; the remote batch was killed", pulled
            stop.wait(self.poll_s)

    def _budget_s(self, batch: Batch) -> float:
        if batch.kernel.spec.kind == "host":
            return batch_budget_s(batch)
        vm = self.vm or {}
        boot, extra = vm.get("boot_timeout_s", 180.0), vm.get("extra_per_cell_s", 30.0)
        return batch_deadline_s(batch.cells, boot, extra) + 60.0

    def _finish(self, c: Connection, base: str, workdir: Path, kill: bool, vm: bool) -> dict:
        """Kill what is left if the batch was cut, fetch the logs, remove the work dir."""
        if kill:
            sh(c, f"{self._sudo}{q(self.host.python)} -c {q(KILL_MARKED)} {q(base)}", 60)
        sftp = c.sftp()
        log = b""
        for name in ("run.log", "console.log") if vm else ("run.log",):
            try:
                log += _read_remote(
                    sftp, f"{base}/{name}", guest_files.MAX_CONSOLE_BYTES, tail=True
                )
            except (FileNotFoundError, guest_files.GuestFileError):
                continue
            except LINK_ERRORS as e:
                raise HostLost(f"{self.host.name}: connection lost: {e!r}") from None
        (workdir / "console.log").write_bytes(log)
        doc: dict[str, Any] = {}
        if vm:
            try:
                doc = _parse(_read_remote(sftp, f"{base}/outcome.json"))
            except FileNotFoundError:
                doc = {"failure": "remote batch ended without outcome.json", "accelerator": ""}
            except guest_files.GuestFileError as e:
                doc = {"failure": f"remote outcome.json refused: {e}", "accelerator": ""}
        sh(c, f"{self._sudo}rm -rf {q(base)}", 120)
        return doc


def place_kernel(
    c: Connection, kernel: ResolvedKernel, kernels: str, sudo: str, python: str = "python3"
) -> ResolvedKernel:
    """`kernel` as it is at `kernels`/<release>-<sha> on the host, copied there unless the
    copy there has our vmlinuz's SHA256 (a copy that does not is replaced)."""
    if kernel.vmlinuz is None:
        raise PrerequisiteError(f"kernel {kernel.spec.name} has no vmlinuz to copy")
    vmlinuz = Path(kernel.vmlinuz)
    digest = file_sha256(vmlinuz)
    dest = f"{kernels}/{kernel.release}-{digest[:16]}"
    image = f"{dest}/boot/vmlinuz-{kernel.release}"
    if _remote_sha256(c, image, sudo, python) != digest:
        items = [(vmlinuz, f"boot/vmlinuz-{kernel.release}")]
        if kernel.modules_dir is not None:
            items.append((Path(kernel.modules_dir), f"lib/modules/{kernel.release}"))
        stream_tree(c, items, dest, sudo)
        if _remote_sha256(c, image, sudo, python) != digest:
            raise PrerequisiteError(f"{c.host}: the copy of {vmlinuz} at {image} differs")
    modules = None if kernel.modules_dir is None else Path(dest, "lib/modules", kernel.release)
    return replace(kernel, vmlinuz=Path(image), modules_dir=modules)


def file_sha256(path: Path) -> str:
    """What a kernel copy is checked against: the vmlinuz itself, whatever its source."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _remote_sha256(c: Connection, path: str, sudo: str, python: str) -> str:
    """The file's SHA256 on the host, "" when it is not there."""
    code, out = sh(c, f"{sudo}{shlex.join([python, '-c', SHA256, path])}", 120)
    return out.splitlines()[-1] if code == 0 and out else ""


def _read_remote(
    sftp: Any, path: str, limit: int = guest_files.MAX_RESULT_BYTES, tail: bool = False
) -> bytes:
    """A file from the host's work directory, which its guest shares: only a regular
    file (lstat, so a link is refused, and a FIFO never blocks the SFTP server), and at
    most `limit` bytes: the last ones with `tail`, else GuestFileError when larger."""
    st = sftp.lstat(path)
    name = path.rsplit("/", 1)[-1]
    if not stat.S_ISREG(st.st_mode or 0):
        raise guest_files.GuestFileError(f"{name} is not a regular file")
    with sftp.open(path) as f:
        if tail:
            f.seek(max(0, (st.st_size or 0) - limit))
            return f.read(limit)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise guest_files.GuestFileError(f"{name} is larger than {limit:,} bytes")
    return data


def _pull_result(sftp: Any, path: str, cid: str) -> dict[str, Any]:
    """One result, read, parsed and vetted; a refused file becomes a stand-in."""
    try:
        data = _read_remote(sftp, path)
    except guest_files.GuestFileError as e:
        return guest_result.stand_in(cid, f"unreadable result: {e}")
    return guest_result.vet(_parse(data), cid)


def _parse(data: bytes) -> dict[str, Any]:
    try:
        doc = guest_files.parse_json(data)
    except ValueError as e:
        return {"status": "rejected", "status_detail": f"malformed result JSON: {e}"}
    return (
        doc if isinstance(doc, dict) else {"status": "rejected", "status_detail": "not an object"}
    )


def machines(
    hosts: tuple[HostSpec, ...], settings: Any, run_id: str, need_vm: bool
) -> list[Machine]:
    """One checked scheduler machine per host; a host that lacks something stops the run
    before anything starts, like a local prerequisite."""
    from matrix.runners.agent_io import AGENT_SLACK_S

    vm = None
    if need_vm:
        vm = {
            "memory_mb": settings.memory_mb,
            "cpus": settings.cpus,
            "accel": settings.accel,
            "boot_timeout_s": settings.boot_timeout_s,
            "extra_per_cell_s": AGENT_SLACK_S,
        }
    out = []
    for h in hosts:
        if h.identity is None and settings.identity is not None:
            h = replace(h, identity=settings.identity)
        runner = RemoteRunner(h, run_id=run_id, known_hosts=settings.known_hosts, vm=vm)
        runner.check()
        out.append(Machine(h.name, h.capacity, lambda _b, r=runner: r))
    return out


SCENARIO_TREE_MAX_BYTES = 64 << 20
"""A scenario folder is a program and its data, not a file store: past this it is refused."""


def scenario_roots(cells: tuple[Cell, ...]) -> dict[Path, int]:
    """The distinct folders the cells' scenario directories sit in, numbered."""
    roots: dict[Path, int] = {}
    for cell in cells:
        if cell.program:
            roots.setdefault(Path(cell.program.directory).parent, len(roots))
    return roots


def relocate(cell: Cell, roots: dict[Path, int], remote: str) -> Cell:
    """The cell with its scenario directory as the remote host will have it."""
    if not cell.program:
        return cell
    here = Path(cell.program.directory)
    there = f"{remote}/{roots[here.parent]}/{here.name}"
    return replace(cell, program=replace(cell.program, directory=there))


def _check_size(root: Path) -> None:
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    if total > SCENARIO_TREE_MAX_BYTES:
        raise PrerequisiteError(
            f"{root}: {total:,} bytes of scenarios to copy to a remote host; "
            f"expected at most {SCENARIO_TREE_MAX_BYTES:,} (keep large data out of it)"
        )


LIVENESS = ("alive", "silent", "unknown")


def remote_liveness(doc: dict[str, Any]) -> dict[str, Any]:
    """The remote vng runner's liveness at its batch deadline (outcome.json), taken only
    in its own words and numbers: that directory is one the guest can write to."""
    state, age = doc.get("liveness"), doc.get("heartbeat_age_s")
    if state not in LIVENESS:
        return {}
    ok = isinstance(age, int | float) and not isinstance(age, bool) and 0 <= age < 1e9
    return {"liveness": state, "heartbeat_age_s": float(age) if ok else None}
