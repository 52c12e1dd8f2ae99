"""The matrix page's explanations carry this run's figures, never canned ones, and take
their wording from the scenarios' manifests."""

from __future__ import annotations

import tomllib
from pathlib import Path

from matrix.report import explain
from matrix.scenarios.catalogue import builtin
from matrix.scenarios.manifest import Scenario, parse

S2A, S2B = builtin().get("2A"), builtin().get("2B")
S1A, S1B = builtin().get("1A"), builtin().get("1B")


def scenario(name: str, toml: str) -> Scenario:
    """A manifest that no code knows, read the way the catalogue reads one."""
    return parse(f"{name}/scenario.toml", name, Path(name), tomllib.loads(toml), "test")


def p2(kernel: str, label: str, verdict: str, trial: int = 0, **metrics: object) -> dict:
    return {
        "kernel": kernel,
        "scenario": "2B",
        "sysctl_label": label,
        "trial": trial,
        "verdict": verdict,
        **metrics,
    }


ROWS = [
    p2("6.1", "reuse=0", "slowdown", early_rate=13000.0, late_rate=40.0, tw_max=28231),
    p2("6.1", "reuse=1", "success", early_rate=12000.0, late_rate=11800.0, tw_max=1500),
    p2("6.12", "reuse=0", "error", error_name="EADDRNOTAVAIL", error_iteration=28232, tw_max=28232),
    p2("6.12", "reuse=1", "success", early_rate=9800.0, late_rate=9700.0, tw_max=1400),
    p2("7.2", "reuse=0", "infra"),
]


def test_series_findings_name_collapsed_cells_with_their_figures() -> None:
    text = explain.series_findings(ROWS, S2B)
    assert "2 of 4 measured 2B cells on 2 kernels collapsed" in text
    assert "6.1 with reuse=0 fell from 13,000/s to 40/s with 28,231 TIME-WAIT sockets" in text
    assert "6.12 with reuse=0 died with EADDRNOTAVAIL at iteration 28,232" in text
    assert "2 cells kept their rate at 9,800-12,000/s, with at most 1,500 TIME-WAIT" in text
    assert "collapsed on every kernel: reuse=0; held on every kernel: reuse=1" in text


def test_series_findings_count_trials_of_one_setting_once() -> None:
    rows = [
        p2("6.1", "reuse=0", "hang", trial=t, iterations=14100, evidence_state="R") for t in (0, 1)
    ]
    rows.append(p2("6.1", "reuse=0", "success", trial=2, early_rate=1.0, late_rate=1.0))
    text = explain.series_findings(rows, S2B)
    assert text.count("6.1 with reuse=0") == 1 and "(2 of 3 trials)" in text
    assert "stalled after 14,100 connections" in text and "(state R)" in text
    assert explain.series_findings(rows, S2A) == "No 2A cell was measured in this run."


QUEUE = """
title = "a queue that fills"
command = ["./q"]
timeout_s = 10
[metrics.packets]
unit = "packets"
[metrics.backlog]
unit = "packets waiting"
[[rules]]
rule = "series_rate"
counter = "packets"
[report]
context = "backlog"
"""


def test_series_findings_quote_the_manifests_context_metric_and_counter() -> None:
    spec = scenario("qfill", QUEUE)
    rows = [
        {
            "kernel": "6.1",
            "scenario": "qfill",
            "sysctl_label": "",
            "params": {"depth": "8"},
            "verdict": "hang",
            "metrics": {"packets": 900, "backlog": 512},
        },
        {
            "kernel": "6.1",
            "scenario": "qfill",
            "sysctl_label": "",
            "params": {"depth": "2"},
            "verdict": "success",
            "early_rate": 50.0,
            "metrics": {"packets": 5000, "backlog": 3},
        },
    ]
    text = explain.series_findings(rows, spec)
    assert "6.1 with depth=8 stalled after 900 packets with 512 packets waiting" in text
    assert "1 cells kept their rate at 50/s, with at most 3 packets waiting" in text
    assert "TIME-WAIT" not in text


def p1(name: str, a: int, b: int) -> dict:
    return {
        "kernel": {"name": name},
        "a": {"bytes_queued": a, "metrics": {"sndbuf_after": 4_194_304}},
        "b": {"bytes_queued": b},
        "ratio": b / a,
    }


