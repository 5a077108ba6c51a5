"""Eight recorders of one library family docked at once, through the real Collector.

The recorders are the Falcon-style and packed emulations of tests/native/
(test_vendor_families.py builds and describes them), driven by the real
vendor-library driver inside the real `Collector`, with a real catalog, a real
store disk and each port's own card folder: what ends up in the store shows
which recorder every port's session really read and switched.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from vendor_emu import PACKED, PASSWORD, build, get, put

from drivers.base import DockedDevice, DriverRegistry
from drivers.card import FolderCard
from drivers.vendor_library import VendorLibraryConfig, VendorLibraryDriver
from station import collector as collector_module
from station.alarms import AlarmBook
from station.catalog import Catalog
from station.collector import Collector, Services, Slot
from station.config import StationConfig
from station.disks import DiskBook
from station.ratelimit import PriorityGate
from station.store import Store

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

    def __init__(self, tmp: Path, registry: DriverRegistry) -> None:
        self.disk = tmp / "disk1"
        self.disk.mkdir()
        self.cards: dict[int, Path] = {}
        self.config = StationConfig(
            store={"disks": [self.disk], "min_free_mb": 0, "folder_disks": True},
            database={"url": f"sqlite:///{tmp / 'catalog.db'}"},
            recorders={"passwords": ["000000", "123456", PASSWORD], "priority_others_mb_s": 1000},
        )
        self.catalog = Catalog(self.config.database_path)
        self.catalog.migrate()
        self.store = Store([self.disk], 0)
        for d in self.store.disks:
            assert DiskBook(self.catalog, "T1", folder_disks=True).identify(d) is None
            d.prepare()
        self.store.prepare()
        locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self.services = Services(
            self.config,
            self.catalog,
            self.store,
            registry,
            AlarmBook(self.catalog),
            None,
            lambda **kw: None,
            lambda: "auto",
            lambda serial, port: None,
            self.expect_card,
            lambda: None,
            lambda serial: locks[serial],
            PriorityGate(1000.0),
            lambda port, why: None,
        )
        self.stop = threading.Event()
        self.slots: dict[int, Slot] = {}
        self.results: dict[int, str] = {}
        self.threads: list[threading.Thread] = []

    @contextlib.contextmanager
    def expect_card(self, device: DockedDevice) -> Iterator[Any]:
        """After SetMSDC the port's own card appears, whichever recorder was switched."""

        class Wait:
            def card(_self, serial: str | None = None) -> FolderCard:
                return FolderCard(self.cards[device.port])

        yield Wait()

    def dock(self, port: int, serial: str | None, card: Path, path: str | None = None) -> Slot:
        self.cards[port] = card
        device = DockedDevice(
            port=port,
            key=f"usb:{port}",
            kind="usb",
            path=path or f"/nonexistent/port-{port}",
            vendor_id=0x1234,
            product_id=0xABCD,
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


@pytest.fixture
def dock_factory(tmp_path: Path) -> Iterator[Callable[[DriverRegistry], Dock]]:
    docks: list[Dock] = []

    def make(registry: DriverRegistry) -> Dock:
        d = Dock(tmp_path, registry)
        docks.append(d)
        return d

    yield make
    for d in docks:
        d.close()


@pytest.fixture(scope="session")
def emu(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build(tmp_path_factory)


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    r = tmp_path / "recorders"
    r.mkdir()
    monkeypatch.setenv("RECORDERS_ROOT", str(r))
    monkeypatch.setattr(collector_module, "OPEN_RETRY_FIRST_S", 0.05)
    monkeypatch.setattr(collector_module, "OPEN_RETRY_MAX_S", 0.2)
    return r


def family(library: Path, **kw: Any) -> DriverRegistry:
    return DriverRegistry(
        [
            VendorLibraryDriver(
                VendorLibraryConfig(name="emu", usb_ids=["1234:abcd"], library=library, **kw)
            )
        ]
    )


def test_eight_falcon_recorders_docked_at_once(
    root: Path, emu: dict[str, Path], tmp_path: Path, dock_factory: Callable[..., Dock]
) -> None:
    """Each port collects its own recorder: by serial, not by library index."""
    dock = dock_factory(family(emu["falcon"]))
    ports = [5, 2, 8, 1, 7, 3, 6, 4]  # library index i is docked on ports[i]
    footage = {}
    for i, port in enumerate(ports):
        put(root, i)
        footage[i] = card_files(tmp_path / f"card{port}", f"10000{i}", f"B10000{i}")
    for i, port in enumerate(ports):
        dock.dock(port, f"B10000{i}", tmp_path / f"card{port}")
    dock.wait("8 collections", lambda: len(dock.results) == 8)
    assert dock.results == {p: "complete" for p in ports}, {
        p: s.error for p, s in dock.slots.items()
    }
    for i, port in enumerate(ports):
        assert dock.slots[port].recorder is not None
        assert dock.slots[port].recorder["serial"] == f"B10000{i}"
        assert dock.stored(f"10000{i}", f"B10000{i}") == footage[i]
        assert get(root, i)["msdc"] == b"1"  # SetMSDC went to this recorder
        assert not list((tmp_path / f"card{port}" / "DCIM" / "100ANDRO").iterdir())


def test_busy_library_port_is_retried_with_backoff(
    root: Path, emu: dict[str, Path], tmp_path: Path, dock_factory: Callable[..., Dock]
) -> None:
    """A one-recorder library in use for another port: the port waits and is retried."""
    registry = family(emu["falcon_single"])
    drv = registry.drivers[0]
    put(root, 0)
    other = DockedDevice(port=1, key="usb:1", kind="usb", path="/x", serial="B100000")
    session = drv.open(other, [PASSWORD])  # port 1 is being collected
    dock = dock_factory(registry)
    footage = card_files(tmp_path / "card2", "100001", "B100001")
    slot = dock.dock(2, "B100001", tmp_path / "card2")
    dock.wait("port 2 to wait", lambda: (slot.error or "").startswith("waiting: recorder busy"))
    assert slot.state == "identifying" and 2 not in dock.results
    # port 1 is done and undocked: the library now reaches port 2's recorder
    session.close()
    os.rename(root / "0", root / "gone")
    put(root, 0, **{**dict(serial="B100001", officer_no="100001", battery=61)})
    dock.wait("port 2's collection", lambda: 2 in dock.results)
    assert dock.results[2] == "complete", slot.error
    assert dock.stored("100001", "B100001") == footage


def test_another_recorder_answering_holds_the_port(
    root: Path, emu: dict[str, Path], tmp_path: Path, dock_factory: Callable[..., Dock]
) -> None:
    """The library reaches recorder B100000, port 2 docks B100001: held, nothing done."""
    put(root, 0)
    dock = dock_factory(family(emu["falcon_single"]))
    footage = card_files(tmp_path / "card2", "100001", "B100001")
    slot = dock.dock(2, "B100001", tmp_path / "card2")
    dock.wait("the hold", lambda: slot.state == "unregistered")
    assert "library answers for recorder B100000" in (slot.error or "")
    time.sleep(0.5)  # a few retries
    assert slot.state == "unregistered" and 2 not in dock.results
    dock.stop.set()
    dock.wait("the collector to stop", lambda: 2 in dock.results)
    assert dock.results[2] == "stopped"
    assert get(root, 0)["msdc"] == b"0"
    assert {f.name for f in (tmp_path / "card2" / "DCIM" / "100ANDRO").iterdir()} == set(footage)
    assert dock.stored("100000", "B100000") == {}


def test_wrong_password_reported_as_connect_failed_is_an_error_not_an_unplug(
    root: Path, emu: dict[str, Path], tmp_path: Path, dock_factory: Callable[..., Dock]
) -> None:
    node = Path("/sys/bus")
    if not node.is_dir():
        pytest.skip("no /sys")
    put(root, 0, password="999999")
    dock = dock_factory(family(emu["packed_in"], init_id_code="ZFY01", **PACKED))
    slot = dock.dock(1, "B100000", tmp_path / "card1", path=str(node))
    dock.wait("the end", lambda: 1 in dock.results)
    assert dock.results[1] == "error"  # "gone" would make the station re-dock it at once
    assert slot.error == "wrong device password"
