"""Which part of a plan one CI job runs: `kmatrix run --shard I/N`.

Every shard plans the whole matrix and keeps its share, so the assignment depends only
on the plan (kernel names, the number and order of their cells), never on timing or on
the machine. Whole kernels go to shards while there are at least as many kernels as
shards, so each kernel boots once; with fewer kernels, a kernel's cells are split. A
split never separates the trials of one setting: trials of a cell are compared with
each other (see `matrix.results.stats`) and should share a machine.

The digest names the plan without the kernels' resolved builds, so a shard can skip
fetching kernels it does not run; `kmatrix merge` compares digests and then the builds
of the kernels that several shards ran.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from matrix.errors import ConfigError
from matrix.model import Batch, Cell, KernelSpec, ResolvedKernel, Sweep
from matrix.plan import cells as plan
from matrix.scenarios.catalogue import Catalogue

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard `index` (from 1) of `count`."""

    index: int
    count: int

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


def parse(text: str) -> Shard:
    """'I/N' -> Shard, refusing anything but 1 <= I <= N."""
    m = _SHARD.match(text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ConfigError("command line", "--shard", f"{text!r}; expected I/N with 1 <= I <= N")
    return Shard(int(m.group(1)), int(m.group(2)))


@dataclass(frozen=True)
class Piece:
    """Part `part` (from 0) of `parts` of one kernel's cells; (0, 1) is the whole kernel."""

    kernel: str
    part: int = 0
    parts: int = 1


@dataclass(frozen=True)
class ShardPlan:
    """One shard's share of a plan, and what names the plan it was cut from."""

    shard: Shard
    pieces: tuple[Piece, ...]
    positions: tuple[int, ...]
    """Each kept cell's index in the whole plan, in the order `take` returns them."""
    digest: str
    summary: dict[str, Any]
    """The whole plan's kernels, scenarios and cell count, to say how two plans differ."""

    @property
    def kernels(self) -> set[str]:
        return {p.kernel for p in self.pieces}

    def to_doc(self) -> dict[str, Any]:
        """The manifest's `shard` entry."""
        return {
            "index": self.shard.index,
            "count": self.shard.count,
            "plan_digest": self.digest,
            "plan": self.summary,
            "pieces": [[p.kernel, p.part, p.parts] for p in self.pieces],
            "positions": list(self.positions),
        }


def unresolved(specs: list[KernelSpec]) -> list[ResolvedKernel]:
    """Kernels as a plan sees them before anything is fetched."""
    return [ResolvedKernel(s, release="unresolved") for s in specs]


def groups(cells: tuple[Cell, ...]) -> list[list[int]]:
    """Indices of a kernel's cells, one list per setting (scenario, sysctls, parameters):
    its trials stay together."""
    out: dict[tuple[Any, ...], list[int]] = {}
    for i, c in enumerate(cells):
        out.setdefault((c.scenario, c.sysctls, c.params), []).append(i)
    return list(out.values())


def pieces(sizes: dict[str, tuple[int, int]], count: int) -> list[list[Piece]]:
    """Per shard, its pieces. `sizes`: kernel -> (cells, settings).

    At least as many kernels as shards: whole kernels, largest first, each to the shard
    with the fewest cells so far (ties: the lower shard). Fewer: each kernel gets parts
    in proportion to its cells (at most one per setting), one part per shard; shards
    beyond the parts there are stay empty.
    """
    names = sorted(sizes)
    out: list[list[Piece]] = [[] for _ in range(count)]
    if len(names) >= count:
        load = [0] * count
        for name in sorted(names, key=lambda n: (-sizes[n][0], n)):
            i = min(range(count), key=lambda j: (load[j], j))
            out[i].append(Piece(name))
            load[i] += sizes[name][0]
        return [sorted(p, key=lambda x: x.kernel) for p in out]
    parts = dict.fromkeys(names, 1)
    for _ in range(count - len(names)):
        room = [n for n in names if parts[n] < sizes[n][1]]
        if not room:
            break
        best = max(room, key=lambda n: (sizes[n][0] / parts[n], -names.index(n)))
        parts[best] += 1
    flat = [Piece(n, k, parts[n]) for n in names for k in range(parts[n])]
    for i, p in enumerate(flat):
        out[i].append(p)
    return out


def piece_indices(cells: tuple[Cell, ...], piece: Piece) -> list[int]:
    """The indices of a kernel's cells that a piece holds: every `parts`-th setting."""
    chosen = groups(cells)[piece.part :: piece.parts]
    return sorted(i for g in chosen for i in g)


def digest_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """plan.json without what depends on the machine or the kernels' builds: cell ids,
    kernel identities and releases, scenario directories."""
    drop = {"id", "kernel_identity", "scenario_dir"}
    return {
        "fixed_sysctls": doc.get("fixed_sysctls", []),
        "baseline": doc.get("baseline"),
        "scenarios": {n: s.get("manifest") for n, s in (doc.get("scenarios") or {}).items()},
        "kernels": [
            {k: d.get(k) for k in ("name", "kind", "description", "source")} for d in doc["kernels"]
        ],
        "cells": [{k: v for k, v in c.items() if k not in drop} for c in doc["cells"]],
    }


def digest(doc: dict[str, Any]) -> str:
    text = json.dumps(digest_doc(doc), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def assign(whole: list[Batch], shard: Shard, doc: dict[str, Any]) -> ShardPlan:
    """This shard's share of `whole` (the plan of unresolved kernels; `doc` its to_doc)."""
    sizes = {b.kernel.spec.name: (len(b.cells), len(groups(b.cells))) for b in whole}
    mine = tuple(pieces(sizes, shard.count)[shard.index - 1])
    offsets, at = {}, 0
    for b in whole:
        offsets[b.kernel.spec.name] = at
        at += len(b.cells)
    by_name = {b.kernel.spec.name: b for b in whole}
    positions = tuple(
        offsets[p.kernel] + i
        for p in sorted(mine, key=lambda p: offsets[p.kernel])
        for i in piece_indices(by_name[p.kernel].cells, p)
    )
    summary = {
        "kernels": [b.kernel.spec.name for b in whole],
        "scenarios": list(dict.fromkeys(c.scenario for b in whole for c in b.cells)),
        "cells": at,
    }
    return ShardPlan(shard, mine, positions, digest(doc), summary)


def take(share: ShardPlan, batches: list[Batch]) -> list[Batch]:
    """The shard's cells of `batches` (the same plan, its kernels resolved), in plan
    order; a kernel's cells do not depend on its build, so the indices carry over."""
    wanted = {p.kernel: p for p in share.pieces}
    out = []
    for b in batches:
        piece = wanted.get(b.kernel.spec.name)
        if piece is not None:
            out.append(Batch(b.kernel, tuple(b.cells[i] for i in piece_indices(b.cells, piece))))
    return out


def whole_plan(
    specs: list[KernelSpec], sweep: Sweep, cat: Catalogue | None, shard: Shard
) -> tuple[ShardPlan, list[KernelSpec]]:
    """This shard's share of the plan of `specs`, and the kernels it needs fetched."""
    whole = plan.plan(unresolved(specs), sweep, cat)
    doc = plan.to_doc(whole, sweep.fixed, cat, sweep.baseline)
    share = assign(whole, shard, doc)
    return share, [s for s in specs if s.name in share.kernels]
