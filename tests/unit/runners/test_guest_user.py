"""`guest_user`: the setting, the option, and the checks made as that user."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from matrix.cli import main as cli
from matrix.errors import ConfigError, PrerequisiteError
from matrix.plan import config
from matrix.runners.guest_python import SYSTEM_PYTHON
from matrix.runners.guest_user import GuestUser

KERNELS = '[[kernel]]\nname = "host"\nsource = "host"\n'
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="checks run as another user")


def load(tmp_path: Path, settings: str) -> config.Config:
    path = tmp_path / "kernels.toml"
    path.write_text(f"[settings]\n{settings}\n{KERNELS}")
    return config.load(path)


def test_setting_names_an_existing_user(tmp_path: Path) -> None:
    assert load(tmp_path, 'guest_user = "nobody"').settings.guest_user == "nobody"
    assert load(tmp_path, "").settings.guest_user is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"no-such-user-kmatrix"', "no such user; expected an existing user"),
        ('"root"', "is root; expected an unprivileged user"),
        ("65534", "expected a non-empty string"),
        ('""', "expected a non-empty string"),
    ],
)
def test_setting_errors_name_file_key_and_expectation(
    tmp_path: Path, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, f"guest_user = {value}")
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "kernels.toml")), msg
    assert "settings.guest_user" in msg and expected in msg, msg


def test_option_overrides_the_setting(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    args = cli.parser().parse_args(["run", "--guest-user", "nobody"])
    assert cli.effective(cfg, args).settings.guest_user == "nobody"
    bad = cli.parser().parse_args(["run", "--guest-user", "no-such-user-kmatrix"])
    with pytest.raises(ConfigError, match="command line: --guest-user: 'no-such-user-kmatrix'"):
        cli.effective(cfg, bad)


@pytest.mark.parametrize(
    ("name", "expected"), [("root", "is root"), ("a b", "plain"), ("nope-kmatrix", "no such")]
)
def test_runner_refuses_a_user_it_cannot_drop_to(name: str, expected: str) -> None:
    with pytest.raises(PrerequisiteError, match=expected):
        GuestUser.lookup(name)


def test_qemu_drops_to_the_user() -> None:
    assert GuestUser.lookup("nobody").qemu_flags() == ["--qemu-opts=-runas nobody"]


@needs_root
def test_paths_are_checked_as_the_user(tmp_path: Path) -> None:
    """A 0700 parent hides everything below it; the check runs with the user's rights."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "python3").write_text("")
    user = GuestUser.lookup("nobody")
    got = user.unreachable([("x", private), ("rx", private / "python3"), ("r", Path("/etc"))])
    assert got == [str(private), str(private / "python3")]
    assert user.python(str(private / "python3")) == SYSTEM_PYTHON


@needs_root
def test_results_dir_is_handed_over_without_following_links(tmp_path: Path) -> None:
    out = tmp_path / "wd" / "out"
    (out / "sub").mkdir(parents=True)
    (out / "a.json").write_text("{}")
    outside = tmp_path / "outside"
    outside.write_text("root's")
    (out / "link").symlink_to(outside)
    GuestUser.lookup("nobody").give(out)
    uid = pwd.getpwnam("nobody").pw_uid
    for p in (out, out / "sub", out / "a.json", out / "link"):
        assert p.lstat().st_uid == uid, p
    assert outside.stat().st_uid == 0 and out.parent.stat().st_uid == 0


@needs_root
def test_batch_check_names_each_path_and_why(tmp_path: Path) -> None:
    private = tmp_path / "private"
    (private / "agent").mkdir(parents=True)
    private.chmod(0o700)
    with pytest.raises(PrerequisiteError) as e:
        GuestUser.lookup("nobody").check_batch(
            private / "wd", private / "agent" / "agent.py", private / "modules"
        )
    msg = str(e.value)
    assert msg.startswith("guest_user nobody cannot reach: ")
    for what in ("batch directory", "the guest agent", "kernel's modules; set cache_dir"):
        assert what in msg, msg
