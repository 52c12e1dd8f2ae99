"""Measurements -> verdicts. Pure functions; every rule is written here once.

The rules' wording is rendered in the report's legend from `rules()`, so what a reader
sees is what the code does.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from matrix.model import Classified, Verdict


@dataclass(frozen=True)
class Thresholds:
    """The knobs of the rules; change them here or per run, never in the rules.

    The puzzle-2 collapse is 15-60x; a guest under TCG on a busy 2-core host wobbles by
    up to 2-3x. A fifth separates the two with room on both sides.
    """

    success_min_ratio: float = 0.2
    early_fraction: float = 0.1
    late_fraction: float = 0.2


DEFAULT_THRESHOLDS = Thresholds()


def rules(t: Thresholds = DEFAULT_THRESHOLDS) -> list[tuple[str, str]]:
    """The rule set as text, in the order it is applied."""
    return [
        (
            "infra",
            "no result came back (VM did not boot, panicked, deadline passed), "
            "the collector crashed or overran its own deadline, or a steady loop "
            "stopped before using half the port range (inconclusive)",
        ),
        (
            "error",
            "a sysctl was missing or did not take (the puzzle is then not run), "
            "or the loop died with an errno; the errno and iteration are shown",
        ),
        (
            "hang",
            "the loop made no progress for a whole stall window; the evidence "
            "(process state, wchan, stack) tells a blocked wait from a CPU-bound spin",
        ),
        (
            "slowdown",
            f"the loop kept progressing but its late rate (last "
            f"{t.late_fraction:.0%} of the time) fell below {t.success_min_ratio:g}x its "
            f"early rate (first {t.early_fraction:.0%} of the iterations); a loop below a "
            "tenth of its best rate for collapse_s is stopped there, its outcome being clear",
        ),
        (
            "success",
            f"the loop kept at least {t.success_min_ratio:g}x its early rate to the end, "
            "past half the port range; "
            "puzzle 1 succeeds when send() queued data and the queues were read",
        ),
    ]


def classify(
    result: dict[str, Any] | None, failure: str = "", t: Thresholds = DEFAULT_THRESHOLDS
) -> Classified:
    """One cell's verdict from its collector result (None when none came back)."""
    if not result:
        return Classified(Verdict.INFRA, f"no result: {failure or 'the agent wrote nothing'}")
    status = result.get("status")
    if status in ("timeout", "crashed"):
        return Classified(Verdict.INFRA, f"collector {status}: {result.get('status_detail', '')}")
    if status == "setup_failed":
        problems = result.get("sysctls", {}).get("problems", [])
        text = "; ".join(f"{p['key']} {p['problem']} ({p.get('detail', '')})" for p in problems)
        return Classified(
            Verdict.ERROR, f"sysctl setup failed: {text or result.get('status_detail')}"
        )
    if status != "ok":
        return Classified(Verdict.INFRA, f"unknown collector status {status!r}")
    if str(result.get("scenario", "")).startswith("1"):
        return _puzzle1(result)
    return _puzzle2(result, t)


def _puzzle1(result: dict[str, Any]) -> Classified:
    m = result.get("metrics", {})
    err = result.get("error")
    if err:
        return Classified(Verdict.ERROR, _errno_text(err), dict(m))
    if not m.get("bytes_queued"):
        return Classified(Verdict.ERROR, "send() queued nothing", dict(m))
    return Classified(
        Verdict.SUCCESS, f"queued {m['bytes_queued']:,} B in {m.get('sends', 0)} sends", dict(m)
    )


def _puzzle2(result: dict[str, Any], t: Thresholds) -> Classified:
    m = dict(result.get("metrics", {}))
    figures = rates(result, t)
    figures.update(late_evidence(result, t))
    m.update(figures)
    err = result.get("error")
    if err:
        m.update(error_name=err.get("name"), error_iteration=err.get("iteration"))
        return Classified(Verdict.ERROR, _errno_text(err), m)
    stall = (result.get("evidence") or {}).get("stall")
    if m.get("ended_by") == "stall" or stall:
        return Classified(Verdict.HANG, _stall_text(stall or {}, m), m)
    early, late = figures["early_rate"], figures["late_rate"]
    if early is None or late is None:
        return Classified(Verdict.INFRA, "too few samples to compute rates", m)
    if early > 0 and late >= t.success_min_ratio * early:
        short = _short_of_exhaustion(m)
        if short:
            return Classified(Verdict.INFRA, short, m)
        return Classified(Verdict.SUCCESS, f"kept {late:,.0f}/s of an early {early:,.0f}/s", m)
    return Classified(Verdict.SLOWDOWN, _slowdown_text(early, late, m), m)


def _short_of_exhaustion(m: dict[str, Any]) -> str:
    """Why a steady loop proves nothing yet: it never used half the ephemeral ports.

    connect() fills one parity of the port range first; only past that point can 2B run
    out of ports, so a loop that stopped earlier has not been tested, however fast it was.
    """
    ports = m.get("port_range")
    if not ports:
        return ""
    half = (ports[1] - ports[0] + 1) // 2
    if m.get("iterations", 0) >= half:
        return ""
    return (
        f"inconclusive: {m.get('iterations', 0):,} connections never reached half the "
        f"port range ({half:,}), where 2B's ports run out; raise window_s or iteration_cap"
    )


