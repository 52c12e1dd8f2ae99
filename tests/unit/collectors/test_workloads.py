"""The example workloads' parsers, on output captured from real iperf3 and stress-ng runs.

The programs are stdlib scripts run inside guests, not modules of the package, so they
are imported by path; nothing here runs iperf3 or stress-ng.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import socket
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from matrix.classify.rules import classify
from matrix.scenarios.manifest import load

ROOT = Path(__file__).resolve().parents[3]
SCENARIOS = ROOT / "collectors" / "scenarios"
FIXTURES = ROOT / "tests" / "fixtures" / "workloads"
PROGRAMS = {
    "iperf3": SCENARIOS / "iperf3" / "iperf3_loopback.py",
    "stress-ng-sock": SCENARIOS / "stress-ng-sock" / "stress_ng_sock.py",
}


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"workload_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


iperf3 = _load(PROGRAMS["iperf3"])
stress = _load(PROGRAMS["stress-ng-sock"])


@pytest.fixture
def iperf3_doc() -> dict[str, Any]:
    return json.loads((FIXTURES / "iperf3.json").read_text())


@pytest.fixture
def stress_yaml() -> str:
    return (FIXTURES / "stress-ng.yaml").read_text()


# iperf3


def test_iperf3_summary_takes_the_receivers_throughput(iperf3_doc: dict[str, Any]) -> None:
    end = iperf3_doc["end"]
    out = iperf3.summarise(iperf3_doc)
    m = out["metrics"]
    assert m["throughput_bps"] == end["sum_received"]["bits_per_second"] > 0
    assert m["sent_bps"] == end["sum_sent"]["bits_per_second"]
    assert m["retransmits"] == end["sum_sent"]["retransmits"]
    assert m["bytes_received"] == end["sum_received"]["bytes"]
    assert m["streams"] == len(end["streams"]) == 2
    assert m["cpu_sender_pct"] == end["cpu_utilization_percent"]["host_total"]
    cc = end["sender_tcp_congestion"]
    assert out["evidence"]["congestion"] == {
        "sender": cc,
        "receiver": end["receiver_tcp_congestion"],
    }
    assert out["evidence"]["iperf3"] == iperf3_doc["start"]["version"]
    assert f"{m['throughput_bps'] / 1e9:.2f} Gbit/s" in out["status_detail"]
    assert f"congestion control {cc}" in out["status_detail"]


def test_iperf3_series_is_one_sample_per_interval(iperf3_doc: dict[str, Any]) -> None:
    series = iperf3.summarise(iperf3_doc)["series"]
    sums = [i["sum"] for i in iperf3_doc["intervals"]]
    assert [s["t"] for s in series] == [s["end"] for s in sums]
    assert [s["bits_per_second"] for s in series] == [s["bits_per_second"] for s in sums]
    assert [s["retransmits"] for s in series] == [s["retransmits"] for s in sums]
    assert all(s["bits_per_second"] > 0 for s in series)


def test_iperf3_series_skips_omitted_and_unreadable_intervals(iperf3_doc: dict[str, Any]) -> None:
    doc = copy.deepcopy(iperf3_doc)
    doc["intervals"][0]["sum"]["omitted"] = True
    doc["intervals"].append({"sum": {"end": 3.0, "bits_per_second": float("nan")}})
    doc["intervals"].append("not an interval")
    series = iperf3.summarise(doc)["series"]
    assert [s["t"] for s in series] == [iperf3_doc["intervals"][1]["sum"]["end"]]


def test_iperf3_error_in_its_json_is_a_failure_of_the_client() -> None:
    # What iperf3 3.12 -J prints (exit status 0) when nothing listens on the port.
    doc = {
        "start": {"connected": [], "version": "iperf 3.12"},
        "intervals": [],
        "end": {},
        "error": "unable to connect to server: Connection refused",
    }
    with pytest.raises(iperf3.Failure) as e:
        iperf3.summarise(doc)
    assert (e.value.phase, e.value.name) == ("client", "iperf3_error")
    assert "Connection refused" in e.value.message


def test_iperf3_without_the_received_sum_is_bad_output(iperf3_doc: dict[str, Any]) -> None:
    del iperf3_doc["end"]["sum_received"]
    with pytest.raises(iperf3.Failure) as e:
        iperf3.summarise(iperf3_doc)
    assert (e.value.phase, e.value.name) == ("parse", "bad_output")
    assert "sum_received" in e.value.message
    with pytest.raises(iperf3.Failure):
        iperf3.summarise([1, 2])


def test_iperf3_detail_names_both_ends_when_they_differ() -> None:
    text = iperf3.detail({"throughput_bps": 2.5e9}, {"sender": "reno", "receiver": None})
    assert text == "2.50 Gbit/s received, congestion control sender reno, receiver ?"


def test_listening_reads_this_namespaces_tcp_table() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert not iperf3.listening(port)
        s.listen(1)
        assert iperf3.listening(port)


# stress-ng


def test_stress_ng_yaml_reads_as_stress_ng_writes_it(stress_yaml: str) -> None:
    doc = stress.read_yaml(stress_yaml)
    assert set(doc) == {"system-info", "metrics"}
    info = doc["system-info"]
    assert info["stress-ng-version"] == "0.15.06"
    assert info["date-yyyy-mm-dd"] == "2026:12:02"
    assert info["version"] == "#1 SMP PREEMPT_DYNAMIC @0"
    assert info["compiler"] == "gcc 12.2.0"
    assert info["cpus"] == 2 and isinstance(info["cpus"], int)
    (entry,) = doc["metrics"]
    assert entry["stressor"] == "sock"
    assert entry["bogo-ops"] == 2906
    assert entry["bogo-ops-per-second-real-time"] == pytest.approx(1452.112662)


def test_stress_ng_summary(stress_yaml: str) -> None:
    out = stress.summarise(stress.read_yaml(stress_yaml))
    m = out["metrics"]
    assert m["bogo_ops"] == 2906
    assert m["bogo_ops_per_s"] == pytest.approx(1452.112662)
    assert m["bogo_ops_per_cpu_s"] == pytest.approx(960.171708)
    assert m["wall_clock_s"] == pytest.approx(2.001222)
    assert m["max_rss_kb"] == 2396
    assert out["series"] == []
    assert out["evidence"] == {"stress_ng": "0.15.06"}
    assert out["status_detail"] == "1,452 bogo ops/s (2,906 bogo ops in 2.00 s)"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("metrics:\n    - stressor: sock\n      nested:\n        x: 1\n", "line 3"),
        ("metrics:\n    - stressor: sock\n        bogo-ops: 1\n", "line 3"),
        ("system-info:\n      a: 1\n    b: 2\n", "line 3"),
        ("metrics: [1, 2]\n", "line 1"),
        ("metrics:\n    - stressor: [sock]\n", "line 2"),
        ("metrics:\n    just words\n", "line 2"),
        ("    a: 1\n", "line 1"),
        ("system-info:\n      a: 1\n    - b: 2\n", "line 3"),
    ],
)
def test_stress_ng_yaml_reader_refuses_what_stress_ng_does_not_write(text: str, where: str) -> None:
    with pytest.raises(ValueError, match=where):
        stress.read_yaml(text)


def test_stress_ng_scalars() -> None:
    assert stress.scalar("'it''s'", 1) == "it's"
    assert stress.scalar('"a\\"b"', 1) == 'a"b'
    assert stress.scalar("-12", 1) == -12
    assert stress.scalar("1.5e3", 1) == 1500.0
    assert stress.scalar("nan", 1) == "nan"
    assert stress.scalar("0.15.06", 1) == "0.15.06"


def test_stress_ng_summary_needs_finite_figures(stress_yaml: str) -> None:
    doc = stress.read_yaml(stress_yaml.replace("1452.112662", "nan"))
    with pytest.raises(stress.Failure, match="bogo-ops-per-second-real-time is 'nan'"):
        stress.summarise(doc)
    doc = stress.read_yaml(stress_yaml.replace("stressor: sock", "stressor: cpu"))
    with pytest.raises(stress.Failure, match="no metrics for sock"):
        stress.summarise(doc)


# both programs


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program_is_python_3_8(name: str) -> None:
    ast.parse(PROGRAMS[name].read_text(), feature_version=(3, 8))


@pytest.mark.parametrize(("module", "tool"), [(iperf3, "iperf3"), (stress, "stress-ng")])
def test_a_missing_tool_is_a_skip(
    module: ModuleType, tool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("KMATRIX_RESULT_DIR", str(tmp_path))
    assert module.main() == 4
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["verdict"] == "skip" and doc["error"] is None
    assert f"{tool} is not installed" in doc["status_detail"]


@pytest.mark.parametrize(("module", "name"), [(iperf3, "streams"), (stress, "workers")])
def test_a_bad_parameter_is_an_error_of_the_program(
    module: ModuleType, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, "0")
    monkeypatch.setenv("KMATRIX_RESULT_DIR", str(tmp_path))
    assert module.main() == 2
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["error"]["name"] == "bad_param" and doc["error"]["phase"] == "params"
    assert doc["error"]["iteration"] == 0 and doc["metrics"] == {}
    assert not (tmp_path / "result.json.tmp").exists()


def test_by_hand_the_result_goes_to_stdout(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KMATRIX_RESULT_DIR", raising=False)
    monkeypatch.setenv("duration", "soon")
    assert iperf3.main() == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"]["message"] == "duration='soon'; expected an integer >= 1"


# the manifests


@pytest.mark.parametrize(
    ("name", "fixture_metrics"),
    [
        ("iperf3", lambda: iperf3.summarise(json.loads((FIXTURES / "iperf3.json").read_text()))),
        (
            "stress-ng-sock",
            lambda: stress.summarise(stress.read_yaml((FIXTURES / "stress-ng.yaml").read_text())),
        ),
    ],
)
def test_manifest_declares_what_the_program_reports(name: str, fixture_metrics: Any) -> None:
    s = load(SCENARIOS / name, "built-in")
    assert s.default is False
    assert s.result == "json"
    assert (s.directory / s.command[-1]).is_file()
    assert set(fixture_metrics()["metrics"]) == {m.name for m in s.metrics}
    (rule,) = s.rules
    assert rule.kind == "baseline" and rule.min_ratio == 0.8
    assert s.metric(rule.metric).better == "higher"
    assert s.report.key == rule.metric
    assert dict(s.params)["duration"] == ("5",)
    assert s.timeout_s > 5 + 50


def test_iperf3_manifest_sweeps_congestion_control_and_plots_throughput() -> None:
    s = load(SCENARIOS / "iperf3", "built-in")
    assert dict(s.sysctls) == {"net.ipv4.tcp_congestion_control": ("cubic", "reno")}
    assert s.metric("retransmits").better == "lower"
    m = s.metric("throughput_bps")
    assert (m.scale, m.display_unit, m.digits) == (1e-9, "Gbit/s", 2)
    assert s.report.plot == "bits_per_second"


def _fake_tool(tmp_path: Path, name: str, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An executable `name` first on PATH, standing in for the real tool."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f"#!{sys.executable}\n{script}")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


def test_stress_ng_failing_keeps_its_figures_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    yaml = FIXTURES / "stress-ng.yaml"
    script = (
        "import shutil, sys\n"
        "args = sys.argv[1:]\n"
        f"shutil.copy({str(yaml)!r}, args[args.index('--yaml') + 1])\n"
        "print('stress-ng: fail: counter corrupted')\n"
        "sys.exit(7)\n"
    )
    _fake_tool(tmp_path, "stress-ng", script, monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("KMATRIX_RESULT_DIR", str(out))
    monkeypatch.setenv("duration", "1")
    assert stress.main() == 2
    doc = json.loads((out / "result.json").read_text())
    assert doc["metrics"]["bogo_ops"] == 2906
    assert doc["error"]["name"] == "stress_ng_exit_7" and doc["error"]["phase"] == "run"
    assert "untrustworthy" in doc["error"]["message"]
    assert "counter corrupted" in doc["status_detail"]
    assert doc["evidence"]["exit_status"] == 7
    assert "counter corrupted" in capsys.readouterr().err


def test_stress_ng_without_its_yaml_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_tool(tmp_path, "stress-ng", "import sys\nsys.exit(1)\n", monkeypatch)
    monkeypatch.setenv("KMATRIX_RESULT_DIR", str(tmp_path))
    assert stress.main() == 2
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["error"]["name"] == "stress_ng_exit_1"
    assert "without writing stress-ng.yaml" in doc["error"]["message"]


def test_iperf3_server_that_dies_is_an_error_of_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = "import sys\nprint('iperf3: error - unable to start listener')\nsys.exit(1)\n"
    _fake_tool(tmp_path, "iperf3", script, monkeypatch)
    monkeypatch.setenv("KMATRIX_RESULT_DIR", str(tmp_path))
    assert iperf3.main() == 2
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["error"]["name"] == "server_exited" and doc["error"]["phase"] == "server"
    assert "unable to start listener" in doc["error"]["message"]


def _cell_result(scenario: str, summary: dict[str, Any]) -> dict[str, Any]:
    """What the agent makes of the program's result.json, for the classifier."""
    return {
        "cell_id": "c1",
        "scenario": scenario,
        "status": "ok",
        "status_detail": summary["status_detail"],
        "metrics": summary["metrics"],
        "series": summary["series"],
        "evidence": summary["evidence"],
        "error": None,
        "sysctls": {"problems": [], "read_back": {}, "requested": {}},
        "program": {"exit_code": 0, "outcome": "pass", "reported": ["json", "exit"]},
    }


@pytest.mark.parametrize(
    ("scenario", "metric", "summary"),
    [
        (
            "iperf3",
            "throughput_bps",
            lambda: iperf3.summarise(json.loads((FIXTURES / "iperf3.json").read_text())),
        ),
        (
            "stress-ng-sock",
            "bogo_ops_per_s",
            lambda: stress.summarise(stress.read_yaml((FIXTURES / "stress-ng.yaml").read_text())),
        ),
    ],
)
def test_below_0_8x_the_baseline_kernel_is_a_slowdown(
    scenario: str, metric: str, summary: Any
) -> None:
    doc = _cell_result(scenario, summary())
    value = doc["metrics"][metric]
    for ratio, verdict in ((0.9, "success"), (0.7, "slowdown")):
        c = classify(doc, baseline=lambda m, k, r=ratio: value / r if m == metric else None)
        assert c.verdict.value == verdict, c.reason
