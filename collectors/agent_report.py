"""How a scenario program reports, read back by the agent: result.json, LAVA lines,
KTAP/TAP lines and the exit status, combined into one outcome.

Stdlib only, Python 3.8+. A program may be anything (a LAVA test script, a kselftest, a
probe written against kmatrix_probe), so everything here is bounded: result.json is
opened without following a link and read up to MAX_RESULT_JSON_BYTES, strings and lists
are cut to the sizes the host accepts, and a number that is not finite is no number.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat

TYPE_CHECKING = False
"""typing costs ~0.15 s of a guest's start under TCG: its names are for checkers only."""
if TYPE_CHECKING:
    from typing import Any

RESULTS = ("json", "lava", "ktap", "exit")
"""The conventions a manifest may declare (its `result`)."""
VERDICTS = ("success", "slowdown", "hang", "error", "fail", "skip")
"""A result.json's own `verdict`."""
OUTCOMES = ("pass", "fail", "skip", "error")
CASE_RESULTS = ("pass", "fail", "skip", "unknown", "error")
LAVA_RESULTS = ("pass", "fail", "skip", "unknown")
MAX_RESULT_JSON_BYTES = 8 << 20
MAX_DEPTH = 64
"""Nesting a result.json may have: the host refuses a result nested deeper."""
MAX_TESTCASES = 2000
"""Test cases kept in a result (all of them count towards the outcome)."""
NAME_CHARS = 256
UNITS_CHARS = 64
DETAIL_CHARS = 1000
MAX_MAGNITUDE = 2**63
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_CHUNK = 1 << 20


NO_RESULT_JSON = "no result.json was written"


class Invalid(ValueError):
    """A result.json that is there but cannot be used; the message says why."""


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def read_bounded_fd(fd: int, limit: int) -> bytes:
    """At most `limit` bytes of `fd` from its start."""
    parts, done = [], 0
    while done < limit:
        chunk = os.pread(fd, min(_CHUNK, limit - done), done)
        if not chunk:
            break
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)


