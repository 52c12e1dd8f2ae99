"""The matrix page's explanations carry this run's figures, never canned ones."""

from __future__ import annotations

from matrix.report import explain


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


def test_puzzle2_names_collapsed_cells_with_their_figures() -> None:
    text = explain.puzzle2_findings(ROWS, "2B")
    assert "2 of 4 measured 2B cells on 2 kernels collapsed" in text
    assert "6.1 with reuse=0 fell from 13,000/s to 40/s with 28,231 TIME-WAIT sockets" in text
    assert "6.12 with reuse=0 died with EADDRNOTAVAIL at iteration 28,232" in text
    assert "2 cells kept their rate at 9,800-12,000/s, with at most 1,500 TIME-WAIT" in text
    assert "collapsed on every kernel: reuse=0; held on every kernel: reuse=1" in text


def test_puzzle2_counts_trials_of_one_setting_once() -> None:
    rows = [
        p2("6.1", "reuse=0", "hang", trial=t, iterations=14100, evidence_state="R") for t in (0, 1)
    ]
    rows.append(p2("6.1", "reuse=0", "success", trial=2, early_rate=1.0, late_rate=1.0))
    text = explain.puzzle2_findings(rows, "2B")
    assert text.count("6.1 with reuse=0") == 1 and "(2 of 3 trials)" in text
    assert "stalled after 14,100 connections" in text and "(state R)" in text
    assert explain.puzzle2_findings(rows, "2A") == "No 2A cell was measured in this run."


def p1(name: str, a: int, b: int) -> dict:
    return {
        "kernel": {"name": name},
        "a": {"bytes_queued": a, "sndbuf": 4_194_304},
        "b": {"bytes_queued": b},
        "ratio": b / a,
    }


def test_puzzle1_gives_the_ratio_range_and_calls_out_odd_kernels() -> None:
    text = explain.puzzle1_findings(
        [p1("5.10", 3_000_000, 1_992_000), p1("6.1", 3_000_000, 2_010_000)]
    )
    assert "ranged from 0.664 (5.10) to 0.670 (6.1) across 2 kernels" in text
    assert "within 0.05 of 2/3" in text
    odd = explain.puzzle1_findings(
        [p1("6.1", 3_000_000, 2_000_000), p1("odd", 3_000_000, 2_900_000)]
    )
    assert "differs on: odd" in odd
    assert "0.967 (odd)" in odd


def test_paragraphs_cover_each_puzzle_that_ran() -> None:
    out = explain.paragraphs(ROWS, [p1("6.1", 3_000_000, 2_000_000)])
    assert [p["scenario"] for p in out["puzzle2"]] == ["2B"]
    assert "client closes first" in out["puzzle2"][0]["mechanism"]
    assert "sk_stream_is_writeable" in out["puzzle1"]["mechanism"]
    assert explain.paragraphs(ROWS, [])["puzzle1"] is None
