"""Measurements -> verdicts. Pure functions; every rule is written here once.

The rules' wording is rendered in the report's legend from `rules()`, so what a reader
sees is what the code does.
"""

from __future__ import annotations

import statistics
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
    thin_band: float = 2.0
    """A late/early ratio within this factor of success_min_ratio (0.1-0.4) is a thin
    margin, and the cell is measured again, when the loop's own noise is unknown..."""
    thin_floor: float = 1.25
    thin_cv_factor: float = 3.0
    """...else the band is 1 + thin_cv_factor x the pre-knee rate's std/mean, at least
    thin_floor: a steady guest at 7x below its early rate is clear of a 5x line, a
    wobbly one is not."""
    loaded_band: float = 3.0
    """The band on a visibly loaded machine (see `loaded`)."""
    loaded_vm_wait: float = 0.25
    """A VM whose threads waited this share of the cell's time for a CPU was loaded."""
    loaded_rate_cv: float = 0.5
    """Before the knee, 1-second rates varying this much (std/mean) mean a loaded guest."""
    remeasure_max: int = 2
    """At most this many extra measurements of one cell (so 3 in all)."""


DEFAULT_THRESHOLDS = Thresholds()


def rules(t: Thresholds = DEFAULT_THRESHOLDS) -> list[tuple[str, str]]:
    """The rule set as text, in the order it is applied."""
    return [
        (
            "infra",
            "no result came back (VM did not boot, panicked, deadline passed), "
            "the collector crashed or overran its own deadline, or the cell is "
            "inconclusive: a safety limit (window_s, iteration_cap) stopped a steady loop "
            "before it was knee_margin connections and knee_margin_s seconds past the knee "
            "(half the port range, where 2B runs out of ports); its figures are kept",
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
            f"the loop kept progressing but its late rate (from the knee to the end; "
            f"without a known port range, the last {t.late_fraction:.0%} of the time) fell "
            f"below {t.success_min_ratio:g}x its early rate (the median 1-second rate before "
            f"the knee; without one, over the first {t.early_fraction:.0%} of the "
            "iterations); past the knee, a loop below a tenth of its rate before the "
            "knee for collapse_s is stopped there, the crawl being clear",
        ),
        (
            "success",
            f"the loop kept at least {t.success_min_ratio:g}x its early rate to the end, "
            "and ran knee_margin connections and knee_margin_s seconds past the knee; "
            "puzzle 1 succeeds when send() queued data and the queues were read",
        ),
    ]


def remeasure_rule(t: Thresholds = DEFAULT_THRESHOLDS) -> str:
    """When a verdict is measured again, as text for the legend."""
    return (
        f"a cell whose verdict rests on a thin margin is measured again, at most "
        f"{t.remeasure_max} more times, and the majority of its conclusive measurements "
        f"decides: a late/early ratio near {t.success_min_ratio:g}, within a factor of "
        f"1 + {t.thin_cv_factor:g} x the loop's pre-knee rate std/mean (at least "
        f"{t.thin_floor:g}; {t.thin_band:g} when unknown; {t.loaded_band:g} on a loaded "
        f"machine: VM threads waiting for a CPU over {t.loaded_vm_wait:.0%} of the time, or "
        f"pre-knee rates varying over {t.loaded_rate_cv:g} std/mean), a slowdown whose "
        "rate was back in its last second (a dip), a hang on a loaded machine, or an "
        "inconclusive cell; cells measured twice with the same verdict are marked confirmed"
    )


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
    figures.update(load_figures(result))
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
    short = _short_of_goal(result, m)
    if short and m.get("ended_by") != "collapse":
        m["inconclusive"] = True
        return Classified(Verdict.INFRA, short, m)
    if early > 0 and late >= t.success_min_ratio * early:
        return Classified(Verdict.SUCCESS, f"kept {late:,.0f}/s of an early {early:,.0f}/s", m)
    return Classified(Verdict.SLOWDOWN, _slowdown_text(early, late, m), m)


