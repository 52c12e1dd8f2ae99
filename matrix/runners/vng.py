"""The `vng` runner: one virtme-ng boot per kernel, the guest agent runs every cell.

What virtme-ng (1.42) does with a distro kernel, and why the command line is what it is:

- `--run <vmlinuz>`: vng reads the release from the image (`file`, else `strings`),
  then walks up from the image's path to the first directory holding `lib/modules`
  (or `usr/lib/modules`) and takes `<that>/lib/modules/<release>` as the modules
  tree. If `modules.dep` is missing (Debian's .deb does not ship it) vng runs
  `depmod -a -b` on it, writing into that tree, then resolves the modules it needs
  (9p, virtio_pci, virtio_console, overlay...) with `modprobe --show-depends` and
  packs them into an initramfs built with busybox. In the guest it links the tree to
  `/lib/modules/$(uname -r)`. Debian builds 9p and virtio_console as modules, so
  without this the root cannot even be mounted. Because the catalog's layout and a
  `path` kernel's may not match that walk, `stage_kernel` builds a tiny tree of
  symlinks (`boot/vmlinuz-<release>`, `lib/modules/<release>`) in the workdir; an
  empty `lib/modules` stops the walk from reaching the host's own modules.
- The image linked as `boot/vmlinuz-<release>` is, where the kernel has a PVH entry,
  its unpacked ELF (`matrix.runners.pvh`, `boot = "pvh"`): vng hands it to QEMU's
  `-kernel` like a bzImage (it finds the release with `strings`), and QEMU enters the
  kernel directly, skipping the 4-5 s a TCG guest spends decompressing a bzImage.
- `--force-9p`: bookworm's C virtiofsd does not speak vng's arguments.
- `--disable-kvm` unless the accelerator is KVM; with KVM `-machine accel=kvm` is
  added so QEMU cannot fall back to TCG silently (vng asks for `kvm:tcg`).
- `--verbose`: with virtio_console as a module, virtme-ng-init cannot find its script
  ports and runs the command on the serial console, visible only with --verbose. vng's
  exit code (255) and stdout are therefore meaningless: results come back as files
  in the workdir, exported with `--rwdir` (the guest mounts it at the same path; this
  works under /tmp too, because the rwdir is mounted over vng's /tmp overlay).
- `--user root`: the agent makes network namespaces and writes sysctls.
- The guest sees the host's root read-only over 9p, so the host's python
  (`sys.executable`, a pyenv path here) and the repository run in the guest as is.
  QEMU serves those files, as root unless `guest_user` names an account: then
  `--qemu-opts=-runas NAME` makes QEMU drop to it before the guest starts, and the
  guest reads the host only as NAME could (see `matrix.runners.guest_user`).
- `--exec` travels base64-encoded on the kernel command line (2 KiB on x86), so it
  stays short: the cell list is a file.
- vng has no timeout and QEMU outlives vng when killed alone: see `matrix.run.procs`.
"""

from __future__ import annotations

import re
import shlex
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from matrix.collect import guest_files, sanitize
from matrix.errors import PrerequisiteError
from matrix.model import Batch, BatchOutcome, Cell, ResolvedKernel
from matrix.run import procs
from matrix.runners import OnResult, pvh
from matrix.runners import accel as accel_mod
from matrix.runners.agent_io import (
    HEARTBEAT,
    HEARTBEAT_LINE,
    ResultCollector,
    agent_argv,
    agent_path,
    cell_budget_s,
    prepare,
)
from matrix.runners.guest_python import guest_python, precompile
from matrix.runners.guest_user import GuestUser
from matrix.runners.vng_cmd import (
    ensure_modules_dep,
    find_tool,
    is_bzimage,
    stage_kernel,
    vng_argv,
    vng_env,
)

POLL_S = 0.2
EXIT_GRACE_S = 20.0
"""After agent.json appears the guest powers off by itself; this long at most."""

TOOLS = {
    "vng": "pip package virtme-ng",
    "qemu-system-x86_64": "apt package qemu-system-x86",
    "busybox": "apt package busybox-static",
    "depmod": "apt package kmod",
    "modprobe": "apt package kmod",
}


BOOT_KINDS = ("pvh", "bzimage")
DEFAULT_IMAGE_CACHE = Path("~/.cache/kmatrix").expanduser()
"""Where PVH images are unpacked when no cache is given (the catalog's default cache)."""


def describe(image: pvh.BootImage) -> str:
    """ "pvh", "bzimage", or "bzimage: <why not pvh>" for the batch's record."""
    return f"{image.kind}: {image.reason}" if image.reason else image.kind


