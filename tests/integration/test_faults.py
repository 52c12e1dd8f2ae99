"""Fault injection: every way a run can go wrong ends as recorded data and no leftovers.

Each test breaks one thing (a kernel image, a guest that panics or never answers, a
collector that lies or hangs, a signal, a download, a results directory, hostile guest
text), then checks what `kmatrix results --json` and batches/<kernel>.json say, and that
no process naming the test's own directory (QEMU, vng, the agent, a puzzle child)
outlived it.

Faults are played by test-only agent scripts written into the test's directory and
handed to the runners' `agent` parameter; the production agent and puzzles have no
test hooks. The VM tests boot the cached bookworm 6.1 under TCG, one VM at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from matrix.kernels.catalog import Catalog
from matrix.model import Batch, Cell, KernelSpec, Limits, PathSource, ResolvedKernel
from matrix.plan import cells as plan
from matrix.plan import config
from matrix.run import job, procs
from matrix.run.progress import Display
from matrix.runners.host import HostRunner
from matrix.runners.vng import VngRunner, find_tool
from tests.fixtures.agent_cells import builtin_program
from tests.fixtures.debmirror import Handler, Server, build_tree, serve
from tests.fixtures.kernels import fetch_61
from tests.fixtures.sshd import descendants

REPO = Path(__file__).resolve().parents[2]
COLLECTORS = REPO / "collectors"
HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)>\x1b[31mRED\x1b]0;title\x07\x07"
RAW_MARKS = ("<script>alert", "<img src=x", "\x1b", "\x07")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces and the guest agent"),
]
needs_vng = pytest.mark.skipif(find_tool("vng") is None, reason="virtme-ng is not installed")


@pytest.fixture(scope="module")
def k61() -> tuple[Path, Path]:
    """The 6.1 kernel files; fetched through the catalog when the cache lacks them."""
    return fetch_61()


def write_config(tmp: Path, kernels: str, extra: str = "", sweep: str = "") -> Path:
    """A kernels.toml private to the test: its own cache, runs and reports."""
    path = tmp / "kernels.toml"
    path.write_text(
        f'[settings]\ncache_dir = "{tmp}/cache"\naccel = "tcg"\njobs = 1\n{extra}\n'
        + (sweep or SWEEP)
        + kernels
    )
    return path


SWEEP = """
[sweep]
scenarios = ["1A", "1B"]
window_s = 1
iteration_cap = 200
stall_s = 1
[sweep.sysctls]
"""
HOST = '[[kernel]]\nname = "host"\nsource = "host"\n'


def path_kernel(name: str, vmlinuz: Path, modules: Path | None = None) -> str:
    mods = f'modules = "{modules}"\n' if modules else ""
    return f'[[kernel]]\nname = "{name}"\nsource = "path"\nvmlinuz = "{vmlinuz}"\n{mods}'


def kmatrix(cfg: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KMATRIX_MIRROR"}
    env["COLUMNS"] = "400"  # `kmatrix results` prints whole cells, not ellipses
    cmd = [sys.executable, "-m", "matrix", "--config", str(cfg), *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=cfg.parent, env=env
    )


def rows_of(cfg: Path, run_dir: Path) -> list[dict[str, Any]]:
    """What `kmatrix results --json` records, one dict per cell."""
    out = kmatrix(cfg, "results", str(run_dir), "--json")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def batch_of(run_dir: Path, kernel: str) -> dict[str, Any]:
    return json.loads((run_dir / "batches" / f"{kernel}.json").read_text())


def assert_no_leftovers(marker: Path) -> None:
    """Nothing (QEMU, virtiofsd, vng, the agent, ssh, a puzzle child) names our directory."""
    left = procs.find_by_marker(str(marker))
    lines = [procs._cmdline(p) for p in left]
    assert left == [], f"left behind: {lines}"


def run_in_process(cfg_path: Path, runner: Any, display: Display | None = None) -> Path:
    """`kmatrix run` with `runner` for every batch: the same steps as `cli.cmd_run`."""
    cfg = config.load(cfg_path)
    kernels, failures = job.resolve(list(cfg.kernels), Catalog(cfg.settings.cache_dir))
    batches = plan.plan(kernels, cfg.sweep, cfg.catalogue)
    run_dir = cfg_path.parent / "runs" / "run"
    job.start_run(run_dir, batches, cfg, ["kmatrix", "test"])
    if display:
        display.start(run_dir, batches, failures, set())
    progress = display.event if display else (lambda *a: None)
    job.execute(batches, lambda b: runner, run_dir, 1, progress, failures)
    job.finish_run(run_dir, False)
    return run_dir


def agent_script(tmp: Path, name: str, body: str) -> Path:
    """A test agent: the real agent module is importable as `agent` for those that wrap it."""
    path = tmp / "agents" / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    head = f"import json, os, sys, time\nsys.path.insert(0, {str(COLLECTORS)!r})\n"
    path.write_text(head + body)
    return path


# --- kernels that cannot run ----------------------------------------------------------


@needs_vng
@pytest.mark.parametrize("with_modules", [False, True], ids=["bare", "with-modules"])
def test_garbage_kernel_image_is_infra_at_once(tmp_path: Path, with_modules: bool) -> None:
    """Random bytes: the catalog cannot read a release, or (with a modules dir naming one)
    the runner refuses the image before QEMU sees it; either way in seconds."""
    image = tmp_path / "vmlinuz-junk"
    image.write_bytes(os.urandom(1 << 20))
    mods = tmp_path / "lib" / "modules" / "0.0.0-[/]junk[red]"
    if with_modules:
        mods.mkdir(parents=True)
    cfg = write_config(tmp_path, path_kernel("junk", image, mods if with_modules else None))
    run_dir = tmp_path / "run"
    started = time.monotonic()
    proc = kmatrix(cfg, "run", "--out", str(run_dir), "--no-report")
    assert time.monotonic() - started < 30
    assert proc.returncode == 1, proc.stderr
    why = "not a bootable x86 kernel image" if with_modules else "cannot read a kernel release"
    rows = rows_of(cfg, run_dir)
    assert len(rows) == 2 and all(r["verdict"] == "infra" and why in r["reason"] for r in rows)
    assert why in batch_of(run_dir, "junk")["failure"]
    assert_no_leftovers(tmp_path)


PANIC_AGENT = """
import platform
from pathlib import Path
import agent
args = agent.parse_args(None)
cells = agent.load_cells(args.cells)
agent.emit("KMATRIX-AGENT-START", platform.release())
agent.run_batch(cells[:1], Path(args.out))
with open("/proc/sysrq-trigger", "w") as f:
    f.write("c")
