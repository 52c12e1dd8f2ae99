"""The threshold page's figures from a synthetic search: bracket sides, prediction, plot."""

from __future__ import annotations

from matrix.report.threshold import kernel_context
from matrix.search import threshold as th

PORTS = {"net.ipv4.ip_local_port_range": "32768 40959"}


def row(cid: str, verdict: str, early: float, late: float) -> dict:
    ratio = late / early
    return dict(
        cell_id=cid,
        verdict=verdict,
        early_rate=early,
        late_rate=late,
        rate_ratio=ratio,
        tw_max=100,
        sysctls_read=PORTS,
    )


def test_kernel_context_sides_and_prediction() -> None:
    probes = [th.Probe(4000, ("success",)), th.Probe(4100, ("slowdown",))]
    b = th.bracket(probes)
    doc = {
        "probes": [
            {"value": 4000, "cells": ["a"], "label": "success", "unanimous": True},
            {"value": 4100, "cells": ["b"], "label": "slowdown", "unanimous": True},
        ],
        "bracket": dict(vars(b), found=b.found, width=b.width),
        "rounds": [{"round": 1, "values": [4000, 4100], "failure": ""}],
        "stopped": "done",
    }
    rows = {"a": row("a", "success", 25000, 24000), "b": row("b", "slowdown", 20000, 1500)}
    k = kernel_context("net.ipv4.tcp_max_tw_buckets", "host", doc, rows, 0.2)
    assert k["predicted"][0] == 4096 and k["inside"] is True
    assert k["below"]["late"] == 24000 and k["above"]["ratio"] == 0.075
    plot = k["plot"]
    assert plot["x"] == [4000.0, 4100.0] and plot["scatter"] and plot["points"]
    assert [s["values"] for s in plot["series"]] == [[0.96, None], [None, 0.075]]
    assert plot["bands"] == [{"from": 4000, "to": 4100, "colour": "#fde68a"}]
    assert plot["vlines"][0]["x"] == 4096 and plot["hlines"][0]["y"] == 0.2
