"""A hostile mirror: whatever index, entry or package it forges is refused, nothing lands
outside the cache, and the one way round signature checks is explicit and recorded.

Every suite below is served by the real HTTP fixture (tests/fixtures/debmirror.py) next to
the ordinary signed ones; the signing keys are throwaway test keys, and only the fixture's
own archive key is trusted (through $KMATRIX_KEYRING, while the server runs).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from matrix.errors import CatalogError
from matrix.kernels import archive_trust
from matrix.kernels.catalog import Catalog, Progress
from matrix.kernels.debtree import find_kernel as _find_kernel
from matrix.model import DebianSource, KernelSpec
from matrix.plan import config
from matrix.report import render as report
from matrix.results import table as results
from matrix.run import job
from tests.fixtures.debmirror import (
    PAD,
    Server,
    build_deb,
    build_tree,
    deb_stanza,
    fake_bzimage,
    serve,
    signing_key,
    write_suite,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: device nodes and setuid files"),
]

REPO = Path(__file__).resolve().parents[2]
REL = "6.6.0-9-amd64"
PKG = f"linux-image-{REL}-unsigned"
POOL = "pool/main/l/linux"


def _deb(top: Path, work: Path, filename: str, package: str = PKG, **kw: object) -> Path:
    """Build a .deb at `filename` under the archive (or above it, for an escaping one)."""
    out = top / "debian" / filename
    build_deb(package, "1.0-1", out, work / out.name, **kw)  # type: ignore[arg-type]
    return out


def _suite(top: Path, suite: str, stanzas: list[str], **kw: object) -> Path:
    suite_dir = top / "debian" / "dists" / suite
    kw.setdefault("key", signing_key())
    write_suite(suite_dir, "\n".join(stanzas), **kw)  # type: ignore[arg-type]
    return suite_dir


def _device(root: Path) -> None:
    node = root / "lib" / "modules" / f"{REL}-dev" / "null"
    node.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))


def _setuid(root: Path) -> None:
    tool = root / "usr" / "bin" / "helper"
    tool.parent.mkdir(parents=True, exist_ok=True)
    tool.write_bytes(b"#!/bin/sh\n")
    tool.chmod(0o4755)


def entry_name(deb: Path) -> str:
    return f"{POOL}/{deb.name}"


def _classic(rel: str) -> dict[str, bytes]:
    return {
        f"boot/vmlinuz-{rel}": fake_bzimage(rel),
        f"lib/modules/{rel}/modules.order": b"kernel/net/dummy.ko\n",
    }


LINK_CASES = {
    "abs-modules": "lib/modules is an absolute link to a directory outside",
    "rel-modules": "lib/modules is a relative link climbing out of the tree",
    "abs-file": "a file in the modules dir is an absolute link to /etc/passwd",
    "rel-file": "a file in the modules dir is a relative link climbing to /etc/passwd",
    "device": "a character device node",
}


def _link_debs(top: Path, work: Path, outside: Path) -> list[str]:
    """One package per LINK_CASES entry, plus a setuid one that is fine once cleaned."""
    boot = {f"boot/vmlinuz-{REL}": _classic(REL)[f"boot/vmlinuz-{REL}"]}
    cases: dict[str, dict[str, object]] = {
        "abs-modules": {"tree": boot, "links": {"lib/modules": str(outside)}},
        "rel-modules": {"tree": boot, "links": {"lib/modules": "../../../../outside"}},
        "abs-file": {"links": {f"lib/modules/{REL}/modules.builtin": "/etc/passwd"}},
        "rel-file": {"links": {f"lib/modules/{REL}/x.ko": "../" * 12 + "etc/passwd"}},
        "device": {"extra": _device},
        "setuid": {
            "extra": _setuid,
            "links": {"usr/share/doc/k": "linux-base", "usr/share/doc/b": "../doc/k"},
        },
    }
    stanzas = []
    for case, kw in cases.items():
        package = f"linux-image-{case}-unsigned"
        kw.setdefault("tree", _classic(REL))
        deb = _deb(top, work, f"{POOL}/{package}_1.0-1_amd64.deb", package, **kw)
        stanzas.append(deb_stanza(package, "1.0-1", entry_name(deb), deb))
    return stanzas


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The ordinary fixture tree plus one hostile suite per way a mirror can lie."""
    if shutil.which("dpkg-deb") is None or shutil.which("gpg") is None:
        pytest.skip("needs dpkg-deb and gpg")
    top = build_tree(tmp_path_factory.mktemp("mirror"), tmp_path_factory.mktemp("debs"))
    work = tmp_path_factory.mktemp("hostile-debs")
    outside = tmp_path_factory.mktemp("outside")
    (outside / REL).mkdir()
    (outside / REL / "modules.order").write_text("host file\n")
    good = _deb(top, work, f"{POOL}/{PKG}_1.0-1_amd64.deb")
    entry = deb_stanza(PKG, "1.0-1", entry_name(good), good)
    _suite(top, "good", [entry])
    _suite(top, "unsigned", [entry], key=None)
    _suite(top, "otherkey", [entry], key=signing_key("stranger"))
    _suite(top, "expired", [entry], key=signing_key("lapsed", expired=True))
    _suite(top, "replay", [entry], names="bullseye")
    tampered = _suite(top, "badsig", [entry]) / "InRelease"
    tampered.write_text(tampered.read_text().replace("Origin: Debian", "Origin: Debiam"))
    only_release = _suite(top, "releaseonly", [entry], key=None)
    (only_release / "InRelease").rename(only_release / "Release")
    _suite(top, "evil-version", [deb_stanza(PKG, "1/../../../escaped", entry_name(good), good)])
    shutil.copy(good, top / "outside.deb")
    _suite(top, "evil-filename", [deb_stanza(PKG, "1.0-1", "pool/../../outside.deb", good)])
    evil_pkg = "linux-image-x/../../../escaped"
    _suite(top, "evil-package", [deb_stanza(evil_pkg, "1.0-1", entry_name(good), good)])
    _suite(top, "empty-version", [deb_stanza(PKG, "", entry_name(good), good)])
    big = _deb(top, work, f"{POOL}/oversized/{PKG}_1.0-1_amd64.deb")
    _suite(top, "toobig", [deb_stanza(PKG, "1.0-1", f"{POOL}/oversized/{big.name}", big)])
    _suite(top, "links", _link_debs(top, work, outside))
    srv = serve(top)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def no_escape_hatch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(archive_trust.ALLOW_UNVERIFIED_ENV, raising=False)


