"""Sweep expansion and stable cell ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matrix.errors import ConfigError
from matrix.model import DebianSource, HostSource, KernelSpec, Limits, ResolvedKernel, Sweep
from matrix.plan import cells as plan
from matrix.plan.config import default_sweep
from matrix.scenarios.catalogue import Catalogue, load_catalogue


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


def user_catalogue(tmp: Path) -> Catalogue:
    d = tmp / "mine" / "tput"
    d.mkdir(parents=True)
    (d / "scenario.toml").write_text(
        'title = "t"\ncommand = ["sh", "run.sh"]\ntimeout_s = 30\n'
        "[params]\nstreams = [1, 4]\nduration = 5\n"
        '[sysctls]\n"net.ipv4.tcp_congestion_control" = ["cubic", "reno"]\n'
    )
    return load_catalogue([tmp / "mine"])


def test_parameters_and_the_scenarios_own_sweep_multiply(tmp_path: Path) -> None:
    cat = user_catalogue(tmp_path)
    cells = plan.cells_for(kernel(), Sweep(("tput",), None), cat)
    assert len(cells) == 4
    assert {
        (dict(c.sysctls)["net.ipv4.tcp_congestion_control"], dict(c.params)["streams"])
        for c in cells
    } == {("cubic", "1"), ("cubic", "4"), ("reno", "1"), ("reno", "4")}
    assert len({c.id for c in cells}) == 4
    doc = cells[0].to_agent()
    assert doc["command"] == ["sh", "run.sh"] and doc["params"]["duration"] == "5"
    assert doc["scenario_dir"] == str(tmp_path / "mine" / "tput") and doc["env_limits"] == []
    assert doc["timeout_s"] == 30.0


def test_the_runs_values_replace_a_parameter_and_its_sysctls_where_they_apply(
    tmp_path: Path,
) -> None:
    cat = user_catalogue(tmp_path)
    sweep = Sweep(
        ("tput", "1A"),
        (("net.ipv4.tcp_congestion_control", ("bbr",)),),
        params=(("streams", ("8",)),),
    )
    cells = plan.cells_for(kernel(), sweep, cat)
    tput = [c for c in cells if c.scenario == "tput"]
    assert [(dict(c.sysctls), dict(c.params)["streams"]) for c in tput] == [
        ({"net.ipv4.tcp_congestion_control": "bbr"}, "8")
    ]
    assert [c.sysctls for c in cells if c.scenario == "1A"] == [()]


def test_a_puzzle_cells_deadline_covers_its_window() -> None:
    (cell,) = [c for c in plan.cells_for(kernel(), default_sweep()) if c.scenario == "1A"]
    assert cell.program and cell.program.command[-2:] == ("--until", "eagain")
    assert cell.deadline_s == cell.limits.window_s + cell.limits.stall_s
    longer = Sweep(("1A",), None, limits=Limits(window_s=150.0, stall_s=10.0))
    (cell,) = plan.cells_for(kernel(), longer)
    assert cell.deadline_s == 160.0


def test_the_host_kernel_may_only_set_namespaced_sysctls() -> None:
    sweep = Sweep(("2B",), (("kernel.pid_max", ("40000",)),), swept_scenarios=("2B",))
    with pytest.raises(ConfigError, match="kernel.pid_max.*runs on this machine"):
        plan.plan([kernel()], sweep)
    vm = ResolvedKernel(KernelSpec("6.1", DebianSource("bookworm", "linux-image")), "6.1.0")
    (batch,) = plan.plan([vm], sweep)
    assert all(dict(c.sysctls)["kernel.pid_max"] == "40000" for c in batch.cells)


def test_a_plan_keeps_its_scenarios_manifests(tmp_path: Path) -> None:
    cat = user_catalogue(tmp_path)
    batches = plan.plan([kernel()], Sweep(("tput", "2B"), None), cat)
    doc = json.loads(json.dumps(plan.to_doc(batches, (), cat, "host")))
    again = plan.scenarios_from(doc)
    assert again.get("tput") == cat.get("tput") and again.get("2B") == cat.get("2B")
    assert doc["baseline"] == "host"
    cells = [c for b in plan.from_doc(doc) for c in b.cells]
    assert [c.to_agent() for c in cells] == [c.to_agent() for b in batches for c in b.cells]
