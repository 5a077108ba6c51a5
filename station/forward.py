"""Forwarding: copies of collected files sent on to the force's central S3 object store.

Optional and off by default (`[forward]` in the configuration). A `Forwarder`
runs in its own thread and sends every stored, not-deleted file that is not yet
in the object store: protected footage (IMP, important, evidence, legal hold)
first, then oldest first. Local copies are never touched: retention stays in
charge of them.

- Each file goes to `<prefix><officer_no>/<serial>/<collection date>/<name>`
  (its store path below the prefix), with its SHA-256, officer, serial, card
  path, recording time and level as object metadata.
- A file larger than one part is sent as a multipart upload whose `UploadId`
  and acknowledged parts are committed to a small SQLite file of its own
  (`forward.db` beside the catalog) after every part: a stop, a crash or a
  power cut resumes with `ListParts` and sends only the parts the server lacks.
- Before sending, the file is re-read and must still match the catalog's
  SHA-256 (else it is refused and `store_corrupt` is raised); each part carries
  its SHA-256 (when the server supports additional checksums) and Content-MD5;
  after completion a HEAD checks size, metadata and the server's checksum.
- A token bucket limits the bytes sent per second, and parts are only started
  inside the time window.

See docs/forwarding.md.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import io
import logging
import math
import mimetypes
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from sqlalchemy import select

from station.catalog import Catalog, Officer, Recorder, StoredFile
from station.catalog.db import append_event
from station.names import parse_card_path
from station.protection import is_protected
from station.ratelimit import TokenBucket

if TYPE_CHECKING:
    from station.alarms import AlarmBook

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MB = 1_000_000
MAX_PARTS = 10_000  # S3's limit on the parts of one upload
MIN_PART = 5 * MiB  # S3's smallest part (all but the last)
READ_CHUNK = 4 * MiB
SEND_CHUNK = 64 * 1024
MAX_BACKOFF_S = 600.0
RETRY_HELD_S = 24 * 3600.0  # refused (corrupt, missing) files are looked at again this often
FAILING_AFTER = 3  # consecutive failed attempts before `forward_failing` is raised

_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


# --- configuration -----------------------------------------------------------------------


def parse_window(text: str) -> tuple[dt.time, dt.time]:
    """`"HH:MM-HH:MM"` -> (start, end); the end may be earlier (the window wraps midnight)."""
    m = _WINDOW.match(text.strip())
    if not m:
        raise ValueError(f"window {text!r} is not HH:MM-HH:MM")
    start = dt.time(int(m[1]), int(m[2]))
    end = dt.time(int(m[3]), int(m[4]))
    if start == end:
        raise ValueError(f"window {text!r} is empty (leave it out to forward at any time)")
    return start, end


def in_window(window: tuple[dt.time, dt.time] | None, now: dt.time) -> bool:
    """Whether `now` is inside [start, end); a window with end < start wraps midnight."""
    if window is None:
        return True
    start, end = window
    if start < end:
        return start <= now < end
    return now >= start or now < end


def seconds_until_open(window: tuple[dt.time, dt.time] | None, now: dt.datetime) -> float:
    """How long until the window opens (0 when it is open)."""
    if window is None or in_window(window, now.time()):
        return 0.0
    start = now.replace(hour=window[0].hour, minute=window[0].minute, second=0, microsecond=0)
    if start <= now:
        start += dt.timedelta(days=1)
    return (start - now).total_seconds()


class ForwardConfig(BaseModel):
    """`[forward]`: sending collected files on to the central S3-compatible object store."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    endpoint_url: str | None = None  # https://s3.example.police:443
    bucket: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None  # never logged, never shown
    prefix: str = "{station_id}/"  # "{station_id}" is replaced by station.id
    part_size_mb: Annotated[int, Field(strict=True, ge=5, le=5120)] = 16  # MiB
    bandwidth_mb_s: Annotated[float, Field(gt=0)] | None = None  # MB/s sent; None: no limit
    window: str | None = None  # "01:00-06:00", station local time, may wrap midnight
    verify: bool = True  # re-hash the local file against the catalog before sending
    # "auto": SHA-256 per part when the server supports additional checksums, plus
    # Content-MD5 always; "md5": Content-MD5 only (servers that reject checksum headers)
    checksum: Literal["auto", "md5"] = "auto"
    addressing_style: Literal["path", "virtual"] = "path"
    ca_bundle: str | None = None  # PEM file of the force's CA; None: the system's
    poll_interval_s: Annotated[float, Field(gt=0)] = 30.0

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str | None) -> str | None:
        if v is not None and not _BUCKET.match(v):
            raise ValueError("not a valid bucket name (3-63 of a-z, 0-9, '.', '-')")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        try:
            sample = v.format(station_id="S")
        except (KeyError, IndexError, ValueError):
            raise ValueError("only {station_id} may be used in the prefix") from None
        if sample.startswith("/") or "//" in sample or ".." in sample.split("/"):
            raise ValueError("must not start with '/' nor contain '//' or '..'")
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is not None:
            parse_window(v)
        return v

    @model_validator(mode="after")
    def _complete(self) -> ForwardConfig:
        if self.enabled:
            missing = [
                k
                for k in ("endpoint_url", "bucket", "access_key_id", "secret_access_key")
                if getattr(self, k) in (None, "")
            ]
            if missing:
                raise ValueError(f"forwarding is enabled but {', '.join(missing)} is not set")
        return self

    def key_prefix(self, station_id: str) -> str:
        """The prefix of this station's object keys."""
        return self.prefix.format(station_id=station_id)


