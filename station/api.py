"""StationAPI: the one front door between the running station and its web layer.

Every operation the touchscreen, the console and the central server need is a
method here, built on the running `Station`'s public attributes and methods. It
gives back frozen dataclasses, plain dicts, bytes or paths of files to send, never
a catalog handle, a live configuration object or a subsystem; a refusal is a
`station.errors.StationError` (code and HTTP status), never a sentence to read.

`web/` imports only this module and `station.errors` from the station: the types
and constants it needs (`Account`, `LEVELS`, `FileQuery`, `StoredRef`,
`WebSection`, `Settings`, ...) are re-exported here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import generate_latest

from station import accounts, eventlog, search
from station.accounts import Account
from station.catalog.db import REQUEST_SOURCE
from station.config import WebSection
from station.errors import (
    KeptPermanently,
    NoSuchFile,
    NotAdministrator,
    NotConfirmed,
    NotPlayable,
    UnderLegalHold,
    login_refused,
)
from station.ingest import registration
from station.media.playback import TEXT_EXTS, Transcoder, browser_type, ext_of, read_text
from station.media.thumbnails import ThumbnailCache
from station.metrics import registry_for
from station.names import safe_component
from station.retention.annotations import annotate
from station.retention.protection import LEVELS
from station.retention.sweeper import DeletionRefused
from station.search import FileQuery, StoredRef
from station.settings import Settings, SettingsStore

if TYPE_CHECKING:
    from station.runtime import Station

__all__ = [
    "LEVELS",
    "TEXT_EXTS",
    "Account",
    "FileQuery",
    "LoginSession",
    "MediaInfo",
    "Settings",
    "StationAPI",
    "StoredRef",
    "WebSection",
    "browser_type",
    "csrf_token",
    "ext_of",
    "read_text",
    "request_source",
    "safe_component",
]

csrf_token = accounts.csrf_token  # derived from the session cookie, never stored


@dataclass(frozen=True)
class LoginSession:
    """A session just opened: whose, its cookie token and its CSRF token."""

    account: Account
    token: str
    csrf: str


@dataclass(frozen=True)
class MediaInfo:
    """A file's thumbnail and length as far as made (`pending`: asked for, not made yet)."""

    pending: bool
    thumbnail: bool = False
    duration_s: float | None = None


@dataclass(frozen=True)
class VideoState:
    """How far the browser copy of a video is: ready, working or failed."""

    state: str
    progress: float
    error: str | None = None


@contextlib.contextmanager
def request_source(source: str) -> Iterator[None]:
    """Every event written meanwhile (in this context) carries `source`: the address a
    browser's request came from."""
    token = REQUEST_SOURCE.set(source)
    try:
        yield
    finally:
        REQUEST_SOURCE.reset(token)


