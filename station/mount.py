"""Reaching a recorder's card once it shows up as a USB disk: find it, mount it, let go.

After `SetMSDC` a recorder re-enumerates on the same physical port as a mass-
storage device. The station finds the block device below that port's USB
device, mounts it in a private folder with `nosuid,nodev,noexec` and the right
character set for GBK names, reads it through `FolderCard`, and unmounts it
when done (lazily, if the recorder was yanked).

Mounting is pluggable (`Mounter`): the kernel's vfat/exfat drivers on a
station, FUSE drivers (fusefat, exfat-fuse) where the kernel has none.
"""

from __future__ import annotations

import abc
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from drivers.base import DeviceGone, DockedDevice, ProtocolError
from drivers.card import FolderCard

log = logging.getLogger(__name__)

MOUNT_OPTIONS = "nosuid,nodev,noexec"
# FAT long names are UTF-16 on disk: `utf8` gives them to us exactly (the kernel advises
# it over iocharset=utf8, which it warns about); codepage 936 (GBK)
# decodes 8.3 short names written by Chinese firmware.
FS_OPTIONS = {
    "vfat": "utf8,codepage=936,shortname=mixed,uid=0,gid=0,umask=077,flush",
    "exfat": "iocharset=utf8,uid=0,gid=0,umask=077",
}
CARD_FILESYSTEMS = frozenset(FS_OPTIONS)


class MountError(ProtocolError):
    """The card could not be mounted."""

    template = "the recorder's card could not be mounted: {detail}"


@dataclass(frozen=True)
class BlockDevice:
    node: str  # /dev/sdb1
    fstype: str  # vfat | exfat
    sys_path: str


class Mounter(abc.ABC):
    """How a card's filesystem is attached to a folder."""

    @abc.abstractmethod
    def mount(self, dev: BlockDevice, target: Path) -> None: ...

    def unmount(self, target: Path, *, lazy: bool = False) -> None:
        cmd = ["umount", "-l", str(target)] if lazy else ["umount", str(target)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if r.returncode != 0 and not lazy:
            log.warning("umount %s failed (%s); detaching lazily", target, r.stderr.strip())
            subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=60)


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise MountError(f"{' '.join(cmd)}: {r.stderr.strip() or r.returncode}")


class KernelMounter(Mounter):
    """mount(8) with the kernel's vfat or exfat driver."""

    def mount(self, dev: BlockDevice, target: Path) -> None:
        opts = f"{MOUNT_OPTIONS},{FS_OPTIONS[dev.fstype]}"
        _run(["mount", "-t", dev.fstype, "-o", opts, dev.node, str(target)])


class FuseMounter(Mounter):
    """Userspace drivers, for kernels without vfat/exfat (HIL.md tier 1)."""

    def mount(self, dev: BlockDevice, target: Path) -> None:
        if dev.fstype == "exfat":
            _run(["mount.exfat-fuse", "-o", f"{MOUNT_OPTIONS},umask=077", dev.node, str(target)])
        else:
            _run(["fusefat", "-o", f"rw+,{MOUNT_OPTIONS}", dev.node, str(target)])

    def unmount(self, target: Path, *, lazy: bool = False) -> None:
        cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(target)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            super().unmount(target, lazy=lazy)


def make_mounter(kind: str) -> Mounter:
    return FuseMounter() if kind == "fuse" else KernelMounter()


def find_card_device(usb_sys_path: str, *, context: object | None = None) -> BlockDevice | None:
    """The FAT/exFAT block device below a USB device: a partition, or a whole disk."""
    import pyudev

    ctx = context or pyudev.Context()
    best: BlockDevice | None = None
    prefix = usb_sys_path.rstrip("/") + "/"
    for d in ctx.list_devices(subsystem="block"):  # type: ignore[attr-defined]
        if not d.sys_path.startswith(prefix) or not d.device_node:
            continue
        fstype = d.properties.get("ID_FS_TYPE") or _blkid_type(d.device_node)
        if fstype not in CARD_FILESYSTEMS:
            continue
        dev = BlockDevice(d.device_node, fstype, d.sys_path)
        if best is None or d.properties.get("DEVTYPE") == "partition":
            best = dev
    return best


def _blkid_type(node: str) -> str | None:
    r = subprocess.run(
        ["blkid", "-o", "value", "-s", "TYPE", node], capture_output=True, text=True, timeout=30
    )
    return r.stdout.strip() or None


class MountedCard(FolderCard):
    """A card mounted for one collection; unmounted (lazily if yanked) on close."""

    def __init__(self, mounter: Mounter, dev: BlockDevice, target: Path) -> None:
        super().__init__(target, self._present)
        self.mounter = mounter
        self.dev = dev
        self.target = target

    def _present(self) -> bool:
        return os.path.exists(self.dev.sys_path) and os.path.ismount(self.target)

    def close(self) -> None:
        gone = not os.path.exists(self.dev.sys_path)
        try:
            self.mounter.unmount(self.target, lazy=gone)
        finally:
            try:
                self.target.rmdir()
            except OSError:
                log.warning("mount folder %s left behind", self.target)


def mount_card(
    mounter: Mounter, device: DockedDevice, root: Path, *, timeout_s: float = 20.0
) -> MountedCard:
    """Wait for the card's block device below `device`, then mount it at root/port-N."""
    deadline = time.monotonic() + timeout_s
    while (dev := find_card_device(device.path)) is None:
        if not os.path.exists(device.path):
            raise DeviceGone(f"port {device.port}: gone before its card appeared")
        if time.monotonic() > deadline:
            raise MountError(f"port {device.port}: no FAT or exFAT card appeared")
        time.sleep(0.2)
    target = root / f"port-{device.port}"
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.path.ismount(target):  # left over from a crash: let it go first
        mounter.unmount(target, lazy=True)
    mounter.mount(dev, target)
    log.info("port %s: card %s (%s) mounted at %s", device.port, dev.node, dev.fstype, target)
    return MountedCard(mounter, dev, target)