def rates(result: dict[str, Any], t: Thresholds) -> dict[str, Any]:
    """Early rate over the first iterations, late rate over the last stretch of time."""
    pts = _points(result)
    if len(pts) < 2 or pts[-1][1] <= 0 or pts[-1][0] <= 0:
        return {"early_rate": None, "late_rate": None, "rate_ratio": None}
    total_t, total_i = pts[-1]
    n_early = max(1.0, t.early_fraction * total_i)
    t_early = _time_at(pts, n_early)
    early = n_early / t_early if t_early > 0 else None
    t_late = total_t * (1 - t.late_fraction)
    late = (total_i - _iterations_at(pts, t_late)) / (total_t - t_late)
    ratio = late / early if early else None
    return {"early_rate": early, "late_rate": late, "rate_ratio": ratio}


def late_evidence(result: dict[str, Any], t: Thresholds) -> dict[str, Any]:
    """How the loop process spent the late stretch: state, wchan, system-time share."""
    series = result.get("series") or []
    if not series:
        return {"evidence_state": None, "evidence_wchan": None, "stime_share": None}
    t_late = series[-1]["t"] * (1 - t.late_fraction)
    late = [s for s in series if s["t"] >= t_late] or series[-1:]
    state = Counter(s.get("state") or "?" for s in late).most_common(1)[0][0]
    wchan = Counter(s.get("wchan") or "" for s in late).most_common(1)[0][0]
    first, last = late[0], late[-1]
    du = (last.get("utime") or 0) - (first.get("utime") or 0)
    ds = (last.get("stime") or 0) - (first.get("stime") or 0)
    share = ds / (du + ds) if du + ds > 0 else None
    return {"evidence_state": state, "evidence_wchan": wchan, "stime_share": share}


def _points(result: dict[str, Any]) -> list[tuple[float, float]]:
    pts = [(0.0, 0.0)] + [
        (float(s["t"]), float(s["iterations"])) for s in result.get("series") or []
    ]
    m = result.get("metrics", {})
    if m.get("elapsed_s") and m.get("iterations") is not None and m["elapsed_s"] > pts[-1][0]:
        pts.append((float(m["elapsed_s"]), float(m["iterations"])))
    return pts


def _time_at(pts: list[tuple[float, float]], n: float) -> float:
    for (t0, i0), (t1, i1) in zip(pts, pts[1:], strict=False):
        if i1 >= n:
            return t0 + (t1 - t0) * ((n - i0) / (i1 - i0) if i1 > i0 else 0)
    return pts[-1][0]


def _iterations_at(pts: list[tuple[float, float]], when: float) -> float:
    for (t0, i0), (t1, i1) in zip(pts, pts[1:], strict=False):
        if t1 >= when:
            return i0 + (i1 - i0) * ((when - t0) / (t1 - t0) if t1 > t0 else 0)
    return pts[-1][1]


def _errno_text(err: dict[str, Any]) -> str:
    return (
        f"{err.get('phase', 'loop')}() failed with {err.get('name') or err.get('errno')} "
        f"at iteration {err.get('iteration', '?'):,}: {err.get('message', '')}"
    )


def _stall_text(stall: dict[str, Any], m: dict[str, Any]) -> str:
    state, wchan = stall.get("state") or "?", stall.get("wchan") or ""
    how = (
        f"blocked (state {state}, waiting in {wchan})"
        if wchan and state != "R"
        else f"spinning (state {state}, empty wchan: CPU-bound)"
        if state == "R"
        else f"state {state}"
    )
    return f"no progress after iteration {stall.get('iterations', m.get('iterations', 0)):,}; {how}"


def _slowdown_text(early: float, late: float, m: dict[str, Any]) -> str:
    factor = f"{early / late:,.0f}x slower" if late > 0 else "stopped"
    text = f"rate fell from {early:,.0f}/s to {late:,.0f}/s ({factor})"
    state, share = m.get("evidence_state"), m.get("stime_share")
    if state == "R" and not m.get("evidence_wchan"):
        text += "; state R with empty wchan: a CPU-bound crawl, not a blocked wait"
        if share is not None:
            text += f" ({share:.0%} system time)"
    elif state:
        text += f"; state {state} in {m.get('evidence_wchan') or '-'}"
    return text


def key_figure(scenario: str, c: Classified) -> str:
    """The one short figure shown in a matrix cell."""
    m = c.metrics
    if c.verdict is Verdict.INFRA:
        return "no result"
    if scenario.startswith("1"):
        return f"{m['bytes_queued'] / 1e6:.2f} MB" if m.get("bytes_queued") else "-"
    if c.verdict is Verdict.ERROR:
        err = m.get("error_name")
        return f"{err} @ {m.get('error_iteration', 0):,}" if err else "setup failed"
    if c.verdict is Verdict.HANG:
        return f"stalled @ {m.get('iterations', 0):,}"
    if m.get("early_rate") is None:
        return "-"
    return f"{m['early_rate']:,.0f}/s → {m['late_rate']:,.0f}/s"


def thresholds_dict(t: Thresholds) -> dict[str, float]:
    return asdict(t)
