"""`station ports learn`: map the cabinet's physical ports to USB port paths, by hand.

The installer plugs any USB device into port 1, 2, ... in turn; each plug's
udev `ID_PATH` (stable across bus renumbering) becomes that port's entry in
`bus.port_map`.
"""

from __future__ import annotations

import shutil
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from station.config import load_config, parse_config


@dataclass(frozen=True)
class UsbEvent:
    action: str  # add | remove
    id_path: str | None
    sys_name: str  # kernel port name, e.g. 1-1.2


class LearnError(Exception):
    """The walk-through could not finish."""


def udev_events(timeout_s: float) -> Iterator[UsbEvent | None]:
    """Plug and unplug events of whole USB devices (None when `timeout_s` passes quietly)."""
    import pyudev

    monitor = pyudev.Monitor.from_netlink(pyudev.Context())
    monitor.filter_by("usb", device_type="usb_device")
    monitor.start()
    while True:
        d = monitor.poll(timeout=timeout_s)
        if d is None:
            yield None
            continue
        yield UsbEvent(d.action or "", d.properties.get("ID_PATH"), d.sys_name)


def learn(
    ports: int, events: Iterator[UsbEvent | None], say: Callable[[str], None], *, patience: int = 6
) -> dict[int, str]:
    """Walk through the ports in order; returns {port: USB port path}.

    `patience` quiet periods in a row (no event) give up on the whole walk.
    """
    mapping: dict[int, str] = {}
    for port in range(1, ports + 1):
        say(f"Plug a USB device into port {port} (the same device each time is fine) ...")
        path = _wait(events, "add", patience, taken=set(mapping.values()))
        mapping[port] = path
        say(f"  port {port} = {path}; now unplug it")
        _wait(events, "remove", patience, path=path)
    return mapping


def _wait(
    events: Iterator[UsbEvent | None],
    action: str,
    patience: int,
    *,
    taken: frozenset[str] | set[str] = frozenset(),
    path: str | None = None,
) -> str:
    quiet = 0
    for ev in events:
        if ev is None:
            quiet += 1
            if quiet >= patience:
                raise LearnError(
                    f"no device was {'plugged in' if action == 'add' else 'unplugged'}"
                )
            continue
        quiet = 0
        where = ev.id_path or ev.sys_name
        if ev.action != action:
            continue
        if action == "add":
            if where in taken:
                continue  # that is a port already learnt
            return where
        if where == path:
            return where
    raise LearnError("the event stream ended")


def write_port_map(config_path: Path, mapping: dict[int, str]) -> Path:
    """Store the map as bus.port_map in the configuration (the old file kept as .bak)."""
    data = tomllib.loads(config_path.read_text())
    data.setdefault("bus", {})["port_map"] = {str(k): v for k, v in sorted(mapping.items())}
    parse_config(data, str(config_path))  # refuse to write what the station would refuse
    backup = config_path.with_suffix(config_path.suffix + ".bak")
    shutil.copy2(config_path, backup)
    tmp = config_path.with_suffix(config_path.suffix + ".new")
    tmp.write_text(tomli_w.dumps(data))
    tmp.replace(config_path)
    load_config(config_path)
    return backup
