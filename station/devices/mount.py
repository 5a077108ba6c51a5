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
import array
import json
import logging
import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from station.drivers.base import DeviceGone, DockedDevice, ProtocolError
from station.drivers.card import FolderCard

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
HELPER_SOCKET = Path("/run/station-mountd.sock")
HELPER_MAX_ANSWER = 4096


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


def mount_command(kind: str, fstype: str, node: str, target: Path) -> list[str]:
    """The command that mounts a card's `fstype` from `node` on `target`, with the
    station's options: the kernel's driver, or a FUSE one (HIL.md tier 1)."""
    if kind == "fuse":
        if fstype == "exfat":
            return ["mount.exfat-fuse", "-o", f"{MOUNT_OPTIONS},umask=077", node, str(target)]
        return ["fusefat", "-o", f"rw+,{MOUNT_OPTIONS}", node, str(target)]
    return ["mount", "-t", fstype, "-o", f"{MOUNT_OPTIONS},{FS_OPTIONS[fstype]}", node, str(target)]


def unmount_commands(kind: str, target: Path, *, lazy: bool) -> list[list[str]]:
    """The commands to try, in order, until one lets go of `target`."""
    z = ["-l"] if lazy else []
    umount = [["umount", *z, str(target)]] + ([] if lazy else [["umount", "-l", str(target)]])
    if kind == "fuse":
        return [["fusermount3", "-u", *(["-z"] if lazy else []), str(target)], *umount]
    return umount


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise MountError(f"{cmd[0]}: {r.stderr.strip() or f'status {r.returncode}'}")


def _unmount(kind: str, target: Path, *, lazy: bool) -> None:
    for cmd in unmount_commands(kind, target, lazy=lazy):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            return
        log.warning("%s failed (%s)", " ".join(cmd), r.stderr.strip())


class Mounter(abc.ABC):
    """How a card's filesystem is attached to a folder."""

    kind = "kernel"

    @abc.abstractmethod
    def mount(self, dev: BlockDevice, target: Path) -> None: ...

    @abc.abstractmethod
    def unmount(self, target: Path, *, lazy: bool = False) -> None: ...


class DirectMounter(Mounter):
    """Mounts itself: for a process that holds CAP_SYS_ADMIN (tests, the HIL guest)."""

    def __init__(self, kind: str = "kernel") -> None:
        self.kind = kind

    def mount(self, dev: BlockDevice, target: Path) -> None:
        _run(mount_command(self.kind, dev.fstype, dev.node, target))

    def unmount(self, target: Path, *, lazy: bool = False) -> None:
        _unmount(self.kind, target, lazy=lazy)


class HelperMounter(Mounter):
    """Asks the mount helper (station/devices/mountd.py) over its socket: the daemon itself has
    no CAP_SYS_ADMIN. The helper checks the request and picks the options itself."""

    def __init__(self, socket_path: Path, kind: str = "kernel") -> None:
        self.socket_path = socket_path
        self.kind = kind

    def _ask(self, request: dict[str, object]) -> None:
        ns_fd = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(90)
                s.connect(str(self.socket_path))
                s.sendmsg(
                    [json.dumps(request).encode()],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [ns_fd]))],
                )
                data = s.makefile("rb").readline(HELPER_MAX_ANSWER)
        except OSError as e:
            raise MountError(f"the mount helper {self.socket_path} did not answer: {e}") from None
        finally:
            os.close(ns_fd)
        try:
            answer = json.loads(data)
        except ValueError:
            raise MountError("the mount helper gave no answer") from None
        if not answer.get("ok"):
            raise MountError(str(answer.get("error") or "refused by the mount helper"))

    def mount(self, dev: BlockDevice, target: Path) -> None:
        self._ask({"op": "mount", "kind": self.kind, "node": dev.node, "target": str(target)})

    def unmount(self, target: Path, *, lazy: bool = False) -> None:
        try:
            self._ask({"op": "unmount", "kind": self.kind, "target": str(target), "lazy": lazy})
        except MountError as e:
            log.warning("unmounting %s: %s", target, e)


def make_mounter(kind: str, helper: str = "off") -> Mounter:
    """The mounter of `bus.mounter` / `bus.mount_helper`: "auto" asks the helper when its
    socket is there (an installed station), "off" mounts directly, a path names the
    helper's socket."""
    if helper == "auto":
        path = HELPER_SOCKET if HELPER_SOCKET.exists() else None
    elif helper == "off":
        path = None
    else:
        path = Path(helper)
    return HelperMounter(path, kind) if path is not None else DirectMounter(kind)


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
