"""kernels.toml validation: every error names the file, the key and what is expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from matrix.errors import ConfigError
from matrix.model import DebianSource, HostSource, PathSource
from matrix.plan import config

GOOD = """
[settings]
jobs = 2
[sweep]
scenarios = ["2B"]
[sweep.sysctls]
"net.ipv4.tcp_tw_reuse" = [0, 1]
[profiles.quick]
window_s = 5
[[kernel]]
name = "host"
source = "host"
[[kernel]]
name = "6.1"
source = "debian"
suite = "bookworm"
package = "linux-image-6.1.0-*-amd64-unsigned"
[[kernel]]
name = "mine"
source = "path"
vmlinuz = "bzImage"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "kernels.toml"
    p.write_text(text)
    return p


def test_good_config_loads(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD))
    assert [k.name for k in cfg.kernels] == ["host", "6.1", "mine"]
    assert isinstance(cfg.kernels[0].source, HostSource)
    assert cfg.kernels[1].source == DebianSource("bookworm", "linux-image-6.1.0-*-amd64-unsigned")
    assert isinstance(cfg.kernels[2].source, PathSource)
    assert cfg.kernels[2].source.vmlinuz == tmp_path / "bzImage"
    assert cfg.sweep.scenarios == ("2B",)
    assert cfg.sweep.sysctls == (("net.ipv4.tcp_tw_reuse", ("0", "1")),)
    assert cfg.settings.jobs == 2
    assert config.apply_profile(cfg, "quick").sweep.limits.window_s == 5.0


def test_packaged_default_is_valid() -> None:
    cfg = config.load(Path(__file__).parents[3] / "kernels.toml")
    assert {"host", "5.10", "6.1", "6.12", "7.2", "7.3-rc"} <= {k.name for k in cfg.kernels}
    assert dict(cfg.sweep.sysctls)["net.ipv4.tcp_max_tw_buckets"] == ("2000", "50000", "65535")
    assert cfg.settings.boot == "pvh"


@pytest.mark.parametrize(
    ("mutation", "key", "expected"),
    [
        (('scenarios = ["2B"]', 'scenarios = ["9Z"]'), "sweep.scenarios", "unknown scenario '9Z'"),
        (
            ('"net.ipv4.tcp_tw_reuse"', '"net/ipv4/../../kernel/x"'),
            "sweep.sysctls.net/ipv4/../../kernel/x",
            "not a sysctl name",
        ),
        (('suite = "bookworm"\n', ""), "kernel[1] (6.1).suite", "missing"),
        (('source = "path"', 'source = "usb"'), "kernel[2] (mine).source", "expected one of"),
        (("jobs = 2", "jobs = -1"), "settings.jobs", "expected an integer >= 0"),
        (("jobs = 2", "jobz = 2"), "settings.jobz", "unknown key"),
        (("jobs = 2", 'boot = "uefi"'), "settings.boot", "expected one of pvh, bzimage"),
        (("window_s = 5", "window_s = 0"), "profiles.quick.window_s", "positive number"),
        (("[0, 1]", "[true]"), "sweep.sysctls.net.ipv4.tcp_tw_reuse", "expected an integer"),
        (
            ("window_s = 5", "window_s = 5\nknee_margin = -1"),
            "profiles.quick.knee_margin",
            "expected an integer >= 0",
        ),
    ],
)
def test_errors_name_file_key_and_expectation(
    tmp_path: Path, mutation: tuple[str, str], key: str, expected: str
) -> None:
    path = write(tmp_path, GOOD.replace(*mutation))
    with pytest.raises(ConfigError) as e:
        config.load(path)
    msg = str(e.value)
    assert msg.startswith(str(path)), msg
    assert key in msg and expected in msg, msg


def test_syntax_error_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[[kernel]\nname="))


def test_duplicate_kernel_names(tmp_path: Path) -> None:
    text = GOOD + '\n[[kernel]]\nname = "host"\nsource = "host"\n'
    with pytest.raises(ConfigError, match="duplicate names"):
        config.load(write(tmp_path, text))


def test_kernel_name_must_be_a_safe_file_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="letters, digits"):
        config.load(write(tmp_path, GOOD.replace('name = "mine"', 'name = "../x"')))


def test_unknown_profile(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match="no such profile; known: quick"):
        config.apply_profile(cfg, "nightly")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml")