def goal(result: dict[str, Any]) -> tuple[int | None, int, float]:
    """(knee, margin, margin_s): half the port range the cell read back, and how far
    past it the cell was asked to run (0 and 0 for results from before the margins)."""
    ports = (result.get("metrics") or {}).get("port_range")
    limits = result.get("limits") or {}
    knee = (ports[1] - ports[0] + 1) // 2 if ports else None
    return knee, int(limits.get("knee_margin", 0)), float(limits.get("knee_margin_s", 0.0))


def knee_time(result: dict[str, Any]) -> float | None:
    """When the loop passed the knee, from its own series (None: it never did)."""
    knee = goal(result)[0]
    if knee is None:
        return None
    pts = _points(result)
    return _time_at(pts, knee) if pts[-1][1] >= knee else None


def _short_of_goal(result: dict[str, Any], m: dict[str, Any]) -> str:
    """Why a cell proves nothing yet: it never got its margins past the knee.

    connect() fills one parity of the port range first; only past that point can 2B run
    out of ports, so a loop stopped earlier (by a safety limit: a slow guest) has not
    been tested, however fast it was.
    """
    knee, margin, margin_s = goal(result)
    if knee is None:
        return ""
    n, knee_t, total_t = m.get("iterations", 0), m.get("knee_t"), _points(result)[-1][0]
    past_s = total_t - knee_t if knee_t is not None else 0.0
    if n >= knee + margin and knee_t is not None and past_s >= margin_s:
        return ""
    limit = {"window": "the window_s", "cap": "the iteration_cap"}.get(
        str(m.get("ended_by")), "its end"
    )
    where = (
        f"{past_s:.1f} s and {n - knee:,} connections past the knee ({knee:,})"
        if knee_t is not None
        else f"short of the knee ({knee:,}, half the port range)"
    )
    return (
        f"inconclusive: {n:,} connections in {total_t:.1f} s, stopped by {limit} "
        f"{where}; the goal was {margin:,} connections and {margin_s:g} s past it"
    )


def rates(result: dict[str, Any], t: Thresholds) -> dict[str, Any]:
    """The rate before the knee against the rate after it (where 2B's ports run out).

    Before: the median of the 1-second rates up to the knee, so a guest starved for a
    few seconds (a VM booting beside it) does not set the scale; without a knee, or with
    too few seconds before it, the rate over the first iterations. After: from the knee
    to the end, or over the last stretch of time when there is no knee.
    """
    pts = _points(result)
    none = {"early_rate": None, "late_rate": None, "rate_ratio": None, "knee_t": None}
    if len(pts) < 2 or pts[-1][1] <= 0 or pts[-1][0] <= 0:
        return none
    total_t, total_i = pts[-1]
    knee_t = knee_time(result)
    before = second_rates(result, knee_t) if knee_t is not None else []
    if len(before) >= 3:
        early: float | None = statistics.median(before)
    else:
        n_early = max(1.0, t.early_fraction * total_i)
        t_early = _time_at(pts, n_early)
        early = n_early / t_early if t_early > 0 else None
    t_late = knee_t if knee_t is not None else total_t * (1 - t.late_fraction)
    if total_t - t_late <= 0:
        return dict(none, early_rate=early, knee_t=knee_t)
    late = (total_i - _iterations_at(pts, t_late)) / (total_t - t_late)
    ratio = late / early if early else None
    return {"early_rate": early, "late_rate": late, "rate_ratio": ratio, "knee_t": knee_t}


def second_rates(result: dict[str, Any], end: float | None, span_s: float = 1.0) -> list:
    """Connections/s over consecutive `span_s` windows of the series, up to `end`."""
    series = result.get("series") or []
    if end is None:
        end = series[-1]["t"] if series else 0.0
    rates, last = [], None
    for s in series:
        if s["t"] > end:
            break
        if last is None or s["t"] - last["t"] >= span_s:
            if last is not None:
                rates.append((s["iterations"] - last["iterations"]) / (s["t"] - last["t"]))
            last = s
    return rates


