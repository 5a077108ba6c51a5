"""Moving one card file into the store without ever losing or doubling it.

The order of operations is the whole point (STYLE.md, "Ingest"):

1. the job row is committed before the first byte moves;
2. bytes go to a temp file in the target disk's staging folder, hashed while
   streaming (SHA-256, the evidence hash, and a fast XXH3-128 digest of the same
   buffers), with `fdatasync` every `sync_every` bytes and the durable offset
   (and the SHA-256 of that prefix) committed to the catalog;
3. the finished temp file is synced, read back from the disk itself (not the
   page cache) and its fast digest compared with the streamed one;
4. it is linked to its final name (never over an existing file), the folder is
   fsynced, and the temp name removed;
5. the catalog row is committed;
6. only then is the file deleted from the recorder.

A crash or unplug at any point leaves a job row that says how far it got; the
next docking of the same recorder picks it up from there.

Why one module of about 1,000 lines: the steps above share one job row, one temp file
and the crash points between them; split across modules, the order that is the whole
point would no longer be readable in one place.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import logging
import mmap
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

import xxhash
from sqlalchemy import select
from sqlalchemy.orm import Session

from station import faults
from station.catalog import Catalog, IngestJob, Officer, StoredFile
from station.catalog.db import append_event
from station.catalog.models import utcnow
from station.drivers.base import CardFile, CardReadError
from station.drivers.card import ALIGN, Card, set_direct
from station.health.clockguard import ClockGuard
from station.names import parse_card_path, safe_relpath
from station.retention import sweeper as retention
from station.retention.protection import LEVELS
from station.store.disks import Store, StoreDisk, is_space_error, stored_relpath, unique_target
from station.store.durable import (
    copy_prefix,
    fsync_dir,
    link_into_place,
    make_dirs_durable,
    write_all,
)
from station.store.identity import LOST_WITH_DISK
from station.store.sidecar import Sidecar, mirror_row, read_sidecar, sidecar_path, write_sidecar

log = logging.getLogger(__name__)

OVERLAP = 64 * 1024  # bytes re-read from the card on resume to prove it is the same file


class _Hasher(Protocol):
    def update(self, data: memoryview | bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


class StorageFull(Exception):
    """No disk has room for the file: collection must stop, the card keeps its files."""


class Interrupted(Exception):
    """The station is shutting down; the job stays resumable."""


class VerifyFailed(Exception):
    """The stored bytes are not the bytes that were read: nothing is deleted."""


class FileChanged(Exception):
    """The card file changed while it was copied (still being recorded): try again later."""


class AlreadyStored(FileChanged):
    """Another docking committed this file first: look again (it is then a duplicate)."""


class KeptOnCard(Exception):
    """The file stays on the recorder for now (its stored copy is on a disk not present)."""


@dataclass
class Owner:
    """Whose files these are: the officer bound to the recorder, not the file names."""

    recorder_id: int
    serial: str
    officer_id: int
    officer_no: str
    session_id: int
    port: int
    officer_name: str = ""
    unit_no: str = ""
    unit_name: str = ""
    id_code: str = ""
    station_id: str = ""


@dataclass
class Outcome:
    kind: str  # stored | duplicate
    file_id: int | None
    sha256: str


def fast_digest() -> xxhash.xxh3_128:
    """The read-back check's digest (XXH3-128): computed on the very buffers that are
    SHA-256-hashed and written while streaming, then on the stored file read back from the
    disk. Not the evidence hash (that is the SHA-256, also checked by the scrubber and the
    central server): it proves the disk holds the streamed bytes, at ~1 % of SHA-256's CPU
    on the cabinet (docs/benchmarks.md, "One cryptographic pass per byte")."""
    return xxhash.xxh3_128()


def hash_file(
    path: Path,
    start: int = 0,
    end: int | None = None,
    *,
    uncached: bool = False,
    chunk: int = 1 << 20,
) -> hashlib._Hash:
    """SHA-256 of bytes [start, end) of a stored file; `uncached` reads from the disk itself.

    An uncached whole-file read uses O_DIRECT (no page-cache copy: the bytes come
    from the medium, at half the CPU); where the filesystem refuses it (tmpfs), the
    file's clean pages are dropped first and it is read normally.
    """
    (h,) = digest_file(path, (hashlib.sha256,), start, end, uncached=uncached, chunk=chunk)
    return h  # type: ignore[return-value]


def readback_digest(path: Path, *, chunk: int = 1 << 20) -> str:
    """The fast digest (`fast_digest`) of a whole stored file, read from the disk itself."""
    (h,) = digest_file(path, (fast_digest,), uncached=True, chunk=chunk)
    return h.hexdigest()


def digest_file(
    path: Path,
    makers: tuple[Callable[[], _Hasher], ...],
    start: int = 0,
    end: int | None = None,
    *,
    uncached: bool = False,
    chunk: int = 1 << 20,
) -> list[_Hasher]:
    """Bytes [start, end) of a file fed to one new hasher per maker, in one read of it."""
    if uncached and start == 0 and end is None:
        direct = _hash_direct(path, makers, chunk)
        if direct is not None:
            return direct
    hs = [make() for make in makers]
    fd = os.open(path, os.O_RDONLY)
    try:
        if uncached:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        buf = bytearray(chunk)
        mv = memoryview(buf)
        pos = start
        os.lseek(fd, start, os.SEEK_SET)
        while end is None or pos < end:
            want = chunk if end is None else min(chunk, end - pos)
            n = os.readv(fd, [mv[:want]])
            if n == 0:
                break
            piece = mv[:n]
            for h in hs:
                h.update(piece)
            pos += n
        if end is not None and pos < end:
            raise VerifyFailed(f"{path} is shorter than {end} bytes")
        return hs
    finally:
        os.close(fd)


def _hash_direct(
    path: Path, makers: tuple[Callable[[], _Hasher], ...], chunk: int
) -> list[_Hasher] | None:
    """Hash a whole file read with O_DIRECT into a page-aligned buffer; None if refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return None
        raise
    buf = mmap.mmap(-1, chunk)  # anonymous maps are page-aligned, as O_DIRECT needs
    try:
        hs = [make() for make in makers]
        mv = memoryview(buf)
        pos = 0
        while True:
            try:
                n = os.readv(fd, [mv])
            except OSError as e:
                if e.errno == errno.EINVAL and pos == 0:
                    return None  # the filesystem refuses direct reads
                raise
            piece = mv[:n]
            for h in hs:
                h.update(piece)
            piece.release()
            pos += n
            if n < chunk:  # end of file: direct reads cannot go on from an unaligned offset
                break
        mv.release()
        # a short read before the end would leave bytes unread: then read it normally
        return hs if pos == os.fstat(fd).st_size else None
    finally:
        buf.close()
        os.close(fd)


