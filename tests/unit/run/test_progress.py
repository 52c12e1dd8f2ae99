"""The live display never shows a verdict the final table does not have."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

from rich.console import Console

from matrix.model import Batch, Cell, HostSource, KernelSpec, Limits, ResolvedKernel
from matrix.plan.cells import to_doc
from matrix.results.table import build_rows
from matrix.run.progress import Display
from tests.unit.classify.test_remeasure import crawl, short, thin


def _shown(display: Display, out: StringIO, kernel: str, doc: dict[str, Any]) -> str:
    out.truncate(0)
    out.seek(0)
    display.event(kernel, "result", doc)
    return out.getvalue()


def test_the_last_line_shown_for_a_cell_is_the_tables_verdict(tmp_path: Path) -> None:
    kernel = ResolvedKernel(KernelSpec("host", HostSource()), "6.x")
    cells = [
        Cell("host", "2B", (("net.ipv4.tcp_tw_reuse", str(n)),), 0, Limits()) for n in range(3)
    ]
    batches = [Batch(kernel, tuple(cells))]
    out = StringIO()
    display = Display(Console(file=out, width=200, color_system=None))
    display.start(tmp_path, batches, {}, set())
    a, b, c = (cell.id for cell in cells)
    raw = {
        a: thin(),
        f"{a}.a2": crawl(),
        f"{a}.a3": crawl(),
        b: short(),
        f"{b}.a2": thin(),
        f"{b}.a3": thin(),
        c: crawl(),
    }
    last: dict[str, str] = {}
    for cell_id, doc in raw.items():
        doc = dict(doc, cell_id=cell_id, scenario="2B")
        raw[cell_id] = doc
        last[cell_id.split(".")[0]] = _shown(display, out, "host", doc)
    assert "thin margin" in _shown(display, out, "host", dict(raw[a], cell_id="x"))
    rows = build_rows(to_doc(batches, ()), raw, {})
    for row in rows:
        words = last[row["cell_id"]].split()
        assert row["verdict"] in words, (row["verdict"], last[row["cell_id"]])
        assert "thin margin" not in last[row["cell_id"]]
    assert [r["confirmation"] for r in rows] == ["majority", "confirmed", "single-shot"]
    assert [r["attempts"] for r in rows] == [3, 3, 1]
