"""stress-ng's sock stressor: the rate of loopback TCP socket I/O, in the cell's namespace.

Runs `stress-ng --sock <workers> --timeout <duration>s --metrics --yaml FILE` (both
parameters from the environment, as kmatrix passes scenario parameters); each worker is
a client and a server exchanging data over 127.0.0.1, and stress-ng counts the rounds as
"bogo ops". The YAML it writes is read by the small reader below, which takes exactly
the shape stress-ng writes (sections of `key: value` lines, or of `- key: value` items)
and rejects anything else by line, so a changed format fails loudly, not silently.

Stdlib only, Python 3.8+. Under kmatrix it writes $KMATRIX_RESULT_DIR/result.json (and
stress-ng's YAML beside it); run by hand (no KMATRIX_RESULT_DIR) it prints the result on
stdout:

    unshare -n sh -c 'ip link set lo up; duration=3 python3 stress_ng_sock.py'

Exit status, by kselftest's convention:
  0  measured, whatever the rate (judging it is the host's job);
  2  the workload did not complete: a bad parameter, stress-ng exiting non-zero (its
     status and meaning are in the `error`, with the figures when its YAML has them), a
     missing or malformed YAML, or a run that overran;
  4  skipped: stress-ng is not installed. That says nothing about the kernel under test,
     so it is neither a pass nor the kernel's error; kselftest's own tests skip the same
     way when a tool they need is missing. The reason is in status_detail and on stderr.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

try:
    import kmatrix_probe as probe
except ImportError:  # run by hand: the library sits in collectors/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    import kmatrix_probe as probe

STRESS_NG = "stress-ng"
STRESSOR = "sock"
SLACK_S = 30.0  # stress-ng's start-up and the reaping of its workers, on a slow guest
YAML_NAME = "stress-ng.yaml"
EXIT_MEANING = {
    1: "error in the options or the stress-ng harness",
    2: "one or more stressors failed",
    3: "a stressor could not start for lack of resources",
    4: "the stressor is not implemented here",
    5: "a stressor was killed by an unexpected signal",
    6: "a stressor exited unexpectedly, no timing metrics",
    7: "the bogo-ops figures may be untrustworthy",
}
"""stress-ng(1), EXIT STATUS."""
METRICS = {
    "bogo_ops": "bogo-ops",
    "bogo_ops_per_s": "bogo-ops-per-second-real-time",
    "bogo_ops_per_cpu_s": "bogo-ops-per-second-usr-sys-time",
    "wall_clock_s": "wall-clock-time",
    "user_s": "user-time",
    "system_s": "system-time",
    "cpu_per_instance_pct": "cpu-usage-per-instance",
    "max_rss_kb": "max-rss",
}
"""Our metric -> stress-ng's key in its metrics entry; the first two are required."""
REQUIRED = ("bogo_ops", "bogo_ops_per_s")


class Failure(Exception):
    """The workload did not complete: where (phase), a short name, and what happened."""

    def __init__(self, phase: str, name: str, message: str) -> None:
        super().__init__(message)
        self.phase = phase
        self.name = name
        self.message = message


def param(name: str, default: int, maximum: int | None = None) -> int:
    """A positive integer parameter (kmatrix sets one per param), or a Failure."""
    try:
        return probe.count_param(name, default, maximum)
    except ValueError as e:
        raise Failure("params", "bad_param", str(e)) from None


_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][-+]?[0-9]+)?")


def scalar(text: str, line: int) -> Any:
    """A YAML scalar as stress-ng writes one: an integer, a float (%f), a quoted or a
    plain string. A float that is not finite (stress-ng prints nan as "nan") stays text."""
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            raise ValueError(f"line {line}: unreadable quoted string {text!r}") from None
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if text and text[0] in "[{&*!|>'\"":
        raise ValueError(f"line {line}: {text!r} is YAML this reader does not take")
    return text


def _pair(body: str, line: int) -> tuple[str, str]:
    if body.endswith(":"):
        return body[:-1].strip(), ""
    key, sep, value = body.partition(": ")
    if not sep or not key.strip():
        raise ValueError(f"line {line}: expected 'key: value', got {body!r}")
    return key.strip(), value.strip()


def read_yaml(text: str) -> dict[str, Any]:
    """stress-ng's --yaml file as a dict of sections.

    The file is `---`, then top-level `name:` lines, each followed by indented
    `key: value` lines (a mapping, e.g. system-info) or by `- key: value` items with
    `key: value` lines under them (a list of mappings, e.g. metrics), then `...`.
    Anything else raises ValueError naming the line."""
    doc: dict[str, Any] = {}
    section: str | None = None
    item: dict[str, Any] | None = None
    key_indent: int | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        body = line.strip()
        if not body or body.startswith("#") or line in ("---", "..."):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if "\t" in line[: indent + 1]:
            raise ValueError(f"line {n}: a tab in the indentation")
        if indent == 0:
            key, value = _pair(body, n)
            if value:
                raise ValueError(f"line {n}: expected a section 'name:', got {body!r}")
            section, item, key_indent = key, None, None
            doc[section] = None
            continue
        if section is None:
            raise ValueError(f"line {n}: indented line before any section")
        if body.startswith("- "):
            if not isinstance(doc[section], (list, type(None))):
                raise ValueError(f"line {n}: a list item inside the mapping {section!r}")
            doc[section] = doc[section] or []
            item = {}
            doc[section].append(item)
            key_indent = indent + 2
            body = body[2:].strip()
        elif isinstance(doc[section], list):
            if item is None or indent != key_indent:
                raise ValueError(f"line {n}: unexpected indentation in the list {section!r}")
        else:
            doc[section] = doc[section] or {}
            key_indent = indent if key_indent is None else key_indent
            if indent != key_indent:
                raise ValueError(f"line {n}: unexpected indentation in {section!r}")
        key, value = _pair(body, n)
        if not value:
            raise ValueError(f"line {n}: nested structure under {key!r} is not supported")
        target = item if isinstance(doc[section], list) else doc[section]
        target[key] = scalar(value, n)
    return doc


