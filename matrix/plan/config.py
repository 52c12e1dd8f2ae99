"""kernels.toml -> validated, frozen configuration.

Parsing and validation are separate: tomllib parses, then every table is checked
against what it must hold, and each error names the file, the key and what is
expected, so a user fixes it in one go instead of reading a traceback.
"""

from __future__ import annotations

import os
import pwd
import re
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from matrix.errors import ConfigError
from matrix.model import DebianSource, HostSource, KernelSpec, Limits, PathSource, Sweep
from matrix.plan.hosts import HostSpec, from_table
from matrix.scenarios.catalogue import NAMESPACED_SYSCTLS, SCENARIOS


@dataclass(frozen=True)
class Settings:
    """Where things go and how VMs are sized; every field is a [settings] key."""

    cache_dir: Path = Path("~/.cache/kmatrix").expanduser()
    runs_dir: Path = Path("runs")
    reports_dir: Path = Path("reports")
    mirror: str | None = None
    security_mirror: str | None = None
    jobs: int = 0
    memory_mb: int = 2048
    cpus: int = 1
    accel: str = "auto"
    boot_timeout_s: float = 180.0
    known_hosts: Path | None = None
    identity: Path | None = None
    allow_unverified: bool = False
    guest_user: str | None = None


@dataclass(frozen=True)
class Config:
    path: Path
    settings: Settings
    kernels: tuple[KernelSpec, ...]
    sweep: Sweep
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    hosts: tuple[HostSpec, ...] = ()

    def kernel(self, name: str) -> KernelSpec:
        for k in self.kernels:
            if k.name == name:
                return k
        known = ", ".join(k.name for k in self.kernels)
        raise ConfigError(str(self.path), f"kernel {name!r}", f"not declared; known: {known}")


def default_config_path() -> Path:
    """./kernels.toml when there is one, else the catalogue that ships with kmatrix."""
    local = Path("kernels.toml")
    if local.is_file():
        return local
    return Path(str(resources.files("matrix") / "kernels.toml"))


def load(path: Path | None = None) -> Config:
    path = path or default_config_path()
    src = str(path)
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(src, "(file)", "not found; pass --config FILE") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(src, "(syntax)", f"not valid TOML: {e}") from None
    _only_keys(src, "(top level)", data, {"settings", "sweep", "profiles", "kernel", "host"})
    kernels = tuple(_kernel(src, i, k) for i, k in enumerate(_list_of_tables(src, "kernel", data)))
    names = [k.name for k in kernels]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(
            src, "kernel.name", f"duplicate names {sorted(dup)}; names must be unique"
        )
    profiles = _table(src, "profiles", data.get("profiles", {}))
    for pname, prof in profiles.items():
        sweep_from(
            src, f"profiles.{pname}", _table(src, f"profiles.{pname}", prof), default_sweep()
        )
    return Config(
        path=Path(path),
        settings=_settings(src, _table(src, "settings", data.get("settings", {}))),
        kernels=kernels,
        sweep=sweep_from(
            src, "sweep", _table(src, "sweep", data.get("sweep", {})), default_sweep()
        ),
        profiles=profiles,
        hosts=_hosts(src, data),
    )


def _hosts(src: str, data: dict[str, Any]) -> tuple[HostSpec, ...]:
    """[[host]] tables: SSH hosts that take batches besides this machine."""
    v = data.get("host", [])
    if not isinstance(v, list):
        raise ConfigError(src, "host", "expected [[host]] tables")
    hosts = tuple(from_table(src, i, t, Path(src).parent) for i, t in enumerate(v))
    names = [h.name for h in hosts]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(src, "host.address", f"{dup} declared twice; raise its capacity instead")
    return hosts


def default_sweep() -> Sweep:
    """The seed's sweep: puzzle 2 over buckets x tw_reuse, puzzle 1 at defaults."""
    return Sweep(
        scenarios=("1A", "1B", "2A", "2B"),
        sysctls=(
            ("net.ipv4.tcp_max_tw_buckets", ("2000", "50000", "65535")),
            ("net.ipv4.tcp_tw_reuse", ("0", "1")),
        ),
    )


def apply_profile(config: Config, name: str) -> Config:
    """A profile is a [profiles.NAME] table of sweep keys laid over [sweep]."""
    if name not in config.profiles:
        known = ", ".join(sorted(config.profiles)) or "none declared"
        raise ConfigError(str(config.path), f"profiles.{name}", f"no such profile; known: {known}")
    sweep = sweep_from(str(config.path), f"profiles.{name}", config.profiles[name], config.sweep)
    return replace(config, sweep=sweep)