"""


@needs_vng
@pytest.mark.vm
def test_kernel_panic_mid_batch_keeps_the_first_cell(
    tmp_path: Path, k61: tuple[Path, Path]
) -> None:
    """The guest measures one cell, then the kernel panics (sysrq c): the measured cell
    stays, the rest are infra with the panic in the console tail."""
    cfg = write_config(tmp_path, path_kernel("k61", *k61))
    runner = VngRunner(accel="tcg", cpus=1, boot_timeout_s=90, agent=agent_script(
        tmp_path, "panic", PANIC_AGENT))  # fmt: skip
    run_dir = run_in_process(cfg, runner)
    assert_no_leftovers(tmp_path)
    first, second = rows_of(cfg, run_dir)
    assert first["verdict"] == "success" and first["kernel_release"].startswith("6.1.")
    assert second["verdict"] == "infra" and second["reason"] == "no result: kernel panic"
    assert "Kernel panic - not syncing: sysrq triggered crash" in second["console_tail"]
    batch = batch_of(run_dir, "k61")
    assert batch["failure"] == "kernel panic" and batch["results"] == 1
    assert "sysrq triggered crash" in batch["console_tail"]
    assert "sysrq triggered crash" in (run_dir / batch["console_log"]).read_text()


SILENT_AGENT = "time.sleep(3600)\n"
STUCK_AGENT = "print('KMATRIX-AGENT-START stuck', flush=True)\ntime.sleep(3600)\n"


@needs_vng
@pytest.mark.vm
@pytest.mark.parametrize(
    ("body", "boot_s", "why"),
    [
        (SILENT_AGENT, 20.0, "boot deadline (20s) passed before the agent started"),
        (STUCK_AGENT, 40.0, "batch deadline (46s) passed with results for 0 of 2 cells"),
    ],
    ids=["silent", "started-then-stuck"],
)
def test_guest_agent_that_never_answers(
    tmp_path: Path, k61: tuple[Path, Path], body: str, boot_s: float, why: str
) -> None:
    """Boot deadline when the agent never says it started; batch deadline when it did."""
    cfg = write_config(tmp_path, path_kernel("k61", *k61))
    agent = agent_script(tmp_path, "mute", body)
    runner = VngRunner(accel="tcg", boot_timeout_s=boot_s, extra_per_cell_s=1.0, agent=agent)
    started = time.monotonic()
    run_dir = run_in_process(cfg, runner)
    assert time.monotonic() - started < boot_s + 30
    assert_no_leftovers(tmp_path)
    rows = rows_of(cfg, run_dir)
    assert [r["verdict"] for r in rows] == ["infra", "infra"]
    assert all(r["reason"] == f"no result: {why}" for r in rows)
    batch = batch_of(run_dir, "k61")
    assert (
        batch["failure"] == why and "Linux version" in (run_dir / batch["console_log"]).read_text()
    )
    assert batch["console_tail"].strip()


# --- collectors that lie or hang (host runner) ---------------------------------------

MALFORMED_AGENT = """
from pathlib import Path
import agent
args = agent.parse_args(None)
for cell in agent.load_cells(args.cells):
    Path(args.out, cell["id"] + ".json").write_text('{"cell_id": "' + cell["id"] + '", "sta')
