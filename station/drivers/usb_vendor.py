"""Recorders with a vendor-specific USB interface that switch to mass storage.

The ZFYV protocol is the project's own invention (no recorder is known to speak
it); it is kept as the reference for makers who adopt it.

Such a recorder first enumerates with a vendor interface (class 0xFF) and
answers the GA/T 947.4 calls as vendor control requests on EP0, in the ZFYV
wire format (station/drivers/usb_vendor_proto.py, docs/usb-vendor-protocol.md). On
SET_MSDC it disconnects and re-enumerates on the same port as a USB disk, which
the station mounts itself: `card()` is None.

Vendor requests on EP0 need no claimed interface, so the driver never claims one
and never detaches a kernel driver. Errors are typed: a recorder that left
(ENODEV, or any failure after which it is no longer on the bus) is DeviceGone;
a STALL is answered by reading LAST_STATUS, and becomes AuthFailed for password
trouble or `Refused` (a ProtocolError) carrying the recorder's status; timeouts
and malformed replies from a recorder still present are ProtocolError.

Why one module of about 600 lines: the driver, its pyusb transport and the re-
enumeration check belong to one family.
"""

from __future__ import annotations

import codecs
import datetime as dt
import errno
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any, TypeVar

import usb.backend
import usb.core
import usb.util
from pydantic import BaseModel, ConfigDict, Field, field_validator

from station.drivers import usb_vendor_proto as proto
from station.drivers.base import (
    AuthFailed,
    DeviceGone,
    DockedDevice,
    OfficerInfo,
    ProtocolError,
    RecorderDriver,
    RecorderError,
    RecorderSession,
)
from station.drivers.usb_vendor_proto import Reason, Request

log = logging.getLogger(__name__)

USB_ID = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$")
USB_PORT = re.compile(r"^(\d+)-(\d+(?:\.\d+)*)$")  # a usb_device's sys_name: "1-1.2"
POLL_S = 0.05  # presence polling while waiting for a switching recorder to leave

T = TypeVar("T")


class UsbVendorConfig(BaseModel):
    """Settings of the USB vendor-interface driver."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # "vvvv:pppp" in hex: the ids of the vendor-interface mode only (not of the disk)
    usb_ids: Annotated[list[str], Field(min_length=1)]
    interface_class: Annotated[int, Field(ge=0, le=0xFF)] = 0xFF
    timeout_ms: Annotated[int, Field(ge=50, le=60_000)] = 2000
    encoding: str = "gbk"  # officer block text
    # after SET_MSDC the port is empty until the disk enumerates; alive() stays True
    # this long even when nothing is on the port
    switch_grace_s: Annotated[float, Field(ge=0, le=300)] = 15.0

    @field_validator("usb_ids")
    @classmethod
    def _usb_ids(cls, v: list[str]) -> list[str]:
        out = []
        for item in v:
            if not USB_ID.match(item.strip()):
                raise ValueError(f"{item!r} is not a USB id 'vvvv:pppp' in hex")
            out.append(item.strip().lower())
        return out

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown text encoding {v!r}") from None
        return v

    def ids(self) -> frozenset[tuple[int, int]]:
        """The configured (vendor id, product id) pairs."""
        out = set()
        for item in self.usb_ids:
            vid, pid = item.split(":")
            out.add((int(vid, 16), int(pid, 16)))
        return frozenset(out)


class Refused(ProtocolError):
    """The recorder refused a request (STALL); `status` is what LAST_STATUS said."""

    def __init__(self, status: proto.LastStatus, where: str = "") -> None:
        super().__init__(f"{where}: {status.describe()}" if where else status.describe())
        self.status = status


def interface_classes(value: str | None) -> set[int] | None:
    """The interface classes in a udev ID_USB_INTERFACES value (":ff0000:080650:")."""
    if not value:
        return None
    out = set()
    for entry in value.split(":"):
        entry = entry.strip()
        if len(entry) >= 2:
            try:
                out.add(int(entry[:2], 16))
            except ValueError:
                continue
    return out or None


def parse_port(sys_name: str | None) -> tuple[int, tuple[int, ...]] | None:
    """Bus number and port numbers of a usb_device sys_name ("1-1.2" -> (1, (1, 2)))."""
    m = USB_PORT.match(sys_name or "")
    if m is None:
        return None
    return int(m.group(1)), tuple(int(p) for p in m.group(2).split("."))


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).strip(), 10) if value is not None else None
    except ValueError:
        return None


def _ids(device: DockedDevice) -> str:
    vid, pid = device.vendor_id, device.product_id
    return f"{'?' if vid is None else f'{vid:04x}'}:{'?' if pid is None else f'{pid:04x}'}"


def _ports(dev: Any) -> tuple[int, ...] | None:
    numbers = getattr(dev, "port_numbers", None)
    return tuple(numbers) if numbers else None


def _serial(dev: Any) -> str | None:
    try:
        value = dev.serial_number
    except (usb.core.USBError, ValueError, NotImplementedError):
        return None
    return value.strip() if value else None


def _dispose(dev: Any) -> None:
    try:
        usb.util.dispose_resources(dev)
    except Exception:
        log.debug("releasing %r failed", dev, exc_info=True)


def has_interface_class(dev: Any, interface_class: int) -> bool | None:
    """Whether the device's descriptors show an interface of this class; None if unreadable."""
    try:
        return any(
            intf.bInterfaceClass == interface_class for cfg in dev for intf in cfg.interfaces()
        )
    except (usb.core.USBError, ValueError, NotImplementedError):
        return None


