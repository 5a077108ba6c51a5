"""Eight recorders of one library family docked at once, through the real Collector.

The recorders are the Falcon-style and packed emulations of tests/native/
(test_vendor_families.py builds and describes them), driven by the real
vendor-library driver inside the real `Collector`, with a real catalog, a real
store disk and each port's own card folder: what ends up in the store shows
which recorder every port's session really read and switched.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dock_harness import Dock, card_files
from vendor_emu import PACKED, PASSWORD, build, get, put

from station.drivers.base import DockedDevice, DriverRegistry
from station.drivers.vendor_library import VendorLibraryConfig, VendorLibraryDriver
from station.ingest import collector as collector_module


@pytest.fixture
def dock_factory(tmp_path: Path) -> Iterator[Callable[[DriverRegistry], Dock]]:
    docks: list[Dock] = []

    def make(registry: DriverRegistry) -> Dock:
        d = Dock(tmp_path, registry, ["000000", "123456", PASSWORD])
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
    assert slot.error is None
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
    assert node.is_dir(), "no /sys"
    put(root, 0, password="999999")
    dock = dock_factory(family(emu["packed_in"], init_id_code="ZFY01", **PACKED))
    slot = dock.dock(1, "B100000", tmp_path / "card1", path=str(node))
    dock.wait("the end", lambda: 1 in dock.results)
    assert dock.results[1] == "error"  # "gone" would make the station re-dock it at once
    assert slot.error == "wrong device password"
