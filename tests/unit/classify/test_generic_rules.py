"""Any scenario is judged from its manifest: what the program reported (exit status,
LAVA/TAP test cases, its own verdict), metric rules, and rules against a baseline kernel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matrix.classify.figures import key_figure
from matrix.classify.rules import classify
from matrix.model import HostSource, KernelSpec, ResolvedKernel, Sweep, Verdict
from matrix.plan import cells as plan
from matrix.results.table import build_rows
from matrix.scenarios.catalogue import Catalogue, load_catalogue

MANIFEST = """\
title = "loopback throughput"
command = ["sh", "run.sh"]
timeout_s = 30
result = "json"
[metrics.throughput]
unit = "bit/s"
better = "higher"
scale = 1e-9
display_unit = "Gbit/s"
digits = 2
[metrics.retransmits]
better = "lower"
[[rules]]
rule = "metric"
metric = "retransmits"
op = "<"
value = 100
otherwise = "fail"
reason = "too many retransmits"
[[rules]]
rule = "baseline"
metric = "throughput"
min_ratio = 0.8
[report]
key = "throughput"
success = "{throughput:,.0f} bit/s"
"""


def catalogue(tmp: Path, text: str = MANIFEST, name: str = "tput") -> Catalogue:
    d = tmp / "mine" / name
    d.mkdir(parents=True)
    (d / "scenario.toml").write_text(text)
    return load_catalogue([tmp / "mine"])


def ok(scenario: str, **parts: Any) -> dict[str, Any]:
    return {"status": "ok", "scenario": scenario, "metrics": {}, "series": []} | parts


def test_the_programs_own_report_decides_before_any_rule(tmp_path: Path) -> None:
    cat = catalogue(tmp_path)
    cases = [
        {"name": "a", "result": "pass"},
        {"name": "b", "result": "fail"},
        {"name": "c", "result": "skip"},
    ]
    failed = classify(
        ok("tput", program={"outcome": "fail", "exit_code": 0}, testcases=cases), scenarios=cat
    )
    assert failed.verdict is Verdict.FAIL and failed.reason == "fail: 1 of 3 test cases failed: b"
    skipped = classify(ok("tput", program={"outcome": "skip", "exit_code": 4}), scenarios=cat)
    assert skipped.verdict is Verdict.SKIP and "exit status 4" in skipped.reason
    errored = classify(ok("tput", program={"outcome": "error", "exit_code": 2}), scenarios=cat)
    assert errored.verdict is Verdict.ERROR and "exit status 2" in errored.reason


def test_metric_rules_then_the_programs_verdict_then_success(tmp_path: Path) -> None:
    cat = catalogue(tmp_path)
    busy = classify(ok("tput", metrics={"throughput": 9e9, "retransmits": 500}), scenarios=cat)
    assert (busy.verdict, busy.reason) == (Verdict.FAIL, "too many retransmits")
    own = classify(
        ok("tput", metrics={"throughput": 9e9, "retransmits": 0}, verdict="slowdown"),
        scenarios=cat,
    )
    assert own.verdict is Verdict.SLOWDOWN and "the program's verdict" in own.reason
    good = classify(ok("tput", metrics={"throughput": 9e9, "retransmits": 0}), scenarios=cat)
    assert (good.verdict, good.reason) == (Verdict.SUCCESS, "9,000,000,000 bit/s")
    assert key_figure(cat.get("tput"), good) == "9.00 Gbit/s"


def test_an_unknown_scenario_is_judged_by_what_it_reported() -> None:
    c = classify(
        ok(
            "nobody-knows",
            program={"outcome": "pass", "exit_code": 0},
            testcases=[{"name": "x", "result": "pass"}],
        )
    )
    assert c.verdict is Verdict.SUCCESS and c.reason == "1 of 1 test cases passed"
    assert key_figure("nobody-knows", c) == "1/1 pass"


def kernel(name: str) -> ResolvedKernel:
    return ResolvedKernel(KernelSpec(name, HostSource()), f"6.{len(name)}")


def test_a_baseline_rule_compares_the_same_cell_on_the_baseline_kernel(tmp_path: Path) -> None:
    cat = catalogue(tmp_path)
    batches = plan.plan([kernel("base"), kernel("newer")], Sweep(("tput",), ()), cat)
    doc = json.loads(json.dumps(plan.to_doc(batches, (), cat, "base")))
    values = {"base": 10e9, "newer": 6e9}
    raw = {
        c["id"]: {
            "schema": 1,
            "cell_id": c["id"],
            "scenario": "tput",
            "trial": 0,
            "status": "ok",
            "metrics": {"throughput": values[c["kernel"]], "retransmits": 0},
        }
        for c in doc["cells"]
    }
    rows = {r["kernel"]: r for r in build_rows(doc, raw, {})}
    assert rows["base"]["verdict"] == "success"
    assert rows["newer"]["verdict"] == "slowdown"
    assert "0.60x the baseline's" in rows["newer"]["reason"]
    assert rows["newer"]["metrics"]["throughput_vs_baseline"] == 0.6
    assert rows["newer"]["key_figure"] == "6.00 Gbit/s"