# --- errors ---------------------------------------------------------------------------------


class ForwardError(Exception):
    """A file could not be forwarded this time; it is tried again later."""


class ForwardIntegrityError(ForwardError):
    """The local file no longer matches its catalog hash: it is not sent (alarm-worthy)."""


class ForwardVerifyError(ForwardError):
    """The object store's copy did not verify after the upload."""


class _Interrupted(Exception):
    """`stop` was set, or the window closed, in the middle of a file."""


# --- bandwidth --------------------------------------------------------------------------------


class _ThrottledBody(io.BytesIO):
    """A part's bytes, handed to the HTTP connection no faster than the bucket allows."""

    def __init__(
        self, data: bytes, bucket: TokenBucket, stop: threading.Event, sent: Callable[[int], None]
    ) -> None:
        super().__init__(data)
        self.bucket = bucket
        self.stop = stop
        self.sent = sent

    def read(self, n: int | None = -1) -> bytes:
        if self.stop.is_set():
            raise _Interrupted()
        if n is None or n < 0 or n > SEND_CHUNK:
            n = SEND_CHUNK
        data = super().read(n)
        if data:
            if not self.bucket.take(len(data), self.stop):
                raise _Interrupted()
            self.sent(len(data))
        return data


# --- persistent state ---------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,          -- the object key in the bucket
    sha256 TEXT NOT NULL,          -- of the file sent (the catalog's hash)
    size INTEGER NOT NULL,
    file_id INTEGER NOT NULL,      -- catalog id when last seen (ids change on a rebuild)
    state TEXT NOT NULL,           -- uploading | done | refused
    upload_id TEXT,                -- the multipart upload in progress
    part_size INTEGER,
    mode TEXT,                     -- sha256 | md5 (per-part checksums of the upload)
    etag TEXT,
    checksum TEXT,                 -- the server's SHA-256 checksum of the object
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    started_at TEXT,
    updated_at TEXT,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS ix_objects_sha ON objects (sha256);
CREATE INDEX IF NOT EXISTS ix_objects_file ON objects (file_id);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL,
    part_number INTEGER NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    sha256 TEXT NOT NULL,          -- base64, as S3 carries it
    md5 TEXT NOT NULL,             -- hex
    PRIMARY KEY (upload_id, part_number)
);
"""


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class ForwardState:
    """`forward.db`: what is in the object store, and the multipart uploads in flight."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.executescript(_SCHEMA)
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, committed (durably) on success."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self.lock:
            cur = self.db.execute(sql, args)
            cur.row_factory = sqlite3.Row
            return cur.fetchall()

    def get(self, key: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM objects WHERE key = ?", key)
        return rows[0] if rows else None

    def put(self, key: str, **values: Any) -> None:
        """Insert or update one object's row."""
        values["updated_at"] = _now_iso()
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        update = ", ".join(f"{c} = excluded.{c}" for c in values)
        with self.tx() as db:
            db.execute(
                f"INSERT INTO objects (key, {cols}) VALUES (?, {marks}) "
                f"ON CONFLICT (key) DO UPDATE SET {update}",
                (key, *values.values()),
            )

    def parts(self, upload_id: str) -> dict[int, sqlite3.Row]:
        rows = self.query("SELECT * FROM parts WHERE upload_id = ?", upload_id)
        return {r["part_number"]: r for r in rows}

    def add_part(
        self, upload_id: str, number: int, size: int, etag: str, sha: str, md5: str
    ) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?, ?)",
                (upload_id, number, size, etag, sha, md5),
            )

    def drop_parts(self, upload_id: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))

    def close(self) -> None:
        with self.lock:
            self.db.close()


