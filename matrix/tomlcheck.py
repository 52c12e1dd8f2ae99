"""Checked reads of parsed TOML values, shared by kernels.toml and scenario.toml.

Each check returns the value or raises ConfigError naming the file, the key and what is
expected, so a user fixes a file in one go instead of reading a traceback.
"""

from __future__ import annotations

from typing import Any

from matrix.errors import ConfigError


def required(src: str, where: str, t: dict[str, Any], key: str) -> Any:
    if key not in t:
        raise ConfigError(src, f"{where}.{key}" if where else key, "missing")
    return t[key]


def only_keys(src: str, where: str, t: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(t) - allowed)
    if extra:
        key = f"{where}.{extra[0]}" if where else extra[0]
        raise ConfigError(src, key, f"unknown key; expected one of {', '.join(sorted(allowed))}")


def table(src: str, key: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ConfigError(src, key, f"expected a table, got {type(v).__name__}")
    return v


def string(src: str, key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(src, key, f"{v!r}; expected a non-empty string")
    return v


def boolean(src: str, key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(src, key, f"{v!r}; expected true or false")
    return v


def integer(src: str, key: str, v: Any, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(src, key, f"{v!r}; expected an integer >= {minimum}")
    return v


def number(src: str, key: str, v: Any, zero: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or (v == 0 and not zero):
        expected = "a number >= 0" if zero else "a positive number"
        raise ConfigError(src, key, f"{v!r}; expected {expected}")
    return float(v)


def value(src: str, key: str, v: Any) -> str:
    """A sysctl or parameter value: written as text, so an integer or a string."""
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ConfigError(src, key, f'{v!r}; expected an integer or a string like "32768 60999"')
    return str(v)


def values(src: str, key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not v:
        raise ConfigError(src, key, "expected a non-empty list of values, e.g. [0, 1]")
    return tuple(value(src, key, x) for x in v)


def axis(src: str, key: str, v: Any) -> tuple[str, ...]:
    """A swept setting: a list is an axis (lists multiply), a scalar one fixed value."""
    return values(src, key, v) if isinstance(v, list) else (value(src, key, v),)


def string_list(src: str, key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        raise ConfigError(src, key, f"{v!r}; expected a non-empty list of strings")
    return tuple(v)
