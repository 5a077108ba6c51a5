"""The station's runtime: builds the subsystems from the configuration and runs the loop.

`Station` only wires and schedules. One asyncio loop owns the ports' state
(`station.devices.ports`); blocking work (driver calls, copying, hashing, fsync,
catalog writes) runs in a thread pool and reports back through `notify`,
which is safe to call from any thread. The periodic loop runs the health
checks (`station.health.monitor`) and retention (`station.retention.schedule`). The
runtime knows no web: the composition root (`station run`) serves the
screens and the central API beside it through `station.api`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import select

from station import __version__, accounts, faults, sdnotify
from station.catalog import Catalog, CollectionSession
from station.catalog.db import append_event, lock_exclusive
from station.catalog.models import utcnow
from station.catalog.writer import LogWriter
from station.config import StationConfig
from station.devices.bus import Bus
from station.devices.mount import clear_mount_root, make_mounter, mount_card
from station.devices.ports import Ports
from station.drivers.android_adb import AndroidAdbDriver
from station.drivers.base import DockedDevice, DriverRegistry, RecorderDriver, RecorderError
from station.drivers.card import Card
from station.drivers.mass_storage import MassStorageDriver
from station.drivers.scsi_dv16 import ScsiDv16Driver
from station.drivers.simulated import SimulatedDriver
from station.drivers.usb_vendor import UsbVendorDriver
from station.drivers.vendor_library import VendorLibraryDriver
from station.forward import Forwarder
from station.health.alarms import AlarmBook
from station.health.clockguard import ClockGuard
from station.health.monitor import HealthMonitor
from station.ingest.collector import Slot
from station.ingest.priority import LinkScheduler, PriorityGate
from station.platform.link import PlatformLink
from station.platform.sm3 import Sm3Digester
from station.retention.schedule import RetentionSchedule
from station.retention.sweeper import CentralCheck, Plan, RetentionSweeper, retention_rules
from station.status import STATUS_MAX_AGE_S, ChangeFeed, StatusView
from station.store.disks import Store
from station.store.recovery import recover
from station.store.scrubber import Scrubber
from station.voice import Announcer

log = logging.getLogger(__name__)

DISK_CHECK_S = 5.0
__all__ = ["DISK_CHECK_S", "STATUS_MAX_AGE_S", "Station", "build_drivers", "make_bus"]


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


def make_bus(config: StationConfig) -> Bus:
    if config.bus.kind == "simulated":
        from station.devices.simbus import SimulatedBus  # watchdog: only for this kind

        return SimulatedBus(config.bus.path, config.bus.ports)
    from station.devices.udev import UdevBus  # pyudev: only for this kind

    return UdevBus(config.bus.port_map, link_mb_s=config.bus.link_mb_s)


class Served(Protocol):
    """Something served beside the runtime (the web listeners): runs until told to stop."""

    name: str

    async def serve(self) -> None: ...

    def stop(self) -> None: ...


class Station:
    """The composition of one station's subsystems, and the loop that runs them."""

    def __init__(
        self,
        config: StationConfig,
        *,
        bus: Bus | None = None,
        drivers: DriverRegistry | None = None,
    ) -> None:
        self.config = config  # a snapshot: replaced whole by `reload`, never changed in place
        accounts.configure(config.accounts)
        self.tz = ZoneInfo(config.station.timezone) if config.station.timezone else None
        self.catalog = Catalog(config.database_path)
        self.store = Store(config.store.disks, config.store.min_free_mb)
        self.mounter = make_mounter(config.bus.mounter, config.bus.mount_helper)
        self.drivers = drivers or build_drivers(config, self.mount)
        self.bus = bus or make_bus(config)
        self.changes = ChangeFeed()
        self.stopping = False
        self.scrubber: Scrubber | None = None
        self.forwarder: Forwarder | None = None
        self.platform: PlatformLink | None = None
        self.sm3: Sm3Digester | None = None
        self._threads: list[Any] = []
        self._stop_workers = threading.Event()
        self.log_writer = LogWriter(self.catalog)
        # run on a new configuration (SIGHUP, settings) before it goes live; each returns
        # the configuration to use (the platform's sections laid over the file's, say)
        self.reload_hooks: list[Callable[[StationConfig], StationConfig]] = []
        self._executor = ThreadPoolExecutor(
            max_workers=config.bus.ports + 4, thread_name_prefix="station"
        )
        self.announcer = Announcer(config.voice, clock=self.now)
        self.alarms = AlarmBook(self.catalog, self.changes.notify, self.announcer.alarm_raised)
        self.config_path: Path | None = None  # the file it was loaded from (run_station)
        self.clock: ClockGuard | None = None  # after the catalog is migrated
        self.retention = RetentionSweeper(
            self.catalog,
            retention_rules(config),
            CentralCheck(
                platform=config.platform.enabled and config.platform.upload_content,
                forward=config.forward.enabled,
            ),
        )
        self.schedule = RetentionSchedule(
            self.current_config, self.retention, self.store, self.alarms, notify=self.changes.notify
        )
        priority = PriorityGate(config.recorders.priority_others_mb_s)
        links = LinkScheduler(self.bus.links(), enabled=config.bus.link_scheduling)
        self.ports = Ports(
            self.current_config,
            bus=self.bus,
            catalog=self.catalog,
            store=self.store,
            drivers=self.drivers,
            alarms=self.alarms,
            tz=self.tz,
            priority=priority,
            links=links,
            mount=self.mount,
            log_writer=self.log_writer,
            announcer=self.announcer,
            notify=self.changes.notify,
            make_room=self.schedule.make_room,
            stop=self._stop_workers,
        )
        links.priority = self.ports.priority_port  # collect-first stays on top
        self.health = HealthMonitor(
            self.current_config,
            self.catalog,
            self.store,
            self.alarms,
            notify=self.changes.notify,
            waiting_for_space=self.ports.waiting_for_space,
        )
        self.view = StatusView(
            self.current_config,
            self.ports,
            self.health,
            self.store,
            self.alarms,
            now=self.now,
        )
        self.store.on_failed = self.health.disk_failed
        self.changes.view = self.view
        self.changes.on_change = self.ports.speak_changes

    # --- what others read ---------------------------------------------------------------

    def current_config(self) -> StationConfig:
        """The configuration in force now (a snapshot; a reload replaces it whole)."""
        return self.config

    @property
    def slots(self) -> dict[int, Slot]:
        return self.ports.slots

    @property
    def priority(self) -> PriorityGate:
        return self.ports.priority

    @property
    def network_online(self) -> bool | None:
        return self.health.network_online

    @property
    def retention_paused(self) -> str | None:
        return self.schedule.paused

    @property
    def watcher(self) -> Any:
        return self.ports.watcher

    def now(self) -> dt.datetime:
        return dt.datetime.now(self.tz).astimezone(self.tz)

    def mount(self, device: DockedDevice) -> Card:
        return mount_card(self.mounter, device, self.config.bus.mount_root)

    # --- change notification (station.status.ChangeFeed) ---------------------------

    def notify(self, progress: bool = False) -> None:
        """Something visible changed (any thread): `ChangeFeed.notify`."""
        self.changes.notify(progress)

    @property
    def version(self) -> int:
        return self.changes.version

    async def wait_change(self, version: int, timeout: float) -> int:
        return await self.changes.wait_change(version, timeout)

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(self._executor)
        self.changes.attach(loop)
        await loop.run_in_executor(None, self._prepare)
        self.announcer.start()
        await self.ports.watcher.start()

    def _prepare(self) -> None:
        self._catalog_lock = lock_exclusive(self.catalog.path)  # held until the process ends
        if self.config.bus.kind != "simulated":  # cards a killed run left mounted
            for name in clear_mount_root(self.mounter, self.config.bus.mount_root):
                log.warning("card folder %s from an earlier run let go", name)
        self.catalog.migrate()
        self.health.check_integrity(self.config_path)
        self.store.active = int(self.catalog.get_state("active_disk", "0") or 0)
        self.health.identify_disks()
        self.store.prepare()
        self.clock = ClockGuard(self.catalog, self.config.retention.max_clock_jump_days)
        self.ports.clock = self.schedule.clock = self.clock
        self._recover()
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
        self.health.check_disks()

    def _recover(self) -> None:
        report = recover(self.catalog, self.store.disks)
        for line in report.lines():
            log.warning("recovery: %s", line)
        found = [
            (report.quarantined, "stored file(s) without a valid record were quarantined",
             "quarantine"),
            (report.missing, "catalogued file(s) are missing from the disks", "missing"),
            (report.duplicates, "second copies of stored files were quarantined", "duplicate"),
        ]  # fmt: skip
        for items, what, subject in found:
            if items:
                self.alarms.raise_("store_inconsistent", f"{len(items)} {what}", subject)
        if report.mismatched or report.errors:
            self.alarms.raise_(
                "store_inconsistent",
                f"{len(report.mismatched) + len(report.errors)} stored file(s) could not be "
                "reconciled with their records: see the system log",
                "unreconciled",
            )

    async def run(self, stop: asyncio.Event, serve: Callable[[], Sequence[Served]] = tuple) -> bool:
        """Run until `stop` is set: the port watcher, the periodic checks, the background
        workers, and what `serve()` builds once the catalog is ready, beside them. False
        when it stopped for another reason (a part of it ended): the exit status says
        failure, and systemd starts it again."""
        await self.start()
        served = serve()
        tasks = [
            *(asyncio.create_task(s.serve(), name=s.name) for s in served),
            asyncio.create_task(self._periodic(stop), name="periodic"),
        ]
        self._start_workers()
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
        self.changes.bump()  # wake the live streams so they end
        for s in served:
            s.stop()
        await self.shutdown()
        done, pending = await asyncio.wait(tasks, timeout=5)
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return requested

    async def _watchdog(self, stop: asyncio.Event, interval: float) -> None:
        """Pet systemd's watchdog only while the loop runs and no collection is stuck."""
        while not stop.is_set():
            stuck = self.ports.stalled()
            if stuck:
                log.error("watchdog withheld: collection stalled on port(s) %s", stuck)
            else:
                busy = sum(s.state == "collecting" for s in self.slots.values())
                sdnotify.notify(f"WATCHDOG=1\nSTATUS={busy} port(s) collecting")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    def reload(self, config: StationConfig) -> list[str]:
        """Apply a changed configuration (SIGHUP, settings, the platform): tokens, modes,
        policies, thresholds go live; returns the sections that differ but need a restart.
        The new snapshot replaces the old one whole; a docking in progress keeps its own."""
        live = (
            "api", "registration", "retention", "recorders", "network", "alarms", "accounts",
            "voice",
        )  # fmt: skip
        for hook in self.reload_hooks:  # e.g. settings changed on the touchscreen win again
            config = hook(config)
        old = self.config
        self.config = old.model_copy(update={n: getattr(config, n) for n in live})
        self.retention.rules = retention_rules(self.config)
        accounts.configure(self.config.accounts)
        self.announcer.config = self.config.voice
        self.ports.priority.set_budget(config.recorders.priority_others_mb_s)
        restart = [
            n
            for n in ("store", "database", "bus", "web", "drivers", "station")
            if getattr(config, n) != getattr(old, n)
        ]
        with self.catalog.write() as s:
            append_event(s, "settings_reloaded", ", ".join(live), needs_restart=restart)
        self.notify()
        return restart

    def _start_workers(self) -> None:
        """The background workers the configuration asks for, each on a thread of its own
        with the shared stop event."""
        cfg, stop = self.config, self._stop_workers
        if cfg.store.scrub_mb_s > 0:
            self.scrubber = Scrubber(
                self.catalog, self.alarms, mb_s=cfg.store.scrub_mb_s,
                every_days=cfg.store.scrub_every_days, busy=self.ports.collecting, stop=stop,
            )  # fmt: skip
            self._thread(self.scrubber.run, "scrubber")
        if cfg.forward.enabled:
            self.forwarder = Forwarder(
                cfg.forward, self.catalog, cfg.station.id, clock=self.now, stop=stop,
                alarms=self.alarms, state_path=cfg.database_path.parent / "forward.db",
                on_change=self.changes.notify,
            )  # fmt: skip
            self._thread(self.forwarder.run, "forwarder")
            self.view.parts["forward"] = self.forwarder.status
            self.retention.central.forwarded = self.forwarder.forwarded
        if cfg.integrity.sm3:
            self.sm3 = Sm3Digester(self.catalog, stop, mb_s=cfg.integrity.sm3_mb_s)
            self._thread(self.sm3.run, "sm3")
            self.view.parts["integrity"] = self.sm3.status
        if cfg.platform.enabled:
            self.platform = PlatformLink(self, stop)
            self.reload_hooks.append(self.platform.reapply)
            self._thread(self.platform.run, "platform")
            self.view.parts["platform"] = self.platform.status

    def _thread(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name)
        t.start()
        self._threads.append(t)

    async def shutdown(self) -> None:
        self._stop_workers.set()
        self.announcer.stop()
        loop = asyncio.get_running_loop()
        for t in self._threads:
            await loop.run_in_executor(None, t.join)
        self.ports.watcher.stop()
        await self.ports.join()
        self.catalog.set_state("active_disk", str(self.store.active))
        self.health.anchor_log()
        self._executor.shutdown(wait=True)
        self.log_writer.close()
        self.catalog.close()

    async def _periodic(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_net = next_sweep = next_smart = 0.0

        async def step(work: Callable[[], None]) -> None:
            """One piece of periodic work; its failure (EMFILE in a flood, a disk that
            errors) is logged and the rest goes on, now and at the next round."""
            try:
                faults.fail("periodic_error")
                await loop.run_in_executor(None, work)
            except Exception:
                log.exception("periodic work failed: %s", work.__name__)

        while not stop.is_set():
            cfg = self.config
            if loop.time() >= next_smart:
                next_smart = loop.time() + cfg.alarms.smart_interval_s
                await step(self.health.check_smart)
            await step(self.health.check_disks)
            await step(self.health.anchor_log)
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + cfg.retention.sweep_interval_s
                await step(self.schedule.round)
            if loop.time() >= next_net:
                next_net = loop.time() + cfg.network.interval_s
                await step(self.health.check_network_and_clock)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), DISK_CHECK_S)

    # --- operations (the API's and the CLI's) ---------------------------------------------

    def log_queued(self, kind: str, message: str = "", **fields: Any) -> Future[None]:
        """Append to the system log on its writer thread, in order (`LogWriter.queue`)."""
        return self.log_writer.queue(kind, message, **fields)

    def set_priority(self, port: int | None, by: str) -> None:
        self.ports.set_priority(port, by)

    def clear_priority(self, port: int, by: str) -> int | None:
        return self.ports.clear_priority(port, by)

    def sweep(self) -> Plan:
        return self.schedule.sweep()

    def make_room(self) -> None:
        self.schedule.make_room()

    def confirm_clock(self, by: str) -> None:
        self.schedule.confirm_clock(by)

    def upcoming_deletions(self, days_ahead: int) -> list[dict[str, Any]]:
        return self.schedule.upcoming(days_ahead)

    def self_check(self) -> dict[str, Any]:
        """The disks checked now, and the status after it (the platform's self-check)."""
        self.health.check_disks()
        return self.status()

    def status(self) -> dict[str, Any]:
        """The data of `GET /api/v1/status` (CONTRACT.md)."""
        return self.view.status()

    def status_json(self, max_age_s: float = STATUS_MAX_AGE_S) -> bytes:
        return self.view.json(max_age_s)

    def cached_status_json(self, max_age_s: float = STATUS_MAX_AGE_S) -> bytes | None:
        return self.view.cached_json(max_age_s)

    def alarm_list(self, *, active_only: bool) -> list[dict[str, Any]]:
        return [asdict(a) for a in self.alarms.history(active_only=active_only)]

    def acknowledge_alarm(self, alarm_id: int, by: str) -> bool:
        return self.alarms.acknowledge(alarm_id, by)

    def disks(self) -> list[dict[str, Any]]:
        """The store disks (`GET /api/v1/disks`)."""
        return self.view.disks()