def _settings(src: str, t: dict[str, Any]) -> Settings:
    _only_keys(src, "settings", t, set(Settings.__dataclass_fields__))
    d = Settings()
    paths = {
        k: Path(os.path.expanduser(_str(src, f"settings.{k}", t[k])))
        for k in ("cache_dir", "runs_dir", "reports_dir")
        if k in t
    }
    base = Path(src).parent
    ssh = {
        k: base / Path(os.path.expanduser(_str(src, f"settings.{k}", t[k])))
        for k in ("known_hosts", "identity")
        if k in t
    }
    accel = t.get("accel", d.accel)
    if accel not in ("auto", "kvm", "tcg"):
        raise ConfigError(src, "settings.accel", f"{accel!r}; expected one of auto, kvm, tcg")
    return replace(
        d,
        **paths,
        **ssh,
        mirror=_str(src, "settings.mirror", t["mirror"]) if "mirror" in t else None,
        security_mirror=(
            _str(src, "settings.security_mirror", t["security_mirror"])
            if "security_mirror" in t
            else None
        ),
        jobs=_int(src, "settings.jobs", t.get("jobs", d.jobs), 0),
        memory_mb=_int(src, "settings.memory_mb", t.get("memory_mb", d.memory_mb), 256),
        cpus=_int(src, "settings.cpus", t.get("cpus", d.cpus), 1),
        accel=accel,
        boot_timeout_s=_num(
            src, "settings.boot_timeout_s", t.get("boot_timeout_s", d.boot_timeout_s)
        ),
        allow_unverified=_bool(src, "settings.allow_unverified", t.get("allow_unverified", False)),
        guest_user=(
            guest_user(src, "settings.guest_user", t["guest_user"]) if "guest_user" in t else None
        ),
    )


def guest_user(src: str, key: str, v: Any) -> str:
    """An existing, unprivileged account for QEMU to run as (see `runners.guest_user`)."""
    name = _str(src, key, v)
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        expected = "expected an existing user, e.g. one made with useradd --system"
        raise ConfigError(src, key, f"{name!r}: no such user; {expected}") from None
    if uid == 0:
        raise ConfigError(src, key, f"{name!r} is root; expected an unprivileged user")
    return name


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SWEEP_KEYS = {
    "scenarios",
    "sysctls",
    "fixed",
    "trials",
    "swept_scenarios",
    "window_s",
    "iteration_cap",
    "stall_s",
    "sample_s",
    "collapse_s",
    "knee_margin",
    "knee_margin_s",
}


def sweep_from(src: str, where: str, t: dict[str, Any], base: Sweep) -> Sweep:
    _only_keys(src, where, t, _SWEEP_KEYS)
    scen = tuple(_scenario_list(src, f"{where}.scenarios", t.get("scenarios", base.scenarios)))
    swept = tuple(
        _scenario_list(
            src, f"{where}.swept_scenarios", t.get("swept_scenarios", base.swept_scenarios)
        )
    )
    sysctls = base.sysctls
    if "sysctls" in t:
        tab = _table(src, f"{where}.sysctls", t["sysctls"])
        sysctls = tuple(
            (_sysctl_name(src, f"{where}.sysctls", k), _values(src, f"{where}.sysctls.{k}", v))
            for k, v in tab.items()
        )
    fixed = base.fixed
    if "fixed" in t:
        tab = _table(src, f"{where}.fixed", t["fixed"])
        fixed = tuple(
            (_sysctl_name(src, f"{where}.fixed", k), _value(src, f"{where}.fixed.{k}", v))
            for k, v in tab.items()
        )
    lim = base.limits
    limits = Limits(
        window_s=_num(src, f"{where}.window_s", t.get("window_s", lim.window_s)),
        iteration_cap=_int(
            src, f"{where}.iteration_cap", t.get("iteration_cap", lim.iteration_cap), 1
        ),
        stall_s=_num(src, f"{where}.stall_s", t.get("stall_s", lim.stall_s)),
        sample_s=_num(src, f"{where}.sample_s", t.get("sample_s", lim.sample_s)),
        collapse_s=_num(src, f"{where}.collapse_s", t.get("collapse_s", lim.collapse_s), zero=True),
        knee_margin=_int(src, f"{where}.knee_margin", t.get("knee_margin", lim.knee_margin), 0),
        knee_margin_s=_num(
            src, f"{where}.knee_margin_s", t.get("knee_margin_s", lim.knee_margin_s), zero=True
        ),
    )
    trials = _int(src, f"{where}.trials", t.get("trials", base.trials), 1)
    return Sweep(scen, sysctls, fixed, trials, limits, swept)


