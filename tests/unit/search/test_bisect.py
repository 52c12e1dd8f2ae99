"""Build bisection without a mirror or a VM: fake indexes, a fake catalog, fake rounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from matrix.errors import ConfigError
from matrix.kernels import apt_sources
from matrix.kernels.apt_sources import DebFile, SuiteIndex
from matrix.kernels.catalog import Resolution
from matrix.model import Cell, DebianSource, KernelSpec, Limits, ResolvedKernel
from matrix.scenarios.catalogue import builtin
from matrix.search import bisect

FAMILY = KernelSpec("6.1", DebianSource("bookworm", "linux-image-6.1.0-*-amd64-unsigned"))


def stanza(abi: int, version: str) -> dict[str, str]:
    pkg = f"linux-image-6.1.0-{abi}-amd64-unsigned"
    return {
        "Package": pkg,
        "Version": version,
        "Filename": f"pool/{pkg}_{version}.deb",
        "SHA256": "ab" * 32,
        "Size": "1",
    }


def test_every_build_spans_suite_and_security_in_version_order() -> None:
    main = SuiteIndex("http://m.invalid/debian", "bookworm", {}, True, "")
    sec = SuiteIndex("http://m.invalid/debian-security", "bookworm-security", {}, True, "")
    for idx, abi, ver in ((main, 50, "6.1.176-1"), (main, 47, "6.1.170-3"), (sec, 53, "6.1.187-1")):
        idx.stanzas[f"linux-image-6.1.0-{abi}-amd64-unsigned"] = [stanza(abi, ver)]
    main.stanzas["linux-image-6.1.0-50-cloud-amd64-unsigned"] = [stanza(50, "6.1.176-1")]
    found = apt_sources.every_build("6.1", "bookworm", FAMILY.source.package, None, [sec, main])
    assert [(im.version, im.suite) for _, im, _ in found] == [
        ("6.1.170-3", "bookworm"),
        ("6.1.176-1", "bookworm"),
        ("6.1.187-1", "bookworm-security"),
    ]


def build(version: str, abi: int = 1) -> bisect.Build:
    deb = DebFile(f"linux-image-6.1.0-{abi}-amd64-unsigned", version, "u", "s", 1, "bookworm")
    return bisect.Build(FAMILY, Resolution("6.1", deb, None, True, "", ()))


POOL = [build(v, i) for i, v in enumerate(["6.1.10-1", "6.1.20-1", "6.1.30-1", "6.1.40-1"])]


def test_candidates_pick_and_names() -> None:
    assert [b.version for b in bisect.candidates(POOL[0], POOL[3], POOL)] == [
        "6.1.10-1",
        "6.1.20-1",
        "6.1.30-1",
        "6.1.40-1",
    ]
    fix = bisect.candidates(POOL[3], POOL[1], POOL)
    assert [b.version for b in fix] == ["6.1.40-1", "6.1.30-1", "6.1.20-1"]
    assert bisect.pick(POOL, None, "6.1") is POOL[-1]
    assert bisect.pick(POOL, "6.1.20-1", "6.1@6.1.20-1") is POOL[1]
    with pytest.raises(ConfigError, match="6.1.10-1"):
        bisect.pick(POOL, "6.1.99-1", "6.1@6.1.99-1")
    assert build("7.3~rc7-1~exp1").name == "6.1-7.3_rc7-1_exp1"
    assert "only the two ends" in bisect.thin_note(POOL[:2])
    assert "only one build" in bisect.thin_note(POOL[:3])
    assert bisect.thin_note(POOL) == ""


@dataclass
class FakeCatalog:
    fetched: list[str] = field(default_factory=list)

    def fetch_build(self, spec: KernelSpec, resolution: Resolution) -> ResolvedKernel:
        self.fetched.append(resolution.version)
        return ResolvedKernel(spec, release=resolution.version, package_version=resolution.version)


@dataclass
class FakeRounds:
    """Verdict by version: builds from 6.1.50 on crawl."""

    run_dir: Path
    config: object = field(default_factory=lambda: SimpleNamespace(catalogue=builtin()))
    stop: object = field(default_factory=lambda: type("S", (), {"is_set": lambda self: False})())

    def add_kernel(self, kernel: ResolvedKernel) -> None:
        pass

    def run(self, new: dict[str, list[Cell]]) -> dict[str, str]:
        ((name, cells),) = new.items()
        minor = int(name.split("-6.1.")[1].split("-")[0])
        return {c.id: "slowdown" if minor >= 50 else "success" for c in cells}

    def batch_failure(self, kernel: str) -> str:
        return ""


def test_bisection_boots_only_what_it_needs(tmp_path: Path) -> None:
    builds = [build(f"6.1.{10 * i}-1", i) for i in range(1, 10)]
    bis = bisect.Bisection(builds, "2B", (("net.ipv4.tcp_tw_reuse", "0"),), 1, Limits())
    catalog = FakeCatalog()
    bisect.run_bisection(bis, FakeRounds(tmp_path), catalog)  # type: ignore[arg-type]
    assert "6.1.50-1" in bis.result and "6.1.40-1" in bis.result
    assert len(catalog.fetched) <= 5 and catalog.fetched[:2] == ["6.1.10-1", "6.1.90-1"]
    assert (tmp_path / bisect.DOC).is_file()


def test_no_difference_is_said_plainly(tmp_path: Path) -> None:
    builds = [build(f"6.1.{i}-1", i) for i in (1, 2, 3)]
    bis = bisect.Bisection(builds, "2B", (), 1, Limits())
    bisect.run_bisection(bis, FakeRounds(tmp_path), FakeCatalog())  # type: ignore[arg-type]
    assert bis.result == "no build differs: every measured build gives success"
