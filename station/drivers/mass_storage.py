"""Plain USB mass storage: a disk whose card looks like a recorder's (GAT947.md section 3).

Accepted only when its USB ids are allow-listed: a random stick is never one.
It has no GA/T 947.4 interface, so its identity comes from its card: the
officer and device numbers in its file names (the station then checks them
against its registration table, and holds a disk whose names disagree with
it). Its battery and clock cannot be reached.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections import Counter
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from station.drivers.base import (
    DockedDevice,
    OfficerInfo,
    ProtocolError,
    RecorderDriver,
    RecorderSession,
)
from station.drivers.card import Card

USB_ID = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}$")
# <officer no>_<device no>_<yyyyMMddHHmmss>_<NNNN>
NAME = re.compile(rb"(?:^|/)([0-9A-Za-z-]{1,32})_([0-9A-Za-z-]{1,32})_\d{14}_\d{4}")


class MassStorageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    allow: list[str] = Field(default_factory=list)  # "vvvv:pppp" of accepted disks

    @field_validator("allow")
    @classmethod
    def _ids(cls, v: list[str]) -> list[str]:
        v = [x.strip().lower() for x in v]
        for x in v:
            if not USB_ID.match(x):
                raise ValueError(f"{x!r} is not a USB id like 1d6b:0104")
        return v


def usb_id(device: DockedDevice) -> str | None:
    if device.vendor_id is None or device.product_id is None:
        return None
    return f"{device.vendor_id:04x}:{device.product_id:04x}"


def identity_from_names(paths: list[bytes]) -> tuple[str, str] | None:
    """The (officer no, device no) most of the card's file names carry, if any."""
    seen = Counter(m.groups() for p in paths if (m := NAME.search(p)))
    if not seen:
        return None
    (officer, device), _ = seen.most_common(1)[0]
    return officer.decode(), device.decode()


class MassStorageSession(RecorderSession):
    def __init__(self, device: DockedDevice, card: Card) -> None:
        self.device = device
        self._card = card

    def id_code(self) -> str:
        return ""

    def officer_info(self) -> OfficerInfo:
        ident = identity_from_names([f.path for f in self._card.list_files()])
        if ident is None:
            raise ProtocolError("no recorder-named files on this disk: it cannot be attributed")
        officer, device_no = ident
        return OfficerInfo(serial=self.device.serial or device_no, officer_no=officer)

    def write_officer_info(self, info: OfficerInfo) -> None:
        raise ProtocolError("a plain USB disk has no officer block to write")

    def battery_percent(self) -> int | None:
        return None

    def set_clock(self, now: dt.datetime) -> float | None:
        return None  # nothing to set: it has no GA/T 947.4 interface

    def enter_mass_storage(self) -> None:
        pass

    def card(self) -> Card:
        return self._card

    def alive(self) -> bool:
        return os.path.exists(self.device.path)

    def close(self) -> None:
        self._card.close()


class MassStorageDriver(RecorderDriver):
    """Allow-listed USB disks laid out as recorder cards."""

    name = "mass_storage"

    def __init__(self, config: MassStorageConfig, mount: Callable[[DockedDevice], Card]) -> None:
        self.config = config
        self.mount = mount  # the station's mounter (drivers do not mount by themselves)

    def match(self, device: DockedDevice) -> int:
        return 10 if device.kind == "usb" and usb_id(device) in self.config.allow else 0

    def open(self, device: DockedDevice, passwords: list[str]) -> MassStorageSession:
        return MassStorageSession(device, self.mount(device))
