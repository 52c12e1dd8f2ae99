"""The bracket logic of the threshold search and of build bisection, on synthetic verdicts."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from matrix.search import threshold as th
from matrix.search.threshold import Probe


def search(
    verdict: Callable[[int, int], str],
    lo: int,
    hi: int,
    points: int = 4,
    trials: int = 1,
    resolution: int = 1,
    rounds: int = 30,
) -> tuple[th.Bracket, list[Probe], int]:
    """Drive the rounds the way the orchestration does, with a fake measurement."""
    probes: list[Probe] = []
    values = th.first_round(lo, hi, points)
    n = 0
    while values and n < rounds:
        probes += [Probe(v, tuple(verdict(v, t) for t in range(trials))) for v in values]
        values = th.next_round(probes, points, resolution)
        n += 1
    return th.bracket(probes), probes, n


def step(at: int, above: str = "slowdown") -> Callable[[int, int], str]:
    return lambda v, _t: th.SUCCESS if v < at else above


@pytest.mark.parametrize("flip", [1001, 2048, 14116, 69999])
def test_step_function_is_bracketed_exactly(flip: int) -> None:
    b, probes, rounds = search(step(flip), 1000, 70000)
    assert (b.lo, b.hi) == (flip - 1, flip)
    assert b.low_side is True and b.changes == 1 and b.zone == (flip - 1, flip)
    assert rounds <= 9  # 69,000 / 5**n < 1 after 7 rounds, plus the first
    assert len({p.value for p in probes}) == len(probes)  # no value measured twice


def test_resolution_stops_early() -> None:
    b, _, rounds = search(step(14116), 1000, 70000, resolution=500)
    assert b.lo < 14116 <= b.hi and b.width <= 500 and rounds <= 5


def test_falling_edge_not_success_below() -> None:
    b, _, _ = search(lambda v, _t: "error" if v < 300 else th.SUCCESS, 2, 30000)
    assert b.low_side is False and (b.lo, b.hi) == (299, 300)


def test_no_flip_in_range() -> None:
    b, probes, rounds = search(lambda v, _t: th.SUCCESS, 1000, 70000)
    assert not b.found and b.low_side is True and rounds == 1 and len(probes) == 4


def test_nothing_measured() -> None:
    b, _, _ = search(lambda v, _t: "infra", 1000, 2000)
    assert not b.found and b.low_side is None and len(b.undecided) == 4


def test_majority_label_and_ties() -> None:
    assert Probe(1, ("success", "slowdown", "slowdown")).outcome is False
    assert Probe(1, ("success", "slowdown", "slowdown")).label == "slowdown"
    assert not Probe(1, ("success", "slowdown", "slowdown")).unanimous
    assert Probe(1, ("success", "error")).outcome is None
    assert Probe(1, ("success", "error")).label == "tie"
    assert Probe(1, ("success", "infra")).outcome is True
    assert Probe(1, ("infra",)).label == "infra"


def test_tie_inside_bracket_is_skipped_not_trusted() -> None:
    probes = [Probe(0, ("success",)), Probe(50, ("success", "hang")), Probe(100, ("hang",))]
    b = th.bracket(probes)
    assert (b.lo, b.hi) == (0, 100) and b.undecided == (50,)
    assert 50 not in th.next_round(probes, 4, 1)


def test_mixed_probes_widen_the_zone() -> None:
    probes = [
        Probe(0, ("success",) * 3),
        Probe(40, ("success", "success", "slowdown")),
        Probe(60, ("slowdown", "slowdown", "success")),
        Probe(100, ("slowdown",) * 3),
    ]
    b = th.bracket(probes)
    assert (b.lo, b.hi) == (40, 60) and b.zone == (0, 100)


def test_noisy_threshold_lands_near_the_flip() -> None:
    """Verdicts flip at random within +-2% of 5000: three trials still find it closely."""
    rng = random.Random(7)

    def noisy(v: int, _t: int) -> str:
        return th.SUCCESS if v < 5000 + rng.uniform(-100, 100) else "slowdown"

    b, _, _ = search(noisy, 1000, 70000, trials=3, resolution=20)
    assert b.found and b.zone[0] - 150 <= 5000 <= b.zone[1] + 150
    assert b.lo < b.hi and abs((b.lo + b.hi) / 2 - 5000) < 200


def test_non_monotonic_counts_changes() -> None:
    probes = [Probe(v, (th.SUCCESS if v in (0, 60) else "error",)) for v in (0, 30, 60, 90)]
    b = th.bracket(probes)
    assert (b.lo, b.hi) == (0, 30) and b.changes == 3


def test_spread_and_first_round() -> None:
    assert th.first_round(1000, 70000, 4) == [1000, 24000, 47000, 70000]
    assert th.spread(0, 10, 4) == [2, 4, 6, 8]
    assert th.spread(0, 3, 4, taken=[1]) == [2]
    assert th.spread(5, 6, 4) == []


def test_bisect_next_walks_indices() -> None:
    verdict = {i: ("success" if i < 5 else "slowdown") for i in range(9)}
    probes = [Probe(0, (verdict[0],)), Probe(8, (verdict[8],))]
    booted = []
    while (i := th.bisect_next(probes, 9)) is not None:
        booted.append(i)
        probes.append(Probe(i, (verdict[i],)))
    b = th.bracket(probes)
    assert (b.lo, b.hi) == (4, 5) and len(booted) <= 3


def test_sysctl_values_and_ranges() -> None:
    assert th.sysctl_value("net.ipv4.tcp_max_tw_buckets", 4096) == "4096"
    assert th.sysctl_value("net.ipv4.ip_local_port_range", 8192) == "32768 40959"
    assert th.check_range("net.ipv4.ip_local_port_range", 100, 40000)
    assert th.check_range("net.ipv4.tcp_max_tw_buckets", 5, 5)
    assert th.check_range("net.ipv4.tcp_max_tw_buckets", 1000, 70000) == ""


def test_predicted_flip_from_read_back() -> None:
    rb = {"net.ipv4.ip_local_port_range": "32768 40959", "net.ipv4.tcp_max_tw_buckets": "5000"}
    assert th.predicted("net.ipv4.tcp_max_tw_buckets", rb)[0] == 4096
    assert th.predicted("net.ipv4.ip_local_port_range", rb)[0] == 10000
    assert th.predicted("net.ipv4.tcp_tw_reuse_delay", rb) is None
    assert th.port_range_size("bogus") is None


def test_bisect_skips_an_unmeasurable_build() -> None:
    probes = [Probe(0, ("success",)), Probe(4, ("infra",)), Probe(8, ("error",))]
    assert th.bisect_next(probes, 9) in (3, 5)
    assert th.bisect_next([Probe(0, ("success",)), Probe(1, ("error",))], 2) is None
