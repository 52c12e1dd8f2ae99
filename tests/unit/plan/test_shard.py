"""`run --shard I/N`: which cells each shard runs, and the plan digest shards share."""

from __future__ import annotations

import pytest

from matrix.errors import ConfigError
from matrix.model import DebianSource, HostSource, KernelSpec, ResolvedKernel, Sweep
from matrix.plan import cells as plan
from matrix.plan import shard
from matrix.plan.config import default_sweep

SWEEP = default_sweep()
"""1A, 1B, and 2A/2B over 3 x 2 sysctl values: 14 cells and 14 settings per kernel."""
TRIALS = Sweep(SWEEP.scenarios, SWEEP.sysctls, trials=3)


def spec(name: str) -> KernelSpec:
    if name == "host":
        return KernelSpec(name, HostSource())
    return KernelSpec(name, DebianSource("bookworm", f"linux-image-{name}-*-amd64-unsigned"))


def resolved(s: KernelSpec) -> ResolvedKernel:
    return ResolvedKernel(s, release=f"{s.name}.0-1-amd64", sha256="ab" * 32)


def cut(names: list[str], count: int, sweep: Sweep = SWEEP) -> list[list]:
    """Each shard's batches, cut as `kmatrix run --shard` cuts them (kernels resolved)."""
    specs = [spec(n) for n in names]
    out = []
    for i in range(1, count + 1):
        share, needed = shard.whole_plan(specs, sweep, None, shard.Shard(i, count))
        kernels = [resolved(s) if s in needed else shard.unresolved([s])[0] for s in specs]
        out.append(shard.take(share, plan.plan(kernels, sweep)))
    return out


def ids(batches: list) -> list[str]:
    return [c.id for b in batches for c in b.cells]


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0", "-1/2", ""])
def test_a_bad_shard_is_one_line_naming_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^command line: --shard: .*expected I/N") as e:
        shard.parse(text)
    assert "\n" not in str(e.value)


def test_shard_parses() -> None:
    assert shard.parse("2/5") == shard.Shard(2, 5) and shard.parse(" 1 / 1 ").label == "1/1"


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 30])
@pytest.mark.parametrize("names", [["host"], ["host", "6.1"], ["host", "5.10", "6.1", "6.12"]])
def test_every_cell_is_in_exactly_one_shard(names: list[str], count: int) -> None:
    whole = plan.plan([resolved(spec(n)) for n in names], SWEEP)
    parts = [ids(p) for p in cut(names, count)]
    flat = [i for p in parts for i in p]
    assert sorted(flat) == sorted(ids(whole)) and len(set(flat)) == len(flat)


def test_whole_kernels_while_there_are_enough_of_them() -> None:
    parts = cut(["host", "5.10", "6.1", "6.12", "7.2"], 2)
    kernels = [[b.kernel.spec.name for b in p] for p in parts]
    assert sorted(k for p in kernels for k in p) == ["5.10", "6.1", "6.12", "7.2", "host"]
    assert all(len(set(p)) == len(p) for p in kernels)
    sizes = [sum(len(b.cells) for b in p) for p in parts]
    assert sizes == [42, 28], "largest first to the least loaded shard: 3 kernels and 2"


def test_fewer_kernels_than_shards_splits_a_kernel_by_setting_keeping_trials_together() -> None:
    parts = cut(["host"], 3, TRIALS)
    assert [len(p) for p in parts] == [1, 1, 1]
    for p in parts:
        settings = {}
        for c in p[0].cells:
            settings.setdefault((c.scenario, c.sysctls), set()).add(c.trial)
        assert all(trials == {0, 1, 2} for trials in settings.values())
    assert sorted(sum(len(b.cells) for b in p) for p in parts) == [12, 15, 15]


def test_more_shards_than_settings_leaves_the_rest_empty() -> None:
    sweep = Sweep(("1A", "1B"), (), trials=2)
    parts = cut(["host"], 4, sweep)
    assert [sum(len(b.cells) for b in p) for p in parts] == [2, 2, 0, 0]


def test_the_assignment_depends_on_the_plan_only() -> None:
    """The same cells per shard whatever order kernels.toml lists them in, and whether a
    shard resolved the kernels it does not run."""
    a = [set(ids(p)) for p in cut(["host", "6.1", "6.12"], 2)]
    b = [set(ids(p)) for p in cut(["6.12", "host", "6.1"], 2)]
    assert a == b
    assert a == [set(ids(p)) for p in cut(["host", "6.1", "6.12"], 2)]


def test_positions_place_each_cell_in_the_whole_plan() -> None:
    specs = [spec("host"), spec("6.1")]
    whole = plan.plan([resolved(s) for s in specs], TRIALS)
    flat = [c.id for b in whole for c in b.cells]
    seen = []
    for i in (1, 2, 3):
        share, needed = shard.whole_plan(specs, TRIALS, None, shard.Shard(i, 3))
        got = shard.take(share, plan.plan([resolved(s) for s in needed], TRIALS))
        assert [flat[p] for p in share.positions] == ids(got)
        seen += share.positions
    assert sorted(seen) == list(range(len(flat)))


def test_the_digest_ignores_builds_but_not_the_sweep() -> None:
    specs = [spec("host"), spec("6.1")]

    def digest(kernels: list[ResolvedKernel], sweep: Sweep = SWEEP) -> str:
        return shard.digest(plan.to_doc(plan.plan(kernels, sweep), sweep.fixed))

    base = digest(shard.unresolved(specs))
    assert digest([resolved(s) for s in specs]) == base
    assert digest(shard.unresolved(specs), TRIALS) != base
    assert digest(shard.unresolved(specs[:1])) != base
    one, _ = shard.whole_plan(specs, SWEEP, None, shard.Shard(1, 2))
    two, _ = shard.whole_plan(specs, SWEEP, None, shard.Shard(2, 2))
    assert one.digest == two.digest
    assert one.to_doc()["plan"] == {
        "kernels": ["host", "6.1"],
        "scenarios": list(SWEEP.scenarios),
        "cells": 28,
    }
