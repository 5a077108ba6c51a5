"""A second copy of the most important footage on another data disk (issue 17, S34).

The files the protection rule protects (`station.retention.protection.is_protected`: IMP, graded
`important` or `evidence`, under a legal hold, in a permanent retention category) are kept
on two data disks, so they survive a disk failure. Soon after such a file is stored or
graded, `Mirror` copies it to `<another disk>/.mirror/<sha256[:2]>/<sha256>`: the name
is the hash the copy must have (files with the same bytes share it). The copy is hashed
while written, fsynced, linked into place durably, read back from the medium and checked,
and only then recorded in the file's sidecar (`mirror_disk`) with a `file_mirrored` event.

The scrubber checks both copies (`Scrubber(mirror=...)`): a primary found corrupt or gone
is restored from a good second copy (the bad bytes quarantined), and a second copy found
corrupt or gone is written again from the primary; either raises `store_copy_restored`.
Deleting the file (once it is no longer protected) removes its second copy. When a failed
disk is retired (`station disks retire`), each of its files with a good second copy on a
disk still in use is catalogued there instead of being given up (`promote`), and the worker
then writes a new second copy on another disk. A station with one data disk keeps one
copy; a file whose other disk is away waits for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from sqlalchemy import or_, select

from station.catalog import Catalog, StoredFile
from station.catalog.db import append_event
from station.health.alarms import AlarmBook
from station.retention.protection import PROTECTED_LEVELS, is_protected
from station.store.disks import MIRROR, Store, StoreDisk, unique_target
from station.store.durable import fsync_dir, link_into_place, make_dirs_durable, remove, write_all
from station.store.sidecar import SidecarError, read_sidecar, sidecar_path, write_sidecar

log = logging.getLogger(__name__)

IDLE_S = 15.0  # nothing to copy: look again this much later
RETRY_S = 600.0  # a copy that failed (unreadable or corrupt primary) is tried again after this
CHUNK = 1 << 20
QUARANTINE = ".quarantine"
TEMP = ".tmp-"  # a copy being written, in `<disk>/.mirror/` (left by a kill: removed)


def mirror_path(disk: Path, sha256: str) -> Path:
    """Where a second copy of the bytes `sha256` lives on `disk`."""
    return disk / MIRROR / sha256[:2] / sha256


def remove_mirror(catalog: Catalog, disk: Path, sha256: str) -> None:
    """A deleted file's second copy goes too, unless a live file has the same bytes."""
    with catalog.read() as s:
        other = s.scalars(
            select(StoredFile.id).where(
                StoredFile.sha256 == sha256, StoredFile.deleted_at.is_(None)
            )
        ).first()
    if other is None:
        remove(mirror_path(disk, sha256))