"""

SLEEPER_AGENT = """
import agent

SLEEP = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)', sys.argv[1]]); "
    "print('sleeping forever', file=sys.stderr, flush=True); time.sleep(3600)"
)
args = agent.parse_args(None)
marker = os.path.dirname(os.path.abspath(__file__))
with open(args.cells) as f:
    doc = json.load(f)
for cell in doc["cells"]:
    cell.update(
        command=[sys.executable, "-c", SLEEP, marker],
        scenario_dir=marker,
        result="exit",
        timeout_s=2.0,
        env_limits=[],
    )
with open(args.cells, "w") as f:
    json.dump(doc, f)
agent.agent_exec.DEADLINE_SLACK_S = 1.0
sys.exit(agent.main())
"""
"""Every cell's program sleeps (and leaves a grandchild sleeping) past a deadline of
2 s plus 1 s of slack."""


def test_collector_writing_malformed_json_is_infra(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, HOST)
    agent = agent_script(tmp_path, "malformed", MALFORMED_AGENT)
    run_dir = run_in_process(cfg, HostRunner(agent=agent))
    assert_no_leftovers(tmp_path)
    rows = rows_of(cfg, run_dir)
    assert [r["verdict"] for r in rows] == ["infra", "infra"]
    assert all("result rejected: malformed result JSON" in r["reason"] for r in rows), rows
    assert "without results for 2 cells" in batch_of(run_dir, "host")["failure"]


def test_collector_that_sleeps_forever_hits_its_cell_deadline(tmp_path: Path) -> None:
    """The agent's own per-cell deadline (timeout_s + slack) kills the program's whole
    process group, grandchildren included, and the next cell still runs."""
    cfg = write_config(tmp_path, HOST)
    agent = agent_script(tmp_path, "sleeper", SLEEPER_AGENT)
    started = time.monotonic()
    run_dir = run_in_process(cfg, HostRunner(agent=agent))
    assert time.monotonic() - started < 30
    assert_no_leftovers(tmp_path)
    rows = rows_of(cfg, run_dir)
    assert [r["verdict"] for r in rows] == ["infra", "infra"]
    for r in rows:
        assert r["reason"] == "collector timeout: no result within 3 s; process group killed"
    assert batch_of(run_dir, "host")["failure"] == ""


# --- signals ---------------------------------------------------------------------------

SIGNAL_SWEEP = """
[sweep]
scenarios = ["1A", "2A", "2B"]
window_s = 2
iteration_cap = 1000000
knee_margin = 100
knee_margin_s = 0.3
stall_s = 2
[sweep.sysctls]
[sweep.fixed]
"net.ipv4.ip_local_port_range" = "40000 40999"
"""
"""A small port range and a small goal past its knee: 2 s of 2A/2B under TCG get there,
so the cells are conclusive (not infra) and the resumed run can exit 0."""


def wait_for(predicate: Callable[[], bool], timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc.poll() is None, "kmatrix ended before the signal"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


@needs_vng
@pytest.mark.vm
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run_then_resume(tmp_path: Path, k61: tuple[Path, Path], sig: int) -> None:
    """A signal after the first result: exit 130, no QEMU, the result kept; --resume runs
    exactly the cells without one and exits 0."""
    cfg = write_config(tmp_path, path_kernel("k61", *k61), sweep=SIGNAL_SWEEP)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "matrix", "--config", str(cfg), "run", "--out", str(run_dir)]
    proc = subprocess.Popen(
        [*cmd, "--no-report"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: any((run_dir / "cells").glob("*.json")), 120, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()[-2000:]
    assert_no_leftovers(tmp_path)
    kept = {p.name: p.stat().st_mtime_ns for p in (run_dir / "cells").glob("*.json")}
    assert 1 <= len(kept) < 3
    assert batch_of(run_dir, "k61")["failure"] == "interrupted"
    assert json.loads((run_dir / "manifest.json").read_text())["interrupted"] is True
    resumed = kmatrix(cfg, "run", "--resume", str(run_dir), "--no-report")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{3 - len(kept)} cells left" in resumed.stderr
    assert_no_leftovers(tmp_path)
    after = {p.name: p.stat().st_mtime_ns for p in (run_dir / "cells").glob("*.json")}
    assert len(after) == 3 and all(after[n] == t for n, t in kept.items())
    assert all(r["verdict"] != "infra" for r in rows_of(cfg, run_dir))


# --- downloads and the results directory ----------------------------------------------


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg-deb")
    tree = build_tree(tmp_path_factory.mktemp("mirror"), tmp_path_factory.mktemp("debs"))
    srv = serve(tree)
    yield srv
    srv.stop()


def debian_kernel(name: str, package: str) -> str:
    return (
        f'[[kernel]]\nname = "{name}"\nsource = "debian"\nsuite = "broken"\npackage = "{package}"\n'
    )


@needs_vng
def test_bad_downloads_are_infra_and_leave_nothing_cached(tmp_path: Path, mirror: Server) -> None:
    """A hash mismatch and a truncated download: each kernel's cells are infra with the
    reason, the partial files are gone, and nothing booted."""
    kernels = debian_kernel("bad", "linux-image-6.6.0-1-amd64-unsigned") + debian_kernel(
        "cut", "linux-image-6.6.0-2-amd64-unsigned"
    )
    mirrors = f'mirror = "{mirror.url}/debian"\nsecurity_mirror = "{mirror.url}/debian-security"'
    cfg = write_config(tmp_path, kernels, extra=mirrors)
    run_dir = tmp_path / "run"
    proc = kmatrix(cfg, "run", "--out", str(run_dir), "--no-report")
    assert proc.returncode == 1, proc.stderr
    rows = rows_of(cfg, run_dir)
    reasons = {r["kernel"]: r["reason"] for r in rows if r["verdict"] == "infra"}
    assert len(rows) == 4 and set(reasons) == {"bad", "cut"}
    assert "checksum mismatch, file removed" in reasons["bad"]
    assert "truncated: got" in reasons["cut"]
    assert batch_of(run_dir, "bad")["runner"] == "catalog"
    assert not list((tmp_path / "cache" / "debs").iterdir())
    assert not (run_dir / "work").exists() and not (run_dir / "console").exists()
    fetch = kmatrix(cfg, "kernels", "fetch", "bad")
    assert fetch.returncode == 4 and "checksum mismatch" in fetch.stderr
    assert_no_leftovers(tmp_path)


class StallingHandler(Handler):
    """Sends half of every .deb, then goes quiet, as a mirror that hangs mid-transfer."""

    def do_GET(self) -> None:
        if not self.path.endswith(".deb"):
            super().do_GET()
            return
        self.send_half()
        self.wfile.flush()
        time.sleep(30)


@pytest.mark.parametrize("stage", ["index", "download"])
def test_sigterm_while_fetching_exits_130_and_leaves_no_part_file(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, stage: str
) -> None:
    """SIGTERM before the run's own handler is in place (reading the index from a mirror
    that never answers, or mid-download) ends as an interrupt, not a death by signal."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg-deb")
    tree = build_tree(tmp_path / "mirror", tmp_path_factory.mktemp("debs"))
    mute = socket.create_server(("127.0.0.1", 0))  # accepts into its backlog, never answers
    srv = serve(tree, StallingHandler)
    url = srv.url if stage == "download" else f"http://127.0.0.1:{mute.getsockname()[1]}"
    cfg = write_config(
        tmp_path,
        debian_kernel("bad", "linux-image-6.6.0-1-amd64-unsigned"),
        extra=f'mirror = "{url}/debian"\nsecurity_mirror = "{url}/debian-security"',
    )
    cmd = [sys.executable, "-m", "matrix", "--config", str(cfg), "kernels", "fetch"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    debs = tmp_path / "cache" / "debs"
    try:
        if stage == "download":
            wait_for(lambda: any(debs.glob("*.part")), 30, proc)
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        srv.stop()
        mute.close()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not list(debs.glob("*")) if debs.exists() else True


@needs_vng
def test_unwritable_results_directory_fails_before_any_boot(
    tmp_path: Path, k61: tuple[Path, Path]
) -> None:
    """--out under a regular file: a clear error, exit 2, and no QEMU or vng ever ran."""
    cfg = write_config(tmp_path, path_kernel("k61", *k61))
    (tmp_path / "afile").write_text("not a directory")
    cmd = [sys.executable, "-m", "matrix", "--config", str(cfg), "run"]
    proc = subprocess.Popen(
        [*cmd, "--out", str(tmp_path / "afile" / "run")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    spawned: set[str] = set()
    while proc.poll() is None:
        spawned |= {procs._cmdline(p) for p in descendants(proc.pid)}
        time.sleep(0.02)
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 2, err
    assert "cannot write results there (Not a directory); choose another --out" in err
    assert not [c for c in spawned if "qemu" in c or "vng" in c], spawned
    assert_no_leftovers(tmp_path)


# --- hostile guest text ------------------------------------------------------------------

HOSTILE_AGENT = """
from pathlib import Path
import agent
H = {hostile!r}
args = agent.parse_args(None)
print("KMATRIX-AGENT-START", H, flush=True)
cells = agent.load_cells(args.cells)
for n, cell in enumerate(cells[:-1]):
    doc = agent.new_result(cell, 1, time.time())
    series = [dict(t=i * 0.5, iterations=i * 100 * (n + 1), tw=i, state=H, wchan=H)
              for i in range(8)]
    doc.update(status="ok", kernel_release=H, status_detail=H, log_tail=H, series=series,
               ended_at=time.time(), run_host=H,
               metrics=dict(iterations=700, elapsed_s=3.5, ended_by=H, nstat={{H: 1}}),
               error=dict(errno=99, name=H, message=H, iteration=7, phase=H),
               evidence=dict(stall=dict(t=1.0, iterations=3, state="S", wchan=H, stack=H,
                                        syscall=H), final=dict(state=H, wchan=H, stack=H)))
    doc["sysctls"]["read_back"] = {{k: H for k in cell["sysctls"]}}
    doc["sysctls"]["problems"] = [dict(key=H, problem=H, detail=H)]
    agent.write_atomic(Path(args.out, cell["id"] + ".json"), doc)
print("console says", H, flush=True)
"""
HOSTILE_SWEEP = """
[sweep]
scenarios = ["2A", "2B"]
window_s = 1
iteration_cap = 200
stall_s = 1
[sweep.sysctls]
"net.ipv4.tcp_tw_reuse" = [0]
"""


def hostile_run(tmp: Path, display: Display) -> tuple[Path, Path]:
    cfg = write_config(tmp, HOST, sweep=HOSTILE_SWEEP)
    agent = agent_script(tmp, "hostile", HOSTILE_AGENT.format(hostile=HOSTILE))
    return cfg, run_in_process(cfg, HostRunner(agent=agent), display)


def test_hostile_guest_text_is_inert_everywhere(tmp_path: Path) -> None:
    """Markup and terminal escapes from a guest: escaped in every page, stripped from the
    run's progress lines and from `kmatrix results`."""
    live = StringIO()
    cfg, run_dir = hostile_run(tmp_path, Display(Console(file=live, width=200)))
    prior = run_dir.with_name("prior")
    shutil.copytree(run_dir, prior)
    manifest = json.loads((prior / "manifest.json").read_text())
    manifest.update(started_at="2000-01-01T00:00:00+00:00", run_id="prior")
    (prior / "manifest.json").write_text(json.dumps(manifest))
    for p in (prior / "cells").glob("*.json"):
        p.unlink()
    assert "error" in live.getvalue()
    table = kmatrix(cfg, "results", str(run_dir))
    reports = tmp_path / "reports" / "run"
    rendered = kmatrix(cfg, "report", str(run_dir), "--out", str(reports))
    assert table.returncode == 0 and rendered.returncode == 0, rendered.stderr
    assert "RED" in table.stdout and "RED" in live.getvalue()
    for name, text in (("progress", live.getvalue()), ("results", table.stdout)):
        assert "\x1b" not in text and "\x07" not in text, name
    shown = [reports / "index.html", reports / "diff.html"]
    shown += sorted((reports / "cells").glob("*.html"))
    assert len(shown) == 4 and all("RED" in p.read_text() for p in shown)
    for page in [*shown, reports.parent / "index.html"]:
        html = page.read_text()
        assert not [m for m in RAW_MARKS if m in html], page
    assert_no_leftovers(tmp_path)


def test_markup_in_a_release_does_not_break_the_live_display(tmp_path: Path) -> None:
    """rich parses progress-bar descriptions as markup: "[/]" in a release used to crash
    the display of a terminal user's run, and "[red]" restyled it."""
    image = tmp_path / "vmlinuz"
    image.write_bytes(b"x")
    spec = KernelSpec("k", PathSource(image))
    kernel = ResolvedKernel(spec, release="6.1-[/]odd[red]", vmlinuz=image)
    batch = Batch(kernel, (Cell("k", "1A", (), 0, Limits(), program=builtin_program("1A")),))
    screen = StringIO()
    display = Display(Console(file=screen, force_terminal=True, width=120))
    with display:
        display.start(tmp_path, [batch], {}, set())
        display.download("k: [/]linux-image[bold].deb", 1, 2)
        display.progress.refresh()
    assert "6.1-[/]odd[red]" in screen.getvalue() and "[/]linux-image[bold]" in screen.getvalue()
