"""The uncompressed kernel that a guest boots straight into (PVH), cached per bzImage.

Why: under TCG a guest spends 4-5 s of every boot decompressing a Debian bzImage (xz or
zstd) before the kernel prints its first line. QEMU can load the kernel's own ELF image
instead and enter it at its PVH entry point (the Xen `PHYS32_ENTRY` note, which Debian's
x86 kernels carry, CONFIG_PVH), skipping the decompressor and the real-mode setup.

The ELF is the bzImage's payload (boot protocol 2.08+: `payload_offset`, `payload_length`),
decompressed once into kmatrix's cache under the bzImage's SHA256 and used only when
it is whole (the size the kernel's build appended to the payload), a 64-bit x86 ELF and
has the PVH note. Anything else boots the bzImage, and says why. The kernel is the same
build either way; the decompressor's KASLR (a random physical load address) does not
run on the PVH path.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from matrix.run import procs

MAX_IMAGE_BYTES = 512 << 20
"""No x86 kernel ELF comes near this; a payload claiming more is refused."""
XEN_ELFNOTE_PHYS32_ENTRY = 18
PT_NOTE = 4
CODECS = {
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x1f\x8b\x08": "gzip",
}
"""The payload codecs decompressed here (Debian uses xz up to 6.1, zstd from 6.12)."""


@dataclass(frozen=True)
class BootImage:
    """What the guest boots: `path`, `kind` ("pvh" or "bzimage") and, for a bzImage that
    was not unpacked, why."""

    path: Path
    kind: str
    reason: str = ""


def boot_image(vmlinuz: Path, cache_dir: Path) -> BootImage:
    """The PVH image for `vmlinuz` (unpacked into `cache_dir` the first time), else the
    bzImage itself with the reason."""
    try:
        data = vmlinuz.read_bytes()
    except OSError as e:
        return BootImage(vmlinuz, "bzimage", f"cannot read {vmlinuz}: {e.strerror}")
    cached = cache_dir / "pvh" / hashlib.sha256(data).hexdigest() / "vmlinux"
    if cached.is_file():
        return BootImage(cached, "pvh")
    try:
        elf = unpack(data)
    except ValueError as e:
        return BootImage(vmlinuz, "bzimage", str(e))
    tmp = cached.with_name(f".vmlinux.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(elf)
        os.replace(tmp, cached)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        return BootImage(vmlinuz, "bzimage", f"cannot write {cached}: {e.strerror}")
    return BootImage(cached, "pvh")


def unpack(data: bytes) -> bytes:
    """The bzImage's kernel ELF, checked; ValueError says why there is none."""
    codec, payload, size = payload_of(data)
    elf = decompress(codec, payload, size)
    if len(elf) != size:
        raise ValueError(f"{codec} payload unpacked to {len(elf)} bytes, not the {size} recorded")
    if not has_pvh_entry(elf):
        raise ValueError("the kernel has no PVH entry point (CONFIG_PVH)")
    return elf


def payload_of(data: bytes) -> tuple[str, bytes, int]:
    """(codec, compressed bytes, unpacked size) from the x86 boot header."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise ValueError("not an x86 bzImage")
    (version,) = struct.unpack_from("<H", data, 0x206)
    if version < 0x208:
        raise ValueError(f"boot protocol {version >> 8}.{version & 0xFF} has no payload fields")
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if length < 8 or start + length > len(data):
        raise ValueError("the payload lies outside the image")
    raw = data[start : start + length]
    codec = next((name for magic, name in CODECS.items() if raw.startswith(magic)), None)
    if codec is None:
        raise ValueError(f"payload compressed with an unsupported codec ({raw[:4].hex()})")
    (size,) = struct.unpack_from("<I", raw, length - 4)
    if not 0 < size <= MAX_IMAGE_BYTES:
        raise ValueError(f"payload records an unpacked size of {size} bytes")
    return codec, raw[:-4], size


def decompress(codec: str, raw: bytes, size: int) -> bytes:
    """At most size + 1 bytes of the payload unpacked (one more shows an overrun)."""
    try:
        if codec == "xz":
            return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(raw, max_length=size + 1)
        if codec == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, size + 1)
    except (lzma.LZMAError, zlib.error) as e:
        raise ValueError(f"{codec} payload does not unpack: {e}") from None
    return unzstd(raw, size)


def unzstd(raw: bytes, size: int) -> bytes:
    """zstd has no decoder in Python's standard library before 3.14: Debian's `zstd`,
    fed from an unlinked temporary file and read no further than size + 1 bytes."""
    tool = procs.find_executable("zstd")
    if tool is None:
        raise ValueError("zstd payload and no zstd command (Debian package zstd)")
    with tempfile.TemporaryFile() as src:
        src.write(raw)
        src.seek(0)
        proc = subprocess.Popen(
            [tool, "-dcq", "--no-progress"],
            stdin=src,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None
            out = proc.stdout.read(size + 1)
        finally:
            proc.kill()
            proc.wait()
    return out


def has_pvh_entry(elf: bytes) -> bool:
    """True for a 64-bit little-endian x86 ELF whose notes include Xen's PHYS32_ENTRY."""
    if len(elf) < 64 or elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    (machine,) = struct.unpack_from("<H", elf, 18)
    if machine != 62:
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 32)
    phentsize, phnum = struct.unpack_from("<HH", elf, 54)
    for i in range(phnum):
        base = phoff + i * phentsize
        if base + 56 > len(elf):
            return False
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, base)
        if p_type == PT_NOTE and _notes_have_pvh(elf, p_offset, p_filesz):
            return True
    return False


def _notes_have_pvh(elf: bytes, offset: int, length: int) -> bool:
    pos, end = offset, min(len(elf), offset + length)
    while pos + 12 <= end:
        namesz, descsz, kind = struct.unpack_from("<III", elf, pos)
        name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
        if name == b"Xen" and kind == XEN_ELFNOTE_PHYS32_ENTRY:
            return True
        pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False
