"""Measurements -> verdicts. Pure functions; every rule is written here once.

The rules' wording is rendered in the report's legend from `rules()`, so what a reader
sees is what the code does.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from matrix.classify import series
from matrix.model import Classified, Verdict
from matrix.scenarios.catalogue import Catalogue, builtin
from matrix.scenarios.manifest import (
    BaselineRule,
    MetricRule,
    MetricSpec,
    Scenario,
    SeriesRateRule,
)


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
        (
            "fail",
            "the program said the behaviour is wrong: kselftest exit status 1, a LAVA "
            "test case with RESULT=fail, a TAP/KTAP 'not ok', or its own result.json",
        ),
        (
            "error",
            "the program crashed (killed by a signal), exited with a status other than "
            "0, 1 or 4, bailed out, or a scenario's metric rule says so",
        ),
        (
            "skip",
            "the program said it cannot test here: kselftest exit status 4, RESULT=skip, '# SKIP'",
        ),
        (
            "infra",
            "the program did not report in the convention its manifest declares "
            "(no result.json, no LAVA or TAP line): a missing result, never a pass",
        ),
        (
            "slowdown",
            "a baseline rule: the metric fell below the set share of the same cell's on "
            "the baseline kernel (in the metric's better direction)",
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


Baseline = Callable[[str, str | None], float | None]
"""(metric, kernel or None for the run's baseline) -> the same cell's value on that
kernel, or None when there is none (or this cell is on it)."""


def classify(
    result: dict[str, Any] | None,
    failure: str = "",
    t: Thresholds = DEFAULT_THRESHOLDS,
    scenarios: Catalogue | None = None,
    baseline: Baseline | None = None,
) -> Classified:
    """One cell's verdict from its collector result (None when none came back), judged
    by its scenario's manifest (looked up in `scenarios`, the built-in ones by default).
    The kernel's health during the cell and how its program met its deadline are added
    to the figures whatever the verdict; no verdict depends on them."""
    if not result:
        return Classified(Verdict.INFRA, f"no result: {failure or 'the agent wrote nothing'}")
    c = _by_status(result, t, scenarios, baseline)
    extra = {**kernel_figures(result), **overrun_figures(result)}
    return replace(c, metrics={**c.metrics, **extra}) if extra else c


def _by_status(
    result: dict[str, Any], t: Thresholds, scenarios: Catalogue | None, baseline: Baseline | None
) -> Classified:
    status = result.get("status")
    detail = result.get("status_detail", "")
    if status == "timeout":
        return Classified(Verdict.INFRA, f"collector timeout: {detail}")
    if status == "no_result":
        return Classified(Verdict.INFRA, f"missing result: {detail}")
    if status == "rejected":
        return Classified(Verdict.INFRA, f"result rejected: {detail}")
    if status == "crashed":
        return Classified(Verdict.ERROR, f"program crashed: {detail}")
    if status == "setup_failed":
        problems = result.get("sysctls", {}).get("problems", [])
        text = "; ".join(f"{p['key']} {p['problem']} ({p.get('detail', '')})" for p in problems)
        return Classified(Verdict.ERROR, f"sysctl setup failed: {text or detail}")
    if status != "ok":
        return Classified(Verdict.INFRA, f"unknown collector status {status!r}")
    return judge(result, spec_of(result, scenarios), t, baseline)


_BARE = Scenario("?", "", Path("."), ("true",), 1.0)
"""A result of a scenario no catalogue knows: judged by what it reported alone."""


def judge(
    result: dict[str, Any], spec: Scenario, t: Thresholds, baseline: Baseline | None
) -> Classified:
    """An ok result: errors and stalls first, then what the program said, then the
    manifest's rules in order, then the program's own verdict; else success."""
    m = dict(result.get("metrics") or {})
    rule = spec.series_rule()
    if rule:
        m.update(rate_figures(result, t, rule))
    m.update(program_figures(result))
    err = result.get("error")
    if err:
        m.update(error_name=err.get("name"), error_iteration=err.get("iteration"))
        return Classified(Verdict.ERROR, _errno_text(err), m)
    stall = (result.get("evidence") or {}).get("stall")
    if m.get("ended_by") == "stall" or stall:
        return Classified(Verdict.HANG, _stall_text(stall or {}, m), m)
    said = _program_said(result, m)
    if said:
        return said
    for r in spec.rules:
        found = _apply(r, result, m, t, baseline, spec)
        if found:
            return found
    own = result.get("verdict")
    if own in (v.value for v in Verdict) and own != Verdict.SUCCESS.value:
        return Classified(Verdict(own), f"the program's verdict: {detail_of(result)}", m)
    return Classified(Verdict.SUCCESS, _success_text(spec, result, m), m)


def rate_figures(result: dict[str, Any], t: Thresholds, rule: SeriesRateRule) -> dict[str, Any]:
    """The series-rate rule's figures, with the late evidence and the load it ran under."""
    figures = series.rates(result, t.early_fraction, t.late_fraction, rule)
    figures.update(series.late_evidence(result, t.late_fraction))
    figures.update(load_figures(result, rule))
    return figures


def program_figures(result: dict[str, Any]) -> dict[str, Any]:
    """What the program reported besides its metrics: outcome and test cases."""
    prog = result.get("program") or {}
    cases = result.get("testcases") or []
    if not prog and not cases:
        return {}
    counts = {k: sum(1 for c in cases if c.get("result") == k) for k in ("pass", "fail", "skip")}
    return {
        "outcome": prog.get("outcome"),
        "exit_code": prog.get("exit_code"),
        "testcases": len(cases),
        "testcases_failed": counts["fail"],
        "testcases_skipped": counts["skip"],
        "testcases_passed": counts["pass"],
    }


HEALTH_KINDS = ("oops", "bug", "soft_lockup", "rcu_stall", "hung_task", "warn")
"""What the kernel may have reported during a cell, most severe first."""


def kernel_figures(result: dict[str, Any]) -> dict[str, Any]:
    """The kernel's health during the cell, from the agent's `kernel` record (none for a
    result that has none): `kernel_health` is the most severe kind of trouble the kernel
    itself logged ("" for none), so a cell whose program succeeded on a kernel that
    warned or locked up can be marked. Lines a process wrote to /dev/kmsg are counted
    apart (`kernel_user_events`): they are not the kernel's."""
    k = result.get("kernel")
    if not isinstance(k, dict):
        return {}
    events = [e for e in k.get("events") or [] if isinstance(e, dict)]
    own = [e for e in events if e.get("origin", "kernel") == "kernel"]
    kinds = [kind for kind in HEALTH_KINDS if any(e.get("kind") == kind for e in own)]
    after = k.get("taint_after")
    figures: dict[str, Any] = {
        "kernel_health": kinds[0] if kinds else "",
        "kernel_event_kinds": ",".join(kinds),
        "kernel_events": len(own),
        "kernel_user_events": len(events) - len(own),
        "kernel_tainted": bool(after) if isinstance(after, int) else None,
        "kernel_taint_flags": taint_text(k.get("taint_flags_after")),
        "kernel_tainted_by_cell": taint_text(k.get("tainted_by_cell")),
        "kernel_log_shared": bool(k.get("shared")),
    }
    if k.get("error"):
        figures["kernel_log_error"] = str(k["error"])
    return figures


def taint_text(flags: Any) -> str:
    """Taint flags as the kernel prints them, letters only ("UW"); a bit without a
    letter follows by name ("U bit20")."""
    flags = [str(f) for f in flags or []]
    return "".join(f for f in flags if len(f) == 1) + "".join(f" {f}" for f in flags if len(f) > 1)


def overrun_figures(result: dict[str, Any]) -> dict[str, Any]:
    """A program that overran its deadline: the agent was alive to kill it (which is
    what tells a stuck program from a dead kernel), the state it was in, and whether it
    died (a task stuck in the kernel does not)."""
    live = result.get("liveness")
    if not isinstance(live, dict) or not live.get("overran"):
        return {}
    return {
        "agent_alive": bool(live.get("agent_alive", True)),
        "overran_state": live.get("state"),
        "overran_wchan": live.get("wchan"),
        "overran_reaped": live.get("reaped"),
    }


def detail_of(result: dict[str, Any]) -> str:
    return str(result.get("status_detail") or "").strip() or "no detail"


def _program_said(result: dict[str, Any], m: dict[str, Any]) -> Classified | None:
    """A verdict the program itself gave through its exit status, LAVA or TAP lines."""
    outcome = (result.get("program") or {}).get("outcome")
    if outcome not in ("fail", "error", "skip"):
        return None
    cases = result.get("testcases") or []
    bad = [str(c.get("name")) for c in cases if c.get("result") in ("fail", "error")]
    code = (result.get("program") or {}).get("exit_code")
    how = f"exit status {code}" if code is not None else "no exit status"
    if outcome == "fail":
        listed = ", ".join(bad[:8])
        named = f"{len(bad)} of {len(cases)} test cases failed: {listed}" if bad else how
        return Classified(Verdict.FAIL, f"fail: {named}", m)
    if outcome == "skip":
        return Classified(Verdict.SKIP, f"skipped ({how}): {detail_of(result)}", m)
    said = f"the program reported an error ({how}): {detail_of(result)}"
    return Classified(Verdict.ERROR, said, m)


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


def _apply(
    rule: Any,
    result: dict[str, Any],
    m: dict[str, Any],
    t: Thresholds,
    baseline: Baseline | None,
    spec: Scenario,
) -> Classified | None:
    """One manifest rule: a verdict, or None to go on to the next rule."""
    if isinstance(rule, SeriesRateRule):
        return _series_rate(rule, result, m, t)
    if isinstance(rule, MetricRule):
        value = m.get(rule.metric)
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else 0
        if _OPS[rule.op](number, rule.value):
            return None
        reason = rule.reason or f"{rule.metric} {value!r} is not {rule.op} {rule.value:g}"
        return Classified(Verdict(rule.otherwise), reason, m)
    if isinstance(rule, BaselineRule):
        return _baseline(rule, m, baseline, spec)
    return None


def _series_rate(
    rule: SeriesRateRule, result: dict[str, Any], m: dict[str, Any], t: Thresholds
) -> Classified:
    early, late = m["early_rate"], m["late_rate"]
    if early is None or late is None:
        return Classified(Verdict.INFRA, "too few samples to compute rates", m)
    short = _short_of_goal(result, m, rule) if rule.goal else ""
    if short and m.get("ended_by") != "collapse":
        m["inconclusive"] = True
        return Classified(Verdict.INFRA, short, m)
    least = rule.min_ratio if rule.min_ratio is not None else t.success_min_ratio
    if early > 0 and late >= least * early:
        return Classified(Verdict.SUCCESS, f"kept {late:,.0f}/s of an early {early:,.0f}/s", m)
    return Classified(Verdict.SLOWDOWN, _slowdown_text(early, late, m), m)


def _baseline(
    rule: BaselineRule, m: dict[str, Any], baseline: Baseline | None, spec: Scenario
) -> Classified | None:
    """Below min_ratio of the baseline kernel's value for the same cell: `otherwise`."""
    value = m.get(rule.metric)
    base = baseline(rule.metric, rule.kernel) if baseline else None
    if not isinstance(value, int | float) or not base:
        return None
    lower = (spec.metric(rule.metric) or _NO_SPEC).better == "lower"
    ratio = (base / value if value else 0.0) if lower else value / base
    m[f"{rule.metric}_vs_baseline"] = round(ratio, 3)
    if ratio >= rule.min_ratio:
        return None
    return Classified(
        Verdict(rule.otherwise),
        f"{rule.metric} {value:,.4g} is {ratio:.2f}x the baseline's {base:,.4g} "
        f"(below {rule.min_ratio:g}x)",
        m,
    )


def _success_text(spec: Scenario, result: dict[str, Any], m: dict[str, Any]) -> str:
    """The manifest's success text filled with this cell's metrics, else what was reported."""
    if spec.report.success:
        try:
            return spec.report.success.format(**m)
        except (KeyError, ValueError, TypeError, IndexError):
            pass
    cases = result.get("testcases") or []
    if cases:
        return f"{m.get('testcases_passed', 0)} of {len(cases)} test cases passed"
    if str(result.get("status_detail") or "").strip():
        return detail_of(result)
    code = (result.get("program") or {}).get("exit_code")
    return f"exit status {code}" if code is not None else "no detail"


def _short_of_goal(result: dict[str, Any], m: dict[str, Any], rule: SeriesRateRule) -> str:
    """Why a cell proves nothing yet: it never got its margins past the knee.

    connect() fills one parity of the port range first; only past that point can 2B run
    out of ports, so a loop stopped earlier (by a safety limit: a slow guest) has not
    been tested, however fast it was.
    """
    knee, margin, margin_s = series.goal(result, rule)
    if knee is None:
        return ""
    pts = series.points(result, rule.counter)
    n, knee_t, total_t = int(pts[-1][1]), m.get("knee_t"), pts[-1][0]
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


def load_figures(
    result: dict[str, Any], rule: SeriesRateRule = series.DEFAULT_RULE
) -> dict[str, Any]:
    """How loaded the machine was while the cell ran: the host's figures (added by the
    orchestrator as results arrive), the guest's steal, and the loop's own stability."""
    host = result.get("host_load") or {}
    guest = (result.get("metrics") or {}).get("guest_cpu") or {}
    return {
        "host_load1": host.get("load1_mean"),
        "host_steal_share": host.get("steal_share"),
        "vm_wait_share": host.get("vm_wait_share"),
        "guest_steal_share": guest.get("steal_share"),
        "rate_cv": series.rate_cv(result, rule),
    }


def loaded(m: dict[str, Any], t: Thresholds = DEFAULT_THRESHOLDS) -> str:
    """Why the machine looked loaded during the cell, or "" when it did not."""
    wait, cv = m.get("vm_wait_share"), m.get("rate_cv")
    if wait is not None and wait >= t.loaded_vm_wait:
        return f"VM threads waited for a CPU {wait:.0%} of the time"
    if cv is not None and cv >= t.loaded_rate_cv:
        return f"pre-knee rates varied {cv:.2f} std/mean"
    return ""


def thin_reasons(
    result: dict[str, Any] | None,
    c: Classified,
    t: Thresholds = DEFAULT_THRESHOLDS,
    scenarios: Catalogue | None = None,
) -> list[str]:
    """Why this verdict rests on a thin margin (empty: it does not), so that it is
    measured again. Only series-rate measurements (rates over time) can be thin."""
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
        rule = spec_of(result, scenarios).series_rule()
        back = series.last_second_rate(result, rule.counter) if rule else None
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


def thresholds_dict(t: Thresholds) -> dict[str, float]:
    return asdict(t)


def spec_of(result: dict[str, Any] | None, scenarios: Catalogue | None = None) -> Scenario:
    """The manifest a result is judged by (a bare one for a scenario nobody knows)."""
    found = (scenarios or builtin()).find(str((result or {}).get("scenario", "")))
    return found or _BARE


_NO_SPEC = MetricSpec("")
