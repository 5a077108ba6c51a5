"""Adversarial review of the renovation and the ports / mirror changes (branch rev2).

Each test shows one defect found on the code as it is: it is marked xfail(strict=True), so
it fails today for the reason given and turns into an error once the defect is fixed (then
drop the mark). In process where possible: the real `Station` and its `Ports` on a real
asyncio loop run in a thread (the pattern of tests/test_review_reno.py), a collector's side
played from the test's thread through the same `Dock` calls a `Collector` makes.
"""

from __future__ import annotations

import os
import re
import threading
import time
import tomllib
from pathlib import Path

import pytest
from test_evidence_safety import new_disk, put_file, row, sidecar_of, store_of
from test_review_reno import Loop, _device, ports_on_loop  # noqa: F401  (the fixture)

from station.devices.bus import PortChange
from station.drivers.base import CardFile, DeviceGone
from station.ingest.collector import Collector, Interrupted, Reason, Services, SlotState
from station.runtime import Station

ROOT = Path(__file__).resolve().parents[1]
STATION = ROOT / "station"


# --- (a) the installed (non-editable) wheel -----------------------------------------------


def test_the_installed_package_carries_every_file_the_console_loads() -> None:
    with open(ROOT / "pyproject.toml", "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["station"]
    # setuptools' package-data globs: `*` stays inside one folder, as Path.glob's does
    shipped = {p for pat in patterns for p in STATION.glob(pat) if p.is_file()}
    static = STATION / "web" / "static"
    loaded = set()
    for page in static.glob("*.html"):
        for ref in re.findall(r'(?:src|href)="/static/([^"]+)"', page.read_text("utf-8")):
            loaded.add(static / ref)
    assert loaded, "the pages load files from /static/"
    missing = sorted(str(p.relative_to(ROOT)) for p in loaded - shipped)
    assert not missing, f"not in the wheel: {missing}"


# --- (b) the ports: a stale collector's publication and the `_latest` shadow ----------------


def _moved_on(station: Station, loop: Loop, port: int) -> tuple[int, int]:
    """The port's docking ends and a new one begins (on_change: reset, reset); the old and
    the new generation."""
    slot = station.ports.slots[port]
    old = loop.call(lambda: slot.generation)

    def moved_on() -> None:
        slot.reset()
        slot.reset()

    loop.call(moved_on)
    return old, loop.call(lambda: slot.generation)


def test_a_stale_collectors_publication_does_not_hide_the_new_docking_from_the_clone_check(
    ports_on_loop: tuple[Station, Loop],  # noqa: F811
) -> None:
    station, loop = ports_on_loop
    ports = station.ports
    slot = ports.slots[3]
    old, new = _moved_on(station, loop, 3)
    release = loop.busy()  # the loop is busy: nothing queued is applied yet
    try:
        # the new docking's collector identifies W000003
        ports.publish(slot, new, {"state": SlotState.IDENTIFYING})
        ports.publish(slot, new, {"recorder": {"serial": "W000003"}})
        assert ports.docked_elsewhere("W000003", 4) == 3  # seen (the shadow works)
        # the old docking's collector, still finishing a file, publishes its progress (it
        # checked `_current()` a moment before the loop reset the slot)
        ports.publish(slot, old, {"bytes_done": 123, "rate_samples": []})
        # port 4's collector docks the same serial and checks for a clone
        assert ports.docked_elsewhere("W000003", 4) == 3
    finally:
        release.set()


def test_a_stale_collectors_publication_does_not_clear_storage_full(
    ports_on_loop: tuple[Station, Loop],  # noqa: F811
) -> None:
    station, loop = ports_on_loop
    station.health.identify_disks()
    station.store.prepare()
    assert station.store.pick(0) is not None
    ports = station.ports
    slot = ports.slots[5]
    old, new = _moved_on(station, loop, 5)
    release = loop.busy()
    try:
        station.alarms.raise_("storage_full", "all store disks are full (test)")
        ports.publish(
            slot,
            new,
            {"state": SlotState.ERROR, "error": "storage full", "reason": Reason.STORAGE_FULL},
        )
        ports.publish(slot, old, {"bytes_done": 5, "rate_samples": []})  # the old docking
        station.health.check_disks()  # the periodic disk check, on its own thread
    finally:
        release.set()
    assert loop.call(ports.waiting_for_space) == [5]
    assert "storage_full" in {a.code for a in station.alarms.active()}


def test_storage_full_raised_by_a_collector_survives_a_disk_check_in_between(
    ports_on_loop: tuple[Station, Loop],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    station, loop = ports_on_loop
    station.health.identify_disks()
    station.store.prepare()
    ports = station.ports
    ports.make_room = lambda: None  # retention finds nothing to delete
    real_pick = station.store.pick
    monkeypatch.setattr(station.store, "pick", lambda n: real_pick(n) if n == 0 else None)
    real_raise = station.alarms.raise_

    def raise_then_check(code: str, message: str, subject: str = "") -> None:
        real_raise(code, message, subject)
        if code == "storage_full":  # the monitor's thread runs its disk check just now
            station.health.check_disks()

    monkeypatch.setattr(station.alarms, "raise_", raise_then_check)
    slot = ports.slots[2]
    loop.call(slot.reset)
    sv = Services(
        station.config, station.catalog, station.store, station.drivers, station.alarms,
        None, dock=ports, priority=ports.priority,
    )  # fmt: skip
    stop = threading.Event()
    collector = Collector(sv, slot, _device(tmp_path, 2, "k"), stop)

    class Alive:
        def alive(self) -> bool:
            return True

    failed: list[BaseException] = []

    def waits() -> None:
        try:
            cf = CardFile(b"DCIM/A.MP4", 10**6, 0.0)
            collector._wait_for_space(Alive(), cf, "test")  # type: ignore[arg-type]
        except Interrupted:
            pass
        except BaseException as e:
            failed.append(e)

    worker = threading.Thread(target=waits)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while loop.call(lambda: slot.reason) != Reason.STORAGE_FULL:
            assert not failed, failed
            assert time.monotonic() < deadline
            time.sleep(0.05)
        station.health.check_disks()  # the next periodic check keeps what is there
        assert "storage_full" in {a.code for a in station.alarms.active()}
    finally:
        stop.set()
        worker.join(30)


# --- (b) the card wait swallows the port's changes ------------------------------------------


def _identified_and_switching(
    station: Station, loop: Loop, tmp_path: Path, port: int, serial: str
) -> tuple[object, object]:
    """A collector identified `serial` on `port` and registered its card wait (SetMSDC)."""
    ports = station.ports
    slot = ports.slots[port]
    device = _device(tmp_path, port, "mtp")
    loop.call(slot.reset)
    gen = loop.call(lambda: slot.generation)
    ports.publish(slot, gen, {"state": SlotState.IDENTIFYING})
    ports.publish(slot, gen, {"recorder": {"serial": serial, "officer_no": "110001"}})
    wait = ports.expect_card(device, gen)
    wait.__enter__()
    return wait, device


@pytest.mark.xfail(
    strict=True,
    reason="a recorder pulled out during SetMSDC: on_change swallows its unplug while the "
    "card wait is registered and nothing settles the port after the wait ends, so the port "
    "keeps showing it and the clone check holds it when it is docked on another port",
)
def test_a_recorder_pulled_during_the_switch_does_not_stay_docked_as_a_ghost(
    ports_on_loop: tuple[Station, Loop],  # noqa: F811
    tmp_path: Path,
) -> None:
    station, loop = ports_on_loop
    ports = station.ports
    wait, device = _identified_and_switching(station, loop, tmp_path, 1, "W000001")
    # the recorder is pulled out for good (it never comes back as a disk)
    loop.call(lambda: ports.on_change(PortChange(1, device, None)))  # type: ignore[arg-type]
    # the collector's wait.card() times out (MountError): it leaves the wait, shows error
    wait.__exit__(None, None, None)  # type: ignore[attr-defined]
    gen = loop.call(lambda: ports.slots[1].generation)
    ports.publish(ports.slots[1], gen, {"state": SlotState.ERROR, "error": "did not come back"})
    loop.call(lambda: None)  # applied
    # the officer docks the recorder on port 2: it is not on port 1 any more
    assert ports.docked_elsewhere("W000001", 2) is None
    assert loop.call(lambda: ports.slots[1].state) == SlotState.EMPTY


@pytest.mark.xfail(
    strict=True,
    reason="another recorder docked on the port during a card wait is handed to the wait "
    "(came_back) and refused by same_recorder; its docking is never started, and the port "
    "shows the first recorder while the second sits in it uncollected",
)
def test_a_recorder_docked_during_anothers_card_wait_is_collected(
    ports_on_loop: tuple[Station, Loop],  # noqa: F811
    tmp_path: Path,
) -> None:
    station, loop = ports_on_loop
    ports = station.ports
    wait, device = _identified_and_switching(station, loop, tmp_path, 1, "W000001")
    other = _device(tmp_path, 1, "other-recorder")
    loop.call(lambda: ports.on_change(PortChange(1, device, None)))  # type: ignore[arg-type]
    loop.call(lambda: ports.on_change(PortChange(1, None, other)))
    # the collector's same_recorder() refuses it (NotThisRecorder): error, wait left
    wait.__exit__(None, None, None)  # type: ignore[attr-defined]
    gen = loop.call(lambda: ports.slots[1].generation)
    ports.publish(ports.slots[1], gen, {"state": SlotState.ERROR, "error": "not this recorder"})
    loop.call(lambda: None)
    shown = loop.call(lambda: (ports.slots[1].recorder or {}).get("serial"))
    assert shown != "W000001", "port 1 shows the recorder that left it"
    assert 1 in loop.call(lambda: dict(ports.workers)), "the docked recorder is not collected"


def test_a_card_wait_of_an_old_docking_is_refused(
    ports_on_loop: tuple[Station, Loop],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Checked, holds: the generation check of CardWait (no defect found here)."""
    station, loop = ports_on_loop
    old, _new = _moved_on(station, loop, 6)
    with pytest.raises(DeviceGone), station.ports.expect_card(_device(tmp_path, 6, "x"), old):
        pass
    assert 6 not in station.ports.card_waits


# --- (c) the mirror: a shared second copy ---------------------------------------------------


def test_retiring_a_disk_keeps_every_protected_file_that_shares_a_second_copy(
    store_env, tmp_path: Path
) -> None:
    import threading as th

    from station.health.alarms import AlarmBook
    from station.store.identity import DiskBook
    from station.store.mirror import Mirror, mirror_path

    catalog, disk = store_env
    disk2 = new_disk(catalog, tmp_path / "disk2")
    mirror = Mirror(catalog, store_of(catalog, disk, disk2), AlarmBook(catalog), stop=th.Event())
    data = os.urandom(50_000)
    # the same bytes twice (the recorder renamed the clip when it was marked IMP, and the
    # card was collected again before it was cleared): both protected, one under a hold
    a = put_file(catalog, disk, "100001_B1_20200101080000_0001.MP4", data=data, level="evidence")
    b = put_file(catalog, disk, "100001_B1_20200101080000_0001_IMP.MP4", data=data,
                 important=True, legal_hold="XS-9")  # fmt: skip
    mirror.round()
    assert sidecar_of(catalog, a).mirror_disk == sidecar_of(catalog, b).mirror_disk == str(disk2)
    assert mirror_path(disk2, row(catalog, a).sha256).exists()  # one copy, shared
    book = DiskBook(catalog, "T1")
    old = next(u for u, p in book.known().items() if p == str(disk))
    os.rename(disk, tmp_path / "dead-disk")  # the disk dies
    disk.mkdir()
    book.adopt(mirror.store.disks[0], "900001")  # its replacement
    assert book.retire(old, "900001") == 0  # nothing lost: both had their second copy
    assert row(catalog, a).deleted_at is None
    assert row(catalog, b).deleted_at is None and row(catalog, b).legal_hold == "XS-9"
