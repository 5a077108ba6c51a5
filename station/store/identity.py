"""Which disk is which: a store disk is known by the marker written on it, not by its path.

An unmounted data disk leaves its bare mount point, a writable folder on the system
disk; a disk mounted at another path (reordered or renamed mounts) is still the same
disk. So each disk the station takes into use gets a marker, `<disk>/.station-disk.json`
with a UUID, recorded in the catalog's `disks` table. A configured disk is written to
only while its marker is there and known:

- marker known: the disk is in use; if it is now at another path, every row that
  pointed at the old path is moved to the new one (one transaction, logged);
- no marker on an unused folder while the catalog has no files yet (a new station, the
  demo, the tests): taken into use without ceremony;
- no marker on a folder holding this station's sidecars that the catalog lists files
  on (a station from before markers): marked, logged;
- anything else (an empty mount point, a disk of another station, a new disk): refused
  with `disk_missing`, until an administrator takes it into use (`station disks adopt`).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from station.catalog import Catalog, IngestJob, StoredDisk, StoredFile
from station.catalog.db import append_event
from station.catalog.models import utcnow
from station.store.disks import MARKER, STAGING, StoreDisk
from station.store.durable import replace_file
from station.store.mirror import promote
from station.store.sidecar import SidecarError, read_sidecar, sidecar_path

log = logging.getLogger(__name__)

LOST_WITH_DISK = "lost with disk"  # the delete reason `retire` gives (ingest carries protection)
UNUSED = {"lost+found", STAGING}  # what a folder may hold and still be a new disk


class DiskIdentityError(Exception):
    """The folder cannot be taken into use as it is."""


@dataclass(frozen=True)
class Marker:
    uuid: str
    station_id: str
    created_at: str


def read_marker(path: Path) -> Marker | None:
    """The marker on a disk, None when it has none; DiskIdentityError when it is damaged."""
    return _read_marker(path)[0]


def _read_marker(path: Path) -> tuple[Marker | None, tuple[int, int] | None]:
    """The marker and the (device, inode) of the very file it was read from."""
    try:
        with open(path / MARKER, "rb") as f:
            st = os.fstat(f.fileno())
            raw = json.loads(f.read().decode("utf-8"))
        m = Marker(str(raw["uuid"]), str(raw.get("station_id", "")), str(raw["created_at"]))
        uuid.UUID(m.uuid)
        return m, (st.st_dev, st.st_ino)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DiskIdentityError(f"{path / MARKER}: unreadable marker ({e})") from None


def write_marker(path: Path, station_id: str, disk_uuid: str | None = None) -> Marker:
    m = Marker(disk_uuid or str(uuid.uuid4()), station_id, utcnow().isoformat())
    replace_file(path / MARKER, json.dumps(asdict(m), indent=1).encode(), mode=0o644)
    return m


def _unused(path: Path) -> bool:
    for entry in path.iterdir():
        if entry.name not in UNUSED:
            return False
        if entry.name == STAGING and any(entry.iterdir()):
            return False
    return True


class DiskBook:
    """The catalog's record of the disks this station has taken into use."""

    def __init__(self, catalog: Catalog, station_id: str, *, folder_disks: bool = False) -> None:
        self.catalog = catalog
        self.station_id = station_id
        # a new catalog may take plain empty folders into use (the demo, tests); else a new
        # disk must be a mount point, so an unmounted disk's bare mount point never is
        self.folder_disks = folder_disks

    def _holds_our_files(self, path: Path, rows_at: str | None = None) -> bool:
        """Some live row recorded at `rows_at` (default: this path) has its sidecar on the
        folder at `path`, with the same hash (up to 200 rows tried: a damaged sidecar or
        two, after the fsck that lost a marker, must not hide the disk's identity)."""
        with self.catalog.read() as s:
            rows = s.execute(
                select(StoredFile.rel_path, StoredFile.sha256)
                .where(StoredFile.disk == (rows_at or str(path)), StoredFile.deleted_at.is_(None))
                .order_by(StoredFile.id.desc())
                .limit(200)
            ).all()
        for rel, digest in rows:
            try:
                if read_sidecar(sidecar_path(path, rel)).sha256 == digest:
                    return True
            except SidecarError:
                continue
        return False

    def known(self) -> dict[str, str]:
        """{uuid: path last seen}."""
        with self.catalog.read() as s:
            return {d.uuid: d.path for d in s.scalars(select(StoredDisk))}

    def identify(self, disk: StoreDisk) -> str | None:
        """Set `disk.identity` if the disk at its path may be used; else say why not."""
        disk.identity = None
        path = disk.path
        if not path.is_dir():
            return f"{path} is not there"
        try:
            marker, key = _read_marker(path)
        except DiskIdentityError as e:
            return str(e)
        known = self.known()
        if marker is not None and marker.uuid in known:
            if known[marker.uuid] != str(path):
                self._moved(marker.uuid, known[marker.uuid], str(path))
            disk.bind(marker.uuid, key)  # the marker file read, not whatever is there now
            return None
        with self.catalog.read() as s:
            files_here = s.scalar(
                select(func.count()).select_from(StoredFile).where(StoredFile.disk == str(path))
            )
            files_at_all = s.scalar(select(func.count()).select_from(StoredFile))
        if marker is not None:
            if marker.station_id == self.station_id and self._holds_our_files(path):
                # ours after all: marked, but the record was lost (a power cut in between)
                self._record(marker, path, "marked disk holding this catalog's files")
                disk.bind(marker.uuid, key)
                return None
            if files_at_all == 0 and not known:
                self._record(marker, path, "found on the disk of a new catalog")
                disk.bind(marker.uuid, key)
                return None
            return (
                f"{path} holds another station's disk (marker {marker.uuid}): take it into use "
                "with `station disks adopt` if it is meant to be here"
            )
        if files_at_all == 0 and _unused(path):
            if not (self.folder_disks or os.path.ismount(path)):
                return (
                    f"{path} is not a mounted disk (is it mounted?): a folder is taken into "
                    "use only with store.folder_disks, or with `station disks adopt`"
                )
            disk.identity = self._record(write_marker(path, self.station_id), path, "first use")
            return None
        if files_here and (path / ".meta").is_dir() and str(path) not in known.values():
            m = write_marker(path, self.station_id)
            disk.identity = self._record(m, path, "a disk in use from before disk markers")
            return None
        return (
            f"{path} has no station marker (is the disk mounted?): a new disk is taken into "
            "use with `station disks adopt`"
        )

    def adopt(self, disk: StoreDisk, by: str) -> str:
        """An administrator takes a new or replaced disk into use at its configured path."""
        path = disk.path
        if not path.is_dir():
            raise DiskIdentityError(f"{path} is not there")
        marker = read_marker(path)
        known = self.known()
        if marker is not None and marker.uuid in known:
            raise DiskIdentityError(f"{path} is already in use as disk {marker.uuid}")
        if marker is None:
            # a known disk whose marker was lost (fsck, a bad sector), here or in another
            # bay: its files' sidecars say which it is; it gets its own identity back
            for old, last in known.items():
                if self._holds_our_files(path, last):
                    if last != str(path):
                        self._moved(old, last, str(path))
                    m = write_marker(path, self.station_id, old)
                    disk.identity = self._record(m, path, "its lost marker written again", by=by)
                    return m.uuid
        if str(path) in known.values():
            old = next(u for u, p in known.items() if p == str(path))
            # the disk it replaces takes its rows along, parked until it is found again (a
            # loose cable, a repaired disk put back): they are its files, not the new disk's
            with self.catalog.write() as s:
                n = self._park(s, old, str(path))
                append_event(
                    s, "disk_replaced", f"disk {old} at {path} replaced; its {n} row(s) wait "
                    "for it", actor=by, uuid=old, files=n,
                )  # fmt: skip
        if marker is None:
            marker = write_marker(path, self.station_id)
        disk.identity = self._record(marker, path, "taken into use", by=by)
        return marker.uuid

    def retire(self, disk_uuid: str, by: str) -> int:
        """An administrator says a disk that is not here is gone for good: its live rows are
        marked lost (tombstoned, nothing removed), so its recorders' files still on their
        cards are collected again, and the disk is forgotten (if it ever comes back it is a
        foreign disk until adopted; its files are then catalogued from their sidecars)."""
        known = self.known()
        if disk_uuid not in known:
            raise DiskIdentityError(f"no disk {disk_uuid} in the catalog (`station disks`)")
        path = known[disk_uuid]
        if not path.startswith("(moved) "):
            raise DiskIdentityError(
                f"disk {disk_uuid} was last seen at {path}: only a disk that is not in use "
                "(replaced, or away from every configured path) can be retired"
            )
        survivors = [
            Path(p) for u, p in known.items()
            if u != disk_uuid and not p.startswith("(moved) ") and (Path(p) / MARKER).exists()
        ]  # fmt: skip
        kept = promote(self.catalog, path, survivors)  # files with a second copy live on
        now = utcnow()
        with self.catalog.write() as s:
            rows = s.scalars(
                select(StoredFile).where(StoredFile.disk == path, StoredFile.deleted_at.is_(None))
            ).all()
            for f in rows:
                f.deleted_at, f.deleted_by = now, by
                f.delete_reason = f"{LOST_WITH_DISK} {disk_uuid} (retired)"
            s.execute(update(IngestJob).where(IngestJob.disk == path).values(state="failed"))
            record = s.get(StoredDisk, disk_uuid)
            assert record is not None
            s.delete(record)
            append_event(
                s, "disk_retired", f"disk {disk_uuid} retired: {len(rows)} file(s) lost with "
                f"it (those still on their recorders are collected again), {kept} kept from "
                "their second copies", actor=by, uuid=disk_uuid, files=len(rows), kept=kept,
            )  # fmt: skip
        log.warning("store disk %s retired by %s: %s file(s) lost", disk_uuid, by, len(rows))
        return len(rows)

    def _record(self, m: Marker, path: Path, why: str, *, by: str = "station") -> str:
        with self.catalog.write() as s:
            s.merge(StoredDisk(uuid=m.uuid, path=str(path), taken_at=utcnow(), taken_by=by))
            append_event(s, "disk_identified", f"{path}: {why}", actor=by, uuid=m.uuid)
        log.info("store disk %s is %s (%s)", path, m.uuid, why)
        return m.uuid

    def _moved(self, disk_uuid: str, old: str, new: str) -> None:
        """The same disk at a new path: its rows follow it, so nothing is catalogued twice.

        If another known disk was last seen at `new` (two disks swapped mount points), its
        rows are parked on a placeholder path first, and follow it when it is found."""
        with self.catalog.write() as s:
            for other in s.scalars(select(StoredDisk).where(StoredDisk.path == new)):
                if other.uuid != disk_uuid:
                    self._park(s, other.uuid, new)
            n = self._repoint(s, old, new)
            row = s.get(StoredDisk, disk_uuid)
            assert row is not None
            row.path = new
            append_event(
                s, "disk_moved", f"disk {disk_uuid}: {old} -> {new}", uuid=disk_uuid, files=n,
            )  # fmt: skip
        log.warning("store disk %s moved from %s to %s", disk_uuid, old, new)

    @classmethod
    def _park(cls, s: Session, disk_uuid: str, path: str) -> int:
        """The disk last seen at `path` is not there now: it and its rows and jobs move to a
        placeholder path, and follow it back (`_moved`) when its marker is found again."""
        row = s.get(StoredDisk, disk_uuid)
        assert row is not None
        row.path = f"(moved) {disk_uuid}"
        return cls._repoint(s, path, row.path)

    @staticmethod
    def _repoint(s: Session, old: str, new: str) -> int:
        """Rows and jobs that were on the disk at `old` are now at `new`."""
        n = s.execute(update(StoredFile).where(StoredFile.disk == old).values(disk=new)).rowcount
        s.execute(update(IngestJob).where(IngestJob.disk == old).values(disk=new))
        for job in s.scalars(select(IngestJob).where(IngestJob.disk == new)):
            if job.temp_path.startswith(old + "/"):
                job.temp_path = new + job.temp_path[len(old) :]
        return int(n)