class UsbVendorSession(RecorderSession):
    """An open recorder in vendor-interface mode."""

    def __init__(
        self,
        dev: Any,
        config: UsbVendorConfig,
        *,
        find: Callable[..., Any] = usb.core.find,
        sys_path: str | None = None,
    ) -> None:
        self.dev = dev
        self.config = config
        self._find = find
        self._backend = dev.backend
        self.bus: int | None = dev.bus
        self.address: int | None = dev.address
        self.vendor_id: int = dev.idVendor
        self.product_id: int = dev.idProduct
        self.port_numbers = _ports(dev)
        self.sys_path = sys_path
        self.where = (
            f"{self.vendor_id:04x}:{self.product_id:04x} on bus {self.bus} address {self.address}"
        )
        self.hello: proto.Hello | None = None
        self.password: str | None = None
        self._tag = 0
        self._lock = threading.RLock()
        self._switched_at: float | None = None
        self._closed = False

    # --- transfers and error mapping --------------------------------------------------

    def _next_tag(self) -> int:
        self._tag = self._tag % 0xFFFF + 1
        return self._tag

    def _control(self, request: Request, payload: bytes | int, value: int = 0) -> bytes:
        """One vendor request: `payload` is the OUT data or the IN length; returns IN data.

        A STALL is answered from LAST_STATUS. An OUT request with a data stage is
        always followed by LAST_STATUS: a device may have had to acknowledge the data
        before it could judge it (FunctionFS does), so a refusal shows only there.
        """
        with self._lock:
            if self._closed:
                raise ProtocolError(f"{self.where}: session closed")
            if self._switched_at is not None:
                raise ProtocolError(f"{self.where}: the recorder switched to mass storage")
            tag = self._next_tag()
            is_in = isinstance(payload, int)
            try:
                reply = self.dev.ctrl_transfer(
                    proto.REQUEST_TYPE_IN if is_in else proto.REQUEST_TYPE_OUT,
                    request,
                    value,
                    tag,
                    payload if is_in else (payload or None),
                    self.config.timeout_ms,
                )
            except usb.core.USBError as e:
                if e.errno == errno.EPIPE:
                    error = self._outcome(request, tag, stalled=True)
                    assert error is not None
                    raise error from None
                raise self._failure(request, e) from None
            if is_in:
                return bytes(reply)
            assert isinstance(payload, bytes)
            if reply != len(payload):
                raise ProtocolError(
                    f"{self.where}: {request.name} took {reply} of {len(payload)} bytes"
                )
            if payload:
                error = self._outcome(request, tag, stalled=False)
                if error is not None:
                    raise error
            return b""

    def _outcome(self, request: Request, tag: int, *, stalled: bool) -> RecorderError | None:
        """Read LAST_STATUS about `request`: the error it reports, or None if it succeeded."""
        what = f"{request.name} stalled" if stalled else f"{request.name} done"
        try:
            raw = self.dev.ctrl_transfer(
                proto.REQUEST_TYPE_IN,
                Request.LAST_STATUS,
                0,
                0,
                proto.IN_LENGTH[Request.LAST_STATUS],
                self.config.timeout_ms,
            )
        except usb.core.USBError as e:
            if e.errno == errno.EPIPE:
                return ProtocolError(f"{self.where}: {what}, LAST_STATUS stalled too")
            return self._failure(Request.LAST_STATUS, e)
        try:
            status = proto.LastStatus.unpack(bytes(raw))
        except proto.WireError as e:
            return ProtocolError(f"{self.where}: {what}; LAST_STATUS: {e}")
        if status.request != request or status.tag != tag:
            return ProtocolError(
                f"{self.where}: {what} (tag {tag}), but LAST_STATUS is about "
                f"{status.describe()} (tag {status.tag})"
            )
        if status.ok and not stalled:
            return None
        if status.ok:
            return ProtocolError(f"{self.where}: {what}, yet LAST_STATUS says {status.describe()}")
        return Refused(status, self.where)

    def _failure(self, request: Request, e: usb.core.USBError) -> RecorderError:
        """The error for a failed transfer: DeviceGone if the recorder is no longer there."""
        what = f"{self.where}: {request.name}: {e.strerror or e}"
        if e.errno == errno.ENODEV or not self._present():
            return DeviceGone(what)
        if isinstance(e, usb.core.USBTimeoutError) or e.errno == errno.ETIMEDOUT:
            return ProtocolError(f"{what} (no answer in {self.config.timeout_ms} ms)")
        if e.errno == errno.EACCES:
            return RecorderError(f"{what}: no access to the USB device node (udev rule?)")
        return ProtocolError(what)

    def _call(self, request: Request, payload: bytes | int) -> bytes:
        """A request that needs authentication; logs in again once if the recorder forgot us."""
        with self._lock:
            try:
                return self._control(request, payload)
            except Refused as e:
                if e.status.reason != Reason.NOT_AUTHENTICATED or self.password is None:
                    raise self._auth_error(e) from None
            # the recorder was reset, or ended its login: log in again, once
            log.info("%s: recorder asks for the password again", self.where)
            if not self._authenticate(self.password):
                raise AuthFailed(f"{self.where}: the session password is no longer accepted")
            try:
                return self._control(request, payload)
            except Refused as e:
                raise self._auth_error(e) from None

    @staticmethod
    def _auth_error(e: Refused) -> RecorderError:
        if e.status.reason in (Reason.NOT_AUTHENTICATED, Reason.WRONG_PASSWORD):
            return AuthFailed(str(e))
        return e

    def _parse(self, what: str, parse: Callable[[bytes], T], raw: bytes) -> T:
        try:
            return parse(raw)
        except proto.WireError as e:
            raise ProtocolError(f"{self.where}: {what}: {e}") from None

    # --- presence -------------------------------------------------------------------

    def _any(self, match: Callable[[Any], bool]) -> bool:
        try:
            found = self._find(find_all=True, backend=self._backend, custom_match=match)
            return any(True for _ in found)
        except (OSError, ValueError):
            log.debug("%s: USB enumeration failed", self.where, exc_info=True)
            return False

    def _present(self) -> bool:
        """Whether this very attachment (bus, address, ids) is still on the bus."""
        return self._any(
            lambda d: (
                d.bus == self.bus
                and d.address == self.address
                and d.idVendor == self.vendor_id
                and d.idProduct == self.product_id
            )
        )

    def _port_occupied(self) -> bool:
        """Whether any device is on this recorder's physical port (the disk, after a switch)."""
        if self.port_numbers is None:
            if self.sys_path and self.sys_path.startswith("/sys/"):
                return os.path.isdir(self.sys_path)
            return True  # cannot tell: the card's own checks decide
        return self._any(lambda d: d.bus == self.bus and _ports(d) == self.port_numbers)

    def _wait_gone(self) -> bool:
        deadline = time.monotonic() + self.config.timeout_ms / 1000
        while self._present():
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_S)
        return True

    def alive(self) -> bool:
        """Before the switch: this attachment is present. After: something is on the port."""
        if self._switched_at is None:
            return not self._closed and self._present()
        if self._port_occupied():
            return True
        return time.monotonic() - self._switched_at < self.config.switch_grace_s

    # --- opening ----------------------------------------------------------------------

    def _hello(self) -> proto.Hello:
        raw = self._control(Request.HELLO, proto.IN_LENGTH[Request.HELLO], proto.PROTOCOL_VERSION)
        hello = self._parse("HELLO", proto.Hello.unpack, raw)
        if not proto.MIN_PROTOCOL_VERSION <= hello.version <= proto.PROTOCOL_VERSION:
            raise ProtocolError(
                f"{self.where}: recorder speaks {proto.PROTOCOL_NAME} version {hello.version}, "
                f"this station {proto.MIN_PROTOCOL_VERSION}-{proto.PROTOCOL_VERSION}"
            )
        self.hello = hello
        return hello

    def _authenticate(self, password: str) -> bool:
        """AUTH with one password: True if accepted, False if wrong; other refusals raise."""
        try:
            raw = proto.pack_password(password, self.config.encoding)
        except proto.WireError as e:
            log.warning("%s: skipping a configured password: %s", self.where, e)
            return False
        try:
            self._control(Request.AUTH, raw)
        except Refused as e:
            if e.status.reason == Reason.WRONG_PASSWORD:
                return False
            raise
        self.password = password
        return True

    # --- GA/T 947.4 calls ---------------------------------------------------------------

    def id_code(self) -> str:
        """GetIDCode: the device ID code."""
        raw = self._call(Request.GET_ID_CODE, proto.IN_LENGTH[Request.GET_ID_CODE])
        return self._parse("ID code", proto.unpack_id_code, raw)

    def officer_info(self) -> OfficerInfo:
        """GetZFYInfo: the 94-byte officer block, decoded with the configured encoding."""
        raw = self._call(Request.GET_OFFICER, proto.OFFICER_BLOCK_SIZE)
        block = self._parse(
            "officer block", lambda b: proto.unpack_officer(b, self.config.encoding), raw
        )
        if block.problems():
            raise ProtocolError(f"{self.where}: officer block: {'; '.join(block.problems())}")
        return OfficerInfo(**asdict(block))

    def write_officer_info(self, info: OfficerInfo) -> None:
        """WriteZFYInfo. ValueError if a field is empty where it must not be, or too long."""
        block = proto.OfficerBlock(
            info.serial, info.officer_no, info.officer_name, info.unit_no, info.unit_name
        )
        if block.problems():
            raise ValueError(f"officer block: {'; '.join(block.problems())}")
        data = proto.pack_officer(block, self.config.encoding)  # WireError is a ValueError
        self._call(Request.SET_OFFICER, data)

    def battery_percent(self) -> int:
        """ReadDeviceBatteryDumpEnergy: remaining charge, 0-100."""
        raw = self._call(Request.GET_BATTERY, proto.IN_LENGTH[Request.GET_BATTERY])
        return self._parse("battery", proto.Battery.unpack, raw).percent

    def set_clock(self, now: dt.datetime) -> float | None:
        """SyncDevTime: read the recorder clock (the drift), then set it to `now`.

        `now` is station local time (its wall time is what the recorder gets). The
        recorder reports whole seconds, so the drift is taken against the middle of
        its second and is good to about half a second; None when the recorder cannot
        report its clock (no CAP_GET_TIME) or reports an impossible one.
        """
        with self._lock:
            t0 = time.monotonic()
            wall = now.replace(tzinfo=None)
            drift: float | None = None
            if self.hello is not None and self.hello.capabilities & proto.CAP_GET_TIME:
                raw = self._call(Request.GET_TIME, proto.IN_LENGTH[Request.GET_TIME])
                t_read = (t0 + time.monotonic()) / 2
                try:
                    reading = proto.DeviceTime.unpack(raw)
                except proto.WireError as e:
                    log.warning("%s: unreadable recorder clock (%s); setting it", self.where, e)
                else:
                    station = wall + dt.timedelta(seconds=t_read - t0)
                    drift = round((reading.local - station).total_seconds() + 0.5, 1)
            elapsed = time.monotonic() - t0
            target = wall + dt.timedelta(seconds=elapsed, microseconds=500_000)
            setting = proto.DeviceTime(
                target.replace(microsecond=0), int(now.timestamp() + elapsed + 0.5)
            )
            self._call(Request.SET_TIME, setting.pack())
            return drift

    def enter_mass_storage(self) -> None:
        """SetMSDC. The recorder then leaves the bus and comes back as a disk on this port.

        It may vanish before the status stage completes: ENODEV, or a stall whose
        LAST_STATUS cannot be read any more, or an I/O error after which it is
        gone, all mean the switch is under way. A LAST_STATUS of MSDC_FAILED (or
        any other refusal) raises Refused. Idempotent.
        """
        with self._lock:
            if self._switched_at is not None:
                return
            try:
                self._call(Request.SET_MSDC, b"")
            except (Refused, AuthFailed):
                raise
            except DeviceGone as e:
                log.debug("%s: left while switching to mass storage: %s", self.where, e)
            except ProtocolError:
                if not self._wait_gone():
                    raise
            self._switched_at = time.monotonic()
            _dispose(self.dev)

    def close(self) -> None:
        """Release the USB device handle; safe after DeviceGone and twice."""
        with self._lock:
            self._closed = True
            _dispose(self.dev)