def summarise(doc: dict[str, Any]) -> dict[str, Any]:
    """The parsed YAML -> the result's metrics, evidence and status_detail."""
    entries = doc.get("metrics")
    if not isinstance(entries, list):
        raise Failure("parse", "bad_output", "stress-ng's YAML has no metrics list")
    entry = next((e for e in entries if e.get("stressor") == STRESSOR), None)
    if entry is None:
        raise Failure("parse", "bad_output", f"stress-ng's YAML has no metrics for {STRESSOR}")
    metrics: dict[str, Any] = {}
    for ours, theirs in METRICS.items():
        value = entry.get(theirs)
        if isinstance(value, (int, float)) and math.isfinite(value):
            metrics[ours] = value
        elif ours in REQUIRED:
            raise Failure("parse", "bad_output", f"{theirs} is {value!r}, not a number")
    info = doc.get("system-info")
    version = info.get("stress-ng-version") if isinstance(info, dict) else None
    text = f"{metrics['bogo_ops_per_s']:,.0f} bogo ops/s ({metrics['bogo_ops']:,} bogo ops"
    if "wall_clock_s" in metrics:
        text += f" in {metrics['wall_clock_s']:.2f} s"
    return {
        "metrics": metrics,
        "series": [],
        "evidence": {"stress_ng": None if version is None else str(version)},
        "status_detail": text + ")",
    }


def measure(duration: int, workers: int, out_dir: str) -> dict[str, Any]:
    """Run stress-ng; the summary of its YAML. stress-ng's own output goes to stderr."""
    yaml_path = os.path.join(out_dir, YAML_NAME)
    argv = [
        STRESS_NG,
        f"--{STRESSOR}",
        str(workers),
        "--timeout",
        f"{duration}s",
        "--metrics",
        "--yaml",
        yaml_path,
        "--temp-path",
        out_dir,
    ]
    limit = duration + SLACK_S
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=limit
        )
    except subprocess.TimeoutExpired:
        raise Failure(
            "run", "timeout", f"stress-ng still running {limit:.0f} s after it started"
        ) from None
    sys.stderr.write(proc.stdout + proc.stderr)
    output = (proc.stderr + proc.stdout).strip()[-1000:]
    try:
        with open(yaml_path) as f:
            text = f.read()
    except OSError as e:
        why = f"stress-ng exited {proc.returncode} without writing {YAML_NAME} ({e.strerror})"
        raise Failure("run", f"stress_ng_exit_{proc.returncode}", f"{why}: {output}") from None
    try:
        result = summarise(read_yaml(text))
    except ValueError as e:
        raise Failure("parse", "bad_output", f"{YAML_NAME}: {e}") from None
    result["evidence"]["exit_status"] = proc.returncode
    if proc.returncode != 0:
        meaning = EXIT_MEANING.get(proc.returncode, "unknown exit status")
        why = f"stress-ng exited {proc.returncode}: {meaning}: {output}"
        result["error"] = error(Failure("run", f"stress_ng_exit_{proc.returncode}", why))
        result["status_detail"] = why
    return result


def error(f: Failure) -> dict[str, Any]:
    return {"errno": None, "name": f.name, "message": f.message, "iteration": 0, "phase": f.phase}


def failed(f: Failure) -> dict[str, Any]:
    return {
        "metrics": {},
        "series": [],
        "evidence": {},
        "error": error(f),
        "status_detail": f.message,
    }


def skipped(why: str) -> dict[str, Any]:
    return {
        "metrics": {},
        "series": [],
        "evidence": {},
        "error": None,
        "verdict": "skip",
        "status_detail": why,
    }


def main() -> int:
    out_dir = os.environ.get("KMATRIX_RESULT_DIR") or None
    try:
        duration = param("duration", 5)
        workers = param("workers", 1)
        if shutil.which(STRESS_NG) is None:
            why = "stress-ng is not installed (Debian: apt-get install stress-ng); nothing measured"
            print(f"stress_ng_sock: {why}", file=sys.stderr)
            probe.write_result(skipped(why))
            return 4
        if out_dir:
            doc = measure(duration, workers, out_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="stress-ng-sock-") as scratch:
                doc = measure(duration, workers, scratch)
    except Failure as f:
        print(f"stress_ng_sock: {f.phase}: {f.message}", file=sys.stderr)
        probe.write_result(failed(f))
        return 2
    doc.setdefault("error", None)
    print(f"stress_ng_sock: {doc['status_detail']}", file=sys.stderr)
    probe.write_result(doc)
    return 2 if doc["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
