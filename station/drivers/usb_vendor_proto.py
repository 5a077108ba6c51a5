"""The ZFYV wire format: GA/T 947.4 calls as vendor control requests on EP0.

ZFYV is the project's own invention: no recorder is known to speak it. It is kept
as the reference for makers who adopt it (docs/usb-vendor-protocol.md).

This module is the protocol, as code: request codes, status and reason codes,
payload layouts with their pack/unpack functions, and a reference device side
(`ReferenceRecorder`) that answers SETUP packets the way a recorder must. It is
shared by the station's driver (station/drivers/usb_vendor.py), the pyusb emulator in
the tests and the FunctionFS gadget responder, so it needs the standard library
only: besides it, it imports just station/drivers/zfy.py (the officer block codec) and
station/drivers/base.py, both standard library only. A VM needs the `drivers` package
with those files on its path (the HIL guest mounts the whole repository). The
prose version, with the request table and byte layouts, is
docs/usb-vendor-protocol.md.

Summary. Every call is one control transfer to the device (recipient device,
type vendor): bmRequestType 0xC0 for device-to-host, 0x40 for host-to-device.
wIndex carries a 16-bit tag the device echoes in LAST_STATUS. Multi-byte
integers are little-endian. A refused request is a STALL; the host then reads
LAST_STATUS (never refused) for the GA/T 947.4 status code, a reason code and
a short text. The password travels once, in the data stage of AUTH, and holds
until the device is reset, re-enumerated or sees a wrong password.

Why one module of about 650 lines: it must be a single standard-library-only file,
copied as is into the HIL guest's gadget responder.
"""

from __future__ import annotations

import datetime as dt
import enum
import hmac
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from station.drivers import zfy
from station.drivers.base import OfficerInfo

PROTOCOL_NAME = "ZFYV"
MAGIC = b"ZFYV"
PROTOCOL_VERSION = 1  # the highest version this module speaks
MIN_PROTOCOL_VERSION = 1  # the lowest version this module accepts

REQUEST_TYPE_IN = 0xC0  # device-to-host | vendor | recipient device
REQUEST_TYPE_OUT = 0x40  # host-to-device | vendor | recipient device
DIR_IN = 0x80  # the direction bit of bmRequestType
TYPE_MASK = 0x60
TYPE_VENDOR = 0x40
RECIPIENT_MASK = 0x1F


class Request(enum.IntEnum):
    """bRequest codes. 1-14 follow the DV16 SCSI command numbers of GAT947.md section 2."""

    HELLO = 0x01  # IN: protocol magic, version, capabilities (Init_Device)
    GET_ID_CODE = 0x02  # IN: the device ID code (GetIDCode)
    GET_OFFICER = 0x03  # IN: the 94-byte officer block (GetZFYInfo)
    SET_OFFICER = 0x04  # OUT: the 94-byte officer block (WriteZFYInfo)
    SET_TIME = 0x05  # OUT: set the recorder clock (SyncDevTime)
    SET_MSDC = 0x06  # OUT: switch to mass storage and re-enumerate (SetMSDC)
    GET_BATTERY = 0x08  # IN: remaining charge (ReadDeviceBatteryDumpEnergy)
    LAST_STATUS = 0x0E  # IN: outcome of the previous request; never refused
    AUTH = 0x20  # OUT: the device password
    GET_TIME = 0x21  # IN: read the recorder clock


# Reserved so that a later version can follow the SCSI numbering: 0x07 resolution,
# 0x0A set password, 0x0B set ID code, 0x0C card status. 0x0D ("read password") is
# never assigned: this protocol has no way to read a password back (GAT947.md, security).
RESERVED_REQUESTS = frozenset({0x07, 0x0A, 0x0B, 0x0C, 0x0D})

