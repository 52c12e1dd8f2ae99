"""The catalog against the machine's real Debian mirror (the one its apt config names).

Resolution runs in a temporary cache; the one full download goes to ~/.cache/kmatrix so
that later runs (and the VM tests) reuse it.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from matrix.errors import CatalogError
from matrix.kernels import apt_sources
from matrix.kernels.catalog import Catalog
from matrix.kernels.debtree import bzimage_release
from matrix.model import DebianSource, KernelSpec

pytestmark = pytest.mark.integration

KERNELS = {
    "bullseye": ("linux-image-5.10.0-*-amd64-unsigned", "5.10."),
    "sid": ("linux-binary-7.2*-amd64", "7.2"),
}


@pytest.fixture(scope="module")
def mirrors() -> apt_sources.Mirrors:
    """The machine's mirror, or a skip if there is none or it does not answer in 5 s."""
    try:
        found = apt_sources.find_mirrors()
    except CatalogError as exc:
        pytest.skip(f"no mirror configured: {exc}")
    url = f"{found.archive}/dists/sid/InRelease"
    try:
        with urllib.request.urlopen(url, timeout=5):
            pass
    except OSError as exc:
        pytest.skip(f"mirror {found.archive} unreachable within 5 s: {exc}")
    return found


@pytest.mark.parametrize("suite", sorted(KERNELS))
def test_resolves_real_kernels(suite: str, mirrors: apt_sources.Mirrors, tmp_path: Path) -> None:
    pattern, prefix = KERNELS[suite]
    catalog = Catalog(tmp_path, mirrors.archive, mirrors.security)
    res = catalog.resolve(KernelSpec(suite, DebianSource(suite, pattern)))
    print(f"{suite}: {res.package} {res.version} ({res.size} B, {res.verify_note})")
    assert res.verified is True and "signature verified" in res.verify_note
    assert res.version.startswith(prefix)
    assert len(res.sha256) == 64 and res.size > 1_000_000
    if suite == "sid":
        assert res.modules is not None and res.modules.package.startswith("linux-modules-")


def test_fetches_one_kernel_into_the_user_cache(mirrors: apt_sources.Mirrors) -> None:
    catalog = Catalog(Path("~/.cache/kmatrix"), mirrors.archive, mirrors.security)
    spec = KernelSpec("6.1", DebianSource("bookworm", "linux-image-6.1.0-*-amd64-unsigned"))
    started = time.monotonic()
    kernel = catalog.fetch(spec)
    print(
        f"6.1: {kernel.release} {kernel.package_version} in {time.monotonic() - started:.1f} s "
        f"at {kernel.vmlinuz}"
    )
    assert kernel.vmlinuz is not None and kernel.modules_dir is not None
    assert bzimage_release(kernel.vmlinuz) == kernel.release == kernel.modules_dir.name
    assert catalog.cached(spec) == kernel