def catalog(
    mirror: Server,
    cache: Path,
    allow: bool = False,
    progress: Progress | None = None,
    keyrings: tuple[Path, ...] | None = None,
) -> Catalog:
    return Catalog(
        cache,
        f"{mirror.url}/debian",
        f"{mirror.url}/debian-security",
        progress=progress,
        keyrings=keyrings,
        allow_unverified=allow,
    )


def spec(suite: str, package: str = PKG, name: str = "k") -> KernelSpec:
    return KernelSpec(name, DebianSource(suite, package))


def assert_nothing_kept(cache: Path) -> None:
    """No kernel dir, no .deb, no .part and no temp tree stayed behind in the cache."""
    kernels = cache / "kernels"
    left = (
        [p.name for p in kernels.iterdir() if not p.name.endswith(".lock")]
        if kernels.exists()
        else []
    )
    debs = list((cache / "debs").iterdir()) if (cache / "debs").exists() else []
    assert left == [] and debs == []


# --- signatures and suites -------------------------------------------------------------


@pytest.mark.parametrize(
    ("suite", "why"),
    [
        ("unsigned", "InRelease is not signed"),
        ("otherkey", "signed by a key that is not in the keyring"),
        ("expired", "signed by an expired key"),
    ],
)
def test_unverified_index_is_refused(mirror: Server, tmp_path: Path, suite: str, why: str) -> None:
    """Unsigned, signed by an unknown key, or by a trusted key that has expired."""
    rings = (signing_key().keyring, signing_key("lapsed", expired=True).keyring)
    cache = tmp_path / "cache"
    with pytest.raises(CatalogError) as err:
        catalog(mirror, cache, keyrings=rings).fetch(spec(suite, name="nope"))
    text = str(err.value)
    assert err.value.exit_code == 4
    assert f"kernel nope: {mirror.url}/debian/dists/{suite}/InRelease: " in text
    assert why in text and "refusing an index not verified" in text
    assert "allow_unverified = true" in text and archive_trust.ALLOW_UNVERIFIED_ENV in text
    assert not (cache / "resolutions").exists()
    assert list(cache.glob(f"indexes/*/{suite}/*")) == []


def test_bad_signature_is_refused_even_when_unverified_is_allowed(
    mirror: Server, tmp_path: Path
) -> None:
    for allow in (False, True):
        with pytest.raises(CatalogError, match=r"dists/badsig/InRelease: bad signature"):
            catalog(mirror, tmp_path / "cache", allow=allow).fetch(spec("badsig"))