IN_REQUESTS = frozenset(
    {
        Request.HELLO,
        Request.GET_ID_CODE,
        Request.GET_OFFICER,
        Request.GET_BATTERY,
        Request.GET_TIME,
        Request.LAST_STATUS,
    }
)
OUT_REQUESTS = frozenset({Request.SET_OFFICER, Request.SET_TIME, Request.SET_MSDC, Request.AUTH})

# Requests that need a successful AUTH first.
AUTH_REQUIRED = frozenset(
    {
        Request.GET_OFFICER,
        Request.SET_OFFICER,
        Request.SET_TIME,
        Request.SET_MSDC,
        Request.GET_BATTERY,
        Request.GET_TIME,
    }
)

# wLength the host sends for each IN request: the most it accepts. A device sends
# min(wLength, its reply); later versions may append fields, which v1 hosts ignore.
IN_LENGTH: dict[int, int] = {
    Request.HELLO: 64,
    Request.GET_ID_CODE: 16,
    Request.GET_OFFICER: 94,
    Request.GET_BATTERY: 8,
    Request.GET_TIME: 16,
    Request.LAST_STATUS: 64,
}


class Status(enum.IntEnum):
    """GA/T 947.4 status codes (the `*iRet` values), as LAST_STATUS reports them."""

    NONE = 0  # no request since reset
    CONNECT_SUCCESS = 1  # generic success
    CONNECT_FAILED = 2  # generic failure
    CHECK_PWD_SUCCESS = 3
    CHECK_PWD_FAILED = 4  # wrong password, or not authenticated
    SET_SYSTEMTIME_SUCCESS = 5
    SET_SYSTEMTIME_FAILED = 6
    MSDC_SUCCESS = 7
    MSDC_FAILED = 8


class Reason(enum.IntEnum):
    """Why a request failed, in more detail than the GA/T status code."""

    OK = 0
    UNKNOWN_REQUEST = 1  # bRequest unknown, reserved, or sent in the wrong direction
    BAD_LENGTH = 2  # data stage or wLength of the wrong size
    BAD_VALUE = 3  # payload or wValue invalid (bad date, empty serial, not GBK...)
    NOT_AUTHENTICATED = 4  # the request needs AUTH first
    WRONG_PASSWORD = 5  # AUTH with a password the recorder does not hold
    RATE_LIMITED = 6  # too many wrong passwords: AUTH refused for a while
    BUSY = 7  # the recorder cannot do it now (recording, writing its card)
    NO_CARD = 8  # SET_MSDC impossible: card missing or failed
    HARDWARE = 9  # clock, battery gauge or flash failure
    UNSUPPORTED_VERSION = 10  # HELLO: no common protocol version


SUCCESS_STATUS: dict[int, Status] = {
    Request.AUTH: Status.CHECK_PWD_SUCCESS,
    Request.SET_TIME: Status.SET_SYSTEMTIME_SUCCESS,
    Request.SET_MSDC: Status.MSDC_SUCCESS,
}
FAILURE_STATUS: dict[int, Status] = {
    Request.AUTH: Status.CHECK_PWD_FAILED,
    Request.SET_TIME: Status.SET_SYSTEMTIME_FAILED,
    Request.SET_MSDC: Status.MSDC_FAILED,
}


def success_status(request: int) -> Status:
    """The GA/T status a device records when `request` succeeds."""
    return SUCCESS_STATUS.get(request, Status.CONNECT_SUCCESS)


def failure_status(request: int, reason: Reason) -> Status:
    """The GA/T status a device records when `request` fails for `reason`."""
    if reason in (Reason.NOT_AUTHENTICATED, Reason.WRONG_PASSWORD, Reason.RATE_LIMITED):
        return Status.CHECK_PWD_FAILED
    return FAILURE_STATUS.get(request, Status.CONNECT_FAILED)


def request_name(request: int) -> str:
    """A readable name for a bRequest code, known or not."""
    try:
        return Request(request).name
    except ValueError:
        return f"REQUEST_0x{request:02X}"


class WireError(ValueError):
    """A payload that does not follow the wire format."""


