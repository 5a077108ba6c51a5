"""Recorders driven through their maker's GA/T 947.4 shared library, loaded with ctypes.

Every maker ships a library with the same C functions (shared/GAT947.md section
1): each returns 1 on success, 0 on failure, and writes a status code into
`*iRet`. This driver declares their C signatures, maps every status code to a
typed error, and decodes the officer block (ZFY_INFO, codec in drivers/zfy.py) in
either layout: the common 94-byte one with NUL-terminated fields, or the older
packed 89-byte one.

Vendor libraries are rarely thread-safe and usually address "the" recorder, so
every call into one library file goes through one lock, shared by all drivers
configured with that file. A library that also exports `GetDeviceCount` and the
`_ByIndex` variants drives several recorders: a session finds its recorder's
index by the USB serial number and follows the recorder if the index moves. A
library without them drives one recorder at a time; opening a second one while
a session is open raises `LibraryBusy`. See docs/vendor-library.md.

Loading a vendor library runs the vendor's code inside the station: the file
and its folder must not be writable by group or others.
"""

from __future__ import annotations

import codecs
import ctypes
import datetime as dt
import logging
import os
import re
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from drivers import zfy
from drivers.base import (
    AuthFailed,
    DeviceGone,
    DockedDevice,
    OfficerInfo,
    ProtocolError,
    RecorderDriver,
    RecorderError,
    RecorderSession,
)

log = logging.getLogger(__name__)

# --- status codes (*iRet) ---------------------------------------------------------------

CONNECT_SUCCESS = 1
CONNECT_FAILED = 2
CHECK_PWD_SUCCESS = 3
CHECK_PWD_FAILED = 4
SET_SYSTEMTIME_SUCCESS = 5
SET_SYSTEMTIME_FAILED = 6
MSDC_SUCCESS = 7
MSDC_FAILED = 8

STATUS_NAMES = {
    CONNECT_SUCCESS: "CONNECT_SUCCESS",
    CONNECT_FAILED: "CONNECT_FAILED",
    CHECK_PWD_SUCCESS: "CHECK_PWD_SUCCESS",
    CHECK_PWD_FAILED: "CHECK_PWD_FAILED",
    SET_SYSTEMTIME_SUCCESS: "SET_SYSTEMTIME_SUCCESS",
    SET_SYSTEMTIME_FAILED: "SET_SYSTEMTIME_FAILED",
    MSDC_SUCCESS: "MSDC_SUCCESS",
    MSDC_FAILED: "MSDC_FAILED",
}
SUCCESS_CODES = frozenset(
    {CONNECT_SUCCESS, CHECK_PWD_SUCCESS, SET_SYSTEMTIME_SUCCESS, MSDC_SUCCESS}
)


class VendorLibraryError(RecorderError):
    """The vendor library cannot be used: not found, not loadable, unsafe, or incomplete."""

    template = "vendor library error: {detail}"


class LibraryBusy(ProtocolError):
    """A single-device library is already driving a recorder on another port."""


def check_status(function: str, ret: int, status: int) -> None:
    """Map a call's return value and `*iRet` status to success or a typed error.

    A failure status wins over the return value: a library that returns 1 with
    CONNECT_FAILED has not succeeded. A success with no status written (0) is
    accepted, since some libraries only write `*iRet` on failure.
    """
    name = STATUS_NAMES.get(status)
    if status == CONNECT_FAILED:
        raise DeviceGone(f"{function}: the recorder does not answer (CONNECT_FAILED, status 2)")
    if status == CHECK_PWD_FAILED:
        raise AuthFailed(f"{function}: wrong device password (CHECK_PWD_FAILED, status 4)")
    if status == SET_SYSTEMTIME_FAILED:
        raise ProtocolError(
            f"{function}: the recorder did not set its clock (SET_SYSTEMTIME_FAILED, status 6)"
        )
    if status == MSDC_FAILED:
        raise ProtocolError(
            f"{function}: the recorder did not enter mass-storage mode (MSDC_FAILED, status 8)"
        )
    if ret != 0:
        if status in SUCCESS_CODES or status == 0:
            return
        raise ProtocolError(f"{function} returned {ret} with unknown status code {status}")
    if name is not None:
        raise ProtocolError(f"{function} failed (returned 0) although its status is {name}")
    if status == 0:
        raise ProtocolError(f"{function} failed (returned 0) without writing a status code")
    raise ProtocolError(f"{function} failed (returned 0) with unknown status code {status}")


