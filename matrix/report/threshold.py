"""The threshold page of a `kmatrix threshold` run: per kernel the flip bracket, the rates
measured on both sides of it, the flip the seed's explanation predicts, and a plot of
late/early rate against the searched value.

It reads threshold.json (what the search decided) and the run's table (what each probe
cell measured), so re-rendering after a change of classifier thresholds shows the cells'
new verdicts next to the bracket the search found with the old ones.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup

from matrix.report.plots import _RC, Figure, matplotlib
from matrix.results.table import RunData, records
from matrix.run import rundir
from matrix.search import threshold as th

PAGE = "threshold.html"
OK_COLOUR, BAD_COLOUR, PREDICT_COLOUR = "#16a34a", "#dc2626", "#6b7280"


def is_threshold_run(run_dir: Path) -> bool:
    return (Path(run_dir) / "threshold.json").is_file()


def _mean(values: Sequence[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, int | float) and v == v]
    return sum(nums) / len(nums) if nums else None


def probe_rows(probes: list[dict[str, Any]], rows: Mapping[str, dict[str, Any]]) -> list[dict]:
    """Each probe with its cells' rows and the mean rates over its trials."""
    out = []
    for p in probes:
        cells = [rows[c] for c in p["cells"] if c in rows]
        out.append(
            dict(
                p,
                rows=cells,
                early=_mean([r.get("early_rate") for r in cells]),
                late=_mean([r.get("late_rate") for r in cells]),
                ratio=_mean([r.get("rate_ratio") for r in cells]),
                tw_max=max((r.get("tw_max") or 0 for r in cells), default=None),
            )
        )
    return out


def kernel_context(
    key: str, name: str, doc: dict[str, Any], rows: Mapping[str, dict], ratio: float | None = None
) -> dict:
    """One kernel's part of the page: bracket, both sides' rates, the predicted flip."""
    probes = probe_rows(doc["probes"], rows)
    b = doc["bracket"]
    by_value = {p["value"]: p for p in probes}
    read_back: dict[str, str] = {}
    for p in probes:
        for r in p["rows"]:
            read_back.update({k: v for k, v in (r.get("sysctls_read") or {}).items() if v})
    pred = th.predicted(key, read_back)
    inside = None
    if pred and b["found"]:
        lo, hi = b["zone"] or (b["lo"], b["hi"])
        inside = lo < pred[0] <= hi
    return {
        "name": name,
        "bracket": b,
        "below": by_value.get(b["lo"]),
        "above": by_value.get(b["hi"]),
        "probes": probes,
        "rounds": doc["rounds"],
        "stopped": doc["stopped"],
        "predicted": pred,
        "inside": inside,
        "plot": Markup(ratio_svg(probes, b, pred[0] if pred else None, key, ratio)),
    }


def ratio_svg(
    probes: list[dict[str, Any]],
    b: Mapping[str, Any],
    predicted: float | None,
    xlabel: str = "value",
    success_ratio: float | None = None,
) -> str:
    """Late/early rate of every probe cell against the value, coloured by verdict; the
    dotted line is the classifier's success ratio (a probe above it is not a slowdown)."""
    points = [
        (p["value"], r.get("rate_ratio"), r.get("verdict"))
        for p in probes
        for r in p["rows"]
        if isinstance(r.get("rate_ratio"), int | float)
    ]
    if not points:
        return ""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(6.0, 2.4))
        ax = fig.subplots()
        for ok, colour, label in ((True, OK_COLOUR, "success"), (False, BAD_COLOUR, "other")):
            sel = [(x, y) for x, y, v in points if (v == th.SUCCESS) == ok]
            if sel:
                ax.scatter(*zip(*sel, strict=True), s=14, color=colour, label=label, zorder=3)
        if b.get("found"):
            ax.axvspan(b["lo"], b["hi"], color="#fde68a", alpha=0.6, lw=0, label="bracket")
        if predicted is not None:
            ax.axvline(predicted, color=PREDICT_COLOUR, ls="--", lw=1, label="predicted")
        if success_ratio is not None:
            ax.axhline(success_ratio, color=PREDICT_COLOUR, ls=":", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("late / early rate")
        ax.set_ylim(0, max(1.1, max(y for _, y, _ in points) * 1.05))
        ax.spines["top"].set_visible(False)
        ax.spines["right"].set_visible(False)
        ax.legend(loc="upper right", fontsize=7, frameon=False)
        fig.subplots_adjust(left=0.1, right=0.98, bottom=0.18, top=0.96)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.find("<svg") :]


def render_threshold(run: RunData, out_dir: Path, env: Any) -> Path:
    """Write out_dir/threshold.html from the run's threshold.json and table."""
    doc = rundir.read_json(run.run_dir / "threshold.json")
    rows = {r["cell_id"]: r for r in records(run.table)} if len(run.table) else {}
    ratio = (run.manifest.get("thresholds") or {}).get("success_min_ratio")
    kernels = [kernel_context(doc["key"], n, k, rows, ratio) for n, k in doc["kernels"].items()]
    html = env.get_template(PAGE).render(manifest=run.manifest, search=doc, kernels=kernels)
    path = Path(out_dir) / PAGE
    rundir.write_text_atomic(path, html)
    return path
