"""A station's collectors, in process, over docked devices: the harness for driver families.

`Dock` runs the real `Collector` (real catalog, real store disk, real ingest) for
devices docked on ports; each port's card is its own folder, whichever recorder
the driver switched, so what is stored shows which recorder each session read.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from station.catalog import Catalog
from station.config import StationConfig
from station.drivers.base import DockedDevice, DriverRegistry
from station.drivers.card import FolderCard
from station.health.alarms import AlarmBook
from station.ingest.collector import Collector, Services, Slot
from station.ingest.priority import PriorityGate
from station.store.disks import Store
from station.store.identity import DiskBook

WAIT_S = 120.0  # generous: a slow, busy machine must not fail these tests
DAY = "20261201083000"


def card_files(card: Path, officer_no: str, serial: str, n: int = 2) -> dict[str, bytes]:
    """Footage named as recorders name it, with content unique to the recorder."""
    folder = card / "DCIM" / "100ANDRO"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k in range(1, n + 1):
        name = f"{officer_no}_{serial}_{DAY}_{k:04d}.MP4"
        data = f"{serial} clip {k} ".encode() * (2000 + 100 * k)
        (folder / name).write_bytes(data)
        out[name] = data
    return out


class Dock:
    """A station's collectors over docked devices; port p's card is its own folder."""

    def __init__(self, tmp: Path, registry: DriverRegistry, passwords: list[str]) -> None:
        self.disk = tmp / "disk1"
        self.disk.mkdir()
        self.cards: dict[int, Path] = {}
        self.config = StationConfig(
            store={"disks": [self.disk], "min_free_mb": 0, "folder_disks": True},
            database={"url": f"sqlite:///{tmp / 'catalog.db'}"},
            recorders={"passwords": passwords, "priority_others_mb_s": 1000},
        )
        self.catalog = Catalog(self.config.database_path)
        self.catalog.migrate()
        self.store = Store([self.disk], 0)
        for d in self.store.disks:
            assert DiskBook(self.catalog, "T1", folder_disks=True).identify(d) is None
            d.prepare()
        self.store.prepare()
        self._locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self.services = Services(
            self.config,
            self.catalog,
            self.store,
            registry,
            AlarmBook(self.catalog),
            None,
            dock=self,
            priority=PriorityGate(1000.0),
        )
        self.stop = threading.Event()
        self.slots: dict[int, Slot] = {}
        self.results: dict[int, str] = {}
        self.threads: list[threading.Thread] = []

    # --- the station.ingest.collector.Dock the collectors report to ---------------------------

    def publish(
        self, slot: Slot, generation: int, fields: dict[str, Any], progress: bool = False
    ) -> None:
        if slot.generation == generation:
            slot.__dict__.update(fields)

    def registration_mode(self) -> str:
        return "auto"

    def docked_elsewhere(self, serial: str, port: int) -> int | None:
        return None

    def recorder_lock(self, serial: str) -> threading.Lock:
        return self._locks[serial]

    def end_priority(self, port: int, why: str) -> None:
        pass

    def make_room(self) -> None:
        pass

    @contextlib.contextmanager
    def expect_card(self, device: DockedDevice, generation: int) -> Iterator[Any]:
        """After SetMSDC the port's own card appears, whichever recorder was switched."""

        class Wait:
            def card(_self, serial: str | None = None) -> FolderCard:
                return FolderCard(self.cards[device.port])

        yield Wait()

    def dock(
        self,
        port: int,
        serial: str | None,
        card: Path,
        path: str | None = None,
        usb_id: tuple[int, int] = (0x1234, 0xABCD),
    ) -> Slot:
        self.cards[port] = card
        device = DockedDevice(
            port=port,
            key=f"usb:{port}",
            kind="usb",
            path=path or f"/nonexistent/port-{port}",
            vendor_id=usb_id[0],
            product_id=usb_id[1],
            serial=serial,
        )
        slot = self.slots[port] = Slot(port)
        slot.generation = 1
        c = Collector(self.services, slot, device, self.stop)

        def run() -> None:
            self.results[port] = c.run()

        t = threading.Thread(target=run, name=f"port{port}")
        self.threads.append(t)
        t.start()
        return slot

    def wait(self, what: str, cond: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(WAIT_S)
        self.catalog.close()

    def stored(self, officer_no: str, serial: str) -> dict[str, bytes]:
        base = self.disk / officer_no / serial
        if not base.is_dir():
            return {}
        return {f.name: f.read_bytes() for day in base.iterdir() for f in day.iterdir()}
