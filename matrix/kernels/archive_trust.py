"""Whether to trust an archive's index: its InRelease must carry a good signature from a
keyring we trust (gpgv's exit status and status lines both count) and name the suite
asked for. Anything else is refused unless unverified indexes are explicitly allowed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from matrix.errors import CatalogError
from matrix.kernels.apt_sources import deb822_stanzas, release_body

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
KEYRING_ENV = "KMATRIX_KEYRING"
ALLOW_UNVERIFIED_ENV = "KMATRIX_ALLOW_UNVERIFIED"
SIGNED_HEAD = "-----BEGIN PGP SIGNED MESSAGE-----"
SIGNATURE_HEAD = "-----BEGIN PGP SIGNATURE-----"
SIGNATURE_END = "-----END PGP SIGNATURE-----"


def trusted_keyrings(env: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """Debian's archive keyring, plus the keyrings $KMATRIX_KEYRING names (colon-separated)
    for a private mirror signed with its own key."""
    env = os.environ if env is None else env
    extra = [Path(p) for p in env.get(KEYRING_ENV, "").split(":") if p]
    return (KEYRING, *extra)


def unverified_allowed(setting: bool, env: Mapping[str, str] | None = None) -> bool:
    """The one way round signature checks: the allow_unverified setting, or
    $KMATRIX_ALLOW_UNVERIFIED=1."""
    env = os.environ if env is None else env
    return setting or env.get(ALLOW_UNVERIFIED_ENV, "") == "1"


@dataclass(frozen=True)
class Signature:
    """What gpgv made of an InRelease; `body` is the text gpgv says was signed when verified."""

    verified: bool
    note: str
    body: str


def verify_signature(
    inrelease: Path, keyrings: Sequence[Path] = (KEYRING,), where: str | None = None
) -> Signature:
    """Check an InRelease with gpgv; trust needs exit 0 plus GOODSIG and VALIDSIG.

    Unsigned, unknown-key and expired-key cases come back unverified for the caller to
    refuse; a bad or malformed signature raises. When verified, the body is gpgv's own
    output, so text outside the signed block can never reach the index parser.
    """
    where = where or str(inrelease)
    text = inrelease.read_text(errors="replace")
    if not text.startswith(SIGNED_HEAD):
        return Signature(False, "InRelease is not signed", text)
    _check_armour(text, where)
    unverified = Signature(False, "", release_body(text))
    gpgv = shutil.which("gpgv")
    rings = [k.absolute() for k in keyrings if k.is_file()]
    if not gpgv:
        return replace(unverified, note="not checked: gpgv is not installed")
    if not rings:
        missing = ", ".join(str(k) for k in keyrings)
        return replace(unverified, note=f"not checked: no keyring ({missing} missing)")
    run = _run_gpgv(gpgv, rings, inrelease)
    status = _status_words(run.status)
    keys = " + ".join(str(k) for k in rings)
    if run.code == 0 and {"GOODSIG", "VALIDSIG"} <= status and not status & _DOUBT:
        return Signature(True, f"signature verified with {keys}", run.body)
    if "BADSIG" in status or not status & _DOUBT:
        detail = _gpgv_detail(run.stderr, run.code)
        raise CatalogError(f"{where}: bad signature ({detail}); refusing to trust this index")
    return replace(unverified, note=f"not verified: {_doubt_note(status)} (keyrings: {keys})")


_DOUBT = frozenset({"ERRSIG", "NO_PUBKEY", "EXPKEYSIG", "REVKEYSIG", "EXPSIG"})


def _doubt_note(status: set[str]) -> str:
    if status & {"ERRSIG", "NO_PUBKEY"}:
        return "signed by a key that is not in the keyring"
    if "REVKEYSIG" in status:
        return "signed by a revoked key"
    return "signed by an expired key" if "EXPKEYSIG" in status else "the signature has expired"


def _check_armour(text: str, where: str) -> None:
    """One clearsigned message and nothing after it, as apt requires."""
    tail = text.rpartition(SIGNATURE_END)
    if (
        text.count(SIGNED_HEAD) != 1
        or text.count(SIGNATURE_HEAD) != 1
        or not tail[1]
        or tail[2].strip()
    ):
        raise CatalogError(
            f"{where}: malformed InRelease (expected exactly one clearsigned message and "
            "nothing after its signature); refusing to trust this index"
        )


@dataclass(frozen=True)
class _Gpgv:
    code: int
    status: str
    stderr: str
    body: str


def _run_gpgv(gpgv: str, keyrings: list[Path], inrelease: Path) -> _Gpgv:
    """gpgv with an empty home (so no personal keyring counts) and its status lines on a
    file descriptor of their own, apart from the messages and the signed text."""
    with tempfile.TemporaryDirectory(prefix="kmatrix-gpgv.") as home:
        args = [a for k in keyrings for a in ("--keyring", str(k))]
        with open(os.path.join(home, "status"), "w+b") as status:
            fd = status.fileno()
            proc = subprocess.run(
                [gpgv, "--homedir", home, "--status-fd", str(fd), *args, "--output", "-"]
                + [str(inrelease)],
                capture_output=True,
                pass_fds=(fd,),
                timeout=60,
            )
            status.seek(0)
            lines = status.read().decode(errors="replace")
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    return _Gpgv(proc.returncode, lines, err, out)


def _status_words(status: str) -> set[str]:
    """The keywords of gpgv's `[GNUPG:] KEYWORD ...` status lines."""
    prefix = "[GNUPG:] "
    return {
        line[len(prefix) :].split(" ", 1)[0]
        for line in status.splitlines()
        if line.startswith(prefix)
    }


def _gpgv_detail(stderr: str, code: int) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("gpgv: ")]
    return f"{lines[-1] if lines else 'gpgv failed'}, exit {code}"


def check_suite(body: str, suite: str, where: str) -> None:
    """An index for another suite (a replayed older release, say) must not pass for `suite`."""
    fields = next(deb822_stanzas(body), {})
    named = {fields.get("suite", ""), fields.get("codename", "")} - {""}
    if suite not in named:
        found = f"Suite {fields.get('suite')!r}, Codename {fields.get('codename')!r}"
        raise CatalogError(
            f"{where}: index is for {found}, not the {suite!r} asked for; refusing it"
        )