def load_figures(result: dict[str, Any]) -> dict[str, Any]:
    """How loaded the machine was while the cell ran: the host's figures (added by the
    orchestrator as results arrive), the guest's steal, and the loop's own stability."""
    host = result.get("host_load") or {}
    guest = (result.get("metrics") or {}).get("guest_cpu") or {}
    return {
        "host_load1": host.get("load1_mean"),
        "host_steal_share": host.get("steal_share"),
        "vm_wait_share": host.get("vm_wait_share"),
        "guest_steal_share": guest.get("steal_share"),
        "rate_cv": rate_cv(result),
    }


def rate_cv(result: dict[str, Any]) -> float | None:
    """std/mean of 1-second rates before the knee (or over the whole run without one):
    a steady loop on a quiet machine stays within a few percent."""
    rates = second_rates(result, knee_time(result))
    if len(rates) < 3:
        return None
    mean = sum(rates) / len(rates)
    if mean <= 0:
        return None
    var = sum((r - mean) ** 2 for r in rates) / len(rates)
    return round(var**0.5 / mean, 3)


def loaded(m: dict[str, Any], t: Thresholds = DEFAULT_THRESHOLDS) -> str:
    """Why the machine looked loaded during the cell, or "" when it did not."""
    wait, cv = m.get("vm_wait_share"), m.get("rate_cv")
    if wait is not None and wait >= t.loaded_vm_wait:
        return f"VM threads waited for a CPU {wait:.0%} of the time"
    if cv is not None and cv >= t.loaded_rate_cv:
        return f"pre-knee rates varied {cv:.2f} std/mean"
    return ""


def thin_reasons(
    result: dict[str, Any] | None, c: Classified, t: Thresholds = DEFAULT_THRESHOLDS
) -> list[str]:
    """Why this verdict rests on a thin margin (empty: it does not), so that it is
    measured again. Only puzzle-2 style measurements (rates over time) can be thin."""
    m = c.metrics
    if c.verdict is Verdict.INFRA:
        return (
            ["inconclusive: " + c.reason.removeprefix("inconclusive: ")]
            if m.get("inconclusive")
            else []
        )
    busy = loaded(m, t)
    reasons = []
    ratio = m.get("rate_ratio")
    if c.verdict in (Verdict.SUCCESS, Verdict.SLOWDOWN) and ratio is not None:
        band = thin_band(m, busy, t)
        lo, hi = t.success_min_ratio / band, t.success_min_ratio * band
        if lo <= ratio <= hi:
            reasons.append(
                f"late/early {ratio:.2f} is within {band:.3g}x of the {t.success_min_ratio:g} "
                "threshold" + (f" ({busy})" if busy else "")
            )
    if c.verdict is Verdict.SLOWDOWN and result:
        back = _last_second_rate(result)
        early = m.get("early_rate")
        if back is not None and early and back >= t.success_min_ratio * early:
            reasons.append(f"a dip: the rate was back to {back:,.0f}/s in the last second")
    if c.verdict is Verdict.HANG and busy:
        reasons.append(f"a stall on a loaded machine ({busy})")
    return reasons


def thin_band(m: dict[str, Any], busy: str, t: Thresholds = DEFAULT_THRESHOLDS) -> float:
    """How far from the threshold a ratio must be to stand: wider for a noisy loop."""
    if busy:
        return t.loaded_band
    cv = m.get("rate_cv")
    if cv is None:
        return t.thin_band
    return min(t.loaded_band, max(t.thin_floor, 1 + t.thin_cv_factor * cv))


def _last_second_rate(result: dict[str, Any]) -> float | None:
    series = result.get("series") or []
    if len(series) < 2:
        return None
    last = series[-1]
    for s in reversed(series[:-1]):
        if last["t"] - s["t"] >= 1.0:
            return (last["iterations"] - s["iterations"]) / (last["t"] - s["t"])
    return None


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
    if c.verdict is Verdict.INFRA and m.get("inconclusive"):
        return f"{m.get('iterations', 0):,} conns, short of the goal"
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
