"""`kmatrix threshold`: per kernel, where along one integer sysctl the verdict flips.

Each round is one batch per kernel (for a VM, one boot) holding `points` probe values x
`trials` cells; the bracket logic (`matrix.search.threshold`) picks the next round's values
from every probe so far. The agent reads its cell list once per boot, so a VM search
costs one boot per round rather than one per search: a k-ary search needs few rounds
(69,000 wide -> 552 in four rounds of four probes). Every step is kept in the run
directory's threshold.json, next to the usual cells/ and plan.json.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from matrix.model import Cell, Limits, ResolvedKernel
from matrix.run import rundir
from matrix.run.rounds import Rounds, make_cell
from matrix.scenarios.catalogue import Catalogue
from matrix.search import threshold as th

DOC = "threshold.json"


@dataclass(frozen=True)
class Search:
    """What is searched: one scenario, one integer sysctl over [lo, hi], the rest fixed."""

    scenario: str
    key: str
    lo: int
    hi: int
    points: int = 4
    trials: int = 1
    resolution: int = 1
    max_rounds: int = 8
    fixed: tuple[tuple[str, str], ...] = ()
    limits: Limits = Limits()

    def cells(self, kernel: ResolvedKernel, value: int, cat: Catalogue | None = None) -> list[Cell]:
        sysctls = ((self.key, th.sysctl_value(self.key, value)), *self.fixed)
        return [
            make_cell(kernel, self.scenario, sysctls, t, self.limits, cat)
            for t in range(self.trials)
        ]


@dataclass
class KernelSearch:
    """One kernel's search so far: every probe with its cells, every round, why it ended."""

    probes: list[th.Probe]
    cells: dict[int, list[str]]
    rounds: list[dict[str, Any]]
    stopped: str = ""

    def doc(self) -> dict[str, Any]:
        b = th.bracket(self.probes)
        return {
            "probes": [
                {
                    "value": p.value,
                    "verdicts": list(p.verdicts),
                    "label": p.label,
                    "outcome": p.outcome,
                    "unanimous": p.unanimous,
                    "cells": self.cells.get(p.value, []),
                }
                for p in sorted(self.probes, key=lambda p: p.value)
            ],
            "rounds": self.rounds,
            "bracket": dict(asdict(b), found=b.found, width=b.width),
            "stopped": self.stopped,
        }


def run_search(search: Search, rounds: Rounds) -> dict[str, KernelSearch]:
    """All kernels' searches, round by round, each round one batch per open kernel."""
    state = {name: KernelSearch([], {}, []) for name in rounds.kernels}
    todo = {name: th.first_round(search.lo, search.hi, search.points) for name in state}
    for n in range(1, search.max_rounds + 1):
        todo = {k: v for k, v in todo.items() if v}
        if not todo or rounds.stop.is_set():
            break
        cat = rounds.config.catalogue
        planned = {
            k: {v: search.cells(rounds.kernels[k], v, cat) for v in vs} for k, vs in todo.items()
        }
        verdicts = rounds.run({k: [c for cs in p.values() for c in cs] for k, p in planned.items()})
        for name, by_value in planned.items():
            todo[name] = _absorb(search, rounds, state[name], n, by_value, verdicts)
        write_doc(rounds.run_dir, search, state)
    for name, s in state.items():
        if not s.stopped:
            s.stopped = "interrupted" if rounds.stop.is_set() else _why_open(search, todo, name)
    write_doc(rounds.run_dir, search, state)
    return state


def _absorb(
    search: Search,
    rounds: Rounds,
    s: KernelSearch,
    n: int,
    by_value: dict[int, list[Cell]],
    verdicts: dict[str, str],
) -> list[int]:
    """Record one round's probes for a kernel; return the values of its next round."""
    new = [th.Probe(v, tuple(verdicts[c.id] for c in cells)) for v, cells in by_value.items()]
    s.probes += new
    for v, cells in by_value.items():
        s.cells[v] = [c.id for c in cells]
    failure = rounds.batch_failure(next(iter(by_value.values()))[0].kernel)
    s.rounds.append({"round": n, "values": sorted(by_value), "failure": failure})
    if rounds.stop.is_set():
        s.stopped = f"interrupted in round {n}"
        return []
    if all(p.outcome is None for p in new):
        s.stopped = f"round {n} decided nothing ({failure or 'ties or infra only'})"
        return []
    nxt = th.next_round(s.probes, search.points, search.resolution)
    if not nxt:
        s.stopped = _why_done(search, s.probes)
    return nxt


def _why_done(search: Search, probes: list[th.Probe]) -> str:
    b = th.bracket(probes)
    if not b.found:
        labels = sorted({p.label for p in probes if p.outcome is not None})
        return f"no flip in {search.lo}..{search.hi}: every decided probe {'/'.join(labels)}"
    return f"bracket {b.lo}..{b.hi} is within the resolution ({search.resolution})"


def _why_open(search: Search, todo: dict[str, list[int]], name: str) -> str:
    return f"stopped after {search.max_rounds} rounds" if todo.get(name) else "done"


def write_doc(run_dir: Path, search: Search, state: dict[str, KernelSearch]) -> None:
    """threshold.json: the search's parameters and every kernel's probes and bracket."""
    doc = {
        "kind": "threshold",
        "scenario": search.scenario,
        "key": search.key,
        "range": [search.lo, search.hi],
        "points": search.points,
        "trials": search.trials,
        "resolution": search.resolution,
        "fixed": dict(search.fixed),
        "limits": asdict(search.limits),
        "kernels": {name: s.doc() for name, s in state.items()},
    }
    rundir.write_json(run_dir / DOC, doc)


def summary_lines(state: dict[str, KernelSearch]) -> list[str]:
    """What the terminal shows at the end: the bracket per kernel, and why it ended."""
    out = []
    for name, s in state.items():
        b = th.bracket(s.probes)
        if b.found:
            lo_label = next(p.label for p in s.probes if p.value == b.lo)
            hi_label = next(p.label for p in s.probes if p.value == b.hi)
            text = f"flips between {b.lo} ({lo_label}) and {b.hi} ({hi_label})"
            if b.zone != (b.lo, b.hi) or b.changes > 1:
                text += f"; uncertain over {b.zone}, {b.changes} changes"
        else:
            text = "no flip found"
        out.append(f"{name}: {text}; {len(s.probes)} probes in {len(s.rounds)} rounds; {s.stopped}")
    return out


def parse_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition(":")
    try:
        return int(lo), int(hi)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LO:HI, e.g. 1000:70000") from None
