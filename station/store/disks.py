"""The two-disk store: which disk gets the next file, where it goes, how it lands.

Files are written as temp files in the disk's own staging folder, then renamed
into `<disk>/<officer_no>/<serial>/<YYYY-MM-DD>/<name>` (CONTRACT.md), so the
rename is atomic and a file is always whole on exactly one disk.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from station.names import safe_component
from station.store.durable import make_dirs_durable

log = logging.getLogger(__name__)

STAGING = ".staging"
MIRROR = ".mirror"  # second copies of protected footage (station.store.mirror): not catalogued
MARKER = ".station-disk.json"  # written by station.store.identity
LOG_ANCHOR = ".station-log-anchor.json"  # written by station.eventlog
ROOT_FILES = frozenset({MARKER, LOG_ANCHOR})  # station files at a disk's root: not evidence


def is_station_temp(name: str) -> bool:
    """A root file's unfinished atomic write (station.store.durable.replace_file's `.name.*`),
    left by a kill or a power cut: station metadata, never footage."""
    return any(name.startswith(f".{f}.") for f in ROOT_FILES)


MB = 1024 * 1024


@dataclass(frozen=True)
class DiskSpace:
    """What the policy needs to know about one disk."""

    usable: bool  # present, writable, not taken out of use
    free: int  # bytes free for us (statvfs f_bavail)
    reserved: int = 0  # bytes promised to transfers in flight


def choose_disk(disks: Sequence[DiskSpace], active: int, size: int, min_free: int) -> int | None:
    """The disk for a file of `size` bytes: the active one while it has room, else the next.

    "Room" means the disk's free space, less what is promised to transfers in
    flight, stays at or above `min_free` after the file. Disks are tried in
    order starting at `active`, wrapping around, so collection moves on to the
    next disk when one fills and never splits a file. None when no disk has room.
    """
    n = len(disks)
    for step in range(n):
        i = (active + step) % n
        d = disks[i]
        if d.usable and d.free - d.reserved - size >= min_free:
            return i
    return None


class StoreDisk:
    """One data disk (a mount point, or a folder in tests and the demo)."""

    def __init__(self, index: int, path: Path) -> None:
        self.index = index
        self.path = Path(path)
        self.staging = self.path / STAGING
        self.failed: str | None = None  # why it was taken out of use
        self._identity: str | None = None
        self._marker_key: tuple[int, int] | None = None

    @property
    def identity(self) -> str | None:
        """The UUID of the marker that makes it this station's disk (station.store.identity); None
        until it is identified, and then only while that same marker file is there."""
        return self._identity

    @identity.setter
    def identity(self, value: str | None) -> None:
        """Identified by a marker just written (or not at all)."""
        self.bind(value, self._marker_now() if value is not None else None)

    def bind(self, identity: str | None, marker_key: tuple[int, int] | None) -> None:
        """Identified by the marker file whose (device, inode) is `marker_key`."""
        self._identity = identity
        self._marker_key = marker_key

    def _marker_now(self) -> tuple[int, int] | None:
        """(device, inode) of the marker at the path: another disk mounted here (two disks
        that swapped mount points, a different disk in the bay) has another."""
        try:
            st = os.stat(self.path / MARKER)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def present(self) -> bool:
        """Identified, the marker it was identified by still in place (not an empty mount
        point, not another disk mounted here since), writable."""
        return (
            self._identity is not None
            and self._marker_key is not None
            and self._marker_now() == self._marker_key
            and os.access(self.path, os.W_OK)
        )

    def usage(self) -> tuple[int, int]:
        """(total, free) bytes, (0, 0) when the disk is missing."""
        try:
            st = os.statvfs(self.path)
        except OSError:
            return 0, 0
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    def prepare(self) -> None:
        """The staging folder, created durably (its entry in the disk root synced)."""
        if not self.staging.is_dir():
            make_dirs_durable(self.staging, self.path)


class Store:
    """The disks in order of use, with space promised to transfers in flight."""

    def __init__(
        self,
        disks: Sequence[Path],
        min_free_mb: int,
        active: int = 0,
        on_failed: Callable[[StoreDisk, str], None] | None = None,
    ) -> None:
        self.disks = [StoreDisk(i, p) for i, p in enumerate(disks)]
        self.min_free = min_free_mb * MB
        self.active = active if 0 <= active < len(self.disks) else 0
        self._reserved = [0] * len(self.disks)
        self._lock = threading.Lock()
        self.on_failed = on_failed

    def prepare(self) -> None:
        for d in self.disks:
            if d.present():
                d.prepare()
            else:
                log.warning("store disk %s is missing or not writable", d.path)

    def disk_by_path(self, path: str) -> StoreDisk | None:
        return next((d for d in self.disks if str(d.path) == path), None)

    def _space(self, exclude: frozenset[int]) -> list[DiskSpace]:
        space = []
        for d in self.disks:
            usable = d.failed is None and d.index not in exclude and d.present()
            free = d.usage()[1] if usable else 0
            space.append(DiskSpace(usable, free, self._reserved[d.index]))
        return space

    def pick(self, size: int, exclude: frozenset[int] = frozenset()) -> StoreDisk | None:
        """The disk the policy would give `size` bytes now, without promising anything."""
        with self._lock:
            i = choose_disk(self._space(exclude), self.active, size, self.min_free)
            return None if i is None else self.disks[i]

    def reserve(self, size: int, exclude: frozenset[int] = frozenset()) -> StoreDisk | None:
        """Pick a disk for `size` bytes and promise the space; None when all are full."""
        with self._lock:
            i = choose_disk(self._space(exclude), self.active, size, self.min_free)
            if i is None:
                return None
            self._take(i, size)
            return self.disks[i]

    def reserve_on(self, disk: StoreDisk, size: int) -> bool:
        """Promise `size` bytes on this disk if it has room (a job already placed there).

        A resumed transfer finishing on its old disk does not make that disk active again.
        """
        with self._lock:
            space = self._space(frozenset())[disk.index]
            if not (space.usable and space.free - space.reserved - size >= self.min_free):
                return False
            self._reserved[disk.index] += size
            return True

    def _take(self, i: int, size: int) -> None:
        if i != self.active:
            log.info("store: active disk is now %s", self.disks[i].path)
            self.active = i
        self._reserved[i] += size

    def release(self, disk: StoreDisk, size: int) -> None:
        with self._lock:
            self._reserved[disk.index] = max(0, self._reserved[disk.index] - size)

    def take_out_of_use(self, disk: StoreDisk, why: str) -> None:
        log.error("store: disk %s taken out of use: %s", disk.path, why)
        disk.failed = why
        if self.on_failed is not None:
            self.on_failed(disk, why)


def stored_relpath(officer_no: str, serial: str, day: dt.date, name: str) -> Path:
    """`<officer_no>/<serial>/<YYYY-MM-DD>/<name>`; officer and serial are made safe, `name`
    must already be (from `safe_relpath`)."""
    return (
        Path(safe_component(officer_no or "unknown"))
        / safe_component(serial or "unknown")
        / day.isoformat()
        / name
    )


def unique_target(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/stem~N.ext` when that name is taken."""
    target = folder / name
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    n = 2
    while target.exists():
        target = folder / (f"{stem}~{n}.{ext}" if ext else f"{stem}~{n}")
        n += 1
    return target


def is_space_error(err: OSError) -> bool:
    return err.errno in (errno.ENOSPC, errno.EDQUOT)
