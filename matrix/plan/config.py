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
from matrix.model import (
    LIMIT_NAMES,
    DebianSource,
    HostSource,
    KernelSpec,
    Limits,
    PathSource,
    Sweep,
)
from matrix.plan.hosts import HostSpec, from_table
from matrix.scenarios.catalogue import Catalogue, builtin, load_catalogue
from matrix.scenarios.manifest import sysctl_key
from matrix.tomlcheck import axis
from matrix.tomlcheck import boolean as _bool
from matrix.tomlcheck import integer as _int
from matrix.tomlcheck import number as _num
from matrix.tomlcheck import only_keys as _only_keys
from matrix.tomlcheck import required as _required
from matrix.tomlcheck import string as _str
from matrix.tomlcheck import string_list as _string_list
from matrix.tomlcheck import table as _table
from matrix.tomlcheck import value as _value
from matrix.tomlcheck import values as _values


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
    boot: str = "pvh"
    """"pvh": boot a kernel's unpacked ELF where it can (`matrix.runners.pvh`); "bzimage"."""
    boot_timeout_s: float = 180.0
    known_hosts: Path | None = None
    identity: Path | None = None
    allow_unverified: bool = False
    guest_user: str | None = None
    scenario_dirs: tuple[Path, ...] = ()
    """Directories of the user's scenarios (relative ones from the config's directory)."""


@dataclass(frozen=True)
class Config:
    path: Path
    settings: Settings
    kernels: tuple[KernelSpec, ...]
    sweep: Sweep
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    hosts: tuple[HostSpec, ...] = ()
    catalogue: Catalogue = field(default_factory=builtin)

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


def load(path: Path | None = None, scenario_dirs: tuple[Path, ...] = ()) -> Config:
    """kernels.toml, with the scenarios of [settings] scenario_dirs and `scenario_dirs`."""
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
    settings = _settings(src, _table(src, "settings", data.get("settings", {})))
    cat = load_catalogue(settings.scenario_dirs + tuple(scenario_dirs))
    base = default_sweep(cat)
    profiles = _table(src, "profiles", data.get("profiles", {}))
    for pname, prof in profiles.items():
        sweep_from(src, f"profiles.{pname}", _table(src, f"profiles.{pname}", prof), base, cat)
    return Config(
        path=Path(path),
        settings=settings,
        kernels=kernels,
        sweep=sweep_from(src, "sweep", _table(src, "sweep", data.get("sweep", {})), base, cat),
        profiles=profiles,
        hosts=_hosts(src, data),
        catalogue=cat,
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


def default_sweep(cat: Catalogue | None = None) -> Sweep:
    """The catalogue's default scenarios, each with its own manifest's sysctl sweep."""
    return Sweep(scenarios=(cat or builtin()).default_names(), sysctls=None)


def apply_profile(config: Config, name: str) -> Config:
    """A profile is a [profiles.NAME] table of sweep keys laid over [sweep]."""
    if name not in config.profiles:
        known = ", ".join(sorted(config.profiles)) or "none declared"
        raise ConfigError(str(config.path), f"profiles.{name}", f"no such profile; known: {known}")
    sweep = sweep_from(
        str(config.path), f"profiles.{name}", config.profiles[name], config.sweep, config.catalogue
    )
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
    boot = t.get("boot", d.boot)
    if boot not in ("pvh", "bzimage"):
        raise ConfigError(src, "settings.boot", f"{boot!r}; expected one of pvh, bzimage")
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
        boot=boot,
        boot_timeout_s=_num(
            src, "settings.boot_timeout_s", t.get("boot_timeout_s", d.boot_timeout_s)
        ),
        allow_unverified=_bool(src, "settings.allow_unverified", t.get("allow_unverified", False)),
        guest_user=(
            guest_user(src, "settings.guest_user", t["guest_user"]) if "guest_user" in t else None
        ),
        scenario_dirs=tuple(
            base / Path(os.path.expanduser(d))
            for d in _string_list(src, "settings.scenario_dirs", t["scenario_dirs"])
        )
        if "scenario_dirs" in t
        else (),
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
    "params",
    "baseline",
    *LIMIT_NAMES,
}


def sweep_from(
    src: str, where: str, t: dict[str, Any], base: Sweep, cat: Catalogue | None = None
) -> Sweep:
    """A [sweep] or [profiles.NAME] table laid over `base`, checked against the catalogue."""
    cat = cat or builtin()
    _only_keys(src, where, t, _SWEEP_KEYS)
    scen = _scenario_list(src, f"{where}.scenarios", t.get("scenarios", base.scenarios), cat)
    swept = base.swept_scenarios
    if "swept_scenarios" in t:
        swept = _scenario_list(src, f"{where}.swept_scenarios", t["swept_scenarios"], cat)
    sysctls = base.sysctls
    if "sysctls" in t:
        tab = _table(src, f"{where}.sysctls", t["sysctls"])
        sysctls = tuple(
            (sysctl_key(src, f"{where}.sysctls", k), _values(src, f"{where}.sysctls.{k}", v))
            for k, v in tab.items()
        )
    fixed = base.fixed
    if "fixed" in t:
        tab = _table(src, f"{where}.fixed", t["fixed"])
        fixed = tuple(
            (sysctl_key(src, f"{where}.fixed", k), _value(src, f"{where}.fixed.{k}", v))
            for k, v in tab.items()
        )
    params = base.params
    if "params" in t:
        params = _params(src, f"{where}.params", _table(src, f"{where}.params", t["params"]), cat)
    baseline = _str(src, f"{where}.baseline", t["baseline"]) if "baseline" in t else base.baseline
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
    return Sweep(scen, sysctls, fixed, trials, limits, swept, params, baseline)


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


def _scenario_list(src: str, key: str, v: Any, cat: Catalogue) -> tuple[str, ...]:
    if not isinstance(v, list | tuple) or not v:
        raise ConfigError(src, key, "expected a non-empty list of scenario names")
    for s in v:
        cat.get(s, src, key)
    return tuple(v)


def _params(
    src: str, key: str, t: dict[str, Any], cat: Catalogue
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Parameter values for the run; each must be a parameter some scenario declares."""
    declared = {name for s in cat.scenarios for name, _ in s.params}
    out = []
    for name, v in t.items():
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise ConfigError(
                src, f"{key}.{name}", f"no scenario declares this parameter; declared: {known}"
            )
        out.append((name, axis(src, f"{key}.{name}", v)))
    return tuple(out)


def _list_of_tables(src: str, key: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    v = data.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise ConfigError(src, key, "expected [[kernel]] tables")
    if not v:
        raise ConfigError(src, key, "no [[kernel]] declared; at least one is needed")
    return v