# --- HELLO ------------------------------------------------------------------------

CAP_GET_TIME = 0x0001  # GET_TIME is implemented: the host can measure clock drift
CAP_UNIX_TIME = 0x0002  # the recorder keeps the u32 unix time of SET_TIME and reports it

_HELLO = struct.Struct("<4sBBH")  # magic, version, max_version, capabilities


@dataclass(frozen=True)
class Hello:
    """The HELLO reply: which protocol version the device speaks to this host."""

    version: int  # the version used on this connection: min(host's wValue, device max)
    max_version: int  # the highest version the device knows
    capabilities: int = 0

    def pack(self) -> bytes:
        """The reply bytes (8 in version 1)."""
        return _HELLO.pack(MAGIC, self.version, self.max_version, self.capabilities)

    @classmethod
    def unpack(cls, data: bytes) -> Hello:
        """Parse a HELLO reply; extra trailing bytes (later versions) are ignored."""
        if len(data) < _HELLO.size:
            raise WireError(f"HELLO reply of {len(data)} bytes, expected at least {_HELLO.size}")
        magic, version, max_version, caps = _HELLO.unpack_from(data)
        if magic != MAGIC:
            raise WireError(f"HELLO magic {magic!r}, expected {MAGIC!r}")
        if version < 1 or max_version < version:
            raise WireError(f"HELLO version {version} (max {max_version}) is inconsistent")
        return cls(version, max_version, caps)


# --- LAST_STATUS -------------------------------------------------------------------

_STATUS = struct.Struct("<BBHBB")  # request, status, tag, reason, message length
STATUS_MESSAGE_MAX = IN_LENGTH[Request.LAST_STATUS] - _STATUS.size  # 58


@dataclass(frozen=True)
class LastStatus:
    """The outcome of the most recent request (other than LAST_STATUS itself)."""

    request: int = 0  # its bRequest; 0 when there was none since reset
    status: int = Status.NONE  # GA/T 947.4 code
    tag: int = 0  # its wIndex
    reason: int = Reason.OK
    message: str = ""  # short readable text, UTF-8 on the wire

    @property
    def ok(self) -> bool:
        """Whether that request succeeded."""
        return self.reason == Reason.OK and self.status != Status.NONE

    def pack(self) -> bytes:
        """The reply bytes; the message is cut to 58 bytes on a character boundary."""
        text = self.message.encode("utf-8")[:STATUS_MESSAGE_MAX]
        text = text.decode("utf-8", "ignore").encode("utf-8")
        return (
            _STATUS.pack(self.request, self.status, self.tag & 0xFFFF, self.reason, len(text))
            + text
        )

    @classmethod
    def unpack(cls, data: bytes) -> LastStatus:
        """Parse a LAST_STATUS reply; an undecodable message is replaced, not refused."""
        if len(data) < _STATUS.size:
            raise WireError(f"LAST_STATUS reply of {len(data)} bytes, expected at least 6")
        request, status, tag, reason, n = _STATUS.unpack_from(data)
        text = bytes(data[_STATUS.size : _STATUS.size + n])
        return cls(request, status, tag, reason, text.decode("utf-8", "replace"))

    def describe(self) -> str:
        """One line for logs and error messages; device text is shown escaped."""
        try:
            status = Status(self.status).name
        except ValueError:
            status = f"status {self.status}"
        try:
            reason = Reason(self.reason).name
        except ValueError:
            reason = f"reason {self.reason}"
        text = f"{request_name(self.request)}: {status}, {reason}"
        if self.message:
            shown = "".join(c if c.isprintable() else "?" for c in self.message)
            text += f" ({shown})"
        return text


# --- GET_ID_CODE ---------------------------------------------------------------------

ID_CODE_MAX = IN_LENGTH[Request.GET_ID_CODE]


