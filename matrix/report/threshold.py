"""The threshold page of a `kmatrix threshold` run: per kernel the flip bracket, the rates
measured on both sides of it, the flip the seed's explanation predicts, and a plot of
late/early rate against the searched value (data drawn by uPlot, as on every page).

It reads threshold.json (what the search decided) and the run's table (what each probe
cell measured), so re-rendering after a change of classifier thresholds shows the cells'
new verdicts next to the bracket the search found with the old ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matrix.report.plots import plot_json
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
        "plot": ratio_plot(probes, b, pred[0] if pred else None, key, ratio),
    }


def ratio_plot(
    probes: list[dict[str, Any]],
    b: Mapping[str, Any],
    predicted: float | None,
    xlabel: str = "value",
    success_ratio: float | None = None,
) -> dict[str, Any] | None:
    """Late/early rate of every probe cell against the value, success and the rest in
    two colours; the band is the bracket, the dashed line the predicted flip and the
    dotted one the classifier's success ratio (a probe above it is not a slowdown)."""
    points = sorted(
        (float(p["value"]), float(r["rate_ratio"]), r.get("verdict") == th.SUCCESS)
        for p in probes
        for r in p["rows"]
        if isinstance(r.get("rate_ratio"), int | float)
    )
    if not points:
        return None
    series = [
        {
            "label": label,
            "colour": colour,
            "values": [y if ok == want else None for _, y, ok in points],
            "axis": 0,
        }
        for want, colour, label in ((True, OK_COLOUR, "success"), (False, BAD_COLOUR, "other"))
    ]
    return {
        "x": [x for x, _, _ in points],
        "xlabel": xlabel,
        "axes": ["late / early rate"],
        "points": True,
        "scatter": True,
        "series": series,
        "bands": [{"from": b["lo"], "to": b["hi"], "colour": "#fde68a"}] if b.get("found") else [],
        "vlines": [{"x": predicted, "colour": PREDICT_COLOUR, "label": "predicted"}]
        if predicted is not None
        else [],
        "hlines": [{"y": success_ratio, "colour": PREDICT_COLOUR, "label": ""}]
        if success_ratio is not None
        else [],
    }


def render_threshold(run: RunData, out_dir: Path, env: Any) -> Path:
    """Write out_dir/threshold.html from the run's threshold.json and table."""
    doc = rundir.read_json(run.run_dir / "threshold.json")
    rows = {r["cell_id"]: r for r in records(run.table)} if len(run.table) else {}
    ratio = (run.manifest.get("thresholds") or {}).get("success_min_ratio")
    kernels = [kernel_context(doc["key"], n, k, rows, ratio) for n, k in doc["kernels"].items()]
    for k in kernels:
        k["plot_json"] = plot_json(k["plot"]) if k["plot"] else ""
    html = env.get_template(PAGE).render(
        manifest=run.manifest, search=doc, kernels=kernels, assets="assets/"
    )
    path = Path(out_dir) / PAGE
    rundir.write_text_atomic(path, html)
    return path
