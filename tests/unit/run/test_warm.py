"""`kmatrix run` starts without pandas, numpy or the report, and loads them beside the
first cells."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_imports_none_of_the_heavy_modules() -> None:
    code = (
        "import sys, matrix.cli.main\n"
        "heavy = [m for m in ('pandas', 'numpy', 'jinja2', 'matrix.report.render')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_warm_thread_loads_them(tmp_path) -> None:
    code = (
        "import sys\n"
        "from matrix.run import warm\n"
        "warm.start(report=True).join(120)\n"
        "print(all(m in sys.modules for m in ('pandas', 'matrix.report.render')))"
    )
    env = {"XDG_CACHE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "True"
    assert list((tmp_path / "kmatrix" / "templates").iterdir()), "no compiled template kept"
