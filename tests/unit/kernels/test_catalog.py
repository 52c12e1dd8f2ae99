"""Catalog against a fake Debian mirror served on 127.0.0.1 (see tests/fixtures/catalog)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from matrix.errors import CatalogError
from matrix.kernels import apt_sources
from matrix.kernels.catalog import Catalog
from matrix.kernels.debtree import bzimage_release
from matrix.kernels.debversion import compare, sort_key
from matrix.model import DebianSource, HostSource, KernelSpec, PathSource
from tests.fixtures.debmirror import Server, build_tree, fake_bzimage, serve

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


@pytest.fixture(scope="module")
def mirror_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Copy the fixture tree, build the debs, write Packages.xz/.gz and signed InRelease."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg-deb")
    return build_tree(tmp_path_factory.mktemp("mirror"), tmp_path_factory.mktemp("debs"))


@pytest.fixture
def server(mirror_tree: Path) -> Iterator[Server]:
    srv = serve(mirror_tree)
    yield srv
    srv.stop()


@pytest.fixture
def catalog(server: Server, tmp_path: Path) -> Catalog:
    return Catalog(
        tmp_path / "cache",
        mirror=f"{server.url}/debian",
        security_mirror=f"{server.url}/debian-security",
    )


def spec(suite: str, package: str, modules: str | None = None, name: str = "k") -> KernelSpec:
    return KernelSpec(name, DebianSource(suite, package, modules))


def test_debian_version_order() -> None:
    assert compare("7.3~rc7-1~exp1", "7.3-1") < 0
    assert compare("6.12.10-1", "6.12.9-1") > 0
    assert compare("1:1.0", "9.9") > 0
    assert compare("1.0", "1.0-0") == 0
    assert compare("6.1.38-1", "6.1.38-1+b1") < 0
    versions = ["7.3-1", "7.3~rc7-1~exp1", "7.3~rc5-1~exp1", "7.2.1-1"]
    assert sorted(versions, key=sort_key) == [
        "7.2.1-1",
        "7.3~rc5-1~exp1",
        "7.3~rc7-1~exp1",
        "7.3-1",
    ]


def test_star_does_not_swallow_a_flavour() -> None:
    rx = apt_sources.glob_regex("linux-image-6.1.0-*-amd64-unsigned")
    assert rx.match("linux-image-6.1.0-50-amd64-unsigned")
    assert not rx.match("linux-image-6.1.0-50-cloud-amd64-unsigned")
    assert not rx.match("linux-image-6.1.0-50-rt-amd64-unsigned")
    assert apt_sources.glob_regex("linux-image-*-amd64-unsigned").match(
        "linux-image-6.1.0-50-amd64-unsigned"
    )
    assert apt_sources.glob_regex("linux-binary-7.[23]*-amd64").match("linux-binary-7.3-amd64")


def test_newest_pick_across_versions(catalog: Catalog) -> None:
    assert catalog.resolve(spec("bullseye", "linux-image-5.10.0-*-amd64-unsigned")).package == (
        "linux-image-5.10.0-10-amd64-unsigned"
    )
    trixie = catalog.resolve(spec("trixie", "linux-image-6.12.*+deb13-amd64-unsigned"))
    assert (trixie.package, trixie.version) == (
        "linux-image-6.12.10+deb13-amd64-unsigned",
        "6.12.10-1",
    )
    exp = catalog.resolve(spec("experimental", "linux-binary-7.3*-amd64"))
    assert exp.version == "7.3~rc7-1~exp1"
    assert exp.modules is not None and exp.modules.version == "7.3~rc7-1~exp1"


def test_security_suite_is_consulted(catalog: Catalog, server: Server, tmp_path: Path) -> None:
    res = catalog.resolve(spec("bookworm", "linux-image-6.1.0-*-amd64-unsigned"))
    assert (res.package, res.version, res.image.suite) == (
        "linux-image-6.1.0-10-amd64-unsigned",
        "6.1.38-1",
        "bookworm-security",
    )
    assert (
        res.url == f"{server.url}/debian-security/pool/updates/main/l/linux/"
        "linux-image-6.1.0-10-amd64-unsigned_6.1.38-1_amd64.deb"
    )
    assert res.verified is True and "signature verified" in res.verify_note
    plain = Catalog(tmp_path / "other")
    plain._mirrors = apt_sources.Mirrors(f"{server.url}/debian", None, "test")
    assert plain.resolve(spec("bookworm", "linux-image-6.1.0-*-amd64-unsigned")).version == (
        "6.1.27-1"
    )


def test_fetch_classic_layout(catalog: Catalog) -> None:
    s = spec("bookworm", "linux-image-6.1.0-*-amd64-unsigned", name="6.1")
    res = catalog.resolve(s)
    kernel = catalog.fetch(s)
    assert kernel.release == "6.1.0-10-amd64"
    assert kernel.vmlinuz == catalog.cache_dir / "kernels" / (
        "linux-image-6.1.0-10-amd64-unsigned_6.1.38-1/boot/vmlinuz-6.1.0-10-amd64"
    )
    assert kernel.modules_dir is not None and kernel.modules_dir.name == "6.1.0-10-amd64"
    assert kernel.modules_dir.parent.parent.name == "lib"
    assert (kernel.modules_dir / "modules.order").is_file()
    assert (kernel.sha256, kernel.package_version) == (res.sha256, "6.1.38-1")
    assert bzimage_release(kernel.vmlinuz) == "6.1.0-10-amd64"
    assert not list((catalog.cache_dir / "debs").iterdir())


def test_fetch_split_layout_infers_modules(catalog: Catalog) -> None:
    s = spec("sid", "linux-binary-7.2*-amd64", name="7.2")
    res = catalog.resolve(s)
    assert res.modules is not None
    assert (res.package, res.modules.package) == (
        "linux-binary-7.2.1+deb14-amd64",
        "linux-modules-7.2.1+deb14-amd64",
    )
    kernel = catalog.fetch(s)
    assert kernel.release == "7.2.1+deb14-amd64"
    assert kernel.vmlinuz is not None and kernel.vmlinuz.name == "vmlinuz"
    assert kernel.modules_dir == kernel.vmlinuz.parent
    assert str(kernel.modules_dir).endswith("usr/lib/modules/7.2.1+deb14-amd64")
    assert (kernel.modules_dir / "kernel/net/dummy.ko").is_file()


def test_modules_package_named_by_depends_wins() -> None:
    def stanza(pkg: str, deps: str = "") -> dict[str, str]:
        return {
            "Package": pkg,
            "Version": "1.0-1",
            "Filename": f"pool/{pkg}.deb",
            "SHA256": "ab" * 32,
            "Size": "1",
            "Depends": deps,
        }

    binary = stanza("linux-binary-9.0-amd64", "linux-modules-9.0-x (= 1.0-1)")
    idx = apt_sources.SuiteIndex(
        "http://mirror.invalid/debian",
        "sid",
        {
            "linux-binary-9.0-amd64": [binary],
            "linux-modules-9.0-amd64": [stanza("linux-modules-9.0-amd64")],
            "linux-modules-9.0-x": [stanza("linux-modules-9.0-x")],
        },
        False,
        "unsigned",
    )
    _, image, modules = apt_sources.pick("k", "sid", "linux-binary-9*-amd64", None, [idx])
    assert image.url == "http://mirror.invalid/debian/pool/linux-binary-9.0-amd64.deb"
    assert modules is not None and modules.package == "linux-modules-9.0-x"
    _, _, explicit = apt_sources.pick(
        "k", "sid", "linux-binary-9*-amd64", "linux-modules-9.0-amd64", [idx]
    )
    assert explicit is not None and explicit.package == "linux-modules-9.0-amd64"


def test_pattern_matching_nothing_names_everything(catalog: Catalog) -> None:
    with pytest.raises(CatalogError) as err:
        catalog.resolve(spec("bookworm", "linux-image-6.2.0-*-amd64-unsigned", name="six-two"))
    text = str(err.value)
    for part in (
        "six-two",
        "bookworm",
        "linux-image-6.2.0-*-amd64-unsigned",
        "similar packages",
        "linux-image-6.1.0-10-amd64-unsigned",
    ):
        assert part in text


def test_unknown_suite(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match=r"kernel odd: suite 'nosuch' not found.*'linux-x-\*'"):
        catalog.resolve(spec("nosuch", "linux-x-*", name="odd"))


def _nothing_cached(catalog: Catalog, s: KernelSpec) -> None:
    assert catalog.cached(s) is None
    assert not [p for p in (catalog.cache_dir / "debs").iterdir()]
    assert not [
        p for p in (catalog.cache_dir / "kernels").iterdir() if not p.name.endswith(".lock")
    ]


def test_bad_hash_is_rejected_and_removed(catalog: Catalog) -> None:
    s = spec("broken", "linux-image-6.6.0-1-amd64-unsigned", name="bad")
    with pytest.raises(CatalogError) as err:
        catalog.fetch(s)
    text = str(err.value)
    assert "kernel bad" in text and "checksum mismatch" in text
    assert "1" * 64 in text and "linux-image-6.6.0-1-amd64-unsigned_6.6.3-1_amd64.deb" in text
    assert re.search(r"got [0-9a-f]{64}", text)
    _nothing_cached(catalog, s)


def test_truncated_download_is_not_used(catalog: Catalog) -> None:
    s = spec("broken", "linux-image-6.6.0-2-amd64-unsigned", name="cut")
    with pytest.raises(CatalogError, match=r"kernel cut: .*truncated/.*: truncated: got \d+ of"):
        catalog.fetch(s)
    _nothing_cached(catalog, s)


def test_meta_package_without_vmlinuz(catalog: Catalog) -> None:
    s = spec("sid", "linux-image-7.2*-amd64", name="meta")
    with pytest.raises(CatalogError, match="kernel meta: .* holds no vmlinuz.*linux-binary"):
        catalog.fetch(s)
    _nothing_cached(catalog, s)


def test_second_fetch_needs_no_network(catalog: Catalog, server: Server) -> None:
    s = spec("sid", "linux-binary-7.2*-amd64")
    first = catalog.fetch(s)
    server.stop()
    again = Catalog(catalog.cache_dir, mirror="http://127.0.0.1:9/nowhere")
    assert again.cached(s) == first
    assert again.fetch(s) == first
    assert again.resolve(s).version == "7.2.1-1"
    with pytest.raises(CatalogError, match="cannot reach"):
        again.fetch(s, refresh=True)


def test_refresh_reuses_the_packages_index(catalog: Catalog, server: Server) -> None:
    s = spec("bullseye", "linux-image-5.10.0-*-amd64-unsigned")
    catalog.fetch(s)
    fresh = Catalog(catalog.cache_dir, mirror=f"{server.url}/debian", security_mirror=None)
    fresh._mirrors = apt_sources.Mirrors(f"{server.url}/debian", None, "test")
    server.requests.clear()
    assert fresh.fetch(s, refresh=True).release == "5.10.0-10-amd64"
    assert server.requests == ["/debian/dists/bullseye/InRelease"]


def test_progress_reports_bytes(server: Server, tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    cat = Catalog(
        tmp_path,
        mirror=f"{server.url}/debian",
        security_mirror=f"{server.url}/debian-security",
        progress=lambda label, done, total: seen.append((label, done, total)),
    )
    cat.fetch(spec("experimental", "linux-binary-7.3*-amd64", name="exp"))
    labels = {label for label, _, _ in seen}
    assert "exp: linux-binary-7.3-amd64_7.3~rc7-1~exp1_amd64.deb" in labels
    assert all(label.startswith("exp: ") for label in labels)
    assert all(done == total for label, done, total in seen if label.endswith(".deb"))


def test_path_and_host_sources(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "cache", mirror="http://127.0.0.1:9/nowhere")
    image = tmp_path / "bzImage"
    image.write_bytes(fake_bzimage("6.9.0-custom"))
    kernel = cat.fetch(KernelSpec("mine", PathSource(image)))
    assert kernel.release == "6.9.0-custom" and kernel.vmlinuz == image
    assert kernel.sha256 == hashlib.sha256(image.read_bytes()).hexdigest()
    mods = tmp_path / "lib/modules/6.9.1"
    mods.mkdir(parents=True)
    assert cat.fetch(KernelSpec("mine", PathSource(image, mods))).release == "6.9.1"
    with pytest.raises(CatalogError, match=r"kernel gone: vmlinuz .*/missing does not exist"):
        cat.fetch(KernelSpec("gone", PathSource(tmp_path / "missing")))
    assert cat.cached(KernelSpec("gone", PathSource(tmp_path / "missing"))) is None
    host = cat.fetch(KernelSpec("host", HostSource()))
    assert host.release == os.uname().release and host.vmlinuz is None
    with pytest.raises(CatalogError, match="kernel host: a host kernel"):
        cat.resolve(KernelSpec("host", HostSource()))


def test_stale_resolution_is_refreshed(catalog: Catalog) -> None:
    s = spec("bookworm", "linux-image-6.1.0-*-amd64-unsigned")
    catalog.resolve(s)
    (path,) = (catalog.cache_dir / "resolutions").iterdir()
    data = json.loads(path.read_text())
    data["image"].update(version="6.1.20-1", url=data["image"]["url"].replace("6.1.38", "6.1.20"))
    path.write_text(json.dumps(data))
    assert catalog.resolve(s).version == "6.1.20-1"
    assert catalog.fetch(s).package_version == "6.1.38-1"