class FileIngest:
    """Collects the files of one docked recorder, one at a time."""

    def __init__(
        self,
        catalog: Catalog,
        store: Store,
        card: Card,
        owner: Owner,
        *,
        chunk: int,
        sync_every: int,
        tz: ZoneInfo | None,
        stop: threading.Event,
        progress: Callable[[int], None],
        throttle: Callable[[int], None] | None = None,
        card_recheck: str = "sample",
        full_recheck_below: int = 0,
        clock: ClockGuard | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.card = card
        self.owner = owner
        self.chunk = chunk
        self.sync_every = sync_every
        self.tz = tz
        self.stop = stop
        self.progress = progress
        self.throttle = throttle
        self.card_recheck = card_recheck
        self.full_recheck_below = full_recheck_below
        self._corrupt_copies: dict[bytes, int] = {}  # card path -> stored row that failed
        self.clock = clock
        self._buf: memoryview | None = None

    # --- entry point ------------------------------------------------------------------

    def copy(self, cf: CardFile) -> Callable[[], Outcome]:
        """Copy `cf` into the store; return the step that verifies, stores and clears it.

        The collector runs that step for one file while it copies the next, so the
        card is read without pause; nothing is cleared before its own step succeeds.
        """
        dup = self._find_duplicate(cf)
        if dup is not None:
            return lambda: dup
        job = self._resumable_job(cf)
        if job is not None and job.state == "verified":
            outcome = self._finish_verified(job, cf)
            if outcome is not None:
                return lambda: outcome
            job = None
        if job is None:
            job, disk = self._new_job(cf)
            return self._copy(job, cf, reserved=disk)
        return self._copy(job, cf)

    # --- duplicates ---------------------------------------------------------------------

    def _find_duplicate(self, cf: CardFile) -> Outcome | None:
        with self.catalog.read() as s:
            rows = s.scalars(
                select(StoredFile).where(
                    StoredFile.recorder_id == self.owner.recorder_id,
                    StoredFile.card_path == cf.path,
                    StoredFile.size == cf.size,
                    StoredFile.deleted_at.is_(None),  # a deleted copy is no copy
                )
            ).all()
        if not rows:
            return None
        # Same recorder, path and size: read the card copy to prove it is the same bytes.
        h = hashlib.sha256()
        stream = self.card.open_file(cf.path, 0)
        try:
            buf = bytearray(self.chunk)
            mv = memoryview(buf)
            while n := stream.readinto(mv):
                h.update(mv[:n])
        finally:
            stream.close()
        digest = h.hexdigest()
        match = next((r for r in rows if r.sha256 == digest), None)
        if match is None:
            return None
        # The card's copy goes only if the stored one still holds these bytes.
        held_on = self.store.disk_by_path(match.disk)
        if held_on is None or not held_on.present():
            lost = " (`station disks retire` if that disk is lost for good)"
            raise KeptOnCard(
                f"{parse_card_path(cf.path).display}: stored as file {match.id} on "
                f"{match.disk}, which is not present: kept on the recorder"
                + (lost if match.disk.startswith("(moved) ") else "")
            )
        stored = Path(match.disk) / match.rel_path
        try:
            intact = hash_file(stored, uncached=True).hexdigest() == digest
        except OSError:
            intact = False
        if not intact:
            log.warning("%s: stored copy %s does not verify: collected again", cf.path, stored)
            self._corrupt_copies[cf.path] = match.id  # the new copy may sit beside it
            return None
        with self.catalog.read() as s:  # the job that stored it ends cleared too
            job_id = s.scalar(select(IngestJob.id).where(IngestJob.file_id == match.id))
        self._delete_from_card(cf, match.id, duplicate=True, job_id=job_id)
        self.progress(cf.size)
        return Outcome("duplicate", match.id, digest)

    # --- jobs ---------------------------------------------------------------------------

    def _resumable_job(self, cf: CardFile) -> IngestJob | None:
        with self.catalog.read() as s:
            job = s.scalars(
                select(IngestJob)
                .where(
                    IngestJob.recorder_id == self.owner.recorder_id,
                    IngestJob.card_path == cf.path,
                    IngestJob.state.in_(("copying", "verified")),
                )
                .order_by(IngestJob.id.desc())
            ).first()
        if job is None:
            return None
        if job.size != cf.size or job.mtime != cf.mtime:
            self._abandon(job, "the card file changed since the interrupted transfer")
            return None
        return job

    def _abandon(self, job: IngestJob, why: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(job.temp_path)
        with self.catalog.write() as s:
            row = s.get(IngestJob, job.id)
            assert row is not None
            row.state = "abandoned"
            row.error = why
            append_event(
                s,
                "transfer_abandoned",
                why,
                port=self.owner.port,
                serial=self.owner.serial,
                job_id=job.id,
            )

    def _new_job(self, cf: CardFile) -> tuple[IngestJob, StoreDisk]:
        """A job row for `cf` on the disk the store policy gives it (space reserved)."""
        disk = self.store.reserve(cf.size)
        if disk is None:
            raise StorageFull(f"no disk has room for {cf.size} bytes")
        try:
            job = self._create_job(cf, disk)
        except BaseException:
            self.store.release(disk, cf.size)
            raise
        return job, disk

    def _create_job(self, cf: CardFile, disk: StoreDisk) -> IngestJob:
        """The new job, superseding in the same transaction any unfinished one for the
        same card file (a verified copy on a disk that did not come back, say): recovery
        never commits a superseded job, so the file cannot be stored twice that way."""
        with self.catalog.write() as s:
            for old in s.scalars(
                select(IngestJob).where(
                    IngestJob.recorder_id == self.owner.recorder_id,
                    IngestJob.card_path == cf.path,
                    IngestJob.state.in_(("copying", "verified")),
                )
            ):
                old.state, old.error = "superseded", "collected again by a later job"
            job = IngestJob(
                recorder_id=self.owner.recorder_id,
                session_id=self.owner.session_id,
                officer_id=self.owner.officer_id,
                card_path=cf.path,
                size=cf.size,
                mtime=cf.mtime,
                disk=str(disk.path),
                temp_path="",
            )
            s.add(job)
            s.flush()
            job.temp_path = str(disk.staging / f"{job.id}.part")
        return job

    # --- copying ------------------------------------------------------------------------

    def _resume_offset(self, job: IngestJob, cf: CardFile) -> int:
        """How much of the temp file can be trusted, checked against disk and card."""
        temp = Path(job.temp_path)
        offset = job.durable_offset
        if offset == 0:
            return 0
        try:
            if temp.stat().st_size < offset:
                raise VerifyFailed("temp file shorter than its durable offset")
            if hash_file(temp, 0, offset).hexdigest() != job.prefix_sha256:
                raise VerifyFailed("stored prefix does not match its recorded hash")
            start = max(0, offset - OVERLAP)
            card = self.card.read_range(cf.path, start, offset - start)
            fd = os.open(temp, os.O_RDONLY)
            try:
                ours = os.pread(fd, offset - start, start)
            finally:
                os.close(fd)
            if card != ours:
                raise VerifyFailed("the card's bytes before the resume point changed")
        except (OSError, VerifyFailed) as e:
            log.warning("job %s: cannot resume at %s (%s); starting over", job.id, offset, e)
            with self.catalog.write() as s:
                append_event(
                    s,
                    "resume_rejected",
                    str(e),
                    port=self.owner.port,
                    serial=self.owner.serial,
                    job_id=job.id,
                    offset=offset,
                )
            return 0
        log.info("job %s: resuming at byte %s of %s", job.id, offset, cf.size)
        return offset

    def _copy(
        self, job: IngestJob, cf: CardFile, reserved: StoreDisk | None = None
    ) -> Callable[[], Outcome]:
        """Copy; return the verify-and-store step. `reserved`: the disk promised to a new job."""
        disk = reserved or self.store.disk_by_path(job.disk)
        try:
            if reserved is not None:
                offset = 0
            elif disk is not None and self.store.reserve_on(disk, cf.size):
                reserved = disk
                offset = self._resume_offset(job, cf)
            else:
                job, disk, offset = self._move(job, cf, disk, "no room left on its disk")
                reserved = disk
            while True:
                try:
                    digest, fast = self._stream(job, cf, disk, offset)
                    break
                except OSError as e:
                    if not is_space_error(e) and e.errno != errno.EIO:
                        raise
                    if not is_space_error(e):
                        self.store.take_out_of_use(disk, f"I/O error: {e.strerror}")
                    self.store.release(disk, cf.size)
                    reserved = None
                    job, disk, offset = self._move(job, cf, disk, e.strerror or str(e))
                    reserved = disk
        finally:
            if reserved is not None:
                self.store.release(reserved, cf.size)
        return lambda: self._finish(job, cf, disk, digest, fast)

    def _buffer(self) -> memoryview:
        """The copy buffer of this docking (one chunk, page-aligned as O_DIRECT needs),
        reused for every file: only the copying thread streams."""
        if self._buf is None or len(self._buf) != self.chunk:
            self._buf = memoryview(mmap.mmap(-1, self.chunk))
        return self._buf

    def _prefix_digests(self, job: IngestJob, temp: Path, offset: int) -> list[_Hasher]:
        """Both hashes carried on from a resumed temp file's first `offset` bytes, read
        once; its SHA-256 must still be the recorded prefix hash, so the fast digest the
        read-back is held to covers exactly the bytes the evidence hash does."""
        sha, fast = digest_file(temp, (hashlib.sha256, fast_digest), 0, offset, chunk=self.chunk)
        if sha.hexdigest() != job.prefix_sha256:
            raise self._fail(job, f"{temp}: its first {offset} bytes changed since they were "
                             "checked for the resume")  # fmt: skip
        return [sha, fast]

    def _stream(
        self, job: IngestJob, cf: CardFile, disk: StoreDisk, offset: int
    ) -> tuple[str, str]:
        """Copy bytes [offset, size) into the temp file; return the SHA-256 of the whole
        and its fast digest (`fast_digest`), both computed on the buffers written."""
        temp = Path(job.temp_path)
        disk.prepare()
        if offset:
            h, fast = self._prefix_digests(job, temp, offset)
        else:
            h, fast = hashlib.sha256(), fast_digest()
        mv = self._buffer()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT, 0o640)
        try:
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
            # Whole aligned chunks go to the disk directly (O_DIRECT): no copy through
            # the page cache and no dirty pages to write back; the file's unaligned tail
            # (or a filesystem that refuses it, like tmpfs) is written normally.
            direct = offset % ALIGN == 0 and self.chunk % ALIGN == 0 and set_direct(fd, True)
            synced = offset
            stream = self.card.open_file(cf.path, offset, direct=True)
            try:
                while offset < cf.size:
                    if self.stop.is_set():
                        raise Interrupted()
                    n = stream.readinto(mv[: min(self.chunk, cf.size - offset)])
                    if n == 0:
                        raise CardReadError(f"{cf.path!r} ended at {offset} of {cf.size} bytes")
                    piece = mv[:n]
                    h.update(piece)  # the evidence hash: the one cryptographic pass
                    fast.update(piece)  # what the read-back is held to
                    faults.check_write(job.disk)
                    if direct and n % ALIGN:
                        direct = False
                        set_direct(fd, False)
                    try:
                        write_all(fd, piece)
                    except OSError as e:
                        if e.errno != errno.EINVAL or not direct:
                            raise
                        # refused as a direct write after all: the position has not moved
                        direct = False
                        set_direct(fd, False)
                        write_all(fd, piece)
                    offset += n
                    faults.crashpoint("copy_chunk")
                    self.progress(n)
                    if self.throttle:
                        self.throttle(n)
                    if offset - synced >= self.sync_every and offset < cf.size:
                        os.fdatasync(fd)
                        synced = offset
                        self._record_durable(job, offset, h.copy().hexdigest())
            finally:
                stream.close()
            os.fdatasync(fd)
        finally:
            os.close(fd)
        faults.crashpoint("after_fsync")
        return h.hexdigest(), fast.hexdigest()

    def _record_durable(self, job: IngestJob, offset: int, prefix: str) -> None:
        if job.durable_offset == 0:
            # the temp file's name must survive a power cut before we count on it
            fsync_dir(Path(job.temp_path).parent)
        with self.catalog.write() as s:
            row = s.get(IngestJob, job.id)
            assert row is not None
            row.durable_offset = offset
            row.prefix_sha256 = prefix
        job.durable_offset, job.prefix_sha256 = offset, prefix

    def _move(
        self, job: IngestJob, cf: CardFile, old: StoreDisk | None, why: str
    ) -> tuple[IngestJob, StoreDisk, int]:
        """Place a job on another disk (reserved), carrying its durable prefix if it reads back."""
        log.warning("job %s: %s on %s; moving to another disk", job.id, why, job.disk)
        exclude = frozenset({old.index}) if old is not None else frozenset()
        new = self.store.reserve(cf.size, exclude=exclude)
        if new is None:
            raise StorageFull(f"{job.disk}: {why}, and no other disk has room")
        new.prepare()
        old_temp = Path(job.temp_path)
        new_temp = new.staging / f"{job.id}.part"
        offset = 0
        try:
            if job.durable_offset and (
                hash_file(old_temp, 0, job.durable_offset).hexdigest() == job.prefix_sha256
            ):
                copy_prefix(old_temp, new_temp, job.durable_offset)
                offset = job.durable_offset
        except OSError as e:
            log.warning("job %s: prefix could not be carried over: %s", job.id, e)
        with self.catalog.write() as s:
            row = s.get(IngestJob, job.id)
            assert row is not None
            row.disk, row.temp_path, row.durable_offset = str(new.path), str(new_temp), offset
            if offset == 0:
                row.prefix_sha256 = None
            append_event(
                s,
                "transfer_moved",
                f"{job.disk} -> {new.path}: {why}",
                port=self.owner.port,
                serial=self.owner.serial,
                job_id=job.id,
                offset=offset,
            )
            s.flush()
            s.expunge(row)
        with contextlib.suppress(OSError):
            os.unlink(old_temp)
        return row, new, offset

    # --- finishing ----------------------------------------------------------------------

    def _fail(self, job: IngestJob, why: str) -> VerifyFailed:
        """Give up on a transfer whose bytes cannot be trusted; the card keeps the file."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(job.temp_path)
        with self.catalog.write() as s:
            row = s.get(IngestJob, job.id)
            assert row is not None
            row.state, row.error = "failed", why
            append_event(
                s,
                "verify_failed",
                why,
                port=self.owner.port,
                serial=self.owner.serial,
                job_id=job.id,
            )
        return VerifyFailed(why)

    def _second_look(self, job: IngestJob, cf: CardFile) -> None:
        """Read the card again: a file still growing, or bytes that change, is not kept."""
        now = self.card.stat_file(cf.path)
        if now is None or (now.size, now.mtime) != (cf.size, cf.mtime):
            self._abandon(job, "the card file changed while it was copied")
            raise FileChanged(parse_card_path(cf.path).display)
        if self.card_recheck == "off" or cf.size == 0:
            return
        if (
            self.card_recheck == "full"
            or cf.size <= self.full_recheck_below
            or parse_card_path(cf.path).important
        ):
            # every byte compared again: a transient misread during the copy is caught
            windows = [(0, cf.size)]
        else:
            w = min(OVERLAP, cf.size)
            rng = random.Random(job.id)
            picks = {(0, w), (cf.size - w, w)}
            picks |= {(rng.randrange(cf.size - w + 1), w) for _ in range(2)}
            windows = sorted(picks)
        fd = os.open(job.temp_path, os.O_RDONLY)
        try:
            for start, length in windows:
                pos = start
                while pos < start + length:
                    n = min(self.chunk, start + length - pos)
                    if self.card.read_range(cf.path, pos, n) != os.pread(fd, n, pos):
                        name = parse_card_path(cf.path).display
                        raise self._fail(
                            job,
                            f"{name}: the recorder returned different bytes "
                            f"when read again at byte {pos}",
                        )
                    pos += n
        finally:
            os.close(fd)

    def _finish(
        self, job: IngestJob, cf: CardFile, disk: StoreDisk, digest: str, fast: str
    ) -> Outcome:
        """Verify the copied temp file and store it: `digest` is the SHA-256 streamed (the
        evidence hash), `fast` the fast digest of the same buffers; the file read back from
        the disk must give `fast` again, or nothing is stored or cleared."""
        temp = Path(job.temp_path)
        if temp.stat().st_size != cf.size:
            raise self._fail(job, f"temp file has {temp.stat().st_size} bytes, card {cf.size}")
        self._second_look(job, cf)
        readback = readback_digest(temp, chunk=self.chunk)
        if readback != fast:
            raise self._fail(job, f"{temp}: read back XXH3-128 {readback}, streamed {fast}")
        owner = self._owner_of(job)
        day = dt.datetime.now(self.tz).date()
        rel_dir = stored_relpath(owner.officer_no, owner.serial, day, "")
        folder = disk.path / rel_dir
        make_dirs_durable(folder, disk.path)
        final = unique_target(folder, safe_relpath(cf.path))
        rel = str(final.relative_to(disk.path))
        write_sidecar(disk.path, rel, self._sidecar(cf, digest, owner))
        faults.crashpoint("after_sidecar")
        with self.catalog.write() as s:
            row = s.get(IngestJob, job.id)
            assert row is not None
            row.state, row.sha256, row.final_path = "verified", digest, rel
        job.state, job.sha256, job.final_path = "verified", digest, rel
        faults.crashpoint("after_verify")
        link_into_place(temp, final)
        faults.crashpoint("after_link")
        return self._commit(job, cf, disk)

    def _owner_of(self, job: IngestJob) -> Owner:
        """Whose file a job collects: the officer bound when it began, even if the recorder
        has been given to another officer since (a job finished at a later docking)."""
        if job.officer_id is None or job.officer_id == self.owner.officer_id:
            return self.owner
        with self.catalog.read() as s:
            officer = s.get(Officer, job.officer_id)
        if officer is None:
            return self.owner
        return replace(
            self.owner,
            officer_id=officer.id,
            officer_no=officer.officer_no,
            officer_name=officer.name,
            unit_no=officer.unit_no,
            unit_name=officer.unit_name,
        )

    def _sidecar(self, cf: CardFile, digest: str, o: Owner) -> Sidecar:
        name = parse_card_path(cf.path)
        now = utcnow()
        return Sidecar(
            sha256=digest,
            size=cf.size,
            officer_no=o.officer_no,
            officer_name=o.officer_name,
            unit_no=o.unit_no,
            unit_name=o.unit_name,
            serial=o.serial,
            id_code=o.id_code,
            card_path_hex=cf.path.hex(),
            name=name.name,
            kind=name.kind,
            recorded_at=name.recorded_at.isoformat() if name.recorded_at else None,
            collected_at=now.isoformat(),
            clock_untrusted=bool(self.clock and self.clock.untrusted(now)),
            important=name.important,
            level="important" if name.important else "normal",
            station_id=o.station_id,
        )

    def _finish_verified(self, job: IngestJob, cf: CardFile) -> Outcome | None:
        """A job that crashed after verification: find its bytes and commit them."""
        disk = self.store.disk_by_path(job.disk)
        if disk is None or not disk.present() or job.final_path is None:
            return None
        final = disk.path / job.final_path
        temp = Path(job.temp_path)
        try:
            if not final.exists() and temp.exists():
                link_into_place(temp, final)
            elif final.exists() and temp.exists():
                os.unlink(temp)
            if hash_file(final).hexdigest() != job.sha256:
                return None
        except OSError:
            return None
        log.info("job %s: recovered a verified file at %s", job.id, final)
        return self._commit(job, cf, disk)

    def _commit(self, job: IngestJob, cf: CardFile, disk: StoreDisk) -> Outcome:
        assert job.final_path is not None and job.sha256 is not None
        if not disk.present():  # unmounted, or another disk mounted in its place meanwhile
            raise self._fail(
                job, f"{disk.path} is no longer the disk the file was written to: kept on the "
                "recorder (the written copy is adopted from its sidecar when its disk is back)",
            )  # fmt: skip
        owner = self._owner_of(job)
        sc = read_sidecar(sidecar_path(disk.path, job.final_path))
        if (sc.sha256, sc.size, sc.serial, sc.card_path) != (
            job.sha256,
            cf.size,
            owner.serial,
            cf.path,
        ) or sc.officer_no != owner.officer_no:
            # the record at the final name is not this job's: commit nothing, delete nothing
            raise self._fail(job, f"{job.final_path}: its sidecar describes another file")
        with self.catalog.write() as s:
            f = store_row(
                s,
                job,
                disk.path,
                sc,
                officer_id=owner.officer_id,
                replaces=self._corrupt_copies.get(cf.path),
                session_id=self.owner.session_id,
                port=self.owner.port,
                message=f"{sc.name} -> {disk.path / job.final_path}",
            )
            file_id = f.id
            carried = (
                f.level != sc.level or f.legal_hold or f.case_no or f.note
                or f.retention_category
            )  # fmt: skip
            if carried:  # the replaced copy's protection, in the new sidecar too
                write_sidecar(disk.path, job.final_path, mirror_row(sc, f))
        faults.crashpoint("after_commit")
        self._delete_from_card(cf, file_id, duplicate=False, job_id=job.id)
        return Outcome("stored", file_id, job.sha256)

    def _delete_from_card(
        self, cf: CardFile, file_id: int, *, duplicate: bool, job_id: int | None = None
    ) -> None:
        """Clear one stored file from the card, unless it changed since it was read: bytes
        appended after the second look are not in the store, so the file stays and is
        collected again."""
        display = parse_card_path(cf.path).display
        kept = f"{display}: changed after it was stored; kept on the recorder and collected again"
        if self._changed_on_card(cf):
            with self.catalog.write() as s:
                append_event(s, "card_file_kept", kept, port=self.owner.port,
                             serial=self.owner.serial, file_id=file_id)  # fmt: skip
            raise FileChanged(display)
        # The deletion is logged (and the job marked) before it is made: a power cut after
        # the card's delete reached the card can then never leave a deletion out of the log.
        # Cut between the two, the file is still on the card, and the next docking clears it
        # as a duplicate of the stored copy (logged again).
        retention.clearing(file_id, True)  # this process deletes its card copy now
        try:
            self._clearing(
                job_id,
                "clearing",
                "card_file_deleted",
                ("duplicate of stored file: " if duplicate else "") + display,
                file_id,
            )
            # again right before the delete: that commit may have waited for the catalog
            # while the recorder wrote on
            if self._changed_on_card(cf):
                self._clearing(job_id, "stored", "card_file_kept", kept, file_id)
                raise FileChanged(display)
            try:
                self.card.delete_file(cf.path)
            except BaseException as e:
                self._clearing(job_id, "stored", "card_delete_failed", f"{display}: {e}", file_id)
                raise
            faults.crashpoint("after_card_delete")
            with self.catalog.write() as s:
                if job_id is not None and (row := s.get(IngestJob, job_id)) is not None:
                    row.state = "cleared"
                if (stored := s.get(StoredFile, file_id)) is not None:
                    stored.card_clearing_at = None
        finally:
            retention.clearing(file_id, False)

    def _changed_on_card(self, cf: CardFile) -> bool:
        now = self.card.stat_file(cf.path)
        return now is None or (now.size, now.mtime) != (cf.size, cf.mtime)

    def _clearing(
        self, job_id: int | None, state: str, kind: str, message: str, file_id: int
    ) -> None:
        with self.catalog.write() as s:
            stored = s.get(StoredFile, file_id)
            if state == "clearing":  # in the transaction that logs the card's delete
                if stored is None or stored.deleted_at is not None:
                    raise KeptOnCard(
                        f"{message}: stored file {file_id} was deleted meanwhile; the "
                        "recorder's copy is the only one and stays"
                    )
                stored.card_clearing_at = utcnow()  # no deletion of it until the card's is done
            elif stored is not None:
                stored.card_clearing_at = None
            if job_id is not None and (row := s.get(IngestJob, job_id)) is not None:
                row.state = state
            append_event(
                s,
                kind,
                message,
                port=self.owner.port,
                serial=self.owner.serial,
                officer_no=self.owner.officer_no,
                file_id=file_id,
            )


def store_row(
    s: Session,
    job: IngestJob,
    disk: Path,
    sc: Sidecar,
    *,
    officer_id: int,
    session_id: int | None,
    message: str,
    port: int | None = None,
    replaces: int | None = None,
) -> StoredFile:
    """Commit a verified transfer: the file's catalog row, the job marked stored, the event.

    Checked again inside the transaction: the job must still be verified (a second docking
    of the same recorder may have committed it meanwhile), and no live copy of the same
    card file may exist (but `replaces`, a stored copy that failed its check); else
    AlreadyStored, and nothing is written."""
    assert job.final_path is not None
    current = s.get(IngestJob, job.id)
    if current is None or current.state != "verified":
        raise AlreadyStored(f"job {job.id} is {current.state if current else 'gone'}")
    other = s.scalars(
        select(StoredFile.id).where(
            StoredFile.recorder_id == job.recorder_id,
            StoredFile.card_path == sc.card_path,
            StoredFile.sha256 == sc.sha256,
            StoredFile.deleted_at.is_(None),
            StoredFile.id != (replaces or 0),  # a copy found corrupt is no copy
        )
    ).first()
    if other is not None:
        raise AlreadyStored(f"the card file is stored already as file {other}")
    f = file_row(
        sc,
        disk,
        job.final_path,
        officer_id=officer_id,
        recorder_id=job.recorder_id,
        session_id=session_id,
    )
    s.add(f)
    s.flush()
    if replaces is not None:
        _replace_corrupt(s, replaces, f)
    else:
        _carry_from_lost(s, f)
    row = s.get(IngestJob, job.id)
    assert row is not None
    row.state, row.file_id = "stored", f.id
    append_event(
        s,
        "file_stored",
        message,
        port=port,
        serial=sc.serial,
        officer_no=sc.officer_no,
        file_id=f.id,
        sha256=sc.sha256,
        size=sc.size,
    )
    return f


def _carry_from_lost(s: Session, new: StoredFile) -> None:
    """A card file collected again because the disk with its stored copy was retired
    (`station disks retire`): the new copy keeps what protected the lost one (grade,
    note, case, hold, retention category), as the row of the lost copy had them."""
    lost = s.scalars(
        select(StoredFile)
        .where(
            StoredFile.recorder_id == new.recorder_id,
            StoredFile.card_path == new.card_path,
            StoredFile.sha256 == new.sha256,
            StoredFile.deleted_at.is_not(None),
            StoredFile.delete_reason.like(f"{LOST_WITH_DISK} %"),
        )
        .order_by(StoredFile.id.desc())
    ).first()
    if lost is None:
        return
    if LEVELS.index(lost.level) > LEVELS.index(new.level):
        new.level = lost.level
    new.note = new.note or lost.note
    new.case_no = new.case_no or lost.case_no
    new.legal_hold = new.legal_hold or lost.legal_hold
    new.retention_category = new.retention_category or lost.retention_category
    append_event(s, "file_protection_restored", f"file {new.id} takes the grade, case and "
                 f"hold of file {lost.id}, lost with its disk", file_id=new.id,
                 lost=lost.id)  # fmt: skip


def _replace_corrupt(s: Session, old_id: int, new: StoredFile) -> None:
    """The good new copy takes the place of a stored copy that failed its check: it gets
    the old one's grade, note, case, hold and retention category (protection is never lost
    to bit rot), and the old row is tombstoned, so one card file has one live row. The
    corrupt bytes stay on disk (its sidecar still shows any hold: start-up recovery
    quarantines them)."""
    old = s.get(StoredFile, old_id)
    if old is None or old.deleted_at is not None:
        return
    new.level, new.note, new.case_no, new.legal_hold = (
        old.level, old.note, old.case_no, old.legal_hold,
    )  # fmt: skip
    new.retention_category = old.retention_category
    old.deleted_at, old.deleted_by = utcnow(), "station"
    old.delete_reason = f"its stored bytes failed their check: replaced by file {new.id}"
    append_event(s, "file_replaced", f"file {old_id} replaced by a good copy, file {new.id}",
                 file_id=new.id, replaced=old_id)  # fmt: skip


def file_row(
    sc: Sidecar,
    disk: Path,
    rel: str,
    *,
    officer_id: int,
    recorder_id: int,
    session_id: int | None = None,
) -> StoredFile:
    """The catalog row of a stored file, from its sidecar."""
    return StoredFile(
        officer_id=officer_id,
        recorder_id=recorder_id,
        session_id=session_id,
        card_path=sc.card_path,
        name=sc.name,
        disk=str(disk),
        rel_path=rel,
        size=sc.size,
        sha256=sc.sha256,
        kind=sc.kind,
        recorded_at=sc.recorded,
        collected_at=sc.collected,
        important=sc.important,
        level=sc.level,
        note=sc.note,
        case_no=sc.case_no,
        legal_hold=sc.legal_hold,
        retention_category=sc.retention_category,
        sm3=sc.sm3,
        clock_untrusted=sc.clock_untrusted,
        deleted_at=dt.datetime.fromisoformat(sc.deleted_at) if sc.deleted_at else None,
        deleted_by=sc.deleted_by,
        delete_reason=sc.delete_reason,
    )
