"""The cabinet's ports: what each is doing, the collector working on it, collect-first.

`Ports` owns the slots and the worker futures; it lives on the station's event
loop. The port watcher calls `on_change` there; each docked recorder gets a
`Collector` in a worker thread, which reports back only through the `Dock`
interface (`changed`, `expect_card`, ...), implemented here with locks and
`loop.call_soon_threadsafe` where it touches loop-owned state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any
from zoneinfo import ZoneInfo

from station.catalog import Catalog
from station.catalog.writer import LogWriter
from station.config import StationConfig
from station.devices.bus import Bus, PortChange, PortWatcher
from station.devices.mount import MountError, find_card_device, same_recorder
from station.drivers.base import DeviceGone, DockedDevice, DriverRegistry
from station.drivers.card import Card
from station.errors import PortNotCollecting
from station.health.alarms import AlarmBook
from station.health.clockguard import ClockGuard
from station.ingest.collector import Collector, Reason, Services, Slot, SlotState
from station.ingest.priority import LinkScheduler, PriorityGate
from station.store.disks import Store
from station.voice import Announcer

log = logging.getLogger(__name__)

# a worker that saw its device vanish: the same docking is collected anew at most this often
RECHECK_MIN_S = 5.0
REMOVED_EARLY_SHOWN_S = 120.0  # how long a port says a recorder was pulled out too soon
# alarms about one recorder (subject: its serial): they end when it leaves the station
RECORDER_ALARMS = ("battery_critical", "recorder_clock_drift", "collection_failed")


class CardWait:
    """A collector waiting for its recorder to come back on the same port as a disk."""

    def __init__(self, ports: Ports, device: DockedDevice, generation: int) -> None:
        self.ports = ports
        self.device = device
        self.generation = generation  # the collector's docking
        self.new: DockedDevice | None = None
        self.arrived = threading.Event()

    def __enter__(self) -> CardWait:
        port = self.device.port
        registered = False

        def register() -> None:  # only while the port still has the collector's docking
            nonlocal registered
            slot = self.ports.slots[port]
            if slot.generation == self.generation:
                self.ports.card_waits[port] = self
                registered = True

        # in force on the loop before the caller goes on to switch the recorder
        self.ports.on_loop(register)
        if not registered:
            raise DeviceGone(f"port {port}: the port moved on to another docking")
        return self

    def __exit__(self, *exc: object) -> None:
        port = self.device.port

        def end() -> None:
            if self.ports.card_waits.get(port) is self:
                del self.ports.card_waits[port]

        self.ports.on_loop(end)

    def came_back(self, device: DockedDevice) -> None:
        """The port's next device arrived (on the loop; the worker waits for it)."""
        self.new = device
        self.arrived.set()

    def card(self, recorder_serial: str | None = None) -> Card:
        """Mount the card: on this same device if it is a disk already, else on the device
        that re-enumerated on this port after SetMSDC, if it can be the same recorder."""
        ports = self.ports
        if find_card_device(self.device.path) is not None:
            return ports.mount(self.device)
        if not self.arrived.wait(ports.config().bus.reenumerate_timeout_s):
            raise MountError(
                f"port {self.device.port}: the recorder did not come back as a "
                "disk after switching to mass storage"
            )
        assert self.new is not None
        same_recorder(self.device, self.new, recorder_serial)
        return ports.mount(self.new)


