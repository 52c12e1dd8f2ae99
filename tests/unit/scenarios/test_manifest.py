"""scenario.toml: the schema in one pass, each error naming the file, the key and what
is expected; the built-in puzzles are manifests like any user's."""

from __future__ import annotations

from pathlib import Path

import pytest

from matrix.errors import ConfigError
from matrix.scenarios import manifest
from matrix.scenarios.catalogue import builtin, load_catalogue
from matrix.scenarios.manifest import BaselineRule, MetricRule, SeriesRateRule

GOOD = """\
title = "loopback throughput"
command = ["sh", "run.sh"]
timeout_s = 30
result = "lava"
[params]
streams = [1, 4]
duration = 5
[sysctls]
"net.ipv4.tcp_congestion_control" = ["cubic", "reno"]
[metrics.throughput]
unit = "bit/s"
better = "higher"
scale = 1e-9
display_unit = "Gbit/s"
digits = 2
[[rules]]
rule = "baseline"
metric = "throughput"
min_ratio = 0.8
[report]
key = "throughput"
"""


def write(tmp: Path, text: str, name: str = "tput") -> Path:
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "scenario.toml").write_text(text)
    (d / "run.sh").write_text("echo hi\n")
    return d


def test_a_users_manifest_parses_into_typed_parts(tmp_path: Path) -> None:
    s = manifest.load(write(tmp_path, GOOD), "mine")
    assert (s.name, s.result, s.timeout_s, s.origin) == ("tput", "lava", 30.0, "mine")
    assert s.params == (("streams", ("1", "4")), ("duration", ("5",)))
    assert s.sysctls == (("net.ipv4.tcp_congestion_control", ("cubic", "reno")),)
    assert s.rules == (BaselineRule("throughput", 0.8),)
    assert s.metric("throughput").display_unit == "Gbit/s"
    assert manifest.from_doc(s.to_doc()) == s


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        ('title = "loopback throughput"\n', "", "title", "missing"),
        ('result = "lava"', 'result = "junit"', "result", "expected one of json, lava"),
        ("timeout_s = 30", "timeout_s = 0", "timeout_s", "positive number"),
        ('command = ["sh", "run.sh"]', "command = []", "command", "non-empty list"),
        ("[params]", "[params]\nPATH = 1", "params.PATH", "lower-case name"),
        ('better = "higher"', 'better = "up"', "metrics.throughput.better", "higher or lower"),
        ('metric = "throughput"', 'metric = "tput"', "rules[0].metric", "not a declared metric"),
        ('rule = "baseline"', 'rule = "magic"', "rules[0].rule", "series_rate, metric, baseline"),
        ("min_ratio = 0.8", "", "rules[0].min_ratio", "missing"),
        ('"net.ipv4.tcp_congestion_control"', '"../../etc"', "sysctls.../../etc", "sysctl name"),
        ("[report]", "[report]\ncolour = 1", "report.colour", "unknown key"),
        ("timeout_s = 30", "timeout_s = 30\nretries = 2", "retries", "unknown key"),
    ],
)
def test_errors_name_the_file_the_key_and_what_is_expected(
    tmp_path: Path, old: str, new: str, key: str, expected: str
) -> None:
    assert old in GOOD
    d = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as e:
        manifest.load(d, "mine")
    assert e.value.source == str(d / "scenario.toml")
    assert e.value.key == key and expected in e.value.problem, str(e.value)
    assert "\n" not in str(e.value)


def test_syntax_errors_and_bad_directory_names_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"scenario.toml: \(syntax\): not valid TOML"):
        manifest.load(write(tmp_path, "title = "), "mine")
    with pytest.raises(ConfigError, match="directory name must be"):
        manifest.load(write(tmp_path, GOOD, name="bad name"), "mine")


def test_the_puzzles_are_manifests_in_the_same_format() -> None:
    cat = builtin()
    assert {"1A", "1B", "2A", "2B"} <= set(cat.names())
    assert set(cat.default_names()) == {"1A", "1B", "2A", "2B"}
    two_b = cat.get("2B")
    (rule,) = two_b.rules
    assert isinstance(rule, SeriesRateRule) and rule.goal and rule.knee_half_range == "port_range"
    assert dict(two_b.sysctls)["net.ipv4.tcp_max_tw_buckets"] == ("2000", "50000", "65535")
    assert isinstance(cat.get("1A").rules[0], MetricRule)
    assert cat.get("1B").report.ratio.of == "1A"
    for s in cat.scenarios:
        assert s.origin == "built-in" and (s.directory / "scenario.toml").is_file()


def test_user_directories_join_the_catalogue_and_may_not_shadow(tmp_path: Path) -> None:
    write(tmp_path / "mine", GOOD)
    cat = load_catalogue([tmp_path / "mine"])
    assert cat.get("tput").origin == str(tmp_path / "mine")
    assert "tput" in cat.default_names()
    write(tmp_path / "shadow", GOOD, name="2B")
    with pytest.raises(ConfigError, match="already defined by"):
        load_catalogue([tmp_path / "shadow"])
    with pytest.raises(ConfigError, match="not a directory of scenarios"):
        load_catalogue([tmp_path / "nowhere"])