# --- the files --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A stored file as the forwarder needs it."""

    id: int
    disk: str
    rel_path: str
    size: int
    sha256: str
    name: str
    card_path: bytes
    officer_no: str
    serial: str
    collected_at: dt.datetime
    recorded_at: dt.datetime | None
    level: str
    important: bool
    legal_hold: str | None

    @property
    def path(self) -> Path:
        return Path(self.disk) / self.rel_path

    @property
    def protected(self) -> bool:
        return is_protected(self.important, self.level, self.legal_hold)


def alternate_key(key: str, sha256: str) -> str:
    """The key used when `key` already holds other content: `stem~<sha256[:16]>.ext`."""
    folder, slash, name = key.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    name = f"{stem}~{sha256[:16]}" + (f".{ext}" if ext else "")
    return f"{folder}{slash}{name}"


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _meta_value(text: str) -> str:
    """S3 user metadata travels in HTTP headers: ASCII only, so percent-encode the rest."""
    return quote(text, safe="/:+-_.~ ")


@dataclass
class _Digests:
    """Whole-file SHA-256 and per-part SHA-256 (base64) / MD5 (hex)."""

    sha256: str
    parts: list[tuple[str, str]]


def _hash_parts(path: Path, part_size: int, stop: threading.Event) -> _Digests:
    whole = hashlib.sha256()
    parts = []
    with open(path, "rb") as f:
        while True:
            ps, pm, n = hashlib.sha256(), hashlib.md5(), 0
            while n < part_size:
                chunk = f.read(min(READ_CHUNK, part_size - n))
                if not chunk:
                    break
                if stop.is_set():
                    raise _Interrupted()
                whole.update(chunk)
                ps.update(chunk)
                pm.update(chunk)
                n += len(chunk)
            if n == 0:
                break
            parts.append((_b64(ps.digest()), pm.hexdigest()))
            if n < part_size:
                break
    return _Digests(whole.hexdigest(), parts)


def _read_part(path: Path, number: int, part_size: int, size: int) -> bytes:
    offset = (number - 1) * part_size
    length = min(part_size, size - offset)
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise ForwardIntegrityError(f"{path}: is shorter than its catalogued {size} bytes")
    return data


def _error_code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


# --- the worker --------------------------------------------------------------------------------


