"""The report in a real browser: a small real run on the host kernel, opened in headless
Chromium. `--dump-dom` returns the DOM after the page's scripts ran, so it shows whether
the matrix rendered, whether the filter/sort script initialised and applied a filter
from the URL, and whether a cell page carries its plot; a screenshot checks that
something was actually painted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

CHROMIUM = Path("/usr/bin/chromium")
RUN_ID = "browser-run"


def chromium(tmp: Path, *args: str) -> str:
    """Run headless Chromium with everything that would reach the network turned off."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (Debian package `chromium`)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp / 'chromium-profile'}",
    ]
    proc = subprocess.run(
        [str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run of 1A, 1B and a 2B cell that exhausts a 1,000-port range."""
    tmp = tmp_path_factory.mktemp("browser")
    (tmp / "kernels.toml").write_text(
        f'[settings]\nreports_dir = "{tmp / "reports"}"\nruns_dir = "{tmp / "runs"}"\n'
        '[[kernel]]\nname = "host"\nsource = "host"\n'
    )
    cmd = [sys.executable, "-m", "matrix", "run", "--kernels", "host"]
    cmd += ["--scenarios", "1A,1B,2B", "--window", "3", "--out", str(tmp / "runs" / RUN_ID)]
    for sysctl in (
        "net.ipv4.tcp_max_tw_buckets=65535",
        "net.ipv4.ip_local_port_range=40000 40999",
        "net.ipv4.tcp_tw_reuse=0",
    ):
        cmd += ["--sysctl", sysctl]
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp / "runs" / RUN_ID / "results.junit.xml").is_file()
    return tmp / "reports"


def test_matrix_page_renders_and_its_script_runs(reports: Path, tmp_path: Path) -> None:
    page = reports / RUN_ID / "index.html"
    dom = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert re.search(r'<table class="matrix" id="matrix"[^>]*data-ready="1"', dom)
    assert re.search(r'<section class="tools" id="tools"[^>]*data-ready="1"', dom)
    cells = re.findall(r'<td class="c[^"]*" data-s="2B" data-v="(\w+)"', dom)
    assert cells and set(cells) <= {"success", "slowdown", "hang", "error"}
    assert re.search(r'<a class="v (success|slowdown|hang|error)', dom)
    assert "1B / 1A" in dom and "sk_stream_is_writeable" in dom
    assert re.findall(r'<section class="scenarios" data-scenarios="([^"]*)"', dom) == [
        "2B",
        "1A 1B",
    ]
    assert "<h2>Puzzle 2: TIME-WAIT symmetry<span" in dom and "In 2B the client closes first" in dom
    assert 'href="../index.html"' in dom and 'href="diff.html"' in dom


def test_filter_from_the_url_hides_what_does_not_match(reports: Path, tmp_path: Path) -> None:
    page = (reports / RUN_ID / "index.html").as_uri()
    dom = chromium(tmp_path, "--dump-dom", page + "#k=no-such-kernel")
    row = re.search(r'<tr class="hostrow" data-k="host [^"]*"[^>]*>', dom).group(0)
    assert 'style="display: none;"' in row
    dom = chromium(tmp_path, "--dump-dom", page + "#s=1A")
    assert re.search(r'<section class="scenarios" data-scenarios="2B" style="display: none;">', dom)
    assert re.search(r'<section class="scenarios" data-scenarios="1A 1B"(?: style="")?>', dom)
    dom = chromium(tmp_path, "--dump-dom", page + "#s=2B")
    assert re.search(r'<section class="scenarios" data-scenarios="2B"(?: style="")?>', dom)
    hidden = r'<section class="scenarios" data-scenarios="1A 1B" style="display: none;">'
    assert re.search(hidden, dom)


def test_cell_page_has_its_plot(reports: Path, tmp_path: Path) -> None:
    index = (reports / RUN_ID / "index.html").read_text()
    href = re.search(r'<td class="c[^"]*" data-s="2B"[^>]*>\s*<a [^>]*href="([^"]+)"', index)
    assert href, "no 2B cell link in the matrix"
    dom = chromium(tmp_path, "--dump-dom", (reports / RUN_ID / href.group(1)).as_uri())
    assert "<svg" in dom and "Connections per second and TIME-WAIT" in dom
    assert "connections/s" in dom and "Key metrics" in dom and "early rate (/s)" in dom


def test_runs_index_lists_the_run(reports: Path, tmp_path: Path) -> None:
    dom = chromium(tmp_path, "--dump-dom", (reports / "index.html").as_uri())
    assert f'href="{RUN_ID}/index.html"' in dom and f'href="{RUN_ID}/diff.html"' in dom
    diff = (reports / RUN_ID / "diff.html").read_text()
    assert "What changed in run" in diff


def test_screenshot_is_not_blank(reports: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "matrix.png"
    page = (reports / RUN_ID / "index.html").as_uri()
    chromium(tmp_path, "--hide-scrollbars", "--window-size=1280,900", f"--screenshot={shot}", page)
    assert shot.stat().st_size > 10_000
    with Image.open(shot) as img:
        assert img.size == (1280, 900)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, "the screenshot is (nearly) one colour"
