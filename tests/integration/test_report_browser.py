"""The report in a real browser: a small real run on the host kernel, opened in headless
Chromium. `--dump-dom` returns the DOM after the page's scripts ran, so it shows whether
the matrix rendered, whether the filter/sort script initialised and applied a filter
from the URL, and whether uPlot drew a cell's plot and zooms it; a screenshot checks
that something was actually painted. The layout at 1,440 x 900 is measured in the page
itself, on a run of the default sweep's shape made of recorded cells: a probe script
appended to a copy of the page writes what it measured into a data attribute.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from matrix.report.render import render_report
from matrix.results.table import load_run
from tests.fixtures.recorded_runs import DEFAULT_KERNELS, sweep_run

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


def probed(page: Path, probe: str, tmp_path: Path, *flags: str) -> dict:
    """What `probe` measured in `page`, opened in Chromium. The probe is a JavaScript
    function of `done`, run after the page's own scripts in a copy of the page next to
    it (so its assets resolve); what it passes to `done` lands in body[data-probe].
    Anything uPlot commits (a zoom) it commits in a microtask, so a probe reads it back
    in one of its own, which still runs before Chromium dumps the DOM."""
    copy = page.with_name(f"probe-{page.name}")
    done = "function (r) { document.body.setAttribute('data-probe', JSON.stringify(r)); }"
    script = f"<script>({probe})({done});</script>"
    copy.write_text(page.read_text().replace("</body>", script + "</body>"))
    dom = chromium(tmp_path, *flags, "--dump-dom", copy.as_uri())
    found = re.search(r'<body data-probe="([^"]*)"', dom)
    assert found, "the probe did not run"
    return json.loads(html.unescape(found.group(1)))


ZOOM = """function (done) {
  var host = document.getElementById("series-plot"), u = host.uplot;
  var over = host.querySelector(".u-over"), r = over.getBoundingClientRect();
  function ev(type, at, target) {
    (target || over).dispatchEvent(new MouseEvent(type, {bubbles: true, view: window,
      button: 0, buttons: 1, movementX: 5,
      clientX: r.left + at * r.width, clientY: r.top + r.height / 2}));
  }
  var full = [u.scales.x.min, u.scales.x.max];
  ev("mousemove", 0.95);
  var hover = Array.prototype.map.call(host.querySelectorAll(".u-legend .u-value"),
    function (e) { return e.textContent; });
  ev("mousedown", 0.25); ev("mousemove", 0.5); ev("mousemove", 0.75);
  ev("mouseup", 0.75, document);
  Promise.resolve().then(function () {
    done({drawn: host.getAttribute("data-drawn"), canvas: !!host.querySelector("canvas"),
          full: full, zoomed: [u.scales.x.min, u.scales.x.max], hover: hover});
  });
}"""


def test_cell_page_draws_its_plot_and_zooms_on_the_time_axis(reports: Path, tmp_path: Path) -> None:
    index = (reports / RUN_ID / "index.html").read_text()
    href = re.search(r'<td class="c[^"]*" data-s="2B"[^>]*>\s*<a [^>]*href="([^"]+)"', index)
    assert href, "no 2B cell link in the matrix"
    page = reports / RUN_ID / href.group(1)
    text = page.read_text()
    assert "Connections per second and TIME-WAIT" in text and "early rate (/s)" in text
    got = probed(page, ZOOM, tmp_path)
    assert got["canvas"] and int(got["drawn"]) >= 2
    lo, hi = got["full"]
    zlo, zhi = got["zoomed"]
    assert lo < zlo < zhi < hi, got
    assert (zhi - zlo) == pytest.approx((hi - lo) / 2, rel=0.1)
    seconds, rate, tw = got["hover"]
    assert seconds.endswith(" s") and rate != "–" and tw != "–", got["hover"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the default sweep on the default catalogue's 6 kernels, made of the
    recorded cells; one 2B cell stopped short of its knee (the widest figure a cell has)."""
    tmp = tmp_path_factory.mktemp("sweep")
    run = sweep_run(tmp / "sweep-run", inconclusive=[("7.3-rc", "2B", "2000", "1")])
    return render_report(load_run(run), tmp / "report")


LAYOUT = """function (done) {
  var width = innerWidth, outside = [];
  function check(sel) {
    var found = document.querySelectorAll(sel);
    Array.prototype.forEach.call(found, function (el) {
      var r = el.getBoundingClientRect();
      if (r.left < 0 || r.right > width || r.width === 0) {
        outside.push(sel + ": " + el.textContent.trim().slice(0, 40));
      }
    });
    return found.length;
  }
  var scrolled = Array.prototype.filter.call(document.querySelectorAll("div.scroll"),
    function (el) { return el.scrollWidth > el.clientWidth; }).length;
  done({scroll_width: document.documentElement.scrollWidth, inner_width: width,
          matrix_cells: check("table.matrix td.c"), kernel_cells: check("table.matrix td.k"),
          headings: check("table.matrix th"), pair_cells: check("table.pairs td"),
          plots: check(".kplot .uplot-host[data-drawn] canvas"), outside: outside,
          scrolled: scrolled,
          verdicts: Array.prototype.map.call(document.querySelectorAll("table.matrix td.c"),
            function (td) { return td.getAttribute("data-v"); })});
}"""


def test_the_default_sweep_fits_a_1440_by_900_screen(sweep: Path, tmp_path: Path) -> None:
    got = probed(sweep, LAYOUT, tmp_path, "--window-size=1440,900")
    assert got["inner_width"] == 1440
    assert got["scroll_width"] <= got["inner_width"], got
    kernels, settings = len(DEFAULT_KERNELS), 2 * 6
    assert got["matrix_cells"] == kernels * settings and got["kernel_cells"] == 2 * kernels
    assert got["pair_cells"] == kernels * 7
    assert got["outside"] == [] and got["scrolled"] == 0, got
    assert got["plots"] == 3
    assert all(got["verdicts"]) and "infra" in got["verdicts"]
    page = sweep.read_text()
    assert '<span class="fig">11,103 conns, stopped short of the knee</span>' in page
    assert "no result<" not in page


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