class UsbVendorDriver(RecorderDriver):
    """Recorders answering ZFYV vendor requests on EP0 before they become a disk."""

    name = "usb_vendor"

    def __init__(
        self,
        config: UsbVendorConfig,
        *,
        backend: usb.backend.IBackend | None = None,
        find: Callable[..., Any] = usb.core.find,
    ) -> None:
        self.config = config
        self.backend = backend
        self.find = find
        self.ids = config.ids()

    def match(self, device: DockedDevice) -> int:
        """100 for listed ids with a vendor interface, 50 if udev did not list interfaces.

        Only listed ids ever match: a station accepts only legitimate recorders
        (GAT947.md section 4), and vendor requests are never sent to unknown devices.
        Listed ids without the vendor interface (the disk incarnation) do not match.
        """
        if device.kind != "usb" or device.vendor_id is None or device.product_id is None:
            return 0
        if (device.vendor_id, device.product_id) not in self.ids:
            return 0
        classes = interface_classes(device.properties.get("ID_USB_INTERFACES"))
        if classes is None:
            return 50
        return 100 if self.config.interface_class in classes else 0

    def open(self, device: DockedDevice, passwords: list[str]) -> UsbVendorSession:
        """Find the device, check it speaks ZFYV, and log in with the first password it takes."""
        dev = self._locate(device)
        try:
            if has_interface_class(dev, self.config.interface_class) is False:
                raise ProtocolError(
                    f"{device.path}: no interface of class 0x{self.config.interface_class:02x} "
                    "(already in mass-storage mode?)"
                )
            session = UsbVendorSession(dev, self.config, find=self.find, sys_path=device.path)
            session._hello()
            for password in passwords:
                if session._authenticate(password):
                    return session
            raise AuthFailed(f"none of {len(passwords)} configured passwords accepted")
        except BaseException:
            _dispose(dev)
            raise

    def _locate(self, device: DockedDevice) -> Any:
        """The usb.core.Device of a docked device: by bus and address, else port path, else serial.

        DeviceGone if it is not there (it left, or re-enumerated, since the scan).
        """
        props = device.properties
        bus, address = _int(props.get("BUSNUM")), _int(props.get("DEVNUM"))
        port = parse_port(props.get("USB_PORT")) or parse_port(os.path.basename(device.path))

        def same_ids(d: Any) -> bool:
            return (device.vendor_id is None or d.idVendor == device.vendor_id) and (
                device.product_id is None or d.idProduct == device.product_id
            )

        match: Callable[[Any], bool]
        if bus is not None and address is not None:
            where = f"bus {bus} address {address}"

            def match(d: Any) -> bool:
                return d.bus == bus and d.address == address and same_ids(d)

        elif port is not None:
            where = f"port {port[0]}-{'.'.join(map(str, port[1]))}"

            def match(d: Any) -> bool:
                return d.bus == port[0] and _ports(d) == port[1] and same_ids(d)

        elif device.serial:
            where = f"serial {device.serial}"

            def match(d: Any) -> bool:
                return same_ids(d) and _serial(d) == device.serial

        else:
            raise ProtocolError(f"{device.path}: no BUSNUM/DEVNUM, port path or serial to find it")
        try:
            found = list(self.find(find_all=True, backend=self.backend, custom_match=match))
        except usb.core.NoBackendError:
            raise RecorderError("no USB backend: libusb-1.0 is not installed") from None
        except usb.core.USBError as e:
            raise ProtocolError(f"USB enumeration failed: {e}") from None
        if not found:
            raise DeviceGone(f"no USB device {_ids(device)} at {where}")
        if len(found) > 1:
            for d in found:
                _dispose(d)
            raise ProtocolError(f"{len(found)} USB devices match {where}")
        return found[0]
