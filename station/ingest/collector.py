"""One docked recorder, from identification to "you may unplug".

A `Collector` runs in a worker thread per docked recorder. It writes what it
is doing into its `Slot` (which the screen and the API read) and everything
that matters into the catalog's event log.

Why one module of about 800 lines: one recorder's flow (identify, register, set the
clock, list, ingest, clear) and its holds read in order; the per-file work is in
station.ingest.transfer, the ports' side in station.devices.ports.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from station.catalog import Catalog, CollectionSession, Officer, Recorder
from station.catalog.db import append_event
from station.catalog.models import utcnow
from station.config import StationConfig
from station.drivers.base import (
    AuthFailed,
    CardFile,
    CardReadError,
    DeviceBusy,
    DeviceGone,
    DockedDevice,
    DriverRegistry,
    OfficerInfo,
    RecorderDriver,
    RecorderError,
    RecorderSession,
    WrongRecorder,
)
from station.drivers.card import Card
from station.health.alarms import AlarmBook
from station.health.clockguard import ClockGuard
from station.ingest.priority import LinkScheduler, PriorityGate
from station.ingest.registration import WAITING_FOR_APPROVAL, block_json, claimed_by_other, register
from station.ingest.transfer import (
    FileChanged,
    FileIngest,
    Interrupted,
    KeptOnCard,
    Outcome,
    Owner,
    StorageFull,
    VerifyFailed,
)
from station.names import parse_card_path
from station.store.disks import Store

log = logging.getLogger(__name__)

HOLD_POLL_S = 1.0
STORAGE_RETRY_S = 5.0
GROWING_WAIT_S = 2.0
MAX_FINISHING = 8  # copied files waiting to be read back and cleared, per port
# opening again after DeviceBusy or WrongRecorder: the first delay, doubled up to the last
OPEN_RETRY_FIRST_S = 1.0
OPEN_RETRY_MAX_S = 30.0


class SlotState(StrEnum):
    """What a port is doing (the status's `state`; compared and sent as its value)."""

    EMPTY = "empty"
    IDENTIFYING = "identifying"
    UNREGISTERED = "unregistered"  # held: not registered, or its block disagrees
    COLLECTING = "collecting"
    COMPLETE = "complete"
    ERROR = "error"


class Reason(StrEnum):
    """Why a port is in error or held (the voice's and the screen's word for it; the
    slot's `reason_params` fill in the details the screen shows)."""

    # errors
    NOT_A_RECORDER = "not_a_recorder"
    WRONG_PASSWORD = "wrong_password"
    STORAGE_FULL = "storage_full"
    FILES_KEPT = "files_kept"  # n
    INTERNAL_ERROR = "internal_error"
    RECORDER_ERROR = "recorder_error"  # the driver's own message says what
    # holds (state unregistered)
    WAITING_APPROVAL = "waiting_approval"
    POSSIBLE_CLONE = "possible_clone"  # other_port
    OFFICER_CHANGED = "officer_changed"  # reported, registered
    OFFICER_HAS_RECORDER = "officer_has_recorder"  # officer, other
    BLOCK_CHANGED = "block_changed"
    HELD = "held"  # another recorder than the one docked answered


@dataclass(frozen=True)
class Hold:
    """Why a recorder is held: the log's sentence, its kind and the details shown."""

    text: str
    reason: Reason
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class Slot:
    """What one physical port is doing right now (read by the screen and the API).

    Written only by the collector of the port's current docking (and reset by the
    port's owner on the loop between dockings); read by the loop and the API."""

    port: int
    state: SlotState = SlotState.EMPTY
    generation: int = 0  # bumps on every dock and undock
    recorder: dict[str, str] | None = None
    battery_percent: int | None = None
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    error: str | None = None  # what happened, in English, for the log and the console
    reason: Reason | None = None  # its kind, while the state is error or unregistered
    reason_params: dict[str, str] = field(default_factory=dict)  # details of the reason
    session_id: int | None = None
    started_at: float | None = None
    rate_samples: list[tuple[float, int]] = field(default_factory=list)

    def reset(self) -> None:
        gen = self.generation + 1
        self.__dict__.update(Slot(self.port).__dict__)
        self.generation = gen

    def bytes_per_s(self) -> float:
        s = self.rate_samples
        if len(s) < 2 or s[-1][0] <= s[0][0]:
            return 0.0
        return (s[-1][1] - s[0][1]) / (s[-1][0] - s[0][0])


class CardSource(Protocol):
    """The card of a recorder switched to mass storage (`Dock.expect_card`)."""

    def card(self, recorder_serial: str | None = None) -> Card: ...


class Dock(Protocol):
    """What a collector asks of the port it works on (`station.devices.ports.Ports` is one).

    The collector only calls down into it, from its worker thread; its slot is the
    loop's, so the collector changes it only through `publish`."""

    def publish(
        self, slot: Slot, generation: int, fields: dict[str, Any], progress: bool = False
    ) -> None:
        """Show `fields` in `slot` (on the loop that owns it), unless the port moved on to
        another docking than `generation` by then; then say it changed."""

    def registration_mode(self) -> str:
        """`auto` or `manual`, as configured now (it may change while a recorder waits)."""

    def docked_elsewhere(self, serial: str, port: int) -> int | None:
        """Another port where a recorder with this serial is docked right now."""

    def expect_card(
        self, device: DockedDevice, generation: int
    ) -> AbstractContextManager[CardSource]:
        """Before SetMSDC: this port's next device is the same recorder, as a disk (raises
        `DeviceGone` if the port has moved on from docking `generation`)."""

    def recorder_lock(self, serial: str) -> threading.Lock:
        """Held while the recorder `serial` is collected (one port at a time)."""

    def end_priority(self, port: int, why: str) -> None:
        """Collect-first is over for `port`."""

    def make_room(self) -> None:
        """Collection is blocked for space: run a retention sweep now."""


@dataclass(frozen=True)
class Services:
    """What a collector works with: one configuration snapshot for the whole docking,
    the catalog and store it writes, the drivers it opens, the dock it reports to."""

    config: StationConfig
    catalog: Catalog
    store: Store
    drivers: DriverRegistry
    alarms: AlarmBook
    tz: ZoneInfo | None
    dock: Dock
    priority: PriorityGate  # S30: the port collected first
    clock: ClockGuard | None = None  # may the station clock be believed (retention)
    links: LinkScheduler | None = None  # the ports sharing a USB link read in turn


class Collector:
    """Collects one recorder docked at one port."""

    def __init__(
        self, services: Services, slot: Slot, device: DockedDevice, stop: threading.Event
    ) -> None:
        self.sv = services
        self.slot = slot
        self.device = device
        self.stop = stop
        self.generation = slot.generation
        self.beat = time.monotonic()  # last sign of life, for the systemd watchdog
        self._last_notify = 0.0
        self._last_saved = 0.0
        # the collector's own record; the slot only mirrors it while this docking is current
        self.session_id: int | None = None
        self.serial: str | None = None
        self.officer_no: str | None = None
        self.named_officers: set[str] = set()  # officer numbers this card's names may carry
        self.files_total = self.files_done = self.bytes_total = self.bytes_done = 0
        self.card: Card | None = None
        self.shown: dict[str, Any] = {}  # what this collector last put in its slot
        self.rate_samples: list[tuple[float, int]] = []
        self._important = False  # an IMP file is being copied (for the link's order)

    # --- slot updates (ignored once the port moved on to another docking) ----------------

    def _current(self) -> bool:
        return self.slot.generation == self.generation

    def _set(self, **fields: object) -> None:
        self.beat = time.monotonic()
        if "state" in fields:  # a reason belongs to the state it came with
            fields.setdefault("reason", None)
            fields.setdefault("reason_params", {})
        for k in ("session_id", "files_total", "files_done", "bytes_total", "bytes_done"):
            if k in fields:
                setattr(self, k, fields[k])
        self.shown |= fields
        if self._current():
            # with the counters as they are now: progress is published only now and then
            fields = {
                "bytes_done": self.bytes_done,
                "rate_samples": list(self.rate_samples),
            } | fields
            self.sv.dock.publish(self.slot, self.generation, fields)
            state = fields.get("state")
            if state is not None and state != "collecting":
                self.sv.dock.end_priority(self.slot.port, f"the port is {state}")

    def _progress(self, n: int) -> None:
        self.beat = time.monotonic()
        self.bytes_done += n
        now = time.monotonic()
        samples = self.rate_samples
        samples.append((now, self.bytes_done))
        while len(samples) > 2 and now - samples[0][0] > 5:
            samples.pop(0)
        if now - self._last_notify > 0.25 and self._current():
            self._last_notify = now
            fields = {"bytes_done": self.bytes_done, "rate_samples": list(samples)}
            self.sv.dock.publish(self.slot, self.generation, fields, progress=True)

    def _event(self, kind: str, message: str = "", **data: object) -> None:
        rec = self.shown.get("recorder") or {}
        with self.sv.catalog.write() as s:
            append_event(
                s,
                kind,
                message,
                port=self.slot.port,
                serial=rec.get("serial"),
                officer_no=rec.get("officer_no"),
                **data,
            )

    # --- the flow ------------------------------------------------------------------------

    def run(self) -> str:
        """Collect the recorder; returns how it ended (complete|held|gone|error|stopped)."""
        self._set(state=SlotState.IDENTIFYING, started_at=time.time())
        driver = self.sv.drivers.best(self.device)
        if driver is None:
            self._event(
                "device_ignored",
                f"not a recorder: {self.device.kind} "
                f"{self.device.vendor_id}:{self.device.product_id}",
            )
            self._set(
                state=SlotState.ERROR, error="not a recorder: ignored", reason=Reason.NOT_A_RECORDER
            )
            return "error"
        try:
            with self._open(driver) as rec:
                return self._collect(rec)
        except AuthFailed as e:
            self._event("recorder_auth_failed", str(e))
            self._set(
                state=SlotState.ERROR, error="wrong device password", reason=Reason.WRONG_PASSWORD
            )
            return "error"
        except DeviceGone:
            self._ended("interrupted", "recorder unplugged")
            return "gone"
        except Interrupted:
            self._ended("interrupted", "station stopping")
            return "stopped"
        except RecorderError as e:
            self._event("collection_failed", str(e))
            self._ended("failed", str(e))
            self._set(state=SlotState.ERROR, error=str(e), reason=Reason.RECORDER_ERROR)
            return "error"
        except Exception as e:
            log.exception("port %s: collection crashed", self.slot.port)
            self._ended("failed", f"internal error: {e}")
            self._set(
                state=SlotState.ERROR, error=f"internal error: {e}", reason=Reason.INTERNAL_ERROR
            )
            return "error"

    def _open(self, driver: RecorderDriver) -> RecorderSession:
        """Open the recorder, waiting out with a growing delay (while it stays docked) a
        way to it that another port's session uses (DeviceBusy), and a driver that reaches
        another recorder than the one docked here (WrongRecorder: the port is held, and
        nothing is collected, switched or deleted)."""
        delay = OPEN_RETRY_FIRST_S
        waiting_for: str | None = None
        while True:
            try:
                rec = driver.open(self.device, self.sv.config.recorders.passwords)
            except DeviceBusy as e:
                why, held = str(e), False
            except WrongRecorder as e:
                why, held = str(e), True
            else:
                if waiting_for is not None:
                    self._set(state=SlotState.IDENTIFYING, error=None)
                return rec
            if why != waiting_for:
                waiting_for = why
                log.warning("port %s: %s (trying again)", self.slot.port, why)
                if held:
                    self._event("recorder_held", why)
                    self._set(state=SlotState.UNREGISTERED, error=why, reason=Reason.HELD)
                else:
                    self._set(state=SlotState.IDENTIFYING, error=f"waiting: {why}")
            self.beat = time.monotonic()
            if self.stop.wait(delay):
                raise Interrupted()
            if not self._current():
                raise DeviceGone("undocked while waiting to be opened")
            delay = min(delay * 2, OPEN_RETRY_MAX_S)

    def _collect(self, rec: RecorderSession) -> str:
        id_code = rec.id_code()
        info = rec.officer_info()
        battery = rec.battery_percent()
        self.serial, self.officer_no = info.serial, info.officer_no
        self._set(
            recorder={
                "serial": info.serial,
                "officer_no": info.officer_no,
                "officer_name": info.officer_name,
                "unit_no": info.unit_no,
                "unit_name": info.unit_name,
                "id_code": id_code,
            },
            battery_percent=battery,
        )
        self._event(
            "recorder_identified",
            f"{info.serial} officer {info.officer_no}",
            id_code=id_code,
            battery_percent=battery,
        )
        if battery is not None and battery < self.sv.config.recorders.battery_critical_percent:
            self.sv.alarms.raise_(
                "battery_critical",
                f"recorder {info.serial} on port {self.slot.port}: battery at {battery} %",
                subject=info.serial,
            )
        else:
            self.sv.alarms.clear("battery_critical", subject=info.serial)
        owner_officer = self._registration(rec, info, id_code, battery)
        if owner_officer is None:
            return "held" if rec.alive() else "gone"
        recorder_id, officer_id, officer = owner_officer
        self.officer_no = officer.officer_no
        # file names may carry the bound officer's number, or the one the recorder reports,
        # which its registration (or an administrator's confirmation) accepted
        self.named_officers = {officer.officer_no, info.officer_no}
        # the bound officer is who the files belong to; show that, not the block's claim
        self._set(
            recorder={
                **(self.shown.get("recorder") or {}),
                "officer_no": officer.officer_no,
                "officer_name": officer.name,
                "unit_no": officer.unit_no,
                "unit_name": officer.unit_name,
            }
        )
        drift = rec.set_clock(dt.datetime.now(self.sv.tz))
        with self.sv.catalog.write() as s:
            sess = CollectionSession(
                recorder_id=recorder_id,
                port=self.slot.port,
                battery_percent=battery,
                clock_drift_s=drift,
            )
            s.add(sess)
            r = s.get(Recorder, recorder_id)
            assert r is not None
            r.clock_drift_s, r.battery_percent = drift, battery
            s.flush()
            session_id = sess.id
            append_event(
                s,
                "clock_set",
                f"drift {drift:+.1f} s"
                if drift is not None
                else "clock set (this recorder cannot report its drift)",
                port=self.slot.port,
                serial=info.serial,
                officer_no=officer.officer_no,
                drift_s=drift,
            )
        self._set(session_id=session_id)
        threshold = self.sv.config.recorders.clock_drift_alarm_s
        if drift is not None and abs(drift) > threshold:
            self.sv.alarms.raise_(
                "recorder_clock_drift",
                f"recorder {info.serial} clock was off by {drift:.0f} s",
                subject=info.serial,
            )
        # registered before the switch
        with self.sv.dock.expect_card(self.device, self.generation) as wait:
            rec.enter_mass_storage()
            card = rec.card() or wait.card(info.serial)
        try:
            with self._recorder_turn(info.serial):
                return self._collect_files(
                    rec, card, info, id_code, officer, recorder_id, officer_id, session_id
                )
        finally:
            card.close()

    @contextlib.contextmanager
    def _recorder_turn(self, serial: str) -> Iterator[None]:
        """One docking of a recorder collects at a time: docked again (here or on another
        port) while its last docking still finishes a copied file, it waits for that, so
        two dockings never work on the same job or temp file."""
        lock = self.sv.dock.recorder_lock(serial)
        while not lock.acquire(timeout=0.5):
            self.beat = time.monotonic()
            if self.stop.is_set():
                raise Interrupted()
        try:
            yield
        finally:
            lock.release()

    def _collect_files(
        self,
        rec: RecorderSession,
        card: Card,
        info: OfficerInfo,
        id_code: str,
        officer: Officer,
        recorder_id: int,
        officer_id: int,
        session_id: int,
    ) -> str:
        self.card = card
        self._set(state=SlotState.COLLECTING, files_done=0, bytes_done=0)
        owner = Owner(
            recorder_id,
            info.serial,
            officer_id,
            officer.officer_no,
            session_id,
            self.slot.port,
            officer_name=officer.name,
            unit_no=officer.unit_no,
            unit_name=officer.unit_name,
            id_code=id_code,
            station_id=self.sv.config.station.id,
        )
        ingest = FileIngest(
            self.sv.catalog,
            self.sv.store,
            card,
            owner,
            chunk=self.sv.config.store.chunk_kb * 1024,
            sync_every=self.sv.config.store.sync_every_mb * 1024 * 1024,
            tz=self.sv.tz,
            stop=self.stop,
            progress=self._progress,
            throttle=self._throttle,
            card_recheck=self.sv.config.store.card_recheck,
            full_recheck_below=self.sv.config.store.card_recheck_full_mb * 1024 * 1024,
            clock=self.sv.clock,
        )
        try:
            failures = self._collect_card(ingest, rec, card)
        finally:
            if self.sv.links is not None:
                self.sv.links.done(self.slot.port)
        if failures:
            first = next(iter(failures.values()))
            msg = f"{len(failures)} file(s) kept on the recorder: {first}"
            self._ended("failed", msg)
            self._set(
                state=SlotState.ERROR,
                error=msg,
                reason=Reason.FILES_KEPT,
                reason_params={"n": str(len(failures))},
            )
            self.sv.alarms.raise_(
                "collection_failed", f"port {self.slot.port}: {msg}", subject=info.serial
            )
            return "error"
        self._ended("complete", None)
        self._set(state=SlotState.COMPLETE, error=None)
        self.sv.alarms.clear("collection_failed", subject=info.serial)
        return "complete"

    def _collect_card(
        self, ingest: FileIngest, rec: RecorderSession, card: Card
    ) -> dict[bytes, str]:
        """Collect until the card holds nothing new: files may still be growing when docked,
        and a recorder may record while it charges. Returns the files that failed."""
        failures: dict[bytes, str] = {}
        seen: set[bytes] = set()
        while True:
            pending = [f for f in card.list_files() if f.path not in failures]
            for f in pending:
                if f.path not in seen and (why := self._kept_back(f)):
                    self._event("file_held", why)
                    failures[f.path] = why
            pending = [f for f in pending if f.path not in failures]
            if not pending:
                return failures
            # IMP files first: recorders never overwrite them, so they fill cards. Then the
            # biggest first: the small ones copied last keep the card busy while the big
            # ones are read back, and the recorder is done sooner.
            pending.sort(key=lambda f: (not parse_card_path(f.path).important, -f.size, f.path))
            new = [f for f in pending if f.path not in seen]
            seen.update(f.path for f in new)
            self._set(
                files_total=self.files_total + len(new),
                bytes_total=self.bytes_done + sum(f.size for f in pending),
            )
            changed = self._ingest_all(ingest, rec, pending, failures)
            # only growing files left: give the recorder time to finish them
            if changed and len(changed) == len(pending) and self.stop.wait(GROWING_WAIT_S):
                raise Interrupted()

    def _ingest_all(
        self,
        ingest: FileIngest,
        rec: RecorderSession,
        files: list[CardFile],
        failures: dict[bytes, str],
    ) -> list[CardFile]:
        """Collect `files`; record failures; return the files that changed while copied.

        Pipelined: while copied files are read back, committed and cleared from the card
        (in order, on a helper thread), the next ones are already being read from it, so
        the card does not wait for the store's disk. Each file is cleared only by its own
        finishing step; at most MAX_FINISHING files wait for theirs.
        """
        changed: list[CardFile] = []
        finishing: collections.deque[tuple[CardFile, Future[Outcome]]] = collections.deque()

        def settle(wait: bool) -> None:
            """Account for the finished steps (with `wait`, for the oldest one at least)."""
            while finishing and (wait or finishing[0][1].done()):
                wait = False
                cf, fut = finishing.popleft()
                account(cf, fut)

        def account(cf: CardFile, fut: Future[Outcome]) -> None:
            try:
                fut.result()
                self._set(files_done=self.files_done + 1)
            except FileChanged:
                self._changed(cf, changed)
                self._set(bytes_done=self.bytes_done - cf.size)
            except (CardReadError, VerifyFailed, KeptOnCard) as e:
                self._failed(cf, e, failures)
            self._save_progress()

        pool = ThreadPoolExecutor(1, thread_name_prefix=f"finish{self.slot.port}")
        try:
            for cf in files:
                done_before = self.bytes_done
                self._important = parse_card_path(cf.path).important
                while True:
                    try:
                        finish = ingest.copy(cf)
                    except StorageFull as e:
                        partial = self.bytes_done - done_before
                        while finishing:  # their alarms and counts do not wait for space
                            settle(wait=True)
                        done_before = self.bytes_done - partial
                        self._wait_for_space(rec, cf, str(e))
                        self._set(bytes_done=done_before)
                        continue
                    except FileChanged:
                        self._changed(cf, changed)
                        self._set(bytes_done=done_before)
                    except (CardReadError, VerifyFailed, KeptOnCard) as e:
                        self._failed(cf, e, failures)
                        self._set(bytes_done=done_before + cf.size)
                    else:
                        self._set(bytes_done=done_before + cf.size)
                        finishing.append((cf, pool.submit(finish)))
                        settle(wait=len(finishing) > MAX_FINISHING)
                    break
            while finishing:
                settle(wait=True)
        except BaseException:
            # Interrupted (unplugged, stopping, an error): the step under way ends, the ones
            # not started are dropped (their jobs resume at the next docking; nothing was
            # cleared for them), and what the finished ones did is still counted.
            pool.shutdown(wait=True, cancel_futures=True)
            for cf, fut in finishing:
                if fut.done() and not fut.cancelled():
                    try:
                        account(cf, fut)
                    except Exception as e:  # the first error is the one raised
                        log.info("port %s: a finishing step also failed: %r", self.slot.port, e)
            raise
        pool.shutdown()
        return changed

    def _throttle(self, n: int) -> None:
        if not self.sv.priority.take(self.slot.port, n, self.stop):
            raise Interrupted()
        links, left = self.sv.links, self.bytes_total - self.bytes_done
        if links is not None and not links.take(
            self.slot.port, n, self.stop, left=left, important=self._important,
            waiting=self._waiting,
        ):  # fmt: skip
            raise Interrupted()

    def _waiting(self) -> None:
        """Waiting for its turn on a shared link is a sign of life (the watchdog)."""
        self.beat = time.monotonic()

    def _changed(self, cf: CardFile, changed: list[CardFile]) -> None:
        name = parse_card_path(cf.path).display
        log.info("port %s: %s is still being written; later", self.slot.port, name)
        changed.append(cf)

    def _kept_back(self, cf: CardFile) -> str | None:
        """Why a card file must stay on the recorder for an administrator, untouched.

        Its name carries another officer's or another recorder's number than the ones this
        recorder is bound to (a card that is not this recorder's, or footage recorded
        before it was given to another officer: never filed silently under the wrong
        one); or it claims more bytes than any store disk holds (it would wait for space
        forever and block the rest of the card)."""
        name = parse_card_path(cf.path)
        if name.device_no and self.serial and name.device_no != self.serial:
            return (
                f"{name.display}: its name says recorder {name.device_no}, this is "
                f"{self.serial}: kept on the recorder for an administrator"
            )
        if name.officer_no and self.named_officers and name.officer_no not in self.named_officers:
            return (
                f"{name.display}: its name says officer {name.officer_no}, the recorder is "
                f"bound to {self.officer_no}: kept on the recorder for an administrator"
            )
        largest = max((d.usage()[0] for d in self.sv.store.disks if d.present()), default=0)
        if largest and cf.size > largest:
            return (
                f"{name.display}: claims {cf.size} bytes, more than any store disk holds: "
                "kept on the recorder"
            )
        return None

    def _failed(self, cf: CardFile, e: Exception, failures: dict[bytes, str]) -> None:
        name = parse_card_path(cf.path).display
        log.warning("port %s: %s: %s", self.slot.port, name, e)
        self._event("file_failed", f"{name}: {e}")
        if isinstance(e, VerifyFailed):
            self.sv.alarms.raise_("verify_failed", f"{name}: {e}", subject=f"port{self.slot.port}")
        failures[cf.path] = f"{name}: {e}"

    def _wait_for_space(self, rec: RecorderSession, cf: CardFile, why: str) -> None:
        """No disk has room: overwrite old footage if the retention policy allows; else
        raise the alarm, touch nothing on the card, and wait for space."""
        self.sv.dock.make_room()
        if self.sv.store.pick(cf.size) is not None:
            return
        # the port is waiting before the alarm is raised: a disk check in between must not
        # find the alarm without a waiting port and clear it
        self._set(
            state=SlotState.ERROR,
            error="storage full: files kept on the recorder",
            reason=Reason.STORAGE_FULL,
        )
        self.sv.alarms.raise_("storage_full", f"all store disks are full ({why})")
        self._event("collection_paused", f"storage full: {why}")
        while self.sv.store.pick(cf.size) is None:
            self.beat = time.monotonic()
            if self.stop.wait(STORAGE_RETRY_S):
                raise Interrupted()
            if not rec.alive():
                raise DeviceGone("unplugged while waiting for space")
            self.sv.dock.make_room()
        self.sv.alarms.clear("storage_full")
        self._set(state=SlotState.COLLECTING, error=None)

    def _save_progress(self, force: bool = False) -> None:
        """Keep the session row's counters current (at most once a second)."""
        now = time.monotonic()
        if self.session_id is None or (not force and now - self._last_saved < 1.0):
            return
        self._last_saved = now
        with self.sv.catalog.write() as s:
            sess = s.get(CollectionSession, self.session_id)
            if sess is not None:
                sess.files_total, sess.files_done = self.files_total, self.files_done
                sess.bytes_total, sess.bytes_done = self.bytes_total, self.bytes_done
                if self.card is not None:
                    sess.bytes_read = self.card.bytes_read

    def _ended(self, state: str, error: str | None) -> None:
        if self.session_id is None:
            return
        self._save_progress(force=True)
        with self.sv.catalog.write() as s:
            sess = s.get(CollectionSession, self.session_id)
            if sess is not None and sess.ended_at is None:
                sess.state, sess.ended_at, sess.error = state, utcnow(), error
                append_event(
                    s,
                    f"collection_{state}",
                    error or "",
                    port=self.slot.port,
                    serial=self.serial,
                    officer_no=self.officer_no,
                    session_id=self.session_id,
                )

    # --- registration (S36) ------------------------------------------------------------

    def _registration(
        self, rec: RecorderSession, info: OfficerInfo, id_code: str, battery: int
    ) -> tuple[int, int, Officer] | None:
        """The registered recorder and its officer; holds here while it may not be collected.

        A recorder is held (collecting nothing, deleting nothing) while it is not
        registered, while its officer block disagrees with its registration (it
        names another officer, or its fields changed), and while the same serial
        is docked on another port. An administrator's approval releases it.
        """
        held_for: Hold | None = None
        while True:
            mode = self.sv.dock.registration_mode()
            with self.sv.catalog.write() as s:
                r = s.scalars(select(Recorder).where(Recorder.serial == info.serial)).first()
                if r is None:
                    r = Recorder(serial=info.serial, status="pending")
                    s.add(r)
                    append_event(
                        s,
                        "recorder_seen",
                        f"new recorder {info.serial}",
                        port=self.slot.port,
                        serial=info.serial,
                        officer_no=info.officer_no,
                    )
                r.id_code, r.last_seen_at, r.last_port = id_code, utcnow(), self.slot.port
                r.battery_percent = battery
                r.reported_block = block_json(info)
                claimed = None  # auto mode takes no claim on an officer who has a recorder
                if r.status != "registered" and mode == "auto":
                    claimed = claimed_by_other(s, info.officer_no, info.serial)
                    if claimed is None:
                        register(s, r, info, how="auto", by="station", port=self.slot.port)
                reason = self._hold_reason(s, r, info)
                waiting = reason is not None and reason.reason == Reason.WAITING_APPROVAL
                if claimed is not None and waiting:
                    reason = Hold(
                        f"recorder reports officer {info.officer_no}, who already has "
                        f"recorder {claimed}: an administrator must register it",
                        Reason.OFFICER_HAS_RECORDER,
                        {"officer": info.officer_no, "other": claimed},
                    )
                if reason is None:
                    officer = s.get(Officer, r.officer_id)
                    assert officer is not None
                    s.expunge(officer)
                    if held_for is not None:
                        self._set(error=None)
                    return r.id, officer.id, officer
                if reason != held_for:
                    append_event(
                        s,
                        "recorder_held",
                        reason.text,
                        port=self.slot.port,
                        serial=info.serial,
                        officer_no=info.officer_no,
                    )
            if reason != held_for:
                held_for = reason
                log.warning("port %s: %s held: %s", self.slot.port, info.serial, reason.text)
                waiting = reason.reason == Reason.WAITING_APPROVAL
                self._set(
                    state=SlotState.UNREGISTERED,
                    error=None if waiting else reason.text,
                    reason=reason.reason,
                    reason_params=reason.params,
                )
            self.beat = time.monotonic()
            if self.stop.wait(HOLD_POLL_S):
                raise Interrupted()
            if not rec.alive():
                raise DeviceGone("unplugged while held")

    def _hold_reason(self, s: Session, r: Recorder, info: OfficerInfo) -> Hold | None:
        other = self.sv.dock.docked_elsewhere(info.serial, self.slot.port)
        if other is not None:
            return Hold(
                f"serial {info.serial} is also docked on port {other}: possible clone",
                Reason.POSSIBLE_CLONE,
                {"other_port": str(other)},
            )
        if r.status != "registered" or r.officer_id is None:
            return Hold(WAITING_FOR_APPROVAL, Reason.WAITING_APPROVAL)
        if info.officer_no != r.block_officer_no:
            officer = s.get(Officer, r.officer_id)
            assert officer is not None
            return Hold(
                f"recorder reports officer {info.officer_no}, but it was registered reporting "
                f"{r.block_officer_no} (files go to {officer.officer_no}): "
                "an administrator must confirm",
                Reason.OFFICER_CHANGED,
                {"reported": info.officer_no, "registered": r.block_officer_no or ""},
            )
        changed = [
            f"{field} {old!r} -> {new!r}"
            for field, old, new in (
                ("officer name", r.block_officer_name, info.officer_name),
                ("unit number", r.block_unit_no, info.unit_no),
                ("unit name", r.block_unit_name, info.unit_name),
            )
            if old != new
        ]
        if changed:
            return Hold(
                "officer block changed since registration ("
                + ", ".join(changed)
                + "): an administrator must confirm",
                Reason.BLOCK_CHANGED,
            )
        return None
