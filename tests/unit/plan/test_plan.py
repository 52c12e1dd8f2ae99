"""Sweep expansion and stable cell ids."""

from __future__ import annotations

from matrix.model import HostSource, KernelSpec, Limits, ResolvedKernel, Sweep
from matrix.plan import cells as plan
from matrix.plan.config import default_sweep


def kernel(name: str = "host", release: str = "6.18") -> ResolvedKernel:
    return ResolvedKernel(KernelSpec(name, HostSource()), release)


def test_default_sweep_is_the_seeds() -> None:
    cells = plan.cells_for(kernel(), default_sweep())
    by = {s: [c for c in cells if c.scenario == s] for s in ("1A", "1B", "2A", "2B")}
    assert len(by["1A"]) == len(by["1B"]) == 1 and by["1A"][0].sysctls == ()
    assert len(by["2A"]) == len(by["2B"]) == 6
    combos = {
        dict(c.sysctls)["net.ipv4.tcp_max_tw_buckets"]
        + "/"
        + dict(c.sysctls)["net.ipv4.tcp_tw_reuse"]
        for c in by["2B"]
    }
    assert combos == {f"{b}/{r}" for b in ("2000", "50000", "65535") for r in ("0", "1")}


def test_fixed_sysctls_join_every_swept_cell_and_trials_multiply() -> None:
    sweep = Sweep(
        ("2B",),
        (("net.ipv4.tcp_tw_reuse", ("0", "1")),),
        fixed=(("net.ipv4.ip_local_port_range", "40000 40999"),),
        trials=3,
    )
    cells = plan.cells_for(kernel(), sweep)
    assert len(cells) == 6
    assert all(dict(c.sysctls)["net.ipv4.ip_local_port_range"] == "40000 40999" for c in cells)
    assert sorted({c.trial for c in cells}) == [0, 1, 2]


def test_cell_ids_are_stable_and_distinct() -> None:
    a = plan.cells_for(kernel(), default_sweep())
    b = plan.cells_for(kernel(), default_sweep())
    assert [c.id for c in a] == [c.id for c in b]
    assert len({c.id for c in a}) == len(a)
    other = plan.cells_for(kernel(release="6.19"), default_sweep())
    assert not {c.id for c in a} & {c.id for c in other}
    longer = Sweep(default_sweep().scenarios, default_sweep().sysctls, limits=Limits(window_s=99))
    assert not {c.id for c in a} & {c.id for c in plan.cells_for(kernel(), longer)}


def test_plan_doc_round_trips() -> None:
    sweep = default_sweep()
    batches = plan.plan([kernel(), kernel("other", "5.10")], sweep)
    again = plan.from_doc(plan.to_doc(batches, sweep.fixed))
    assert [b.kernel for b in again] == [b.kernel for b in batches]
    assert [[c.id for c in b.cells] for b in again] == [[c.id for c in b.cells] for b in batches]


def test_sysctl_label_leaves_out_fixed() -> None:
    s = (
        ("net.ipv4.tcp_max_tw_buckets", "65535"),
        ("net.ipv4.tcp_tw_reuse", "0"),
        ("net.ipv4.ip_local_port_range", "32768 60999"),
    )
    assert plan.sysctl_label(s, {"net.ipv4.ip_local_port_range"}) == "buckets=65535 reuse=0"
    assert plan.sysctl_label(s, set()).endswith("ports=32768-60999")
