"""The station daemon: one asyncio loop owning the ports, the workers and the web server.

Blocking work (driver calls, copying, hashing, fsync, catalog writes) runs in
a thread pool; workers report back through `notify`, which is safe to call
from any thread. uvicorn serves the API and the touchscreen from this same loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import uvicorn
from sqlalchemy import func, select

from drivers.android_adb import AndroidAdbDriver
from drivers.base import DockedDevice, DriverRegistry, RecorderDriver, RecorderError
from drivers.card import Card
from drivers.mass_storage import MassStorageDriver
from drivers.scsi_dv16 import ScsiDv16Driver
from drivers.simulated import SimulatedDriver
from drivers.usb_vendor import UsbVendorDriver
from drivers.vendor_library import VendorLibraryDriver
from station import __version__, accounts, eventlog, faults, integrity, sdnotify
from station.alarms import AlarmBook
from station.bus import Bus, PortChange, PortWatcher
from station.catalog import Catalog, CollectionSession, Event, Officer, Recorder, StoredFile
from station.catalog.db import append_event, lock_exclusive
from station.catalog.models import utcnow
from station.clock import clock_status, clock_synchronized
from station.clockguard import ClockGuard
from station.collector import Collector, Services, Slot
from station.config import StationConfig
from station.disks import DiskBook
from station.forward import Forwarder
from station.mount import (
    MountError,
    clear_mount_root,
    find_card_device,
    make_mounter,
    mount_card,
    same_recorder,
)
from station.names import parse_card_path
from station.network import check_network
from station.ratelimit import LinkScheduler, PriorityGate
from station.recovery import recover
from station.retention import (
    CentralCheck,
    DiskFacts,
    Plan,
    RetentionSweeper,
    days_until_full,
    retention_rules,
)
from station.scrubber import Scrubber
from station.smart import Health, HealthHistory, check_disk
from station.store import Store, StoreDisk
from station.voice import Announcer, reason_code

log = logging.getLogger(__name__)

DISK_CHECK_S = 5.0
# a worker that saw its device vanish: the same docking is collected anew at most this often
RECHECK_MIN_S = 5.0
REMOVED_EARLY_SHOWN_S = 120.0  # how long a port says a recorder was pulled out too soon
# alarms about one recorder (subject: its serial): they end when it leaves the station
RECORDER_ALARMS = ("battery_critical", "recorder_clock_drift", "collection_failed")
STATUS_MAX_AGE_S = 0.5  # the central API's status: rendered at most twice a second


def build_drivers(config: StationConfig, mount: Callable[[DockedDevice], Card]) -> DriverRegistry:
    """The recorder families this station is configured for (the simulated one always)."""
    d = config.drivers
    drivers: list[RecorderDriver] = [SimulatedDriver()]
    for c in d.vendor_library:
        drv = VendorLibraryDriver(c)
        try:
            drv.load()
        except RecorderError as e:
            log.error("vendor library %s unusable: %s", c.name, e)
        drivers.append(drv)
    drivers += [UsbVendorDriver(c) for c in d.usb_vendor]
    if d.scsi_dv16 is not None:
        drivers.append(ScsiDv16Driver(d.scsi_dv16))
    drivers += [AndroidAdbDriver(c) for c in d.android_adb]
    if d.mass_storage.allow:
        drivers.append(MassStorageDriver(d.mass_storage, mount))
    return DriverRegistry(drivers)


class CardWait:
    """A collector waiting for its recorder to come back on the same port as a disk."""

    def __init__(self, station: Station, device: DockedDevice) -> None:
        self.station = station
        self.device = device
        self.new: DockedDevice | None = None
        self.arrived = threading.Event()

    def __enter__(self) -> CardWait:
        self.station._card_waits[self.device.port] = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.station._card_waits.pop(self.device.port, None)

    def card(self, recorder_serial: str | None = None) -> Card:
        """Mount the card: on this same device if it is a disk already, else on the device
        that re-enumerated on this port after SetMSDC, if it can be the same recorder."""
        st = self.station
        if find_card_device(self.device.path) is not None:
            return st.mount(self.device)
        if not self.arrived.wait(st.config.bus.reenumerate_timeout_s):
            raise MountError(
                f"port {self.device.port}: the recorder did not come back as a "
                "disk after switching to mass storage"
            )
        assert self.new is not None
        same_recorder(self.device, self.new, recorder_serial)
        return st.mount(self.new)


def make_bus(config: StationConfig) -> Bus:
    if config.bus.kind == "simulated":
        from station.bus.simulated import SimulatedBus

        return SimulatedBus(config.bus.path, config.bus.ports)
    from station.bus.udev import UdevBus

    return UdevBus(config.bus.port_map, link_mb_s=config.bus.link_mb_s)


class _Server(uvicorn.Server):
    """uvicorn inside our loop: the station, not uvicorn, owns the signals."""

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass

    def capture_signals(self) -> Any:  # uvicorn >= 0.29
        return contextlib.nullcontext()

    async def serve(self, sockets: Any = None) -> None:
        # uvicorn calls sys.exit(1) when it cannot listen: that would unwind the loop
        # past the station's shutdown (the workers' threads would keep the process up)
        try:
            await super().serve(sockets)
        except SystemExit as e:
            raise RuntimeError(f"the listener could not start (uvicorn exit {e.code})") from None


class Station:
    """The facade the web layer and the CLI talk to."""

    def __init__(
        self,
        config: StationConfig,
        *,
        bus: Bus | None = None,
        drivers: DriverRegistry | None = None,
    ) -> None:
        self.config = config
        accounts.configure(config.accounts)
        self.tz = ZoneInfo(config.station.timezone) if config.station.timezone else None
        self.catalog = Catalog(config.database_path)
        self.store = Store(
            config.store.disks, config.store.min_free_mb, on_failed=self._disk_failed
        )
        self.mounter = make_mounter(config.bus.mounter, config.bus.mount_helper)
        self._card_waits: dict[int, CardWait] = {}
        self._collectors: dict[int, Collector] = {}
        self.drivers = drivers or build_drivers(config, self.mount)
        self.bus = bus or make_bus(config)
        self.slots = {p: Slot(p) for p in range(1, config.bus.ports + 1)}
        self.network_online: bool | None = None
        self.version = 0
        self.stopping = False
        self.days_until_full: float | None = None
        self.disk_health: dict[str, Health] = {}
        self.smart_history = HealthHistory(self.config.database_path.parent / "smart")
        self.scrubber: Scrubber | None = None
        self._scrub_thread: threading.Thread | None = None
        self.forwarder: Forwarder | None = None
        self._forward_thread: threading.Thread | None = None
        self.platform: Any = None  # station.platform.link.PlatformLink when [platform] is on
        self.sm3: Any = None  # station.platform.sm3.Sm3Digester when integrity.sm3 is on
        self._platform_threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._stop_workers = threading.Event()
        self._loop_log = ThreadPoolExecutor(1, thread_name_prefix="looplog")
        self._priority_lock = threading.Lock()
        self._recorder_locks: dict[str, threading.Lock] = {}
        # run on a SIGHUP's new configuration before it goes live
        self.reload_hooks: list[Callable[[StationConfig], None]] = []
        self._status_lock = threading.Lock()
        self._status_cache: tuple[float, int, bytes] = (-math.inf, 0, b"")
        self._status_changes = 0
        self._workers: dict[int, asyncio.Future[str]] = {}
        self._executor = ThreadPoolExecutor(
            max_workers=config.bus.ports + 4, thread_name_prefix="station"
        )
        self.announcer = Announcer(config.voice, clock=self.now)
        self.alarms = AlarmBook(self.catalog, self.notify, self._alarm_raised)
        self._spoken: dict[int, tuple[int, str]] = {}  # port -> (generation, state) last seen
        # port -> (when, the recorder, its state): unplugged before its collection ended
        self._removed_early: dict[int, tuple[float, dict[str, str], str]] = {}
        self._rechecked: dict[int, float] = {}  # port -> when it was last re-docked
        self.retention = RetentionSweeper(
            self.catalog,
            retention_rules(config),
            CentralCheck(
                platform=config.platform.enabled and config.platform.upload_content,
                forward=config.forward.enabled,
            ),
        )
        self.disk_book = DiskBook(
            self.catalog, config.station.id, folder_disks=config.store.folder_disks
        )
        self._disk_refused: dict[str, str | None] = {}
        self.log_head: dict[str, Any] = {}
        self.config_path: Path | None = None  # the file it was loaded from (run_station)
        self.clock: ClockGuard | None = None  # after the catalog is migrated
        self.clock_state: dict[str, Any] = {}
        self.retention_paused: str | None = None  # why deletion by age waits (the clock)
        self._sweep_lock = threading.Lock()
        self.watcher = PortWatcher(
            self.bus, self._on_port_change, debounce_s=config.bus.debounce_ms / 1000
        )
        self.priority = PriorityGate(config.recorders.priority_others_mb_s)
        self.links = LinkScheduler(self.bus.links(), enabled=config.bus.link_scheduling)
        self.links.priority = lambda: self.priority.port  # collect-first stays on top
        self.services = Services(
            config,
            self.catalog,
            self.store,
            self.drivers,
            self.alarms,
            self.tz,
            self.notify,
            lambda: self.config.registration.mode,
            self.docked_elsewhere,
            self.expect_card,
            self.make_room,
            self.recorder_lock,
            self.priority,
            self._end_priority,
            links=self.links,
        )

    def _disk_failed(self, disk: StoreDisk, why: str) -> None:
        self.alarms.raise_(
            "disk_unhealthy", f"store disk {disk.path} taken out of use: {why}", str(disk.path)
        )

    def expect_card(self, device: DockedDevice) -> CardWait:
        """Register, before SetMSDC, that this port's next device is the same recorder."""
        return CardWait(self, device)

    def mount(self, device: DockedDevice) -> Card:
        return mount_card(self.mounter, device, self.config.bus.mount_root)

    def docked_elsewhere(self, serial: str, port: int) -> int | None:
        """Another port where a recorder with this serial is docked right now."""
        for p, slot in self.slots.items():
            if (
                p != port
                and slot.state != "empty"
                and (slot.recorder or {}).get("serial") == serial
            ):
                return p
        return None

    # --- change notification ----------------------------------------------------------

    def notify(self, progress: bool = False) -> None:
        """Something visible changed. Safe from any thread. What is notified (slot states,
        alarms raised or cleared, settings) is in the very next `status_json()`; progress
        and what is only measured (disk space, SMART) within STATUS_MAX_AGE_S."""
        if not progress:
            self._status_changes += 1
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(self._bump)

    def _alarm_raised(self, code: str) -> None:
        if code != "collection_failed":  # the port's own failure announcement says it
            self.announcer.say("alarm", code=code)

    def _speak_slot_changes(self) -> None:
        for port, slot in self.slots.items():
            gen, state = self._spoken.get(port, (slot.generation, "empty"))
            old = "empty" if gen != slot.generation else state
            if old != slot.state:
                self.announcer.say_slot_change(old, slot.state, port, slot.error)
            self._spoken[port] = (slot.generation, slot.state)

    def _bump(self) -> None:
        self._speak_slot_changes()
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, version: int, timeout: float) -> int:
        """Wait until the status version moves past `version` (or the timeout)."""
        if self.version == version:
            ev = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), timeout)
        return self.version

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_default_executor(self._executor)
        await self._loop.run_in_executor(None, self._prepare)
        self.announcer.start()
        await self.watcher.start()

    def _prepare(self) -> None:
        self._catalog_lock = lock_exclusive(self.catalog.path)  # held until the process ends
        if self.config.bus.kind != "simulated":  # cards a killed run left mounted
            for name in clear_mount_root(self.mounter, self.config.bus.mount_root):
                log.warning("card folder %s from an earlier run let go", name)
        self.catalog.migrate()
        self._check_integrity()
        self.store.active = int(self.catalog.get_state("active_disk", "0") or 0)
        self._identify_disks()
        self.store.prepare()
        self.clock = ClockGuard(self.catalog, self.config.retention.max_clock_jump_days)
        self.services.clock = self.clock
        report = recover(self.catalog, self.store.disks)
        for line in report.lines():
            log.warning("recovery: %s", line)
        if report.quarantined:
            self.alarms.raise_(
                "store_inconsistent",
                f"{len(report.quarantined)} stored file(s) without a valid record were quarantined",
                "quarantine",
            )
        if report.missing:
            self.alarms.raise_(
                "store_inconsistent",
                f"{len(report.missing)} catalogued file(s) are missing from the disks",
                "missing",
            )
        if report.duplicates:
            self.alarms.raise_(
                "store_inconsistent",
                f"{len(report.duplicates)} second copies of stored files were quarantined",
                "duplicate",
            )
        if report.mismatched or report.errors:
            self.alarms.raise_(
                "store_inconsistent",
                f"{len(report.mismatched) + len(report.errors)} stored file(s) could not be "
                "reconciled with their records: see the system log",
                "unreconciled",
            )
        with self.catalog.write() as s:
            stale = s.scalars(
                select(CollectionSession).where(CollectionSession.state.in_(("running", "held")))
            ).all()
            for sess in stale:
                sess.state, sess.ended_at = "interrupted", utcnow()
                sess.error = "station stopped during collection"
            append_event(
                s, "station_started", f"version {__version__}", interrupted_sessions=len(stale)
            )
        self._check_disks()

    async def run(self, stop: asyncio.Event) -> bool:
        """Run until `stop` is set: watcher, web server and periodic checks. False when it
        stopped for another reason (a part of it ended): the exit status says failure, and
        systemd starts it again."""
        await self.start()
        from station.api import StationAPI
        from web.app import create_app
        from web.guard import protocol

        api, front = self.config.api, StationAPI(self)  # one front door for both listeners
        if api.port is not None:  # the central server's API on a listener of its own
            listeners = [
                (create_app(front, api=False), self.config.web.host, self.config.web.port),
                (create_app(front, ui=False), api.host or self.config.web.host, api.port),
            ]
        else:
            listeners = [(create_app(front), self.config.web.host, self.config.web.port)]
        servers = [
            _Server(
                uvicorn.Config(
                    app,
                    host=host,
                    port=port,
                    http=protocol(self.config.web),  # connection caps, header limits
                    # also how many connections asyncio accepts in one go, before any is
                    # refused: small, so a burst cannot take every descriptor at once
                    backlog=64,
                    # the address a request came from is the socket's, never a header
                    proxy_headers=False,
                    log_level="warning",
                    log_config=None,  # uvicorn logs through ours (repeats held back)
                    lifespan="off",
                    access_log=False,
                    timeout_graceful_shutdown=3,
                )
            )
            for app, host, port in listeners
        ]
        tasks = [
            *(asyncio.create_task(srv.serve(), name="web") for srv in servers),
            asyncio.create_task(self._periodic(stop), name="periodic"),
        ]
        self._start_scrubber()
        self._start_forwarder()
        self._start_platform()
        interval = sdnotify.watchdog_interval()
        if interval is not None:  # only under systemd with WatchdogSec=
            tasks.append(asyncio.create_task(self._watchdog(stop, interval), name="watchdog"))
        sdnotify.notify("READY=1\nSTATUS=collecting")
        log.info(
            "station %s running, UI on http://%s:%s/",
            self.config.station.id,
            self.config.web.host,
            self.config.web.port,
        )
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        requested = stop.is_set()
        for t in done:
            if t is not stopper:
                log.error("%s stopped: %s", t.get_name(), t.exception() or "it returned")
        self.stopping = True
        sdnotify.notify("STOPPING=1")
        self._bump()  # wake the live streams so they end
        for srv in servers:
            srv.should_exit = True
        await self.shutdown()
        done, pending = await asyncio.wait(tasks, timeout=5)
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return requested

    def stalled(self) -> list[int]:
        """Ports whose collection shows no sign of life for `bus.stall_s` (a hung read)."""
        now = time.monotonic()
        return [p for p, c in self._collectors.items() if now - c.beat > self.config.bus.stall_s]

    async def _watchdog(self, stop: asyncio.Event, interval: float) -> None:
        """Pet systemd's watchdog only while the loop runs and no collection is stuck."""
        while not stop.is_set():
            stuck = self.stalled()
            if stuck:
                log.error("watchdog withheld: collection stalled on port(s) %s", stuck)
            else:
                busy = sum(s.state == "collecting" for s in self.slots.values())
                sdnotify.notify(f"WATCHDOG=1\nSTATUS={busy} port(s) collecting")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    def reload(self, config: StationConfig) -> list[str]:
        """Apply a changed configuration file (SIGHUP): tokens, modes, policies, thresholds.
        Returns the sections that differ but need a restart."""
        live = ("api", "registration", "retention", "recorders", "network", "alarms", "accounts")
        for hook in self.reload_hooks:  # e.g. settings changed on the touchscreen win again
            hook(config)
        for name in live:
            setattr(self.config, name, getattr(config, name))
        self.retention.rules = retention_rules(self.config)
        accounts.configure(self.config.accounts)
        self.priority.set_budget(config.recorders.priority_others_mb_s)
        restart = [
            n
            for n in ("store", "database", "bus", "web", "drivers", "station")
            if getattr(config, n) != getattr(self.config, n)
        ]
        with self.catalog.write() as s:
            append_event(s, "settings_reloaded", ", ".join(live), needs_restart=restart)
        self.notify()
        return restart

    def set_priority(self, port: int | None, by: str) -> None:
        """S30 "collect first": `port`'s recorder gets the bandwidth, the others slow down
        until it is done (None: back to equal shares). Only a port that is collecting."""
        with self._priority_lock:  # checked and set at once: its collection may just end
            if port is not None:
                slot = self.slots.get(port)
                if slot is None or slot.state != "collecting" or port not in self._workers:
                    raise ValueError(f"port {port} is not collecting")
            before = self.priority.set(port)
        if before == port:
            return
        if port is None:
            logged = self._log_queued("priority_cleared", "taken back", actor=by, port=before)
        else:
            logged = self._log_queued("priority_set", f"port {port} first", actor=by, port=port)
        logged.result()
        self.notify()

    def recorder_lock(self, serial: str) -> threading.Lock:
        """The lock a collector holds while it collects the recorder `serial`."""
        with self._priority_lock:
            return self._recorder_locks.setdefault(serial, threading.Lock())

    def _end_priority(self, port: int, why: str) -> None:
        """Collect-first is over for `port` (its collection ended, it was unplugged)."""
        with self._priority_lock:
            released = self.priority.release(port)
        if released:
            self._log_queued("priority_cleared", why, port=port)
            self.notify()

    def _log_queued(self, kind: str, message: str = "", **fields: Any) -> Future[None]:
        """Append to the system log through one writer thread, in order: the event loop
        must not wait for a commit (tens of milliseconds while 8 recorders write, and the
        API would wait meanwhile)."""

        def write() -> None:
            with self.catalog.write() as s:
                append_event(s, kind, message, **fields)

        def failed(f: Future[None]) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.error("system log: %s not written: %s", kind, f.exception())

        # in the caller's context: an event queued for a person's request keeps its source
        fut = self._loop_log.submit(contextvars.copy_context().run, write)
        fut.add_done_callback(failed)
        return fut

    def collecting(self) -> bool:
        """Whether any port is busy moving footage (background work steps aside)."""
        return any(s.state in ("identifying", "collecting") for s in self.slots.values())

    def _start_scrubber(self) -> None:
        if self.config.store.scrub_mb_s <= 0:
            return
        self.scrubber = Scrubber(
            self.catalog,
            self.alarms,
            mb_s=self.config.store.scrub_mb_s,
            every_days=self.config.store.scrub_every_days,
            busy=self.collecting,
            stop=self._stop_workers,
        )
        self._scrub_thread = threading.Thread(target=self.scrubber.run, name="scrubber")
        self._scrub_thread.start()

    def _start_forwarder(self) -> None:
        if not self.config.forward.enabled:
            return
        self.forwarder = Forwarder(
            self.config.forward,
            self.catalog,
            self.config.station.id,
            clock=self.now,
            stop=self._stop_workers,
            alarms=self.alarms,
            state_path=self.config.database_path.parent / "forward.db",
            on_change=self.notify,
        )
        self._forward_thread = threading.Thread(target=self.forwarder.run, name="forwarder")
        self._forward_thread.start()
        self.retention.central.forwarded = self.forwarder.forwarded

    def _start_platform(self) -> None:
        from station.platform.link import start_workers

        self._platform_threads = start_workers(self, self._stop_workers)

    async def shutdown(self) -> None:
        self._stop_workers.set()
        self.announcer.stop()
        for t in (self._scrub_thread, self._forward_thread, *self._platform_threads):
            if t is not None:
                await asyncio.get_running_loop().run_in_executor(None, t.join)
        self.watcher.stop()
        if self._workers:
            await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self.catalog.set_state("active_disk", str(self.store.active))
        self._anchor_log()
        self._executor.shutdown(wait=True)
        self._loop_log.shutdown(wait=True)
        self.catalog.close()

    # --- retention ---------------------------------------------------------------------

    def disk_facts(self) -> list[DiskFacts]:
        out = []
        for d in self.store.disks:
            if d.present() and not d.failed:
                total, free = d.usage()
                out.append(DiskFacts(str(d.path), total, free))
        return out

    def sweep(self) -> Plan:
        """One retention sweep (expired files; overwrite when every disk is past high water)."""
        with self._sweep_lock:
            paused = self._retention_paused()
            plan = self.retention.sweep(self.disk_facts(), paused=paused)
            self._check_central()
        if plan.delete:
            log.info("retention: deleted %s file(s), %s bytes", len(plan.delete), plan.freed_bytes)
            self.notify()
        return plan

    def _check_central(self) -> None:
        """`central_unverified` while files wait too long for their central copy's check."""
        hours = self.config.retention.central_stuck_hours
        stuck = self.retention.stuck_unverified(dt.timedelta(hours=hours))
        if stuck:
            self.alarms.raise_(
                "central_unverified",
                f"{len(stuck)} file(s) collected more than {hours:g} h ago have no verified "
                "central copy yet: they are kept until they have",
            )
        else:
            self.alarms.clear("central_unverified")

    def _retention_paused(self) -> str | None:
        """Why deletion by age must wait (the station clock), with its alarm, or None."""
        paused = None
        if self.clock is not None:
            synced = clock_synchronized()
            self.clock.check_step(utcnow(), synced)  # files stamped before a step: marked
            paused = self.clock.sweep_pause(utcnow(), synced)
        if paused:
            self.alarms.raise_("clock_jump", f"deletion by age paused: {paused}")
        else:
            self.alarms.clear("clock_jump")
        self.retention_paused = paused
        return paused

    def confirm_clock(self, by: str) -> None:
        """An administrator says the station clock is right (`station retention resume`,
        or the console): deletion by age goes on from the time it shows."""
        if self.clock is None:
            raise RuntimeError("the station is not started")
        self.clock.confirm(utcnow(), by=by)
        self._retention_paused()
        self.notify()

    def upcoming_deletions(self, days_ahead: int) -> list[dict[str, Any]]:
        """What deletion by age removes in the next `days_ahead` days (shown beforehand)."""
        return self.retention.upcoming(days_ahead)

    def make_room(self) -> None:
        """Collection is blocked for space: sweep now rather than at the next interval."""
        self.sweep()

    def _forecast(self) -> None:
        r = self.config.retention
        since = utcnow() - dt.timedelta(days=r.forecast_window_days)
        free = sum(d.free for d in self.disk_facts())
        days = days_until_full(free, self.retention.collected_bytes(since), r.forecast_window_days)
        self.days_until_full = days
        if days is not None and days < r.storage_low_days:
            self.alarms.raise_(
                "storage_low",
                f"the disks will be full in about {days:.1f} days "
                f"at the rate of the last {r.forecast_window_days:g} days",
            )
        else:
            self.alarms.clear("storage_low")

    def _retention_round(self) -> None:
        try:
            self.sweep()
            self._forecast()
        except Exception:
            log.exception("retention sweep failed")

    async def _periodic(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_net = 0.0
        next_sweep = next_smart = 0.0

        async def step(work: Callable[[], None]) -> None:
            """One piece of periodic work; its failure (EMFILE in a flood, a disk that
            errors) is logged and the rest goes on, now and at the next round."""
            try:
                faults.fail("periodic_error")
                await loop.run_in_executor(None, work)
            except Exception:
                log.exception("periodic work failed: %s", work.__name__)

        while not stop.is_set():
            if loop.time() >= next_smart:
                next_smart = loop.time() + self.config.alarms.smart_interval_s
                await step(self._check_smart)
            await step(self._check_disks)
            await step(self._anchor_log)
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + self.config.retention.sweep_interval_s
                await step(self._retention_round)
            if loop.time() >= next_net:
                next_net = loop.time() + self.config.network.interval_s
                await step(self._check_network_and_clock)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), DISK_CHECK_S)

    def _check_smart(self) -> None:
        """Grade each store disk from SMART; a failed disk is taken out of use."""
        for d in self.store.disks:
            if not d.present():
                continue
            try:
                h = check_disk(d.path, self.smart_history)
            except Exception:
                log.exception("SMART check of %s failed", d.path)
                continue
            self.disk_health[str(d.path)] = h
            where = f"store disk {d.path} ({h.model or h.device or 'no SMART'})"
            why = "; ".join(h.reasons)
            if h.verdict == "failed":
                self.alarms.raise_("disk_unhealthy", f"{where} is failing: {why}", str(d.path))
                if not d.failed:
                    self.store.take_out_of_use(d, f"SMART: {why}")
            elif h.verdict == "degraded":
                self.alarms.raise_("disk_degraded", f"{where} is degraded: {why}", str(d.path))
            elif h.verdict == "healthy":
                self.alarms.clear("disk_degraded", str(d.path))
                if not d.failed:
                    self.alarms.clear("disk_unhealthy", str(d.path))

    def _check_network_and_clock(self) -> None:
        target = self.config.network.check
        online = check_network(target)
        if online != self.network_online:
            self.network_online = online
            self.notify()
        if online:
            self.alarms.clear("network_down")
        else:
            self.alarms.raise_(
                "network_down",
                f"the central server {target} is unreachable"
                if target
                else "no network link is up",
            )
        self.clock_state = clock_status()
        if self.config.alarms.check_clock:
            synced = clock_synchronized()
            if synced is False:
                self.alarms.raise_(
                    "clock_unsynced",
                    "the station clock is not synchronised (NTP): recorder clocks are set from it",
                )
            elif synced:
                self.alarms.clear("clock_unsynced")

    def _anchor_log(self) -> None:
        """Keep the event chain's head on the data disks (and in the status for the central
        server), so deleting the newest entries of the log shows (`station audit verify`)."""
        try:
            with self.catalog.read() as s:  # the rowid's maximum: no scan while nothing changed
                last = s.scalar(select(func.max(Event.id))) or 0
            if last != self.log_head.get("last_id"):
                disks = [d.path for d in self.store.disks if d.present()]
                self.log_head = eventlog.write_anchors(self.catalog, disks, self.config.station.id)
        except Exception:
            log.exception("the log anchor could not be written")

    def _check_integrity(self) -> None:
        """The installed code and configuration against the install-time manifest."""
        manifest = integrity.default_manifest()
        try:
            found = integrity.check(manifest, self.config_path)
        except integrity.ManifestError as e:
            log.info("%s", e)
            return
        if not found:
            self.alarms.clear("integrity")
            return
        summary = found.summary()
        log.error("integrity: %s", summary)
        self.alarms.raise_("integrity", f"the installed station differs from {manifest}: {summary}")
        with self.catalog.write() as s:
            append_event(
                s, "integrity_mismatch", summary[:4000], changed=len(found.changed),
                missing=len(found.missing), added=len(found.added), config=found.config,
            )  # fmt: skip

    def _identify_disks(self) -> None:
        """Know each configured disk by its marker; one that is not this station's (an empty
        mount point, say) is never written to (station.disks)."""
        for d in self.store.disks:
            if d.present():
                continue
            was_present = d.identity is not None  # and lost it: remounted, swapped
            why = self.disk_book.identify(d)
            if why is None:
                d.prepare()
                if was_present or self._disk_refused.get(str(d.path)):  # back: settle it
                    report = recover(self.catalog, [d])
                    for line in report.lines():
                        log.warning("recovery of %s: %s", d.path, line)
            elif why != self._disk_refused.get(str(d.path)):
                log.warning("store disk %s not used: %s", d.path, why)
            self._disk_refused[str(d.path)] = why

    def _check_disks(self) -> None:
        self._identify_disks()
        for d in self.store.disks:
            if d.present():
                self.alarms.clear("disk_missing", str(d.path))
            else:
                why = self._disk_refused.get(str(d.path)) or "its marker is gone (unmounted?)"
                self.alarms.raise_(
                    "disk_missing", f"store disk {d.path} is not usable: {why}", str(d.path)
                )
        if self.store.pick(0) is not None and not self.waiting_for_space():
            # a 0-byte file fitting is not enough while a recorder waits for room for its
            # next file: that collector clears the alarm itself once the file fits
            self.alarms.clear("storage_full")
        saved = self.catalog.get_state("active_disk")
        if saved != str(self.store.active):
            self.catalog.set_state("active_disk", str(self.store.active))

    def waiting_for_space(self) -> list[int]:
        """The ports whose collection is paused because no store disk has room."""
        return [
            p
            for p, slot in self.slots.items()
            if slot.state == "error" and reason_code(slot.error) == "storage_full"
        ]

    # --- ports ----------------------------------------------------------------------------

    def _on_port_change(self, change: PortChange) -> None:
        slot = self.slots.get(change.port)
        if slot is None:
            return
        wait = self._card_waits.get(change.port)
        if wait is not None:
            # the recorder re-enumerating after SetMSDC: the same docking goes on
            log.info(
                "port %s: re-enumerated as %s",
                change.port,
                change.new.key if change.new else "nothing yet",
            )
            if change.new is not None:
                wait.new = change.new
                wait.arrived.set()
            return
        if change.old is not None:
            log.info("port %s: undocked", change.port)
            self._undocked(slot)
            slot.reset()
            self._log_queued("recorder_undocked", port=change.port)
            self._end_priority(change.port, "recorder undocked")
        if change.new is not None:
            log.info("port %s: docked %s", change.port, change.new.key)
            self._removed_early.pop(change.port, None)
            slot.reset()
            docked = self._log_queued(
                "device_docked", change.new.kind, port=change.port, key=change.new.key
            )
            collector = Collector(self.services, slot, change.new, self._stop_workers)
            self._collectors[change.port] = collector
            assert self._loop is not None

            def run(collector: Collector = collector) -> str:
                futures.wait([docked])  # the docking is in the log before what follows it
                return collector.run()

            fut = self._loop.run_in_executor(None, run)
            self._workers[change.port] = fut
            fut.add_done_callback(lambda f, p=change.port, d=change.new: self._worker_done(p, d, f))
        self.notify()

    def _undocked(self, slot: Slot) -> None:
        """A recorder left `slot`: its own alarms end, and if its collection had not ended
        the port says so for a while (and the log and the speaker too)."""
        rec = dict(slot.recorder or {})
        serial = rec.get("serial", "")
        if serial:

            def clear(serial: str = serial) -> None:
                for code in RECORDER_ALARMS:
                    self.alarms.clear(code, subject=serial)

            # on the log's writer: before the next docking's events, so a recorder docked
            # again at once cannot have its new alarm cleared by this
            self._loop_log.submit(clear)
        if slot.state in ("empty", "complete"):
            return
        shown = {k: rec.get(k, "") for k in ("serial", "officer_no", "officer_name")}
        self._removed_early[slot.port] = (time.monotonic(), shown, slot.state)
        self._log_queued(
            "recorder_removed_early",
            f"unplugged while {slot.state}: collection not finished",
            port=slot.port,
            serial=serial or None,
            officer_no=rec.get("officer_no") or None,
            state=slot.state,
            files_done=slot.files_done,
            files_total=slot.files_total,
        )
        self.announcer.say("collection_failed", port=slot.port, reason="removed_early")

    def removed_early(self, port: int) -> dict[str, str] | None:
        """The recorder pulled out of `port` before its collection ended, while that is
        still shown (REMOVED_EARLY_SHOWN_S), with the state it was in."""
        seen = self._removed_early.get(port)
        if seen is None or time.monotonic() - seen[0] > REMOVED_EARLY_SHOWN_S:
            return None
        return {**seen[1], "state": seen[2]}

    def _worker_done(self, port: int, device: DockedDevice, fut: asyncio.Future[str]) -> None:
        if self._workers.get(port) is fut:  # not when a newer docking has the port
            del self._workers[port]
            self._collectors.pop(port, None)
            self._end_priority(port, "its collection ended")
        if fut.cancelled() or fut.exception() or self._stop_workers.is_set():
            return
        if fut.result() == "gone":
            asyncio.get_running_loop().create_task(self._recheck(port, device))

    async def _recheck(self, port: int, device: DockedDevice) -> None:
        """The worker saw its device vanish: rescan, and if the same folder or device is
        back already (unplugged and replugged between two scans), collect it anew; not
        more often than every RECHECK_MIN_S per port (a driver that says "gone" while the
        device stays docked must not re-dock it in a loop)."""
        wait = self._rechecked.get(port, -math.inf) + RECHECK_MIN_S - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._rechecked[port] = time.monotonic()
        await self.watcher.rescan()
        current = self.watcher.snapshot.get(port)
        if current is not None and current.key == device.key and port not in self._workers:
            self._on_port_change(PortChange(port, device, current))

    # --- what the API shows -------------------------------------------------------------

    def now(self) -> dt.datetime:
        return dt.datetime.now(self.tz).astimezone(self.tz)

    def _health_word(self, d: StoreDisk) -> str:
        if not d.present():
            return "missing"
        if d.failed:
            return "failed"
        h = self.disk_health.get(str(d.path))
        return h.verdict if h and h.verdict != "unknown" else "healthy"

    def _expected_finish(self, slot: Slot) -> dict[str, Any]:
        """A collecting window's expected finish, from the measured rate of its link (or
        its own, on no shared link): `expected_finish` (ISO time) and `expected_s`, both
        None when there is no rate yet or the port is not collecting."""
        secs = None
        if slot.state == "collecting":
            left = max(0, slot.bytes_total - slot.bytes_done)
            secs = self.links.expected_s(slot.port, left, slot.bytes_per_s())
        if secs is None:
            return {"expected_finish": None, "expected_s": None}
        at = dt.datetime.now(self.tz) + dt.timedelta(seconds=secs)
        return {"expected_finish": at.isoformat(timespec="seconds"), "expected_s": round(secs)}

    def status(self) -> dict[str, Any]:
        """The data of `GET /api/v1/status` (CONTRACT.md)."""
        disks = []
        for d in self.store.disks:
            total, free = d.usage()
            disks.append(
                {
                    "path": str(d.path),
                    "total_bytes": total,
                    "free_bytes": free,
                    "active": d.index == self.store.active,
                    "health": self._health_word(d),
                    "smart": h.to_dict() if (h := self.disk_health.get(str(d.path))) else None,
                }
            )
        slots = []
        for slot in self.slots.values():
            rec = slot.recorder
            slots.append(
                {
                    "port": slot.port,
                    "state": slot.state,
                    "recorder": None
                    if rec is None
                    else {
                        k: rec.get(k, "")
                        for k in ("serial", "officer_no", "officer_name", "unit_no", "unit_name")
                    },
                    "battery_percent": slot.battery_percent,
                    "files_total": slot.files_total,
                    "files_done": slot.files_done,
                    "bytes_total": slot.bytes_total,
                    "bytes_done": slot.bytes_done,
                    "bytes_per_s": round(slot.bytes_per_s()),
                    "error": slot.error,
                    "priority": slot.port == self.priority.port,
                    "removed_early": self.removed_early(slot.port)
                    if slot.state == "empty"
                    else None,
                    **self._expected_finish(slot),
                }
            )
        # a recorder's alarm names the port it is docked on (the screen shows where)
        port_of = {s.recorder.get("serial"): s.port for s in self.slots.values() if s.recorder}
        alarms = [
            {
                "id": a.id,
                "code": a.code,
                "severity": a.severity,
                "message": a.message,
                "since": a.since,
                "subject": a.subject,
                "port": port_of.get(a.subject) or _port_subject(a.subject),
                "acked": a.acked_at is not None,
            }
            for a in self.alarms.active()
        ]
        return {
            "station": {
                "id": self.config.station.id,
                "name": self.config.station.name,
                "version": __version__,
                "time": self.now().isoformat(timespec="seconds"),
                "mode": self.config.registration.mode,
            },
            "network": {"online": self.network_online},
            "log": self.log_head,
            "clock": self.clock_state,
            "disks": disks,
            "slots": slots,
            "alarms": alarms,
            "forward": self.forwarder.status() if self.forwarder else {"enabled": False},
            "platform": self.platform.status() if self.platform else {"enabled": False},
            "integrity": self.sm3.status() if self.sm3 else {"sm3": False},
        }

    def status_json(self, max_age_s: float = STATUS_MAX_AGE_S) -> bytes:
        """`status()` rendered as JSON, at most `max_age_s` old: the central server's
        pollers (325 stations' worth may poll one station) share one rendering."""
        body = self.cached_status_json(max_age_s)
        if body is not None:
            return body
        with self._status_lock:  # one rendering at a time; the others take its result
            body = self.cached_status_json(max_age_s)
            if body is None:
                at, seen = time.monotonic(), self._status_changes
                text = json.dumps(self.status(), ensure_ascii=False, separators=(",", ":"))
                body = text.encode()
                self._status_cache = (at, seen, body)
        return body

    def cached_status_json(self, max_age_s: float = STATUS_MAX_AGE_S) -> bytes | None:
        """The last rendering of `status()` if it is fresh enough, without waiting."""
        at, seen, body = self._status_cache
        fresh = seen == self._status_changes and time.monotonic() - at < max_age_s
        return body if fresh else None

    def events(self, **filters: Any) -> list[dict[str, Any]]:
        """The system log, after a cursor, filtered (`GET /api/v1/events`)."""
        return eventlog.search(self.catalog, **filters)

    def alarm_list(self, *, active_only: bool) -> list[dict[str, Any]]:
        return [asdict(a) for a in self.alarms.history(active_only=active_only)]

    def acknowledge_alarm(self, alarm_id: int, by: str) -> bool:
        return self.alarms.acknowledge(alarm_id, by)

    def recorders(self) -> list[dict[str, Any]]:
        """Every recorder seen, with its registration and last state."""
        return list_recorders(self.catalog)

    def disks(self) -> list[dict[str, Any]]:
        """The store disks (`GET /api/v1/disks`)."""
        return self.status()["disks"]

    def files(self, **filters: Any) -> dict[str, Any]:
        """The data of `GET /api/v1/files`."""
        return list_files(self.catalog, self.tz, central=self.retention.central, **filters)


