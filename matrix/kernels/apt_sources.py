"""Where Debian packages come from, and how to read an archive's indexes (whether to
trust them is `matrix.kernels.archive_trust`'s job).

The mirror is whatever this machine's apt already uses (so the repository never names a
host); a setting or `KMATRIX_MIRROR` overrides it. The index helpers read the InRelease
and Packages formats apt itself uses, so no apt state on the machine is touched.
"""

from __future__ import annotations

import difflib
import gzip
import lzma
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from matrix.errors import CatalogError
from matrix.kernels.debversion import sort_key

APT_DIR = Path("/etc/apt")
MIRROR_ENV = "KMATRIX_MIRROR"
SECURITY_ENV = "KMATRIX_SECURITY_MIRROR"
NO_SECURITY = frozenset({"sid", "unstable", "experimental", "rc-buggy"})
_OPTIONS_RE = re.compile(r"^\[[^\]]*\]\s*")


@dataclass(frozen=True)
class AptSource:
    """One `deb` entry: a base URI and the suites it serves."""

    uri: str
    suites: tuple[str, ...]
    origin: str

    @property
    def is_security(self) -> bool:
        return self.uri.rstrip("/").endswith("-security") or any(
            s.endswith("-security") or s.endswith("/updates") for s in self.suites
        )


@dataclass(frozen=True)
class Mirrors:
    """The archive to download from, the security archive (if any), and why they were chosen."""

    archive: str
    security: str | None
    origin: str


def deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Yield deb822 paragraphs as {lower-case field: value}, skipping comments."""
    fields: dict[str, str] = {}
    key = ""
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, ""
        elif line[0] in " \t" and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()


def parse_deb822(text: str, origin: str) -> list[AptSource]:
    """Parse a `.sources` file; only enabled `deb` entries count (not deb-src)."""
    sources = []
    for fields in deb822_stanzas(text):
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() in ("no", "false", "0"):
            continue
        suites = tuple(fields.get("suites", "").split())
        sources += [AptSource(uri, suites, origin) for uri in fields.get("uris", "").split()]
    return sources


def parse_one_line(text: str, origin: str) -> list[AptSource]:
    """Parse the one-line `deb [opts] URI suite components...` format."""
    sources = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb ") and not line.startswith("deb\t"):
            continue
        words = _OPTIONS_RE.sub("", line[3:].strip()).split()
        if len(words) >= 2:
            sources.append(AptSource(words[0], (words[1],), origin))
    return sources


def source_files(apt_dir: Path = APT_DIR) -> list[Path]:
    """The files apt reads, in apt's order: sources.list, then sources.list.d/ sorted."""
    files = [apt_dir / "sources.list"]
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    return files


def read_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """All enabled `deb` entries of this machine's apt configuration."""
    sources: list[AptSource] = []
    for path in source_files(apt_dir):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        parse = parse_deb822 if path.suffix == ".sources" else parse_one_line
        sources += parse(text, str(path))
    return sources


def _archive_score(source: AptSource) -> int:
    """Prefer a URI ending in /debian, then any Debian-looking one; 0 means not an archive."""
    path = source.uri.rstrip("/")
    if source.is_security or not path.startswith(("http://", "https://", "file:")):
        return 0
    return 2 if path.endswith("/debian") else 1 if "debian" in path else 0


def find_mirrors(
    setting: str | None = None,
    security_setting: str | None = None,
    env: Mapping[str, str] | None = None,
    apt_dir: Path = APT_DIR,
) -> Mirrors:
    """Pick the archive and security URIs: explicit setting > environment > apt config."""
    env = os.environ if env is None else env
    sources = read_sources(apt_dir)
    security = (
        security_setting
        or env.get(SECURITY_ENV)
        or next((s.uri.rstrip("/") for s in sources if s.is_security), None)
    )
    if setting or env.get(MIRROR_ENV):
        origin = "setting mirror" if setting else f"${MIRROR_ENV}"
        archive = (setting or env[MIRROR_ENV]).rstrip("/")
        return Mirrors(archive, security or _security_sibling(archive), origin)
    candidates = [s for s in sources if _archive_score(s)]
    if not candidates:
        looked = ", ".join(str(p) for p in source_files(apt_dir))
        raise CatalogError(
            f"no Debian archive found in the apt configuration (looked at: {looked}); "
            f"set [settings] mirror in kernels.toml or ${MIRROR_ENV}, "
            'e.g. mirror = "http://<your mirror>/debian"'
        )
    best = max(candidates, key=_archive_score)
    return Mirrors(best.uri.rstrip("/"), security, f"apt: {best.origin}")


