"""The scenario catalogue: the built-in directory plus the user's, one Scenario per name.

Built-in scenarios ship in the collectors' `scenarios/` folder (the four puzzles and the
example workloads); `--scenario-dir DIR` and `scenario_dirs` in [settings] add more.
Every subdirectory holding a scenario.toml is a scenario named after the subdirectory.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from matrix.errors import ConfigError
from matrix.scenarios.manifest import Scenario, load


def builtin_dir() -> Path:
    """collectors/scenarios as installed (or in the checkout, for an editable install)."""
    return Path(str(resources.files("matrix.collectors") / "scenarios"))


@dataclass(frozen=True)
class Catalogue:
    scenarios: tuple[Scenario, ...]

    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.scenarios)

    def default_names(self) -> tuple[str, ...]:
        """The scenarios a run measures when it names none."""
        return tuple(s.name for s in self.scenarios if s.default)

    def find(self, name: str) -> Scenario | None:
        return next((s for s in self.scenarios if s.name == name), None)

    def get(self, name: str, src: str = "--scenarios", key: str = "scenario") -> Scenario:
        found = self.find(name)
        if found is None:
            raise ConfigError(
                src, key, f"unknown scenario {name!r}; expected one of {', '.join(self.names())}"
            )
        return found


def scan(directory: Path, origin: str) -> list[Scenario]:
    """Every NAME/scenario.toml directly under `directory`, in name order."""
    if not directory.is_dir():
        raise ConfigError(str(directory), "(directory)", "not a directory of scenarios")
    return [load(d, origin) for d in sorted(directory.iterdir()) if (d / "scenario.toml").is_file()]


def load_catalogue(extra: Sequence[Path] = ()) -> Catalogue:
    """The built-in scenarios, then each extra directory's; a name may be defined once."""
    found: dict[str, Scenario] = {s.name: s for s in builtin().scenarios}
    for directory in extra:
        for s in scan(Path(directory).expanduser(), str(Path(directory).expanduser())):
            if s.name in found:
                raise ConfigError(
                    str(s.directory / "scenario.toml"),
                    "(directory)",
                    f"scenario {s.name!r} is already defined by {found[s.name].directory}; "
                    "expected a name of its own",
                )
            found[s.name] = s
    return Catalogue(tuple(found.values()))


@functools.cache
def builtin() -> Catalogue:
    """The shipped scenarios (read once per process)."""
    return Catalogue(tuple(scan(builtin_dir(), "built-in")))


def __getattr__(name: str):  # transitional: the old constant names
    if name == "SCENARIOS":
        return {s.name: s for s in builtin().scenarios}
    if name == "NAMESPACED_SYSCTLS":
        from matrix.scenarios.sysctls import KNOWN

        return KNOWN
    raise AttributeError(name)
