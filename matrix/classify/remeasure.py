"""A verdict a re-run would not change: thin-margin cells are measured again.

A cell's measurements are its attempts: the planned one (`<id>`) and re-measurements
(`<id>.a2`, `<id>.a3`). `fold` turns them into the one verdict the table, the live
display and the report all show, so they can never disagree; `next_round` says which
cells need another attempt. Pure functions over collector results.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from matrix.classify.rules import (
    DEFAULT_THRESHOLDS,
    Baseline,
    Thresholds,
    classify,
    thin_reasons,
)
from matrix.model import Batch, Cell, Classified, Verdict
from matrix.scenarios.catalogue import Catalogue

ATTEMPT_SEP = ".a"


@dataclass(frozen=True)
class Attempt:
    """One measurement of a cell and what its verdict rests on."""

    cell_id: str
    classified: Classified
    thin: tuple[str, ...]

    @property
    def conclusive(self) -> bool:
        return self.classified.verdict is not Verdict.INFRA


@dataclass(frozen=True)
class Folded:
    """The cell's verdict over its attempts, and how firmly it stands."""

    classified: Classified
    chosen_id: str
    """The attempt whose figures and evidence are shown."""
    attempts: tuple[Attempt, ...]
    confirmation: str
    """'single-shot', 'confirmed' (every conclusive attempt agrees, two or more),
    'majority' (two of three), or 'unsettled' (no two conclusive attempts agree)."""
    settled: bool
    """False when another attempt is due (and the bound allows it)."""

    @property
    def remeasured_because(self) -> str:
        """Why the first attempt was not taken as it stood ("" when it was)."""
        return "; ".join(self.attempts[0].thin) if len(self.attempts) > 1 else ""


def attempt_id(base_id: str, attempt: int) -> str:
    return base_id if attempt == 1 else f"{base_id}{ATTEMPT_SEP}{attempt}"


def base_of(cell_id: str) -> str:
    """The planned cell an attempt's id belongs to."""
    base, sep, n = cell_id.rpartition(ATTEMPT_SEP)
    return base if sep and n.isdigit() else cell_id


def attempts_of(base_id: str, raw: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The attempts that came back, in order, stopping at the first missing one."""
    out, n = [], 1
    while attempt_id(base_id, n) in raw:
        out.append(raw[attempt_id(base_id, n)])
        n += 1
    return out


def fold(
    base_id: str,
    results: list[dict[str, Any]],
    failure: str = "",
    t: Thresholds = DEFAULT_THRESHOLDS,
    scenarios: Catalogue | None = None,
    baseline: Baseline | None = None,
) -> Folded:
    """The majority of the conclusive attempts decides; the latest of them is shown."""
    if not results:
        c = classify(None, failure, t)
        return Folded(c, base_id, (), "single-shot", True)
    attempts = tuple(
        Attempt(attempt_id(base_id, n), c, tuple(thin_reasons(r, c, t, scenarios)))
        for n, r in enumerate(results, 1)
        for c in [classify(r, failure, t, scenarios, baseline)]
    )
    conclusive = [a for a in attempts if a.conclusive]
    if not conclusive:
        last = attempts[-1]
        return Folded(last.classified, last.cell_id, attempts, "single-shot", not last.thin)
    votes = Counter(a.classified.verdict for a in conclusive)
    verdict, n = votes.most_common(1)[0]
    chosen = next(a for a in reversed(conclusive) if a.classified.verdict is verdict)
    if n >= 2:
        confirmation = "confirmed" if n == len(conclusive) else "majority"
        return Folded(chosen.classified, chosen.cell_id, attempts, confirmation, True)
    settled = len(conclusive) == 1 and not conclusive[0].thin
    confirmation = "single-shot" if len(conclusive) == 1 else "unsettled"
    return Folded(chosen.classified, chosen.cell_id, attempts, confirmation, settled)


def wants_more(folded: Folded, t: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    return not folded.settled and 0 < len(folded.attempts) <= t.remeasure_max


def next_round(
    batches: list[Batch],
    raw: Mapping[str, dict[str, Any]],
    t: Thresholds = DEFAULT_THRESHOLDS,
    scenarios: Catalogue | None = None,
) -> list[Batch]:
    """Per kernel, the next attempt of every planned cell whose verdict is not settled."""
    out = []
    for b in batches:
        cells: list[Cell] = []
        for c in b.cells:
            results = attempts_of(c.base_id, raw)
            if wants_more(fold(c.base_id, results, "", t, scenarios), t):
                cells.append(replace(c, attempt=len(results) + 1))
        if cells:
            out.append(Batch(b.kernel, tuple(cells)))
    return out