def _security_sibling(archive: str) -> str | None:
    """Mirrors that carry /debian usually carry /debian-security next to it."""
    return archive + "-security" if archive.endswith("/debian") else None


def security_suite(suite: str) -> str | None:
    """The -security companion of a release codename (bookworm -> bookworm-security)."""
    return None if "-" in suite or suite in NO_SECURITY else f"{suite}-security"


def read_packages(path: Path) -> str:
    """The text of a downloaded Packages.xz or Packages.gz."""
    opener = lzma.open if path.suffix == ".xz" else gzip.open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


def release_body(text: str) -> str:
    """The Release text inside a (possibly clearsigned) InRelease, dash-escaping undone."""
    if not text.startswith("-----BEGIN PGP SIGNED MESSAGE-----"):
        return text
    _, _, rest = text.partition("\n\n")
    body = rest.split("\n-----BEGIN PGP SIGNATURE-----", 1)[0]
    return "\n".join(line[2:] if line.startswith("- ") else line for line in body.split("\n"))


def release_sha256(release: str) -> dict[str, tuple[str, int]]:
    """Map index path (e.g. main/binary-amd64/Packages.xz) to (sha256, size) from Release."""
    entries: dict[str, tuple[str, int]] = {}
    in_section = False
    for line in release.splitlines():
        if not line.startswith((" ", "\t")):
            in_section = line.strip() == "SHA256:"
            continue
        words = line.split()
        if in_section and len(words) == 3:
            entries[words[2]] = (words[0].lower(), int(words[1]))
    return entries


def packages(text: str, wanted: re.Pattern[str] | None = None) -> Iterator[dict[str, str]]:
    """Yield Packages stanzas as {Field: value}; with `wanted`, only matching package names."""
    for stanza in text.split("\n\n"):
        first = stanza.lstrip("\n").partition("\n")[0]
        if not first.startswith("Package:"):
            continue
        if wanted is not None and not wanted.match(first[8:].strip()):
            continue
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and line[0] not in " \t" and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        yield fields


@dataclass(frozen=True)
class DebFile:
    """One .deb as a Packages index describes it."""

    package: str
    version: str
    url: str
    sha256: str
    size: int
    suite: str


@dataclass(frozen=True)
class SuiteIndex:
    """The linux-* stanzas of one suite's Packages index, by package name."""

    base: str
    suite: str
    stanzas: dict[str, list[dict[str, str]]]
    verified: bool
    note: str

    def matching(self, pattern: str) -> Iterator[dict[str, str]]:
        wanted = glob_regex(pattern)
        for name, stanzas in self.stanzas.items():
            if wanted.match(name):
                yield from stanzas

    def debfile(self, kernel: str, stanza: dict[str, str]) -> DebFile:
        """The entry as a DebFile, refused unless every field is safe to build paths from."""
        where = f"kernel {kernel}: {self.base}/dists/{self.suite}"
        try:
            deb = DebFile(
                stanza["Package"],
                stanza["Version"],
                f"{self.base}/{stanza['Filename']}",
                stanza["SHA256"].lower(),
                int(stanza["Size"]),
                self.suite,
            )
        except (KeyError, ValueError) as exc:
            raise CatalogError(f"{where}: entry {stanza.get('Package')} lacks {exc}") from exc
        if problem := entry_problem(deb, stanza["Filename"]):
            raise CatalogError(f"{where}: Packages entry {deb.package!r} {problem}; refusing it")
        return deb


_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+\Z")
_VERSION_RE = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~]*(?:-[A-Za-z0-9.+~]+)*\Z")
_POOL_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~_%-]*\Z")
_SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")
MAX_FIELD = 200


def entry_problem(deb: DebFile, filename: str) -> str:
    """What makes an index entry unsafe (cache paths and URLs are built from it), or ""."""
    package, version = deb.package, deb.version
    if len(package) > MAX_FIELD or not _PACKAGE_RE.match(package):
        return f"has Package {package!r}; expected Debian policy's [a-z0-9][a-z0-9+.-]+"
    if len(version) > MAX_FIELD or not _VERSION_RE.match(version):
        return (
            f"has Version {version!r}; expected [epoch:]upstream[-revision] of "
            "0-9A-Za-z.+~ starting with a digit"
        )
    parts = filename.split("/")
    if (
        len(filename) > 4 * MAX_FIELD
        or parts[0] != "pool"
        or len(parts) < 2
        or not all(_POOL_PART_RE.match(p) for p in parts[1:])
        or not parts[-1].endswith(".deb")
    ):
        return f"has Filename {filename!r}; expected a relative pool/.../<name>.deb path"
    if not _SHA256_RE.match(deb.sha256):
        return f"has SHA256 {deb.sha256!r}; expected 64 hex digits"
    if deb.size < 0:
        return f"has Size {deb.size}; expected a size in bytes"
    return ""


