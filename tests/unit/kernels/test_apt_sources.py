"""Reading the machine's apt configuration and the archive's index formats."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from matrix.errors import CatalogError
from matrix.kernels import apt_sources, archive_trust
from matrix.kernels.apt_sources import AptSource, Mirrors, find_mirrors

DEB822 = """\
# the main archive
Types: deb deb-src
# a comment between fields
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.invalid/debian
Suites: sid
Components: main

Types: deb-src
URIs: http://src-only.invalid/debian
Suites: sid
Components: main
"""

ONE_LINE = """\
# deb http://commented.invalid/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://one.invalid/debian bullseye main
deb-src http://one.invalid/debian bullseye main
deb http://one.invalid/debian-security bullseye-security main  # trailing comment
deb https://vendor.invalid/apt stable main
"""


def apt_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "apt" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "apt" / "sources.list.d").mkdir(parents=True, exist_ok=True)
    return tmp_path / "apt"


def test_deb822_keeps_enabled_binary_entries() -> None:
    sources = apt_sources.parse_deb822(DEB822, "x.sources")
    assert sources == [
        AptSource("http://mirror.invalid/debian", ("bookworm", "bookworm-updates"), "x.sources"),
        AptSource("http://mirror.invalid/debian-security", ("bookworm-security",), "x.sources"),
    ]
    assert [s.is_security for s in sources] == [False, True]


def test_one_line_format() -> None:
    sources = apt_sources.parse_one_line(ONE_LINE, "sources.list")
    assert [(s.uri, s.suites) for s in sources] == [
        ("http://one.invalid/debian", ("bullseye",)),
        ("http://one.invalid/debian-security", ("bullseye-security",)),
        ("https://vendor.invalid/apt", ("stable",)),
    ]


def test_mirrors_from_deb822(tmp_path: Path) -> None:
    disabled = "deb http://no.invalid/debian sid main\n"
    root = apt_dir(
        tmp_path,
        {"sources.list.d/debian.sources": DEB822, "sources.list.d/ignored.list.disabled": disabled},
    )
    assert find_mirrors(env={}, apt_dir=root) == Mirrors(
        "http://mirror.invalid/debian",
        "http://mirror.invalid/debian-security",
        f"apt: {root}/sources.list.d/debian.sources",
    )


def test_mirrors_from_one_line_list_prefers_a_debian_path(tmp_path: Path) -> None:
    root = apt_dir(tmp_path, {"sources.list": ONE_LINE})
    mirrors = find_mirrors(env={}, apt_dir=root)
    assert (mirrors.archive, mirrors.security) == (
        "http://one.invalid/debian",
        "http://one.invalid/debian-security",
    )


def test_setting_beats_environment_beats_apt(tmp_path: Path) -> None:
    root = apt_dir(tmp_path, {"sources.list": ONE_LINE})
    env = {"KMATRIX_MIRROR": "http://env.invalid/debian/"}
    assert find_mirrors("http://set.invalid/debian", env=env, apt_dir=root).archive == (
        "http://set.invalid/debian"
    )
    from_env = find_mirrors(env=env, apt_dir=root)
    assert (from_env.archive, from_env.origin) == ("http://env.invalid/debian", "$KMATRIX_MIRROR")
    assert from_env.security == "http://one.invalid/debian-security"


def test_security_is_derived_when_apt_has_none(tmp_path: Path) -> None:
    root = apt_dir(tmp_path, {})
    assert find_mirrors("http://set.invalid/debian", env={}, apt_dir=root).security == (
        "http://set.invalid/debian-security"
    )
    assert find_mirrors("http://set.invalid/pool", env={}, apt_dir=root).security is None
    env = {"KMATRIX_SECURITY_MIRROR": "http://sec.invalid/ds"}
    assert find_mirrors("http://set.invalid/debian", env=env, apt_dir=root).security == (
        "http://sec.invalid/ds"
    )


def test_no_archive_is_a_clear_error(tmp_path: Path) -> None:
    root = apt_dir(tmp_path, {"sources.list.d/vendor.list": "deb https://vendor.invalid/apt x y\n"})
    with pytest.raises(CatalogError) as err:
        find_mirrors(env={}, apt_dir=root)
    text = str(err.value)
    assert f"{root}/sources.list" in text and f"{root}/sources.list.d/vendor.list" in text
    assert "[settings] mirror" in text and "KMATRIX_MIRROR" in text


RELEASE = """\
Origin: Debian
Suite: unstable
SHA256:
 {a} 64988655 main/binary-amd64/Packages
 {b}   10824484 main/binary-amd64/Packages.xz
MD5Sum:
 {c} 1 main/binary-amd64/Packages.gz
