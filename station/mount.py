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
import uuid
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


class NotThisRecorder(MountError):
    """The disk that came up after SetMSDC is not the recorder that was identified."""

    template = "the disk on this port is not the identified recorder, nothing was read: {detail}"


def same_recorder(before: DockedDevice, after: DockedDevice, recorder_serial: str | None) -> None:
    """Raise NotThisRecorder unless the device that re-enumerated on the port after
    SetMSDC can be the identified recorder. The port map already ties both to one
    physical port (the ancestry); the USB serial is compared where both modes report
    one: the disk's must be the vendor interface's, or the recorder's own number."""
    if before.serial and after.serial and after.serial not in (before.serial, recorder_serial):
        raise NotThisRecorder(
            f"port {before.port}: USB serial {after.serial!r} after the switch, "
            f"{before.serial!r} before it (recorder {recorder_serial})"
        )


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
    """Wait for the card's block device below `device`, then mount it in a folder of
    its own, root/port-N.<docking>: an older docking on the same port that is still
    letting go of its card unmounts its own folder, never this one."""
    deadline = time.monotonic() + timeout_s
    while (dev := find_card_device(device.path)) is None:
        if not os.path.exists(device.path):
            raise DeviceGone(f"port {device.port}: gone before its card appeared")
        if time.monotonic() > deadline:
            raise MountError(f"port {device.port}: no FAT or exFAT card appeared")
        time.sleep(0.2)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = root / f"port-{device.port}.{uuid.uuid4().hex[:12]}"
    target.mkdir(mode=0o700)
    try:
        mounter.mount(dev, target)
    except BaseException:
        target.rmdir()
        raise
    log.info("port %s: card %s (%s) mounted at %s", device.port, dev.node, dev.fstype, target)
    return MountedCard(mounter, dev, target)


def clear_mount_root(mounter: Mounter, root: Path) -> list[str]:
    """At start-up, before any docking: let go of every card folder a crashed run left
    behind (unmounted lazily, folder removed). Returns what was cleared."""
    cleared: list[str] = []
    try:
        entries = list(root.iterdir())
    except FileNotFoundError:
        return cleared
    for target in entries:
        if not target.name.startswith("port-") or target.is_symlink():
            continue
        if os.path.ismount(target):
            mounter.unmount(target, lazy=True)
        try:
            target.rmdir()
        except OSError as e:
            log.warning("card folder %s left behind: %s", target, e)
            continue
        cleared.append(target.name)
    return cleared
