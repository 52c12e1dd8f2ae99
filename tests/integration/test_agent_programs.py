"""The agent runs any program by exec and reads what it reported, on this machine's
kernel, each cell in a real network namespace.

Small fixture scenarios (tests/fixtures/scenarios/) report in each convention a
manifest may declare (LAVA lines, KTAP lines, kselftest exit statuses, result.json) or
misbehave (sleep past the deadline, die by a signal, write nothing, put a link where
result.json goes); each outcome and each status is asserted, and every document the
agent writes passes the host's vetting unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from matrix.collect import guest_result
from tests.fixtures.agent_cells import (
    AGENT,
    COLLECTORS,
    FIXTURES,
    cell,
    load_collector,
    run_agent,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="needs root: the agent unshares network namespaces and writes sysctls",
    ),
]

agent = load_collector(AGENT)


def fixture(name: str) -> Path:
    return FIXTURES / name


def vetted(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` after the host's check, which must take the agent's document as it is."""
    assert guest_result.problem(doc) == "", doc
    return doc


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One agent run over every quick fixture: results by cell id."""
    canary = tmp_path_factory.mktemp("canary")
    (canary / "keep").write_text("must survive the cell")
    cells = [
        cell("lava-pass", fixture("lava"), params={"second": "pass"}),
        cell("lava-fail", fixture("lava"), params={"second": "fail"}),
        cell("ktap", fixture("ktap")),
        *(cell(f"exit-{c}", fixture("exit-code"), params={"code": c}) for c in "0142"),
        cell("signal", fixture("signal")),
        cell("silent", fixture("silent")),
        cell("shadow-file", fixture("shadow"), params={"how": "file", "target": "/"}),
        cell("shadow-dir", fixture("shadow"), params={"how": "dir", "target": str(canary)}),
        cell("noexec", fixture("noexec")),
        cell("env", fixture("env-probe"), window_s=7.5),
        cell("env-bare", fixture("env-probe"), params={}, window_s=7.5),
    ]
    cells[-1]["env_limits"] = []
    env = dict(os.environ, KMATRIX_LEAK_CANARY="agent-only", LANG="de_DE.UTF-8")
    out = tmp_path_factory.mktemp("programs") / "out"
    results = run_agent(out, cells, env=env)
    results.update(canary=canary, out=out)
    return results


def test_lava_lines_are_test_cases_and_a_measurement_a_metric(batch: dict) -> None:
    doc = vetted(batch["lava-pass"])
    assert doc["status"] == "ok"
    assert [(c["name"], c["result"], c["source"]) for c in doc["testcases"]] == [
        ("connect", "pass", "lava"),
        ("throughput", "pass", "lava"),
        ("optional", "skip", "lava"),
    ]
    assert doc["testcases"][1]["measurement"] == 42.5
    assert doc["testcases"][1]["units"] == "MB/s"
    assert doc["metrics"] == {"throughput": 42.5}
    assert doc["program"]["outcome"] == "pass"
    assert doc["program"]["reported"] == ["lava", "exit"]
    assert doc["program"]["exit_code"] == 0 and doc["program"]["signal"] is None
    assert doc["program"]["argv"] == ["sh", str(fixture("lava") / "lava.sh")]
    assert "some output of the test itself" in doc["program"]["stdout_tail"]
    assert doc["params"] == {"second": "pass"}
    assert doc["status_detail"] == ("exit status 0; 3 test cases: 2 passed, 0 failed, 1 skipped")


def test_a_failed_lava_case_makes_the_outcome_fail(batch: dict) -> None:
    doc = vetted(batch["lava-fail"])
    assert doc["status"] == "ok"
    assert doc["program"]["outcome"] == "fail"
    assert [c["result"] for c in doc["testcases"]] == ["pass", "fail", "skip"]


def test_ktap_top_level_lines_are_read_and_nested_ones_left(batch: dict) -> None:
    doc = vetted(batch["ktap"])
    assert doc["status"] == "ok"
    assert [(c["name"], c["result"]) for c in doc["testcases"]] == [
        ("first", "pass"),
        ("second", "fail"),
        ("third", "skip"),
        ("fourth", "pass"),
    ]
    assert doc["program"]["outcome"] == "fail"
    assert doc["program"]["reported"] == ["ktap", "exit"]


@pytest.mark.parametrize(
    ("code", "outcome"), [("0", "pass"), ("1", "fail"), ("4", "skip"), ("2", "error")]
)
def test_exit_statuses_by_kselftest_convention(batch: dict, code: str, outcome: str) -> None:
    doc = vetted(batch[f"exit-{code}"])
    assert doc["status"] == "ok"
    assert doc["program"]["exit_code"] == int(code)
    assert doc["program"]["outcome"] == outcome
    assert doc["program"]["reported"] == ["exit"]
    assert doc["testcases"] == [] and doc["metrics"] == {}
    assert f"exiting with {code}" in doc["log_tail"]
    assert "lo up" in doc["log_tail"]


def test_a_program_killed_by_a_signal_is_crashed(batch: dict) -> None:
    doc = vetted(batch["signal"])
    assert doc["status"] == "crashed"
    assert doc["status_detail"] == "the program was killed by signal 11 (SIGSEGV)"
    assert doc["program"]["signal"] == "SIGSEGV"
    assert doc["program"]["exit_code"] is None and doc["program"]["outcome"] is None
    assert [c["name"] for c in doc["testcases"]] == ["before the crash"]
    assert "about to die" in doc["log_tail"]


def test_a_declared_result_json_that_never_came_is_no_result(batch: dict) -> None:
    doc = vetted(batch["silent"])
    assert doc["status"] == "no_result"
    assert doc["status_detail"] == (
        "result = 'json', but no result.json was written (exit status 0)"
    )
    assert doc["program"]["exit_code"] == 0 and doc["program"]["outcome"] == "pass"
    assert doc["program"]["reported"] == ["exit"]
    assert "measured nothing" in doc["program"]["stdout_tail"]


def test_a_result_json_link_is_not_followed(batch: dict) -> None:
    doc = vetted(batch["shadow-file"])
    assert doc["status"] == "no_result"
    assert "result.json is a symbolic link, not a regular file" in doc["status_detail"]
    shadow = Path("/etc/shadow").read_text()
    root_line = next(line for line in shadow.splitlines() if line.startswith("root:"))
    assert root_line not in json.dumps(doc)


def test_a_result_dir_replaced_by_a_link_is_neither_read_nor_emptied(batch: dict) -> None:
    doc = vetted(batch["shadow-dir"])
    assert doc["status"] == "no_result"
    assert "the result directory was replaced by a link or a file" in doc["status_detail"]
    assert (batch["canary"] / "keep").read_text() == "must survive the cell"


def test_a_program_that_cannot_be_executed_is_crashed_with_the_errno(batch: dict) -> None:
    doc = vetted(batch["noexec"])
    assert doc["status"] == "crashed"
    target = fixture("noexec") / "not-executable.sh"
    assert doc["program"]["argv"] == [str(target)]
    assert doc["status_detail"] == (f"cannot run {target}: Permission denied (errno 13 EACCES)")


def test_a_program_sees_its_cell_and_nothing_of_the_agent(batch: dict) -> None:
    doc = vetted(batch["env"])
    assert doc["status"] == "ok" and doc["status_detail"] == "probed"
    seen = doc["evidence"]
    here = fixture("env-probe")
    assert seen["argv"] == [str(here / "env_probe.py"), "--data", str(here / "data.txt")]
    assert seen["cwd"] == str(here)
    assert seen["result_dir_entries"] == []
    assert seen["probe"] == str(COLLECTORS / "kmatrix_probe.py")
    assert seen["stdin"] == ""
    env = seen["env"]
    result_dir = env.pop("KMATRIX_RESULT_DIR")
    assert Path(result_dir).name.startswith(".scratch-env-")
    assert Path(result_dir).parent == batch["out"].parent, "beside out/, never in it"
    assert not Path(result_dir).exists(), "the cell's result directory outlives it"
    assert env["PATH"].endswith(os.environ["PATH"])  # a pyenv shim may put its own first
    assert "KMATRIX_LEAK_CANARY" not in env
    assert {k: env.get(k) for k in ("HOME", "LANG", "PYTHONPATH", "verdict")} == {
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(COLLECTORS),
        "verdict": "slowdown",
    }
    assert {k: v for k, v in env.items() if k.startswith("KMATRIX_")} == {
        "KMATRIX_CELL_ID": "env",
        "KMATRIX_SCENARIO": "env-probe",
        "KMATRIX_TRIAL": "0",
        "KMATRIX_ATTEMPT": "1",
        "KMATRIX_SCENARIO_DIR": str(here),
        "KMATRIX_WINDOW_S": "7.5",
    }
    assert doc["metrics"]["window_s"] == 7.5
    assert doc["verdict"] == "slowdown"
    assert doc["program"]["outcome"] == "pass"
    assert doc["program"]["reported"] == ["json", "exit"]


def test_a_limit_reaches_the_program_only_when_listed(batch: dict) -> None:
    doc = vetted(batch["env-bare"])
    env = doc["evidence"]["env"]
    assert "KMATRIX_WINDOW_S" not in env and "KMATRIX_CELL_ID" in env
    assert "verdict" not in env
    assert doc["metrics"]["window_s"] is None
    assert doc["verdict"] is None
    assert doc["limits"]["window_s"] == 7.5


def test_a_program_past_its_deadline_is_killed_with_its_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """timeout_s 2 (its manifest's: it honours no limit) plus a slack cut to 0.5 s."""
    monkeypatch.setattr(agent.agent_exec, "DEADLINE_SLACK_S", 0.5)
    c = cell("sleeper", fixture("sleeper"))
    assert c["timeout_s"] == 2.0 and c["env_limits"] == []
    began = time.monotonic()
    status = agent.execute(c, agent.netns_inode(), tmp_path)
    took = time.monotonic() - began
    doc = vetted(json.loads((tmp_path / "sleeper.json").read_text()))
    assert status == doc["status"] == "timeout"
    assert 2.5 <= took < 10
    assert doc["status_detail"] == "no result within 2 s; process group killed"
    assert doc["program"]["signal"] == "SIGKILL" and doc["program"]["outcome"] is None
    assert "started" in doc["program"]["stdout_tail"]
    marker = b"kmatrix-fixture-sleeper-sleeper"
    left = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes():
                left.append(proc.name)
        except OSError:
            continue
    assert not left, f"the program's grandchild survived: {left}"


def test_net_only_refuses_a_global_sysctl_before_anything_runs(tmp_path: Path) -> None:
    """A kept machine never gets a global sysctl written; net.* cells still run."""
    before = Path("/proc/sys/kernel/core_pattern").read_text()
    results = run_agent(
        tmp_path / "out",
        [
            cell(
                "global",
                fixture("exit-code"),
                {"kernel.core_pattern": "/tmp/x", "net.ipv4.tcp_tw_reuse": "1"},
            ),
            cell("net", fixture("exit-code"), {"net.ipv4.tcp_tw_reuse": "1"}),
        ],
        flags=("--net-only",),
    )
    refused = vetted(results["global"])
    assert refused["status"] == "setup_failed"
    assert refused["status_detail"] == (
        "refused (--net-only): kernel.core_pattern is not a net.* sysctl"
    )
    [problem] = refused["sysctls"]["problems"]
    assert problem["key"] == "kernel.core_pattern" and problem["problem"] == "refused"
    assert refused["netns"]["inode"] is None and refused["program"]["exit_code"] is None
    assert vetted(results["net"])["status"] == "ok"
    assert results["net"]["sysctls"]["read_back"] == {"net.ipv4.tcp_tw_reuse": "1"}
    assert Path("/proc/sys/kernel/core_pattern").read_text() == before


def test_relative_paths_as_the_remote_runner_gives_them(tmp_path: Path) -> None:
    """`--cells cells.json --out out` from the batch directory: the program, in its own
    directory, still gets an absolute KMATRIX_RESULT_DIR and its result.json is read."""
    (tmp_path / "cells.json").write_text(json.dumps({"cells": [cell("rel", fixture("env-probe"))]}))
    proc = subprocess.run(
        [sys.executable, str(AGENT), "--cells", "cells.json", "--out", "out", "--net-only"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    doc = vetted(json.loads((tmp_path / "out" / "rel.json").read_text()))
    assert doc["status"] == "ok", doc["status_detail"]
    result_dir = Path(doc["evidence"]["env"]["KMATRIX_RESULT_DIR"])
    assert result_dir.is_absolute() and result_dir.parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.json", "out"]