def _port_subject(subject: str) -> int | None:
    """The port an alarm about a port ("port3") is about."""
    rest = subject.removeprefix("port")
    return int(rest) if rest != subject and rest.isdigit() else None


def list_recorders(catalog: Catalog) -> list[dict[str, Any]]:
    """Every recorder the station has seen, registered or not."""
    with catalog.read() as s:
        return [
            {
                "serial": r.serial,
                "id_code": r.id_code,
                "status": r.status,
                "officer_no": r.officer.officer_no if r.officer else None,
                "officer_name": r.officer.name if r.officer else None,
                "reported": json.loads(r.reported_block or "{}"),
                "registered_how": r.registered_how,
                "registered_by": r.registered_by,
                "registered_at": r.registered_at.isoformat() if r.registered_at else None,
                "first_seen_at": r.first_seen_at.isoformat(),
                "last_seen_at": r.last_seen_at.isoformat(),
                "last_port": r.last_port,
                "battery_percent": r.battery_percent,
                "clock_drift_s": r.clock_drift_s,
            }
            for r in s.scalars(select(Recorder).order_by(Recorder.serial))
        ]


def list_files(
    catalog: Catalog,
    tz: ZoneInfo | None,
    *,
    officer_no: str | None = None,
    serial: str | None = None,
    important: bool | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 100,
    offset: int = 0,
    central: CentralCheck | None = None,
) -> dict[str, Any]:
    """Collected files, newest first, filtered as `GET /api/v1/files` allows; `central`
    is pending, verified or failed by `central`'s rules (None: no central copy is
    configured)."""
    q = (
        select(StoredFile)
        .join(Officer, StoredFile.officer_id == Officer.id)
        .join(Recorder, StoredFile.recorder_id == Recorder.id)
        .where(StoredFile.deleted_at.is_(None))
    )
    if officer_no:
        q = q.where(Officer.officer_no == officer_no)
    if serial:
        q = q.where(Recorder.serial == serial)
    if important is not None:
        q = q.where(StoredFile.important == important)
    if since is not None:
        q = q.where(StoredFile.collected_at >= since)
    if until is not None:
        q = q.where(StoredFile.collected_at < until)
    with catalog.read() as s:
        total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
        rows = s.scalars(
            q.order_by(StoredFile.collected_at.desc(), StoredFile.id.desc())
            .limit(limit)
            .offset(offset)
        ).all()
        items = [_file_item(f, tz) for f in rows]
    for item in items:
        if central is None or not central.required:
            item["central"] = None
        elif item["central"] != "verified" and central.verified_elsewhere(item["id"]):
            item["central"] = "verified"
    return {"total": total, "items": items}


def _file_item(f: StoredFile, tz: ZoneInfo | None) -> dict[str, Any]:
    recorded = f.recorded_at
    if recorded is not None:
        recorded = recorded.replace(tzinfo=tz) if tz else recorded.astimezone()
    return {
        "id": f.id,
        "officer_no": f.officer.officer_no,
        "serial": f.recorder.serial,
        "name": f.name,
        "card_path": parse_card_path(f.card_path).display,
        "stored_path": str(Path(f.disk) / f.rel_path),
        "size": f.size,
        "sha256": f.sha256,
        "recorded_at": recorded.isoformat() if recorded else None,
        "collected_at": f.collected_at.astimezone(tz).isoformat(),
        "important": f.important,
        "level": f.level,
        "sm3": f.sm3,
        "central": f.central_state or "pending",
        "retention_category": f.retention_category,
    }
