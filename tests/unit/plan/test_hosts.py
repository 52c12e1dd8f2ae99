"""SSH hosts from kernels.toml and --hosts: every error names the source, key and form."""

from __future__ import annotations

from pathlib import Path

import pytest

from matrix.cli import main as cli
from matrix.errors import ConfigError
from matrix.plan import config, hosts

BASE = """
[[kernel]]
name = "host"
source = "host"
"""


def load(tmp_path: Path, text: str) -> config.Config:
    p = tmp_path / "kernels.toml"
    p.write_text(BASE + text)
    return config.load(p)


@pytest.mark.parametrize(
    "text, want",
    [
        ("h", (None, "h", 22)),
        ("root@h.example:2222", ("root", "h.example", 2222)),
        ("u@[::1]:22", ("u", "::1", 22)),
        ("10.0.0.1", (None, "10.0.0.1", 22)),
    ],
)
def test_addresses_parse(text: str, want: tuple) -> None:
    assert hosts.parse_address("f", "k", text) == want


@pytest.mark.parametrize("text", ["", "u@", "h:0", "h:70000", "u@h:p", "a b", 5])
def test_bad_addresses_name_the_key_and_the_form(text: object) -> None:
    with pytest.raises(ConfigError, match=r"f: k: .*expected an SSH address like user@host"):
        hosts.parse_address("f", "k", text)


def test_host_tables_and_ssh_settings(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        """
[settings]
known_hosts = "kh"
identity = "~/.ssh/id_kmatrix"
[[host]]
address = "root@big:2222"
capacity = 4
identity = "keys/big"
python = "/usr/bin/python3.11"
[[host]]
address = "small"
""",
    )
    big, small = cfg.hosts
    assert (big.name, big.capacity, big.identity) == ("root@big:2222", 4, tmp_path / "keys/big")
    assert big.python == "/usr/bin/python3.11"
    assert (small.name, small.capacity, small.identity, small.python) == (
        "small",
        1,
        None,
        "python3",
    )
    assert cfg.settings.known_hosts == tmp_path / "kh"
    assert cfg.settings.identity == Path("~/.ssh/id_kmatrix").expanduser()


@pytest.mark.parametrize(
    "table, key, problem",
    [
        ("capacity = 2", r"host\[0\]\.address", "missing"),
        ('address = "h"\ncapacity = 0', r"host\[0\]\.capacity", "expected an integer >= 1"),
        ('address = "h"\ncapacity = true', r"host\[0\]\.capacity", "expected an integer >= 1"),
        ('address = "h"\npassword = "x"', r"host\[0\]\.password", "unknown key; expected one of"),
        ('address = "h"\npython = ""', r"host\[0\]\.python", "expected a non-empty string"),
        ('address = "h:x"', r"host\[0\]\.address", "expected an SSH address"),
    ],
)
def test_bad_host_tables(tmp_path: Path, table: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=rf"kernels.toml: {key}: .*{problem}"):
        load(tmp_path, f"[[host]]\n{table}\n")


def test_a_host_declared_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="declared twice; raise its capacity"):
        load(tmp_path, '[[host]]\naddress = "h"\n[[host]]\naddress = "h:22"\n')


def test_hosts_option() -> None:
    got = hosts.from_option("root@h1, h2:2222,", 3, None)
    assert [(h.name, h.capacity) for h in got] == [("root@h1", 3), ("h2:2222", 3)]
    with pytest.raises(ConfigError, match="command line: --hosts: .*given twice"):
        hosts.from_option("h1,h1", 1, None)
    with pytest.raises(ConfigError, match="command line: --host-capacity: 0; expected >= 1"):
        hosts.from_option("h1", 0, None)
    with pytest.raises(ConfigError, match=r"command line: --hosts h1:99999: .*SSH address"):
        hosts.from_option("h1:99999", 1, None)


def test_jobs_zero_needs_hosts(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    args = cli.parser().parse_args(["run", "--jobs", "0"])
    with pytest.raises(
        ConfigError, match=r"--jobs: 0; expected an integer >= 1 \(0 needs --hosts\)"
    ):
        cli.effective(cfg, args)
    args = cli.parser().parse_args(["run", "--jobs", "0", "--hosts", "u@h"])
    assert [h.name for h in cli.effective(cfg, args).hosts] == ["u@h"]
