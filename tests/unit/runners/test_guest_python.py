"""The guest's interpreter: the system's when it can run the agent, ours otherwise; and
its bytecode written on the host before the boot."""

from __future__ import annotations

import sys
from pathlib import Path

from matrix.runners import guest_python as gp


def test_the_system_python_comes_first_when_new_enough(monkeypatch) -> None:
    monkeypatch.setattr(gp, "version", lambda python: (3, 11))
    monkeypatch.setattr(gp.os, "access", lambda path, mode: True)
    assert gp.guest_python() == gp.SYSTEM_PYTHON


def test_an_old_or_missing_system_python_gives_ours(monkeypatch) -> None:
    monkeypatch.setattr(gp, "version", lambda python: (3, 7))
    monkeypatch.setattr(gp.os, "access", lambda path, mode: True)
    assert gp.guest_python() == sys.executable
    monkeypatch.setattr(gp.os, "access", lambda path, mode: False)
    assert gp.guest_python() == sys.executable


def test_version_reads_a_real_interpreter_and_none_for_junk(tmp_path: Path) -> None:
    assert gp.version(sys.executable) == tuple(sys.version_info[:2])
    assert gp.version(str(tmp_path / "nothing")) is None


def test_precompile_writes_bytecode_beside_the_sources_only(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text("X = 1\n")
    (tmp_path / "deeper").mkdir()
    (tmp_path / "deeper" / "other.py").write_text("Y = 2\n")
    gp.precompile(sys.executable, [tmp_path])
    tag = sys.implementation.cache_tag
    assert (tmp_path / "__pycache__" / f"mod.{tag}.pyc").is_file()
    assert not (tmp_path / "deeper" / "__pycache__").exists()