# --- the officer block ------------------------------------------------------------------

# The codec is drivers/zfy.py. Read from a library: the serial and the officer number must
# decode exactly and not be empty; the display fields (names, unit number) are decoded with
# U+FFFD and a warning rather than refusing the recorder; in the 94 layout a field without
# its NUL is an error that points at the packed 89 layout. Written: nothing is truncated,
# empty identifiers and control characters are refused.


def decode_officer_block(raw: bytes, layout: zfy.Layout, encoding: str) -> OfficerInfo:
    """Decode ZFY_INFO bytes; ProtocolError for a block the standard does not allow."""
    try:
        return zfy.decode(raw, layout, encoding, allow_control=True, lenient_text=True)
    except zfy.OfficerBlockError as e:
        raise ProtocolError(str(e)) from None


def encode_officer_block(info: OfficerInfo, layout: zfy.Layout, encoding: str) -> bytes:
    """Encode an officer block; ValueError (zfy.OfficerBlockError) for a value it cannot hold."""
    return zfy.encode(info, layout, encoding)


# --- configuration ----------------------------------------------------------------------

_USB_ID = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{4})$")


class VendorLibraryConfig(BaseModel):
    """One maker's library: which USB devices it drives and how its officer block looks."""

    model_config = ConfigDict(extra="forbid")

    name: str
    usb_ids: list[str]
    library: Path
    layout: zfy.Layout = "94"
    encoding: str = "gbk"
    # None: the station's [recorders] passwords, as passed to open()
    passwords: list[str] | None = None
    # refuse a recorder whose USB serial is neither its officer-block serial nor its
    # ID code (for makers known to report one of them as the USB serial)
    require_serial_match: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v.strip()

    @field_validator("usb_ids")
    @classmethod
    def _usb_ids(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one USB id is needed")
        out = []
        for item in v:
            norm = item.strip().lower()
            if not _USB_ID.match(norm):
                raise ValueError(f"{item!r} is not a USB id like '1234:abcd' (hex vendor:product)")
            if norm not in out:
                out.append(norm)
        return out

    @field_validator("library")
    @classmethod
    def _library(cls, v: Path) -> Path:
        if not v.is_absolute():
            raise ValueError("the library path must be absolute")
        return v

    @field_validator("layout", mode="before")
    @classmethod
    def _layout(cls, v: object) -> object:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown text encoding {v!r}") from None
        return v

    @field_validator("passwords")
    @classmethod
    def _passwords(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("leave passwords out to use the station's list")
        return v

    def usb_id_pairs(self) -> frozenset[tuple[int, int]]:
        """The configured USB ids as (vendor id, product id) integers."""
        return frozenset(
            (int(m.group(1), 16), int(m.group(2), 16))
            for m in (_USB_ID.match(i) for i in self.usb_ids)
            if m
        )


# --- the loaded library -----------------------------------------------------------------

_CHAR_P = ctypes.POINTER(ctypes.c_char)
_INT_P = ctypes.POINTER(ctypes.c_int)

# name: (argument types before iRet, result type); the _ByIndex variants add a trailing int.
SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "Init_Device": ([_CHAR_P], ctypes.c_int),
    "UnInit_Device": ([], None),
    "GetIDCode": ([_CHAR_P], ctypes.c_int),
    "GetZFYInfo": ([ctypes.c_void_p, _CHAR_P], ctypes.c_int),
    "WriteZFYInfo": ([ctypes.c_void_p, _CHAR_P], ctypes.c_int),
    "SyncDevTime": ([_CHAR_P], ctypes.c_int),
    "SetMSDC": ([_CHAR_P], ctypes.c_int),
    "ReadDeviceResolution": ([_INT_P, _INT_P, _CHAR_P], ctypes.c_int),
    "ReadDeviceBatteryDumpEnergy": ([_INT_P, _CHAR_P], ctypes.c_int),
}
OPTIONAL = frozenset({"ReadDeviceResolution"})
# Room for an ID code: the standard's is 5 characters; a careless library may write more.
IDCODE_BUFFER = 256
# Room for an officer block of either layout, and then some.
_BLOCK_BUFFER = 128


class _Library:
    """One loaded library file, shared by every driver naming it; calls hold `lock`."""

    def __init__(self, path: str, cdll: ctypes.CDLL) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.functions: dict[str, Callable[..., Any]] = {}
        self.sessions: list[VendorLibrarySession] = []
        missing = []
        for name, (args, restype) in SIGNATURES.items():
            fn = self._declare(cdll, name, [*args, _INT_P], restype)
            if fn is None and name not in OPTIONAL:
                missing.append(name)
            self._declare(cdll, f"{name}_ByIndex", [*args, _INT_P, ctypes.c_int], restype)
        if missing:
            raise VendorLibraryError(f"{path} does not export {', '.join(missing)}")
        self._declare(cdll, "GetDeviceCount", [_INT_P], ctypes.c_int)
        indexed = [n for n in SIGNATURES if n not in OPTIONAL]
        absent = [f"{n}_ByIndex" for n in indexed if f"{n}_ByIndex" not in self.functions]
        self.multi = "GetDeviceCount" in self.functions and not absent
        if "GetDeviceCount" in self.functions and absent:
            log.warning(
                "%s exports GetDeviceCount but not %s: driving one recorder at a time",
                path,
                ", ".join(absent),
            )

    def _declare(
        self, cdll: ctypes.CDLL, name: str, argtypes: list[Any], restype: Any
    ) -> Callable[..., Any] | None:
        if not hasattr(cdll, name):
            return None
        fn = getattr(cdll, name)
        fn.argtypes = argtypes
        fn.restype = restype
        self.functions[name] = fn
        return fn

    def call(self, label: str, function: str, *args: Any, index: int | None = None) -> int:
        """Call `function` (or its _ByIndex variant) and check its status; returns its result."""
        name = function if index is None else f"{function}_ByIndex"
        fn = self.functions.get(name)
        if fn is None:
            raise ProtocolError(f"{label}: {self.path} does not export {name}")
        status = ctypes.c_int(0)
        tail: tuple[Any, ...] = (ctypes.byref(status),)
        if index is not None:
            tail += (index,)
        with self.lock:
            ret = fn(*args, *tail)
        if ret is None:  # UnInit_Device: void, only the status tells
            ret = 1
        check_status(f"{label}: {name}", ret, status.value)
        return int(ret)

    def device_count(self, label: str) -> int:
        """GetDeviceCount: how many recorders the library sees (0 if it sees none)."""
        status = ctypes.c_int(0)
        with self.lock:
            count = self.functions["GetDeviceCount"](ctypes.byref(status))
        if status.value == CONNECT_FAILED:
            return 0
        if status.value not in SUCCESS_CODES and status.value != 0:
            check_status(f"{label}: GetDeviceCount", 0, status.value)
        if count < 0:
            raise ProtocolError(f"{label}: GetDeviceCount returned {count}")
        return int(count)


_LIBRARIES: dict[str, _Library] = {}
_LIBRARIES_LOCK = threading.Lock()


def _check_safe(path: str) -> None:
    """Refuse a library that someone other than its owner could replace."""
    for p in (path, os.path.dirname(path)):
        st = os.stat(p)
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            kind = "folder" if stat.S_ISDIR(st.st_mode) else "file"
            raise VendorLibraryError(
                f"{path}: refusing to load, its {kind} {p} is writable by group or others"
            )


def load_library(path: Path) -> _Library:
    """Load (once per process) the library at `path`; VendorLibraryError names the path."""
    real = os.path.realpath(path)
    with _LIBRARIES_LOCK:
        lib = _LIBRARIES.get(real)
        if lib is not None:
            return lib
        if not os.path.isfile(real):
            raise VendorLibraryError(f"{path}: no such library file")
        _check_safe(real)
        try:
            cdll = ctypes.CDLL(real)
        except OSError as e:
            raise VendorLibraryError(f"cannot load {path}: {e}") from None
        lib = _Library(real, cdll)
        _LIBRARIES[real] = lib
        return lib


# --- sessions ---------------------------------------------------------------------------


def _buffer(text: str, encoding: str) -> ctypes.Array[ctypes.c_char]:
    """A writable NUL-terminated copy: the C signatures take `char *`, not `const char *`."""
    return ctypes.create_string_buffer(text.encode(encoding))


@dataclass
class _Probe:
    """What one library index answered while looking for the docked recorder."""

    index: int
    id_code: str
    password: str | None = None
    info: OfficerInfo | None = None
    error: RecorderError | None = None


class VendorLibrarySession(RecorderSession):
    """An open recorder, reached through its maker's library.

    `index` is None for a single-device library. Every call first reads the
    officer block and checks the serial: a recorder swapped behind the library's
    back is DeviceGone, and with a multi-device library a recorder whose index
    moved is found again.
    """

    def __init__(
        self,
        driver: VendorLibraryDriver,
        lib: _Library,
        device: DockedDevice,
        password: str,
        index: int | None,
        info: OfficerInfo,
    ) -> None:
        self.driver = driver
        self.lib = lib
        self.device = device
        self.password = password
        self.index = index
        self.serial = info.serial
        self._closed = False
        self._msdc = False

    # --- plumbing --------------------------------------------------------------------

    @property
    def _label(self) -> str:
        return f"{self.driver.name} (port {self.device.port})"

    def _call(self, function: str, *args: Any) -> int:
        return self.lib.call(self._label, function, *args, index=self.index)

    def _current(self) -> OfficerInfo:
        """The officer block of this session's recorder, following it if its index moved."""
        if self._closed:
            raise ProtocolError(f"{self._label}: session is closed")
        first_error: RecorderError | None = None
        try:
            info = self.driver.read_block(self.lib, self.index, self.password, self._label)
        except RecorderError as e:
            if self.index is None:
                raise
            first_error = e
        else:
            if info.serial == self.serial:
                return info
            if self.index is None:
                raise DeviceGone(
                    f"{self._label}: the library now answers for recorder {info.serial}, "
                    f"not {self.serial}"
                )
        for i in range(self.lib.device_count(self._label)):
            if i == self.index:
                continue
            try:
                self.driver.init(self.lib, i, self._label)
                found = self.driver.read_block(self.lib, i, self.password, self._label)
            except RecorderError:
                continue
            if found.serial == self.serial:
                log.info("%s: recorder %s moved to index %d", self._label, self.serial, i)
                self.index = i
                return found
        if first_error is not None and not isinstance(first_error, DeviceGone):
            raise first_error  # e.g. its password changed: say so, not "gone"
        raise DeviceGone(f"{self._label}: recorder {self.serial} no longer answers the library")

    def _usb_present(self) -> bool | None:
        """Whether the docked USB device is still in sysfs; None when that cannot be told."""
        if self.device.kind == "usb" and self.device.path.startswith("/sys/"):
            return os.path.isdir(self.device.path)
        return None

    # --- GA/T 947.4 calls ------------------------------------------------------------

    def id_code(self) -> str:
        with self.lib.lock:
            self._current()
            return self.driver.get_id_code(self.lib, self.index, self._label)

    def officer_info(self) -> OfficerInfo:
        with self.lib.lock:
            return self._current()

    def write_officer_info(self, info: OfficerInfo) -> None:
        raw = encode_officer_block(info, self.driver.config.layout, self.driver.config.encoding)
        # padded: a library with the other layout must not read past our buffer
        block = ctypes.create_string_buffer(raw, _BLOCK_BUFFER)
        with self.lib.lock:
            self._current()
            self._call("WriteZFYInfo", block, self._pwd())
            self.serial = info.serial.strip()

    def battery_percent(self) -> int:
        with self.lib.lock:
            self._current()
            battery = ctypes.c_int(-1)
            self._call("ReadDeviceBatteryDumpEnergy", ctypes.byref(battery), self._pwd())
        if not 0 <= battery.value <= 100:
            raise ProtocolError(f"{self._label}: battery level {battery.value} is not 0-100")
        return battery.value

    def resolution(self) -> tuple[int, int]:
        """ReadDeviceResolution: the recording width and height, in pixels."""
        width, height = ctypes.c_int(0), ctypes.c_int(0)
        with self.lib.lock:
            self._current()
            self._call(
                "ReadDeviceResolution", ctypes.byref(width), ctypes.byref(height), self._pwd()
            )
        if width.value <= 0 or height.value <= 0:
            raise ProtocolError(f"{self._label}: resolution {width.value}x{height.value}")
        return width.value, height.value

    def set_clock(self, now: dt.datetime) -> float | None:
        """SyncDevTime: the library sets the recorder to the host's own local time.

        The library cannot read the recorder clock, so the drift is unknown (None);
        `now` is only checked against the host's time zone.
        """
        if now.utcoffset() is not None and now.utcoffset() != now.astimezone().utcoffset():
            log.warning(
                "%s: SyncDevTime sets the host's local time (UTC%s), not the station's (UTC%s)",
                self._label,
                now.astimezone().strftime("%z"),
                now.strftime("%z"),
            )
        with self.lib.lock:
            self._current()
            self._call("SyncDevTime", self._pwd())
        return None

    def enter_mass_storage(self) -> None:
        with self.lib.lock:
            if self._msdc:
                return
            self._current()
            self._call("SetMSDC", self._pwd())
            self._msdc = True

    def card(self) -> None:
        """None: the recorder re-appears as a USB disk, which the station mounts."""
        return None

    def alive(self) -> bool:
        """Whether the recorder still answers as itself.

        After SetMSDC many recorders stop answering their library (they are now
        disks); then the USB device's presence in sysfs is the answer.
        """
        if self._closed:
            return False
        present = self._usb_present()
        if present is False:
            return False
        try:
            with self.lib.lock:
                self._current()
            return True
        except RecorderError:
            return bool(self._msdc and present)

    def close(self) -> None:
        with self.lib.lock:
            if self._closed:
                return
            self._closed = True
            if self in self.lib.sessions:
                self.lib.sessions.remove(self)
            if any(s.serial == self.serial for s in self.lib.sessions):
                return  # another session (a quick re-dock) still uses this recorder
            try:
                self._call("UnInit_Device")
            except RecorderError as e:
                log.debug("%s: UnInit_Device: %s", self._label, e)

    def _pwd(self) -> ctypes.Array[ctypes.c_char]:
        return _buffer(self.password, self.driver.config.encoding)


# --- the driver -------------------------------------------------------------------------


class VendorLibraryDriver(RecorderDriver):
    """Recorders of one maker, driven through the maker's GA/T 947.4 shared library."""

    def __init__(self, config: VendorLibraryConfig) -> None:
        self.config = config
        self.name = config.name
        self._ids = config.usb_id_pairs()
        self._lib: _Library | None = None

    def load(self) -> _Library:
        """Load the library now (it is otherwise loaded at the first open)."""
        if self._lib is None:
            self._lib = load_library(self.config.library)
        return self._lib

    @property
    def multi_device(self) -> bool:
        """Whether the library drives several recorders at once (loads it)."""
        return self.load().multi

    def match(self, device: DockedDevice) -> int:
        if device.kind != "usb" or device.vendor_id is None or device.product_id is None:
            return 0
        return 100 if (device.vendor_id, device.product_id) in self._ids else 0

    # --- calls shared with the sessions ----------------------------------------------

    def init(self, lib: _Library, index: int | None, label: str | None = None) -> str:
        """Init_Device: open the recorder; returns its ID code."""
        return self._id_code(lib, "Init_Device", index, label or self.name)

    def get_id_code(self, lib: _Library, index: int | None, label: str | None = None) -> str:
        """GetIDCode: the recorder's ID code."""
        return self._id_code(lib, "GetIDCode", index, label or self.name)

    def _id_code(self, lib: _Library, function: str, index: int | None, label: str) -> str:
        buf = ctypes.create_string_buffer(IDCODE_BUFFER)
        lib.call(label, function, buf, index=index)
        raw = buf.raw.partition(b"\0")[0]
        try:
            code = raw.decode(self.config.encoding).strip()
        except UnicodeDecodeError:
            raise ProtocolError(f"{label}: ID code is not valid text: {raw.hex(' ')}") from None
        if not code:
            raise ProtocolError(f"{label}: the recorder has an empty ID code")
        return code

    def read_block(
        self, lib: _Library, index: int | None, password: str, label: str | None = None
    ) -> OfficerInfo:
        """GetZFYInfo: read and decode the officer block."""
        label = label or self.name
        layout, encoding = self.config.layout, self.config.encoding
        # padded: a library with the other layout must not write past our buffer
        block = ctypes.create_string_buffer(_BLOCK_BUFFER)
        lib.call(label, "GetZFYInfo", block, _buffer(password, encoding), index=index)
        try:
            return decode_officer_block(block.raw[: zfy.block_size(layout)], layout, encoding)
        except ProtocolError as e:
            raise ProtocolError(f"{label}: {e.detail}") from None

    def _authenticate(
        self, lib: _Library, index: int | None, passwords: list[str], label: str
    ) -> tuple[str, OfficerInfo]:
        """Try each password with GetZFYInfo; AuthFailed if none is accepted."""
        for pw in passwords:
            try:
                return pw, self.read_block(lib, index, pw, label)
            except AuthFailed:
                continue
        where = "" if index is None else f" at index {index}"
        raise AuthFailed(f"{label}: none of {len(passwords)} configured passwords accepted{where}")

    def _usable_passwords(self, passwords: list[str]) -> list[str]:
        out = []
        for pw in self.config.passwords if self.config.passwords is not None else passwords:
            if self._sendable(pw):
                out.append(pw)
            else:
                log.warning("%s: skipping a password that cannot be sent", self.name)
        if not out:
            raise AuthFailed(f"{self.name}: no device passwords configured")
        return out

    def _sendable(self, password: str) -> bool:
        if "\0" in password:
            return False
        try:
            password.encode(self.config.encoding)
        except UnicodeEncodeError:
            return False
        return True

    def _serial_matches(self, device: DockedDevice, info: OfficerInfo, id_code: str) -> bool:
        serial = (device.serial or "").strip()
        return bool(serial) and serial in (info.serial, id_code)

    # --- open ------------------------------------------------------------------------

    def open(self, device: DockedDevice, passwords: list[str]) -> VendorLibrarySession:
        lib = self.load()
        pws = self._usable_passwords(passwords)
        label = f"{self.name} (port {device.port})"
        with lib.lock:
            if lib.multi:
                session = self._open_indexed(lib, device, pws, label)
            else:
                session = self._open_single(lib, device, pws, label)
            lib.sessions.append(session)
        log.info(
            "%s: port %d is recorder %s (library index %s)",
            self.name,
            device.port,
            session.serial,
            session.index,
        )
        return session

    def _open_single(
        self, lib: _Library, device: DockedDevice, passwords: list[str], label: str
    ) -> VendorLibrarySession:
        if lib.sessions:
            raise LibraryBusy(
                f"{label}: {lib.path} drives one recorder at a time and is in use "
                f"for port {lib.sessions[0].device.port}; port {device.port} must wait"
            )
        id_code = self.init(lib, None, label)
        try:
            pw, info = self._authenticate(lib, None, passwords, label)
            if self.config.require_serial_match and not self._serial_matches(device, info, id_code):
                raise ProtocolError(
                    f"{label}: the USB serial is {device.serial!r} but the "
                    f"library answers for recorder {info.serial} (ID code {id_code})"
                )
        except BaseException:
            self._uninit(lib, None, label)
            raise
        return VendorLibrarySession(self, lib, device, pw, None, info)

    def _probe(self, lib: _Library, passwords: list[str], label: str) -> list[_Probe]:
        probes = []
        for i in range(lib.device_count(label)):
            try:
                probe = _Probe(i, self.init(lib, i, label))
            except DeviceGone:
                continue  # gone since the count
            except RecorderError as e:
                probes.append(_Probe(i, "", error=e))
                continue
            try:
                probe.password, probe.info = self._authenticate(lib, i, passwords, label)
            except RecorderError as e:
                probe.error = e
            probes.append(probe)
        return probes

    def _open_indexed(
        self, lib: _Library, device: DockedDevice, passwords: list[str], label: str
    ) -> VendorLibrarySession:
        probes = self._probe(lib, passwords, label)
        if not probes:
            raise DeviceGone(f"{label}: {lib.path} sees no recorder")
        chosen = None
        try:
            chosen = self._choose(lib, device, probes, label)
        finally:
            held = {s.serial for s in lib.sessions}
            for p in probes:
                if p is not chosen and (p.info is None or p.info.serial not in held):
                    self._uninit(lib, p.index, label)
        assert chosen.info is not None and chosen.password is not None
        return VendorLibrarySession(self, lib, device, chosen.password, chosen.index, chosen.info)

    def _choose(
        self, lib: _Library, device: DockedDevice, probes: list[_Probe], label: str
    ) -> _Probe:
        """The probe that is the docked device: by USB serial, else the only one left."""
        known = [p for p in probes if p.info is not None]
        unknown = [p for p in probes if p.info is None]
        serial = (device.serial or "").strip()
        exact = [p for p in known if p.info and self._serial_matches(device, p.info, p.id_code)]
        if len(exact) == 1:
            return exact[0]
        if len(exact) > 1:
            raise ProtocolError(f"{label}: {len(exact)} recorders answer to USB serial {serial!r}")
        for p in unknown:
            if serial and p.id_code == serial and p.error is not None:
                raise p.error
        if self.config.require_serial_match:
            if len(unknown) == 1 and unknown[0].error is not None:
                raise unknown[0].error
            raise ProtocolError(
                f"{label}: none of the {len(probes)} recorders the library sees has "
                f"serial or ID code {serial!r}"
            )
        # The USB serial says nothing: the recorder not yet open on another port is ours.
        held = {s.serial for s in lib.sessions}
        pool = [p for p in known if p.info and p.info.serial not in held] + unknown
        if len(pool) == 1:
            if pool[0].error is not None:
                raise pool[0].error
            return pool[0]
        if not pool:
            raise ProtocolError(
                f"{label}: the {len(probes)} recorders the library sees are all open "
                "on other ports; none is new here"
            )
        raise ProtocolError(
            f"{label}: cannot tell which of {len(pool)} recorders is docked here "
            f"(USB serial {serial or 'none'} matches no officer-block serial or ID code)"
        )

    def _uninit(self, lib: _Library, index: int | None, label: str) -> None:
        try:
            lib.call(label, "UnInit_Device", index=index)
        except RecorderError as e:
            log.debug("%s: UnInit_Device: %s", label, e)
