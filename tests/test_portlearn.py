"""`station ports learn`: the walk-through, fed with the events a dock produces."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w

from station.config import load_config
from station.devices.portlearn import LearnError, UsbEvent, learn, write_port_map


def test_each_plug_teaches_one_port(tmp_path: Path) -> None:
    said: list[str] = []
    events = iter(
        [
            None,  # the installer takes a moment
            UsbEvent("add", "pci-0000:00:14.0-usb-0:1.1", "1-1.1"),
            UsbEvent("add", "pci-0000:00:14.0-usb-0:1.1", "1-1.1"),  # a repeat: ignored
            UsbEvent("remove", "pci-0000:00:14.0-usb-0:1.1", "1-1.1"),
            UsbEvent("add", "pci-0000:00:14.0-usb-0:1.1", "1-1.1"),  # port 1 again: not taken
            UsbEvent("remove", "pci-0000:00:14.0-usb-0:1.1", "1-1.1"),
            UsbEvent("add", None, "1-1.4"),  # no ID_PATH: the kernel name serves
            UsbEvent("remove", None, "1-1.4"),
        ]
    )
    mapping = learn(2, events, said.append)
    assert mapping == {1: "pci-0000:00:14.0-usb-0:1.1", 2: "1-1.4"}
    assert any("port 2" in s for s in said)
    config = tmp_path / "station.toml"
    config.write_text(tomli_w.dumps({"station": {"id": "X"}, "bus": {"ports": 2}}))
    backup = write_port_map(config, mapping)
    assert load_config(config).bus.port_map == mapping and backup.exists()


def test_nobody_plugs_anything_in() -> None:
    with pytest.raises(LearnError):
        learn(1, iter([None] * 10), lambda s: None)
