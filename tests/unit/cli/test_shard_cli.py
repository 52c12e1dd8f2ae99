"""`kmatrix run --shard` on the command line: bad values, `--resume`, and a shard the
plan leaves empty (nothing runs, so no root and no VM are needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matrix.cli import main as cli

CONFIG = '[[kernel]]\nname = "host"\nsource = "host"\n'


def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "kernels.toml"
    cfg.write_text(CONFIG)
    return cfg


@pytest.mark.parametrize("value", ["3/2", "x"])
def test_a_bad_shard_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    out = tmp_path / "run"
    argv = ["--config", str(config(tmp_path)), "run", "--shard", value, "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kmatrix: error: command line: --shard: ") and "\n" not in err
    assert not out.exists()


def test_shard_and_resume_do_not_go_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--config", str(config(tmp_path)), "run", "--resume", str(tmp_path), "--shard", "1/2"]
    assert cli.main(argv) == 2
    assert "not with --resume" in capsys.readouterr().err


def test_a_shard_beyond_the_plans_cells_writes_an_empty_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["--config", str(config(tmp_path)), "run", "--scenarios", "1A", "--trials", "2"]
    assert cli.main([*argv, "--shard", "2/2", "--out", str(out), "--no-report"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "shard 2/2: 0 of 2 cells" in err and "nothing to run here" in err
    man = json.loads((out / "manifest.json").read_text())
    assert man["shard"]["index"] == 2 and man["shard"]["positions"] == []
    assert man["shard"]["plan"] == {"kernels": ["host"], "scenarios": ["1A"], "cells": 2}
    assert json.loads((out / "plan.json").read_text())["cells"] == []
    assert (out / "results.jsonl").read_text() == ""
