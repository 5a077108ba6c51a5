"""The `PlatformLink` worker: registration, heartbeat, the outbox push, footage upload and
its verification, configuration pull, signed commands. One thread, built from the station
and a stop event; every network failure goes through the breaker (station/platform/breaker.py).

Why one module of about 650 lines: one worker's rounds (register, beat, push, upload,
pull, commands) share its breaker and its HTTP client; the protocol, outbox, signing and
breaker are modules of their own.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from sqlalchemy import and_, exists, or_, select

from station import __version__
from station.catalog import Catalog, OutboxEntry, PlatformCommand, StoredFile
from station.catalog.db import append_event
from station.catalog.models import utcnow
from station.config import ConfigError, StationConfig, parse_config
from station.platform import outbox, signing
from station.platform.breaker import Breaker
from station.platform.config import PULLABLE_SECTIONS
from station.platform.protocol import (
    KINDS,
    PREFIX,
    CentralFile,
    Command,
    Commands,
    ConfigReport,
    ConfigVersion,
    DiskInfo,
    Heartbeat,
    HeartbeatAnswer,
    Push,
    PushAnswer,
    PushEntry,
    Receipt,
    Registered,
    Registration,
)

if TYPE_CHECKING:
    from station.health.alarms import AlarmBook
    from station.ingest.collector import Slot
    from station.store.disks import Store


class LinkHost(Protocol):
    """What the link needs of the running station (`station.runtime.Station` is one)."""

    config: StationConfig  # the snapshot in force (replaced whole on a reload)
    catalog: Catalog
    alarms: AlarmBook
    store: Store
    slots: dict[int, Slot]
    network_online: bool | None

    def notify(self, progress: bool = False) -> None: ...

    def reload(self, config: StationConfig) -> list[str]: ...

    def self_check(self) -> dict[str, Any]: ...


log = logging.getLogger(__name__)

APPLIED = "platform_config"  # station_state: {"version", "settings"} applied last
REJECTED = "platform_config_rejected"  # station_state: the last version refused
PLATFORM_ID = "platform_id"
READ_CHUNK = 1 << 20
PUSH_BUDGET_S = 5.0  # push this long per round before the other work gets its turn
UPLOADS_PER_ROUND = 4
FUTURE_SKEW_S = 300.0  # a command issued this far in "the future" is refused


class LinkDown(Exception):
    """The platform could not be reached, or answered with a failure: try again later."""


def fingerprint() -> str:
    """SHA-256 of the machine id (the hostname where there is none)."""
    for p in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            return hashlib.sha256(Path(p).read_bytes().strip()).hexdigest()
        except OSError:
            continue
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()


def _iso(t: float | None) -> str | None:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds") if t else None


def overlay(
    config: StationConfig, settings: dict[str, dict[str, Any]], source: str
) -> StationConfig:
    """`config` with the platform's sections laid over it, validated as a local file is.

    Each section is the station's own values updated with the platform's keys. ConfigError
    names the bad key, as for the file; a section the platform may not set is refused."""
    foreign = sorted(set(settings) - set(PULLABLE_SECTIONS))
    if foreign:
        raise ConfigError(
            f"{source}: section(s) {', '.join(foreign)} cannot be set by the platform "
            f"(only {', '.join(PULLABLE_SECTIONS)})"
        )
    data = {}
    for name, values in settings.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {name}: must be a table of keys")
        data[name] = {**getattr(config, name).model_dump(mode="json"), **values}
    checked = parse_config(data, source)
    return config.model_copy(update={n: getattr(checked, n) for n in settings})


class PlatformLink:
    """The station's side of docs/platform-protocol.md."""

    def __init__(self, station: LinkHost, stop: threading.Event) -> None:
        self.station = station
        self.stop = stop
        self.cfg = station.config.platform
        self.catalog = station.catalog
        self.station_id = station.config.station.id
        self.breaker = Breaker(
            self.cfg.backoff_base_s, self.cfg.max_backoff_s, self.cfg.breaker_after,
            self.cfg.breaker_open_s,
        )  # fmt: skip
        self.key = signing.load_public(self.cfg.command_key) if self.cfg.command_key else None
        token = self.cfg.token.get_secret_value() if self.cfg.token else ""
        self.http = httpx.Client(
            base_url=f"{self.cfg.url}",
            headers={"Authorization": f"Bearer {token}", "User-Agent": f"station/{__version__}"},
            timeout=self.cfg.timeout_s,
            verify=self.cfg.ca_bundle or True,
        )
        self.platform_id: str | None = None
        self.registered = False
        self.next_heartbeat = 0.0
        self.next_poll = 0.0
        self.poll_now = False
        self.last_contact: float | None = None
        self.last_error: str | None = None
        self.delivered = 0
        self.lock = threading.Lock()
        self._depth: tuple[float, dict[str, int]] = (0.0, {})

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        self.apply_saved()
        while not self.stop.is_set():
            try:
                wait = self.cycle()
            except Exception as e:  # a bug here must not end the link
                log.exception("platform link round failed")
                self.last_error = f"{type(e).__name__}: {e}"
                wait = 5.0
            self.stop.wait(wait)
        self.http.close()

    def cycle(self) -> float:
        """One round; returns how long to wait before the next."""
        outbox.fill(self.catalog, self.station_id, sm3=self.station.config.integrity.sm3)
        now = time.monotonic()
        if not self.breaker.ready(now):
            return min(self.breaker.wait_s(now), 1.0)
        try:
            if not self.registered:
                self.register()
            if now >= self.next_heartbeat:
                self.heartbeat()
                self.next_heartbeat = time.monotonic() + self.cfg.heartbeat_s
            more = self.push_all()
            if self.cfg.upload_content:
                more = self.upload_some() or more
            if self.poll_now or now >= self.next_poll:
                self.poll_now = False
                self.pull_config()
                self.pull_commands()
                self.next_poll = time.monotonic() + self.cfg.poll_s
        except LinkDown as e:
            self._down(str(e))
            return min(self.breaker.wait_s(time.monotonic()), 1.0)
        self._up()
        return 0.0 if more else 1.0

    def _up(self) -> None:
        was_open = self.breaker.state == "open"
        self.breaker.success()
        self.last_contact = time.time()
        if was_open or self.last_error:
            self.last_error = None
            self.station.alarms.clear("platform_unreachable")
            self.station.notify()

    def _down(self, why: str) -> None:
        first = self.last_error is None
        self.last_error = why
        self.breaker.failure(time.monotonic())
        if first:
            log.warning("platform link: %s", why)
        if self.breaker.state == "open":
            self.station.alarms.raise_(
                "platform_unreachable",
                f"the central platform {self.cfg.url} cannot be reached: {why} "
                f"({outbox_total(self.depth())} message(s) wait in the outbox)",
            )
        self.station.notify()

    # --- HTTP ---------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            try:
                r = self.http.request(method, f"{PREFIX}{path}", **kw)
            except httpx.RemoteProtocolError:
                # a kept-alive connection the server closed meanwhile: once more on a new one
                # (every request is idempotent at the platform; a streamed body cannot be
                # sent again and goes back to the breaker instead)
                if not isinstance(kw.get("content", b""), bytes | str):
                    raise
                r = self.http.request(method, f"{PREFIX}{path}", **kw)
        except httpx.HTTPError as e:
            raise LinkDown(f"{type(e).__name__}: {e}") from None
        if (
            r.status_code == 404
            and path.startswith(f"/stations/{self.station_id}/")
            and ("not registered" in r.text)
        ):
            self.registered = False
            raise LinkDown("the platform does not know this station: registering again")
        if r.status_code >= 400 and r.status_code != 404:
            raise LinkDown(f"HTTP {r.status_code} on {method} {path}: {r.text[:200]}")
        return r

    # --- registration and heartbeat -----------------------------------------------------

    def _disks(self) -> list[DiskInfo]:
        out = []
        for d in self.station.store.disks:
            total, free = d.usage()
            out.append(DiskInfo(path=str(d.path), total_bytes=total, free_bytes=free))
        return out

    def register(self) -> None:
        reg = Registration(
            station_id=self.station_id,
            name=self.station.config.station.name,
            fingerprint=fingerprint(),
            software_version=__version__,
            ports=len(self.station.slots),
            disks=self._disks(),
        )
        answer = Registered.model_validate(
            self._call("POST", "/stations/register", json=reg.model_dump()).json()
        )
        before = self.catalog.get_state(PLATFORM_ID)
        self.platform_id, self.registered = answer.platform_id, True
        if before != answer.platform_id:
            self.catalog.set_state(PLATFORM_ID, answer.platform_id)
            with self.catalog.write() as s:
                append_event(
                    s, "platform_registered",
                    f"registered with {self.cfg.url} as {answer.platform_id}",
                    platform_id=answer.platform_id,
                )  # fmt: skip
        if answer.config_version > self.applied_version():
            self.poll_now = True

    def heartbeat(self) -> None:
        slots: dict[str, int] = {}
        for slot in self.station.slots.values():
            slots[slot.state] = slots.get(slot.state, 0) + 1
        hb = Heartbeat(
            station_id=self.station_id,
            time=utcnow().isoformat(timespec="seconds"),
            software_version=__version__,
            config_version=self.applied_version(),
            outbox_depth=self.depth(fresh=True),
            slots=slots,
            disks=self._disks(),
            alarms=[a.code for a in self.station.alarms.active()],
            network_online=self.station.network_online,
        )
        r = self._call(
            "POST",
            f"/stations/{self.station_id}/heartbeat",
            params={"interval": self.cfg.heartbeat_s},
            json=hb.model_dump(),
        )
        answer = HeartbeatAnswer.model_validate(r.json())
        if answer.config_version > self.applied_version() or answer.commands_waiting:
            self.poll_now = True

    # --- the outbox -----------------------------------------------------------------------

    def depth(self, fresh: bool = False) -> dict[str, int]:
        at, cached = self._depth
        if fresh or time.monotonic() - at > 1.0:
            cached = outbox.depth(self.catalog)
            self._depth = (time.monotonic(), cached)
        return cached

    def push_all(self) -> bool:
        """Push each kind's oldest entries, in order; True if more is waiting."""
        started = time.monotonic()
        more = False
        for kind in KINDS:
            while not self.stop.is_set():
                entries = outbox.pending(self.catalog, kind, self.cfg.batch)
                if not entries:
                    break
                self.push(kind, entries)
                if len(entries) < self.cfg.batch:
                    break
                if time.monotonic() - started > PUSH_BUDGET_S:
                    more = True
                    break
        return more

    def push(self, kind: str, entries: list[OutboxEntry]) -> None:
        batch = Push(
            kind=kind,  # type: ignore[arg-type]
            entries=[PushEntry(key=e.key, seq=e.id, body=json.loads(e.body)) for e in entries],
        )
        try:
            r = self._call("POST", f"/stations/{self.station_id}/push", json=batch.model_dump())
            if r.status_code == 404:
                raise LinkDown(f"push answered 404: {r.text[:200]}")
            answer = PushAnswer.model_validate(r.json())
        except LinkDown as e:
            outbox.failed(self.catalog, entries, str(e))
            raise
        settled = outbox.settle(
            self.catalog, entries, {a.key: (a.result, a.reason) for a in answer.results}
        )
        self.delivered += settled
        if settled < len(entries):  # an entry left unanswered: stop this kind's order here
            raise LinkDown(f"{len(entries) - settled} {kind} entries were not answered")

    # --- the footage --------------------------------------------------------------------

    def _to_upload(self) -> list[StoredFile]:
        retry_before = utcnow() - dt.timedelta(seconds=self.cfg.max_backoff_s)
        indexed = exists().where(
            and_(
                OutboxEntry.kind == "file",
                OutboxEntry.file_id == StoredFile.id,
                OutboxEntry.answer.in_(("accepted", "duplicate")),
            )
        )
        with self.catalog.read() as s:
            return list(
                s.scalars(
                    select(StoredFile)
                    .where(
                        StoredFile.deleted_at.is_(None),
                        indexed,
                        or_(
                            StoredFile.central_state.is_(None),
                            StoredFile.central_state == "pending",
                            and_(
                                StoredFile.central_state == "failed",
                                StoredFile.central_at < retry_before,
                            ),
                        ),
                    )
                    .order_by(StoredFile.id)
                    .limit(UPLOADS_PER_ROUND)
                ).all()
            )

    def upload_some(self) -> bool:
        files = self._to_upload()
        for f in files:
            if self.stop.is_set():
                break
            self.upload(f)
        return len(files) == UPLOADS_PER_ROUND

    def upload(self, f: StoredFile) -> None:
        """Send one stored file unless the platform holds it already; verify its copy."""
        path = f"/stations/{self.station_id}/files/{f.id}"
        r = self._call("GET", path)
        if r.status_code == 200 and self._matches(f, CentralFile.model_validate(r.json())):
            self._central(f, "verified", None)
            return
        local = hashlib.sha256()
        problem: list[str] = []

        def body() -> Iterator[bytes]:
            with open(Path(f.disk) / f.rel_path, "rb") as src:
                while chunk := src.read(READ_CHUNK):
                    if self.stop.is_set():
                        raise LinkDown("stopping")
                    local.update(chunk)
                    yield chunk
            if local.hexdigest() != f.sha256:  # never hand on a copy that is not the original
                problem.append("the stored file no longer matches its SHA-256: not sent")
                raise OSError(problem[-1])

        try:
            r = self._call(
                "PUT", f"{path}/content", content=body(),
                headers={"Content-Type": "application/octet-stream", "X-Content-SHA256": f.sha256},
            )  # fmt: skip
        except OSError as e:
            self._central(f, "failed", problem[-1] if problem else f"cannot read it: {e}")
            return
        if problem:
            self._central(f, "failed", problem[-1])
            return
        if r.status_code != 200:
            raise LinkDown(f"upload of file {f.id} answered {r.status_code}: {r.text[:200]}")
        got = CentralFile.model_validate(r.json())
        if self._matches(f, got):
            self._central(f, "verified", None)
        else:
            self._central(
                f, "failed",
                f"the platform's copy does not match: sha256 {got.sha256} size {got.size}",
            )  # fmt: skip

    @staticmethod
    def _matches(f: StoredFile, got: CentralFile) -> bool:
        return (
            got.sha256 == f.sha256
            and got.size == f.size
            and (f.sm3 is None or got.sm3 is None or got.sm3 == f.sm3)
        )

    def _central(self, f: StoredFile, state: str, error: str | None) -> None:
        with self.catalog.write() as s:
            row = s.get(StoredFile, f.id)
            if row is None:
                return
            row.central_state, row.central_at, row.central_error = state, utcnow(), error
            if state == "verified":
                append_event(
                    s, "file_central_verified", f"{f.rel_path}: the platform's copy matches",
                    file_id=f.id, sha256=f.sha256, sm3=f.sm3,
                )  # fmt: skip
            else:
                append_event(s, "file_central_failed", f"{f.rel_path}: {error}", file_id=f.id)
        if state == "failed":
            log.error("file %s: central copy not verified: %s", f.id, error)

    # --- configuration ------------------------------------------------------------------

    def applied_version(self) -> int:
        raw = self.catalog.get_state(APPLIED)
        return int(json.loads(raw)["version"]) if raw else 0

    def saved_settings(self) -> dict[str, dict[str, Any]]:
        raw = self.catalog.get_state(APPLIED)
        return json.loads(raw)["settings"] if raw else {}

    def apply_saved(self) -> None:
        """At start-up: the platform's last applied version again (the file does not hold it)."""
        settings = self.saved_settings()
        if not settings:
            return
        try:
            new = overlay(self.station.config, settings, "the saved platform configuration")
        except ConfigError as e:
            log.error("%s", e)
            return
        self.station.reload(new)

    def reapply(self, config: StationConfig) -> StationConfig:
        """A reload hook: a SIGHUP's new file keeps the platform's sections."""
        settings = self.saved_settings()
        if not settings:
            return config
        try:
            return overlay(config, settings, "the saved platform configuration")
        except ConfigError as e:
            log.error("%s", e)
            return config

    def pull_config(self) -> int:
        r = self._call("GET", f"/stations/{self.station_id}/config")
        if r.status_code != 200:
            raise LinkDown(f"configuration answered {r.status_code}")
        cv = ConfigVersion.model_validate(r.json())
        rejected = int(self.catalog.get_state(REJECTED, "0") or 0)
        if cv.version <= self.applied_version() or cv.version == rejected:
            return self.applied_version()
        self.apply(cv)
        return self.applied_version()

    def apply(self, cv: ConfigVersion) -> bool:
        """Validate and apply one version without a restart; report it either way."""
        source = f"platform configuration version {cv.version}"
        try:
            new = overlay(self.station.config, cv.settings, source)
        except ConfigError as e:
            self.catalog.set_state(REJECTED, str(cv.version))
            self._report(cv.version, "rejected", str(e), "platform_config_rejected")
            log.error("%s", e)
            return False
        self.catalog.set_state(
            APPLIED, json.dumps({"version": cv.version, "settings": cv.settings})
        )
        self.station.reload(new)
        self._report(
            cv.version, "applied", f"sections {', '.join(cv.settings) or '(none)'}",
            "platform_config_applied",
        )  # fmt: skip
        return True

    def _report(self, version: int, result: str, reason: str, event: str) -> None:
        rep = ConfigReport(
            version=version, result=result, reason=reason[:2000],  # type: ignore[arg-type]
            at=utcnow().isoformat(timespec="seconds"),
        )  # fmt: skip
        with self.catalog.write() as s:
            append_event(s, event, f"version {version}: {reason}"[:4000], version=version)
            outbox.add(s, "report", f"{self.station_id}:config:{version}", rep.model_dump())

    # --- commands -----------------------------------------------------------------------

    def pull_commands(self) -> None:
        r = self._call("GET", f"/stations/{self.station_id}/commands")
        if r.status_code != 200:
            raise LinkDown(f"commands answered {r.status_code}")
        for cmd in Commands.model_validate(r.json()).commands:
            self.handle(cmd)

    def _receipt(self, cmd: Command, status: str, detail: str, result: dict[str, Any]) -> Receipt:
        return Receipt(
            command_id=cmd.id, kind=cmd.kind, status=status,  # type: ignore[arg-type]
            detail=detail[:2000], at=utcnow().isoformat(timespec="seconds"), result=result,
        )  # fmt: skip

    def refuse(self, cmd: Command, why: str, tag: str = "refused") -> None:
        """Refuse a command: logged once, and a receipt saying why."""
        rec = self._receipt(cmd, "refused", why, {})
        with self.catalog.write() as s:
            if outbox.add(s, "receipt", f"{cmd.id}:{tag}", rec.model_dump()):
                append_event(
                    s, "platform_command_refused", f"{cmd.kind} {cmd.id}: {why}",
                    command_id=cmd.id, command=cmd.kind,
                )  # fmt: skip
                log.warning("platform command %s (%s) refused: %s", cmd.id, cmd.kind, why)

    def handle(self, cmd: Command) -> None:
        """Verify, then run at most once, then answer with a receipt."""
        if cmd.station_id != self.station_id:
            return self.refuse(cmd, f"addressed to station {cmd.station_id}")
        try:
            signing.verify(cmd, self.key)
        except signing.SignatureError as e:
            return self.refuse(cmd, str(e))
        with self.catalog.read() as s:
            seen = s.get(PlatformCommand, cmd.id)
            receipt_waits = s.scalar(
                select(OutboxEntry.id).where(
                    OutboxEntry.kind == "receipt",
                    OutboxEntry.key.like(f"{cmd.id}:%"),
                    OutboxEntry.delivered_at.is_(None),
                )
            )
        if seen is not None:
            if receipt_waits is None:  # answered and delivered, and here it is again
                self.refuse(cmd, "replayed: this command was carried out before", "replay")
            return None
        try:
            issued = dt.datetime.fromisoformat(cmd.issued_at)
            if issued.tzinfo is None:
                raise ValueError("no time zone")
        except ValueError as e:
            return self.refuse(cmd, f"issued_at {cmd.issued_at!r} is not a time: {e}")
        age = (utcnow() - issued).total_seconds()
        if age > self.cfg.command_max_age_s or age < -FUTURE_SKEW_S:
            return self.refuse(cmd, f"expired: issued {age:.0f} s ago")
        with self.catalog.write() as s:  # recorded before it runs: a crash never runs it twice
            s.add(
                PlatformCommand(id=cmd.id, kind=cmd.kind, issued_at=cmd.issued_at, status="running")
            )
            append_event(
                s, "platform_command", f"{cmd.kind} {cmd.id} {json.dumps(cmd.args)}",
                command_id=cmd.id, command=cmd.kind,
            )  # fmt: skip
        try:
            status, detail, result = self.execute(cmd)
        except Exception as e:
            log.exception("platform command %s failed", cmd.id)
            status, detail, result = "failed", f"{type(e).__name__}: {e}", {}
        rec = self._receipt(cmd, status, detail, result)
        with self.catalog.write() as s:
            row = s.get(PlatformCommand, cmd.id)
            if row is not None:
                row.status, row.detail = status, detail[:2000]
            append_event(
                s, "platform_command_done", f"{cmd.kind} {cmd.id}: {status} {detail}"[:4000],
                command_id=cmd.id, command=cmd.kind, status=status,
            )  # fmt: skip
            outbox.add(s, "receipt", f"{cmd.id}:{status}", rec.model_dump())
        return None

    def execute(self, cmd: Command) -> tuple[str, str, dict[str, Any]]:
        st = self.station
        if cmd.kind == "self_check":
            status = st.self_check()
            return "done", "self-check run", {
                "disks": [
                    {k: d[k] for k in ("path", "free_bytes", "health")} for d in status["disks"]
                ],
                "alarms": [a["code"] for a in status["alarms"]],
                "slots": {str(s["port"]): s["state"] for s in status["slots"]},
                "outbox_depth": self.depth(fresh=True),
            }  # fmt: skip
        if cmd.kind == "sync_config":
            version = self.pull_config()
            return "done", f"configuration version {version} in use", {"version": version}
        if cmd.kind == "support_bundle":
            from station import support

            with tempfile.TemporaryDirectory() as tmp:
                out = support.diagnose(st.config, Path(tmp) / "bundle.tar.gz")
                data = out.read_bytes()
            self._call("PUT", f"/stations/{self.station_id}/bundles/{cmd.id}", content=data)
            return "done", "support bundle sent", {
                "size": len(data), "sha256": hashlib.sha256(data).hexdigest()
            }  # fmt: skip
        if cmd.kind in ("restart_collection", "stop_collection", "start_collection"):
            return "unsupported", f"{cmd.kind} is not available on this station yet", {}
        return "unsupported", f"unknown command {cmd.kind!r}", {}

    # --- what the station shows ---------------------------------------------------------

    def status(self) -> dict[str, Any]:
        d = self.depth()
        return {
            "enabled": True,
            "url": self.cfg.url,
            "registered": self.registered,
            "platform_id": self.platform_id,
            "state": "connected" if self.last_error is None and self.registered else "offline",
            "breaker": self.breaker.state,
            "failures": self.breaker.failures,
            "last_error": self.last_error,
            "last_contact_at": _iso(self.last_contact),
            "outbox_depth": d,
            "outbox_pending": outbox_total(d),
            "delivered": self.delivered,
            "config_version": self.applied_version(),
        }


def outbox_total(depth: dict[str, int]) -> int:
    return sum(depth.values())
