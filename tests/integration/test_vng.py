"""The vng runner booting a real Debian kernel under TCG, with the real guest agent.

The kernel comes from $KMATRIX_TEST_VMLINUZ (modules found beside it the way the
catalog lays them out) or from the catalog's cache; without one the catalog fetches
bookworm's 6.1.
Every test ends by checking that no QEMU of its own is left: other runs may boot VMs on
the same machine at the same time, so the scan is `pgrep -af qemu-system` narrowed to
command lines that name this test's private directories.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from matrix.kernels.catalog import Catalog
from matrix.model import Batch, Cell, DebianSource, KernelSpec, Limits, ResolvedKernel
from matrix.plan import config
from matrix.runners import accel, pvh
from matrix.runners.vng import VngRunner, find_tool
from tests.fixtures.agent_cells import builtin_program

REPO = Path(__file__).resolve().parents[2]
CACHE = Path.home() / ".cache" / "kmatrix" / "kernels"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="the guest agent needs root"),
    pytest.mark.skipif(find_tool("vng") is None, reason="virtme-ng is not installed"),
]


def _kernel_from_image(vmlinuz: Path) -> ResolvedKernel | None:
    """A ResolvedKernel for a Debian layout: boot/vmlinuz-R or usr/lib/modules/R/vmlinuz."""
    if vmlinuz.name == "vmlinuz":
        release, root = vmlinuz.parent.name, vmlinuz.parents[4]
    elif vmlinuz.name.startswith("vmlinuz-"):
        release, root = vmlinuz.name[len("vmlinuz-") :], vmlinuz.parents[1]
    else:
        return None
    mods = next(
        (
            p
            for p in (root / "lib/modules" / release, root / "usr/lib/modules" / release)
            if p.is_dir()
        ),
        None,
    )
    if mods is None:
        return None
    spec = KernelSpec("test", DebianSource("test", "linux-image-*"))
    return ResolvedKernel(spec=spec, release=release, vmlinuz=vmlinuz, modules_dir=mods)


def _find_kernel() -> ResolvedKernel | None:
    env = os.environ.get("KMATRIX_TEST_VMLINUZ")
    if env:
        return _kernel_from_image(Path(env))
    images = sorted(CACHE.glob("linux-image-6.1.*-amd64-unsigned_*/boot/vmlinuz-*"))
    images += sorted(CACHE.glob("*/boot/vmlinuz-*-amd64"))
    return next((k for k in map(_kernel_from_image, images) if k is not None), None)


@pytest.fixture(scope="module")
def kernel() -> ResolvedKernel:
    """A cached kernel, else bookworm's 6.1 fetched with the catalog (cached for later)."""
    found = _find_kernel()
    if found is None:
        cfg = config.load(REPO / "kernels.toml")
        found = Catalog(cfg.settings.cache_dir).fetch(cfg.kernel("6.1"))
    return found


def our_qemus(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if marker in line]


def cells(n: int, window_s: float = 2.0) -> tuple[Cell, ...]:
    limits = Limits(window_s=window_s, stall_s=2.0, iteration_cap=500)
    return tuple(
        Cell("test", s, (), 0, limits, program=builtin_program(s))
        for s in ("1A", "1B", "2A", "2B")[:n]
    )


def run(runner: VngRunner, batch: Batch, workdir: Path, stop: threading.Event | None = None):
    got: dict[str, dict] = {}
    outcome = runner.run_batch(batch, workdir, stop or threading.Event(), got.__setitem__)
    assert our_qemus(str(workdir)) == []
    return outcome, got


@pytest.mark.parametrize("boot", ["pvh", "bzimage"])
def test_two_cells_in_one_boot(kernel: ResolvedKernel, tmp_path: Path, boot: str) -> None:
    """Both ways into the same kernel run the cells: Debian's 6.1 has a PVH entry, so
    "pvh" boots its unpacked ELF (skipping the guest's decompression), "bzimage" the
    package's image as is."""
    runner = VngRunner(accel="tcg", cpus=1, boot=boot, image_cache=tmp_path / "cache")
    batch = Batch(kernel, cells(2))
    outcome, got = run(runner, batch, tmp_path / "wd")
    assert outcome.failure == "", outcome.console_tail
    assert outcome.boot_image == boot
    staged = (tmp_path / "wd" / "kernel" / "boot" / f"vmlinuz-{kernel.release}").resolve()
    if boot == "pvh":
        assert staged.is_relative_to(tmp_path / "cache" / "pvh") and pvh.has_pvh_entry(
            staged.read_bytes()
        )
    else:
        assert staged == Path(kernel.vmlinuz).resolve()
    assert set(outcome.results) == set(got) == {c.id for c in batch.cells}
    assert all(r.get("status") == "ok" for r in outcome.results.values())
    assert outcome.accelerator == "tcg" and outcome.runner == "vng"
    assert outcome.boot_s is not None and outcome.boot_s < outcome.wall_s
    assert f"KMATRIX-AGENT-START {kernel.release}" in outcome.console_log.read_text()


def test_too_short_a_deadline_fails_with_a_tail(kernel: ResolvedKernel, tmp_path: Path) -> None:
    runner = VngRunner(accel="tcg", boot_timeout_s=6.0)
    outcome, got = run(runner, Batch(kernel, cells(1)), tmp_path / "wd")
    assert got == {} and outcome.results == {}
    assert "boot deadline (6s)" in outcome.failure or "printed nothing" in outcome.failure
    assert outcome.console_tail.strip()
    assert outcome.wall_s < 6.0 + 15.0


def test_stop_interrupts_the_boot(kernel: ResolvedKernel, tmp_path: Path) -> None:
    stop = threading.Event()
    threading.Timer(4.0, stop.set).start()
    outcome, _ = run(VngRunner(accel="tcg"), Batch(kernel, cells(2)), tmp_path / "wd", stop)
    assert outcome.failure == "interrupted" and outcome.wall_s < 15.0


@pytest.mark.parametrize("header", [False, True], ids=["random", "random-with-boot-header"])
def test_garbage_image_fails_quickly_and_cleanly(tmp_path: Path, header: bool) -> None:
    """Random bytes fail the header check at once; with a forged header QEMU gets them."""
    junk = bytearray(os.urandom(2 * 1024 * 1024))
    if header:
        junk[0x202:0x206] = b"HdrS"
    image = tmp_path / "boot" / "vmlinuz-0.0.0-junk"
    image.parent.mkdir()
    image.write_bytes(bytes(junk))
    spec = KernelSpec("junk", DebianSource("test", "junk"))
    kernel = ResolvedKernel(spec=spec, release="0.0.0-junk", vmlinuz=image)
    runner = VngRunner(accel="tcg", boot_timeout_s=15.0)
    started = time.monotonic()
    outcome, _ = run(runner, Batch(kernel, cells(1)), tmp_path / "wd")
    assert outcome.failure and outcome.results == {}
    assert time.monotonic() - started < (3.0 if not header else 35.0)


def test_kvm_probe_answers_within_its_deadline(kernel: ResolvedKernel) -> None:
    accel.clear_cache()
    started = time.monotonic()
    ok, reason = accel.probe_kvm(kernel, timeout_s=30.0)
    assert time.monotonic() - started < 45.0 and reason
    assert our_qemus("kmatrix-kvm-probe") == []
    again = time.monotonic()
    assert accel.probe_kvm(kernel) == (ok, reason)
    assert time.monotonic() - again < 0.1
