"""UdevBus with faked udev: a pipe-backed monitor and fake usb_device objects.

As in pyudev's own tests, the fake monitor's fileno() is the read end of a real
os.pipe(), so the real asyncio loop and the real PortWatcher run unchanged:
an event is queued and a byte written to the pipe wakes the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable

import pytest

from station.devices.bus import PortChange, PortWatcher
from station.devices.udev import UdevBus

DEBOUNCE_S = 0.05
WAIT_S = 20.0  # generous: a slow, busy machine must not fail these tests
CONTEXT = object()  # stands in for a pyudev.Context; the fakes never use it

ROOT = "/sys/devices/pci0000:00/0000:00:14.0/usb1"
PCI_PATH = "pci-0000:00:14.0-usb-0:"


# -- fake udev -----------------------------------------------------------------


class FakeAttributes:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def asstring(self, name):
        return self.values[name]  # KeyError when absent, as pyudev does


class FakeDevice:
    """What UdevBus reads of a pyudev.Device (a usb_device)."""

    def __init__(
        self,
        sys_name,
        *,
        vid="2c4e",
        pid="0101",
        serial="SN0001",
        devnum=5,
        busnum=1,
        hub=False,
        id_path=True,
        action="add",
    ) -> None:
        self.sys_name = sys_name
        # sysfs nests a device under its parent hub: 1-1.2.1 lives in 1-1.2/.
        parts = sys_name.split(".")
        chain = [".".join(parts[: i + 1]) for i in range(len(parts))]
        self.sys_path = "/".join([ROOT, *chain])
        self.subsystem = "usb"
        self.device_type = "usb_device"
        self.action = action
        self.properties: dict[str, str] = {
            "BUSNUM": f"{busnum:03d}",
            "DEVNUM": f"{devnum:03d}",
            "DEVNAME": f"/dev/bus/usb/{busnum:03d}/{devnum:03d}",
            "DEVTYPE": "usb_device",
            "SUBSYSTEM": "usb",
            "ID_VENDOR_ID": vid,
            "ID_MODEL_ID": pid,
            "ID_SERIAL_SHORT": serial,
            "ID_SERIAL": f"Vendor_Recorder_{serial}",
            "IRRELEVANT": "not copied",
        }
        if id_path:
            port_chain = sys_name.split("-", 1)[1]
            self.properties["ID_PATH"] = PCI_PATH + port_chain
        self.attributes = FakeAttributes(
            {
                "idVendor": vid,
                "idProduct": pid,
                "serial": serial,
                "busnum": str(busnum),
                "devnum": str(devnum),
                "bDeviceClass": "09" if hub else "00",
            }
        )

    def __repr__(self) -> str:
        return f"FakeDevice({self.sys_name!r})"


class FakeMonitor:
    """A pyudev.Monitor whose socket is a pipe: one byte per queued event."""

    def __init__(self, udev: FakeUdev) -> None:
        self.udev = udev
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.filters: list[tuple[str, str | None]] = []
        self.started = False
        self.closed = False
        self.events: list[object] = []
        self.lock = threading.Lock()
        self.polls: list[object] = []
        self.fail_next_poll: BaseException | None = None

    def filter_by(self, subsystem, device_type=None):
        self.filters.append((subsystem, device_type))

    def start(self):
        self.started = True
        if self.udev.on_monitor_start is not None:
            self.udev.on_monitor_start()

    def fileno(self):
        return self.read_fd

    def deliver(self, event):
        # A netlink socket only queues events once receiving is enabled.
        if not self.started or self.closed:
            return
        with self.lock:
            self.events.append(event)
        os.write(self.write_fd, b"!")

    def poll(self, timeout=None):
        self.polls.append(timeout)
        assert timeout == 0, "the bus must never block the loop"
        if self.fail_next_poll is not None:
            error, self.fail_next_poll = self.fail_next_poll, None
            os.read(self.read_fd, 1)
            with self.lock:
                self.events.pop(0)
            raise error
        with self.lock:
            if not self.events:
                return None
            os.read(self.read_fd, 1)
            return self.events.pop(0)

    def pending(self) -> int:
        with self.lock:
            return len(self.events)

    def close(self):
        self.closed = True
        os.close(self.read_fd)
        os.close(self.write_fd)


class FakeUdev:
    """The USB devices present, and the monitors told about changes to them."""

    def __init__(self) -> None:
        self.devices: list[FakeDevice] = []
        self.monitors: list[FakeMonitor] = []
        self.contexts: list[object] = []
        self.on_monitor_start: Callable[[], None] | None = None
        self.lock = threading.Lock()

    def monitor_factory(self, context):
        self.contexts.append(context)
        monitor = FakeMonitor(self)
        self.monitors.append(monitor)
        return monitor

    def enumerate(self):
        with self.lock:
            return list(self.devices)

    def emit(self, device, action="add"):
        for monitor in self.monitors:
            monitor.deliver(FakeEvent(action, device))

    def plug(self, device, *, events=1):
        with self.lock:
            self.devices.append(device)
        for _ in range(events):
            self.emit(device, "add")

    def unplug(self, device):
        with self.lock:
            self.devices.remove(device)
        self.emit(device, "remove")

    @property
    def monitor(self) -> FakeMonitor:
        (monitor,) = self.monitors
        return monitor


class FakeEvent:
    def __init__(self, action, device) -> None:
        self.action = action
        self.sys_path = device.sys_path


def make_bus(udev, port_map=None, **kwargs):
    if port_map is None:
        port_map = {1: "1-1", 2: "1-2", 3: "1-3"}
    return UdevBus(
        port_map,
        context=CONTEXT,
        monitor_factory=udev.monitor_factory,
        enumerate_devices=udev.enumerate,
        **kwargs,
    )


# -- helpers -------------------------------------------------------------------


async def wait_until(condition, what="condition", timeout=WAIT_S):
    """Poll `condition` until it holds; fail after a generous `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Station:
    """A real PortWatcher on a UdevBus over fake udev, recording changes."""

    def __init__(self, udev, **bus_kwargs) -> None:
        self.udev = udev
        self.bus = make_bus(udev, **bus_kwargs)
        self.changes: list[PortChange] = []
        self.watcher = PortWatcher(self.bus, self.changes.append, debounce_s=DEBOUNCE_S)

    async def __aenter__(self) -> Station:
        await self.watcher.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.watcher.stop()

    async def settle(self):
        """Wait until every event is read and every rescan it scheduled has run.

        Once the events are drained, the reader has poked; the debounce timer it
        armed is due before the sleep below ends, and its rescan takes the scan
        lock before ours. So afterwards nothing is pending, the snapshot matches
        the fake hardware, and no change can come unless the hardware changes.
        This holds however slow the machine is: it rests on ordering, not speed.
        """
        monitor = self.udev.monitor
        await wait_until(lambda: monitor.pending() == 0, "the monitor to be drained")
        await asyncio.sleep(DEBOUNCE_S * 2)
        await self.watcher.rescan()

    async def wait_changes(self, count):
        await wait_until(lambda: len(self.changes) >= count, f"{count} port change(s)")
        await self.settle()
        return list(self.changes)


# -- the watcher driven by udev events ---------------------------------------------


def test_plug_and_unplug_on_a_mapped_port():
    async def main():
        udev = FakeUdev()
        async with Station(udev) as station:
            assert station.changes == []
            recorder = FakeDevice("1-3", serial="ZFY0003")
            udev.plug(recorder)
            (change,) = await station.wait_changes(1)
            assert change.port == 3
            assert change.old is None
            assert change.new is not None
            assert change.new.kind == "usb"
            assert change.new.path == recorder.sys_path
            assert (change.new.vendor_id, change.new.product_id) == (0x2C4E, 0x0101)
            assert change.new.serial == "ZFY0003"

            udev.unplug(recorder)
            changes = await station.wait_changes(2)
            assert len(changes) == 2
            assert changes[1] == PortChange(port=3, old=change.new, new=None)

    asyncio.run(main())


def test_a_burst_of_duplicate_events_is_one_change():
    async def main():
        udev = FakeUdev()
        async with Station(udev) as station:
            udev.plug(FakeDevice("1-2"), events=5)
            await wait_until(lambda: station.changes, "the change")
            await station.settle()
            assert [(c.port, c.old, c.new is not None) for c in station.changes] == [
                (2, None, True)
            ]

    asyncio.run(main())


def test_events_spread_over_several_wakeups_are_debounced():
    async def main():
        udev = FakeUdev()
        async with Station(udev) as station:
            recorder = FakeDevice("1-1")
            udev.plug(recorder)
            for _ in range(4):
                await asyncio.sleep(0)  # let the reader run, and poke, between events
                udev.emit(recorder, "change")
            changes = await station.wait_changes(1)
            assert [(c.port, c.old) for c in changes] == [(1, None)]

    asyncio.run(main())


def test_re_enumeration_on_the_same_port_is_one_change_with_old_and_new():
    async def main():
        udev = FakeUdev()
        async with Station(udev) as station:
            vendor_mode = FakeDevice("1-3", pid="0101", devnum=7)
            udev.plug(vendor_mode)
            (first,) = await station.wait_changes(1)

            # SetMSDC: the recorder drops off and comes back as mass storage with
            # a new device number, all before the debounce expires.
            mass_storage = FakeDevice("1-3", pid="0102", devnum=8)
            udev.unplug(vendor_mode)
            udev.plug(mass_storage)
            changes = await station.wait_changes(2)
            assert len(changes) == 2
            second = changes[1]
            assert second.port == 3
            assert second.old == first.new
            assert second.new is not None
            assert second.new.product_id == 0x0102
            assert second.old.key != second.new.key
            assert second.old.path == second.new.path

    asyncio.run(main())


def test_replug_with_identical_ids_but_new_devnum_is_a_new_key():
    async def main():
        udev = FakeUdev()
        async with Station(udev) as station:
            before = FakeDevice("1-1", devnum=9)
            udev.plug(before)
            await station.wait_changes(1)
            after = FakeDevice("1-1", devnum=10)
            udev.unplug(before)
            udev.plug(after)
            changes = await station.wait_changes(2)
            assert changes[1].old is not None
            assert changes[1].new is not None
            assert changes[1].old.key != changes[1].new.key

    asyncio.run(main())


def test_a_device_on_an_unmapped_port_is_ignored(caplog):
    async def main():
        udev = FakeUdev()
        async with Station(udev) as station:
            udev.plug(FakeDevice("1-7"))  # a keyboard, say
            udev.plug(FakeDevice("2-1"))  # same port number, other bus
            udev.plug(FakeDevice("1-10"))  # "1-1" is a prefix, but not a parent
            await station.settle()
            assert station.changes == []
            assert station.watcher.snapshot == {}
            # A mapped device afterwards still comes through.
            udev.plug(FakeDevice("1-2"))
            changes = await station.wait_changes(1)
            assert [c.port for c in changes] == [2]

    with caplog.at_level(logging.DEBUG, logger="station.devices.udev"):
        asyncio.run(main())
    assert "on no mapped port" in caplog.text


def test_a_device_plugged_between_start_and_the_first_scan_is_found():
    async def main():
        udev = FakeUdev()
        recorder = FakeDevice("1-2")
        # Plugged the moment the monitor starts, before the bus's first scan.
        udev.on_monitor_start = lambda: udev.plug(recorder)
        async with Station(udev) as station:
            assert udev.monitor.started
            changes = await station.wait_changes(1)
            assert [(c.port, c.old, c.new.path) for c in changes] == [(2, None, recorder.sys_path)]

    asyncio.run(main())


def test_a_device_plugged_during_the_first_enumeration_is_found():
    async def main():
        udev = FakeUdev()
        recorder = FakeDevice("1-1")
        first = True

        def enumerate_racing_a_plug():
            # The first enumeration has already passed the port when the recorder
            # arrives: only the udev event, read by a monitor installed before the
            # scan began, can tell the station about it.
            nonlocal first
            seen = udev.enumerate()
            if first:
                first = False
                assert udev.monitor.started, "the monitor must start before the first scan"
                udev.plug(recorder)
            return seen

        bus = UdevBus(
            {1: "1-1"},
            context=CONTEXT,
            monitor_factory=udev.monitor_factory,
            enumerate_devices=enumerate_racing_a_plug,
        )
        changes: list[PortChange] = []
        watcher = PortWatcher(bus, changes.append, debounce_s=DEBOUNCE_S)
        await watcher.start()
        try:
            assert changes == []
            await wait_until(lambda: changes, "the late recorder")
            await wait_until(lambda: udev.monitor.pending() == 0, "the monitor to be drained")
            await asyncio.sleep(DEBOUNCE_S * 2)
            await watcher.rescan()
            assert [(c.port, c.old, c.new.path) for c in changes] == [(1, None, recorder.sys_path)]
        finally:
            watcher.stop()

    asyncio.run(main())


def test_ports_mapped_by_udev_id_path():
    async def main():
        udev = FakeUdev()
        port_map = {4: PCI_PATH + "1.2", 5: PCI_PATH + "1.3"}
        async with Station(udev, port_map=port_map) as station:
            # The same physical port seen on the USB 3 bus: other sys_name, same ID_PATH.
            udev.plug(FakeDevice("2-1.3", busnum=2))
            udev.plug(FakeDevice("1-1.2"))
            changes = await station.wait_changes(2)
            assert sorted(c.port for c in changes) == [4, 5]
            on_5 = station.watcher.snapshot[5]
            assert on_5.properties["ID_PATH"] == PCI_PATH + "1.3"
            assert on_5.properties["STATION_PORT_PATH"] == PCI_PATH + "1.3"

    asyncio.run(main())


def test_a_device_behind_a_hub_below_a_mapped_port_is_on_that_port():
    async def main():
        udev = FakeUdev()
        async with Station(udev, port_map={6: "1-4"}) as station:
            dock_hub = FakeDevice("1-4", hub=True, vid="05e3", pid="0608")
            udev.plug(dock_hub)
            await station.settle()
            assert station.changes == []  # an empty dock hub is an empty port

            recorder = FakeDevice("1-4.1", serial="BEHINDHUB")
            udev.plug(recorder)
            (change,) = await station.wait_changes(1)
            assert change.port == 6
            assert change.new is not None
            assert change.new.serial == "BEHINDHUB"
            assert change.new.path == recorder.sys_path

            udev.unplug(recorder)
            changes = await station.wait_changes(2)
            assert changes[1].port == 6
            assert changes[1].new is None

    asyncio.run(main())


def test_stop_removes_the_reader_and_closes_the_monitor():
    async def main():
        udev = FakeUdev()
        pokes = []
        bus = make_bus(udev)
        bus.start(asyncio.get_running_loop(), lambda: pokes.append(1))
        monitor = udev.monitor
        udev.emit(FakeDevice("1-1"))
        await wait_until(lambda: pokes, "a poke")
        bus.stop()
        assert monitor.closed
        bus.stop()  # twice is harmless
        await asyncio.sleep(DEBOUNCE_S)
        assert pokes == [1]

    asyncio.run(main())


# -- the reader callback ---------------------------------------------------------------


def test_monitor_is_set_up_for_usb_and_block_events():
    async def main():
        udev = FakeUdev()
        bus = make_bus(udev)
        bus.start(asyncio.get_running_loop(), lambda: None)
        try:
            assert udev.contexts == [CONTEXT]
            assert set(udev.monitor.filters) == {("usb", None), ("block", None)}
            assert udev.monitor.started
        finally:
            bus.stop()

    asyncio.run(main())


def test_one_wakeup_drains_every_event_and_pokes_once():
    async def main():
        udev = FakeUdev()
        pokes = []
        bus = make_bus(udev)
        bus.start(asyncio.get_running_loop(), lambda: pokes.append(1))
        try:
            device = FakeDevice("1-1")
            for _ in range(5):  # all queued before the loop gets a chance to run
                udev.emit(device, "change")
            await wait_until(lambda: udev.monitor.pending() == 0, "the events to be read")
            await asyncio.sleep(0.05)
            assert pokes == [1]
            assert all(timeout == 0 for timeout in udev.monitor.polls)
        finally:
            bus.stop()

    asyncio.run(main())


def test_the_reader_survives_a_failing_poll_and_a_failing_poke(caplog):
    async def main():
        udev = FakeUdev()
        pokes = []

        def poke():
            pokes.append(1)
            if len(pokes) == 2:
                raise RuntimeError("subscriber bug")

        bus = make_bus(udev)
        bus.start(asyncio.get_running_loop(), poke)
        try:
            device = FakeDevice("1-1")
            # Lost events (ENOBUFS): still worth a rescan.
            udev.monitor.fail_next_poll = OSError(105, "No buffer space available")
            udev.emit(device)
            await wait_until(lambda: len(pokes) == 1, "a poke after a failed read")
            udev.emit(device)
            await wait_until(lambda: len(pokes) == 2, "the failing poke")
            udev.emit(device)
            await wait_until(lambda: len(pokes) == 3, "a poke after the failing one")
        finally:
            bus.stop()

    with caplog.at_level(logging.ERROR, logger="station.devices.udev"):
        asyncio.run(main())
    assert "reading udev events failed" in caplog.text
    assert "bus poke failed" in caplog.text


# -- scan() on its own --------------------------------------------------------------


def scan(devices, port_map):
    return UdevBus(
        port_map,
        context=CONTEXT,
        monitor_factory=FakeUdev().monitor_factory,
        enumerate_devices=lambda: devices,
    ).scan()


def test_scan_builds_the_docked_device():
    recorder = FakeDevice("1-3", vid="2C4E", pid="01a0", serial="ZFY9", devnum=12)
    (docked,) = scan([recorder], {3: "1-3"}).values()
    assert docked.port == 3
    assert docked.kind == "usb"
    assert docked.path == recorder.sys_path
    assert (docked.vendor_id, docked.product_id) == (0x2C4E, 0x01A0)
    assert docked.serial == "ZFY9"
    assert recorder.sys_path in docked.key
    assert docked.properties["ID_SERIAL_SHORT"] == "ZFY9"
    assert docked.properties["DEVNUM"] == "012"
    assert docked.properties["USB_PORT"] == "1-3"
    assert "IRRELEVANT" not in docked.properties
    assert all(isinstance(v, str) for v in docked.properties.values())


def test_scan_is_stable_for_an_unchanged_device():
    recorder = FakeDevice("1-3")
    assert scan([recorder], {3: "1-3"}) == scan([recorder], {3: "1-3"})


def test_scan_falls_back_to_sysfs_attributes():
    recorder = FakeDevice("1-1", vid="1234", pid="abcd", serial="ATTR1")
    for name in ("ID_VENDOR_ID", "ID_MODEL_ID", "ID_SERIAL_SHORT", "BUSNUM", "DEVNUM"):
        del recorder.properties[name]
    (docked,) = scan([recorder], {1: "1-1"}).values()
    assert (docked.vendor_id, docked.product_id, docked.serial) == (0x1234, 0xABCD, "ATTR1")
    # The key from sysfs attributes spells busnum/devnum as udev does.
    assert docked.key == scan([FakeDevice("1-1", pid="abcd")], {1: "1-1"})[1].key


def test_scan_without_a_serial_or_with_junk_ids():
    recorder = FakeDevice("1-1", vid="zz", serial="")
    del recorder.attributes.values["serial"]
    (docked,) = scan([recorder], {1: "1-1"}).values()
    assert docked.vendor_id is None
    assert docked.serial is None


def test_the_shallowest_device_on_a_port_wins():
    # A recorder with its own internal hub: the hub chip is skipped, and of the
    # recorder's functions behind it the shallowest, then the first, is the port's.
    internal_hub = FakeDevice("1-2", hub=True, vid="05e3")
    function_b = FakeDevice("1-2.2", serial="B")
    function_a = FakeDevice("1-2.1", serial="A")
    deeper = FakeDevice("1-2.1.1", serial="DEEP")
    for devices in (
        [deeper, function_b, internal_hub, function_a],
        [function_a, internal_hub, function_b, deeper],
    ):
        assert scan(devices, {2: "1-2"})[2].serial == "A"
    assert scan([deeper, internal_hub], {2: "1-2"})[2].serial == "DEEP"
    assert scan([internal_hub], {2: "1-2"}) == {}


def test_a_recorder_directly_on_the_port_beats_anything_behind_it():
    recorder = FakeDevice("1-2", serial="TOP")
    child = FakeDevice("1-2.1", serial="CHILD")
    assert scan([child, recorder], {2: "1-2"})[2].serial == "TOP"


def test_nested_mapped_ports_pick_the_most_specific():
    port_map = {1: "1-1", 2: "1-1.4"}
    devices = [FakeDevice("1-1.4.1", serial="X"), FakeDevice("1-1.3", serial="Y")]
    found = scan(devices, port_map)
    assert (found[1].serial, found[2].serial) == ("Y", "X")


def test_scan_skips_a_device_that_vanishes_mid_read():
    class GoneProperties:
        def get(self, name, default=None):
            raise OSError(19, "No such device")

    vanishing = FakeDevice("1-1")
    vanishing.properties = GoneProperties()
    found = scan([vanishing, FakeDevice("1-2")], {1: "1-1", 2: "1-2"})
    assert list(found) == [2]


def test_scan_ignores_interfaces_and_other_subsystems():
    interface = FakeDevice("1-1")
    interface.device_type = "usb_interface"
    block = FakeDevice("1-2")
    block.subsystem = "block"
    assert scan([interface, block], {1: "1-1", 2: "1-2"}) == {}


def test_locate():
    bus = UdevBus({1: "1-1", 2: PCI_PATH + "2"}, context=CONTEXT)
    assert bus.locate("1-1") == (1, 0)
    assert bus.locate("1-1.3.2") == (1, 2)
    assert bus.locate("1-11") is None
    assert bus.locate("2-1") is None
    assert bus.locate("3-2", PCI_PATH + "2") == (2, 0)
    assert bus.locate("3-2.1", PCI_PATH + "2.1") == (2, 1)


def test_port_paths_must_be_given():
    with pytest.raises(ValueError, match="port 3"):
        UdevBus({3: " "})


# -- the real pyudev, where this machine allows it -------------------------------------


def test_real_pyudev_scan_and_monitor():
    """The default enumeration and monitor, against whatever udev this machine has."""
    pyudev = pytest.importorskip("pyudev")
    try:
        pyudev.Context()
    except Exception as error:  # no libudev
        pytest.skip(f"no usable libudev: {error}")
    bus = UdevBus({1: "99-9.9.9"})
    assert bus.scan() == {}

    async def main():
        try:
            bus.start(asyncio.get_running_loop(), lambda: None)
        except OSError as error:  # no netlink in this sandbox
            pytest.skip(f"no udev netlink monitor: {error}")
        bus.stop()

    asyncio.run(main())