def glob_regex(pattern: str) -> re.Pattern[str]:
    """fnmatch-style pattern, except that `*` never swallows a flavour such as `-rt`/`-cloud`.

    `linux-image-6.1.0-*-amd64-unsigned` must not pick `...-50-cloud-amd64-unsigned` (no 9p)
    or `-rt-`: a `*` may match '-' only when a digit follows it.
    """
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        end = pattern.find("]", i + 2) if char == "[" else -1
        if char == "*":
            out.append(r"(?:[^-]|-(?![A-Za-z]))*")
        elif char == "?":
            out.append(".")
        elif end > 0:
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z")


def abi_key(name: str) -> tuple[int, ...]:
    """The numbers embedded in a package name (6.1.0-50 -> (6, 1, 0, 50)), as a tie-breaker."""
    return tuple(int(n) for n in re.findall(r"\d+", name))


def pick(
    kernel: str, suite: str, pattern: str, modules_pattern: str | None, indexes: list[SuiteIndex]
) -> tuple[SuiteIndex, DebFile, DebFile | None]:
    """The newest package matching `pattern` over all indexes, and its modules package."""
    matches = _matches(kernel, pattern, indexes)
    if not matches:
        raise _no_match(kernel, pattern, indexes)
    idx, best = max(matches, key=lambda m: (sort_key(m[1]["Version"]), abi_key(m[1]["Package"])))
    return with_modules(kernel, suite, idx, best, modules_pattern, indexes)


def every_build(
    kernel: str, suite: str, pattern: str, modules_pattern: str | None, indexes: list[SuiteIndex]
) -> list[tuple[SuiteIndex, DebFile, DebFile | None]]:
    """Every package matching `pattern` over all indexes, oldest first, one per version.

    What `kmatrix bisect` walks: a suite keeps a few ABIs of its kernel family (the
    point release's and the security pocket's), each a separate package name.
    """
    matches = _matches(kernel, pattern, indexes)
    if not matches:
        raise _no_match(kernel, pattern, indexes)
    matches.sort(key=lambda m: (sort_key(m[1]["Version"]), abi_key(m[1]["Package"])))
    unique = {m[1]["Version"]: m for m in matches}
    return [
        with_modules(kernel, suite, i, st, modules_pattern, indexes) for i, st in unique.values()
    ]


def _matches(
    kernel: str, pattern: str, indexes: list[SuiteIndex]
) -> list[tuple[SuiteIndex, dict[str, str]]]:
    """Every stanza matching `pattern`, each checked before its Version is compared."""
    found = [(idx, st) for idx in indexes for st in idx.matching(pattern)]
    for idx, st in found:
        idx.debfile(kernel, st)
    return found


def with_modules(
    kernel: str,
    suite: str,
    idx: SuiteIndex,
    best: dict[str, str],
    modules_pattern: str | None,
    indexes: list[SuiteIndex],
) -> tuple[SuiteIndex, DebFile, DebFile | None]:
    """The image's DebFile and, for the split layout, its modules package's."""
    image = idx.debfile(kernel, best)
    depends = [d.split()[0] for d in re.split(r"[,|]", best.get("Depends", "")) if d.strip()]
    named = [d for d in depends if d.startswith("linux-modules-")]
    modules_pattern = modules_pattern or (named[0] if named else None)
    if modules_pattern is None and image.package.startswith("linux-binary-"):
        modules_pattern = image.package.replace("linux-binary-", "linux-modules-", 1)
    if modules_pattern is None:
        return idx, image, None
    found = [
        (i, st)
        for i in indexes
        for st in i.matching(modules_pattern)
        if st.get("Version") == image.version
    ]
    if not found:
        raise CatalogError(
            f"kernel {kernel}: {image.package} {image.version} needs a modules package "
            f"matching {modules_pattern!r} at the same version, and suite {suite} has none; "
            "set modules_package in kernels.toml"
        )
    midx, mod = max(found, key=lambda m: abi_key(m[1]["Package"]))
    return idx, image, midx.debfile(kernel, mod)


def _no_match(kernel: str, pattern: str, indexes: list[SuiteIndex]) -> CatalogError:
    names = sorted({n for idx in indexes for n in idx.stanzas if n.startswith("linux-")})
    close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.5)
    hint = f"similar packages: {', '.join(close)}" if close else "no similar package names"
    suites = " + ".join(i.suite for i in indexes)
    return CatalogError(
        f"kernel {kernel}: no package in suite {suites} matches {pattern!r} ({hint})"
    )
