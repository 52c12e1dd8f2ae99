"""Resolve kernel specs to files on disk: Debian packages are found, verified and cached.

A Debian spec names a suite and a package pattern; the newest matching package (across
the suite and its -security companion) is downloaded, checked against the SHA256 of a
Packages index whose own hash comes from the InRelease, extracted with `dpkg-deb -x`,
and cached so that a second fetch does no network work at all.

The mirror is not trusted: an InRelease must verify against the archive keyring and name
the suite asked for, or the index is refused (`allow_unverified` is the only way round);
index fields are checked before any path is built from them; downloads stop at the size
the index gives; an extracted tree may hold no link out of itself.

Cache layout under `cache_dir`: indexes/<mirror>/<suite>/ (InRelease, Packages.xz),
resolutions/<spec key>.json, debs/ (downloads in flight), kernels/<package>_<version>/
(the extracted tree plus kernel.json, written last).
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from matrix.errors import CatalogError
from matrix.kernels import apt_sources, archive_trust, debtree
from matrix.kernels.apt_sources import DebFile, SuiteIndex
from matrix.model import DebianSource, HostSource, KernelSpec, PathSource, ResolvedKernel

Progress = Callable[[str, int, int], None]
TIMEOUT_S = 60.0
CHUNK = 1 << 20
INDEX_FILES = ("main/binary-amd64/Packages.xz", "main/binary-amd64/Packages.gz")
META = "kernel.json"


@dataclass(frozen=True)
class Resolution:
    """The newest package matching a spec, plus its modules package when the layout is split."""

    kernel: str
    image: DebFile
    modules: DebFile | None
    verified: bool
    verify_note: str
    indexes: tuple[str, ...]

    @property
    def package(self) -> str:
        return self.image.package

    @property
    def version(self) -> str:
        return self.image.version

    @property
    def url(self) -> str:
        return self.image.url

    @property
    def sha256(self) -> str:
        return self.image.sha256

    @property
    def size(self) -> int:
        return self.image.size

    @property
    def debs(self) -> tuple[DebFile, ...]:
        return (self.image,) if self.modules is None else (self.image, self.modules)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Resolution:
        mods = data.get("modules")
        return cls(
            data["kernel"],
            DebFile(**data["image"]),
            DebFile(**mods) if mods else None,
            data["verified"],
            data["verify_note"],
            tuple(data["indexes"]),
        )


class _NotFound(Exception):
    """HTTP 404: the caller decides whether that is an error (unknown suite) or not."""


class _Stale(CatalogError):
    """A .deb named by a cached resolution is gone from the mirror (sid moves fast)."""


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _open(url: str, kernel: str) -> http.client.HTTPResponse:
    """urlopen with a timeout and errors that say which kernel and URL failed."""
    try:
        return urllib.request.urlopen(url, timeout=TIMEOUT_S)  # noqa: S310 - http mirrors
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise _NotFound(url) from exc
        raise CatalogError(f"kernel {kernel}: {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CatalogError(
            f"kernel {kernel}: cannot reach {url}: {reason} (timeout {TIMEOUT_S:.0f} s); "
            f"check the mirror or set [settings] mirror / ${apt_sources.MIRROR_ENV}"
        ) from exc


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise installs of one kernel across processes (parallel runners share a cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


class Catalog:
    """Resolve, fetch and cache kernels; `cached()` never touches the network."""

    def __init__(
        self,
        cache_dir: Path,
        mirror: str | None = None,
        security_mirror: str | None = None,
        progress: Progress | None = None,
        keyrings: Sequence[Path] | None = None,
        allow_unverified: bool = False,
    ) -> None:
        self.cache_dir = Path(cache_dir).expanduser()
        self._mirror, self._security = mirror, security_mirror
        self._mirrors: apt_sources.Mirrors | None = None
        self.progress = progress
        self.keyrings = (
            tuple(keyrings) if keyrings is not None else archive_trust.trusted_keyrings()
        )
        self.allow_unverified = archive_trust.unverified_allowed(allow_unverified)
        self._indexes: dict[tuple[str, str], SuiteIndex | None] = {}

    @property
    def mirrors(self) -> apt_sources.Mirrors:
        """Found lazily: a fully cached run must work without any apt config or setting."""
        if self._mirrors is None:
            self._mirrors = apt_sources.find_mirrors(self._mirror, self._security)
        return self._mirrors

    def resolve(self, spec: KernelSpec, refresh: bool = False) -> Resolution:
        """The newest package matching a Debian spec; network only if uncached or refresh."""
        source = spec.source
        if not isinstance(source, DebianSource):
            raise CatalogError(f"kernel {spec.name}: a {spec.kind} kernel has nothing to resolve")
        path = self._resolution_path(source)
        if not refresh and (known := self._known(spec, path)) is not None:
            return known
        indexes = self._suite_indexes(spec, source)
        idx, image, modules = apt_sources.pick(
            spec.name, source.suite, source.package, source.modules_package, indexes
        )
        resolution = Resolution(
            spec.name,
            image,
            modules,
            *_provenance(indexes),
            tuple(f"{i.base}/dists/{i.suite}" for i in indexes),
        )
        _write_atomic(path, json.dumps(asdict(resolution), indent=2).encode())
        return resolution

    def builds(self, spec: KernelSpec) -> list[Resolution]:
        """Every build of the spec's package family its suites still carry, oldest first."""
        source = spec.source
        if not isinstance(source, DebianSource):
            raise CatalogError(f"kernel {spec.name}: a {spec.kind} kernel has no Debian builds")
        indexes = self._suite_indexes(spec, source)
        found = apt_sources.every_build(
            spec.name, source.suite, source.package, source.modules_package, indexes
        )
        where = tuple(f"{i.base}/dists/{i.suite}" for i in indexes)
        verified, note = _provenance(indexes)
        return [Resolution(spec.name, im, mo, verified, note, where) for _, im, mo in found]

    def fetch_build(self, spec: KernelSpec, resolution: Resolution) -> ResolvedKernel:
        """One exact build (not the newest): downloaded, verified and cached like any other."""
        return self._installed(spec, resolution) or self._install(spec, resolution)

    def cached(self, spec: KernelSpec) -> ResolvedKernel | None:
        """The kernel if everything is on disk already; never touches the network."""
        source = spec.source
        if isinstance(source, HostSource):
            return ResolvedKernel(spec, release=os.uname().release)
        if isinstance(source, PathSource):
            try:
                return self._path_kernel(spec, source)
            except CatalogError:
                return None
        known = self._known(spec, self._resolution_path(source))
        return None if known is None else self._installed(spec, known)

    def fetch(self, spec: KernelSpec, refresh: bool = False) -> ResolvedKernel:
        """Make the kernel ready to boot, downloading and extracting only what is missing."""
        source = spec.source
        if isinstance(source, PathSource):
            return self._path_kernel(spec, source)
        if isinstance(source, HostSource):
            return ResolvedKernel(spec, release=os.uname().release)
        if not refresh and (kernel := self.cached(spec)) is not None:
            return kernel
        resolution = self.resolve(spec, refresh=refresh)
        try:
            return self._installed(spec, resolution) or self._install(spec, resolution)
        except _Stale:
            if refresh:
                raise
        return self.fetch(spec, refresh=True)

    def _known(self, spec: KernelSpec, path: Path) -> Resolution | None:
        """A cached resolution (shared by specs with the same source), or None if unusable;
        one made from an unverified index counts only while unverified indexes are allowed."""
        try:
            known = replace(Resolution.from_json(json.loads(path.read_text())), kernel=spec.name)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return known if known.verified is True or self.allow_unverified else None

    def _resolution_path(self, source: DebianSource) -> Path:
        key = json.dumps([source.suite, source.package, source.modules_package])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return self.cache_dir / "resolutions" / f"{digest}.json"

    def _kernel_dir(self, resolution: Resolution) -> Path:
        """kernels/<package>_<version>, refused if it would be anything but a child of kernels/."""
        root = self.cache_dir / "kernels"
        return debtree.child(root, f"{resolution.package}_{resolution.version}", resolution.kernel)

    def _deb_path(self, kernel: str, deb: DebFile) -> Path:
        return debtree.child(self.cache_dir / "debs", deb.url.rsplit("/", 1)[-1], kernel)

    def _suite_indexes(self, spec: KernelSpec, source: DebianSource) -> list[SuiteIndex]:
        mirrors = self.mirrors
        main = self._index(spec, mirrors.archive, source.suite, required=True)
        indexes = [main] if main else []
        companion = apt_sources.security_suite(source.suite)
        if mirrors.security and companion:
            extra = self._index(spec, mirrors.security, companion, required=False)
            indexes += [extra] if extra else []
        return indexes

    def _index(self, spec: KernelSpec, base: str, suite: str, required: bool) -> SuiteIndex | None:
        """Download (or reuse, if its hash still matches) and parse one suite's index."""
        if (base, suite) in self._indexes:
            return self._indexes[(base, suite)]
        folder = self.cache_dir / "indexes" / re.sub(r"[^A-Za-z0-9.-]+", "_", base) / suite
        try:
            release = self._release(spec, base, suite, folder)
        except _NotFound:
            if required:
                raise CatalogError(
                    f"kernel {spec.name}: suite {suite!r} not found at {base}/dists/{suite}/ "
                    f"(no InRelease: HTTP 404) while resolving {spec.source.package!r}; "
                    "check the suite name (e.g. bullseye, bookworm, trixie, sid, experimental)"
                ) from None
            self._indexes[(base, suite)] = None
            return None
        entries = apt_sources.release_sha256(release.body)
        name = next((n for n in INDEX_FILES if n in entries), None)
        if name is None:
            raise CatalogError(
                f"kernel {spec.name}: {base}/dists/{suite}: Release lists no "
                f"SHA256 for {' or '.join(INDEX_FILES)}"
            )
        local = folder / Path(name).name
        sha, size = entries[name]
        if not (local.is_file() and _sha256_file(local) == sha):
            self._download(spec.name, f"{base}/dists/{suite}/{name}", local, sha, size)
        stanzas: dict[str, list[dict[str, str]]] = {}
        for st in apt_sources.packages(apt_sources.read_packages(local), re.compile("linux-")):
            stanzas.setdefault(st.get("Package", ""), []).append(st)
        self._indexes[(base, suite)] = SuiteIndex(
            base, suite, stanzas, release.verified, release.note
        )
        return self._indexes[(base, suite)]

    def _release(
        self, spec: KernelSpec, base: str, suite: str, folder: Path
    ) -> archive_trust.Signature:
        """Fetch InRelease, and keep it only if it verifies and names `suite`.

        An unsigned `Release` is looked at only when unverified indexes are allowed.
        """
        names = ("InRelease", "Release") if self.allow_unverified else ("InRelease",)
        for name in names:
            url = f"{base}/dists/{suite}/{name}"
            try:
                with _open(url, spec.name) as resp:
                    data = resp.read()
            except _NotFound:
                continue
            except (OSError, http.client.HTTPException) as exc:
                raise CatalogError(f"kernel {spec.name}: reading {url} failed: {exc}") from exc
            fresh = folder / f".InRelease.{os.getpid()}.new"
            _write_atomic(fresh, data)
            try:
                release = self._trusted(spec.name, url, fresh, suite)
            except BaseException:
                fresh.unlink(missing_ok=True)
                raise
            os.replace(fresh, folder / "InRelease")
            return release
        raise _NotFound(f"{base}/dists/{suite}")

    def _trusted(self, kernel: str, url: str, path: Path, suite: str) -> archive_trust.Signature:
        """The verified Release text, or a CatalogError saying why the index is refused."""
        where = f"kernel {kernel}: {url}"
        release = archive_trust.verify_signature(path, self.keyrings, where)
        if not release.verified:
            if not self.allow_unverified:
                keys = " + ".join(str(k) for k in self.keyrings)
                raise CatalogError(
                    f"{where}: {release.note}; refusing an index not verified against {keys} "
                    "(to use it anyway, at your own risk, set allow_unverified = true in "
                    f"[settings] of kernels.toml or ${archive_trust.ALLOW_UNVERIFIED_ENV}=1)"
                )
            release = replace(release, note=f"{release.note}; used as allow_unverified is on")
        archive_trust.check_suite(release.body, suite, where)
        return release

    def _download(self, kernel: str, url: str, dest: Path, sha256: str, size: int) -> None:
        """Stream to a .part file, hashing as it goes; rename only if hash and size match."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f"{dest.name}.{os.getpid()}.part")
        digest, done = hashlib.sha256(), 0
        try:
            with _open(url, kernel) as resp, part.open("wb") as out:
                while done <= size and (block := resp.read(min(CHUNK, size + 1 - done))):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if self.progress:
                        self.progress(f"{kernel}: {dest.name}", done, size)
        except _NotFound:
            part.unlink(missing_ok=True)
            raise _Stale(f"kernel {kernel}: {url}: HTTP 404 (not on the mirror)") from None
        except (OSError, http.client.HTTPException) as exc:
            part.unlink(missing_ok=True)
            raise CatalogError(
                f"kernel {kernel}: download of {url} failed after {done} of {size} bytes: {exc!r}"
            ) from exc
        except BaseException:  # Ctrl-C or SIGTERM mid-download: leave no .part behind
            part.unlink(missing_ok=True)
            raise
        if done != size or digest.hexdigest() != sha256:
            part.unlink(missing_ok=True)
            if done > size:
                raise CatalogError(
                    f"kernel {kernel}: {url}: larger than the {size} bytes the index gives; "
                    f"stopped after {done} bytes, file removed"
                )
            if done < size:
                raise CatalogError(
                    f"kernel {kernel}: {url}: truncated: got {done} of {size} "
                    "bytes, file removed; retry"
                )
            raise CatalogError(
                f"kernel {kernel}: {url}: checksum mismatch, file removed: expected sha256 "
                f"{sha256} ({size} bytes), got {digest.hexdigest()} ({done} bytes)"
            )
        os.replace(part, dest)

    def _install(self, spec: KernelSpec, resolution: Resolution) -> ResolvedKernel:
        """Download, extract into a temp dir, rename into place, then write kernel.json."""
        final = self._kernel_dir(resolution)
        with _locked(final.with_name(f".{final.name}.lock")):
            if (kernel := self._installed(spec, resolution)) is not None:
                return kernel
            started = time.monotonic()
            debs = []
            for deb in resolution.debs:
                path = self._deb_path(spec.name, deb)
                if not (path.is_file() and _sha256_file(path) == deb.sha256):
                    self._download(spec.name, deb.url, path, deb.sha256, deb.size)
                debs.append(path)
            fetched = time.monotonic()
            try:
                vmlinuz, modules = self._extract(spec, resolution, debs, final)
            except CatalogError:
                for path in debs:
                    path.unlink(missing_ok=True)
                raise
            meta = {
                "release": modules.name,
                "vmlinuz": str(vmlinuz.relative_to(final)),
                "modules_dir": str(modules.relative_to(final)),
                "sha256": resolution.sha256,
                "package_version": resolution.version,
                "packages": [asdict(d) for d in resolution.debs],
                "verified": resolution.verified,
                "verify_note": resolution.verify_note,
                "download_s": round(fetched - started, 2),
                "extract_s": round(time.monotonic() - fetched, 2),
            }
            _write_atomic(final / META, json.dumps(meta, indent=2).encode())
            for path in debs:
                path.unlink(missing_ok=True)
        kernel = self._installed(spec, resolution)
        assert kernel is not None
        return kernel

    def _extract(
        self, spec: KernelSpec, resolution: Resolution, debs: list[Path], final: Path
    ) -> tuple[Path, Path]:
        what = f"kernel {spec.name}: {' + '.join(d.package for d in resolution.debs)}"
        return debtree.extract(debs, final, what)

    def _installed(self, spec: KernelSpec, resolution: Resolution) -> ResolvedKernel | None:
        final = self._kernel_dir(resolution)
        try:
            meta = json.loads((final / META).read_text())
        except (OSError, ValueError):
            return None
        if meta.get("sha256") != resolution.sha256:
            return None
        if meta.get("verified") is not True and not self.allow_unverified:
            return None
        vmlinuz, modules = final / meta["vmlinuz"], final / meta["modules_dir"]
        if not (
            debtree.within(vmlinuz, final) and debtree.within(modules, final) and vmlinuz.is_file()
        ):
            return None
        return ResolvedKernel(
            spec,
            release=meta["release"],
            vmlinuz=vmlinuz,
            modules_dir=modules,
            sha256=meta["sha256"],
            package_version=meta["package_version"],
        )

    def _path_kernel(self, spec: KernelSpec, source: PathSource) -> ResolvedKernel:
        vmlinuz = source.vmlinuz.expanduser().absolute()
        if not vmlinuz.is_file():
            raise CatalogError(f"kernel {spec.name}: vmlinuz {vmlinuz} does not exist")
        modules = source.modules.expanduser().absolute() if source.modules else None
        if modules is not None and not modules.is_dir():
            raise CatalogError(f"kernel {spec.name}: modules dir {modules} does not exist")
        release = modules.name if modules else debtree.bzimage_release(vmlinuz)
        if not release:
            raise CatalogError(
                f"kernel {spec.name}: cannot read a kernel release from "
                f"{vmlinuz}; set modules to its lib/modules/<release> dir"
            )
        return ResolvedKernel(
            spec,
            release=release,
            vmlinuz=vmlinuz,
            modules_dir=modules,
            sha256=_sha256_file(vmlinuz),
        )


def _provenance(indexes: list[SuiteIndex]) -> tuple[bool, str]:
    """Verified only if every index consulted was; the note of the first that was not."""
    doubtful = [i for i in indexes if not i.verified]
    return not doubtful, (doubtful or indexes)[0].note