def test_pair_findings_give_the_ratio_range_and_call_out_odd_kernels() -> None:
    text = explain.pair_findings(
        [p1("5.10", 3_000_000, 1_992_000), p1("6.1", 3_000_000, 2_010_000)], S1A, S1B
    )
    assert "1B / 1A ratio of bytes queued ranged from 0.664 (5.10) to 0.670 (6.1)" in text
    assert (
        "across 2 kernels (e.g. 3,000,000 B vs 1,992,000 B; SO_SNDBUF after: 4,194,304 B)" in text
    )
    assert "Every kernel is within 0.05 of 2/3" in text
    odd = explain.pair_findings(
        [p1("6.1", 3_000_000, 2_000_000), p1("odd", 3_000_000, 2_900_000)], S1A, S1B
    )
    assert "More than 0.05 from 2/3, so the mechanism differs on: odd." in odd
    assert "0.967 (odd)" in odd
    one = explain.pair_findings([p1("6.1", 3_000_000, 2_000_000)], S1A, S1B)
    assert "1B's bytes queued was 0.667 of 1A's on 6.1" in one and "within 0.05 of 2/3" in one
    assert explain.pair_findings([], S1A, S1B) == "No kernel in this run measured both 1A and 1B."


FAST = """
title = "fast path"
command = ["./f"]
timeout_s = 10
[metrics.ops]
unit = "ops/s"
label = "operations"
"""
SLOW = FAST.replace("fast path", "slow path") + '[report.ratio]\nof = "fast"\nmetric = "ops"\n'


def test_a_pair_without_an_expected_ratio_states_only_what_was_measured() -> None:
    fast, slow = scenario("fast", FAST), scenario("slow", SLOW)
    rows = [{"kernel": {"name": "6.1"}, "a": {"ops": 200}, "b": {"ops": 50}, "ratio": 0.25}]
    text = explain.pair_findings(rows, fast, slow)
    assert (
        text
        == "In this run slow's operations was 0.250 of fast's on 6.1 (e.g. 200 ops/s vs 50 ops/s)."
    )


THROUGHPUT = """
title = "throughput probe"
command = ["./t"]
timeout_s = 10
result = "lava"
[metrics.rate]
unit = "bit/s"
label = "throughput"
scale = 1e-9
display_unit = "Gbit/s"
digits = 2
[report]
key = "rate"
"""


def test_any_other_scenario_gets_its_verdicts_and_key_metric_span_per_kernel() -> None:
    spec = scenario("tput", THROUGHPUT)

    def row(kernel: str, verdict: str, rate: float | None) -> dict:
        return {"kernel": kernel, "scenario": "tput", "verdict": verdict, "metrics": {"rate": rate}}

    rows = [
        row("6.1", "success", 1.2e9),
        row("6.1", "fail", 1.35e9),
        row("6.12", "success", 1.1e9),
        row("7.0", "infra", None),
    ]
    text = explain.scenario_findings(rows, spec)
    assert text.startswith("In this run tput had 4 cells: 2 success, 1 fail, 1 infra.")
    assert "Throughput per kernel: 6.1 1.20 Gbit/s to 1.35 Gbit/s; 6.12 1.10 Gbit/s." in text
    assert explain.scenario_findings([], spec) == "No tput cell was measured in this run."
    assert explain.findings(rows, spec) == text


def test_paragraphs_take_mechanisms_from_the_manifests() -> None:
    out = explain.paragraphs(ROWS, [S2B], [(S1A, S1B, [p1("6.1", 3_000_000, 2_000_000)])])
    assert [p["scenario"] for p in out] == ["2B", ""]
    assert out[0]["mechanisms"] == [S2B.explanation] and "client closes first" in S2B.explanation
    assert out[0]["findings"] == explain.series_findings(ROWS, S2B)
    assert out[1]["mechanisms"] == [S1A.explanation]
    assert "sk_stream_is_writeable" in out[1]["mechanisms"][0]
    assert "2/3" in out[1]["findings"]
    assert explain.paragraphs(ROWS, [], []) == []


def crawl(until: int, n: int = 40) -> list[dict]:
    """Samples every 0.5 s: 13,000/s up to `until` connections, then 40/s."""
    out, it = [], 0
    for i in range(n):
        out.append({"t": i * 0.5, "iterations": it})
        it += 6500 if it < until else 20
    return out


def swept(kernel: str, buckets: str, reuse: str, verdict: str, **metrics: object) -> dict:
    label = f"buckets={buckets} reuse={reuse}"
    return {
        "cell_id": f"{kernel}-{buckets}-{reuse}",
        **p2(kernel, label, verdict, **metrics),
        "params": {},
    }


