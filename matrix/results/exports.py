"""A run's table in the formats nightly jobs consume: JUnit XML and JSON lines.

JUnit is what CI systems (GitLab, Jenkins, GitHub test reporters) show as a test tree:
a testsuite per kernel, a testcase per cell. Only hang and error are failures: a
slowdown is a measured behaviour of the kernel, not a broken test, and infra means
nothing was measured (skipped, with the reason). Guest text reaches the XML, so it goes
through ElementTree (which escapes) after the characters XML 1.0 cannot carry at all and
terminal escape sequences are removed.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from typing import Any

from matrix.collect import sanitize
from matrix.results.table import json_lines

__all__ = ["FORMATS", "jsonl", "junit_xml", "xml_text"]

FORMATS = ("junit", "jsonl")
FAILING = frozenset({"hang", "fail", "error"})
SKIPPED = frozenset({"infra", "skip"})

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Everything outside XML 1.0's Char production: a parser rejects the whole file on one."""


def xml_text(value: Any) -> str:
    """A value as text an XML 1.0 parser accepts: no terminal escapes, no control chars."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return _NOT_XML.sub("", sanitize.clean(str(value)))


def case_name(row: Mapping[str, Any]) -> str:
    """`<scenario> <sysctl_label> [params] trial N`, the cell as a person names it."""
    label = row.get("sysctl_label") or "defaults"
    params = " ".join(f"{k}={v}" for k, v in sorted((row.get("params") or {}).items()))
    return f"{row['scenario']} {label}{' ' + params if params else ''} trial {row['trial']}"


def _system_out(row: Mapping[str, Any]) -> str:
    lines = [
        f"verdict: {row['verdict']}",
        f"key figure: {row.get('key_figure') or '-'}",
        f"reason: {row.get('reason') or '-'}",
        f"kernel release: {row.get('kernel_release') or '-'}",
        f"runner: {row.get('runner') or '-'} ({row.get('accelerator') or '-'})",
        f"cell id: {row.get('cell_id')}",
        f"reproduce: {row.get('repro') or '-'}",
    ]
    return xml_text("\n".join(lines) + "\n")


def _testcase(suite: ET.Element, row: Mapping[str, Any]) -> str:
    """Append one testcase; return its verdict so the suite can count it."""
    case = ET.SubElement(
        suite,
        "testcase",
        name=xml_text(case_name(row)),
        classname=xml_text(f"kmatrix.{row['kernel']}"),
        time=_seconds(row.get("elapsed_s")),
    )
    verdict = str(row["verdict"])
    reason = xml_text(row.get("reason"))
    if verdict in FAILING:
        failure = ET.SubElement(case, "failure", message=reason, type=verdict)
        failure.text = xml_text(f"{verdict}: {row.get('key_figure') or ''}\n{row.get('reason')}")
    elif verdict in SKIPPED:
        ET.SubElement(case, "skipped", message=f"{verdict}: {reason}")
    props = ET.SubElement(case, "properties")
    for name, value in sorted((row.get("metrics") or {}).items()):
        if isinstance(value, int | float) and not isinstance(value, bool):
            ET.SubElement(props, "property", name=xml_text(name), value=xml_text(value))
    if not len(props):
        case.remove(props)
    ET.SubElement(case, "system-out").text = _system_out(row)
    return verdict


def _seconds(value: Any) -> str:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return "0"
    return f"{seconds:.3f}" if seconds == seconds else "0"


def junit_xml(rows: Iterable[Mapping[str, Any]], run_id: str) -> str:
    """The run as JUnit XML: a testsuite per kernel (in table order), a testcase per cell."""
    root = ET.Element("testsuites", name=xml_text(f"kmatrix {run_id}"))
    by_kernel: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_kernel.setdefault(str(row["kernel"]), []).append(row)
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    for kernel, cells in by_kernel.items():
        suite = ET.SubElement(root, "testsuite", name=xml_text(kernel))
        props = ET.SubElement(suite, "properties")
        release = cells[0].get("kernel_release")
        ET.SubElement(props, "property", name="kernel_release", value=xml_text(release))
        ET.SubElement(props, "property", name="run_id", value=xml_text(run_id))
        verdicts = [_testcase(suite, row) for row in cells]
        counts = {
            "tests": len(verdicts),
            "failures": sum(v in FAILING for v in verdicts),
            "skipped": sum(v in SKIPPED for v in verdicts),
        }
        for key, n in counts.items():
            suite.set(key, str(n))
            totals[key] += n
        suite.set("errors", "0")
    for key, n in totals.items():
        root.set(key, str(n))
    root.set("errors", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def jsonl(rows: Iterable[Mapping[str, Any]]) -> str:
    """One JSON object per cell per line, as `kmatrix results --json` prints them."""
    return "".join(line + "\n" for line in json_lines([dict(r) for r in rows]))
