"""The worker: picks what is pending, sends it one file at a time, backs off, reports.

Built from its configuration, the catalog, the alarm book and a stop event; its thread
runs `Forwarder.run`, which loops on `while not stop.wait(wait):`. The S3 requests of
one file are `station.forward.upload`'s; the rows that make them resumable live in the
catalog (`station.forward.state`).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from station.catalog import Catalog, ForwardObject, StoredFile
from station.catalog.db import append_event
from station.catalog.models import utcnow
from station.forward.client import make_client
from station.forward.config import (
    MB,
    ForwardConfig,
    MiB,
    in_window,
    parse_window,
    seconds_until_open,
)
from station.forward.errors import ForwardIntegrityError, ForwardVerifyError, Interrupted
from station.forward.files import Candidate, alternate_key, hash_parts, still_stored, stored_files
from station.forward.legacy import import_forward_db
from station.forward.state import ForwardState
from station.forward.upload import Uploader
from station.ingest.priority import TokenBucket

if TYPE_CHECKING:
    from station.health.alarms import AlarmBook

log = logging.getLogger(__name__)

MAX_PARTS = 10_000  # S3's limit on the parts of one upload
MAX_BACKOFF_S = 600.0
RETRY_HELD_S = 24 * 3600.0  # refused (corrupt, missing) files are looked at again this often
FAILING_AFTER = 3  # consecutive failed attempts before `forward_failing` is raised


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Forwarder:
    """Sends stored files to the central object store, one at a time, resumably.

    `state_path` names an old `forward.db` (default: beside the catalog) whose rows are
    imported into the catalog on construction (station/forward/legacy.py).
    """

    def __init__(
        self,
        config: ForwardConfig,
        catalog: Catalog,
        station_id: str,
        *,
        clock: Callable[[], dt.datetime],
        stop: threading.Event,
        alarms: AlarmBook | None = None,
        state_path: Path | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.station_id = station_id
        self.clock = clock
        self.stop = stop
        self.alarms = alarms
        self.on_change = on_change
        self.prefix = config.key_prefix(station_id)
        self.window = parse_window(config.window) if config.window else None
        self.part_size = config.part_size_mb * MiB
        self.throttle = TokenBucket(config.bandwidth_mb_s * MB if config.bandwidth_mb_s else None)
        import_forward_db(catalog, Path(state_path or catalog.path.parent / "forward.db"))
        self.state = ForwardState(catalog)
        self.uploader = Uploader(
            config,
            self.state,
            station_id,
            client=lambda: self.client,
            stop=stop,
            window=self.window,
            clock=clock,
            throttle=self.throttle,
            sent=self._sent,
            skipped=self._progress,
        )
        self._client: Any = None
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {
            "state": "starting",
            "current": None,
            "pending_files": None,
            "pending_bytes": None,
            "last_error": None,
            "last_forwarded_at": None,
        }
        self.bytes_sent = 0  # bytes handed to the network since start (all attempts)
        self.failures = 0  # consecutive failed attempts

    @property
    def client(self) -> Any:
        """A boto3 S3 client of our own (made in the worker thread on first use)."""
        if self._client is None:
            self._client = make_client(self.config)
        return self._client

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        """Forward until `stop` is set (run it in its own thread)."""
        wait = 0.0
        while not self.stop.wait(wait):
            try:
                wait = self.cycle()
            except Exception as e:  # a bug must not kill the thread silently
                log.exception("forwarding round failed")
                self._set(state="error", last_error=f"{type(e).__name__}: {e}")
                wait = self.config.poll_interval_s
        self._set(state="stopped", current=None)
        self.state.close()

    def cycle(self) -> float:
        """One round: forward what is pending while allowed; returns how long to wait."""
        self._drop_orphans()
        todo = self.pending()
        if not todo:
            self._set(state="idle", current=None)
            return self.config.poll_interval_s
        for f in todo:
            if self.stop.is_set():
                return 0.0
            now = self.clock()
            if not in_window(self.window, now.time()):
                self._set(state="outside_window", current=None)
                return min(
                    self.config.poll_interval_s, max(1.0, seconds_until_open(self.window, now))
                )
            try:
                self.forward(f)
            except Interrupted:
                self._set(current=None)
                return 0.0 if self.stop.is_set() else 1.0
            except ForwardIntegrityError as e:
                if still_stored(self.catalog, f):
                    self._refuse(f, str(e))
                else:  # retention (or a person) deleted it meanwhile: nothing to send
                    self._forget(f)
            except Exception as e:
                if self.stop.is_set():  # botocore wraps our Interrupted from the body
                    self._set(current=None)
                    return 0.0
                return self._failed(f, e)
        self._set(state="idle", current=None)
        return 0.0 if self.pending() else self.config.poll_interval_s

    def _failed(self, f: Candidate, e: Exception) -> float:
        self.failures += 1
        why = f"{type(e).__name__}: {e}"
        log.warning("forwarding file %s failed (attempt %s): %s", f.id, self.failures, why)
        key = self._row_key(f)
        if key is not None:
            self.state.failed(key, why)
        self._set(state="backing_off", current=None, last_error=why)
        if self.alarms is not None and self.failures >= FAILING_AFTER:
            self.alarms.raise_(
                "forward_failing",
                f"forwarding to {self.config.endpoint_url} has failed "
                f"{self.failures} times in a row: {why}",
                "forward",
            )
        # the server is down, or refusing us: don't hammer it
        return min(MAX_BACKOFF_S, self.config.poll_interval_s * 2 ** min(self.failures - 1, 10))

    def _forget(self, f: Candidate) -> None:
        """A file deleted locally before it was forwarded: drop its upload in flight."""
        key = self._row_key(f)
        row = self.state.get(key) if key else None
        if key is None or row is None or row.state == "done":
            return
        if row.upload_id:
            self.uploader.abort(key, row.upload_id)
        self.state.drop(key, "the file was deleted before it was forwarded")
        log.info("file %s was deleted before it was forwarded", f.id)

    def _drop_orphans(self) -> None:
        """Abort uploads in flight for files deleted (or re-catalogued) since they began."""
        rows = self.state.objects("uploading")
        if not rows:
            return
        live = set()
        for f in stored_files(self.catalog):
            key = self.prefix + f.rel_path
            live |= {(key, f.sha256), (alternate_key(key, f.sha256), f.sha256)}
        for r in rows:
            if (r.key, r.sha256) in live:
                continue
            if r.upload_id:
                self.uploader.abort(r.key, r.upload_id)
            self.state.drop(r.key, "its file is no longer stored")
            log.info("upload of %s dropped: its file is no longer stored", r.key)

    def _state_key(self, f: Candidate) -> str:
        """The key whose row describes `f` (the alternate one if another file has the primary)."""
        key = self._row_key(f)
        if key is not None:
            return key
        primary = self.prefix + f.rel_path
        row = self.state.get(primary)
        return primary if row is None else alternate_key(primary, f.sha256)

    def _refuse(self, f: Candidate, why: str) -> None:
        key = self._state_key(f)
        row = self.state.get(key)
        if row is not None and row.upload_id:
            self.uploader.abort(key, row.upload_id)
        self.state.put(
            key,
            sha256=f.sha256,
            size=f.size,
            file_id=f.id,
            state="refused",
            upload_id=None,
            error=why,
            finished_at=utcnow(),
        )
        log.error("forwarding refused file %s: %s", f.id, why)
        with self.catalog.write() as s:
            append_event(
                s,
                "forward_refused",
                f"{f.path}: {why}",
                file_id=f.id,
                officer_no=f.officer_no,
                serial=f.serial,
                sha256=f.sha256,
            )
        if self.alarms is not None:
            self.alarms.raise_("store_corrupt", f"{f.path}: not forwarded: {why}", str(f.path))
        self.on_change()

    # --- what is pending ---------------------------------------------------------------

    def _is_done(self, f: Candidate, known: dict[str, ForwardObject]) -> bool:
        key = self.prefix + f.rel_path
        for k in (key, alternate_key(key, f.sha256)):
            row = known.get(k)
            if row is not None and row.state == "done" and row.sha256 == f.sha256:
                return True
        return False

    def _is_held(self, f: Candidate, known: dict[str, ForwardObject]) -> bool:
        """Refused not long ago (the bytes did not match): looked at again later."""
        key = self.prefix + f.rel_path
        for k in (key, alternate_key(key, f.sha256)):
            row = known.get(k)
            if row is not None and row.state == "refused" and row.sha256 == f.sha256:
                since = row.finished_at or utcnow()
                return (dt.datetime.now(dt.UTC) - since).total_seconds() < RETRY_HELD_S
        return False

    def pending(self) -> list[Candidate]:
        """Files to send, protected footage first, then oldest first."""
        known = {r.key: r for r in self.state.objects()}  # done, refused, in progress
        files = stored_files(self.catalog)
        todo = [f for f in files if not self._is_done(f, known) and not self._is_held(f, known)]
        todo.sort(key=lambda f: (not f.protected, f.collected_at, f.id))
        refused = [
            {"file_id": r.file_id, "key": r.key, "error": r.error}
            for r in known.values()
            if r.state == "refused"
        ]
        done = [r for r in known.values() if r.state == "done"]
        self._set(
            pending_files=len(todo),
            pending_bytes=sum(f.size for f in todo),
            forwarded_files=len(done),
            forwarded_bytes=sum(r.size for r in done),
            refused=refused,
        )
        return todo

    def pending_count(self) -> int:
        """How many stored files are not in the object store yet."""
        return len(self.pending())

    def forwarded(self, file_id: int) -> bool:
        """Whether this stored file is in the object store, verified."""
        with self.catalog.read() as s:
            f = s.get(StoredFile, file_id)
            if f is None:
                return False
            rel, sha = f.rel_path, f.sha256
        key = self.prefix + rel
        for k in (key, alternate_key(key, sha)):
            row = self.state.get(k)
            if row is not None and row.state == "done" and row.sha256 == sha:
                return True
        return False

    def status(self) -> dict[str, Any]:
        """For the API: cheap (no network, no catalog query)."""
        with self._lock:
            st = dict(self._status)
            if st.get("current") is not None:
                st["current"] = dict(st["current"])
        now = self.clock()
        return {
            "enabled": True,
            "endpoint": self.config.endpoint_url,
            "bucket": self.config.bucket,
            "prefix": self.prefix,
            "window": self.config.window,
            "in_window": in_window(self.window, now.time()),
            "bandwidth_mb_s": self.config.bandwidth_mb_s,
            "bytes_sent": self.bytes_sent,
            **st,
        }

    def _set(self, **values: Any) -> None:
        with self._lock:
            self._status.update(values)
        self.on_change()

    def _row_key(self, f: Candidate) -> str | None:
        key = self.prefix + f.rel_path
        for k in (key, alternate_key(key, f.sha256)):
            row = self.state.get(k)
            if row is not None and row.sha256 == f.sha256:
                return k
        return None

    def _sent(self, n: int) -> None:
        self.bytes_sent += n
        self._progress(n)

    def _progress(self, n: int) -> None:
        with self._lock:
            cur = self._status.get("current")
            if cur is not None:
                cur["bytes_done"] += n

    # --- one file ---------------------------------------------------------------------------

    def forward(self, f: Candidate) -> str:
        """Send one file (resuming its upload if one is in flight); returns its object key."""
        part_size = max(self.part_size, math.ceil(f.size / MAX_PARTS / MiB) * MiB)
        key = self.uploader.choose_key(f)
        if key is None:  # already in the object store: adopted
            key = self._row_key(f) or ""
            self._log_forwarded(f, key, adopted=True)
            self._done_after()
            return key
        row = self.state.get(key)
        if row is not None and row.upload_id:
            part_size = row.part_size or part_size
        self._set(
            state="uploading",
            current={"file_id": f.id, "key": key, "size": f.size, "bytes_done": 0},
        )
        digests = None
        if self.config.verify and f.size > part_size:  # a single PUT checks the bytes it sends
            try:
                digests = hash_parts(f.path, part_size, self.stop)
            except FileNotFoundError:
                raise ForwardIntegrityError("the stored file is missing") from None
            if digests.sha256 != f.sha256:
                raise ForwardIntegrityError(
                    f"the stored file's hash is {digests.sha256}, the catalog says {f.sha256}"
                )
        if f.size <= part_size:
            result = self.uploader.put(f, key)
        else:
            result = self.uploader.multipart(f, key, part_size, digests)
        if not result.get("adopted"):
            try:
                self.uploader.verify(f, key, result)
            except ForwardVerifyError:
                self._discard_bad(f, key)
                raise
        self.state.put(
            key,
            sha256=f.sha256,
            size=f.size,
            file_id=f.id,
            state="done",
            upload_id=None,
            etag=result.get("etag"),
            checksum=result.get("checksum"),
            error=None,
            finished_at=utcnow(),
        )
        if result.get("upload_id"):
            self.state.drop_parts(result["upload_id"])
        self._log_forwarded(f, key)
        self._done_after()
        return key

    def _done_after(self) -> None:
        self.failures = 0
        if self.alarms is not None:
            self.alarms.clear("forward_failing", "forward")
        self._set(current=None, last_forwarded_at=_now_iso(), last_error=None)

    def _log_forwarded(self, f: Candidate, key: str, *, adopted: bool = False) -> None:
        log.info("forwarded file %s to s3://%s/%s", f.id, self.config.bucket, key)
        with self.catalog.write() as s:
            append_event(
                s,
                "file_forwarded",
                f"{f.path} -> s3://{self.config.bucket}/{key}",
                file_id=f.id,
                officer_no=f.officer_no,
                serial=f.serial,
                bucket=self.config.bucket,
                key=key,
                size=f.size,
                sha256=f.sha256,
                already_there=adopted,
            )

    def _discard_bad(self, f: Candidate, key: str) -> None:
        """An object that did not verify: removed if we may, recorded `bad`, alarm raised."""
        self.uploader.discard(f, key)
        if self.alarms is not None:
            self.alarms.raise_(
                "forward_failing", f"s3://{self.config.bucket}/{key} did not verify", "forward"
            )