def test_index_for_another_suite_is_refused(mirror: Server, tmp_path: Path) -> None:
    """A correctly signed InRelease of bullseye served as `replay` (a downgrade)."""
    with pytest.raises(CatalogError) as err:
        catalog(mirror, tmp_path / "cache").resolve(spec("replay"))
    text = str(err.value)
    assert f"{mirror.url}/debian/dists/replay/InRelease" in text
    assert "Suite 'bullseye', Codename 'bullseye', not the 'replay' asked for" in text


def test_unsigned_release_is_no_fallback(mirror: Server, tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"suite 'releaseonly' not found.*no InRelease"):
        catalog(mirror, tmp_path / "cache").resolve(spec("releaseonly"))
    allowed = catalog(mirror, tmp_path / "other", allow=True).resolve(spec("releaseonly"))
    assert allowed.verified is False


def test_allow_unverified_is_the_way_round_and_is_recorded(mirror: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    kernel = catalog(mirror, cache, allow=True).fetch(spec("unsigned"))
    assert kernel.release == REL
    res = catalog(mirror, cache, allow=True).resolve(spec("unsigned"))
    assert res.verified is False and "allow_unverified" in res.verify_note
    (meta,) = (cache / "kernels").glob("*/kernel.json")
    assert json.loads(meta.read_text())["verified"] is False


def test_env_allows_unverified(
    mirror: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(archive_trust.ALLOW_UNVERIFIED_ENV, "1")
    assert catalog(mirror, tmp_path / "cache").fetch(spec("unsigned")).release == REL


def test_unverified_cache_entry_is_refused_without_the_setting(
    mirror: Server, tmp_path: Path
) -> None:
    """A kernel cached while allow_unverified was on is not reused once it is off."""
    cache = tmp_path / "cache"
    catalog(mirror, cache, allow=True).fetch(spec("unsigned"))
    strict = catalog(mirror, cache)
    assert strict.cached(spec("unsigned")) is None
    with pytest.raises(CatalogError, match="InRelease is not signed; refusing"):
        strict.fetch(spec("unsigned"))


def test_kernel_json_marked_unverified_is_reinstalled(mirror: Server, tmp_path: Path) -> None:
    """A cached kernel dir whose kernel.json says unverified is replaced from a verified index."""
    cache = tmp_path / "cache"
    first = catalog(mirror, cache).fetch(spec("good"))
    (meta,) = (cache / "kernels").glob("*/kernel.json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "verified": False}))
    again = catalog(mirror, cache)
    assert again.cached(spec("good")) is None
    assert again.fetch(spec("good")) == first
    assert json.loads(meta.read_text())["verified"] is True


# --- fields from the index ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("suite", "pattern", "field"),
    [
        ("evil-version", PKG, "Version '1/../../../escaped'"),
        ("evil-package", "linux-image-x*", "Package 'linux-image-x/../../../escaped'"),
        ("evil-filename", PKG, "Filename 'pool/../../outside.deb'"),
        ("empty-version", PKG, "Version ''"),
    ],
)
def test_hostile_index_entry_is_refused(
    mirror: Server, tmp_path: Path, suite: str, pattern: str, field: str
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(CatalogError) as err:
        catalog(mirror, cache).fetch(spec(suite, pattern, name="evil"))
    text = str(err.value)
    assert f"kernel evil: {mirror.url}/debian/dists/{suite}: Packages entry" in text
    assert field in text and "refusing it" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    assert_nothing_kept(cache)


# --- downloads and extraction --------------------------------------------------------------


def test_oversized_download_stops_at_size_plus_one(mirror: Server, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    def progress(label: str, done: int, total: int) -> None:
        if label.endswith(".deb"):
            seen.append((done, total))

    cat = catalog(mirror, tmp_path / "cache", progress=progress)
    with pytest.raises(CatalogError) as err:
        cat.fetch(spec("toobig", name="big"))
    size = seen[-1][1]
    assert f"larger than the {size} bytes the index gives; stopped after {size + 1} bytes" in str(
        err.value
    )
    assert max(done for done, _ in seen) == size + 1 < size + PAD
    assert_nothing_kept(tmp_path / "cache")


@pytest.mark.parametrize("case", sorted(LINK_CASES))
def test_package_reaching_outside_its_tree_is_refused(
    mirror: Server, tmp_path: Path, case: str
) -> None:
    (tmp_path / "outside" / REL).mkdir(parents=True)
    (tmp_path / "outside" / REL / "modules.order").write_text("host file\n")
    cache = tmp_path / "cache"
    with pytest.raises(CatalogError) as err:
        catalog(mirror, cache).fetch(spec("links", f"linux-image-{case}-unsigned", name=case))
    text = str(err.value)
    assert f"kernel {case}: linux-image-{case}-unsigned: " in text, LINK_CASES[case]
    expected = "a device, FIFO or socket" if case == "device" else "outside the package"
    assert expected in text and text.endswith("refusing it")
    assert_nothing_kept(cache)


def test_setuid_bits_are_dropped_and_inner_links_kept(mirror: Server, tmp_path: Path) -> None:
    kernel = catalog(mirror, tmp_path / "cache").fetch(spec("links", "linux-image-setuid-unsigned"))
    assert kernel.vmlinuz is not None
    root = kernel.vmlinuz.parents[1]
    assert stat.S_IMODE((root / "usr/bin/helper").stat().st_mode) == 0o755
    assert os.readlink(root / "usr/share/doc/b") == "../doc/k"


def test_finding_the_kernel_never_follows_a_link_out(tmp_path: Path) -> None:
    """Even on a tree nobody checked, lib/modules -> elsewhere yields no kernel."""
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    (outside / REL).mkdir(parents=True)
    (root / "boot").mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{REL}").write_bytes(b"x")
    (root / "lib").mkdir()
    (root / "lib" / "modules").symlink_to(outside)
    assert _find_kernel(root) is None
    (root / "lib" / "modules").unlink()
    (root / "lib" / "modules" / REL).mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{REL}").unlink()
    (root / "boot" / f"vmlinuz-{REL}").symlink_to(outside / "vmlinuz")
    (outside / "vmlinuz").write_bytes(b"x")
    assert _find_kernel(root) is None


# --- the setting, the manifest and the report -------------------------------------------------


def write_config(tmp: Path, mirror: Server, suite: str, extra: str = "") -> Path:
    path = tmp / "kernels.toml"
    path.write_text(
        f'[settings]\ncache_dir = "{tmp}/cache"\nmirror = "{mirror.url}/debian"\n'
        f'security_mirror = "{mirror.url}/debian-security"\n{extra}\n'
        f'[[kernel]]\nname = "k"\nsource = "debian"\nsuite = "{suite}"\npackage = "{PKG}"\n'
    )
    return path


def kmatrix(
    cfg: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KMATRIX_ALLOW")}
    cmd = [sys.executable, "-m", "matrix", "--config", str(cfg), *args]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cfg.parent,
        env={**base, **(env or {})},
    )


def test_cli_fails_closed_and_the_setting_opens_it(mirror: Server, tmp_path: Path) -> None:
    strict = kmatrix(write_config(tmp_path, mirror, "unsigned"), "kernels", "fetch")
    assert strict.returncode == 4, strict.stderr
    assert f"{mirror.url}/debian/dists/unsigned/InRelease" in strict.stderr
    assert "not signed" in strict.stderr
    by_env = kmatrix(
        write_config(tmp_path, mirror, "unsigned"),
        "kernels",
        "fetch",
        env={archive_trust.ALLOW_UNVERIFIED_ENV: "1"},
    )
    assert by_env.returncode == 0, by_env.stderr
    shutil.rmtree(tmp_path / "cache")
    opened = kmatrix(
        write_config(tmp_path, mirror, "unsigned", "allow_unverified = true"), "kernels", "fetch"
    )
    assert opened.returncode == 0, opened.stderr


def test_setting_must_be_a_boolean(mirror: Server, tmp_path: Path) -> None:
    proc = kmatrix(write_config(tmp_path, mirror, "good", 'allow_unverified = "yes"'), "kernels")
    assert proc.returncode == 2
    assert "settings.allow_unverified: 'yes'; expected true or false" in proc.stderr
    assert str(tmp_path / "kernels.toml") in proc.stderr


def test_manifest_and_report_header_say_unverified_was_allowed(
    mirror: Server, tmp_path: Path
) -> None:
    on = config.load(write_config(tmp_path, mirror, "unsigned", "allow_unverified = true"))
    assert job.manifest(tmp_path / "run", on, ["kmatrix"])["allow_unverified"] is True
    off = config.load(write_config(tmp_path, mirror, "good"))
    assert job.manifest(tmp_path / "run", off, ["kmatrix"])["allow_unverified"] is False
    fixture = REPO / "tests" / "fixtures" / "run_small"
    manifest = json.loads((fixture / "manifest.json").read_text())
    pages = {}
    for allowed in (False, True):
        run = results.RunData(
            run_dir=fixture,
            manifest={**manifest, "allow_unverified": allowed},
            table=pd.read_json(fixture / "table.jsonl", lines=True, dtype=False),
            details=json.loads((fixture / "details.json").read_text()),
        )
        context = report.index_context(run, report.records(run.table))
        pages[allowed] = report.environment().get_template("index.html").render(context)
    assert "allow_unverified was on" in pages[True]
    assert "allow_unverified was on" not in pages[False]