def batch_deadline_s(
    cells: Sequence[Cell], boot_timeout_s: float, extra_per_cell_s: float
) -> float:
    """Boot, then each cell's own bound plus slack for a guest ~15x slower under TCG."""
    return boot_timeout_s + sum(cell_budget_s(c, extra_per_cell_s) for c in cells)


AGENT_START = re.compile(r"KMATRIX-AGENT-START\s+\S+")
ALIVE_WITHIN_S = 20.0
"""The agent beats every 5 s while a cell runs: a beat this recent means the guest
kernel still runs the agent."""
FATAL = (("Kernel panic", "kernel panic"), ("KVM: emulation failure", "KVM: emulation failure"))
TAIL_LINES = 60


def program_dirs(cells: Sequence[Cell], agent_dir: Path) -> list[Path]:
    """The directories whose Python the guest will import or run: the agent's (with the
    built-in scenarios below it) and each program's own, for `precompile`."""
    dirs = [agent_dir]
    for cell in cells:
        if cell.program is None:
            continue
        base = Path(cell.program.directory)
        for arg in cell.program.command:
            path = base / arg
            if arg.endswith(".py") and not Path(arg).is_absolute() and path.is_file():
                dirs.append(path.resolve().parent)
    return dirs


class ConsoleWatch:
    """Reads the console log as it grows and notes milestones, fatal signs and the
    agent's heartbeat in it."""

    def __init__(self, path: Path, started: float, cell_ids: Sequence[str] = ()) -> None:
        self.path, self.started = path, started
        self.offset, self.carry = 0, ""
        self.boot_s: float | None = None
        self.agent_started = self.kernel_spoke = False
        self.problem = ""
        self.cell_ids = frozenset(cell_ids)
        self.heartbeats = 0
        self.last_beat_at: float | None = None
        """time.monotonic() on this machine when the last heartbeat was read."""
        self.last_beat_cell = ""
        """The cell the last heartbeat named (only ids of this batch are taken)."""
        self.at_deadline: tuple[str, float | None, str] | None = None
        """`liveness()` when the batch deadline passed."""

    def scan(self) -> None:
        """Read what is new, at most MAX_SCAN_BYTES a call; a marker split across two reads
        is caught by the carry. console.log lies in the guest's directory: a link or a
        FIFO in its place reads as nothing (see `guest_files`)."""
        try:
            data = guest_files.read_from(self.path, self.offset)
        except OSError:
            return
        self.offset += len(data)
        carried = len(self.carry)
        text = self.carry + data.decode(errors="replace")
        self.carry = text[-256:]
        self._beats(text, carried)
        self.kernel_spoke = self.kernel_spoke or "Linux version" in text
        if not self.agent_started and AGENT_START.search(text):
            self.agent_started = True
            self.boot_s = time.monotonic() - self.started
        for needle, reason in FATAL:
            if needle in text and not self.problem:
                self.problem = reason

    def _beats(self, text: str, carried: int) -> None:
        """Note the heartbeats that end in the new part of `text` (the carried part was
        read before)."""
        if "KMATRIX-ALIVE" not in text:
            return
        for m in HEARTBEAT.finditer(text):
            if m.end() <= carried:
                continue
            self.heartbeats += 1
            self.last_beat_at = time.monotonic()
            cell = m.group(2) or ""
            self.last_beat_cell = cell if cell in self.cell_ids else ""

    def liveness(self, now: float | None = None) -> tuple[str, float | None, str]:
        """(state, seconds since the last heartbeat, words for the failure): "alive"
        (a recent beat: the guest kernel runs the agent, so a program was stuck),
        "silent" (beats stopped: the kernel stopped answering, dead or hung), "unknown"
        (none ever seen: an agent that sends none, or a console that shows nothing)."""
        if self.last_beat_at is None:
            return "unknown", None, ""
        age = max(0.0, (time.monotonic() if now is None else now) - self.last_beat_at)
        if age <= ALIVE_WITHIN_S:
            where = f", in cell {self.last_beat_cell}" if self.last_beat_cell else ""
            words = f"kernel alive (last heartbeat {age:.0f} s ago{where}): the program was stuck"
            return "alive", age, words
        words = f"no heartbeat for {age:.0f} s: the kernel stopped answering (dead or hung)"
        return "silent", age, words

    def last_line(self) -> str:
        """The console's last line that is not our own header: usually QEMU's complaint."""
        lines = [ln for ln in sanitize.tail(self.path).split("\n") if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith("# kmatrix:")]
        lines = [ln for ln in lines if not HEARTBEAT_LINE.match(ln)]
        return lines[-1].strip()[:200] if lines else ""


