"""Adversarial review of the renovation (issue #14): the ports' loop-owned slots.

In process, with the real `Station` and its real `Ports` on a real asyncio loop run in a
thread (the loop that owns the slots); a collector's side is played from the test's
thread through the same `Dock` calls a `Collector` makes. Each test failed before its fix.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import StationProc, card_hashes, free_port, wait_for, write_config

from station.config import load_config
from station.devices.bus import PortChange
from station.drivers.base import DeviceGone, DockedDevice
from station.ingest.collector import SlotState
from station.runtime import Station
from station.sim.recorder import RecorderSpec


class Loop:
    """An asyncio loop on its own thread, like the station's; `busy()` holds it up."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="loop")
        self.thread.start()

    def call(self, work: Callable[[], Any]) -> Any:
        """Run `work` on the loop and return its result."""

        async def run() -> Any:
            return work()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def busy(self) -> threading.Event:
        """Hold the loop in a callback (a status rendering, a log wait) until released."""
        started, release = threading.Event(), threading.Event()

        def hold() -> None:
            started.set()
            release.wait(30)

        self.loop.call_soon_threadsafe(hold)
        assert started.wait(30)
        return release

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def ports_on_loop(tmp_path: Path) -> Iterator[tuple[Station, Loop]]:
    for d in ("disk1", "disk2", "bus"):
        (tmp_path / d).mkdir()
    station = Station(load_config(write_config(tmp_path, free_port())))
    station.catalog.migrate()
    loop = Loop()
    station.ports._loop = loop.loop  # as `_docked` sets it at the first docking
    try:
        yield station, loop
    finally:
        loop.close()
        station.log_writer.close()
        station.catalog.close()
        station._executor.shutdown(wait=False)


def _device(tmp_path: Path, port: int, key: str) -> DockedDevice:
    return DockedDevice(port=port, key=key, kind="simulated", path=str(tmp_path / key))


def test_clone_check_sees_a_recorder_just_identified_on_another_port(
    ports_on_loop: tuple[Station, Loop],
) -> None:
    station, loop = ports_on_loop
    ports = station.ports
    slot = ports.slots[3]
    release = loop.busy()  # the loop is doing something else for a moment
    try:
        # port 3's collector identified W000003 (Collector._collect publishes it, then
        # goes on to its registration); port 4's collector, same serial, checks for clones
        ports.publish(slot, slot.generation, {"state": SlotState.IDENTIFYING})
        ports.publish(slot, slot.generation, {"recorder": {"serial": "W000003"}})
        assert ports.docked_elsewhere("W000003", 4) == 3
    finally:
        release.set()


def test_a_stale_dockings_card_wait_does_not_swallow_the_next_dockings_unplug(
    ports_on_loop: tuple[Station, Loop], tmp_path: Path
) -> None:
    station, loop = ports_on_loop
    ports = station.ports
    slot = ports.slots[1]
    old, new = _device(tmp_path, 1, "a"), _device(tmp_path, 1, "b")
    old_generation = loop.call(lambda: slot.generation)

    def moved_on() -> None:  # what on_change does for an unplug and a new docking
        slot.reset()
        slot.reset()
        slot.state = SlotState.COLLECTING
        slot.recorder = {"serial": "W000009", "officer_no": "990001", "officer_name": "x"}

    loop.call(moved_on)
    # the old docking's collector, between two driver calls, goes on to SetMSDC
    # is refused: its docking is over
    with pytest.raises(DeviceGone), ports.expect_card(old, old_generation):
        pass
    loop.call(lambda: ports.on_change(PortChange(1, new, None)))  # the new one is pulled
    assert loop.call(lambda: slot.state) == SlotState.EMPTY
    assert loop.call(lambda: ports.removed_early(1)) is not None


def test_publications_of_an_old_docking_do_not_land_in_the_next(
    ports_on_loop: tuple[Station, Loop], tmp_path: Path
) -> None:
    """Held: an update queued by the old docking's collector, applied after the port's
    unplug and new docking, is dropped (the generation moved on)."""
    station, loop = ports_on_loop
    ports = station.ports
    slot = ports.slots[2]
    gen = loop.call(lambda: slot.generation)
    release = loop.busy()
    try:
        ports.publish(slot, gen, {"state": SlotState.COMPLETE, "files_done": 7})
        loop.loop.call_soon_threadsafe(slot.reset)  # queued after it: applied after it
    finally:
        release.set()
    # and one queued after the reset is dropped
    ports.publish(slot, gen, {"state": SlotState.COMPLETE, "files_done": 7})
    assert loop.call(lambda: (slot.state, slot.files_done)) == (SlotState.EMPTY, 0)


def test_storage_full_alarm_stays_while_a_recorder_waits_for_space(
    ports_on_loop: tuple[Station, Loop],
) -> None:
    from station.ingest.collector import Reason

    station, loop = ports_on_loop
    station.health.identify_disks()
    station.store.prepare()
    assert station.store.pick(0) is not None  # a 0-byte file fits: the check may clear
    ports = station.ports
    slot = ports.slots[5]
    release = loop.busy()
    try:
        # Collector._wait_for_space: the alarm, then the slot (through the loop)
        station.alarms.raise_("storage_full", "all store disks are full (test)")
        ports.publish(
            slot,
            slot.generation,
            {
                "state": SlotState.ERROR,
                "error": "storage full: files kept on the recorder",
                "reason": Reason.STORAGE_FULL,
            },
        )
        station.health.check_disks()  # the periodic disk check, on its worker thread
    finally:
        release.set()
    assert loop.call(ports.waiting_for_space) == [5]
    assert "storage_full" in {a.code for a in station.alarms.active()}


def test_swapping_recorders_on_a_port_shows_and_files_only_the_new_one(
    station: StationProc,
) -> None:
    """Held, through the real daemon: recorder A is pulled mid-collection and B docked on
    the same port at once (one rescan sees both); nothing of A's docking lands in B's
    window, B is complete only with all its own files stored under its own officer, and A
    is shown as removed early."""
    a = station.build(
        RecorderSpec(serial="R000001", officer_no="810001", files=4, imp=0, read_mb_s=1.0),
        seed=1,
    )
    b = station.build(
        RecorderSpec(serial="R000002", officer_no="820002", files=3, imp=0, size_mb=0.5),
        seed=2,
    )
    source_b = card_hashes(b)
    station.dock(2, a)
    wait_for(lambda: station.slot(2)["bytes_done"] > 500_000, 120, "A collecting")
    station.undock(2)
    station.dock(2, b)
    slot = station.wait_state(2, "complete")
    assert slot["recorder"]["serial"] == "R000002"
    assert slot["recorder"]["officer_no"] == "820002"
    assert (slot["files_done"], slot["files_total"]) == (len(source_b), len(source_b))
    assert slot["bytes_done"] == slot["bytes_total"] == sum(s for s, _ in source_b.values())
    items = station.api("/api/v1/files", serial="R000002")["items"]
    assert {i["sha256"] for i in items} == {h for _, h in source_b.values()}
    assert {i["officer_no"] for i in items} == {"820002"}
    for i in station.api("/api/v1/files", serial="R000001")["items"]:
        assert i["officer_no"] == "810001"
    early = station.query("SELECT serial FROM events WHERE kind = 'recorder_removed_early'")
    assert early == [("R000001",)]
