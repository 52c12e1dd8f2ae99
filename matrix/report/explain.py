"""The matrix page's explanations: what each puzzle shows, with this run's own figures.

The mechanism is stated once per puzzle; every number in the text is computed here from
the run's table (which cells collapsed, from what rate to what, at how many TIME-WAIT
sockets; the 1B/1A ratio range), so the paragraph can never disagree with the matrix
below it. The strings are plain text: the template escapes them like any other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

COLLAPSED = ("slowdown", "hang", "error")
MAX_LISTED = 6
TWO_THIRDS = 2 / 3
RATIO_SLACK = 0.05
"""How far from 2/3 a 1B/1A ratio may be before the text calls the kernel out."""

MECHANISM = {
    "2A": (
        "In 2A the server closes first, so the TIME-WAIT sockets sit on the server's end "
        "of each connection (port 1234) and do not hold the client's ephemeral ports: "
        "the loop is expected to keep its rate whatever the TIME-WAIT settings."
    ),
    "2B": (
        "In 2B the client closes first, so every connection leaves a TIME-WAIT socket "
        "holding one of the client's ephemeral ports for 60 s. Once TIME-WAIT fills the "
        "local port range, connect() either searches ever longer for a free port (a "
        "CPU-bound crawl: state R, empty wchan) or fails with EADDRNOTAVAIL. "
        "tcp_tw_reuse lets connect() take over a TIME-WAIT port, and tcp_max_tw_buckets "
        "caps how many TIME-WAIT sockets are kept at all."
    ),
}
PUZZLE1_MECHANISM = (
    "1A calls send() until it returns EAGAIN, which happens when the queued bytes reach "
    "SO_SNDBUF. 1B stops as soon as poll() drops POLLOUT, and TCP reports POLLOUT only "
    "while sk_stream_is_writeable() holds: the free space (SO_SNDBUF minus what is "
    "queued) must be at least half of what is queued, so 1B stops at about 2/3 of the "
    "buffer. A 1B/1A ratio near 0.667 is that rule at work."
)


def _n(value: Any) -> str:
    return "?" if value is None else f"{float(value):,.0f}"


def _span(values: list[Any]) -> str:
    """'13,000' when every value rounds the same, else '9,800-13,000'."""
    lo, hi = _n(min(values)), _n(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def _where(row: Mapping[str, Any]) -> str:
    return f"{row['kernel']} with {row.get('sysctl_label') or 'defaults'}"


def _collapse_text(row: Mapping[str, Any]) -> str:
    """One collapsed cell: what happened, with its rates and TIME-WAIT count."""
    tw = f" with {_n(row.get('tw_max'))} TIME-WAIT sockets" if row.get("tw_max") else ""
    verdict = row["verdict"]
    if verdict == "error":
        err = row.get("error_name") or "setup failure"
        at = f" at iteration {_n(row.get('error_iteration'))}" if row.get("error_iteration") else ""
        return f"{_where(row)} died with {err}{at}{tw}"
    if verdict == "hang":
        done = f"stalled after {_n(row.get('iterations'))} connections"
        return f"{_where(row)} {done}{tw} (state {row.get('evidence_state') or '?'})"
    rate = f"fell from {_n(row.get('early_rate'))}/s to {_n(row.get('late_rate'))}/s"
    return f"{_where(row)} {rate}{tw}"


def _collapsed_settings(
    bad: list[Mapping[str, Any]], measured: list[Mapping[str, Any]]
) -> list[str]:
    """One entry per (kernel, setting), its first collapsed trial, and how many trials did."""
    trials = Counter((r["kernel"], r.get("sysctl_label")) for r in measured)
    groups: dict[tuple[Any, Any], list[Mapping[str, Any]]] = {}
    for r in bad:
        groups.setdefault((r["kernel"], r.get("sysctl_label")), []).append(r)
    return [
        _collapse_text(rs[0]) + (f" ({len(rs)} of {trials[k]} trials)" if trials[k] > 1 else "")
        for k, rs in groups.items()
    ]


def _measured(rows: Iterable[Mapping[str, Any]], scenario: str) -> list[Mapping[str, Any]]:
    return [r for r in rows if r["scenario"] == scenario and r["verdict"] != "infra"]


def _by_setting(rows: list[Mapping[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    """Sysctl settings that collapsed on every kernel, held on every kernel, or depend on it."""
    outcome: dict[str, set[bool]] = {}
    for r in rows:
        outcome.setdefault(r.get("sysctl_label") or "defaults", set()).add(
            r["verdict"] in COLLAPSED
        )
    always = sorted(k for k, v in outcome.items() if v == {True})
    never = sorted(k for k, v in outcome.items() if v == {False})
    mixed = sorted(k for k, v in outcome.items() if len(v) > 1)
    return always, never, mixed


def puzzle2_findings(rows: list[Mapping[str, Any]], scenario: str) -> str:
    """What this run measured in one puzzle-2 scenario, with its own figures."""
    measured = _measured(rows, scenario)
    text: list[str] = []
    if not measured:
        return f"No {scenario} cell was measured in this run."
    bad = [r for r in measured if r["verdict"] in COLLAPSED]
    kernels = len({r["kernel"] for r in measured})
    where = f"{scenario} cells on {kernels} kernel{'s' if kernels != 1 else ''}"
    if bad:
        items = _collapsed_settings(bad, measured)
        listed = "; ".join(items[:MAX_LISTED])
        more = f"; and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
        text.append(
            f"In this run {len(bad)} of {len(measured)} measured {where} collapsed: {listed}{more}."
        )
    else:
        text.append(f"In this run none of the {len(measured)} measured {where} collapsed.")
    held = [r for r in measured if r["verdict"] not in COLLAPSED]
    if held:
        early = [r["early_rate"] for r in held if r.get("early_rate") is not None]
        tw = [r["tw_max"] for r in held if r.get("tw_max") is not None]
        figures = f" at {_span(early)}/s" if early else ""
        figures += f", with at most {_n(max(tw))} TIME-WAIT sockets" if tw else ""
        text.append(f"{len(held)} cells kept their rate{figures}.")
    if kernels > 1:
        text.append(_settings_sentence(measured))
    return " ".join(t for t in text if t)


def _settings_sentence(measured: list[Mapping[str, Any]]) -> str:
    always, never, mixed = _by_setting(measured)
    parts = []
    if always:
        parts.append("collapsed on every kernel: " + ", ".join(always))
    if never:
        parts.append("held on every kernel: " + ", ".join(never))
    if mixed:
        parts.append("depended on the kernel: " + ", ".join(mixed))
    return ("By setting, " + "; ".join(parts) + ".") if parts else ""


def puzzle1_findings(p1rows: list[Mapping[str, Any]]) -> str:
    """The 1B/1A ratio range this run found across kernels, against the 2/3 rule."""
    ratios = [(p["ratio"], p) for p in p1rows if p.get("ratio") is not None]
    if not ratios:
        return "No kernel in this run measured both 1A and 1B."
    lo, lo_p = min(ratios, key=lambda x: x[0])
    hi, hi_p = max(ratios, key=lambda x: x[0])
    names = sorted({p["kernel"]["name"] for _, p in ratios})
    if len(ratios) == 1:
        found = f"In this run 1B queued {lo:.3f} of what 1A queued on {names[0]}"
    elif f"{lo:.3f}" == f"{hi:.3f}":
        found = f"In this run 1B queued {lo:.3f} of what 1A queued on all {len(names)} kernels"
    else:
        found = (
            f"In this run the ratio ranged from {lo:.3f} ({lo_p['kernel']['name']}) to "
            f"{hi:.3f} ({hi_p['kernel']['name']}) across {len(names)} kernels"
        )
    a, b = lo_p["a"], lo_p["b"]
    found += (
        f" (e.g. {_n(a['bytes_queued'])} B vs {_n(b['bytes_queued'])} B "
        f"with SO_SNDBUF ending at {_n(a.get('sndbuf'))} B)."
    )
    odd = sorted({p["kernel"]["name"] for r, p in ratios if abs(r - TWO_THIRDS) > RATIO_SLACK})
    if odd:
        tail = " Far from 2/3, so the rule or the buffer sizing differs on: " + ", ".join(odd)
    elif len(names) > 1:
        tail = " Every kernel is within 0.05 of 2/3: the same writeability rule everywhere"
    else:
        tail = " That is within 0.05 of 2/3: the writeability rule as described"
    return f"{found}{tail}."


def paragraphs(rows: list[dict[str, Any]], p1rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per puzzle-2 scenario of the run, and for puzzle 1 if it ran: mechanism, findings."""
    scenarios = sorted({r["scenario"] for r in rows if str(r["scenario"]).startswith("2")})
    return {
        "puzzle2": [
            {
                "scenario": s,
                "mechanism": MECHANISM.get(s, ""),
                "findings": puzzle2_findings(rows, s),
            }
            for s in scenarios
        ],
        "puzzle1": {"mechanism": PUZZLE1_MECHANISM, "findings": puzzle1_findings(p1rows)}
        if p1rows
        else None,
    }