def pack_id_code(id_code: str) -> bytes:
    """The GET_ID_CODE reply: the code as ASCII, no terminator."""
    raw = id_code.encode("ascii")
    if not 1 <= len(raw) <= ID_CODE_MAX or not _printable_ascii(raw):
        raise WireError(f"ID code {id_code!r} must be 1-{ID_CODE_MAX} printable ASCII characters")
    return raw


def unpack_id_code(data: bytes) -> str:
    """Parse a GET_ID_CODE reply; trailing NUL padding is allowed."""
    raw = bytes(data).rstrip(b"\0")
    if not raw or not _printable_ascii(raw):
        raise WireError(f"ID code {bytes(data)!r} is not printable ASCII")
    return raw.decode("ascii")


def _printable_ascii(raw: bytes) -> bool:
    return all(0x20 < b < 0x7F for b in raw)


# --- GET_OFFICER / SET_OFFICER -------------------------------------------------------

# GAT947.md section 1, codec in station/drivers/zfy.py. The wire always uses LAYOUT_94; the
# 89-byte layout is here for drivers of older families that share this codec.
OFFICER_FIELDS = zfy.FIELDS
LAYOUT_94 = zfy.LAYOUTS["94"]  # (8, 7, 33, 13, 33): NUL-terminated fields
LAYOUT_89 = zfy.LAYOUTS["89"]  # (7, 6, 32, 12, 32): the same fields without terminators
OFFICER_BLOCK_SIZE = sum(LAYOUT_94)  # 94
_LAYOUT_NAMES = {LAYOUT_94: "94", LAYOUT_89: "89"}


@dataclass(frozen=True)
class OfficerBlock(OfficerInfo):
    """ZFY_INFO as it travels on the wire: the five text fields of OfficerInfo."""

    def problems(self) -> list[str]:
        """What GA/T 947.4 forbids in this block: empty serial or officer number."""
        out = []
        if not self.serial.strip():
            out.append("serial is empty")
        if not self.officer_no.strip():
            out.append("officer number is empty")
        return out


def _layout_name(layout: tuple[int, ...]) -> str:
    """The zfy layout name ("94" or "89") of LAYOUT_94 or LAYOUT_89."""
    try:
        return _LAYOUT_NAMES[tuple(layout)]
    except KeyError:
        raise ValueError(f"unknown officer block layout {layout}") from None


# The wire codec checks the layout only: empty identifiers are for the caller to refuse
# (`problems`), text is kept as sent (no stripping, control characters other than NUL
# allowed), and a field filling its whole slot without a NUL is read to the slot's end.


def pack_officer(
    block: OfficerInfo, encoding: str = "gbk", layout: tuple[int, ...] = LAYOUT_94
) -> bytes:
    """The officer block bytes; raises WireError if a field is too long or not encodable."""
    name = _layout_name(layout)
    try:
        return zfy.encode(block, name, encoding, require_ids=False, allow_control=True)
    except zfy.OfficerBlockError as e:
        raise WireError(str(e)) from None


def unpack_officer(
    data: bytes, encoding: str = "gbk", layout: tuple[int, ...] = LAYOUT_94
) -> OfficerBlock:
    """Parse an officer block: each field ends at its first NUL or at the end of its slot."""
    name = _layout_name(layout)
    try:
        info = zfy.decode(
            data,
            name,
            encoding,
            require_ids=False,
            allow_control=True,
            require_nul=False,
            strip=False,
        )
    except zfy.OfficerBlockError as e:
        raise WireError(str(e)) from None
    return OfficerBlock(**asdict(info))


# --- GET_BATTERY ---------------------------------------------------------------------

BATTERY_CHARGING = 0x01
BATTERY_EXTERNAL_POWER = 0x02
_BATTERY = struct.Struct("<BB")


