"""SM3 (GB/T 32905) per stored file, in the background, through OpenSSL (`hashlib.new("sm3")`).

SM3 costs more than twice SHA-256 per byte (docs/benchmarks.md): computed while copying it
would slow collection on the cabinet's CPU, so it is computed soon after a file is stored,
from the stored copy, and before the file is pushed to the platform (the outbox waits
for it). The same read checks SHA-256 too: an SM3 is only recorded for bytes that are
still the collected original. It is recorded in the catalog and in the file's sidecar
(durably, in the same catalog transaction), so a rebuilt catalog keeps it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from station.catalog import Catalog, StoredFile
from station.catalog.db import append_event
from station.ingest.priority import TokenBucket
from station.store.sidecar import (
    SidecarError,
    mirror_row,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

log = logging.getLogger(__name__)

CHUNK = 1 << 20
IDLE_S = 2.0


def digests(path: Path, stop: threading.Event | None = None,
            bucket: TokenBucket | None = None) -> tuple[str, str, int]:  # fmt: skip
    """(SHA-256, SM3, size) of a file in one read."""
    sha, sm3, size = hashlib.sha256(), hashlib.new("sm3"), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            if bucket is not None and stop is not None and not bucket.take(len(chunk), stop):
                raise InterruptedError("stopping")
            sha.update(chunk)
            sm3.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), sm3.hexdigest(), size


class Sm3Digester:
    """Fills `files.sm3` for every stored file that has none, oldest first."""

    def __init__(
        self,
        catalog: Catalog,
        stop: threading.Event,
        *,
        mb_s: float = 0.0,
    ) -> None:
        self.catalog = catalog
        self.stop = stop
        self.bucket = TokenBucket(mb_s * 1e6) if mb_s > 0 else None
        self.done = 0
        self.bytes = 0
        self.seconds = 0.0

    def todo(self, limit: int = 50) -> list[tuple[int, str, str, str, int]]:
        with self.catalog.read() as s:
            return [
                tuple(r)  # type: ignore[misc]
                for r in s.execute(
                    select(
                        StoredFile.id,
                        StoredFile.disk,
                        StoredFile.rel_path,
                        StoredFile.sha256,
                        StoredFile.size,
                    )
                    .where(
                        StoredFile.deleted_at.is_(None),
                        StoredFile.sm3.is_(None),
                        StoredFile.sm3_error.is_(None),
                    )
                    .order_by(StoredFile.id)
                    .limit(limit)
                ).all()
            ]

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                n = self.round()
            except Exception:
                log.exception("SM3 round failed")
                n = 0
            if n == 0:
                self.stop.wait(IDLE_S)

    def round(self) -> int:
        work = self.todo()
        for file_id, disk, rel, sha256, _size in work:
            if self.stop.is_set():
                break
            self.one(file_id, Path(disk) / rel, sha256)
        return len(work)

    def one(self, file_id: int, path: Path, sha256: str) -> None:
        started = time.perf_counter()
        try:
            sha, sm3, size = digests(path, self.stop, self.bucket)
        except InterruptedError:
            return
        except OSError as e:
            if not path.parent.exists():  # its disk is away: later
                log.info("file %s: SM3 waits for its disk (%s)", file_id, e)
                return
            self._record(file_id, None, f"cannot read the stored file: {e}")
            return
        self.seconds += time.perf_counter() - started
        self.bytes += size
        if sha != sha256:
            self._record(file_id, None, "the stored file no longer matches its SHA-256")
            return
        self._record(file_id, sm3, None)

    def _record(self, file_id: int, sm3: str | None, error: str | None) -> None:
        with self.catalog.write() as s:
            row = s.get(StoredFile, file_id)
            if row is None:
                return
            row.sm3, row.sm3_error = sm3, error
            if sm3 is not None and row.deleted_at is None:
                disk = Path(row.disk)
                try:
                    sc = read_sidecar(sidecar_path(disk, row.rel_path))
                    write_sidecar(disk, row.rel_path, mirror_row(sc, row))
                except (SidecarError, OSError) as e:
                    # recorded in the catalog all the same; start-up recovery writes the
                    # sidecar from the row (recovery.reconcile_sidecars)
                    log.warning("file %s: SM3 not in its sidecar now (%s)", file_id, e)
            if error:
                append_event(s, "sm3_failed", f"{row.rel_path}: {error}", file_id=file_id)
                log.error("file %s: SM3 not computed: %s", file_id, error)
        self.done += sm3 is not None

    def status(self) -> dict[str, Any]:
        rate = self.bytes / self.seconds / 1e6 if self.seconds else None
        return {
            "sm3": True,
            "computed": self.done,
            "waiting": len(self.todo(1000)),
            "mb_s": round(rate, 1) if rate else None,
        }
