"""Bad input gets one line naming what is wrong and a non-zero exit code, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matrix.cli import main as cli
from matrix.runners.host import HostRunner

CONFIG = '[[kernel]]\nname = "host"\nsource = "host"\n'


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err
    return code, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("kmatrix: error: ")
    return lines[0]


def test_malformed_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "kernels.toml"
    cfg.write_text("[[kernel]\n")
    code, err = run(["--config", str(cfg), "run"], capsys)
    assert code == 2
    assert str(cfg) in one_line_error(err) and "not valid TOML" in err


def test_unknown_scenario_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "kernels.toml"
    cfg.write_text(CONFIG)
    code, err = run(["--config", str(cfg), "run", "--scenarios", "2B,3C"], capsys)
    assert code == 2
    assert "unknown scenario '3C'" in one_line_error(err)


def test_a_global_sysctl_is_refused_for_the_host_kernel_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "kernels.toml"
    cfg.write_text(CONFIG + '[settings]\nruns_dir = "' + str(tmp_path / "runs") + '"\n')
    code, err = run(["--config", str(cfg), "run", "--sysctl", "kernel.pid_max=40000"], capsys)
    assert code == 2
    line = one_line_error(err)
    assert "kernel.pid_max" in line and "net.* sysctls" in line
    assert not (tmp_path / "runs").exists()


def test_a_malformed_sysctl_name_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "kernels.toml"
    cfg.write_text(CONFIG)
    code, err = run(["--config", str(cfg), "run", "--sysctl", "net/../../x=5"], capsys)
    assert code == 2
    assert "not a sysctl name" in one_line_error(err)


def test_malformed_sysctl_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "kernels.toml"
    cfg.write_text(CONFIG)
    code, err = run(["--config", str(cfg), "run", "--sysctl", "net.ipv4.tcp_tw_reuse"], capsys)
    assert code == 2
    assert "expected KEY=VALUE" in one_line_error(err)


def test_unknown_kernel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "kernels.toml"
    cfg.write_text(CONFIG)
    code, err = run(["--config", str(cfg), "run", "--kernels", "4.19"], capsys)
    assert code == 2
    assert "kernel '4.19'" in one_line_error(err) and "known: host" in err


def test_non_root_is_a_prerequisite_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(Exception, match="needs root") as e:
        HostRunner().check()
    assert e.value.exit_code == 3  # type: ignore[attr-defined]


def test_unwritable_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "kernels.toml"
    cfg.write_text(CONFIG)
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run(["--config", str(cfg), "run", "--out", str(blocker / "run")], capsys)
    assert code == 2
    assert "cannot write results there" in one_line_error(err)


def test_results_of_a_directory_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(["results", str(tmp_path)], capsys)
    assert code == 2
    assert "manifest.json: not found" in one_line_error(err)


def test_scenarios_lists_where_each_comes_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "mine" / "probe"
    d.mkdir(parents=True)
    (d / "scenario.toml").write_text(
        'title = "my probe"\ncommand = ["true"]\ntimeout_s = 5\n[params]\nsize = [1, 2]\n'
    )
    cfg = tmp_path / "kernels.toml"
    cfg.write_text(CONFIG)
    assert (
        cli.main(["--config", str(cfg), "scenarios", "--json", "--scenario-dir", str(d.parent)])
        == 0
    )
    docs = {doc["name"]: doc for doc in map(json.loads, capsys.readouterr().out.splitlines())}
    assert docs["probe"]["origin"] == str(d.parent) and docs["2B"]["origin"] == "built-in"
    assert docs["probe"]["manifest"]["params"] == {"size": ["1", "2"]}


def test_a_malformed_manifest_is_one_line_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "mine" / "probe"
    d.mkdir(parents=True)
    (d / "scenario.toml").write_text('title = "p"\ncommand = "true"\ntimeout_s = 5\n')
    cfg = tmp_path / "kernels.toml"
    cfg.write_text(CONFIG + f'[settings]\nscenario_dirs = ["{d.parent}"]\n')
    code, err = run(["--config", str(cfg), "scenarios"], capsys)
    assert code == 2
    line = one_line_error(err)
    assert str(d / "scenario.toml") in line and ": command: " in line and "list of strings" in line