@dataclass(frozen=True)
class Battery:
    """The GET_BATTERY reply: charge in percent, and power flags."""

    percent: int
    flags: int = 0

    def pack(self) -> bytes:
        """The reply bytes (2)."""
        if not 0 <= self.percent <= 100:
            raise WireError(f"battery level {self.percent} out of 0-100")
        return _BATTERY.pack(self.percent, self.flags)

    @classmethod
    def unpack(cls, data: bytes) -> Battery:
        """Parse a GET_BATTERY reply (the flags byte may be missing)."""
        if not data:
            raise WireError("empty GET_BATTERY reply")
        percent = data[0]
        if percent > 100:
            raise WireError(f"battery level {percent} out of 0-100")
        return cls(percent, data[1] if len(data) > 1 else 0)


# --- GET_TIME / SET_TIME -------------------------------------------------------------

_TIME_LOCAL = struct.Struct("<HBBBBB")  # year, month, day, hour, minute, second: 7 bytes
_TIME_FULL = struct.Struct("<HBBBBBI")  # ... and u32 unix time (0 = not given): 11 bytes
TIME_SIZES = (_TIME_LOCAL.size, _TIME_FULL.size)


@dataclass(frozen=True)
class DeviceTime:
    """A recorder clock reading or setting: local wall time, whole seconds.

    `unix` is the same instant as seconds since 1970 UTC when the sender knows it
    (the station always does; a recorder with CAP_UNIX_TIME does), else None.
    """

    local: dt.datetime  # naive, local time of the station's zone
    unix: int | None = None

    def pack(self) -> bytes:
        """11 bytes: u16 year, u8 month, day, hour, minute, second, u32 unix (0 = none)."""
        t = self.local
        if t.tzinfo is not None:
            raise WireError("DeviceTime.local must be naive local time")
        if not 0 <= (self.unix or 0) <= 0xFFFFFFFF:
            raise WireError(f"unix time {self.unix} out of u32 range")
        return _TIME_FULL.pack(t.year, t.month, t.day, t.hour, t.minute, t.second, self.unix or 0)

    @classmethod
    def unpack(cls, data: bytes) -> DeviceTime:
        """Parse 7 or 11 (or more, from later versions) bytes; an impossible date is refused."""
        data = bytes(data)
        if len(data) < _TIME_LOCAL.size:
            raise WireError(f"time of {len(data)} bytes, expected 7 or 11")
        year, month, day, hour, minute, second = _TIME_LOCAL.unpack_from(data)
        unix = _TIME_FULL.unpack_from(data)[6] if len(data) >= _TIME_FULL.size else 0
        try:
            local = dt.datetime(year, month, day, hour, minute, second)
        except ValueError:
            raise WireError(
                f"impossible time {year:04d}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:"
                f"{second:02d}"
            ) from None
        return cls(local, unix or None)


# --- AUTH ----------------------------------------------------------------------------

PASSWORD_MAX = 32


def pack_password(password: str, encoding: str = "gbk") -> bytes:
    """The AUTH data stage: the password bytes, no terminator, 1-32 bytes."""
    try:
        raw = password.encode(encoding)
    except UnicodeEncodeError:
        raise WireError(f"password cannot be written in {encoding}") from None
    if not 1 <= len(raw) <= PASSWORD_MAX or b"\0" in raw:
        raise WireError(f"password must be 1-{PASSWORD_MAX} bytes without NUL")
    return raw


# --- the device side -----------------------------------------------------------------


class Stall(Exception):
    """Raised by the device side: STALL this request and record why in LAST_STATUS."""

    def __init__(self, reason: Reason, message: str = "") -> None:
        super().__init__(f"{reason.name}: {message}" if message else reason.name)
        self.reason = reason
        self.message = message


@dataclass
class RecorderState:
    """What a reference recorder holds."""

    id_code: str = "ZFY01"
    password: str = "000000"
    officer: OfficerBlock = field(default_factory=lambda: OfficerBlock("A000001", "000001"))
    battery_percent: int = 80
    battery_flags: int = 0
    clock_offset_s: float = 0.0  # recorder clock minus the host clock `now()`
    card_ok: bool = True
    busy: bool = False  # refuse everything but HELLO/ID/LAST_STATUS with BUSY
    max_failed_auth: int = 0  # wrong passwords in a row before RATE_LIMITED (0 = never)


