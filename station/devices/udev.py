"""The real dock: USB devices found through udev, mapped to physical ports.

Each physical dock port is configured as a USB port path, either the kernel's
name for the port (a usb_device's sys_name, like "1-1.2") or its udev
``ID_PATH`` (like "pci-0000:00:14.0-usb-0:1.2"). ``ID_PATH`` is the better
choice: it survives bus renumbering and names the physical port whether the
recorder came up on the USB 2 or the USB 3 bus of the controller.

A device on a mapped port, or anywhere below it (behind a hub in the dock, or
behind the recorder's own internal hub), belongs to that port. Hubs are only
the way there, never the recorder: a dock hub is present with the port empty,
and a recorder's internal hub carries a hub chip's ids, not the recorder's.
Of the other devices on a port the shallowest wins.

udev events carry no state here: each one only pokes the PortWatcher, which
rescans and diffs (see station/devices/bus.py). pyudev has no asyncio adapter, so
the monitor's socket goes to ``loop.add_reader`` and is drained with
``monitor.poll(timeout=0)``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

import pyudev

from station.devices.bus import Bus, Link, Snapshot
from station.drivers.base import DockedDevice

log = logging.getLogger(__name__)

# The udev properties a driver may want to see, copied into DockedDevice.properties.
SELECTED_PROPERTIES = (
    "ID_VENDOR_ID",
    "ID_MODEL_ID",
    "ID_VENDOR",
    "ID_VENDOR_ENC",
    "ID_VENDOR_FROM_DATABASE",
    "ID_MODEL",
    "ID_MODEL_ENC",
    "ID_MODEL_FROM_DATABASE",
    "ID_REVISION",
    "ID_SERIAL",
    "ID_SERIAL_SHORT",
    "ID_PATH",
    "ID_PATH_TAG",
    "ID_USB_INTERFACES",
    "BUSNUM",
    "DEVNUM",
    "DEVNAME",
    "DEVPATH",
    "DRIVER",
)

USB_CLASS_HUB = "09"

# Events drained per reader callback: an event storm must not starve the loop. The
# socket stays readable, so the loop calls back again for the rest.
MAX_EVENTS_PER_WAKEUP = 1000


def split_port_path(usb_path: str) -> tuple[str, list[str]] | None:
    """A USB port path as (its controller's root hub, the port numbers down from it):
    "1-1.2" -> ("usb1", ["1", "2"]), "pci-0000:00:14.0-usb-0:1.2" ->
    ("pci-0000:00:14.0-usb-0", ["1", "2"]); None if it is neither form."""
    head, sep, chain = usb_path.rpartition(":")
    if sep and head.rsplit("-", 2)[-2:-1] == ["usb"]:  # ID_PATH: ...-usb-0:1.2
        root = head
    else:
        bus, sep, chain = usb_path.partition("-")
        if not sep or not bus.isdigit():
            return None
        root = f"usb{bus}"
    ports = chain.split(".")
    if not all(p.isdigit() for p in ports):
        return None
    return root, ports


def port_links(port_map: dict[int, str], link_mb_s: float | None) -> list[Link]:
    """Which physical ports share a root port (of a USB 2.0 controller: the ports behind
    one hub there share its 480 Mbit/s, about 35-40 MB/s of mass storage), from the
    ports' USB paths (`station ports learn` reads them from udev). A port of its own
    root port is its own link and not listed."""
    groups: dict[str, list[int]] = {}
    hubs: dict[str, set[str]] = {}
    for port, path in sorted(port_map.items()):
        parts = split_port_path(path.strip())
        if parts is None:
            continue
        root, chain = parts
        key = f"{root}:{chain[0]}"  # the root port
        groups.setdefault(key, []).append(port)
        sep = "-" if root.startswith("usb") else ":"
        prefix = root.removeprefix("usb") if root.startswith("usb") else root
        hub = f"{prefix}{sep}{'.'.join(chain[:-1])}" if len(chain) > 1 else root
        hubs.setdefault(key, set()).add(hub)
    return [
        Link(key, tuple(ports), link_mb_s, hub=", ".join(sorted(hubs[key])))
        for key, ports in groups.items()
        if len(ports) > 1
    ]


class UdevBus(Bus):
    """USB recorders on the station's dock, seen through udev."""

    def __init__(
        self,
        port_map: dict[int, str],
        *,
        context: pyudev.Context | None = None,
        monitor_factory: Callable[[pyudev.Context], Any] | None = None,
        enumerate_devices: Callable[[], Iterable[Any]] | None = None,
        link_mb_s: float | None = None,
    ) -> None:
        for port, usb_path in port_map.items():
            if not isinstance(usb_path, str) or not usb_path.strip():
                raise ValueError(f"port {port}: USB port path must be a non-empty string")
        self.port_map = {port: usb_path.strip() for port, usb_path in port_map.items()}
        self._context = context
        self._monitor_factory = monitor_factory or _netlink_monitor
        self._enumerate_devices = enumerate_devices or self._list_usb_devices
        self._loop: asyncio.AbstractEventLoop | None = None
        self._monitor: Any = None
        self._fd: int | None = None
        self.link_mb_s = link_mb_s

    def links(self) -> list[Link]:
        """Ports sharing a root port, from their USB paths (`port_links`)."""
        return port_links(self.port_map, self.link_mb_s)

    # -- watching -------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop, poke: Callable[[], None]) -> None:
        """Listen to udev usb and block events; poke once per batch of events."""
        if self._monitor is not None:
            raise RuntimeError("UdevBus already started")
        if self._context is None:
            self._context = pyudev.Context()
        monitor = self._monitor_factory(self._context)
        monitor.filter_by("usb")
        monitor.filter_by("block")  # the card appearing after a switch to mass storage
        monitor.start()
        fd = monitor.fileno()

        def on_readable() -> None:
            self._drain(monitor, poke)

        loop.add_reader(fd, on_readable)
        self._loop, self._monitor, self._fd = loop, monitor, fd

    def _drain(self, monitor: Any, poke: Callable[[], None]) -> None:
        """Read every queued event, then poke once. Never raises: it runs in the loop."""
        seen = 0
        try:
            while seen < MAX_EVENTS_PER_WAKEUP:
                event = monitor.poll(timeout=0)
                if event is None:
                    break
                seen += 1
                log.debug(
                    "udev %s %s", getattr(event, "action", None), getattr(event, "sys_path", event)
                )
        except Exception:
            # Typically ENOBUFS: the kernel dropped events. A rescan recovers from that.
            log.exception("reading udev events failed; rescanning")
            seen += 1
        if not seen:
            return
        try:
            poke()
        except Exception:
            log.exception("bus poke failed")

    def stop(self) -> None:
        """Stop listening. Safe to call twice, or without start."""
        if self._loop is not None and self._fd is not None:
            try:
                self._loop.remove_reader(self._fd)
            except Exception:
                log.exception("removing the udev reader failed")
        monitor = self._monitor
        self._loop = self._monitor = self._fd = None
        # pyudev's Monitor has no close(): dropping the last reference unrefs the
        # libudev monitor, which closes its socket. Call a stop/close a wrapper may offer.
        for name in ("stop", "close"):
            method = getattr(monitor, name, None)
            if callable(method):
                try:
                    method()
                except Exception:
                    log.exception("stopping the udev monitor failed")
                break

    # -- scanning -------------------------------------------------------------

    def scan(self) -> Snapshot:
        """The recorder docked on each mapped port now. Blocking: run it in an executor."""
        best: dict[int, tuple[tuple[int, str], DockedDevice]] = {}
        for device in self._enumerate_devices():
            try:
                found = self._place(device)
            except Exception:
                # A device unplugged mid-scan loses its sysfs files; the next event rescans.
                log.debug("skipping unreadable usb device %r", device, exc_info=True)
                continue
            if found is None:
                continue
            rank, docked = found
            current = best.get(docked.port)
            if current is None or rank < current[0]:
                best[docked.port] = (rank, docked)
        return {port: docked for port, (_, docked) in sorted(best.items())}

    def _list_usb_devices(self) -> Iterable[Any]:
        # scan() runs in a worker thread while the loop thread reads the monitor, and a
        # libudev context may not be shared between threads: enumerate with our own.
        context = pyudev.Context()
        return list(context.list_devices(subsystem="usb", DEVTYPE="usb_device"))

    def _place(self, device: Any) -> tuple[tuple[int, str], DockedDevice] | None:
        """The port a usb_device is on, its rank there (lower wins), and its DockedDevice."""
        if getattr(device, "subsystem", "usb") != "usb":
            return None
        if getattr(device, "device_type", "usb_device") != "usb_device":
            return None
        sys_name = str(device.sys_name)
        props = device.properties
        id_path = props.get("ID_PATH")
        located = self.locate(sys_name, str(id_path) if id_path else None)
        if located is None:
            log.debug("usb device %s (ID_PATH %s) is on no mapped port", sys_name, id_path)
            return None
        port, depth = located
        if _attribute(device, "bDeviceClass") == USB_CLASS_HUB:
            log.debug("usb hub %s on port %s is not a recorder", sys_name, port)
            return None

        vendor_id = _hex(props.get("ID_VENDOR_ID") or _attribute(device, "idVendor"))
        product_id = _hex(props.get("ID_MODEL_ID") or _attribute(device, "idProduct"))
        serial = props.get("ID_SERIAL_SHORT") or _attribute(device, "serial")
        busnum = props.get("BUSNUM") or _attribute(device, "busnum") or "?"
        devnum = props.get("DEVNUM") or _attribute(device, "devnum") or "?"
        # busnum/devnum change on every (re-)enumeration, so a replug or a switch
        # to mass storage is a new key even on the same port path.
        pid = f"{product_id:04x}" if product_id is not None else "?"
        key = f"{device.sys_path}#{_num(busnum)}:{_num(devnum)}:{pid}"

        properties = {name: str(props.get(name)) for name in SELECTED_PROPERTIES if props.get(name)}
        properties["USB_PORT"] = sys_name
        properties["STATION_PORT_PATH"] = self.port_map[port]
        docked = DockedDevice(
            port=port,
            key=key,
            kind="usb",
            path=str(device.sys_path),
            vendor_id=vendor_id,
            product_id=product_id,
            serial=str(serial).strip() if serial else None,
            properties=properties,
        )
        return (depth, sys_name), docked

    def locate(self, sys_name: str, id_path: str | None = None) -> tuple[int, int] | None:
        """The mapped port a USB device is on and how many hubs below it, or None.

        When mapped paths nest (a port mapped inside another's hub), the most
        specific one wins.
        """
        best: tuple[int, int, int] | None = None  # (-len(mapped path), port, depth)
        for name in (sys_name, id_path):
            if not name:
                continue
            for port, usb_path in self.port_map.items():
                if name == usb_path:
                    depth = 0
                elif name.startswith(usb_path + "."):
                    depth = name[len(usb_path) + 1 :].count(".") + 1
                else:
                    continue
                candidate = (-len(usb_path), port, depth)
                if best is None or candidate < best:
                    best = candidate
        if best is None:
            return None
        return best[1], best[2]


def _netlink_monitor(context: pyudev.Context) -> pyudev.Monitor:
    return pyudev.Monitor.from_netlink(context)


def _attribute(device: Any, name: str) -> str | None:
    """A sysfs attribute as text, or None when the device has no such attribute."""
    try:
        value = device.attributes.asstring(name)
    except (KeyError, UnicodeDecodeError):
        return None
    return value.strip() or None


def _hex(value: object) -> int | None:
    if value is None:
        return None
    try:
        return int(str(value).strip(), 16)
    except ValueError:
        return None


def _num(value: object) -> str:
    """busnum/devnum as udev ("001") and sysfs ("1") spell them, made equal."""
    text = str(value).strip()
    return str(int(text)) if text.isdigit() else text
