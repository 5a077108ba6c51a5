"""The recorder driver interface: what the station asks of any GA/T 947.4 recorder.

Drivers talk to recorders and nothing else: they know nothing of the store, the
catalog or the daemon. Every call is blocking; the station runs them in worker
threads. Errors are typed so the station can tell a yanked cable from a liar.
"""

from __future__ import annotations

import abc
import datetime as dt
import os
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from station.drivers.card import Card


class RecorderError(Exception):
    """Base class for every error a driver raises."""

    template = "recorder error: {detail}"

    def __init__(self, detail: str = "") -> None:
        super().__init__(self.template.format(detail=detail))
        self.detail = detail


class DeviceGone(RecorderError):
    """The recorder disappeared (unplugged, reset) during a call."""

    template = "recorder disconnected: {detail}"


class ProtocolError(RecorderError):
    """The recorder answered something the standard does not allow."""

    template = "recorder protocol error: {detail}"


class AuthFailed(RecorderError):
    """The recorder refused the device password (CHECK_PWD_FAILED)."""

    template = "recorder refused the password: {detail}"


class DeviceBusy(ProtocolError):
    """The way to the recorder is in use by another port's session: try again later.

    Nothing was asked of the recorder; the station retries with a growing delay.
    """

    template = "recorder busy: {detail}"


class WrongRecorder(ProtocolError):
    """The driver reaches a recorder, but not the one docked on this port (by serial).

    The station holds the port (collects, switches and deletes nothing) and asks
    again later, rather than collect another port's recorder.
    """

    template = "another recorder answers: {detail}"


class CardReadError(RecorderError):
    """One card file could not be read (bad sector, vanished file)."""

    template = "card read error: {detail}"


@dataclass(frozen=True)
class DockedDevice:
    """One device seen on one physical dock port.

    `key` identifies this attachment: it changes when the device is unplugged
    and plugged again, so the station can tell a new docking from a rescan.
    """

    port: int
    key: str
    kind: str  # "usb" or "simulated"
    path: str  # sysfs path for USB, the port folder for the simulated bus
    vendor_id: int | None = None
    product_id: int | None = None
    serial: str | None = None
    properties: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class OfficerInfo:
    """The GA/T 947.4 officer block (ZFY_INFO)."""

    serial: str
    officer_no: str
    officer_name: str = ""
    unit_no: str = ""
    unit_name: str = ""


@dataclass(frozen=True)
class CardFile:
    """A regular file on the recorder's card.

    `path` is the path below the card root as raw bytes, '/'-separated: card
    names may be GBK or not valid in any encoding, and they are kept exact.
    """

    path: bytes
    size: int
    mtime: float


class CardStream(Protocol):
    """A card file opened for reading from some offset."""

    def readinto(self, buffer: memoryview) -> int: ...

    def close(self) -> None: ...


class RecorderSession(abc.ABC):
    """An open connection to one docked recorder.

    Use as a context manager; `close` must be safe after `DeviceGone`.
    """

    def __enter__(self) -> RecorderSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @abc.abstractmethod
    def id_code(self) -> str:
        """GetIDCode: the 5-character device ID code."""

    @abc.abstractmethod
    def officer_info(self) -> OfficerInfo:
        """GetZFYInfo: the officer block as the recorder holds it."""

    @abc.abstractmethod
    def write_officer_info(self, info: OfficerInfo) -> None:
        """WriteZFYInfo: store a new officer block on the recorder."""

    @abc.abstractmethod
    def battery_percent(self) -> int | None:
        """ReadDeviceBatteryDumpEnergy: remaining charge, 0-100 (None: cannot tell)."""

    @abc.abstractmethod
    def set_clock(self, now: dt.datetime) -> float | None:
        """SyncDevTime: set the recorder clock to `now` (station local time).

        Returns the recorder's drift before setting (recorder minus station, in
        seconds) when the transport can read the recorder clock, else None.
        """

    @abc.abstractmethod
    def enter_mass_storage(self) -> None:
        """SetMSDC: expose the card. Idempotent."""

    def card(self) -> Card | None:
        """The card, when the driver reaches it itself (after `enter_mass_storage`).

        None means the recorder re-appears as a USB disk that the station mounts.
        """
        return None

    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the recorder is still attached."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device."""


class RecorderDriver(abc.ABC):
    """A family of recorders: how to recognise them and how to open one."""

    name: str = "abstract"

    @abc.abstractmethod
    def match(self, device: DockedDevice) -> int:
        """How well this driver fits the device: 0 for not at all, higher is better."""

    @abc.abstractmethod
    def open(self, device: DockedDevice, passwords: list[str]) -> RecorderSession:
        """Open a session, trying each password in turn; AuthFailed if none works."""


class DriverRegistry:
    """The drivers a station knows, asked in turn for the best match."""

    def __init__(self, drivers: list[RecorderDriver]) -> None:
        self.drivers = list(drivers)

    def best(self, device: DockedDevice) -> RecorderDriver | None:
        scored = [(d.match(device), i, d) for i, d in enumerate(self.drivers)]
        scored = [s for s in scored if s[0] > 0]
        if not scored:
            return None
        return max(scored, key=lambda s: (s[0], -s[1]))[2]


def usb_present(device: DockedDevice) -> bool | None:
    """Whether the docked USB device is still in sysfs; None when that cannot be told."""
    if device.kind == "usb" and device.path.startswith("/sys/"):
        return os.path.isdir(device.path)
    return None
