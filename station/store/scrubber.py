"""The scrubber: re-reads stored files slowly, forever, to catch silent corruption.

It takes the files verified longest ago first, reads them from the disk itself
(not the page cache) at no more than `store.scrub_mb_s`, and steps aside while
any port is collecting. A file whose bytes no longer match its hash, or that
is gone, raises `store_corrupt` and is logged; nothing is changed on disk,
except with a `mirror` (station.store.mirror): a protected file's second copy is
checked too, and whichever of the two copies is bad is restored from the other
(`store_copy_restored`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import or_, select

from station.catalog import Catalog, StoredFile
from station.catalog.db import append_event
from station.catalog.models import utcnow
from station.health.alarms import AlarmBook

if TYPE_CHECKING:
    from station.store.mirror import Mirror

log = logging.getLogger(__name__)

IDLE_S = 60.0  # nothing due: look again this much later
BUSY_S = 5.0  # collection under way: look again this much later
BATCH = 100


class Scrubber:
    """Background verification of stored files against the catalog."""

    def __init__(
        self,
        catalog: Catalog,
        alarms: AlarmBook,
        *,
        mb_s: float,
        every_days: float,
        busy: Callable[[], bool],
        stop: threading.Event,
        chunk: int = 1 << 20,
        mirror: Mirror | None = None,
    ) -> None:
        self.catalog = catalog
        self.alarms = alarms
        self.rate = mb_s * 1e6
        self.every = dt.timedelta(days=every_days)
        self.busy = busy
        self.stop = stop
        self.chunk = chunk
        self.mirror = mirror
        self.checked = 0
        self.bad = 0

    def run(self) -> None:
        """Loop until `stop` is set (run it in its own thread)."""
        wait = 0.0
        while not self.stop.wait(wait):
            if self.busy():
                wait = BUSY_S
                continue
            due = self._due()
            wait = 0.0 if due else IDLE_S
            for f in due:
                if self.stop.is_set() or self.busy():
                    break
                self.check(f)

    def _due(self) -> list[StoredFile]:
        horizon = utcnow() - self.every
        with self.catalog.read() as s:
            return list(
                s.scalars(
                    select(StoredFile)
                    .where(
                        StoredFile.deleted_at.is_(None),
                        or_(StoredFile.verified_at.is_(None), StoredFile.verified_at < horizon),
                    )
                    .order_by(StoredFile.verified_at.is_not(None), StoredFile.verified_at)
                    .limit(BATCH)
                )
            )

    def check(self, f: StoredFile) -> bool:
        """Re-hash one file at the configured rate; record the result."""
        path = Path(f.disk) / f.rel_path
        try:
            digest = self._hash(path)
            problem = None if digest == f.sha256 else f"hash is {digest}, catalog says {f.sha256}"
        except FileNotFoundError:
            problem = "the stored file is missing"
        except _Stopped:
            return True
        except OSError as e:
            problem = f"cannot be read: {e.strerror}"
        self.checked += 1
        with self.catalog.write() as s:
            row = s.get(StoredFile, f.id)
            if row is None:
                return True
            if problem is None:
                row.verified_at = utcnow()
            else:
                append_event(s, "scrub_failed", f"{path}: {problem}", file_id=f.id, sha256=f.sha256)
        if problem is None:
            if self.mirror is not None:
                self.mirror.check_copy(f)
            return True
        self.bad += 1
        log.error("scrub: %s: %s", path, problem)
        if self.mirror is not None:
            try:
                if self.mirror.restore(f, problem):
                    return False  # its own alarm says what happened
            except (OSError, ValueError) as e:
                problem += f" (its second copy could not be restored: {e})"
        self.alarms.raise_("store_corrupt", f"{path}: {problem}", str(path))
        return False

    def _hash(self, path: Path) -> str:
        h = hashlib.sha256()
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            buf = bytearray(self.chunk)
            mv = memoryview(buf)
            t0, n_total = time.monotonic(), 0
            while n := os.readv(fd, [mv]):
                h.update(mv[:n])
                n_total += n
                if self.rate > 0:
                    ahead = n_total / self.rate - (time.monotonic() - t0)
                    if ahead > 0 and self.stop.wait(ahead):
                        raise _Stopped()
        finally:
            os.close(fd)
        return h.hexdigest()


class _Stopped(Exception):
    pass