SWEPT = [
    swept("6.1", "2000", "0", "success", early_rate=13000.0, late_rate=12500.0, tw_max=2000),
    swept("6.1", "50000", "0", "slowdown", early_rate=13000.0, late_rate=40.0, tw_max=28231),
    swept("6.1", "65535", "0", "slowdown", early_rate=13000.0, late_rate=38.0, tw_max=28231),
    swept("6.1", "50000", "1", "success", early_rate=12000.0, late_rate=11800.0, tw_max=14000),
    swept("7.2", "50000", "0", "infra", key_figure="6,303 conns, stopped short of the knee"),
]
for _r in SWEPT[:4]:
    _r["key_figure"] = f"{_r['early_rate']:,.0f}/s → {_r['late_rate']:,.0f}/s"


def test_per_kernel_says_where_each_kernel_stops_keeping_its_rate() -> None:
    details = {
        r["cell_id"]: {"metrics": {"port_range": [32768, 60999]}, "series": crawl(14116)}
        for r in SWEPT
    }
    found = explain.per_kernel(SWEPT, S2B, ["6.1", "7.2", "6.12"], details, 0.2)
    assert [k["kernel"] for k in found] == ["6.1", "7.2"]
    text = found[0]["text"]
    assert text.startswith(
        "The knee is 14,116 connections, half the ephemeral port range 32768-60999. "
    )
    assert (
        "It stopped keeping its rate with buckets=50000 reuse=0 (fell below 0.2x its early rate "
        "at 19,500 connections, 1.38x the knee, 13,000/s → 40/s, TIME-WAIT max 28,231)" in text
    )
    assert (
        "It kept its rate with buckets=2000 reuse=0, buckets=50000 reuse=1 "
        "(TIME-WAIT max 2,000-14,000)" in text
    )
    assert found[1]["text"] == (
        "No cell counted: buckets=50000 reuse=0 (infra: 6,303 conns, stopped short of the knee)."
    )


def test_per_kernel_compares_settings_one_sysctl_apart() -> None:
    text = explain.per_kernel(SWEPT, S2B, ["6.1"], {}, 0.2)[0]["text"]
    assert (
        "One setting apart: buckets 2000 → 50000 (with reuse=0): success (13,000/s → 12,500/s) "
        "→ slowdown (13,000/s → 40/s); reuse 0 → 1 (with buckets=50000): slowdown "
        "(13,000/s → 40/s) → success (12,000/s → 11,800/s)." in text
    )
    assert (
        "Alike (same verdict, late rate within 1.25x where both have one): "
        "buckets 50000 vs 65535 (with reuse=0)." in text
    )
    both = [dict(r, verdict="success") for r in SWEPT[:4]]
    text = explain.per_kernel(both, S2B, ["6.1"], {}, 0.2)[0]["text"]
    assert "buckets 2000 → 50000 (with reuse=0): both success, late rate 12,500/s → 40/s" in text
    assert "(312.5x lower)" in text


def test_a_pair_per_kernel_against_the_expected_ratio() -> None:
    rows = [p1("6.1", 3_000_000, 2_000_000), p1("odd", 3_000_000, 2_900_000)]
    found = explain.pair_per_kernel(rows, S1A, S1B, ["6.1", "odd", "none"])
    assert found == [
        {
            "kernel": "6.1",
            "text": "1B / 1A 0.667 (3,000,000 B vs 2,000,000 B; SO_SNDBUF after: 4,194,304 B), "
            "within 0.05 of 2/3.",
        },
        {
            "kernel": "odd",
            "text": "1B / 1A 0.967 (3,000,000 B vs 2,900,000 B; SO_SNDBUF after: 4,194,304 B), "
            "0.300 above 2/3.",
        },
    ]


def test_settings_of_any_scenario_are_compared_by_its_key_metric() -> None:
    spec = scenario("tput", THROUGHPUT)

    def row(size: str, verdict: str, rate: float) -> dict:
        return {
            "kernel": "6.1",
            "scenario": "tput",
            "verdict": verdict,
            "params": {"size": size},
            "key_figure": f"{rate / 1e9:.2f} Gbit/s",
            "metrics": {"rate": rate},
        }

    rows = [row("64", "success", 1e9), row("1500", "success", 3e9), row("9000", "fail", 3.1e9)]
    text = explain.per_kernel(rows, spec, ["6.1"], {}, 0.2)[0]["text"]
    assert text == (
        "One setting apart: size 64 → 1500: both success, throughput 1.00 Gbit/s → 3.00 Gbit/s "
        "(3.0x higher); size 1500 → 9000: success (3.00 Gbit/s) → fail (3.10 Gbit/s)."
    )
