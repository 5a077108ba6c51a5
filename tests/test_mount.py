"""Recorder cards as real FAT32 and exFAT filesystems, mounted through the pluggable mounter.

The host kernel here has no vfat/exfat, so these go through the FUSE mounter
(HIL.md tier 1); the HIL tier mounts with the kernel's own drivers.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import needs_root

from station.devices.mount import BlockDevice, DirectMounter, MountedCard
from station.drivers.base import DeviceGone, DockedDevice, ProtocolError
from station.drivers.mass_storage import MassStorageConfig, MassStorageDriver, identity_from_names

pytestmark = needs_root

FILES = {
    "DCIM/100ANDRO/010231_ZF10231_20261120080000_0001.AVI": os.urandom(300_000),
    "DCIM/101ANDRO/010231_ZF10231_20261120081500_0002IMP.AVI": os.urandom(120_000),
    "DCIM/100ANDRO/010231_ZF10231_20261120082000_0003.JPG": os.urandom(5_000),
    "DCIM/100ANDRO/张三_现场_0004.WAV": os.urandom(7_000),  # a Chinese long name
    "Log/20261120.LOG": b"2026-11-20 08:00:00 POWER ON\r\n",
}


def _populate(root: Path) -> None:
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


@pytest.fixture
def fat32(tmp_path: Path) -> Path:
    img = tmp_path / "card.img"
    subprocess.run(
        ["mkfs.vfat", "-C", "-F", "32", str(img), "65536"],  # no label: fusefat lists it as a file
        check=True,
        capture_output=True,
    )
    src = tmp_path / "src"
    _populate(src)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for top in ("DCIM", "Log"):
        subprocess.run(
            ["mcopy", "-s", "-m", "-i", str(img), str(src / top), "::/"],
            check=True,
            env=env,
            capture_output=True,
        )
    return img


@pytest.fixture
def exfat(tmp_path: Path) -> Iterator[str]:
    img = tmp_path / "card.img"
    with open(img, "wb") as f:
        f.truncate(64 * 2**20)
    subprocess.run(["mkfs.exfat", "-L", "RECORDER", str(img)], check=True, capture_output=True)
    loop = subprocess.run(
        ["losetup", "-f", "--show", str(img)], check=True, capture_output=True, text=True
    ).stdout.strip()
    mnt = tmp_path / "fill"
    mnt.mkdir()
    subprocess.run(["mount.exfat-fuse", loop, str(mnt)], check=True, capture_output=True)
    try:
        _populate(mnt)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    yield loop
    subprocess.run(["losetup", "-d", loop], check=False)


def _mount(node: str, fstype: str, marker: Path, target: Path) -> MountedCard:
    """Mount like the station does; `marker` stands for the device's sysfs entry."""
    marker.touch()
    target.mkdir()
    mounter = DirectMounter("fuse")
    dev = BlockDevice(node, fstype, str(marker))
    mounter.mount(dev, target)
    return MountedCard(mounter, dev, target)


def _check_card(card: MountedCard) -> None:
    listed = {f.path: f.size for f in card.list_files()}
    assert listed == {rel.encode(): len(data) for rel, data in FILES.items()}
    for rel, data in FILES.items():
        got = card.read_range(rel.encode(), 0, len(data) + 10)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert (
        card.read_range(next(iter(FILES)).encode(), 299_990, 100)
        == next(iter(FILES.values()))[299_990:]
    )
    victim = b"DCIM/100ANDRO/010231_ZF10231_20261120082000_0003.JPG"
    card.delete_file(victim)
    assert card.stat_file(victim) is None
    assert card.bytes_read >= sum(len(d) for d in FILES.values())


def test_fat32_card_mounted_read_and_cleared(fat32: Path, tmp_path: Path) -> None:
    card = _mount(str(fat32), "vfat", tmp_path / "sys", tmp_path / "port-1")
    try:
        _check_card(card)
    finally:
        card.close()
    assert not (tmp_path / "port-1").exists()  # unmounted and tidied
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    listing = subprocess.run(
        ["mdir", "-b", "-i", str(fat32), "::/DCIM/100ANDRO"],
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    assert "0003.JPG" not in listing and "0001.AVI" in listing  # the delete reached the card


def test_exfat_card_mounted_read_and_cleared(exfat: str, tmp_path: Path) -> None:
    card = _mount(exfat, "exfat", tmp_path / "sys", tmp_path / "port-2")
    try:
        _check_card(card)
    finally:
        card.close()


def test_yanked_card_raises_device_gone_and_is_unmounted_lazily(
    fat32: Path, tmp_path: Path
) -> None:
    card = _mount(str(fat32), "vfat", tmp_path / "sys", tmp_path / "port-3")
    stream = card.open_file(next(iter(FILES)).encode())
    (tmp_path / "sys").unlink()  # the device's sysfs entry vanishes: it was pulled out
    with pytest.raises(DeviceGone):
        stream.readinto(memoryview(bytearray(4096)))
    stream.close()
    card.close()
    assert not os.path.ismount(tmp_path / "port-3")


def test_plain_mass_storage_identity_comes_from_the_names(fat32: Path, tmp_path: Path) -> None:
    mounted: list[MountedCard] = []

    def mount(device: DockedDevice) -> MountedCard:
        mounted.append(_mount(str(fat32), "vfat", tmp_path / "sys", tmp_path / "port-4"))
        return mounted[0]

    drv = MassStorageDriver(MassStorageConfig(allow=["0781:5567"]), mount)
    stick = DockedDevice(4, "k", "usb", str(tmp_path), vendor_id=0x0781, product_id=0x5567)
    other = DockedDevice(4, "k", "usb", str(tmp_path), vendor_id=0x0781, product_id=0x5581)
    assert drv.match(stick) > 0 and drv.match(other) == 0  # only allow-listed disks
    with drv.open(stick, []) as s:
        info = s.officer_info()
        assert (info.officer_no, info.serial) == ("010231", "ZF10231")
        assert s.battery_percent() is None and s.set_clock(None) is None  # type: ignore[arg-type]
    assert not (tmp_path / "port-4").exists()


def test_a_disk_without_recorder_names_cannot_be_attributed(tmp_path: Path) -> None:
    img = tmp_path / "stick.img"
    subprocess.run(["mkfs.vfat", "-C", str(img), "8192"], check=True, capture_output=True)
    drv = MassStorageDriver(
        MassStorageConfig(allow=["0781:5567"]),
        lambda d: _mount(str(img), "vfat", tmp_path / "s", tmp_path / "m"),
    )
    stick = DockedDevice(5, "k", "usb", str(tmp_path), vendor_id=0x0781, product_id=0x5567)
    with drv.open(stick, []) as s, pytest.raises(ProtocolError):
        s.officer_info()
    assert identity_from_names([b"a/b.txt"]) is None
