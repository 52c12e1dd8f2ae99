"""The accelerator decision on this machine: a fresh process gets it from the cache in
under 2 s, and a run of two kernels boots at most one probe, before any batch's VM.

The run forces a real probe (`KMATRIX_ACCEL_PROBE=1`) so that it boots one even on a
host whose CPU flags answer without a boot, then runs two copies of the cached bookworm
6.1 under two names, one 1A cell each, two VMs at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from matrix.kernels.catalog import Catalog
from matrix.plan import cells as plan
from matrix.plan import config
from matrix.run import job, procs, rundir
from matrix.runners import accel
from matrix.runners.vng import VngRunner, find_tool
from tests.fixtures.kernels import fetch_61

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces and the guest agent"),
    pytest.mark.skipif(find_tool("vng") is None, reason="virtme-ng is not installed"),
]

DECIDE = """
import json, sys, time
started = time.monotonic()
from matrix.runners import accel
from matrix.model import KernelSpec, PathSource, ResolvedKernel
image, mods, release = sys.argv[1:4]
kernel = ResolvedKernel(KernelSpec("6.1", PathSource(image, mods)), release, image, mods)
d = accel.decide(kernel)
print(json.dumps({**d.to_doc(), "process_s": time.monotonic() - started}))
"""


@pytest.fixture(scope="module")
def k61() -> tuple[Path, Path]:
    return fetch_61()


@pytest.fixture
def vng_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A private accelerator cache; vng's helpers (virtme-run) on PATH beside it."""
    cache = tmp_path / "cache" / "accel.json"
    monkeypatch.setenv(accel.CACHE_ENV, str(cache))
    monkeypatch.delenv(accel.PROBE_ENV, raising=False)
    bindir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", bindir + os.pathsep + os.environ.get("PATH", ""))
    accel.clear_cache()
    yield cache
    accel.clear_cache()


def decide_in_a_fresh_process(k61: tuple[Path, Path]) -> tuple[dict[str, Any], float]:
    image, mods = k61
    release = image.name.removeprefix("vmlinuz-")
    argv = [sys.executable, "-c", DECIDE, str(image), str(mods), release]
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
    wall = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), wall


def test_a_fresh_process_gets_the_decision_from_the_cache_in_under_2s(vng_env, k61) -> None:
    first, _ = decide_in_a_fresh_process(k61)
    assert not first["from_cache"] and vng_env.is_file()
    second, wall = decide_in_a_fresh_process(k61)
    assert second["from_cache"] and second["accel"] == first["accel"]
    assert second["key"] == accel.host_key().to_doc()
    assert wall < 2.0, f"{wall:.2f}s for the whole process, {second['decide_s']}s deciding"


def run_config(tmp: Path, k61: tuple[Path, Path]) -> Path:
    """Two kernels: the cached 6.1, and a copy of its image (another path, another kernel)."""
    image, mods = k61
    copy = tmp / "copy" / image.name
    copy.parent.mkdir()
    shutil.copyfile(image, copy)
    kernels = "".join(
        f'[[kernel]]\nname = "{name}"\nsource = "path"\nvmlinuz = "{img}"\nmodules = "{mods}"\n'
        for name, img in (("a", image), ("b", copy))
    )
    path = tmp / "kernels.toml"
    path.write_text(
        f'[settings]\ncache_dir = "{tmp}/kcache"\njobs = 2\n'
        '[sweep]\nscenarios = ["1A"]\nwindow_s = 1\niteration_cap = 200\nstall_s = 1\n'
        f"[sweep.sysctls]\n{kernels}"
    )
    return path


def test_a_run_of_two_kernels_probes_once_before_any_vm(vng_env, k61, monkeypatch, tmp_path):
    monkeypatch.setenv(accel.PROBE_ENV, "1")
    cfg = config.load(run_config(tmp_path, k61))
    kernels, failures = job.resolve(list(cfg.kernels), Catalog(cfg.settings.cache_dir))
    batches = plan.plan(kernels, cfg.sweep)
    run_dir = tmp_path / "runs" / "run"
    job.start_run(run_dir, batches, cfg, ["kmatrix", "test"])
    probes: list[list[int]] = []
    real = accel._boot_probe

    def counted(*args: Any, **kw: Any) -> tuple[bool, str]:
        probes.append(procs.find_by_marker(str(run_dir)))
        return real(*args, **kw)

    monkeypatch.setattr(accel, "_boot_probe", counted)
    runner = VngRunner(memory_mb=1024, boot_timeout_s=120.0)
    job.execute(batches, lambda b: runner, run_dir, 2, lambda *a: None, failures)
    job.finish_run(run_dir, False)
    assert probes == [[]], "one probe, and no batch's VM running while it ran"
    doc = rundir.read_json(run_dir / "manifest.json")
    assert doc["accelerator"]["source"] == "probe" and not doc["accelerator"]["from_cache"]
    assert doc["accel_choices"] == {
        k.release: {"accel": doc["accelerator"]["accel"], "reason": doc["accelerator"]["reason"]}
        for k in kernels
    }
    outcomes = [rundir.read_json(p) for p in sorted((run_dir / "batches").iterdir())]
    got = [(o["accelerator"], o["results"]) for o in outcomes]
    assert got == [(doc["accelerator"]["accel"], 1)] * 2, [o["failure"] for o in outcomes]
    assert procs.find_by_marker(str(run_dir)) == []