"""


def test_release_sha256_reads_only_the_sha256_section() -> None:
    text = RELEASE.format(a="A" * 64, b="b" * 64, c="c" * 32)
    assert apt_sources.release_sha256(text) == {
        "main/binary-amd64/Packages": ("a" * 64, 64988655),
        "main/binary-amd64/Packages.xz": ("b" * 64, 10824484),
    }


def test_release_body_undoes_clearsign_dash_escaping() -> None:
    signed = (
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: Debian\n"
        "- -dashed line\n-----BEGIN PGP SIGNATURE-----\n\nxyz\n-----END PGP SIGNATURE-----\n"
    )
    assert apt_sources.release_body(signed) == "Origin: Debian\n-dashed line"
    assert apt_sources.release_body("Origin: Debian\n") == "Origin: Debian\n"


def test_unsigned_inrelease_is_not_verified(tmp_path: Path) -> None:
    path = tmp_path / "InRelease"
    path.write_text("Origin: Debian\n")
    sig = archive_trust.verify_signature(path)
    assert (sig.verified, sig.note, sig.body) == (
        False,
        "InRelease is not signed",
        "Origin: Debian\n",
    )


def test_text_after_the_signature_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "InRelease"
    path.write_text(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: Debian\n"
        "-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n"
        "SHA256:\n " + "0" * 64 + " 1 main/binary-amd64/Packages.xz\n"
    )
    with pytest.raises(CatalogError, match="malformed InRelease"):
        archive_trust.verify_signature(path, where="http://mirror.invalid/debian/dists/x/InRelease")


def _fake_gpgv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: str, code: int, stderr: str = ""
) -> None:
    """A gpgv first on PATH: `status` to its --status-fd, `stderr` to stderr, exit `code`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "gpgv"
    script.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        "fd = int(sys.argv[sys.argv.index('--status-fd') + 1])\n"
        f"os.write(fd, {status.encode()!r})\nsys.stderr.write({stderr!r})\n"
        f"print('Origin: Debian')\nsys.exit({code})\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def _signed(tmp_path: Path) -> Path:
    path = tmp_path / "InRelease"
    path.write_text(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: Debian\n"
        "-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n"
    )
    return path


def test_gpgv_exit_status_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GOODSIG and VALIDSIG in the status output are not enough when gpgv exits non-zero."""
    _fake_gpgv(tmp_path, monkeypatch, "[GNUPG:] GOODSIG 1234 k\n[GNUPG:] VALIDSIG ABCD\n", 1)
    ring = tmp_path / "ring.gpg"
    ring.write_bytes(b"")
    with pytest.raises(CatalogError, match="bad signature"):
        archive_trust.verify_signature(_signed(tmp_path), [ring])


def test_only_status_lines_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GOODSIG in gpgv's messages is no status line, and an expired key is not trusted."""
    ring = tmp_path / "ring.gpg"
    ring.write_bytes(b"")
    status = "[GNUPG:] EXPKEYSIG 1234 k\n[GNUPG:] VALIDSIG AB\n"
    _fake_gpgv(tmp_path, monkeypatch, status, 0, stderr="[GNUPG:] GOODSIG 1234 k\n")
    sig = archive_trust.verify_signature(_signed(tmp_path), [ring])
    assert sig.verified is False and "expired key" in sig.note


def test_good_status_and_exit_zero_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ring = tmp_path / "ring.gpg"
    ring.write_bytes(b"")
    _fake_gpgv(tmp_path, monkeypatch, "[GNUPG:] GOODSIG 1234 k\n[GNUPG:] VALIDSIG AB\n", 0)
    sig = archive_trust.verify_signature(_signed(tmp_path), [ring])
    assert (sig.verified, sig.body) == (True, "Origin: Debian\n")


def test_suite_and_codename_must_match() -> None:
    body = "Origin: Debian\nSuite: oldstable\nCodename: bookworm\n"
    archive_trust.check_suite(body, "bookworm", "x")
    archive_trust.check_suite(body, "oldstable", "x")
    with pytest.raises(
        CatalogError, match=r"u/InRelease: index is for Suite 'oldstable'.*'trixie'"
    ):
        archive_trust.check_suite(body, "trixie", "u/InRelease")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("Version", "1/../../../../etc/cron.d"),
        ("Version", ""),
        ("Version", "1.0 -1"),
        ("Version", "a1.0-1"),
        ("Package", "linux-image-../../x"),
        ("Package", "Linux"),
        ("Filename", "pool/../../etc/x.deb"),
        ("Filename", "/etc/passwd"),
        ("Filename", "dists/x.deb"),
        ("Filename", "pool/main/x.deb?y"),
        ("Filename", "pool/main/"),
        ("SHA256", "zz"),
        ("Size", "-1"),
    ],
)
def test_hostile_index_fields_are_refused(field: str, value: str) -> None:
    idx = apt_sources.SuiteIndex("http://mirror.invalid/debian", "sid", {}, True, "ok")
    with pytest.raises(CatalogError, match=rf"has {field} .*; expected .*; refusing it"):
        idx.debfile("k", {**GOOD_STANZA, field: value})


GOOD_STANZA = {
    "Package": "linux-image-6.1.0-10-amd64",
    "Version": "1:6.1.38-1+b1~exp1",
    "Filename": "pool/main/l/linux/linux-image-6.1.0-10-amd64_1%3a6.1.38-1_amd64.deb",
    "SHA256": "ab" * 32,
    "Size": "10",
}


def test_policy_fields_pass() -> None:
    idx = apt_sources.SuiteIndex("http://mirror.invalid/debian", "sid", {}, True, "ok")
    deb = idx.debfile("k", GOOD_STANZA)
    assert (deb.version, deb.size) == ("1:6.1.38-1+b1~exp1", 10)
    assert idx.debfile("k", {**GOOD_STANZA, "Version": "7.3~rc7"}).version == "7.3~rc7"


@pytest.mark.skipif(
    shutil.which("gpgv") is None or not archive_trust.KEYRING.is_file(),
    reason="needs gpgv and the Debian archive keyring",
)
def test_garbage_signature_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "InRelease"
    path.write_text(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: Debian\n"
        "-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n"
    )
    with pytest.raises(CatalogError, match="bad signature"):
        archive_trust.verify_signature(path)


def test_packages_filters_by_name() -> None:
    text = (
        "Package: bash\nVersion: 5\n\nPackage: linux-image-1\nVersion: 1.0-1\n"
        "Description: x\n continued: not a field\n\n"
    )
    assert list(apt_sources.packages(text, re.compile("linux-"))) == [
        {"Package": "linux-image-1", "Version": "1.0-1", "Description": "x"}
    ]
