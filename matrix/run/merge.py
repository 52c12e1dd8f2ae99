"""`kmatrix merge`: the run directories of a plan's shards -> one run directory.

The result has the layout of any run (see `matrix.run.rundir`): one manifest, the whole
plan in plan.json, every shard's cells, batches and console logs, the results table.
So `--resume`, `report`, `results`, `export` and `diff` treat it like any other run.
Shards are refused, before anything is written, unless they are every shard of one plan:
the same plan digest, each index once, no cell twice or missing, and a kernel that
several shards ran resolved to the same build in each.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matrix import __version__
from matrix.errors import KmatrixError
from matrix.run import job, rundir

SUMMARY_KEYS = ("kernels", "scenarios", "cells")
UNRESOLVED = "unresolved"
"""The release of a kernel its shard could not fetch (see `matrix.run.job.resolve`)."""


@dataclass(frozen=True)
class ShardRun:
    """One shard's run directory, as merge reads it."""

    path: Path
    manifest: dict[str, Any]
    plan: dict[str, Any]

    @property
    def shard(self) -> dict[str, Any]:
        return self.manifest["shard"]

    @property
    def label(self) -> str:
        return f"{self.shard['index']}/{self.shard['count']}"


def read_shard(path: Path) -> ShardRun:
    """A shard's run directory, refused when it is not one or is still running."""
    manifest = rundir.read_json(path / "manifest.json")
    plan = rundir.read_json(path / "plan.json")
    shard = manifest.get("shard")
    if not isinstance(shard, dict) or not {"index", "count", "plan_digest"} <= shard.keys():
        raise KmatrixError(f"{path}: not a shard (made by `kmatrix run --shard I/N`)")
    if in_use(path):
        raise KmatrixError(f"{path}: in use by a kmatrix run; merge it once it has ended")
    return ShardRun(path, manifest, plan)