class StationAPI:
    """What the screens and the central server may ask of one running station."""

    def __init__(self, station: Station) -> None:
        self._station = station
        self._settings = SettingsStore(station)
        self._metrics = registry_for(station)
        cache = station.config.database_path.parent  # beside the catalog, off the disks
        self._transcoder = Transcoder(cache / "playback-cache")
        self._thumbs_folder = cache / "thumbnails"
        self._thumbs: ThumbnailCache | None = None  # made at the first use
        self._lock = threading.Lock()

    # --- the station itself -------------------------------------------------------------

    @property
    def station_id(self) -> str:
        return self._station.config.station.id

    def now(self) -> dt.datetime:
        """The station's local time."""
        return self._station.now()

    @property
    def stopping(self) -> bool:
        return self._station.stopping

    def web_limits(self) -> WebSection:
        """The `[web]` section (listeners, caps, allowed hosts): a copy."""
        return self._station.config.web.model_copy(deep=True)

    def token_ok(self, given: bytes) -> bool:
        """Whether `given` is one of the central server's bearer tokens, compared with
        every token in constant time (timing says nothing)."""
        ok = False
        for t in self._station.config.api.tokens:
            ok |= hmac.compare_digest(given, t.encode())
        return ok

    def status(self) -> dict[str, Any]:
        """The data of `GET /api/v1/status` (CONTRACT.md)."""
        return self._station.status()

    def status_json(self) -> bytes:
        """The status rendered as JSON, shared by the pollers within half a second."""
        return self._station.status_json()

    def cached_status_json(self) -> bytes | None:
        """The last rendering of the status if it is fresh enough, without waiting."""
        return self._station.cached_status_json()

    async def wait_change(self, version: int, timeout: float) -> int:
        """Wait until the status version moves past `version` (or the timeout)."""
        return await self._station.wait_change(version, timeout=timeout)

    def metrics(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self._metrics)

    def disks(self) -> list[dict[str, Any]]:
        return self._station.disks()

    def recorders(self) -> list[dict[str, Any]]:
        """Every recorder seen, with its registration and last state."""
        return search.list_recorders(self._station.catalog)

    # --- files --------------------------------------------------------------------------

    def files(self, **filters: Any) -> dict[str, Any]:
        """The data of `GET /api/v1/files` (the one file query, `station.search`)."""
        st = self._station
        return search.api_files(st.catalog, st.tz, central=st.retention.central, **filters)

    def search_files(
        self, q: FileQuery, *, scope_officer_no: str | None, limit: int, offset: int
    ) -> dict[str, Any]:
        """One page of the retrieval screens' search."""
        st = self._station
        return search.search_files(
            st.catalog, st.tz, q, scope_officer_no=scope_officer_no, limit=limit, offset=offset
        )

    def file(self, file_id: int, *, scope_officer_no: str | None) -> dict[str, Any]:
        """One live file the viewer may see (NoSuchFile otherwise)."""
        st = self._station
        f = search.get_file(st.catalog, st.tz, file_id, scope_officer_no=scope_officer_no)
        if f is None:
            raise NoSuchFile(f"no stored file {file_id}")
        central = st.retention.central
        if not central.required:
            f["central"] = "none"  # neither the platform nor forwarding keeps a copy
        elif f["central"] != "verified" and central.verified_elsewhere(file_id):
            f["central"] = "verified"  # the S3 forwarder's check matched
        return f

    def file_history(self, file_id: int, limit: int = 50) -> list[dict[str, Any]]:
        """The newest events about one file."""
        return search.recent_events(self._station.catalog, file_id=file_id, limit=limit)["items"]

    def stored_refs(self, file_ids: list[int], *, scope_officer_no: str | None) -> list[StoredRef]:
        """Where the given live files are, in the order asked (ones the viewer may not see
        are left out)."""
        return search.stored_refs(
            self._station.catalog, file_ids, scope_officer_no=scope_officer_no
        )

    def annotate(
        self,
        file_id: int,
        *,
        by: str,
        admin: bool,
        level: str | None = None,
        note: str | None = None,
        case_no: str | None = None,
        legal_hold: str | None = None,
        category: str | None = None,
    ) -> None:
        """Change a file's grade, note, case number, legal hold or retention category
        (AnnotationError)."""
        annotate(
            self._station.catalog,
            file_id,
            by=by,
            level=level,
            note=note,
            case_no=case_no,
            legal_hold=legal_hold,
            category=category,
            admin=admin,
        )

    def delete_file(
        self, file_id: int, reason: str, *, by: str, confirmed: bool, scope_officer_no: str | None
    ) -> None:
        """A person deletes a file, with a reason, through the retention sweeper (which
        checks protection and legal hold in the same transaction as the tombstone)."""
        f = self.file(file_id, scope_officer_no=scope_officer_no)
        if f["protected"] and not confirmed:
            raise NotConfirmed(f"file {file_id} is protected: confirm its deletion")
        why = reason.strip()
        if f["protected"]:
            why = f"{why} (protected file: deletion confirmed twice)"
        if f["legal_hold"]:
            raise UnderLegalHold(f"file {file_id} is under legal hold {f['legal_hold']}")
        try:
            deleted = self._station.retention.delete(file_id, why, by=by, confirmed=confirmed)
        except DeletionRefused as e:
            if e.permanent:
                raise KeptPermanently(str(e)) from e
            if e.held:
                raise UnderLegalHold(str(e)) from e
            raise NotConfirmed(str(e)) from e
        if not deleted:
            raise NoSuchFile(f"no stored file {file_id}")
        self._station.notify()

    def _thumbnails(self) -> ThumbnailCache:
        with self._lock:
            if self._thumbs is None:
                self._thumbs = ThumbnailCache(self._thumbs_folder)
            return self._thumbs

    def media_info(self, refs: list[StoredRef]) -> dict[int, MediaInfo]:
        """Thumbnail and length of some files, as far as made (the rest is asked for, in
        the background)."""
        cache = self._thumbnails()
        out = {}
        for ref in refs:
            info = cache.info(ref.sha256, ref.path, ref.kind) if ref.path.is_file() else None
            out[ref.id] = (
                MediaInfo(pending=True)
                if info is None
                else MediaInfo(False, info.thumbnail, info.duration_s)
            )
        return out

    def thumbnail(self, ref: StoredRef) -> Path | None:
        """The thumbnail's JPEG file of a file, if one was made."""
        jpeg = self._thumbnails().jpeg(ref.sha256)
        return jpeg if jpeg.is_file() else None

    def video_copy(self, ref: StoredRef) -> Path | None:
        """The finished browser copy (H.264 MP4) of a video, if there is one."""
        return self._transcoder.cached(ref.sha256)

    def video_state(self, ref: StoredRef) -> VideoState:
        """How far the browser copy of a video is (starting it if needed)."""
        if self._transcoder.cached(ref.sha256):
            return VideoState("ready", 1.0)
        job = self._transcoder.start(ref.path, ref.sha256)
        if job.done.is_set():
            if job.error:
                return VideoState("failed", 0.0, job.error)
            return VideoState("ready", 1.0)
        return VideoState("working", round(job.progress, 3))

    def video_stream(self, ref: StoredRef) -> Iterator[bytes]:
        """The browser copy of a video as it is made (NotPlayable when it cannot be)."""
        job = self._transcoder.start(ref.path, ref.sha256)
        if job.done.is_set() and job.error:
            raise NotPlayable(job.error)
        return self._transcoder.follow(job)

    # --- the system log and alarms --------------------------------------------------------

    def events(self, **filters: Any) -> list[dict[str, Any]]:
        """The system log in order after a cursor, filtered (the one event query)."""
        return eventlog.search(self._station.catalog, **filters)

    def recent_events(self, **filters: Any) -> dict[str, Any]:
        """The system log newest first, one page before a cursor (for the console)."""
        return search.recent_events(self._station.catalog, **filters)

    @staticmethod
    def events_csv(items: list[dict[str, Any]]) -> str:
        return eventlog.to_csv(items)

    def audit(self, kind: str, message: str, *, actor: str, **fields: Any) -> None:
        """Write one event on behalf of a person (a view of footage, an export, ...)."""
        accounts.audit(self._station.catalog, kind, message, actor=actor, **fields)

    def alarm_list(self, *, active_only: bool) -> list[dict[str, Any]]:
        return self._station.alarm_list(active_only=active_only)

    def acknowledge_alarm(self, alarm_id: int, by: str) -> bool:
        """False when no alarm with this id is raised."""
        return self._station.acknowledge_alarm(alarm_id, by)

    def upcoming_deletions(self, days: int | None) -> dict[str, Any]:
        """What deletion by age removes in the next `days` (None: `retention.warn_days`)."""
        ahead = self._station.config.retention.warn_days if days is None else days
        return {"days": ahead, "items": self._station.upcoming_deletions(ahead)}

    @property
    def retention_paused(self) -> str | None:
        """Why deletion by age waits (the station clock), or None."""
        return self._station.retention_paused

    def confirm_clock(self, by: str) -> None:
        """An administrator says the station clock is right: deletion by age goes on."""
        self._station.confirm_clock(by=by)

    # --- recorders and ports --------------------------------------------------------------

    def approve_recorder(self, serial: str, *, officer_no: str | None, by: str) -> dict[str, Any]:
        """Register a held recorder by hand (RegistrationError)."""
        r = registration.approve(self._station.catalog, serial, officer_no=officer_no, by=by)
        self._station.notify()
        return {"serial": r.serial, "status": r.status}

    def set_priority(self, port: int, by: str) -> None:
        """Collect this port first (PortNotCollecting when it is not collecting)."""
        self._station.set_priority(port, by=by)

    def clear_priority(self, port: int, by: str) -> int | None:
        """Back to equal shares if `port` is the one first; the port first afterwards."""
        return self._station.clear_priority(port, by=by)

    # --- accounts and sessions --------------------------------------------------------------

    def session_account(self, token: str) -> Account | None:
        """The account of a live session (the activity noted), None if it has ended."""
        return accounts.session_account(
            self._station.catalog,
            token,
            idle_minutes=self._settings.current().session_idle_minutes,
        )

    def _authenticate(
        self, officer_no: str, secret: str, *, source: str = "", code: str | None = None
    ) -> Account:
        result = accounts.authenticate(
            self._station.catalog, officer_no, secret, source=source, code=code
        )
        if result.account is None:
            raise login_refused(result.reason)
        return result.account

    def login(
        self,
        officer_no: str,
        secret: str,
        *,
        source: str,
        client: str,
        code: str | None = None,
        replacing: str | None = None,
    ) -> LoginSession:
        """Log in (LoginRefused and its kinds); the session `replacing` ends."""
        account = self._authenticate(officer_no, secret, source=source, code=code)
        if replacing:
            accounts.end_session(self._station.catalog, replacing, "replaced")
        token = accounts.start_session(self._station.catalog, account, client=client)
        return LoginSession(account, token, csrf_token(token))

    def logout(self, token: str) -> None:
        accounts.end_session(self._station.catalog, token)

    def change_secret(
        self, account: Account, current: str, new: str, *, source: str, client: str
    ) -> LoginSession:
        """Change one's own PIN or password (the current one asked again): every session
        of the account ends, a new one is opened."""
        self._authenticate(account.officer_no, current, source=source)
        changed = accounts.update_user(
            self._station.catalog, account.officer_no, by=account.officer_no, secret=new
        )
        token = accounts.start_session(self._station.catalog, changed, client=client)
        return LoginSession(changed, token, csrf_token(token))

    def administrator(self, officer_no: str, secret: str, code: str | None = None) -> Account:
        """An administrator's PIN typed on the screen (LoginRefused, NotAdministrator)."""
        account = self._authenticate(officer_no, secret, code=code)
        if not account.is_admin:
            raise NotAdministrator(f"{officer_no} is not an administrator")
        return account

    def users(self) -> list[Account]:
        return accounts.list_users(self._station.catalog)

    def create_user(
        self, officer_no: str, secret: str, *, role: str, name: str, by: str
    ) -> Account:
        return accounts.create_user(
            self._station.catalog, officer_no, secret, role=role, name=name, by=by
        )

    def update_user(self, officer_no: str, *, by: str, **changes: Any) -> Account:
        return accounts.update_user(self._station.catalog, officer_no, by=by, **changes)

    # --- settings ----------------------------------------------------------------------------

    def settings(self) -> Settings:
        return self._settings.current()

    def update_settings(self, changes: dict[str, Any], *, by: str) -> Settings:
        """Validate, store and apply a change (SettingsError): a new configuration goes
        live through the station's reload path, never an edit of the live one."""
        return self._settings.update(changes, by=by)

    def layout(self) -> dict[str, Any]:
        """The port windows' grid for the station screen (SPEC S33)."""
        return self._settings.layout()
