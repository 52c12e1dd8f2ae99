"""The PVH image: unpacked from a bzImage's payload, checked, cached; anything else
boots the bzImage and says why."""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from matrix.runners import pvh


def elf(pvh_note: bool = True, machine: int = 62) -> bytes:
    """A minimal 64-bit ELF with one PT_NOTE segment holding Xen notes."""
    notes = b""
    kinds = [6, 18] if pvh_note else [6, 7]
    for kind in kinds:
        notes += struct.pack("<III", 4, 8, kind) + b"Xen\0" + b"\0" * 8
    phoff, phentsize = 64, 56
    note_off = phoff + phentsize
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4], header[5], header[6] = 2, 1, 1
    struct.pack_into("<HHI", header, 16, 2, machine, 1)
    struct.pack_into("<Q", header, 32, phoff)
    struct.pack_into("<HH", header, 54, phentsize, 1)
    phdr = struct.pack("<IIQQQQQQ", pvh.PT_NOTE, 4, note_off, 0, 0, len(notes), len(notes), 4)
    return bytes(header) + phdr + notes + b"\x90" * 4096


def bzimage(payload: bytes, size: int, version: int = 0x20F, setup_sects: int = 1) -> bytes:
    """An x86 boot header whose payload fields point at `payload` + le32 `size`."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    body = payload + struct.pack("<I", size)
    struct.pack_into("<II", setup, 0x248, 0, len(body))
    return bytes(setup) + body


def xz(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "vmlinuz-test"
    path.write_bytes(data)
    return path


def test_xz_payload_is_unpacked_once_and_cached(tmp_path: Path) -> None:
    image = elf()
    vmlinuz = write(tmp_path, bzimage(xz(image), len(image)))
    first = pvh.boot_image(vmlinuz, tmp_path / "cache")
    assert first.kind == "pvh" and first.reason == ""
    assert first.path.read_bytes() == image
    assert first.path.is_relative_to(tmp_path / "cache" / "pvh")
    first.path.write_bytes(b"tampered marker")  # a second call does not unpack again
    assert pvh.boot_image(vmlinuz, tmp_path / "cache").path.read_bytes() == b"tampered marker"


def test_gzip_payload(tmp_path: Path) -> None:
    image = elf()
    vmlinuz = write(tmp_path, bzimage(gzip.compress(image), len(image)))
    assert pvh.boot_image(vmlinuz, tmp_path / "c").kind == "pvh"


@pytest.mark.skipif(shutil.which("zstd") is None, reason="Debian's zstd is not installed")
def test_zstd_payload(tmp_path: Path) -> None:
    image = elf()
    packed = subprocess.run(["zstd", "-q", "-c"], input=image, capture_output=True, check=True)
    vmlinuz = write(tmp_path, bzimage(packed.stdout, len(image)))
    booted = pvh.boot_image(vmlinuz, tmp_path / "c")
    assert booted.kind == "pvh", booted.reason
    assert booted.path.read_bytes() == image


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"not a kernel at all" * 100, "not an x86 bzImage"),
        (bzimage(xz(elf()), len(elf()), version=0x206), "has no payload fields"),
        (bzimage(b"\x02\x21\x4c\x18" + b"\0" * 64, 100), "unsupported codec"),
        (bzimage(xz(elf()), len(elf()) + 1), "not the"),
        (bzimage(xz(elf()), 0), "unpacked size of 0"),
        (bzimage(xz(elf(pvh_note=False)), len(elf(pvh_note=False))), "no PVH entry"),
        (bzimage(xz(elf(machine=183)), len(elf(machine=183))), "no PVH entry"),
        (bzimage(b"\xfd7zXZ\x00" + b"garbage" * 20, 4096), "does not unpack"),
    ],
)
def test_what_cannot_be_unpacked_boots_the_bzimage(tmp_path: Path, data: bytes, why: str) -> None:
    vmlinuz = write(tmp_path, data)
    booted = pvh.boot_image(vmlinuz, tmp_path / "c")
    assert booted.kind == "bzimage" and booted.path == vmlinuz
    assert why in booted.reason
    assert not (tmp_path / "c" / "pvh").exists() or not any((tmp_path / "c" / "pvh").rglob("*"))


def test_a_payload_past_the_end_of_the_image_is_refused(tmp_path: Path) -> None:
    data = bytearray(bzimage(xz(elf()), len(elf())))
    struct.pack_into("<II", data, 0x248, 0, len(data))
    booted = pvh.boot_image(write(tmp_path, bytes(data)), tmp_path / "c")
    assert booted.kind == "bzimage" and "outside the image" in booted.reason


def test_an_overlong_payload_stops_one_byte_past_its_recorded_size(tmp_path: Path) -> None:
    image = elf()
    assert len(pvh.decompress("xz", xz(image + b"\0" * 1000), len(image))) == len(image) + 1


def test_an_unreadable_kernel_is_a_reason(tmp_path: Path) -> None:
    booted = pvh.boot_image(tmp_path / "absent", tmp_path / "c")
    assert booted.kind == "bzimage" and "cannot read" in booted.reason


def test_has_pvh_entry_rejects_truncated_headers() -> None:
    image = elf()
    assert pvh.has_pvh_entry(image)
    assert not pvh.has_pvh_entry(image[:100])
    assert not pvh.has_pvh_entry(b"\x7fELF" + b"\1" * 60)
