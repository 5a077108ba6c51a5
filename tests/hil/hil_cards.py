"""Recorder cards for the HIL run: FAT32 images filled with recorder-named files.

Built on the host without mounting anything (mkfs.vfat, mtools), so the host
knows exactly what each card held (the ledger), and can list what is left on
it after the run. Names follow GAT947.md section 3: normal, IMP (suffix,
`_IMP` token, important folder), dated sub-folders, a UTF-16 long name in
Chinese, and an 8.3 short name in GBK with no long name, as firmware with
code page 936 writes them.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# A GBK 8.3 name is written under this ASCII placeholder, then patched in place:
# mtools cannot write multibyte short names.
GBK_PLACEHOLDER = b"GBKNAM01LOG"
GBK_SHORT_NAME = "执法记录.LOG"  # 8 GBK bytes + extension: a valid 8.3 entry


@dataclass
class CardFileSpec:
    """One file to put on a card; content is random bytes from `seed`."""

    path: str  # below the card root, '/'-separated, as text
    size: int
    seed: int

    def content(self) -> bytes:
        return random.Random(self.seed).randbytes(self.size)


@dataclass
class Card:
    """A built card image and what went onto it."""

    image: Path
    # card path as the station sees it on a utf8/cp936 mount -> (size, sha256)
    files: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(size for size, _ in self.files.values())


def recorder_files(
    officer_no: str, serial: str, day: str, seed: int, variant: int = 0, big_mb: int = 0
) -> list[CardFileSpec]:
    """The files of one recorder's card (day as yyyyMMdd); `variant` picks the extras.

    Every card has a normal video, an IMP video, a Chinese long name and a GBK
    short name; the extras spread the other layouts over the recorders, so that
    the run covers them all without copying more than it must under emulation.
    """

    def name(hhmmss: str, seq: int, ext: str, imp: str = "") -> str:
        return f"{officer_no}_{serial}_{day}{hhmmss}_{seq:04d}{imp}.{ext}"

    kib = 1024
    files = [
        CardFileSpec(f"DCIM/100ANDRO/{name('083000', 1, 'MP4')}", 1024 * kib + 17, seed + 1),
        CardFileSpec(f"DCIM/100ANDRO/{name('084500', 2, 'MP4', 'IMP')}", 512 * kib + 3, seed + 2),
        CardFileSpec(f"Record/执法记录仪_{day}101500_0007.MP4", 100_003, seed + 7),
        CardFileSpec(f"Log/{GBK_SHORT_NAME}", 2_048, seed + 9),
    ]
    extras = [
        # the important folder
        CardFileSpec(f"DCIM/101ANDRO/{name('090000', 3, 'MP4')}", 256 * kib, seed + 3),
        # "_IMP" inside the name, audio
        CardFileSpec(f"Audio/{name('093000', 5, 'WAV', '_IMP')}", 300_001, seed + 5),
        # newer builds: dated folders, short names; a photo
        CardFileSpec(
            f"DCIM/100ANDRO/{serial}/{officer_no}/{day}/{day}100000_0006.MP4", 90_000, seed + 6
        ),
        CardFileSpec(f"Photo/{name('091500', 4, 'JPG')}", 200_000, seed + 4),
    ]
    files.append(extras[variant % len(extras)])
    if variant % len(extras) == 2:
        files.append(extras[3])
    if big_mb:
        files.append(CardFileSpec(f"Log/{day}.LOG", 4_321, seed + 8))
        big = f"DCIM/100ANDRO/{name('110000', 9, 'MP4')}"
        files.append(CardFileSpec(big, big_mb * 1024 * kib + 4099, seed + 10))
    return files


def _mtools(*args: str) -> None:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C.UTF-8"}
    r = subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")


def build_card(
    image: Path, files: list[CardFileSpec], size_mb: int = 64, label: str = "CARD", fat: int = 32
) -> Card:
    """A FAT image (FAT32 unless told) holding `files`; returns it with its ledger."""
    image.unlink(missing_ok=True)
    r = subprocess.run(
        ["mkfs.vfat", "-C", "-F", str(fat), "-n", label, str(image), str(size_mb * 1024)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode != 0:
        raise RuntimeError(f"mkfs.vfat: {r.stderr.strip()}")
    card = Card(image)
    folders: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="hil-card-") as tmp:
        for spec in files:
            parts = spec.path.split("/")
            for i in range(1, len(parts)):
                folder = "/".join(parts[:i])
                if folder not in folders:
                    _mtools("mmd", "-i", str(image), f"::{folder}")
                    folders.add(folder)
            data = spec.content()
            on_card = spec.path
            if parts[-1] == GBK_SHORT_NAME:
                on_card = "/".join([*parts[:-1], "GBKNAM01.LOG"])
            src = Path(tmp) / "f"
            src.write_bytes(data)
            _mtools("mcopy", "-i", str(image), str(src), f"::{on_card}")
            card.files[spec.path] = (len(data), hashlib.sha256(data).hexdigest())
    if any(p.endswith(GBK_SHORT_NAME) for p in card.files):
        _patch_short_name(image, GBK_PLACEHOLDER, _short_entry(GBK_SHORT_NAME))
    return card


def _short_entry(name: str) -> bytes:
    stem, ext = name.rsplit(".", 1)
    return stem.encode("gbk").ljust(8, b" ") + ext.encode("ascii").ljust(3, b" ")


def _patch_short_name(image: Path, old: bytes, new: bytes) -> None:
    """Rewrite one 11-byte 8.3 directory entry name in place."""
    assert len(old) == len(new) == 11
    with open(image, "r+b") as f:
        data = f.read()
        at = data.find(old)
        if at < 0 or data.find(old, at + 1) >= 0:
            raise RuntimeError(f"placeholder {old!r} not found exactly once in {image}")
        f.seek(at)
        f.write(new)


def card_listing(image: Path) -> list[str]:
    """Every file still on a FAT image (mtools' recursive bare listing), '/'-separated."""
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C.UTF-8"}
    r = subprocess.run(
        ["mdir", "-/", "-b", "-i", str(image), "::"], capture_output=True, env=env, timeout=60
    )
    if r.returncode != 0 and b"No files" not in r.stdout + r.stderr:
        raise RuntimeError(f"mdir {image}: {r.stderr.decode(errors='replace')}")
    out = []
    for line in r.stdout.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line.startswith("::/") and not line.endswith("/"):
            out.append(line[3:])
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
