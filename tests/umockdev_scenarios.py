"""Tier-1 udev scenarios: the real UdevBus and PortWatcher on real pyudev, under umockdev.

Run as ``umockdev-wrapper <venv python> tests/umockdev_scenarios.py <scenario>``
(tests/test_udev_umockdev.py does). umockdev's preload library redirects
libudev's sysfs and udev database reads into a testbed folder and turns its
netlink socket into one the testbed sends uevents to, so pyudev's Context,
enumeration and Monitor are the real ones, unchanged; only the USB tree is made
up: a PCI xHCI controller, its root hub ``usb1`` and a seven-port dock hub
``1-1``, on which recorders are plugged and unplugged.

Each scenario asserts the exact PortChange sequence the real PortWatcher
reports, prints one JSON object on stdout and exits 0; on a failed check it
prints the reason (and what was seen) on stderr and exits 1.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyudev  # noqa: E402

from station.devices.bus import PortChange, PortWatcher  # noqa: E402
from station.devices.udev import UdevBus  # noqa: E402
from station.drivers.base import DockedDevice  # noqa: E402

DEBOUNCE_S = 0.05
WAIT_S = 10.0  # generous: a slow, busy machine must not fail these scenarios
SCENARIO_TIMEOUT_S = 25.0

CONTROLLER = "0000:00:14.0"
ID_PATH_PREFIX = f"pci-{CONTROLLER}-usb-0:"
# Ports 1, 3 and 4 by kernel port name, port 2 by udev ID_PATH: both styles on real pyudev.
PORT_MAP = {1: "1-1.1", 2: ID_PATH_PREFIX + "1.2", 3: "1-1.3", 4: "1-1.4"}

VENDOR = 0x2C4E
PID_VENDOR_MODE = 0x0101  # the recorder before SetMSDC: a vendor-specific interface
PID_MASS_STORAGE = 0x0102  # the same recorder re-enumerated as a USB disk


class ScenarioFailed(Exception):
    """A check failed: the message says which and what was seen."""


def check(condition: object, message: str) -> None:
    """Fail the scenario with `message` unless `condition` holds (asserts may be stripped)."""
    if not condition:
        raise ScenarioFailed(message)


def now() -> float:
    """The clock every timestamp here uses (the event loop's clock too)."""
    return time.monotonic()


# -- umockdev --------------------------------------------------------------------


def load_umockdev() -> Any:
    """The UMockdev GI module, or a ScenarioFailed saying precisely what is missing."""
    if "libumockdev-preload" not in os.environ.get("LD_PRELOAD", ""):
        raise ScenarioFailed(
            "not running under umockdev-wrapper (LD_PRELOAD has no libumockdev-preload)"
        )
    try:
        import gi

        gi.require_version("UMockdev", "1.0")
        from gi.repository import UMockdev
    except (ImportError, ValueError) as error:
        raise ScenarioFailed(
            f"cannot load the UMockdev GI bindings from {sys.executable}: {error!r} "
            "(needs Debian's python3-gi and gir1.2-umockdev-1.0, and a venv made from "
            "/usr/bin/python3 with --system-site-packages)"
        ) from error
    return UMockdev


def _pairs(values: dict[str, object]) -> list[str]:
    """A {name: value} dict as the flat [name, value, ...] list umockdev takes."""
    flat: list[str] = []
    for name, value in values.items():
        flat += [name, str(value)]
    return flat


@dataclass
class Plugged:
    """Sysfs paths of one plugged device and everything below it, parents first."""

    sys_name: str
    devnum: int
    paths: list[str]

    @property
    def sys_path(self) -> str:
        """The usb_device's own sysfs path."""
        return self.paths[0]


class Dock:
    """A umockdev testbed holding an xHCI controller, its root hub and a dock hub on 1-1."""

    def __init__(self, umockdev: Any) -> None:
        self.testbed = umockdev.Testbed.new()
        self._devnums: dict[int, int] = {}
        self._disks = 0
        self.pci = self.testbed.add_device(
            "pci",
            f"pci0000:00/{CONTROLLER}",
            None,
            _pairs({"vendor": "0x8086", "device": "0xa36d", "class": "0x0c0330"}),
            _pairs({"DRIVER": "xhci_hcd", "PCI_SLOT_NAME": CONTROLLER, "PCI_CLASS": "C0330"}),
        )
        self.root_hub = self._usb_device(
            "usb1", self.pci, vid=0x1D6B, pid=0x0002, serial=CONTROLLER, hub=True
        ).sys_path
        self.dock_hub = self._usb_device("1-1", self.root_hub, vid=0x05E3, pid=0x0610, hub=True)
        # Proof that libudev reads the testbed, not the host's /sys.
        found = [d.sys_path for d in pyudev.Context().list_devices(subsystem="usb")]
        check(
            self.dock_hub.sys_path in found,
            f"pyudev does not see the testbed (umockdev not redirecting sysfs?): {found}",
        )

    def close(self) -> None:
        """Drop the testbed (umockdev deletes its folder)."""
        self.testbed = None

    # -- building devices --------------------------------------------------------

    def _next_devnum(self, busnum: int) -> int:
        self._devnums[busnum] = self._devnums.get(busnum, 0) + 1
        return self._devnums[busnum]

    def _usb_device(
        self,
        sys_name: str,
        parent: str,
        *,
        vid: int,
        pid: int,
        serial: str | None = None,
        hub: bool = False,
        interface_class: int = 0xFF,
        manufacturer: str = "Generic",
        product: str = "USB Device",
    ) -> Plugged:
        """Add one usb_device, as the kernel and udev describe it; it emits `add`."""
        if sys_name.startswith("usb"):
            busnum, chain = int(sys_name[3:]), "0"
        else:
            bus, chain = sys_name.split("-", 1)
            busnum = int(bus)
        devnum = self._next_devnum(busnum)
        device_class = 0x09 if hub else 0x00
        interfaces = ":090000:" if hub else f":{interface_class:02x}0000:"
        id_path = ID_PATH_PREFIX + chain if not sys_name.startswith("usb") else f"pci-{CONTROLLER}"
        attributes: dict[str, object] = {
            "idVendor": f"{vid:04x}",
            "idProduct": f"{pid:04x}",
            "bcdDevice": "0100",
            "bDeviceClass": f"{device_class:02x}",
            "bDeviceSubClass": "00",
            "bDeviceProtocol": "01" if hub else "00",
            "bNumConfigurations": "1",
            "bNumInterfaces": " 1",
            "bConfigurationValue": "1",
            "busnum": str(busnum),
            "devnum": str(devnum),
            "devpath": chain,
            "speed": "480",
            "version": " 2.00",
            "maxchild": "7" if hub else "0",
            "manufacturer": manufacturer,
            "product": product,
        }
        properties: dict[str, object] = {
            "DEVTYPE": "usb_device",
            "DRIVER": "usb",
            "PRODUCT": f"{vid:x}/{pid:x}/100",
            "TYPE": f"{device_class}/0/{1 if hub else 0}",
            "BUSNUM": f"{busnum:03d}",
            "DEVNUM": f"{devnum:03d}",
            "DEVNAME": f"/dev/bus/usb/{busnum:03d}/{devnum:03d}",
            "MAJOR": "189",
            "MINOR": str((busnum - 1) * 128 + devnum - 1),
            "ID_BUS": "usb",
            "ID_VENDOR": manufacturer,
            "ID_VENDOR_ENC": manufacturer,
            "ID_VENDOR_ID": f"{vid:04x}",
            "ID_MODEL": product.replace(" ", "_"),
            "ID_MODEL_ENC": product.replace(" ", "\\x20"),
            "ID_MODEL_ID": f"{pid:04x}",
            "ID_REVISION": "0100",
            "ID_USB_INTERFACES": interfaces,
            "ID_PATH": id_path,
            "ID_PATH_TAG": id_path.replace(":", "_").replace(".", "_"),
        }
        if serial is not None:
            attributes["serial"] = serial
            properties["ID_SERIAL_SHORT"] = serial
            properties["ID_SERIAL"] = f"{manufacturer}_{product.replace(' ', '_')}_{serial}"
        path = self.testbed.add_device(
            "usb", sys_name, parent, _pairs(attributes), _pairs(properties)
        )
        check(path, f"umockdev refused to add usb device {sys_name}")
        return Plugged(sys_name, devnum, [path])

    def _interface(self, device: Plugged, interface_class: int, driver: str) -> str:
        classes = {0xFF: (0xFF, 0x00, 0x00), 0x08: (0x08, 0x06, 0x50), 0x03: (0x03, 0x01, 0x01)}
        cls, sub, proto = classes[interface_class]
        path = self.testbed.add_device(
            "usb",
            f"{device.sys_name}:1.0",
            device.sys_path,
            _pairs(
                {
                    "bInterfaceNumber": "00",
                    "bAlternateSetting": " 0",
                    "bInterfaceClass": f"{cls:02x}",
                    "bInterfaceSubClass": f"{sub:02x}",
                    "bInterfaceProtocol": f"{proto:02x}",
                    "bNumEndpoints": "02",
                }
            ),
            _pairs(
                {
                    "DEVTYPE": "usb_interface",
                    "DRIVER": driver,
                    "INTERFACE": f"{cls}/{sub}/{proto}",
                    "MODALIAS": f"usb:v{VENDOR:04X}ic{cls:02X}isc{sub:02X}ip{proto:02X}",
                }
            ),
        )
        device.paths.append(path)
        return path

    def _card(self, device: Plugged, interface: str, serial: str) -> None:
        """The SCSI host, target, LUN, disk and FAT32 partition usb-storage puts below."""
        host = self._disks
        self._disks += 1
        disk = "sd" + chr(ord("a") + host)
        scsi = f"{host}:0:0:0"
        parent = interface
        for name, devtype in (
            (f"host{host}", "scsi_host"),
            (f"target{host}:0:0", "scsi_target"),
            (scsi, "scsi_device"),
        ):
            parent = self.testbed.add_device("scsi", name, parent, [], _pairs({"DEVTYPE": devtype}))
            device.paths.append(parent)
        id_path = f"{ID_PATH_PREFIX}{device.sys_name.split('-', 1)[1]}:1.0-scsi-0:0:0:0"
        common = {
            "ID_BUS": "usb",
            "ID_USB_DRIVER": "usb-storage",
            "ID_SERIAL": f"ZFY_Recorder_{serial}-0:0",
            "ID_SERIAL_SHORT": serial,
            "ID_PATH": id_path,
            "ID_PATH_TAG": id_path.replace(":", "_").replace(".", "_").replace("-", "_"),
            "ID_PART_TABLE_TYPE": "dos",
        }
        disk_path = self.testbed.add_device(
            "block",
            f"block/{disk}",
            parent,
            _pairs({"size": "62333952", "removable": "1", "ro": "0"}),
            _pairs(
                {
                    **common,
                    "DEVTYPE": "disk",
                    "DEVNAME": f"/dev/{disk}",
                    "MAJOR": "8",
                    "MINOR": str(16 * host),
                }
            ),
        )
        device.paths.append(disk_path)
        part_path = self.testbed.add_device(
            "block",
            f"{disk}1",
            disk_path,
            _pairs({"partition": "1", "start": "8192", "size": "62325760", "ro": "0"}),
            _pairs(
                {
                    **common,
                    "DEVTYPE": "partition",
                    "DEVNAME": f"/dev/{disk}1",
                    "MAJOR": "8",
                    "MINOR": str(16 * host + 1),
                    "PARTN": "1",
                    "ID_FS_TYPE": "vfat",
                    "ID_FS_VERSION": "FAT32",
                    "ID_FS_USAGE": "filesystem",
                    "ID_FS_LABEL": "ZFY",
                    "ID_FS_UUID": f"{4660 + host:04X}-ABCD",
                }
            ),
        )
        device.paths.append(part_path)

    # -- plugging --------------------------------------------------------------------

    def parent_of(self, sys_name: str) -> str:
        """The sysfs path of the hub port `sys_name` hangs on (1-1.4.2 hangs on 1-1.4)."""
        chain = sys_name.split("-", 1)[1]
        if "." not in chain:
            return self.root_hub
        parent_name = sys_name.rsplit(".", 1)[0]
        if parent_name == self.dock_hub.sys_name:
            return self.dock_hub.sys_path
        return f"{self.parent_of(parent_name)}/{parent_name}"

    def plug_recorder(self, sys_name: str, *, serial: str, storage: bool = False) -> Plugged:
        """A recorder in vendor mode, or (storage) re-enumerated as a disk with a FAT card."""
        device = self._usb_device(
            sys_name,
            self.parent_of(sys_name),
            vid=VENDOR,
            pid=PID_MASS_STORAGE if storage else PID_VENDOR_MODE,
            serial=serial,
            interface_class=0x08 if storage else 0xFF,
            manufacturer="ZFY",
            product="Recorder",
        )
        interface = self._interface(
            device, 0x08 if storage else 0xFF, "usb-storage" if storage else ""
        )
        if storage:
            self._card(device, interface, serial)
        return device

    def plug_hub(self, sys_name: str) -> Plugged:
        """A bare USB hub (class 09) with nothing on it."""
        return self._usb_device(
            sys_name, self.parent_of(sys_name), vid=0x05E3, pid=0x0608, hub=True
        )

    def plug_other(self, sys_name: str) -> Plugged:
        """Something that is not a recorder: a keyboard."""
        device = self._usb_device(
            sys_name,
            self.parent_of(sys_name),
            vid=0x046D,
            pid=0xC31C,
            interface_class=0x03,
            manufacturer="Logitech",
            product="USB Keyboard",
        )
        self._interface(device, 0x03, "usbhid")
        return device

    def unplug(self, device: Plugged, *below: Plugged) -> None:
        """Yank `device` (and devices plugged below it): `remove` deepest first, then sysfs.

        umockdev can only describe an event while the sysfs folder exists, so the
        events go out just before the folders vanish (real udev broadcasts them
        after); the station cannot read them before this returns (see Station.act).
        Every device is removed on its own: Testbed.remove_device deletes the
        children's folders but leaves their /sys/bus links, and adding the same name
        again (a replug) then aborts the process.
        """
        paths = [*device.paths]
        for child in below:
            paths += child.paths
        deepest_first = sorted(set(paths), key=lambda p: p.count("/"), reverse=True)
        for path in deepest_first:
            self.testbed.uevent(path, "remove")
        for path in deepest_first:
            self.testbed.remove_device(path)


# -- the station side ------------------------------------------------------------------


def describe(device: DockedDevice | None) -> dict[str, object] | None:
    """What a change says about a device, comparable and JSON-ready."""
    if device is None:
        return None
    return {
        "port": device.port,
        "kind": device.kind,
        "path": device.path,
        "vendor_id": f"{device.vendor_id:04x}" if device.vendor_id is not None else None,
        "product_id": f"{device.product_id:04x}" if device.product_id is not None else None,
        "serial": device.serial,
        "devnum": int(device.properties["DEVNUM"]) if "DEVNUM" in device.properties else None,
        "usb_port": device.properties.get("USB_PORT"),
    }


def expect_recorder(device: Plugged, port: int, *, serial: str, pid: int) -> dict[str, object]:
    """The description a recorder plugged as `device` must get from the bus."""
    return {
        "port": port,
        "kind": "usb",
        "path": device.sys_path,
        "vendor_id": f"{VENDOR:04x}",
        "product_id": f"{pid:04x}",
        "serial": serial,
        "devnum": device.devnum,
        "usb_port": device.sys_name,
    }


@dataclass
class Seen:
    """One PortChange, when it was reported, and by which rescan (changes of one share it)."""

    at: float
    change: PortChange
    batch: int


@dataclass
class Station:
    """The real UdevBus (own Context, real netlink Monitor) under a real PortWatcher."""

    bus: UdevBus = field(default_factory=lambda: UdevBus(PORT_MAP))
    seen: list[Seen] = field(default_factory=list)
    pokes: list[float] = field(default_factory=list)
    rescans: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.watcher = PortWatcher(self.bus, self._on_change, debounce_s=DEBOUNCE_S)
        # Instrument the real watcher: count the bus's pokes and time the rescans.
        poke, rescan = self.watcher.poke, self.watcher.rescan

        def timed_poke() -> None:
            self.pokes.append(now())
            poke()

        async def timed_rescan() -> None:
            started = now()
            await rescan()
            self.rescans.append((started, now()))

        self.watcher.poke = timed_poke  # type: ignore[method-assign]
        self.watcher.rescan = timed_rescan  # type: ignore[method-assign]

    def _on_change(self, change: PortChange) -> None:
        self.seen.append(Seen(now(), change, len(self.rescans)))

    @property
    def changes(self) -> list[PortChange]:
        """Every change reported so far."""
        return [s.change for s in self.seen]

    def described(self, start: int = 0) -> list[tuple[int, object, object]]:
        """The changes from index `start`, as (port, old, new) descriptions."""
        return [(c.port, describe(c.old), describe(c.new)) for c in self.changes[start:]]

    async def start(self) -> None:
        """Start the watcher: the monitor first, then the first scan."""
        await self.watcher.start()

    def stop(self) -> None:
        """Stop the watcher and the bus."""
        self.watcher.stop()

    async def wait_until(self, condition: Callable[[], object], what: str) -> None:
        """Poll `condition`; fail after WAIT_S."""
        deadline = now() + WAIT_S
        while not condition():
            check(now() < deadline, f"timed out after {WAIT_S} s waiting for {what}")
            await asyncio.sleep(0.002)

    async def act(self, action: Callable[[], object], what: str) -> float:
        """Change the hardware, then wait for the bus to poke from a real udev event.

        Returns when the action ended: its events are queued and sysfs is final, the
        moment real udev would broadcast them. The action runs on the loop's thread on
        purpose: the station cannot see an event before sysfs matches it. A poke can
        only come from the bus's monitor socket, so it proves that the udev events
        reached the real pyudev Monitor.
        """
        started = now()
        action()
        ended = now()
        await self.wait_until(
            lambda: any(t >= started for t in self.pokes), f"a udev event after {what}"
        )
        return ended

    def _rescanned_since_last_poke(self) -> bool:
        last = self.pokes[-1] if self.pokes else -math.inf
        return any(start > last for start, _ in self.rescans)

    async def settle(self) -> None:
        """Wait until a rescan begun after the last poke has finished; check it was the last.

        Events are queued on the monitor socket before the testbed call returns, and
        `act` waited for their poke, so once that rescan is done, the snapshot reflects
        sysfs. A manual rescan and a fresh scan then must agree with the snapshot.
        """
        await self.wait_until(self._rescanned_since_last_poke, "the debounced rescan")
        await asyncio.sleep(DEBOUNCE_S * 2)  # a late event would poke again
        await self.wait_until(self._rescanned_since_last_poke, "a rescan after a late event")
        before = len(self.seen)
        await self.watcher.rescan()
        check(
            len(self.seen) == before,
            f"a manual rescan found changes the watcher had missed: {self.described(before)}",
        )
        fresh = await asyncio.get_running_loop().run_in_executor(None, self.bus.scan)
        check(
            {p: d.key for p, d in fresh.items()}
            == {p: d.key for p, d in self.watcher.snapshot.items()},
            f"stale snapshot: watcher has {self.watcher.snapshot}, sysfs has {fresh}",
        )

    async def wait_changes(self, count: int, what: str, *, settle: bool = True) -> list[PortChange]:
        """Wait for `count` changes in all, then settle (or only for the rescan to end)."""
        await self.wait_until(lambda: len(self.seen) >= count, f"{count} change(s): {what}")
        if settle:
            await self.settle()
        else:
            await self.wait_until(self._rescanned_since_last_poke, "the rescan to end")
        return self.changes


def expect_changes(
    station: Station, start: int, expected: list[tuple[int, object, object]], what: str
) -> None:
    """The changes since index `start` must be exactly `expected`."""
    got = station.described(start)
    check(got == expected, f"{what}: expected changes {expected}, got {got}")


def latency_ms(station: Station, queued: float, change_index: int) -> dict[str, float]:
    """Event to poke, and event to PortChange, for events queued at `queued` (act's return)."""
    poke = min(t for t in station.pokes if t >= queued)
    return {
        "event_to_poke_ms": round((poke - queued) * 1000, 2),
        "event_to_change_ms": round((station.seen[change_index].at - queued) * 1000, 2),
    }


# -- the card below a USB device ----------------------------------------------------------


def block_devices_below(context: pyudev.Context, docked: DockedDevice) -> list[pyudev.Device]:
    """The block devices (disk, partitions) below a docked USB device, disks first.

    Found by ancestry, not by path prefix, and only if the usb_device at that path
    is still the enumeration `docked` describes (same DEVNUM): a recorder that
    re-enumerated on the same port keeps its sysfs path but not its device number.
    """
    devnum = docked.properties.get("DEVNUM")
    found = []
    for block in context.list_devices(subsystem="block"):
        owner = next((a for a in block.ancestors if a.sys_path == docked.path), None)
        if owner is None:
            continue
        if devnum is not None and _number(owner.properties.get("DEVNUM")) != _number(devnum):
            continue
        found.append(block)
    return sorted(found, key=lambda d: (d.sys_path.count("/"), d.sys_path))


def _number(value: object) -> int | None:
    text = str(value).strip()
    return int(text) if text.isdigit() else None


def card_summary(blocks: list[pyudev.Device]) -> list[dict[str, object]]:
    """What a list of block devices says, for checks and for the JSON result."""
    return [
        {
            "sys_name": d.sys_name,
            "devtype": d.device_type,
            "node": d.device_node,
            "fs_type": d.properties.get("ID_FS_TYPE"),
        }
        for d in blocks
    ]


# -- scenarios ----------------------------------------------------------------------------


async def plug_unplug(dock: Dock) -> dict[str, object]:
    """1. A recorder on mapped port 3: one change in, one change out."""
    station = Station()
    await station.start()
    check(station.changes == [], f"changes with an empty dock: {station.described()}")
    recorder: Plugged | None = None

    def plug() -> None:
        nonlocal recorder
        recorder = dock.plug_recorder("1-1.3", serial="ZFY0003")

    plugged_at = await station.act(plug, "plugging a recorder on port 3")
    await station.wait_changes(1, "the recorder on port 3")
    assert recorder is not None
    arrived = expect_recorder(recorder, 3, serial="ZFY0003", pid=PID_VENDOR_MODE)
    expect_changes(station, 0, [(3, None, arrived)], "plug")
    plug_latency = latency_ms(station, plugged_at, 0)
    docked = station.changes[0].new
    check(
        docked is not None and docked.properties.get("ID_PATH") == ID_PATH_PREFIX + "1.3",
        f"udev properties not carried: {docked and docked.properties}",
    )

    unplugged_at = await station.act(lambda: dock.unplug(recorder), "unplugging port 3")
    await station.wait_changes(2, "the recorder leaving port 3")
    expect_changes(station, 1, [(3, arrived, None)], "unplug")
    check(station.changes[1].old == docked, "the removal does not name the docked device")
    check(station.watcher.snapshot == {}, f"snapshot not empty: {station.watcher.snapshot}")
    unplug_latency = latency_ms(station, unplugged_at, 1)
    station.stop()
    return {
        "changes": station.described(),
        "latency": {"plug": plug_latency, "unplug": unplug_latency},
        "pokes": len(station.pokes),
        "rescans": len(station.rescans),
    }


async def reenumerate(dock: Dock) -> dict[str, object]:
    """2. Vendor mode to mass storage on the same port path: old key out, new key in."""
    station = Station()
    await station.start()
    vendor = await _plug(station, dock, "1-1.3", "ZFY0003")
    await station.wait_changes(1, "the recorder in vendor mode")
    v1 = expect_recorder(vendor, 3, serial="ZFY0003", pid=PID_VENDOR_MODE)
    expect_changes(station, 0, [(3, None, v1)], "vendor mode")
    vendor_docked = station.changes[0].new
    assert vendor_docked is not None

    # Fast switch: the old device goes and the disk comes within one debounce window.
    disk: Plugged | None = None

    def switch() -> None:
        nonlocal disk
        dock.unplug(vendor)
        disk = dock.plug_recorder("1-1.3", serial="ZFY0003", storage=True)

    await station.act(switch, "the switch to mass storage")
    await station.wait_changes(2, "the switch to mass storage")
    assert disk is not None
    s1 = expect_recorder(disk, 3, serial="ZFY0003", pid=PID_MASS_STORAGE)
    expect_changes(station, 1, [(3, v1, s1)], "fast re-enumeration")
    switched = station.changes[1]
    assert switched.old is not None and switched.new is not None
    check(switched.old.path == switched.new.path, "the port path changed on re-enumeration")
    check(switched.old.key != switched.new.key, "re-enumeration kept the same key")

    # The card: block devices found by ancestry below the new usb_device.
    context = pyudev.Context()
    blocks = card_summary(block_devices_below(context, switched.new))
    expected_blocks = [
        {"sys_name": "sda", "devtype": "disk", "node": "/dev/sda", "fs_type": None},
        {"sys_name": "sda1", "devtype": "partition", "node": "/dev/sda1", "fs_type": "vfat"},
    ]
    check(blocks == expected_blocks, f"block devices below {switched.new.path}: {blocks}")
    # The same lookup through libudev's own parent match agrees.
    parent = pyudev.Devices.from_sys_path(context, switched.new.path)
    matched = sorted(
        d.sys_name for d in context.list_devices(subsystem="block").match_parent(parent)
    )
    check(matched == ["sda", "sda1"], f"match_parent found {matched}")
    # The stale vendor-mode device has the same path but another DEVNUM: nothing below it.
    stale = card_summary(block_devices_below(context, vendor_docked))
    check(stale == [], f"the old enumeration claims block devices: {stale}")
    mount_check = _mount_lookup(switched.new.path, vendor_docked.path)

    # Slow switch (as real recorders take a second or two): two separate changes.
    await station.act(lambda: dock.unplug(disk), "unplugging the disk")
    await station.wait_changes(3, "the disk leaving")
    vendor2 = await _plug(station, dock, "1-1.3", "ZFY0003")
    await station.wait_changes(4, "the recorder back in vendor mode")
    v2 = expect_recorder(vendor2, 3, serial="ZFY0003", pid=PID_VENDOR_MODE)
    await station.act(lambda: dock.unplug(vendor2), "the recorder dropping off the bus")
    await station.wait_changes(5, "the vendor-mode device leaving")
    disk2: Plugged | None = None

    def plug_disk() -> None:
        nonlocal disk2
        disk2 = dock.plug_recorder("1-1.3", serial="ZFY0003", storage=True)

    await station.act(plug_disk, "the disk appearing")
    await station.wait_changes(6, "the disk")
    assert disk2 is not None
    s2 = expect_recorder(disk2, 3, serial="ZFY0003", pid=PID_MASS_STORAGE)
    disk2_docked = station.changes[5].new
    assert disk2_docked is not None
    blocks2 = card_summary(block_devices_below(pyudev.Context(), disk2_docked))
    check(
        [b["fs_type"] for b in blocks2] == [None, "vfat"],
        f"block devices below the second disk: {blocks2}",
    )
    await station.act(lambda: dock.unplug(disk2), "unplugging the disk")
    await station.wait_changes(7, "the disk leaving")
    gone = card_summary(block_devices_below(pyudev.Context(), disk2_docked))
    check(gone == [], f"block devices left after the unplug: {gone}")
    expect_changes(
        station,
        2,
        [(3, s1, None), (3, None, v2), (3, v2, None), (3, None, s2), (3, s2, None)],
        "slow re-enumeration",
    )
    station.stop()
    return {
        "changes": station.described(),
        "card_below_new_device": blocks,
        "card_below_second_disk": blocks2,
        "station_mount_find_card_device": mount_check,
        "pokes": len(station.pokes),
        "rescans": len(station.rescans),
    }


def _mount_lookup(new_path: str, old_path: str) -> dict[str, object]:
    """What station.devices.mount.find_card_device (path-prefix lookup) finds, for the report."""
    try:
        from station.devices.mount import find_card_device
    except ImportError as error:
        return {"error": repr(error)}
    found = find_card_device(new_path)
    check(
        found is not None and (found.node, found.fstype) == ("/dev/sda1", "vfat"),
        f"station.devices.mount.find_card_device({new_path!r}) found {found}",
    )
    return {
        "node": found.node,
        "fstype": found.fstype,
        "same_path_as_old_device": new_path == old_path,
    }


async def _plug(station: Station, dock: Dock, sys_name: str, serial: str) -> Plugged:
    box: list[Plugged] = []
    await station.act(lambda: box.append(dock.plug_recorder(sys_name, serial=serial)), sys_name)
    return box[0]


async def early_unplug(dock: Dock) -> dict[str, object]:
    """3. Unplugged before identification: nothing, or an add and its remove; never stale."""
    station = Station()
    await station.start()
    outcomes: dict[str, str] = {}
    # 0 = in the same breath; then gaps around the 50 ms debounce and a scan in flight.
    for gap_ms in (0, 5, 30, 45, 50, 55, 70):
        start = len(station.seen)
        box: list[Plugged] = []

        def plug(box: list[Plugged] = box) -> None:
            box.append(dock.plug_recorder("1-1.3", serial="ZFY0003"))

        if gap_ms == 0:

            def plug_and_yank(box: list[Plugged] = box) -> None:
                plug()
                dock.unplug(box[0])

            await station.act(plug_and_yank, "a plug and unplug")
        else:
            await station.act(plug, "a plug")
            await asyncio.sleep(gap_ms / 1000)
            await station.act(lambda box=box: dock.unplug(box[0]), "an unplug")
        await station.settle()
        got = station.described(start)
        recorder = expect_recorder(box[0], 3, serial="ZFY0003", pid=PID_VENDOR_MODE)
        if got == []:
            outcomes[f"{gap_ms}ms"] = "nothing"
        else:
            check(
                got == [(3, None, recorder), (3, recorder, None)],
                f"gap {gap_ms} ms: expected nothing or an add and its remove, got {got}",
            )
            outcomes[f"{gap_ms}ms"] = "add+remove"
        check(station.watcher.snapshot == {}, f"gap {gap_ms} ms: stale {station.watcher.snapshot}")
        if gap_ms == 0:  # both events in one batch: the only rescan comes after both
            check(got == [], f"a change for a device that came and went at once: {got}")
    station.stop()
    return {"outcomes": outcomes, "pokes": len(station.pokes), "rescans": len(station.rescans)}


async def two_at_once(dock: Dock) -> dict[str, object]:
    """4. Two recorders docking milliseconds apart on ports 1 and 2: both seen."""
    station = Station()
    await station.start()
    rounds = []
    for gap_ms in (0, 3, 8):
        start, rescans_before = len(station.seen), len(station.rescans)
        box: list[Plugged] = []

        def first(box: list[Plugged] = box, gap_ms: int = gap_ms) -> None:
            box.append(dock.plug_recorder("1-1.1", serial="ZFY0001"))
            if gap_ms == 0:
                box.append(dock.plug_recorder("1-1.2", serial="ZFY0002"))

        last_event = await station.act(first, "the first recorder")
        if gap_ms:
            await asyncio.sleep(gap_ms / 1000)
            last_event = await station.act(
                lambda box=box: box.append(dock.plug_recorder("1-1.2", serial="ZFY0002")),
                "the second recorder",
            )
        await station.wait_changes(start + 2, "both recorders")
        one = expect_recorder(box[0], 1, serial="ZFY0001", pid=PID_VENDOR_MODE)
        two = expect_recorder(box[1], 2, serial="ZFY0002", pid=PID_VENDOR_MODE)
        expect_changes(station, start, [(1, None, one), (2, None, two)], f"gap {gap_ms} ms")
        both_at = max(s.at for s in station.seen[start:])
        batches = len({s.batch for s in station.seen[start:]})
        if gap_ms == 0:  # both in one batch of events: one rescan reports both
            check(batches == 1, f"two recorders plugged at once took {batches} rescans")
        await station.act(
            lambda box=box: (dock.unplug(box[0]), dock.unplug(box[1])), "both unplugged"
        )
        await station.wait_changes(start + 4, "both leaving")
        expect_changes(
            station, start + 2, [(1, one, None), (2, two, None)], f"gap {gap_ms} ms, unplug"
        )
        rounds.append(
            {
                "gap_ms": gap_ms,
                "rescans_reporting_the_arrivals": batches,
                "rescans_in_round": len(station.rescans) - rescans_before,
                "last_event_to_both_ms": round((both_at - last_event) * 1000, 2),
            }
        )
    station.stop()
    return {"changes": station.described(), "rounds": rounds}


async def ignored(dock: Dock) -> dict[str, object]:
    """5. Unmapped ports and a bare hub on a mapped port are ignored; behind the hub counts."""
    station = Station()
    await station.start()
    keyboard = await _act_plug(station, lambda: dock.plug_other("1-2"))  # root port, unmapped
    stray = await _act_plug(station, lambda: dock.plug_recorder("1-1.5", serial="ZFY0005"))
    hub = await _act_plug(station, lambda: dock.plug_hub("1-1.4"))  # mapped port 4
    await station.settle()
    check(station.changes == [], f"ignored devices made changes: {station.described()}")
    check(
        station.watcher.snapshot == {},
        f"ignored devices in the snapshot: {station.watcher.snapshot}",
    )
    pokes_ignored = len(station.pokes)

    behind = await _act_plug(station, lambda: dock.plug_recorder("1-1.4.2", serial="ZFY0042"))
    await station.wait_changes(1, "the recorder behind the hub on port 4")
    recorder = expect_recorder(behind, 4, serial="ZFY0042", pid=PID_VENDOR_MODE)
    await station.act(lambda: dock.unplug(hub, behind), "unplugging the hub with its recorder")
    await station.wait_changes(2, "the hub and recorder leaving")
    await station.act(lambda: (dock.unplug(keyboard), dock.unplug(stray)), "unplugging the rest")
    await station.settle()
    expect_changes(station, 0, [(4, None, recorder), (4, recorder, None)], "hub on port 4")
    station.stop()
    return {
        "changes": station.described(),
        "pokes_while_ignored": pokes_ignored,
        "pokes": len(station.pokes),
    }


async def _act_plug(station: Station, plug: Callable[[], Plugged]) -> Plugged:
    box: list[Plugged] = []
    await station.act(lambda: box.append(plug()), "a plug")
    return box[0]


async def present_at_start(dock: Dock) -> dict[str, object]:
    """6. A recorder docked before the watcher starts is found by the first scan."""
    recorder = dock.plug_recorder("1-1.3", serial="ZFY0003")
    dock.plug_other("1-2")
    station = Station()
    await station.start()
    arrived = expect_recorder(recorder, 3, serial="ZFY0003", pid=PID_VENDOR_MODE)
    expect_changes(station, 0, [(3, None, arrived)], "first scan")
    check(station.pokes == [], f"udev events before any change: {len(station.pokes)}")
    await asyncio.sleep(DEBOUNCE_S * 3)
    await station.settle()
    expect_changes(station, 0, [(3, None, arrived)], "after the first scan")
    await station.act(lambda: dock.unplug(recorder), "unplugging port 3")
    await station.wait_changes(2, "the recorder leaving")
    expect_changes(station, 1, [(3, arrived, None)], "unplug")
    station.stop()
    return {"changes": station.described(), "rescans": len(station.rescans)}


async def latency(dock: Dock) -> dict[str, object]:
    """Event to PortChange latency over repeated plugs and unplugs, debounce 50 ms."""
    station = Station()
    await station.start()
    samples: dict[str, list[dict[str, float]]] = {"plug": [], "unplug": []}
    expected = []
    for i in range(10):
        box: list[Plugged] = []
        queued = await station.act(
            lambda box=box, i=i: box.append(dock.plug_recorder("1-1.3", serial=f"ZFY{i:04d}")),
            "a plug",
        )
        await station.wait_changes(2 * i + 1, "the plug", settle=False)
        samples["plug"].append(latency_ms(station, queued, 2 * i))
        queued = await station.act(lambda box=box: dock.unplug(box[0]), "an unplug")
        await station.wait_changes(2 * i + 2, "the unplug", settle=False)
        samples["unplug"].append(latency_ms(station, queued, 2 * i + 1))
        recorder = expect_recorder(box[0], 3, serial=f"ZFY{i:04d}", pid=PID_VENDOR_MODE)
        expected += [(3, None, recorder), (3, recorder, None)]
    await station.settle()
    expect_changes(station, 0, expected, "ten plugs and unplugs")
    station.stop()
    summary: dict[str, object] = {"debounce_ms": DEBOUNCE_S * 1000}
    for kind, rows in samples.items():
        for metric in ("event_to_poke_ms", "event_to_change_ms"):
            values = [r[metric] for r in rows]
            summary[f"{kind}_{metric}"] = {
                "min": min(values),
                "median": round(statistics.median(values), 2),
                "max": max(values),
            }
    scans = [(end - start) * 1000 for start, end in station.rescans]
    summary["rescan_ms"] = {
        "min": round(min(scans), 2),
        "median": round(statistics.median(scans), 2),
        "max": round(max(scans), 2),
    }
    return summary


SCENARIOS: dict[str, Callable[[Dock], Awaitable[dict[str, object]]]] = {
    "plug_unplug": plug_unplug,
    "reenumerate": reenumerate,
    "early_unplug": early_unplug,
    "two_at_once": two_at_once,
    "ignored": ignored,
    "present_at_start": present_at_start,
    "latency": latency,
}


def main(argv: list[str]) -> int:
    """Run one scenario; print its JSON result, or the reason it failed on stderr."""
    if len(argv) != 2 or argv[1] not in SCENARIOS:
        print(f"usage: umockdev-wrapper python {argv[0]} {'|'.join(SCENARIOS)}", file=sys.stderr)
        return 2
    name = argv[1]
    started = now()
    dock: Dock | None = None
    try:
        umockdev = load_umockdev()
        dock = Dock(umockdev)
        result = asyncio.run(asyncio.wait_for(SCENARIOS[name](dock), SCENARIO_TIMEOUT_S))
    except TimeoutError:
        print(f"scenario {name} timed out after {SCENARIO_TIMEOUT_S} s", file=sys.stderr)
        return 1
    except ScenarioFailed as failure:
        print(f"scenario {name} failed: {failure}", file=sys.stderr)
        return 1
    except Exception:
        print(f"scenario {name} crashed:\n{traceback.format_exc()}", file=sys.stderr)
        return 1
    finally:
        if dock is not None:
            dock.close()
    result = {"scenario": name, "ok": True, "seconds": round(now() - started, 3), **result}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