class Forwarder:
    """Sends stored files to the central object store, one at a time, resumably."""

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
        self.state = ForwardState(state_path or catalog.path.parent / "forward.db")
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

    # --- S3 ------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """A boto3 S3 client of our own (made in the worker thread on first use)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            c = self.config
            session = boto3.session.Session()
            self._client = session.client(
                "s3",
                endpoint_url=c.endpoint_url,
                region_name=c.region,
                aws_access_key_id=c.access_key_id,
                aws_secret_access_key=(
                    c.secret_access_key.get_secret_value() if c.secret_access_key else None
                ),
                verify=c.ca_bundle if c.ca_bundle else True,
                config=Config(
                    # the body is covered by the signed Content-MD5 and SHA-256 headers:
                    # signing its hash too would read every part twice on http://
                    s3={"addressing_style": c.addressing_style, "payload_signing_enabled": False},
                    retries={"mode": "standard", "max_attempts": 3},
                    connect_timeout=10,
                    read_timeout=120,
                    # we choose the checksums: botocore's default CRC32 trailers are not
                    # understood by every S3-compatible server
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            )
        return self._client

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(
                Bucket=self.config.bucket, Key=key, ChecksumMode="ENABLED"
            )
        except ClientError as e:
            if _error_code(e) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

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
            except _Interrupted:
                self._set(current=None)
                return 0.0 if self.stop.is_set() else 1.0
            except ForwardIntegrityError as e:
                if self._still_stored(f):
                    self._refuse(f, str(e))
                else:  # retention (or a person) deleted it meanwhile: nothing to send
                    self._forget(f)
            except Exception as e:
                if self.stop.is_set():  # botocore wraps our _Interrupted from the body
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
            with self.state.tx() as db:
                db.execute(
                    "UPDATE objects SET attempts = attempts + 1, error = ?, updated_at = ? "
                    "WHERE key = ?",
                    (why, _now_iso(), key),
                )
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

    def _still_stored(self, f: Candidate) -> bool:
        with self.catalog.read() as s:
            row = s.get(StoredFile, f.id)
            return row is not None and row.deleted_at is None and row.sha256 == f.sha256

    def _forget(self, f: Candidate) -> None:
        """A file deleted locally before it was forwarded: drop its upload in flight."""
        key = self._row_key(f)
        row = self.state.get(key) if key else None
        if key is None or row is None or row["state"] == "done":
            return
        if row["upload_id"]:
            self._abort(key, row["upload_id"])
        with self.state.tx() as db:
            db.execute("DELETE FROM objects WHERE key = ?", (key,))
        log.info("file %s was deleted before it was forwarded", f.id)

    def _drop_orphans(self) -> None:
        """Abort uploads in flight for files deleted (or re-catalogued) since they began."""
        rows = self.state.query("SELECT * FROM objects WHERE state = 'uploading'")
        if not rows:
            return
        live = set()
        for f in self._files():
            key = self.prefix + f.rel_path
            live |= {(key, f.sha256), (alternate_key(key, f.sha256), f.sha256)}
        for r in rows:
            if (r["key"], r["sha256"]) in live:
                continue
            if r["upload_id"]:
                self._abort(r["key"], r["upload_id"])
            with self.state.tx() as db:
                db.execute("DELETE FROM objects WHERE key = ?", (r["key"],))
            log.info("upload of %s dropped: its file is no longer stored", r["key"])

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
        if row is not None and row["upload_id"]:
            self._abort(key, row["upload_id"])
        self.state.put(
            key,
            sha256=f.sha256,
            size=f.size,
            file_id=f.id,
            state="refused",
            upload_id=None,
            error=why,
            finished_at=_now_iso(),
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

    def _files(self) -> list[Candidate]:
        with self.catalog.read() as s:
            rows = s.execute(
                select(
                    StoredFile.id,
                    StoredFile.disk,
                    StoredFile.rel_path,
                    StoredFile.size,
                    StoredFile.sha256,
                    StoredFile.name,
                    StoredFile.card_path,
                    Officer.officer_no,
                    Recorder.serial,
                    StoredFile.collected_at,
                    StoredFile.recorded_at,
                    StoredFile.level,
                    StoredFile.important,
                    StoredFile.legal_hold,
                )
                .join(Officer, StoredFile.officer_id == Officer.id)
                .join(Recorder, StoredFile.recorder_id == Recorder.id)
                .where(StoredFile.deleted_at.is_(None))
            ).all()
        return [Candidate(*r) for r in rows]

    def _known(self) -> dict[str, sqlite3.Row]:
        """Object rows by key (done, refused, in progress)."""
        return {r["key"]: r for r in self.state.query("SELECT * FROM objects")}

    def _is_done(self, f: Candidate, known: dict[str, sqlite3.Row]) -> bool:
        key = self.prefix + f.rel_path
        for k in (key, alternate_key(key, f.sha256)):
            row = known.get(k)
            if row is not None and row["state"] == "done" and row["sha256"] == f.sha256:
                return True
        return False

    def _is_held(self, f: Candidate, known: dict[str, sqlite3.Row]) -> bool:
        """Refused not long ago (the bytes did not match): looked at again later."""
        key = self.prefix + f.rel_path
        for k in (key, alternate_key(key, f.sha256)):
            row = known.get(k)
            if row is not None and row["state"] == "refused" and row["sha256"] == f.sha256:
                since = dt.datetime.fromisoformat(row["finished_at"])
                return (dt.datetime.now(dt.UTC) - since).total_seconds() < RETRY_HELD_S
        return False

    def pending(self) -> list[Candidate]:
        """Files to send, protected footage first, then oldest first."""
        known = self._known()
        files = self._files()
        todo = [f for f in files if not self._is_done(f, known) and not self._is_held(f, known)]
        todo.sort(key=lambda f: (not f.protected, f.collected_at, f.id))
        refused = [
            {"file_id": r["file_id"], "key": r["key"], "error": r["error"]}
            for r in known.values()
            if r["state"] == "refused"
        ]
        done = [r for r in known.values() if r["state"] == "done"]
        self._set(
            pending_files=len(todo),
            pending_bytes=sum(f.size for f in todo),
            forwarded_files=len(done),
            forwarded_bytes=sum(r["size"] for r in done),
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
            if row is not None and row["state"] == "done" and row["sha256"] == sha:
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
            if row is not None and row["sha256"] == f.sha256:
                return k
        return None

    def _sent(self, n: int) -> None:
        self.bytes_sent += n
        with self._lock:
            cur = self._status.get("current")
            if cur is not None:
                cur["bytes_done"] += n

    # --- one file ---------------------------------------------------------------------------

    def forward(self, f: Candidate) -> str:
        """Send one file (resuming its upload if one is in flight); returns its object key."""
        part_size = max(self.part_size, math.ceil(f.size / MAX_PARTS / MiB) * MiB)
        key = self._choose_key(f)
        if key is None:  # already in the object store: adopted
            key = self._row_key(f) or ""
            self._log_forwarded(f, key, adopted=True)
            self._done_after()
            return key
        row = self.state.get(key)
        if row is not None and row["upload_id"]:
            part_size = row["part_size"] or part_size
        self._set(
            state="uploading",
            current={"file_id": f.id, "key": key, "size": f.size, "bytes_done": 0},
        )
        digests = None
        if self.config.verify and f.size > part_size:  # a single PUT checks the bytes it sends
            try:
                digests = _hash_parts(f.path, part_size, self.stop)
            except FileNotFoundError:
                raise ForwardIntegrityError("the stored file is missing") from None
            if digests.sha256 != f.sha256:
                raise ForwardIntegrityError(
                    f"the stored file's hash is {digests.sha256}, the catalog says {f.sha256}"
                )
        if f.size <= part_size:
            result = self._put(f, key)
        else:
            result = self._multipart(f, key, part_size, digests)
        if not result.get("adopted"):
            try:
                self._verify(f, key, result)
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
            finished_at=_now_iso(),
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
        """An object that did not verify: remove it if we may, and never adopt it."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.config.bucket, Key=key)
        except (ClientError, BotoCoreError) as e:
            log.warning("could not delete the unverified object %s: %s", key, e)
        self.state.put(key, sha256=f.sha256, size=f.size, file_id=f.id, state="bad", upload_id=None)
        if self.alarms is not None:
            self.alarms.raise_(
                "forward_failing", f"s3://{self.config.bucket}/{key} did not verify", "forward"
            )

    def _choose_key(self, f: Candidate) -> str | None:
        """The key to send `f` to, or None when the store has it already (then recorded done).

        Normally its store path under the prefix; when that key holds other content
        (the same name on the other disk, or a name reused after retention deleted
        the first file) the content-addressed alternate key is used instead.
        Nothing is ever overwritten with different content.
        """
        primary = self.prefix + f.rel_path
        for key in (primary, alternate_key(primary, f.sha256)):
            row = self.state.get(key)
            if row is not None and row["sha256"] != f.sha256:
                if row["state"] in ("done", "uploading", "bad"):
                    continue  # another file's object
            elif row is not None and (row["upload_id"] or row["state"] == "bad"):
                return key  # our upload in flight (resume it), or our unverified copy
            head = self._head(key)
            if head is None:
                return key
            if head.get("Metadata", {}).get("sha256") == f.sha256 and (
                head.get("ContentLength") == f.size
            ):
                log.info("file %s is in the object store already as %s", f.id, key)
                self.state.put(
                    key,
                    sha256=f.sha256,
                    size=f.size,
                    file_id=f.id,
                    state="done",
                    upload_id=None,
                    etag=head.get("ETag"),
                    checksum=head.get("ChecksumSHA256"),
                    error=None,
                    finished_at=_now_iso(),
                )
                return None
        raise ForwardError(f"both {primary} and its alternate key hold other content")

    def _metadata(self, f: Candidate) -> dict[str, str]:
        meta = {
            "sha256": f.sha256,
            "size": str(f.size),
            "station": _meta_value(self.station_id),
            "officer-no": _meta_value(f.officer_no),
            "serial": _meta_value(f.serial),
            "card-path": _meta_value(parse_card_path(f.card_path).display),
            "file-name": _meta_value(f.name),
            "collected-at": f.collected_at.isoformat(timespec="seconds"),
            "level": f.level,
            "important": "true" if f.important else "false",
        }
        if f.recorded_at is not None:
            meta["recorded-at"] = f.recorded_at.isoformat(timespec="seconds")
        if f.legal_hold:
            meta["legal-hold"] = _meta_value(f.legal_hold)
        return meta

    def _object_args(self, f: Candidate) -> dict[str, Any]:
        ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
        return {"Metadata": self._metadata(f), "ContentType": ctype}

    def _body(self, data: bytes) -> _ThrottledBody:
        return _ThrottledBody(data, self.throttle, self.stop, self._sent)

    def _put(self, f: Candidate, key: str) -> dict[str, Any]:
        """A file of one part: a single PUT carrying its whole SHA-256 and MD5."""
        try:
            data = _read_part(f.path, 1, max(f.size, 1), f.size) if f.size else b""
        except FileNotFoundError:
            raise ForwardIntegrityError("the stored file is missing") from None
        sha = hashlib.sha256(data).hexdigest()
        if sha != f.sha256:  # these very bytes are what is sent
            raise ForwardIntegrityError(
                f"the stored file's hash is {sha}, the catalog says {f.sha256}"
            )
        md5 = hashlib.md5(data).hexdigest()
        self.state.put(
            key,
            sha256=f.sha256,
            size=f.size,
            file_id=f.id,
            state="uploading",
            upload_id=None,
            part_size=None,
            mode="put",
            started_at=_now_iso(),
        )
        args: dict[str, Any] = {"ContentMD5": _b64(bytes.fromhex(md5))}
        if self.config.checksum == "auto":
            args["ChecksumSHA256"] = _b64(bytes.fromhex(sha))
        r = self.client.put_object(
            Bucket=self.config.bucket,
            Key=key,
            Body=self._body(data),
            **args,
            **self._object_args(f),
        )
        return {
            "etag": r.get("ETag"),
            "mode": "put",
            "md5": md5,
            "sha256_b64": args.get("ChecksumSHA256"),
        }

    def _start_upload(self, f: Candidate, key: str, part_size: int) -> tuple[str, str]:
        args: dict[str, Any] = {}
        if self.config.checksum == "auto":
            args["ChecksumAlgorithm"] = "SHA256"
        r = self.client.create_multipart_upload(
            Bucket=self.config.bucket, Key=key, **args, **self._object_args(f)
        )
        # a server without additional checksums ignores the request: fall back to MD5
        mode = "sha256" if r.get("ChecksumAlgorithm") == "SHA256" else "md5"
        self.state.put(
            key,
            sha256=f.sha256,
            size=f.size,
            file_id=f.id,
            state="uploading",
            upload_id=r["UploadId"],
            part_size=part_size,
            mode=mode,
            started_at=_now_iso(),
            attempts=0,
        )
        log.info("file %s: multipart upload %s started (%s)", f.id, key, mode)
        return r["UploadId"], mode

    def _server_parts(self, key: str, upload_id: str) -> dict[int, dict[str, Any]] | None:
        """The parts the server holds for an upload, or None if the upload is gone."""
        from botocore.exceptions import ClientError

        out: dict[int, dict[str, Any]] = {}
        try:
            pages = self.client.get_paginator("list_parts").paginate(
                Bucket=self.config.bucket, Key=key, UploadId=upload_id
            )
            for page in pages:
                for p in page.get("Parts", []):
                    out[p["PartNumber"]] = p
        except ClientError as e:
            if _error_code(e) in ("NoSuchUpload", "404"):
                return None
            raise
        return out

    def _abort(self, key: str, upload_id: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.abort_multipart_upload(
                Bucket=self.config.bucket, Key=key, UploadId=upload_id
            )
        except (ClientError, BotoCoreError) as e:
            log.warning("could not abort upload %s of %s: %s", upload_id, key, e)
        self.state.drop_parts(upload_id)

    def _multipart(
        self, f: Candidate, key: str, part_size: int, digests: _Digests | None
    ) -> dict[str, Any]:
        row = self.state.get(key)
        upload_id = row["upload_id"] if row is not None else None
        mode = row["mode"] if row is not None else None
        server: dict[int, dict[str, Any]] | None = None
        if upload_id:
            server = self._server_parts(key, upload_id)
            if server is None:
                done_before = self._completed_before(f, key, upload_id, part_size)
                if done_before is not None:
                    return done_before
                log.info("file %s: upload %s is gone from the server; starting again", f.id, key)
                self.state.drop_parts(upload_id)
                upload_id = None
        if not upload_id:
            upload_id, mode = self._start_upload(f, key, part_size)
            server = {}
        assert server is not None and mode is not None
        recorded = self.state.parts(upload_id)
        count = math.ceil(f.size / part_size)
        done: list[dict[str, Any]] = []
        sent_parts = skipped = 0
        for number in range(1, count + 1):
            if self.stop.is_set():
                raise _Interrupted()
            if not in_window(self.window, self.clock().time()):
                raise _Interrupted()  # parts start only inside the window
            try:
                data = _read_part(f.path, number, part_size, f.size)
            except FileNotFoundError:
                raise ForwardIntegrityError("the stored file is missing") from None
            sha = _b64(hashlib.sha256(data).digest())
            md5 = hashlib.md5(data).hexdigest()
            if digests is not None and digests.parts[number - 1] != (sha, md5):
                self._abort(key, upload_id)
                raise ForwardIntegrityError(
                    f"part {number} changed while the file was being forwarded"
                )
            have = server.get(number)
            if have is not None and self._part_matches(
                have, recorded.get(number), len(data), sha, md5
            ):
                etag = have["ETag"]
                if number not in recorded:
                    self.state.add_part(upload_id, number, len(data), etag, sha, md5)
                skipped += 1
                self._sent_skipped(len(data))
            else:
                etag = self._upload_part(key, upload_id, number, data, sha, md5, mode)
                self.state.add_part(upload_id, number, len(data), etag, sha, md5)
                sent_parts += 1
            part: dict[str, Any] = {"PartNumber": number, "ETag": etag}
            if mode == "sha256":
                part["ChecksumSHA256"] = sha
            done.append(part)
        if skipped:
            log.info("file %s: resumed %s, %s part(s) already on the server", f.id, key, skipped)
        r = self.client.complete_multipart_upload(
            Bucket=self.config.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": done},
        )
        result = self._composites(upload_id, count)
        assert result is not None
        return {
            **result,
            "etag": r.get("ETag"),
            "mode": mode,
            "parts_sent": sent_parts,
            "parts_skipped": skipped,
        }

    def _composites(self, upload_id: str, count: int) -> dict[str, Any] | None:
        """The object checksums S3 derives from the recorded parts (None: parts missing)."""
        recorded = self.state.parts(upload_id)
        if any(n not in recorded for n in range(1, count + 1)):
            return None
        sha_parts = [base64.b64decode(recorded[n]["sha256"]) for n in range(1, count + 1)]
        md5_parts = [bytes.fromhex(recorded[n]["md5"]) for n in range(1, count + 1)]
        return {
            "upload_id": upload_id,
            "composite_sha256": f"{_b64(hashlib.sha256(b''.join(sha_parts)).digest())}-{count}",
            "composite_md5": f"{hashlib.md5(b''.join(md5_parts)).hexdigest()}-{count}",
        }

    def _completed_before(
        self, f: Candidate, key: str, upload_id: str, part_size: int
    ) -> dict[str, Any] | None:
        """An upload the server no longer lists may have been completed just before a crash."""
        row = self.state.get(key)
        result = self._composites(upload_id, math.ceil(f.size / part_size))
        if result is None or row is None or self._head(key) is None:
            return None
        result["mode"] = row["mode"]
        try:
            self._verify(f, key, result)
        except ForwardVerifyError:
            return None  # not ours, or not whole: sent again
        log.info("file %s: upload %s had been completed before the stop", f.id, key)
        return {**result, "adopted": True}

    def _sent_skipped(self, n: int) -> None:
        with self._lock:
            cur = self._status.get("current")
            if cur is not None:
                cur["bytes_done"] += n

    @staticmethod
    def _part_matches(
        have: dict[str, Any], rec: sqlite3.Row | None, size: int, sha: str, md5: str
    ) -> bool:
        """Whether the server's part is these very bytes (so it need not be sent again)."""
        if have.get("Size") != size:
            return False
        etag = str(have.get("ETag", "")).strip('"')
        if have.get("ChecksumSHA256"):
            return have["ChecksumSHA256"] == sha
        if rec is not None and rec["sha256"] == sha and rec["md5"] == md5:
            return rec["etag"].strip('"') == etag  # the part we sent and recorded
        return etag == md5  # acknowledged but not recorded (a crash in between)

    def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes, sha: str, md5: str, mode: str
    ) -> str:
        args: dict[str, Any] = {"ContentMD5": _b64(bytes.fromhex(md5))}
        if mode == "sha256":
            args["ChecksumSHA256"] = sha
        r = self.client.upload_part(
            Bucket=self.config.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=self._body(data),
            **args,
        )
        etag = r["ETag"]
        if mode == "sha256" and r.get("ChecksumSHA256") not in (None, sha):
            raise ForwardVerifyError(f"{key} part {number}: the server computed another SHA-256")
        return etag

    def _verify(self, f: Candidate, key: str, result: dict[str, Any]) -> None:
        """HEAD the new object: its size, its metadata and the server's checksum."""
        head = self._head(key)
        problems = []
        if head is None:
            problems.append("the object is not there after the upload")
        else:
            if head.get("ContentLength") != f.size:
                problems.append(f"size {head.get('ContentLength')}, expected {f.size}")
            if head.get("Metadata", {}).get("sha256") != f.sha256:
                problems.append("the sha256 metadata does not match")
            checksum = head.get("ChecksumSHA256")
            etag = str(head.get("ETag", "")).strip('"')
            if result["mode"] == "put":
                if checksum and checksum.split("-")[0] != result.get("sha256_b64", checksum):
                    problems.append("the server's SHA-256 differs from the file's")
                elif not checksum and etag != result["md5"]:
                    problems.append(f"ETag {etag} is not the file's MD5")
            elif result["mode"] == "sha256" and checksum:
                want = result["composite_sha256"]
                if checksum.split("-")[0] != want.split("-")[0]:
                    problems.append("the server's composite SHA-256 differs from the parts sent")
            elif etag != result["composite_md5"]:
                problems.append(f"ETag {etag} is not the parts' composite MD5")
            result["checksum"] = checksum
        if problems:
            raise ForwardVerifyError(f"s3://{self.config.bucket}/{key}: " + "; ".join(problems))
