"""`kmatrix bisect`: the first Debian build whose verdict differs from a good build's.

The candidates are every build of the good and bad kernels' package families that their
suites (and -security pockets) still carry, in Debian version order, from the good
build to the bad one. Only the builds the bisection needs are fetched and booted, one
batch each; every step is kept in the run directory's bisect.json.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from matrix.errors import CatalogError, ConfigError
from matrix.kernels.catalog import Catalog, Resolution
from matrix.kernels.debversion import compare, sort_key
from matrix.model import DebianSource, KernelSpec, Limits
from matrix.run import rundir
from matrix.run.rounds import Rounds, make_cell
from matrix.search import threshold as th

DOC = "bisect.json"


@dataclass(frozen=True)
class Build:
    """One candidate: the family it belongs to and its exact packages."""

    family: KernelSpec
    resolution: Resolution

    @property
    def version(self) -> str:
        return self.resolution.version

    @property
    def name(self) -> str:
        """A row name that is also a safe file name and vng --rwdir path (no '@', '+', '~')."""
        return re.sub(r"[^A-Za-z0-9._-]", "_", f"{self.family.name}-{self.version}")

    def spec(self) -> KernelSpec:
        mods = self.resolution.modules
        source = DebianSource(
            self.resolution.image.suite, self.resolution.package, mods.package if mods else None
        )
        return KernelSpec(self.name, source, f"{self.resolution.package} {self.version}")

    def doc(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "package": self.resolution.package,
            "version": self.version,
            "suite": self.resolution.image.suite,
        }


def split_ref(ref: str) -> tuple[str, str | None]:
    """KERNEL or KERNEL@VERSION -> (kernel name, version or None for its newest build)."""
    name, _, version = ref.partition("@")
    return name, version or None


def pick(builds: list[Build], version: str | None, ref: str) -> Build:
    """The named build of a family (its newest when no version is given)."""
    if version is None:
        return builds[-1]
    for b in builds:
        if compare(b.version, version) == 0:
            return b
    have = ", ".join(b.version for b in builds)
    raise ConfigError("command line", ref, f"no such build; the mirror carries: {have}")


def candidates(good: Build, bad: Build, pool: list[Build]) -> list[Build]:
    """The builds from good to bad inclusive, in version order (reversed for a fix search)."""
    lo, hi = sorted((good.version, bad.version), key=sort_key)
    inside = {
        (b.resolution.package, b.version): b
        for b in pool
        if compare(lo, b.version) <= 0 and compare(b.version, hi) <= 0
    }
    ordered = sorted(inside.values(), key=lambda b: (sort_key(b.version), b.resolution.package))
    if compare(good.version, bad.version) > 0:
        ordered.reverse()
    keep = [b for b in ordered if b.version not in (good.version, bad.version)]
    return [good, *keep, bad]


def family_builds(catalog: Catalog, spec: KernelSpec) -> list[Build]:
    return [Build(spec, r) for r in catalog.builds(spec)]


@dataclass
class Bisection:
    """The candidates, what each booted one measured, and the answer so far."""

    builds: list[Build]
    scenario: str
    sysctls: tuple[tuple[str, str], ...]
    trials: int
    limits: Limits
    steps: list[dict[str, Any]] = field(default_factory=list)
    good_label: str = ""
    result: str = ""

    def probes(self) -> list[th.Probe]:
        """Steps as probes: a trial is "success" when it matches the good build's verdict."""
        return [
            th.Probe(s["index"], tuple(_same(v, self.good_label) for v in s["verdicts"]))
            for s in self.steps
        ]

    def doc(self) -> dict[str, Any]:
        return {
            "kind": "bisect",
            "scenario": self.scenario,
            "sysctls": dict(self.sysctls),
            "trials": self.trials,
            "limits": asdict(self.limits),
            "candidates": [b.doc() for b in self.builds],
            "good_verdict": self.good_label,
            "steps": self.steps,
            "result": self.result,
        }


def _same(verdict: str, good: str) -> str:
    return "infra" if verdict == "infra" else th.SUCCESS if verdict == good else "different"


def measure(bis: Bisection, index: int, rounds: Rounds, catalog: Catalog) -> None:
    """Fetch and boot one build, run its cells, and record the step."""
    build = bis.builds[index]
    step: dict[str, Any] = dict(build.doc(), index=index, verdicts=[], label="infra", failure="")
    try:
        kernel = catalog.fetch_build(build.spec(), replace(build.resolution, kernel=build.name))
    except CatalogError as e:
        step.update(failure=str(e), verdicts=["infra"] * bis.trials)
        bis.steps.append(step)
        return
    rounds.add_kernel(kernel)
    cat = rounds.config.catalogue
    cells = [
        make_cell(kernel, bis.scenario, bis.sysctls, t, bis.limits, cat) for t in range(bis.trials)
    ]
    verdicts = rounds.run({kernel.spec.name: cells})
    probe = th.Probe(index, tuple(verdicts[c.id] for c in cells))
    step.update(
        verdicts=list(probe.verdicts),
        label=probe.label,
        release=kernel.release,
        cells=[c.id for c in cells],
        failure=rounds.batch_failure(kernel.spec.name),
    )
    bis.steps.append(step)


def run_bisection(bis: Bisection, rounds: Rounds, catalog: Catalog) -> None:
    """Good, then bad, then one build at a time towards the first that differs."""
    n = len(bis.builds)
    measure(bis, 0, rounds, catalog)
    bis.good_label = bis.steps[0]["label"]
    if bis.good_label in ("tie", "infra"):
        bis.result = f"the good build gave no clear verdict ({bis.good_label}); nothing to compare"
        return _save(bis, rounds)
    measure(bis, n - 1, rounds, catalog)
    _save(bis, rounds)
    while not rounds.stop.is_set() and (i := th.bisect_next(bis.probes(), n)) is not None:
        measure(bis, i, rounds, catalog)
        _save(bis, rounds)
    bis.result = conclusion(bis)
    _save(bis, rounds)


def conclusion(bis: Bisection) -> str:
    """The answer in one sentence, including when the probes cannot give one."""
    b = th.bracket(bis.probes())
    by_index = {s["index"]: s for s in bis.steps}
    if not b.found:
        return f"no build differs: every measured build gives {bis.good_label}"
    first, last = by_index[b.hi], by_index[b.lo]  # type: ignore[index]
    text = (
        f"first build that differs: {first['package']} {first['version']} ({first['label']}); "
        f"last like the good one: {last['package']} {last['version']} ({bis.good_label})"
    )
    if b.width and b.width > 1:
        text += f"; {b.width - 1} builds between them could not be measured"
    if b.changes > 1:
        text += f"; the verdict changes {b.changes} times along the builds (not monotonic)"
    return text


def thin_note(builds: list[Build]) -> str:
    """Said plainly when the mirror carries too few builds for a bisection to narrow."""
    between = len(builds) - 2
    if between <= 0:
        return "the mirror carries no build between the good and the bad one: only the two ends"
    if between == 1:
        return "the mirror carries only one build between the good and the bad one"
    return ""


def _save(bis: Bisection, rounds: Rounds) -> None:
    rundir.write_json(rounds.run_dir / DOC, bis.doc())