class Ports:
    """The physical ports, each with its `Slot`, and the collectors working on them.

    Implements `station.ingest.collector.Dock` for the collectors."""

    def __init__(
        self,
        config: Callable[[], StationConfig],
        *,
        bus: Bus,
        catalog: Catalog,
        store: Store,
        drivers: DriverRegistry,
        alarms: AlarmBook,
        tz: ZoneInfo | None,
        priority: PriorityGate,
        links: LinkScheduler | None,
        mount: Callable[[DockedDevice], Card],
        log_writer: LogWriter,
        announcer: Announcer,
        notify: Callable[..., None],
        make_room: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        self.config = config
        n = config().bus.ports
        self.slots = {p: Slot(p) for p in range(1, n + 1)}
        self.catalog = catalog
        self.store = store
        self.drivers = drivers
        self.tz = tz
        self.priority = priority
        self.links = links
        self.mount = mount
        self.log = log_writer
        self.alarms = alarms
        self.announcer = announcer
        self.notify = notify
        self.make_room = make_room
        self.stop = stop
        self.clock: ClockGuard | None = None  # once the catalog is migrated
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop owning the slots
        self.card_waits: dict[int, CardWait] = {}
        self.collectors: dict[int, Collector] = {}
        self.workers: dict[int, asyncio.Future[str]] = {}
        self.watcher = PortWatcher(bus, self.on_change, debounce_s=config().bus.debounce_ms / 1000)
        self._priority_lock = threading.Lock()
        self._recorder_locks: dict[str, threading.Lock] = {}
        self._spoken: dict[int, tuple[int, str]] = {}  # port -> (generation, state) last seen
        # port -> (when, the recorder, its state): unplugged before its collection ended
        self._removed_early: dict[int, tuple[float, dict[str, str], str]] = {}
        self._rechecked: dict[int, float] = {}  # port -> when it was last re-docked
        # port -> (generation, fields): what collectors published, applied or still queued
        # for the loop; read by the checks that run on other threads (clones, disk space)
        self._published: dict[int, tuple[int, dict[str, Any]]] = {}
        self._published_lock = threading.Lock()

    # --- the Dock a collector reports to (any thread) -----------------------------------

    def publish(
        self, slot: Slot, generation: int, fields: dict[str, Any], progress: bool = False
    ) -> None:
        """A collector's update of its slot, applied on the loop that owns the slots (in
        the order sent), and only while the port still has that collector's docking."""
        with self._published_lock:
            gen, before = self._published.get(slot.port, (generation, {}))
            # an older docking's late publication never takes the current one's place
            if generation >= gen and generation == slot.generation:
                self._published[slot.port] = (
                    generation,
                    {**(before if gen == generation else {}), **fields},
                )

        def apply() -> None:
            if slot.generation == generation:
                slot.__dict__.update(fields)
                self.notify(progress)

        loop = self._loop
        if loop is None:
            apply()
            return
        try:
            loop.call_soon_threadsafe(apply)
        except RuntimeError:  # the loop is closed: nobody reads the slot any more
            apply()

    def on_loop(self, work: Callable[[], None]) -> None:
        """Run `work` on the loop owning the ports and wait until it has run (from a
        worker thread); at once when called on that loop, or when there is none."""
        loop = self._loop
        if loop is None or loop.is_closed():
            work()
            return
        try:
            if asyncio.get_running_loop() is loop:
                work()
                return
        except RuntimeError:
            pass  # not on a loop: a worker thread
        done = concurrent.futures.Future[None]()

        def run() -> None:
            try:
                work()
                done.set_result(None)
            except BaseException as e:
                done.set_exception(e)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # closed meanwhile
            work()
            return
        done.result()

    def registration_mode(self) -> str:
        return self.config().registration.mode

    def _latest(self, port: int, *names: str) -> tuple[Any, ...]:
        """`names` of the port's slot as they are once the publications queued for the
        loop are applied (from any thread: a check must not miss a recorder that a
        collector identified a moment ago)."""
        slot = self.slots[port]
        gen = slot.generation
        with self._published_lock:
            pub_gen, pub = self._published.get(port, (-1, {}))
        pub = pub if pub_gen == gen else {}
        return tuple(pub[n] if n in pub else getattr(slot, n) for n in names)

    def docked_elsewhere(self, serial: str, port: int) -> int | None:
        """Another port where a recorder with this serial is docked right now."""
        for p in self.slots:
            if p == port:
                continue
            state, recorder = self._latest(p, "state", "recorder")
            if state != SlotState.EMPTY and (recorder or {}).get("serial") == serial:
                return p
        return None

    def expect_card(self, device: DockedDevice, generation: int) -> CardWait:
        """Register, before SetMSDC, that this port's next device is the same recorder
        (refused with `DeviceGone` if the port has moved on from docking `generation`)."""
        return CardWait(self, device, generation)

    def recorder_lock(self, serial: str) -> threading.Lock:
        """The lock a collector holds while it collects the recorder `serial`."""
        with self._priority_lock:
            return self._recorder_locks.setdefault(serial, threading.Lock())

    def end_priority(self, port: int, why: str) -> None:
        """Collect-first is over for `port` (its collection ended, it was unplugged)."""
        with self._priority_lock:
            released = self.priority.release(port)
        if released:
            self.log.queue("priority_cleared", why, port=port)
            self.notify()

    # --- collect-first (S30) -------------------------------------------------------------

    def priority_port(self) -> int | None:
        """The port collected first, read under the lock that sets it."""
        with self._priority_lock:
            return self.priority.port

    def set_priority(self, port: int | None, by: str) -> None:
        """S30 "collect first": `port`'s recorder gets the bandwidth, the others slow down
        until it is done (None: back to equal shares). Only a port that is collecting."""
        with self._priority_lock:  # checked and set at once: its collection may just end
            if port is not None:
                slot = self.slots.get(port)
                if slot is None or slot.state != SlotState.COLLECTING or port not in self.workers:
                    raise PortNotCollecting(f"port {port} is not collecting")
            before = self.priority.set(port)
        self._priority_logged(before, port, by)

    def clear_priority(self, port: int, by: str) -> int | None:
        """Back to equal shares if `port` is the one collected first (checked and cleared
        under the same lock); the port first afterwards."""
        with self._priority_lock:
            before = self.priority.port
            if before == port:
                self.priority.set(None)
            after = self.priority.port
        if before == port:
            self._priority_logged(before, None, by)
        return after

    def _priority_logged(self, before: int | None, port: int | None, by: str) -> None:
        if before == port:
            return
        if port is None:
            logged = self.log.queue("priority_cleared", "taken back", actor=by, port=before)
        else:
            logged = self.log.queue("priority_set", f"port {port} first", actor=by, port=port)
        logged.result()
        self.notify()

    # --- what the ports are doing ----------------------------------------------------------

    def collecting(self) -> bool:
        """Whether any port is busy moving footage (background work steps aside)."""
        return any(
            s.state in (SlotState.IDENTIFYING, SlotState.COLLECTING) for s in self.slots.values()
        )

    def stalled(self) -> list[int]:
        """Ports whose collection shows no sign of life for `bus.stall_s` (a hung read)."""
        now, limit = time.monotonic(), self.config().bus.stall_s
        return [p for p, c in self.collectors.items() if now - c.beat > limit]

    def waiting_for_space(self) -> list[int]:
        """The ports whose collection is paused because no store disk has room."""
        return [
            p
            for p in self.slots
            if self._latest(p, "state", "reason") == (SlotState.ERROR, Reason.STORAGE_FULL)
        ]

    def removed_early(self, port: int) -> dict[str, str] | None:
        """The recorder pulled out of `port` before its collection ended, while that is
        still shown (REMOVED_EARLY_SHOWN_S), with the state it was in."""
        seen = self._removed_early.get(port)
        if seen is None or time.monotonic() - seen[0] > REMOVED_EARLY_SHOWN_S:
            return None
        return {**seen[1], "state": seen[2]}

    def speak_changes(self) -> None:
        """Announce each port whose state changed since the last call (on the loop)."""
        for port, slot in self.slots.items():
            gen, state = self._spoken.get(port, (slot.generation, SlotState.EMPTY))
            old = SlotState.EMPTY if gen != slot.generation else state
            if old != slot.state:
                self.announcer.say_slot_change(
                    old, slot.state, port, slot.reason, held=slot.error is not None
                )
            self._spoken[port] = (slot.generation, slot.state)

    # --- docking and undocking (on the loop) -----------------------------------------------

    def on_change(self, change: PortChange) -> None:
        """The port watcher saw a port change: start or end its collection."""
        slot = self.slots.get(change.port)
        if slot is None:
            return
        wait = self.card_waits.get(change.port)
        if wait is not None:
            # the recorder re-enumerating after SetMSDC: the same docking goes on
            log.info(
                "port %s: re-enumerated as %s",
                change.port,
                change.new.key if change.new else "nothing yet",
            )
            if change.new is not None:
                wait.came_back(change.new)
            return
        if change.old is not None:
            log.info("port %s: undocked", change.port)
            self._undocked(slot)
            slot.reset()
            self.log.queue("recorder_undocked", port=change.port)
            self.end_priority(change.port, "recorder undocked")
        if change.new is not None:
            self._docked(slot, change.new)
        self.notify()

    def _docked(self, slot: Slot, device: DockedDevice) -> None:
        self._loop = asyncio.get_running_loop()
        log.info("port %s: docked %s", slot.port, device.key)
        self._removed_early.pop(slot.port, None)
        slot.reset()
        docked = self.log.queue("device_docked", device.kind, port=slot.port, key=device.key)
        services = Services(
            self.config(), self.catalog, self.store, self.drivers, self.alarms, self.tz,
            dock=self, priority=self.priority, clock=self.clock, links=self.links,
        )  # fmt: skip  # the configuration of now, for the whole docking
        collector = Collector(services, slot, device, self.stop)
        self.collectors[slot.port] = collector

        def run() -> str:
            futures.wait([docked])  # the docking is in the log before what follows it
            return collector.run()

        fut = asyncio.get_running_loop().run_in_executor(None, run)
        self.workers[slot.port] = fut
        fut.add_done_callback(lambda f, p=slot.port, d=device: self._worker_done(p, d, f))

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
            self.log.run_in_order(clear)
        if slot.state in (SlotState.EMPTY, SlotState.COMPLETE):
            return
        shown = {k: rec.get(k, "") for k in ("serial", "officer_no", "officer_name")}
        self._removed_early[slot.port] = (time.monotonic(), shown, slot.state)
        self.log.queue(
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

    def _worker_done(self, port: int, device: DockedDevice, fut: asyncio.Future[str]) -> None:
        if self.workers.get(port) is fut:  # not when a newer docking has the port
            del self.workers[port]
            self.collectors.pop(port, None)
            self.end_priority(port, "its collection ended")
        if fut.cancelled() or fut.exception() or self.stop.is_set():
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
        if current is not None and current.key == device.key and port not in self.workers:
            self.on_change(PortChange(port, device, current))

    async def join(self) -> None:
        """Wait for every collector to end (after the stop event is set)."""
        if self.workers:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self.workers.values(), return_exceptions=True)