def in_use(run_dir: Path) -> bool:
    """True while a kmatrix process holds the run's lock; read only, so a read-only copy
    of a shard (a CI artifact) can be merged."""
    try:
        fd = os.open(run_dir / rundir.LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def check(shards: list[ShardRun]) -> None:
    """Every shard of one plan, each once: else one line naming the directory and what
    differs."""
    first = shards[0]
    seen: dict[int, Path] = {}
    for s in shards:
        if s.shard["count"] != first.shard["count"]:
            raise KmatrixError(
                f"{s.path}: shard {s.label}, but {first.path} is shard {first.label}: "
                "shards of different splits"
            )
        if s.shard["plan_digest"] != first.shard["plan_digest"]:
            raise KmatrixError(f"{s.path}: a different plan from {first.path}: {_how(first, s)}")
        if s.shard["index"] in seen:
            raise KmatrixError(
                f"{s.path}: shard {s.label} given twice (also {seen[s.shard['index']]})"
            )
        seen[s.shard["index"]] = s.path
    missing = sorted(set(range(1, first.shard["count"] + 1)) - seen.keys())
    if missing:
        names = ", ".join(f"{i}/{first.shard['count']}" for i in missing)
        raise KmatrixError(f"{first.path}: shard {names} of the same plan not given")
    _check_positions(shards)
    _check_builds(shards)


def _how(a: ShardRun, b: ShardRun) -> str:
    pa, pb = a.shard.get("plan") or {}, b.shard.get("plan") or {}
    for key in SUMMARY_KEYS:
        if pa.get(key) != pb.get(key):
            return f"{key} {_show(pb.get(key))} here, {_show(pa.get(key))} there"
    return (
        "same kernels, scenarios and cell count, but other sysctls, parameters, limits or manifests"
    )


def _show(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


def _check_positions(shards: list[ShardRun]) -> None:
    """Together the shards hold each cell of the plan once."""
    total = shards[0].shard.get("plan", {}).get("cells")
    owner: dict[int, Path] = {}
    for s in shards:
        positions = s.shard.get("positions", [])
        if len(positions) != len(s.plan["cells"]):
            n = len(s.plan["cells"])
            raise KmatrixError(f"{s.path}: plan.json has {n} cells, its manifest {len(positions)}")
        for p in positions:
            if p in owner:
                raise KmatrixError(f"{s.path}: cell {p} of the plan is also in {owner[p]}")
            owner[p] = s.path
    if total is not None and len(owner) != total:
        raise KmatrixError(
            f"{shards[0].path}: the shards hold {len(owner)} of the plan's {total} cells"
        )


def _check_builds(shards: list[ShardRun]) -> None:
    """A kernel split over shards must be the same build in each (a Debian upload between
    two CI jobs would otherwise mix builds in one row); a shard that could not fetch it
    has no build to compare, and its cells are infra saying why."""
    seen: dict[str, tuple[str, Path]] = {}
    for s in shards:
        for k in s.plan["kernels"]:
            if k.get("release") == UNRESOLVED:
                continue
            ident = (
                f"{k.get('release')} {k.get('sha256') or k.get('package_version') or ''}".strip()
            )
            if k["name"] in seen and seen[k["name"]][0] != ident:
                other, where = seen[k["name"]]
                raise KmatrixError(
                    f"{s.path}: kernel {k['name']} is {ident} here but {other} in {where}"
                )
            seen.setdefault(k["name"], (ident, s.path))


def merged_plan(
    shards: list[ShardRun], batches: dict[int, dict[str, str]] | None = None
) -> dict[str, Any]:
    """plan.json of the whole plan: kernels in plan order, cells in plan order. A cell of
    a kernel split over shards names its shard's batch (`batches`: shard index -> kernel
    -> batch name, where renamed), so its runner, accelerator and host are its own."""
    first = shards[0].plan
    order = shards[0].shard.get("plan", {}).get("kernels") or []
    kernels: dict[str, dict[str, Any]] = {}
    scenarios: dict[str, Any] = {}
    cells: list[tuple[int, dict[str, Any]]] = []
    for s in shards:
        for k in s.plan["kernels"]:
            if kernels.get(k["name"], {}).get("release", UNRESOLVED) == UNRESOLVED:
                kernels[k["name"]] = k
        scenarios.update(s.plan.get("scenarios") or {})
        renamed = (batches or {}).get(s.shard["index"], {})
        for pos, cell in zip(s.shard["positions"], s.plan["cells"], strict=True):
            own = renamed.get(cell["kernel"])
            cells.append((pos, dict(cell, batch=own) if own else cell))
    rank = {name: i for i, name in enumerate(order)}
    return {
        "fixed_sysctls": first.get("fixed_sysctls", []),
        "baseline": first.get("baseline"),
        "scenarios": scenarios,
        "kernels": sorted(kernels.values(), key=lambda k: rank.get(k["name"], len(rank))),
        "cells": [c for _, c in sorted(cells, key=lambda pc: pc[0])],
    }


def merged_manifest(shards: list[ShardRun], out: Path, argv: list[str]) -> dict[str, Any]:
    """One manifest: the earliest start, the latest end, every machine, and each shard."""
    mans = [s.manifest for s in shards]

    def joined(key: str) -> str:
        return ", ".join(dict.fromkeys(str(m.get(key) or "") for m in mans if m.get(key)))

    ends = [str(m.get("ended_at") or "") for m in mans]
    choices: dict[str, Any] = {}
    for m in mans:
        choices.update(m.get("accel_choices") or {})
    return {
        "run_id": out.name,
        "kmatrix_version": __version__,
        "started_at": min(str(m.get("started_at") or "") for m in mans),
        "ended_at": max(ends) if all(ends) else "",
        "merged_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(argv),
        "host": joined("host"),
        "host_kernel": joined("host_kernel"),
        "python": joined("python"),
        "qemu_version": joined("qemu_version"),
        "config_path": joined("config_path"),
        "allow_unverified": any(bool(m.get("allow_unverified")) for m in mans),
        "guest_user": joined("guest_user"),
        "interrupted": any(bool(m.get("interrupted")) for m in mans),
        "accelerator": next((m["accelerator"] for m in mans if m.get("accelerator")), None),
        "accel_choices": choices,
        "plan_digest": shards[0].shard["plan_digest"],
        "shards": [
            {
                "index": s.shard["index"],
                "count": s.shard["count"],
                "run_id": s.manifest.get("run_id", s.path.name),
                "dir": str(s.path),
                "host": s.manifest.get("host", ""),
                "started_at": s.manifest.get("started_at", ""),
                "ended_at": s.manifest.get("ended_at", ""),
                "interrupted": bool(s.manifest.get("interrupted")),
                "command": s.manifest.get("command", ""),
            }
            for s in shards
        ],
    }


def batch_name(name: str, index: int, taken: set[str]) -> str:
    """A shard's batch name in the merged run: as it was, or tagged `+s<index>` after the
    kernel's name when another shard already has it (a kernel split over shards)."""
    if name not in taken:
        return name
    kernel, sep, rest = name.partition("+")
    return f"{kernel}+s{index}{sep}{rest}"


def _plain_files(directory: Path, pattern: str) -> list[Path]:
    """Regular files only: a link in a shard (an artifact from elsewhere) is not followed."""
    return [p for p in sorted(directory.glob(pattern)) if not p.is_symlink() and p.is_file()]


def copy_results(shards: list[ShardRun], out: Path) -> dict[int, dict[str, str]]:
    """cells/, batches/ and console/ of every shard, renamed where two shards clash;
    returns, per shard index, each kernel whose batch was renamed and its new name."""
    (out / "cells").mkdir(parents=True, exist_ok=True)
    for s in shards:
        for p in _plain_files(s.path / "cells", "*.json"):
            dest = out / "cells" / p.name
            if dest.exists():
                raise KmatrixError(f"{s.path}: cell result {p.name} is in another shard too")
            shutil.copyfile(p, dest)
    taken: set[str] = set()
    renamed: dict[int, dict[str, str]] = {}
    for s in sorted(shards, key=lambda s: s.shard["index"]):
        for p in _plain_files(s.path / "batches", "*.json"):
            name = batch_name(p.stem, s.shard["index"], taken)
            taken.add(name)
            if name != p.stem and "+" not in p.stem:
                renamed.setdefault(s.shard["index"], {})[p.stem] = name
            doc = rundir.read_json(p)
            log = s.path / str(doc.get("console_log") or "")
            if doc.get("console_log") and not log.is_symlink() and log.is_file():
                dest = out / "console" / f"{name}.log"
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, dest)
                doc["console_log"] = str(dest.relative_to(out))
            else:
                doc["console_log"] = ""
            rundir.write_json(out / "batches" / f"{name}.json", doc)
    return renamed


def claim_out(out: Path) -> rundir.RunLock:
    """A new or empty directory for the merged run, locked like any run's."""
    if out.exists() and (
        not out.is_dir() or any(p.name != rundir.LOCK_NAME for p in out.iterdir())
    ):
        raise KmatrixError(f"{out}: exists and is not empty; merge into a new directory")
    rundir.check_writable(out)
    return rundir.lock_run(out)


def merge(dirs: list[Path], out: Path, argv: list[str]) -> Path:
    """Check the shards, then write the merged run directory (its table included)."""
    shards = [read_shard(Path(d).resolve()) for d in dirs]
    if not shards:
        raise KmatrixError("merge: no shard directories given")
    check(shards)
    shards.sort(key=lambda s: s.shard["index"])
    out = out.resolve()
    if any(out == s.path for s in shards):
        raise KmatrixError(f"{out}: is one of the shards; merge into a new directory")
    with claim_out(out):
        renamed = copy_results(shards, out)
        rundir.write_json(out / "plan.json", merged_plan(shards, renamed))
        rundir.write_json(out / "manifest.json", merged_manifest(shards, out, argv))
        job.write_tables(out)
    return out