def read_result_file(directory: str, name: str = "result.json") -> bytes | None:
    """`directory/name`'s bytes, None when it is absent; Invalid when it is a link, not
    a regular file or too large. Neither the directory nor the file is followed if a
    link, and a FIFO never blocks the reader."""
    try:
        dir_fd = os.open(directory, _DIR_FLAGS)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Invalid("the result directory was replaced by a link or a file") from None
        if e.errno == errno.ENOENT:
            raise Invalid("the result directory was removed") from None
        raise Invalid(f"the result directory is unreadable: {e.strerror}") from None
    try:
        fd = os.open(name, _FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        if e.errno == errno.ELOOP:
            raise Invalid(f"{name} is a symbolic link, not a regular file") from None
        raise Invalid(f"{name} is unreadable: {e.strerror}") from None
    finally:
        os.close(dir_fd)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise Invalid(f"{name} is {_kind(mode)}, not a regular file")
        data = read_bounded_fd(fd, MAX_RESULT_JSON_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_RESULT_JSON_BYTES:
        raise Invalid(f"{name} is larger than {MAX_RESULT_JSON_BYTES:,} bytes")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} overflows a float")
    return value


def depth(doc: Any) -> int:
    """How deeply lists and objects nest in `doc` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in value)
    return deepest


def parse_strict(data: bytes) -> Any:
    """Strict JSON, as the host reads it: no NaN or Infinity, no float overflow, valid
    UTF-8, at most MAX_DEPTH levels; Invalid otherwise."""
    try:
        doc = json.loads(
            data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float
        )
    except RecursionError:
        raise Invalid("result.json is nested too deeply to parse") from None
    except ValueError as e:
        raise Invalid(f"result.json is not valid JSON: {str(e)[:200]}") from None
    if depth(doc) > MAX_DEPTH:
        raise Invalid(f"result.json is nested deeper than {MAX_DEPTH} levels")
    return doc


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def result_fields(doc: Any) -> dict[str, Any]:
    """The keys of a parsed result.json the agent takes, checked; Invalid names the
    first wrong one. Keys it does not know are ignored."""
    if not isinstance(doc, dict):
        raise Invalid("result.json is not a JSON object")
    out: dict[str, Any] = {}
    for key, kind, wanted in (
        ("metrics", dict, "an object"),
        ("series", list, "a list"),
        ("evidence", dict, "an object"),
    ):
        if key in doc:
            if not isinstance(doc[key], kind):
                raise Invalid(f"result.json: {key} is not {wanted}")
            out[key] = doc[key]
    for n, point in enumerate(out.get("series", [])):
        if not isinstance(point, dict) or not _is_number(point.get("t")):
            raise Invalid(f"result.json: series[{n}] is not an object with a numeric t")
    if "error" in doc:
        if doc["error"] is not None and not isinstance(doc["error"], dict):
            raise Invalid("result.json: error is neither null nor an object")
        out["error"] = doc["error"]
    verdict = doc.get("verdict")
    if verdict is not None:
        if verdict not in VERDICTS:
            raise Invalid(f"result.json: verdict is not one of {', '.join(VERDICTS)}")
        out["verdict"] = verdict
    if "status_detail" in doc:
        if not isinstance(doc["status_detail"], str):
            raise Invalid("result.json: status_detail is not a string")
        out["status_detail"] = doc["status_detail"][:DETAIL_CHARS]
    return out


def read_result_json(directory: str) -> tuple[dict[str, Any] | None, str]:
    """(the checked fields of directory/result.json, "") or (None, why there are none)."""
    try:
        data = read_result_file(directory)
        if data is None:
            return None, NO_RESULT_JSON
        return result_fields(parse_strict(data)), ""
    except Invalid as e:
        return None, str(e)


_INTEGER = re.compile(r"[+-]?[0-9]+")


def number(text: str) -> int | float | None:
    """A measurement as a JSON number, None unless finite and below 2**63."""
    if len(text) > 64:
        return None
    try:
        value = int(text) if _INTEGER.fullmatch(text) else float(text)
    except ValueError:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if abs(value) < MAX_MAGNITUDE else None


def _case(name: str, result: str, source: str, measurement: Any = None, units: Any = None):
    return {
        "name": name[:NAME_CHARS],
        "result": result,
        "measurement": measurement,
        "units": units[:UNITS_CHARS] if units else None,
        "source": source,
    }


_LAVA = re.compile(r"<LAVA_SIGNAL_TESTCASE\s+([^>]*)>")


def lava_cases(lines: list[str]) -> list[dict[str, Any]]:
    """One test case per well-formed LAVA_SIGNAL_TESTCASE line, as lava-test-case prints
    it: KEY=value words in any order, TEST_CASE_ID and RESULT required; a line lacking
    them, or with a RESULT LAVA does not know, is skipped as LAVA skips it."""
    cases = []
    for line in lines:
        for body in _LAVA.findall(line):
            attrs = {}
            for word in body.split():
                key, sep, value = word.partition("=")
                if sep:
                    attrs[key.upper()] = value
            name, result = attrs.get("TEST_CASE_ID", ""), attrs.get("RESULT", "").lower()
            if not name or result not in LAVA_RESULTS:
                continue
            measured = attrs.get("MEASUREMENT")
            cases.append(
                _case(
                    name,
                    result,
                    "lava",
                    number(measured) if measured else None,
                    attrs.get("UNITS") or None,
                )
            )
    return cases


_TAP_RESULT = re.compile(
    r"(not ok|ok)(?![A-Za-z0-9_])\s*([0-9]+)?\s*(?:-\s+)?([^#]*?)\s*(?:#(.*))?"
)
_TAP_PLAN = re.compile(r"1\.\.([0-9]+)\s*(?:#(.*))?")
_TAP_BAIL = re.compile(r"Bail out!(.*)")
_DIRECTIVES = (("SKIP", "skip"), ("TODO", "skip"), ("XFAIL", "pass"))
"""TAP's and KTAP's directives that change a result: a skipped test, one not expected to
pass yet, and an expected failure (kselftest's XFAIL, which is no failure)."""
_ERROR_DIRECTIVES = ("TIMEOUT", "ERROR")


def _tap_result(ok: bool, directive: str) -> str:
    word = directive.strip().upper()
    for prefix, result in _DIRECTIVES:
        if word.startswith(prefix):
            return result
    if word.startswith(_ERROR_DIRECTIVES):
        return "error"
    return "pass" if ok else "fail"


def tap_cases(lines: list[str]) -> tuple[list[dict[str, Any]], bool]:
    """(test cases, whether any TAP/KTAP line was seen) from the top-level lines (not
    indented: nested KTAP subtests are left to their parent's line). A plan of 1..0 is a
    skip; a plan the results do not match, and a bail-out, are errors."""
    cases: list[dict[str, Any]] = []
    plan: tuple[int, str] | None = None
    bailed, seen, results = False, False, 0
    for line in lines:
        if line[:1].isspace():
            continue
        line = line.rstrip()
        m = _TAP_RESULT.fullmatch(line)
        if m:
            seen = True
            results += 1
            ok, num, desc, directive = m.group(1) == "ok", m.group(2), m.group(3), m.group(4)
            name = desc or (f"test {num}" if num else "test")
            cases.append(_case(name, _tap_result(ok, directive or ""), "ktap"))
            continue
        m = _TAP_PLAN.fullmatch(line)
        if m:
            seen = True
            if plan is None:
                plan = (int(m.group(1)), (m.group(2) or "").strip())
            continue
        m = _TAP_BAIL.fullmatch(line)
        if m:
            seen, bailed = True, True
            reason = m.group(1).strip()
            cases.append(_case("Bail out!" + (f" {reason}" if reason else ""), "error", "ktap"))
    if plan is not None and not bailed:
        planned, why = plan
        if planned == 0:
            cases.append(_case("plan 1..0" + (f" # {why}" if why else ""), "skip", "ktap"))
        elif planned != results:
            cases.append(_case(f"plan 1..{planned}: {results} results", "error", "ktap"))
    return cases, seen


def exit_outcome(code: int) -> str:
    """kselftest's exit statuses: 0 pass, 1 fail, 4 skip, anything else an error."""
    return {0: "pass", 1: "fail", 4: "skip"}.get(code, "error")


VERDICT_OUTCOME = {
    "success": "pass",
    "slowdown": "pass",
    "hang": "pass",
    "error": "error",
    "fail": "fail",
    "skip": "skip",
}
"""A result.json verdict as an outcome: a program that measured a slowdown or a hang
did its job (the verdict itself is kept for the classifier)."""


def combine(outcomes: list[str | None]) -> str:
    """Any error -> error; else any fail -> fail; else any pass -> pass; else skip."""
    found = set(outcomes)
    return next((o for o in ("error", "fail", "pass") if o in found), "skip")


def outcome(verdict: str | None, cases: list[dict[str, Any]], exit_code: int | None) -> str:
    """What everything the program reported adds up to (a case's `unknown` counts as
    nothing)."""
    parts: list[str | None] = [VERDICT_OUTCOME.get(verdict or "")]
    parts += [c["result"] for c in cases if c["result"] != "unknown"]
    if exit_code is not None:
        parts.append(exit_outcome(exit_code))
    return combine(parts)