class ReferenceRecorder:
    """The device side of the protocol: answers SETUP packets, as a recorder must.

    Transport-free: a FunctionFS responder feeds it each SETUP event, the test
    emulator each `ctrl_transfer`. `setup()` returns the IN reply (cut to
    wLength) or None for OUT requests, and raises Stall to refuse; either way
    LAST_STATUS is updated first. The transport then:

    - IN request: write the reply to EP0, or on Stall halt EP0 (FunctionFS: a
      read() on ep0 for an IN setup stalls it).
    - OUT request without data (SET_MSDC): acknowledge the status stage, or on
      Stall halt EP0 (FunctionFS: a write() on ep0 for an OUT setup).
    - OUT request with data: read the data (which completes the data stage and,
      on FunctionFS, the status stage), then call setup() and ignore Stall: the
      host reads LAST_STATUS after every such request. A controller that can
      still stall the status stage may do so.

    After acknowledging SET_MSDC the transport checks `switch_requested`, waits
    about 100 ms for the status stage to reach the host, and re-enumerates as
    mass storage. A bus reset or re-enumeration must call `reset()`.
    """

    def __init__(
        self,
        state: RecorderState | None = None,
        *,
        encoding: str = "gbk",
        now: Callable[[], dt.datetime] = dt.datetime.now,
        max_version: int = PROTOCOL_VERSION,
        capabilities: int = CAP_GET_TIME | CAP_UNIX_TIME,
    ) -> None:
        self.state = state or RecorderState()
        self.encoding = encoding
        self.now = now
        self.max_version = max_version
        self.capabilities = capabilities
        self.authenticated = False
        self.failed_auth = 0
        self.last = LastStatus()
        self.switch_requested = False
        self.unix_offset_s: float | None = None

    def reset(self) -> None:
        """Bus reset or new enumeration: forget the authentication and the last status."""
        self.authenticated = False
        self.last = LastStatus()
        self.switch_requested = False

    def clock(self) -> dt.datetime:
        """The recorder's local clock now."""
        return self.now() + dt.timedelta(seconds=self.state.clock_offset_s)

    def setup(
        self,
        bm_request_type: int,
        b_request: int,
        w_value: int,
        w_index: int,
        data_or_length: bytes | int,
    ) -> bytes | None:
        """Handle one vendor SETUP: `data_or_length` is the OUT data or the IN wLength."""
        if b_request == Request.LAST_STATUS and bm_request_type == REQUEST_TYPE_IN:
            assert isinstance(data_or_length, int)
            return self.last.pack()[:data_or_length]
        try:
            reply = self._dispatch(bm_request_type, b_request, w_value, data_or_length)
        except Stall as e:
            self.last = LastStatus(
                b_request, failure_status(b_request, e.reason), w_index, e.reason, e.message
            )
            raise
        self.last = LastStatus(b_request, success_status(b_request), w_index, Reason.OK)
        if reply is not None:
            assert isinstance(data_or_length, int)
            return reply[:data_or_length]
        return None

    def _dispatch(
        self, bm_request_type: int, b_request: int, w_value: int, data_or_length: bytes | int
    ) -> bytes | None:
        if bm_request_type & (TYPE_MASK | RECIPIENT_MASK) != TYPE_VENDOR:
            raise Stall(Reason.UNKNOWN_REQUEST, "not a vendor request to the device")
        is_in = bool(bm_request_type & DIR_IN)
        try:
            request = Request(b_request)
        except ValueError:
            raise Stall(Reason.UNKNOWN_REQUEST, f"unknown request 0x{b_request:02X}") from None
        if is_in != (request in IN_REQUESTS):
            raise Stall(Reason.UNKNOWN_REQUEST, f"{request.name} sent in the wrong direction")
        if is_in:
            if not isinstance(data_or_length, int):
                raise Stall(Reason.BAD_LENGTH, "IN request without wLength")
            data = b""
        else:
            if isinstance(data_or_length, int):
                raise Stall(Reason.BAD_LENGTH, "OUT request without data")
            data = bytes(data_or_length)
        if request in AUTH_REQUIRED and not self.authenticated:
            raise Stall(Reason.NOT_AUTHENTICATED, "send AUTH first")
        if self.state.busy and request not in (Request.HELLO, Request.GET_ID_CODE):
            raise Stall(Reason.BUSY, "recorder busy")
        handler = getattr(self, f"_do_{request.name.lower()}")
        return handler(w_value, data)

    # one method per request: (wValue, OUT data) -> IN reply or None

    def _do_hello(self, w_value: int, data: bytes) -> bytes:
        if w_value < MIN_PROTOCOL_VERSION:
            raise Stall(Reason.UNSUPPORTED_VERSION, f"host version {w_value}")
        version = min(w_value, self.max_version)
        return Hello(version, self.max_version, self.capabilities).pack()

    def _do_get_id_code(self, w_value: int, data: bytes) -> bytes:
        return pack_id_code(self.state.id_code)

    def _do_get_officer(self, w_value: int, data: bytes) -> bytes:
        return pack_officer(self.state.officer, self.encoding)

    def _do_set_officer(self, w_value: int, data: bytes) -> None:
        if len(data) != OFFICER_BLOCK_SIZE:
            raise Stall(Reason.BAD_LENGTH, f"{len(data)} bytes, expected {OFFICER_BLOCK_SIZE}")
        try:
            block = unpack_officer(data, self.encoding)
        except WireError as e:
            raise Stall(Reason.BAD_VALUE, str(e)) from None
        if block.problems():
            raise Stall(Reason.BAD_VALUE, "; ".join(block.problems()))
        self.state.officer = block

    def _do_get_battery(self, w_value: int, data: bytes) -> bytes:
        return Battery(self.state.battery_percent, self.state.battery_flags).pack()

    def _do_get_time(self, w_value: int, data: bytes) -> bytes:
        if not self.capabilities & CAP_GET_TIME:
            raise Stall(Reason.UNKNOWN_REQUEST, "clock not readable")
        local = self.clock().replace(microsecond=0)
        unix = None
        if self.capabilities & CAP_UNIX_TIME and self.unix_offset_s is not None:
            unix = int(self.now().timestamp() + self.unix_offset_s)
        return DeviceTime(local, unix).pack()

    def _do_set_time(self, w_value: int, data: bytes) -> None:
        if len(data) not in TIME_SIZES:
            raise Stall(Reason.BAD_LENGTH, f"{len(data)} bytes, expected 7 or 11")
        try:
            t = DeviceTime.unpack(data)
        except WireError as e:
            raise Stall(Reason.BAD_VALUE, str(e)) from None
        now = self.now()
        self.state.clock_offset_s = (t.local - now).total_seconds()
        if t.unix is not None:
            self.unix_offset_s = t.unix - now.timestamp()

    def _do_set_msdc(self, w_value: int, data: bytes) -> None:
        if data:
            raise Stall(Reason.BAD_LENGTH, "SET_MSDC takes no data")
        if not self.state.card_ok:
            raise Stall(Reason.NO_CARD, "card missing or failed")
        self.switch_requested = True

    def _do_auth(self, w_value: int, data: bytes) -> None:
        limit = self.state.max_failed_auth
        if limit and self.failed_auth >= limit:
            raise Stall(Reason.RATE_LIMITED, "too many wrong passwords")
        expected = self.state.password.encode(self.encoding)
        if not 1 <= len(data) <= PASSWORD_MAX or not hmac.compare_digest(data, expected):
            self.authenticated = False
            self.failed_auth += 1
            raise Stall(Reason.WRONG_PASSWORD)
        self.failed_auth = 0
        self.authenticated = True
