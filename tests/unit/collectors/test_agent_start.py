"""What the agent does before and around each cell, kept cheap for a guest under TCG:
its command line parsed by hand, scratch directories and captured output without
tempfile, and a scratch tree removed without following a link the program left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.agent_cells import COLLECTORS, load_collector

agent = load_collector(COLLECTORS / "agent.py")
agent_exec = load_collector(COLLECTORS / "agent_exec.py")


def test_the_command_line_takes_both_spellings_and_the_flag() -> None:
    args = agent.parse_args(["--cells", "c.json", "--out=o", "--net-only"])
    assert (args.cells, args.out, args.net_only) == ("c.json", "o", True)
    args = agent.parse_args(["--out", "o", "--cells=c.json"])
    assert (args.cells, args.out, args.net_only) == ("c.json", "o", False)


@pytest.mark.parametrize(
    "argv",
    [
        ["--cells", "c.json"],
        ["--out", "o"],
        ["--cells", "c.json", "--out", "o", "--bogus"],
        ["--cells", "c.json", "--out"],
        ["--cells", "c.json", "--out", "o", "stray"],
        ["--net-only=yes", "--cells", "c", "--out", "o"],
    ],
)
def test_a_bad_command_line_stops_with_the_usage(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        agent.parse_args(argv)
    assert "usage: agent.py" in str(e.value)


def test_result_dirs_are_private_and_distinct(tmp_path: Path) -> None:
    a = agent_exec.make_result_dir("cell", tmp_path)
    b = agent_exec.make_result_dir("cell", tmp_path)
    assert a != b and Path(a).parent == tmp_path
    assert os.stat(a).st_mode & 0o777 == 0o700


def test_captured_output_is_a_file_with_no_name_left(tmp_path: Path) -> None:
    with agent_exec.capture_file(str(tmp_path)) as f:
        f.write(b"out")
        f.seek(0)
        assert f.read() == b"out"
        assert list(tmp_path.iterdir()) == []


def test_removing_a_result_dir_never_follows_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    scratch = Path(agent_exec.make_result_dir("cell", tmp_path))
    (scratch / "sub").mkdir()
    (scratch / "sub" / "f").write_text("y")
    (scratch / "to-dir").symlink_to(outside)
    (scratch / "sub" / "to-file").symlink_to(outside / "keep")
    agent_exec.remove_result_dir(str(scratch))
    assert not scratch.exists()
    assert (outside / "keep").read_text() == "x"
    link = tmp_path / "link"
    link.symlink_to(outside)
    agent_exec.remove_result_dir(str(link))
    assert not link.is_symlink() and (outside / "keep").exists()


def test_a_cells_time_is_split_at_the_programs_exec_and_exit() -> None:
    assert agent_exec.timing(10.0, 10.25, 12.0, 12.125) == {
        "setup_s": 0.25,
        "program_s": 1.75,
        "collect_s": 0.125,
    }


@pytest.mark.parametrize("exec_at", [None, "10.5", 9.0, 13.0, True])
def test_without_a_believable_exec_time_the_program_takes_the_setup(exec_at: object) -> None:
    got = agent_exec.timing(10.0, exec_at, 12.0, 12.5)
    assert got == {"setup_s": 0.0, "program_s": 2.0, "collect_s": 0.5}


def test_the_built_in_programs_take_their_one_flag_without_argparse(
    capsys: pytest.CaptureFixture[str],
) -> None:
    probe = load_collector(COLLECTORS / "kmatrix_probe.py")
    assert probe.choice(["--until", "pollout"], "--until", ("eagain", "pollout"), "u") == "pollout"
    assert probe.choice(["--until=eagain"], "--until", ("eagain", "pollout"), "u") == "eagain"
    for bad in (["--until", "never"], [], ["--until"], ["--until", "eagain", "x"], ["-x"]):
        with pytest.raises(SystemExit) as e:
            probe.choice(bad, "--until", ("eagain", "pollout"), "usage: p")
        assert e.value.code == 2
        assert "expected --until eagain|pollout" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        probe.choice(["--help"], "--until", ("eagain",), "usage: p")
    assert e.value.code == 0 and "usage: p" in capsys.readouterr().out


def imported_by(*modules: str) -> set[str]:
    """The modules a fresh `python -S` loads to import `modules` from collectors/."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"sys.path[:0] = [{str(COLLECTORS)!r}, {str(COLLECTORS / 'scenarios')!r}]\n"
        f"import {', '.join(modules)}\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    run = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return set(run.stdout.split())


HEAVY = {"argparse", "typing", "dataclasses", "pathlib", "platform", "shutil", "tempfile"}
"""Each costs a TCG guest 0.1-0.8 s per process (README, Performance)."""


def test_guest_side_modules_keep_out_of_the_heavy_imports() -> None:
    out = imported_by("agent", "puzzle1", "puzzle2")
    assert {"agent_exec", "kmatrix_probe", "socket"} <= out
    assert HEAVY.isdisjoint(out), HEAVY & out


def test_the_agent_brings_lo_up_without_the_socket_module() -> None:
    out = imported_by("agent")
    assert "agent_netns" in out
    assert not {"socket", "selectors"} & out