def _hash(path: Path) -> str:
    """SHA-256 of a file as the medium holds it (the page cache dropped first)."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while chunk := os.read(fd, CHUNK):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def _copy_verified(src: Path, dst: Path, sha256: str, root: Path) -> None:
    """Copy `src` to a new file `dst` (never replacing one), durably, and check it.

    The bytes read must hash to `sha256`, and so must the copy read back from the disk;
    otherwise nothing is left at `dst` and ValueError says which."""
    make_dirs_durable(dst.parent, root)
    make_dirs_durable(root / MIRROR, root)  # temps there: never taken for footage
    temp = root / MIRROR / f"{TEMP}{dst.name}-{os.getpid()}-{threading.get_ident()}"
    h = hashlib.sha256()
    try:
        with open(src, "rb") as fi:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                while chunk := fi.read(CHUNK):
                    h.update(chunk)
                    write_all(fd, chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
        if h.hexdigest() != sha256:
            raise ValueError(f"{src} no longer matches its SHA-256")
        if _hash(temp) != sha256:
            raise ValueError(f"the copy written to {temp} does not read back")
        link_into_place(temp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


class Mirror:
    """Writes, checks and restores the second copies (run `run` in its own thread)."""

    def __init__(
        self,
        catalog: Catalog,
        store: Store,
        alarms: AlarmBook,
        *,
        stop: threading.Event,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.alarms = alarms
        self.stop = stop
        self.busy = busy
        self.copied = 0
        self.restored = 0
        self._done: set[tuple[int, str, str]] = set()  # (id, sha256, disk): mirrored, recorded
        self._later: dict[int, float] = {}  # file id -> monotonic time of the next try

    def clear_temps(self) -> None:
        """Remove the copies a stop left half-written (at the start of `run`)."""
        for d in self.store.disks:
            with contextlib.suppress(OSError):
                for p in (d.path / MIRROR).glob(f"{TEMP}*"):
                    os.unlink(p)

    def run(self) -> None:
        """Loop until `stop` is set."""
        self.clear_temps()
        wait = 0.0
        while not self.stop.wait(wait):
            if self.busy():
                wait = IDLE_S
                continue
            try:
                wait = 0.0 if self.round() else IDLE_S
            except Exception:
                log.exception("mirror round failed")
                wait = IDLE_S

    def todo(self) -> list[StoredFile]:
        """Live protected files not yet known to have their second copy."""
        with self.catalog.read() as s:
            rows = s.scalars(
                select(StoredFile)
                .where(
                    StoredFile.deleted_at.is_(None),
                    or_(
                        StoredFile.important == True,  # noqa: E712
                        StoredFile.level.in_(sorted(PROTECTED_LEVELS)),
                        StoredFile.legal_hold.is_not(None),
                        StoredFile.retention_category.is_not(None),
                    ),
                )
                .order_by(StoredFile.id)
            ).all()
        return [
            f
            for f in rows
            if (f.id, f.sha256, f.disk) not in self._done
            and is_protected(f.important, f.level, f.legal_hold, f.retention_category)
        ]

    def round(self) -> int:
        """Give every protected file its second copy; the number of copies written."""
        if len(self.store.disks) < 2:
            return 0
        n, now = 0, time.monotonic()
        for f in self.todo():
            if self.stop.is_set() or self.busy():
                break
            if self._later.get(f.id, 0.0) > now:
                continue
            try:
                n += self.ensure(f)
            except (OSError, ValueError) as e:
                # the scrubber raises the alarm for a corrupt primary; the copy waits
                log.warning("file %s: second copy not written now: %s", f.id, e)
                self._later[f.id] = now + RETRY_S
        return n

    def _other(self, disk: str) -> StoreDisk | None:
        return next((d for d in self.store.disks if str(d.path) != disk and d.present()), None)

    def ensure(self, f: StoredFile) -> int:
        """Write (if needed) and record the second copy of `f`; 1 if one was written."""
        other = self._other(f.disk)
        if other is None or not Path(f.disk, f.rel_path).exists():
            return 0  # the other disk is away, or the primary is: later
        dst = mirror_path(other.path, f.sha256)
        wrote = 0
        if not (dst.exists() and dst.stat().st_size == f.size):
            remove(dst)  # a short or stale copy is never taken for a good one
            _copy_verified(Path(f.disk) / f.rel_path, dst, f.sha256, other.path)
            wrote = 1
        self._record(f, other.path, "written and verified" if wrote else "found")
        self.copied += wrote
        return wrote

    def _record(self, f: StoredFile, disk: Path, how: str) -> None:
        with self.catalog.write() as s:
            row = s.get(StoredFile, f.id)
            if row is None or row.deleted_at is not None:
                return
            sc = read_sidecar(sidecar_path(Path(row.disk), row.rel_path))
            if sc.mirror_disk != str(disk):
                write_sidecar(Path(row.disk), row.rel_path, replace(sc, mirror_disk=str(disk)))
                append_event(s, "file_mirrored", f"{row.rel_path}: second copy on {disk} "
                             f"({how})", file_id=row.id, sha256=row.sha256)  # fmt: skip
        self._done.add((f.id, f.sha256, f.disk))

    def copies(self, f: StoredFile) -> list[Path]:
        """The second copies of `f` present on the other disks."""
        return [
            mirror_path(d.path, f.sha256)
            for d in self.store.disks
            if str(d.path) != f.disk and d.present() and mirror_path(d.path, f.sha256).exists()
        ]

    def check_copy(self, f: StoredFile) -> bool:
        """The scrubber, after the primary verified: is the second copy good? One found
        corrupt or gone is written again from the primary (`store_copy_restored`)."""
        if not is_protected(f.important, f.level, f.legal_hold, f.retention_category):
            return True
        try:
            recorded = read_sidecar(sidecar_path(Path(f.disk), f.rel_path)).mirror_disk
        except SidecarError:
            recorded = None
        found = self.copies(f)
        bad = [p for p in found if _hash(p) != f.sha256]
        if found and not bad:
            return True
        self._done.discard((f.id, f.sha256, f.disk))  # `round` looks at it again
        if not found:
            home = self.store.disk_by_path(recorded) if recorded else None
            if home is None or not home.present():
                return True  # never written, or its disk is away: `round` sees to it
        for p in bad:
            self._quarantine(p, _disk_of(p))
        lost = "corrupt" if bad else "gone"
        try:
            self.ensure(f)
        except (OSError, ValueError) as e:
            self._alarm(f, f"its second copy is {lost} and could not be written again: {e}")
            return False
        if not self.copies(f):
            self._alarm(f, f"its second copy is {lost}; no other disk can take one now")
            return False
        self._alarm(f, f"its second copy was {lost}: written again from the primary")
        return False

    def restore(self, f: StoredFile, problem: str) -> bool:
        """The primary of `f` failed its check (`problem`): put a good second copy back in
        its place, the bad bytes quarantined. False when there is none."""
        primary = Path(f.disk) / f.rel_path
        home = self.store.disk_by_path(f.disk)
        if home is None or not home.present():
            return False  # its disk is away: nothing is written where it was mounted
        good = next((p for p in self.copies(f) if _hash(p) == f.sha256), None)
        if good is None:
            return False
        if primary.exists():
            self._quarantine(primary, Path(f.disk))
        _copy_verified(good, primary, f.sha256, Path(f.disk))
        self.restored += 1
        with self.catalog.write() as s:
            append_event(s, "file_restored", f"{primary}: {problem}; restored from its second "
                         f"copy {good}", file_id=f.id, sha256=f.sha256)  # fmt: skip
        self._alarm(f, f"{problem}: restored from its second copy on {_disk_of(good)}")
        return True

    def _alarm(self, f: StoredFile, what: str) -> None:
        log.error("file %s (%s): %s", f.id, f.rel_path, what)
        self.alarms.raise_("store_copy_restored", f"{f.rel_path}: {what}", f.rel_path)

    @staticmethod
    def _quarantine(path: Path, disk: Path) -> None:
        dst = disk / QUARANTINE / path.relative_to(disk)
        make_dirs_durable(dst.parent, disk)
        n = 1
        while dst.exists():
            dst = dst.with_name(f"{path.name}~{n}")
            n += 1
        os.rename(path, dst)
        fsync_dir(dst.parent)
        fsync_dir(path.parent)


def promote(catalog: Catalog, lost_disk: str, survivors: list[Path]) -> int:
    """Before the rows of a lost disk (catalogued at `lost_disk`) are given up: each file
    whose second copy on one of `survivors` still has its hash gets that copy as its
    stored file there (sidecar first, then the link), and its row follows. The number of
    files kept; each is a `file_restored` event and a `store_copy_restored` alarm."""
    from station.store.recovery import sidecar_of  # recovery needs retention, which needs us

    with catalog.read() as s:
        rows = list(
            s.scalars(
                select(StoredFile).where(
                    StoredFile.disk == lost_disk, StoredFile.deleted_at.is_(None)
                )
            )
        )
        records = {f.id: sidecar_of(f) for f in rows}
    kept = 0
    for i, f in enumerate(rows):
        copy = next(
            (mirror_path(d, f.sha256) for d in survivors
             if mirror_path(d, f.sha256).exists() and _hash(mirror_path(d, f.sha256)) == f.sha256),
            None,
        )  # fmt: skip
        if copy is None:
            continue
        disk = _disk_of(copy)
        folder = disk / Path(f.rel_path).parent
        make_dirs_durable(folder, disk)
        rel = str(unique_target(folder, Path(f.rel_path).name).relative_to(disk))
        write_sidecar(disk, rel, replace(records[f.id], mirror_disk=None))
        if any(o.sha256 == f.sha256 for o in rows[i + 1 :]):
            # another file of the lost disk has the same bytes: the copy stays for it too
            os.link(copy, disk / rel)
            fsync_dir((disk / rel).parent)
        else:
            link_into_place(copy, disk / rel)
        with catalog.write() as s:
            row = s.get(StoredFile, f.id)
            assert row is not None
            row.disk, row.rel_path = str(disk), rel
            append_event(s, "file_restored", f"{f.rel_path}: its disk {lost_disk} is lost; "
                         f"kept from its second copy, now {disk / rel}", file_id=f.id,
                         sha256=f.sha256)  # fmt: skip
        kept += 1
    if kept:
        AlarmBook(catalog).raise_(
            "store_copy_restored",
            f"{kept} file(s) of the lost disk {lost_disk} kept from their second copies",
            lost_disk,
        )
    return kept


def _disk_of(copy: Path) -> Path:
    """The disk a second copy is on (`<disk>/.mirror/xx/<sha256>`)."""
    return copy.parent.parent.parent
