"""Where a verdict flips along an integer: the bracket logic of `kmatrix threshold` and
`kmatrix bisect`, as pure functions, so the search is tested without running anything.

A probe is one value measured with a few trials. Its outcome is the majority of its
trials' verdicts, success or not; a tie (or no measurement at all) decides nothing. A
probe whose trials disagree still counts by majority but is marked mixed: the reported
uncertainty then reaches out to the nearest unanimous probes on both sides.

The search runs in rounds ("k-ary search"): each round spreads `points` probes over the
current bracket, so one round is one batch (one VM boot) and the bracket shrinks by a
factor of points + 1 per round.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

SUCCESS = "success"
PORT_BASE = 32768
"""An `ip_local_port_range` search varies the range's size, always starting here."""


@dataclass(frozen=True)
class Probe:
    """One value and the verdicts of its trials ("infra" counts as no measurement)."""

    value: int
    verdicts: tuple[str, ...]

    @property
    def measured(self) -> tuple[str, ...]:
        return tuple(v for v in self.verdicts if v != "infra")

    @property
    def outcome(self) -> bool | None:
        """True for a success majority, False for a not-success one, None for a tie."""
        ok = sum(1 for v in self.measured if v == SUCCESS)
        bad = len(self.measured) - ok
        return None if ok == bad else ok > bad

    @property
    def unanimous(self) -> bool:
        return self.outcome is not None and len(set(self.measured)) == 1

    @property
    def label(self) -> str:
        """The majority verdict's name, e.g. "slowdown"; "tie" or "infra" when undecided."""
        if not self.measured:
            return "infra"
        if self.outcome is None:
            return "tie"
        side = [v for v in self.measured if (v == SUCCESS) == self.outcome]
        return Counter(side).most_common(1)[0][0]


@dataclass(frozen=True)
class Bracket:
    """What the probes say: the flip lies in (lo, hi]; None where the probes do not tell.

    `low_side` is the outcome at the low end of the range; `lo` is the last value with
    that outcome before the first value (`hi`) with the other. `zone` widens the bracket
    to the nearest unanimous probes when mixed or tied probes sit next to it. `changes`
    counts outcome changes along the sorted decided probes: more than one means the
    verdict is not monotonic in the value (noise, or a second effect).
    """

    lo: int | None
    hi: int | None
    low_side: bool | None
    zone: tuple[int, int] | None
    changes: int
    undecided: tuple[int, ...] = field(default=())

    @property
    def found(self) -> bool:
        return self.lo is not None and self.hi is not None

    @property
    def width(self) -> int | None:
        return self.hi - self.lo if self.found else None  # type: ignore[operator]


def bracket(probes: Iterable[Probe]) -> Bracket:
    """The flip bracket from every probe so far (any order, several rounds)."""
    ordered = sorted(probes, key=lambda p: p.value)
    decided = [p for p in ordered if p.outcome is not None]
    undecided = tuple(p.value for p in ordered if p.outcome is None)
    if not decided:
        return Bracket(None, None, None, None, 0, undecided)
    low_side = decided[0].outcome
    changes = sum(1 for a, b in zip(decided, decided[1:], strict=False) if a.outcome != b.outcome)
    first = next((i for i, p in enumerate(decided) if p.outcome != low_side), None)
    if first is None:
        return Bracket(None, None, low_side, None, 0, undecided)
    lo, hi = decided[first - 1], decided[first]
    zone = (_zone_edge(decided[:first], low_side, -1), _zone_edge(decided[first:], not low_side, 1))
    return Bracket(lo.value, hi.value, low_side, zone, changes, undecided)


def _zone_edge(side: Sequence[Probe], outcome: bool, step: int) -> int:
    """The unanimous probe nearest the flip on one side (or the farthest one if none is)."""
    walk = list(reversed(side)) if step < 0 else list(side)
    for p in walk:
        if p.unanimous and p.outcome == outcome:
            return p.value
    return walk[-1].value


def spread(lo: int, hi: int, points: int, taken: Iterable[int] = ()) -> list[int]:
    """Up to `points` integers strictly inside (lo, hi), evenly spaced, none already taken."""
    used = set(taken)
    out: list[int] = []
    for i in range(1, points + 1):
        v = lo + round(i * (hi - lo) / (points + 1))
        if lo < v < hi and v not in used and v not in out:
            out.append(v)
    return out


def first_round(lo: int, hi: int, points: int) -> list[int]:
    """Both ends of the range, so the side at each end is known, plus interior points."""
    return sorted({lo, hi, *spread(lo, hi, max(0, points - 2))})


def next_round(probes: Sequence[Probe], points: int, resolution: int) -> list[int]:
    """The values to measure next; [] when the bracket is narrow enough or cannot shrink.

    Undecided probes inside the bracket are not repeated (the next round goes around
    them); with no flip found yet, nothing is left to search.
    """
    b = bracket(probes)
    if not b.found or (b.width or 0) <= resolution:
        return []
    return spread(b.lo, b.hi, points, (p.value for p in probes))  # type: ignore[arg-type]


def bisect_next(probes: Sequence[Probe], count: int) -> int | None:
    """For build bisection: the one index to boot next, nearest the bracket's middle.

    Builds are booted one at a time; an index that could not be measured is skipped and
    its neighbours are tried instead.
    """
    b = bracket(probes)
    if not b.found:
        return None
    taken = {p.value for p in probes}
    free = [i for i in range(b.lo + 1, b.hi) if i not in taken and 0 <= i < count]  # type: ignore[operator]
    mid = (b.lo + b.hi) / 2  # type: ignore[operator]
    return min(free, key=lambda i: (abs(i - mid), i)) if free else None


def sysctl_value(key: str, value: int) -> str:
    """What is written for a probe: the value itself, or a port range of that size."""
    if key == "net.ipv4.ip_local_port_range":
        return f"{PORT_BASE} {PORT_BASE + value - 1}"
    return str(value)


def check_range(key: str, lo: int, hi: int) -> str:
    """Why a --range is unusable for `key`, or "" when it is fine."""
    if lo >= hi:
        return f"{lo}:{hi}: the start must be below the end"
    if lo < 0:
        return f"{lo}:{hi}: values must be >= 0"
    if key == "net.ipv4.ip_local_port_range" and (lo < 2 or hi > 65536 - PORT_BASE):
        return f"{lo}:{hi}: a port range size from {PORT_BASE} must lie in 2..{65536 - PORT_BASE}"
    return ""


def port_range_size(text: str | None) -> int | None:
    """The number of ports in an `ip_local_port_range` value such as "32768 60999"."""
    try:
        lo, hi = (int(x) for x in str(text).split())
    except (TypeError, ValueError):
        return None
    return hi - lo + 1 if hi >= lo else None


def predicted(key: str, read_back: dict[str, str]) -> tuple[float, str] | None:
    """The flip the seed's explanation predicts, from sysctls read back in a cell.

    connect() tries one parity of the port range first, so the loop crawls once that
    half is all TIME-WAIT: when tcp_max_tw_buckets reaches half the range, or the range
    shrinks to twice tcp_max_tw_buckets.
    """
    size = port_range_size(read_back.get("net.ipv4.ip_local_port_range"))
    if key == "net.ipv4.tcp_max_tw_buckets" and size:
        return size / 2, f"half the port range ({size:,} ports)"
    buckets = read_back.get("net.ipv4.tcp_max_tw_buckets")
    if key == "net.ipv4.ip_local_port_range" and buckets and buckets.isdigit():
        return 2 * int(buckets), f"twice tcp_max_tw_buckets ({int(buckets):,})"
    return None