class VngRunner:
    """Boots each batch's kernel once under virtme-ng and runs the guest agent in it."""

    name = "vng"

    def __init__(
        self,
        *,
        memory_mb: int = 2048,
        cpus: int = 1,
        accel: str = "auto",
        boot_timeout_s: float = 120.0,
        extra_per_cell_s: float = 30.0,
        agent: Path | None = None,
        guest_user: str | None = None,
        boot: str = "pvh",
        image_cache: Path | None = None,
    ) -> None:
        if accel not in ("auto", "kvm", "tcg"):
            raise ValueError(f"accel must be auto, kvm or tcg, not {accel!r}")
        if boot not in BOOT_KINDS:
            raise ValueError(f"boot must be one of {', '.join(BOOT_KINDS)}, not {boot!r}")
        self.boot = boot
        """"pvh": the kernel's unpacked ELF where it has a PVH entry (`matrix.runners.pvh`),
        else the bzImage; "bzimage": always the bzImage."""
        self.image_cache = image_cache or DEFAULT_IMAGE_CACHE
        self.memory_mb, self.cpus, self.accel = memory_mb, cpus, accel
        self.boot_timeout_s, self.extra_per_cell_s = boot_timeout_s, extra_per_cell_s
        self.agent = agent
        """The agent script the guest runs; None is the real one. The guest sees it
        through the host's root, shared read-only (see `agent_io.agent_argv`)."""
        self.guest_user = GuestUser.lookup(guest_user) if guest_user else None
        """The account QEMU runs as, so the guest reads the host with its rights only."""
        self.accel_choices: dict[str, tuple[str, str]] = {}
        """Kernel release -> (accelerator, why), for the run's manifest."""
        self.accel_decision: accel_mod.Decision | None = None
        """With "auto": the machine's answer (`matrix.runners.accel.decide`), for the manifest."""

    def check(self) -> None:
        """Name every missing tool and the package that provides it, all at once."""
        missing = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if find_tool(tool) is None]
        if missing:
            raise PrerequisiteError("vng runner needs: " + ", ".join(missing))
        if self.guest_user is not None:
            self.guest_user.python(guest_python())

    def prepare(self, batches: Sequence[Batch], stop: threading.Event | None = None) -> None:
        """Decide the accelerator before any batch starts, so that a probe VM never shares
        the CPU with a batch's VM; every batch then reuses the one answer."""
        bootable = [b.kernel for b in batches if is_bzimage(Path(b.kernel.vmlinuz or ""))]
        if self.accel == "auto" and bootable:
            self.accel_decision = accel_mod.decide(bootable[0], stop=stop)
        for kernel in bootable:
            self.choose_accelerator(kernel)

    def choose_accelerator(self, kernel: ResolvedKernel) -> tuple[str, str]:
        """('kvm' or 'tcg', why); with 'auto' one decision per machine (`accel.decide`:
        cached on disk, a boot only when the CPU flags allow KVM and nothing is cached).

        Returned, and kept per kernel: batches of several kernels may run at once.
        """
        if self.accel != "auto":
            choice = self.accel, f"accelerator {self.accel} was asked for"
        else:
            if self.accel_decision is None:
                self.accel_decision = accel_mod.decide(kernel)
            choice = self.accel_decision.accel, self.accel_decision.reason
        self.accel_choices[kernel.release] = choice
        return choice

    def run_batch(
        self, batch: Batch, workdir: Path, stop: threading.Event, on_result: OnResult
    ) -> BatchOutcome:
        """Boot once, run every cell, and leave no process behind whatever happens."""
        started = time.monotonic()
        workdir = Path(workdir).resolve()
        console = workdir / "console.log"
        collector = self._prepare(batch, workdir, on_result)
        if batch.kernel.vmlinuz is None or not is_bzimage(Path(batch.kernel.vmlinuz)):
            failure = f"not a bootable x86 kernel image: {batch.kernel.vmlinuz}"
            console.write_text(failure + "\n")
            return self._outcome(collector, "none", console, failure, None, started)
        accel, why = self.choose_accelerator(batch.kernel)
        image = self._boot_image(Path(batch.kernel.vmlinuz))
        argv = self._argv(batch.kernel, batch.cells, workdir, accel, image)
        console.write_text(
            f"# kmatrix: accelerator {accel} ({why})\n"
            f"# kmatrix: boots {image.path} ({describe(image)})\n"
            f"# kmatrix: {shlex.join(argv)}\n"
        )
        proc = procs.start_session(argv, console, cwd=workdir, env=vng_env(argv[0]))
        watch = ConsoleWatch(console, time.monotonic(), [c.id for c in batch.cells])
        try:
            failure = self._supervise(proc, batch, watch, collector, stop)
        finally:
            procs.kill_group(proc)
            procs.kill_leftovers(str(workdir))
        watch.scan()
        collector.poll(final=True)
        complete = not collector.missing() and not collector.malformed
        failure = "" if complete else failure or self._missing_reason(collector, watch)
        host_changes, host_error = collector.host_sysctl()
        failure = host_error or failure
        boot_s = watch.boot_s
        if boot_s is None and collector.first_result_at is not None:
            boot_s = collector.first_result_at - watch.started
        outcome = self._outcome(collector, accel, console, failure, boot_s, started)
        liveness, age, _ = watch.at_deadline or ("", None, "")
        return replace(
            outcome,
            host_sysctl_changed=host_changes,
            liveness=liveness,
            heartbeat_age_s=age,
            boot_image=describe(image),
        )

    def _boot_image(self, vmlinuz: Path) -> pvh.BootImage:
        if self.boot == "bzimage":
            return pvh.BootImage(vmlinuz, "bzimage")
        return pvh.boot_image(vmlinuz, self.image_cache)

    def _prepare(self, batch: Batch, workdir: Path, on_result: OnResult) -> ResultCollector:
        _, out = prepare(batch, workdir)
        return ResultCollector(out, [c.id for c in batch.cells], on_result)

    def _argv(
        self,
        kernel: ResolvedKernel,
        cells: Sequence[Cell],
        workdir: Path,
        accel: str,
        boot: pvh.BootImage,
    ) -> list[str]:
        image = stage_kernel(kernel, workdir / "kernel", boot.path)
        ensure_modules_dep(kernel, workdir / "kernel")
        python, user = guest_python(), self.guest_user
        if user is not None:
            python = self._hand_over(user, kernel, workdir)
        precompile(python, program_dirs(cells, Path(self.agent or agent_path()).parent))
        cmd = shlex.join(agent_argv(workdir, python, self.agent))
        argv = vng_argv(
            image=image,
            accel=accel,
            memory_mb=self.memory_mb,
            cpus=self.cpus,
            rwdirs=[workdir],
            exec_cmd=cmd,
        )
        return argv + (user.qemu_flags() if user is not None else [])

    def _hand_over(self, user: GuestUser, kernel: ResolvedKernel, workdir: Path) -> str:
        """Check what the guest needs as `user`, give it out/; return the python."""
        modules = Path(kernel.modules_dir).resolve() if kernel.modules_dir else None
        user.check_batch(workdir, Path(self.agent or agent_path()), modules)
        user.give(workdir / "out")
        return user.python(guest_python())

    def _supervise(
        self,
        proc: procs.Session,
        batch: Batch,
        watch: ConsoleWatch,
        collector: ResultCollector,
        stop: threading.Event,
    ) -> str:
        """Poll until done; return a failure reason, "" when the guest finished."""
        total = batch_deadline_s(batch.cells, self.boot_timeout_s, self.extra_per_cell_s)
        silent_s = min(30.0, self.boot_timeout_s)
        done_at: float | None = None
        while True:
            watch.scan()
            collector.poll()
            now = time.monotonic() - watch.started
            if stop.is_set():
                return "interrupted"
            if watch.problem:
                return watch.problem
            if collector.agent_done:
                done_at = now if done_at is None else done_at
                if proc.poll() is not None or now - done_at > EXIT_GRACE_S:
                    return ""
            elif proc.poll() is not None:
                return ""
            waiting = not watch.agent_started and not collector.results
            if waiting and not watch.kernel_spoke and now > silent_s:
                return f"the kernel printed nothing in {silent_s:g}s"
            if waiting and now > self.boot_timeout_s:
                return f"boot deadline ({self.boot_timeout_s:g}s) passed before the agent started"
            if now > total:
                n, k = len(batch.cells), len(collector.results)
                watch.at_deadline = watch.liveness()
                words = watch.at_deadline[2]
                why = f"batch deadline ({total:g}s) passed with results for {k} of {n} cells"
                return f"{why}; {words}" if words else why
            stop.wait(POLL_S)

    @staticmethod
    def _missing_reason(collector: ResultCollector, watch: ConsoleWatch) -> str:
        missing, bad = collector.missing(), collector.malformed
        if not watch.agent_started and not collector.results:
            return f"VM exited before the agent started: {watch.last_line() or 'no output'}"
        reason = f"agent exited without results for {len(missing) + len(bad)} cells"
        return reason + (f" ({len(bad)} malformed)" if bad else "")

    def _outcome(
        self,
        collector: ResultCollector,
        accel: str,
        console: Path,
        failure: str,
        boot_s: float | None,
        started: float,
    ) -> BatchOutcome:
        return BatchOutcome(
            results=dict(collector.results),
            runner=self.name,
            accelerator=accel,
            host=socket.gethostname(),
            console_log=console,
            console_tail=sanitize.tail(console, skip=HEARTBEAT_LINE),
            failure=failure,
            boot_s=boot_s,
            wall_s=time.monotonic() - started,
        )