def _kernel(src: str, i: int, t: dict[str, Any]) -> KernelSpec:
    where = f"kernel[{i}]"
    name = _str(src, f"{where}.name", _required(src, where, t, "name"))
    if not _NAME.fullmatch(name):
        raise ConfigError(
            src, f"{where}.name", f"{name!r}; expected letters, digits, '.', '_', '-'"
        )
    where = f"kernel[{i}] ({name})"
    kind = _required(src, where, t, "source")
    desc = _str(src, f"{where}.description", t["description"]) if "description" in t else ""
    common = {"name", "source", "description"}
    if kind == "host":
        _only_keys(src, where, t, common)
        return KernelSpec(name, HostSource(), desc)
    if kind == "debian":
        _only_keys(src, where, t, common | {"suite", "package", "modules_package"})
        suite = _str(src, f"{where}.suite", _required(src, where, t, "suite"))
        pkg = _str(src, f"{where}.package", _required(src, where, t, "package"))
        mods = t.get("modules_package")
        mods = _str(src, f"{where}.modules_package", mods) if mods is not None else None
        return KernelSpec(name, DebianSource(suite, pkg, mods), desc)
    if kind == "path":
        _only_keys(src, where, t, common | {"vmlinuz", "modules"})
        base = Path(src).parent
        vmlinuz = (
            base
            / Path(_str(src, f"{where}.vmlinuz", _required(src, where, t, "vmlinuz"))).expanduser()
        )
        mods = t.get("modules")
        modules = base / Path(_str(src, f"{where}.modules", mods)).expanduser() if mods else None
        return KernelSpec(name, PathSource(vmlinuz, modules), desc)
    raise ConfigError(src, f"{where}.source", f"{kind!r}; expected one of host, debian, path")


def _scenario_list(src: str, key: str, v: Any) -> list[str]:
    if not isinstance(v, list | tuple) or not v:
        raise ConfigError(src, key, "expected a non-empty list of scenario names")
    for s in v:
        if s not in SCENARIOS:
            raise ConfigError(
                src, key, f"unknown scenario {s!r}; expected one of {', '.join(SCENARIOS)}"
            )
    return list(v)


def _sysctl_name(src: str, key: str, name: str) -> str:
    if name not in NAMESPACED_SYSCTLS:
        known = ", ".join(sorted(NAMESPACED_SYSCTLS))
        raise ConfigError(
            src, f"{key}.{name}", f"not a known per-namespace sysctl; expected one of {known}"
        )
    return name


def _values(src: str, key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not v:
        raise ConfigError(src, key, "expected a non-empty list of values, e.g. [0, 1]")
    return tuple(_value(src, key, x) for x in v)


def _value(src: str, key: str, v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ConfigError(src, key, f'{v!r}; expected an integer or a string like "32768 60999"')
    return str(v)


def _required(src: str, where: str, t: dict[str, Any], key: str) -> Any:
    if key not in t:
        raise ConfigError(src, f"{where}.{key}", "missing")
    return t[key]


def _only_keys(src: str, where: str, t: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(t) - allowed)
    if extra:
        raise ConfigError(
            src, f"{where}.{extra[0]}", f"unknown key; expected one of {', '.join(sorted(allowed))}"
        )


def _list_of_tables(src: str, key: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    v = data.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise ConfigError(src, key, "expected [[kernel]] tables")
    if not v:
        raise ConfigError(src, key, "no [[kernel]] declared; at least one is needed")
    return v


def _table(src: str, key: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ConfigError(src, key, f"expected a table, got {type(v).__name__}")
    return v


def _str(src: str, key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(src, key, f"{v!r}; expected a non-empty string")
    return v


def _bool(src: str, key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(src, key, f"{v!r}; expected true or false")
    return v


def _int(src: str, key: str, v: Any, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(src, key, f"{v!r}; expected an integer >= {minimum}")
    return v


def _num(src: str, key: str, v: Any, zero: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or (v == 0 and not zero):
        expected = "a number >= 0" if zero else "a positive number"
        raise ConfigError(src, key, f"{v!r}; expected {expected}")
    return float(v)
