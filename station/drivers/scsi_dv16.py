"""Recorders of the "DV16" chipset family: GA/T 947.4 calls as vendor SCSI commands.

These recorders enumerate as a USB mass-storage device that answers SCSI INQUIRY
as ``DV16 DEVICE V1.00`` and take 16-byte vendor command blocks (GAT947.md 2.1)
sent with SG_IO on the device's ``/dev/sg*`` node. See docs/scsi-dv16.md for the
command table, the payloads and the password rule.

Layers, bottom up:

- `SgIoHdr` / `SgDevice`: the Linux ``sg_io_hdr`` and the one ``ioctl(fd, SG_IO,
  hdr)`` call. The ioctl is injectable, so tests plug an emulated device in below
  it and everything above runs unchanged. Kernel and transport failures become
  typed errors here: host_status "no connect" or ENODEV is `DeviceGone`, CHECK
  CONDITION is `ScsiCheckCondition` (a `ProtocolError` carrying the sense data), a
  short transfer is `ProtocolError`.
- `inquiry`: the standard INQUIRY, the only command ever sent to a device that has
  not identified itself as DV16.
- `ScsiDv16Session`: the vendor commands, exactly as the public vendor code sends
  them (JieLi's USBJL.cpp): the same commands, directions and lengths (writes of
  89, 7 and 0 bytes), the device's last status (command 14) where that code reads
  it, turned into `AuthFailed` / `ProtocolError`.

The password: this family's firmware checks nothing. The host reads the
recorder's password (command 13) and compares it itself, before every protected
call, as the public code does; the station does the same. That proves only that
the station holds the recorder's password, not that the recorder is legitimate:
anything on the USB bus can read the password, and a recorder can answer any
password it likes (GAT947.md section 2, security note). The set-password and
set-ID-code commands are never sent.

Why one module of about 950 lines: the layers below are the one family's transport,
command table and session, each small; only the driver uses them.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import datetime as dt
import enum
import errno
import fcntl
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from station.drivers import zfy
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

log = logging.getLogger(__name__)

# --- SG_IO (include/scsi/sg.h, include/scsi/scsi_status.h) ------------------------------

SG_IO = 0x2285
SG_INTERFACE_ID = ord("S")
SG_DXFER_NONE = -1
SG_DXFER_TO_DEV = -2
SG_DXFER_FROM_DEV = -3
SG_INFO_OK_MASK = 0x1
SENSE_BUFFER_LEN = 64

SAM_STAT_GOOD = 0x00
SAM_STAT_CHECK_CONDITION = 0x02
SCSI_STATUS_NAMES = {
    0x02: "CHECK CONDITION",
    0x04: "CONDITION MET",
    0x08: "BUSY",
    0x18: "RESERVATION CONFLICT",
    0x22: "COMMAND TERMINATED",
    0x28: "TASK SET FULL",
    0x30: "ACA ACTIVE",
    0x40: "TASK ABORTED",
}

DID_OK = 0x00
DID_NO_CONNECT = 0x01
DID_BUS_BUSY = 0x02
DID_TIME_OUT = 0x03
DID_BAD_TARGET = 0x04
DID_ABORT = 0x05
DID_PARITY = 0x06
DID_ERROR = 0x07
DID_RESET = 0x08
DID_BAD_INTR = 0x09
DID_PASSTHROUGH = 0x0A
DID_SOFT_ERROR = 0x0B
DID_IMM_RETRY = 0x0C
DID_REQUEUE = 0x0D
DID_TRANSPORT_DISRUPTED = 0x0E
DID_TRANSPORT_FAILFAST = 0x0F
HOST_STATUS_NAMES = {
    DID_NO_CONNECT: "DID_NO_CONNECT",
    DID_BUS_BUSY: "DID_BUS_BUSY",
    DID_TIME_OUT: "DID_TIME_OUT",
    DID_BAD_TARGET: "DID_BAD_TARGET",
    DID_ABORT: "DID_ABORT",
    DID_PARITY: "DID_PARITY",
    DID_ERROR: "DID_ERROR",
    DID_RESET: "DID_RESET",
    DID_BAD_INTR: "DID_BAD_INTR",
    DID_PASSTHROUGH: "DID_PASSTHROUGH",
    DID_SOFT_ERROR: "DID_SOFT_ERROR",
    DID_IMM_RETRY: "DID_IMM_RETRY",
    DID_REQUEUE: "DID_REQUEUE",
    DID_TRANSPORT_DISRUPTED: "DID_TRANSPORT_DISRUPTED",
    DID_TRANSPORT_FAILFAST: "DID_TRANSPORT_FAILFAST",
}
# The host adapter says the device is not there (any more), or was reset under us.
DEVICE_GONE_HOST_STATUS = frozenset(
    {DID_NO_CONNECT, DID_BAD_TARGET, DID_RESET, DID_TRANSPORT_DISRUPTED, DID_TRANSPORT_FAILFAST}
)

DRIVER_STATUS_MASK = 0x0F
DRIVER_SENSE = 0x08
DRIVER_STATUS_NAMES = {
    0x01: "DRIVER_BUSY",
    0x02: "DRIVER_SOFT",
    0x03: "DRIVER_MEDIA",
    0x04: "DRIVER_ERROR",
    0x05: "DRIVER_INVALID",
    0x06: "DRIVER_TIMEOUT",
    0x07: "DRIVER_HARD",
}

# errno values from open() or SG_IO that mean the node or the device behind it is gone.
DEVICE_GONE_ERRNOS = frozenset({errno.ENODEV, errno.ENXIO, errno.ENOENT, errno.ESHUTDOWN})

SENSE_KEYS = (
    "NO SENSE",
    "RECOVERED ERROR",
    "NOT READY",
    "MEDIUM ERROR",
    "HARDWARE ERROR",
    "ILLEGAL REQUEST",
    "UNIT ATTENTION",
    "DATA PROTECT",
    "BLANK CHECK",
    "VENDOR SPECIFIC",
    "COPY ABORTED",
    "ABORTED COMMAND",
    "RESERVED",
    "VOLUME OVERFLOW",
    "MISCOMPARE",
    "COMPLETED",
)


class SgIoHdr(ctypes.Structure):
    """``struct sg_io_hdr`` from <scsi/sg.h>, native layout (88 bytes on 64-bit Linux)."""

    _fields_ = (
        ("interface_id", ctypes.c_int),  # 'S'
        ("dxfer_direction", ctypes.c_int),  # SG_DXFER_*
        ("cmd_len", ctypes.c_ubyte),
        ("mx_sb_len", ctypes.c_ubyte),  # room at sbp
        ("iovec_count", ctypes.c_ushort),  # 0: dxferp is a flat buffer
        ("dxfer_len", ctypes.c_uint),
        ("dxferp", ctypes.c_void_p),
        ("cmdp", ctypes.c_void_p),
        ("sbp", ctypes.c_void_p),
        ("timeout", ctypes.c_uint),  # milliseconds
        ("flags", ctypes.c_uint),
        ("pack_id", ctypes.c_int),
        ("usr_ptr", ctypes.c_void_p),
        ("status", ctypes.c_ubyte),  # [out] SCSI status byte
        ("masked_status", ctypes.c_ubyte),
        ("msg_status", ctypes.c_ubyte),
        ("sb_len_wr", ctypes.c_ubyte),  # [out] sense bytes written
        ("host_status", ctypes.c_ushort),  # [out] DID_*
        ("driver_status", ctypes.c_ushort),  # [out] DRIVER_*
        ("resid", ctypes.c_int),  # [out] dxfer_len - bytes actually transferred
        ("duration", ctypes.c_uint),  # [out] milliseconds
        ("info", ctypes.c_uint),  # [out] SG_INFO_*
    )


# fcntl.ioctl's shape: (fd, request, writable buffer) -> int. The one call into the kernel.
IoctlFn = Callable[[int, int, Any], object]


@dataclass(frozen=True)
class SgResult:
    """What came back from one SG_IO call, not yet judged."""

    data: bytes  # the data-in buffer (read_len bytes, including any untransferred tail)
    status: int
    host_status: int
    driver_status: int
    resid: int
    sense: bytes
    duration_ms: int
    info: int


def parse_sense(sense: bytes) -> tuple[int, int, int] | None:
    """(sense key, ASC, ASCQ) from fixed (0x70/0x71) or descriptor (0x72/0x73) sense data."""
    if len(sense) < 3:
        return None
    code = sense[0] & 0x7F
    if code in (0x70, 0x71):
        asc = sense[12] if len(sense) > 12 else 0
        ascq = sense[13] if len(sense) > 13 else 0
        return sense[2] & 0x0F, asc, ascq
    if code in (0x72, 0x73) and len(sense) >= 4:
        return sense[1] & 0x0F, sense[2], sense[3]
    return None


def describe_sense(sense: bytes) -> str:
    """Sense data in words, for error messages and the event log."""
    parsed = parse_sense(sense)
    if parsed is None:
        return f"sense {sense.hex() or 'none'}"
    key, asc, ascq = parsed
    return f"sense key 0x{key:x} ({SENSE_KEYS[key]}), ASC/ASCQ 0x{asc:02x}/0x{ascq:02x}"


class ScsiCheckCondition(ProtocolError):
    """The device ended a command with CHECK CONDITION; the sense data is kept."""

    def __init__(self, what: str, sense: bytes) -> None:
        super().__init__(f"{what}: CHECK CONDITION, {describe_sense(sense)}")
        self.sense = sense
        parsed = parse_sense(sense)
        self.sense_key, self.asc, self.ascq = parsed if parsed else (None, None, None)


class SgDevice:
    """One ``/dev/sg*`` node, open for SG_IO.

    `ioctl` is the only function that reaches the kernel; tests pass an emulated
    device there. Thread-unsafe: the session serialises calls.
    """

    def __init__(self, path: str, *, ioctl: IoctlFn = fcntl.ioctl, timeout_ms: int = 5000) -> None:
        self.path = path
        self.timeout_ms = timeout_ms
        self._ioctl = ioctl
        flags = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            self.fd = os.open(path, flags)
        except OSError as e:
            if e.errno in DEVICE_GONE_ERRNOS:
                raise DeviceGone(f"{path}: {e.strerror}") from None
            raise ProtocolError(f"cannot open {path}: {e.strerror}") from None
        st = os.fstat(self.fd)
        self._identity = (st.st_dev, st.st_ino, st.st_rdev)
        self._gone = False

    def alive(self) -> bool:
        """Whether the node is still there and still the one we opened."""
        if self.fd < 0 or self._gone:
            return False
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino, st.st_rdev) == self._identity

    def close(self) -> None:
        """Close the node. Safe to call twice and after DeviceGone."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def _gone_error(self, what: str, why: str) -> DeviceGone:
        self._gone = True
        return DeviceGone(f"{self.path}: {what}: {why}")

    def execute(self, cdb: bytes, *, data_out: bytes | None = None, read_len: int = 0) -> SgResult:
        """One SG_IO call: `cdb`, then `data_out` to the device or `read_len` bytes from it.

        Raises DeviceGone when the ioctl fails because the device left; every other
        outcome is returned for `run` to judge.
        """
        if self.fd < 0:
            raise DeviceGone(f"{self.path}: closed")
        if data_out is not None and read_len:
            raise ValueError("a command moves data in one direction only")
        cmd = ctypes.create_string_buffer(bytes(cdb), len(cdb))
        sense = ctypes.create_string_buffer(SENSE_BUFFER_LEN)
        hdr = SgIoHdr()
        hdr.interface_id = SG_INTERFACE_ID
        hdr.cmd_len = len(cdb)
        hdr.cmdp = ctypes.addressof(cmd)
        hdr.mx_sb_len = SENSE_BUFFER_LEN
        hdr.sbp = ctypes.addressof(sense)
        hdr.timeout = self.timeout_ms
        buf: ctypes.Array[ctypes.c_char] | None = None
        if data_out:
            buf = ctypes.create_string_buffer(bytes(data_out), len(data_out))
            hdr.dxfer_direction, hdr.dxfer_len = SG_DXFER_TO_DEV, len(data_out)
        elif read_len:
            buf = ctypes.create_string_buffer(read_len)
            hdr.dxfer_direction, hdr.dxfer_len = SG_DXFER_FROM_DEV, read_len
        else:
            hdr.dxfer_direction, hdr.dxfer_len = SG_DXFER_NONE, 0
        if buf is not None:
            hdr.dxferp = ctypes.addressof(buf)
        try:
            self._ioctl(self.fd, SG_IO, hdr)
        except OSError as e:
            what = f"SG_IO opcode 0x{cdb[0]:02x}"
            if e.errno in DEVICE_GONE_ERRNOS or (e.errno == errno.EIO and not self.alive()):
                raise self._gone_error(what, e.strerror or str(e)) from None
            raise ProtocolError(f"{self.path}: {what} failed: {e.strerror or e}") from None
        sb_len = min(hdr.sb_len_wr, SENSE_BUFFER_LEN)
        return SgResult(
            data=buf.raw if buf is not None and read_len else b"",
            status=hdr.status,
            host_status=hdr.host_status,
            driver_status=hdr.driver_status,
            resid=hdr.resid,
            sense=sense.raw[:sb_len],
            duration_ms=hdr.duration,
            info=hdr.info,
        )

    def run(
        self,
        cdb: bytes,
        *,
        what: str,
        data_out: bytes | None = None,
        read_len: int = 0,
        allow_short: bool = False,
    ) -> bytes:
        """`execute`, then judge the outcome: the bytes read, or a typed error.

        Host adapter errors that mean the device left are DeviceGone; any other
        transport error is DeviceGone if the node has gone too, else ProtocolError.
        CHECK CONDITION is ScsiCheckCondition. A short transfer is a ProtocolError
        unless `allow_short`, when the bytes actually moved are returned.
        """
        r = self.execute(cdb, data_out=data_out, read_len=read_len)
        if r.host_status != DID_OK:
            name = HOST_STATUS_NAMES.get(r.host_status, f"host status 0x{r.host_status:x}")
            if r.host_status in DEVICE_GONE_HOST_STATUS or not self.alive():
                raise self._gone_error(what, name)
            raise ProtocolError(f"{self.path}: {what}: {name}")
        driver = r.driver_status & DRIVER_STATUS_MASK
        if driver not in (0, DRIVER_SENSE):
            name = DRIVER_STATUS_NAMES.get(driver, f"driver status 0x{r.driver_status:x}")
            if not self.alive():
                raise self._gone_error(what, name)
            raise ProtocolError(f"{self.path}: {what}: {name}")
        # Sense without CHECK CONDITION is an error too, unless it says all went well.
        parsed = parse_sense(r.sense)
        noted = driver == DRIVER_SENSE and r.sense and (parsed is None or parsed[0] > 1)
        if r.status == SAM_STAT_CHECK_CONDITION or noted:
            raise ScsiCheckCondition(f"{self.path}: {what}", r.sense)
        if r.status != SAM_STAT_GOOD:
            name = SCSI_STATUS_NAMES.get(r.status, f"SCSI status 0x{r.status:02x}")
            raise ProtocolError(f"{self.path}: {what}: {name}")
        expected = len(data_out) if data_out else read_len
        if not 0 <= r.resid <= expected:
            raise ProtocolError(f"{self.path}: {what}: impossible residual {r.resid} of {expected}")
        if r.resid and not allow_short:
            raise ProtocolError(
                f"{self.path}: {what}: short transfer, {expected - r.resid} of {expected} bytes"
            )
        return r.data[: read_len - r.resid] if read_len else b""


# --- INQUIRY ------------------------------------------------------------------------------

INQUIRY = 0x12
INQUIRY_LEN = 36
# How the vendor library compares (vendor + product, spaces dropped, case folded), and
# the same name read as product + revision, as GAT947.md spells it.
DV16_IDENT = "dv16devicev1.00"


@dataclass(frozen=True)
class Inquiry:
    """The identification fields of a standard INQUIRY answer."""

    qualifier: int
    device_type: int
    vendor: str
    product: str
    revision: str

    @property
    def is_dv16(self) -> bool:
        """Whether this is the DV16 chipset (and a connected logical unit)."""
        if self.qualifier != 0:
            return False

        def squash(text: str) -> str:
            return re.sub(r"[\s\x00]+", "", text).lower()

        return DV16_IDENT in (
            squash(self.vendor + self.product),
            squash(self.product + self.revision),
        )

    def __str__(self) -> str:
        return f"{self.vendor.strip()!r} {self.product.strip()!r} {self.revision.strip()!r}"


def inquiry(dev: SgDevice) -> Inquiry:
    """Send a standard INQUIRY (6-byte CDB, 36 bytes) and parse the identification."""
    cdb = bytes([INQUIRY, 0, 0, 0, INQUIRY_LEN, 0])
    data = dev.run(cdb, what="INQUIRY", read_len=INQUIRY_LEN, allow_short=True)
    if len(data) < INQUIRY_LEN:
        raise ProtocolError(f"{dev.path}: INQUIRY answered {len(data)} bytes, need {INQUIRY_LEN}")

    def text(raw: bytes) -> str:
        return raw.decode("ascii", "replace")

    return Inquiry(
        qualifier=data[0] >> 5,
        device_type=data[0] & 0x1F,
        vendor=text(data[8:16]),
        product=text(data[16:32]),
        revision=text(data[32:36]),
    )


# --- the DV16 vendor commands --------------------------------------------------------------


class Dv16Command(enum.IntEnum):
    """Command numbers (CDB byte 5), GAT947.md 2.1."""

    INIT = 1
    GET_ID_CODE = 2
    GET_OFFICER_INFO = 3
    WRITE_OFFICER_INFO = 4
    SET_TIME = 5
    ENTER_MSDC = 6
    RESOLUTION = 7
    BATTERY = 8
    SET_PASSWORD = 10
    SET_ID_CODE = 11
    CARD_STATUS = 12
    READ_PASSWORD = 13
    LAST_STATUS = 14


# The station never changes a recorder's credentials.
NEVER_SENT = frozenset({Dv16Command.SET_PASSWORD, Dv16Command.SET_ID_CODE})

HOST_WRITES = (0xFB, 0x82)  # CDB bytes 0-1 when the host sends data (or none)
HOST_READS = (0xFD, 0x81)  # CDB bytes 0-1 when the host reads data
CDB_LEN = 16
PASSWORD_FIELD = 16  # the password as command 13 reads it: NUL-terminated in 16 bytes
ID_CODE_LEN = 6  # 5 characters and a NUL
STATUS_LEN = 4  # last status: byte 0 is the code, the rest is ignored
SET_TIME = struct.Struct("<HBBBBB")  # u16 year; u8 month, day, hour, minute, second
RESOLUTION = struct.Struct("<ii")
BATTERY = struct.Struct("<i")


class Dv16Status(enum.IntEnum):
    """The device's last status (command 14, byte 0): 0 or a GA/T 947 *iRet code."""

    OK = 0
    CONNECT_SUCCESS = 1
    CONNECT_FAILED = 2
    CHECK_PWD_SUCCESS = 3
    CHECK_PWD_FAILED = 4
    SET_SYSTEMTIME_SUCCESS = 5
    SET_SYSTEMTIME_FAILED = 6
    MSDC_SUCCESS = 7
    MSDC_FAILED = 8


SUCCESS_STATUSES = frozenset(
    {
        Dv16Status.OK,
        Dv16Status.CONNECT_SUCCESS,
        Dv16Status.CHECK_PWD_SUCCESS,
        Dv16Status.SET_SYSTEMTIME_SUCCESS,
        Dv16Status.MSDC_SUCCESS,
    }
)


def vendor_cdb(command: int, *, host_reads: bool, length: int) -> bytes:
    """A 16-byte DV16 command block: direction bytes, command in byte 5, length in 6-7."""
    if not 0 <= length <= 0xFFFF:
        raise ValueError(f"data length {length} does not fit the command block")
    cdb = bytearray(CDB_LEN)
    cdb[0], cdb[1] = HOST_READS if host_reads else HOST_WRITES
    cdb[5] = command
    cdb[6], cdb[7] = length >> 8, length & 0xFF  # byte 7 the length; byte 6 its high byte
    return bytes(cdb)


# --- the officer block (ZFY_INFO) ---------------------------------------------------------

# The codec is station/drivers/zfy.py. DV16 firmware is held to its strict reading (a serial and an
# officer number, no control characters, text that decodes exactly), except that a field
# filling its whole slot without a NUL is read to the end of the slot.


def encode_officer_block(info: OfficerInfo, layout: str, encoding: str = "gbk") -> bytes:
    """The officer block as the recorder stores it; ProtocolError if a field cannot fit."""
    try:
        return zfy.encode(info, layout, encoding)
    except zfy.OfficerBlockError as e:
        raise ProtocolError(str(e)) from None


def decode_officer_block(data: bytes, layout: str, encoding: str = "gbk") -> OfficerInfo:
    """Parse an officer block; ProtocolError for bad text or a missing serial/officer no."""
    try:
        return zfy.decode(data, layout, encoding, require_nul=False)
    except zfy.OfficerBlockError as e:
        raise ProtocolError(str(e)) from None


# --- configuration and the sg node --------------------------------------------------------

_USB_ID = re.compile(r"[0-9a-f]{4}:[0-9a-f]{4}")
_SG_NAME = re.compile(r"sg\d+")


class ScsiDv16Config(BaseModel):
    """Settings for DV16 recorders (one vendor's choices)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: zfy.Layout = "89"  # the officer block layout (the public code's packed one)
    encoding: str = "gbk"  # text in the officer block and the password field
    usb_ids: list[str] = Field(default_factory=list)  # "vvvv:pppp"; if set, only these
    timeout_ms: int = Field(default=5000, ge=100, le=600_000)  # per SCSI command
    settle_ms: int = Field(default=3000, ge=0, le=60_000)  # wait for the sg node to appear

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown text encoding {v!r}") from None
        return v

    @field_validator("usb_ids")
    @classmethod
    def _usb_ids(cls, v: list[str]) -> list[str]:
        out = [s.strip().lower() for s in v]
        for s in out:
            if not _USB_ID.fullmatch(s):
                raise ValueError(f"USB id {s!r} is not vvvv:pppp in hex")
        return out


def find_sg_nodes(
    device: DockedDevice, *, sysfs_root: str = "/sys", dev_root: str = "/dev"
) -> list[str]:
    """The ``/dev/sg*`` nodes of the SCSI devices below a USB device, from sysfs.

    Every ``<sysfs>/class/scsi_generic/sgN`` whose real path lies below the USB
    device's sysfs path (`device.path`) belongs to it. A ``SG_NODE`` property
    (``/dev/sgN``) is tried first, but only when sysfs confirms it belongs to this
    device: a stale or foreign node is never sent a command.
    """
    class_dir = os.path.join(sysfs_root, "class", "scsi_generic")
    base = os.path.realpath(device.path) + os.sep
    try:
        names = os.listdir(class_dir)
    except OSError:
        return []
    mine = []
    for name in names:
        if not _SG_NAME.fullmatch(name):
            continue
        if os.path.realpath(os.path.join(class_dir, name)).startswith(base):
            mine.append(name)
    mine.sort(key=lambda n: int(n[2:]))
    hinted = device.properties.get("SG_NODE", "")
    m = re.fullmatch(r"/dev/(sg\d+)", hinted)
    if m and m.group(1) in mine:
        mine.remove(m.group(1))
        mine.insert(0, m.group(1))
    elif hinted:
        log.warning("ignoring SG_NODE %r: sysfs does not place it below %s", hinted, device.path)
    return [os.path.join(dev_root, name) for name in mine]


def _is_mass_storage(device: DockedDevice) -> bool | None:
    """Whether the USB device has a mass-storage interface (class 08), None if unknown."""
    interfaces = device.properties.get("ID_USB_INTERFACES")
    if not interfaces:
        return None
    return any(i.startswith("08") for i in interfaces.split(":") if i)


# --- the session ---------------------------------------------------------------------------


class ScsiDv16Session(RecorderSession):
    """An open DV16 recorder: GA/T 947.4 calls as the public vendor code sends them.

    Built by `ScsiDv16Driver.open` after INQUIRY said DV16, init succeeded and the
    recorder's password (read back, compared on the host) was one of the station's.
    Calls are serialised: one call is several SCSI commands that must not interleave.

    Each call, as in USBJL.cpp (R: host reads, W: host writes; 14: last status):

    | call | commands |
    |---|---|
    | init | W1 (0 bytes), R2 (6), R14 |
    | ID code | R2 (6), R14 |
    | officer block | R13 (16), R3 (89 or 94), R14 |
    | write officer block | R13, W4 (89 or 94), R14, then read back as above |
    | set time | R13, W5 (7), R14 |
    | mass storage | R13, R12 (4), W6 (0) |
    | resolution | R13, R7 (8) |
    | battery | R13, R8 (4), R14 |
    """

    def __init__(self, dev: SgDevice, config: ScsiDv16Config, password: str | None = None) -> None:
        self.dev = dev
        self.config = config
        self._password = b""
        if password is not None:
            self.use_password(password)
        self._lock = threading.Lock()
        self._msdc = False

    def use_password(self, password: str) -> None:
        """The password this session checks the recorder's against; ValueError if none can be."""
        self._password = password_field(password, self.config.encoding).rstrip(b"\x00")

    # --- one vendor command, with its status -----------------------------------------

    def _status(self, what: str) -> Dv16Status | int:
        """The device's last status (command 14)."""
        cdb = vendor_cdb(Dv16Command.LAST_STATUS, host_reads=True, length=STATUS_LEN)
        data = self.dev.run(cdb, what=f"{what}: last status", read_len=STATUS_LEN)
        try:
            return Dv16Status(data[0])
        except ValueError:
            return data[0]

    def _judge(self, what: str, status: Dv16Status | int) -> None:
        if status in SUCCESS_STATUSES:
            return
        if status == Dv16Status.CHECK_PWD_FAILED:
            raise AuthFailed(f"{self.dev.path}: {what}: CHECK_PWD_FAILED")
        name = status.name if isinstance(status, Dv16Status) else f"unknown status {status}"
        raise ProtocolError(f"{self.dev.path}: {what}: {name}")

    def _transfer(
        self,
        command: Dv16Command,
        what: str,
        *,
        data_out: bytes | None = None,
        read_len: int = 0,
        status: bool = True,
    ) -> bytes:
        """One vendor command, then (with `status`) its last status, as typed errors."""
        if command in NEVER_SENT:
            raise ValueError(f"the station never sends {command.name}")
        length = read_len or len(data_out or b"")
        cdb = vendor_cdb(command, host_reads=read_len > 0, length=length)
        try:
            data = self.dev.run(cdb, what=what, data_out=data_out, read_len=read_len)
        except ScsiCheckCondition as failed:
            # The sense data says little; the device's own status says why.
            try:
                last = self._status(what)
            except ProtocolError:
                raise failed from None
            self._judge(f"{what} ({describe_sense(failed.sense)})", last)
            raise
        if status:
            self._judge(what, self._status(what))
        return data

    def read_password(self) -> bytes:
        """Command 13: the recorder's password, up to its NUL (for the host to compare)."""
        raw = self._transfer(
            Dv16Command.READ_PASSWORD, "read password", read_len=PASSWORD_FIELD, status=False
        )
        return raw.split(b"\x00", 1)[0]

    def _check_password(self, what: str) -> None:
        """The recorder's password against this session's, compared here (the firmware
        checks nothing): AuthFailed if they differ, e.g. changed since the docking."""
        if not self._password or self.read_password() != self._password:
            raise AuthFailed(
                f"{self.dev.path}: {what}: the recorder's password is not the station's "
                "(CHECK_PWD_FAILED, compared on the host)"
            )

    def _read(self, command: Dv16Command, length: int, what: str, *, status: bool = True) -> bytes:
        """A protected read: the password checked, then the data read."""
        self._check_password(what)
        return self._transfer(command, what, read_len=length, status=status)

    def _write(self, command: Dv16Command, payload: bytes, what: str) -> None:
        """A protected write: the password checked, then the payload alone."""
        self._check_password(what)
        self._transfer(command, what, data_out=payload)

    # --- GA/T 947.4 calls ------------------------------------------------------------------

    def init(self) -> str:
        """Init_Device: command 1 (no data, no status), then the ID code; returns it."""
        with self._lock:
            self._transfer(Dv16Command.INIT, "init", status=False)
        return self.id_code()

    def id_code(self) -> str:
        with self._lock:
            raw = self._transfer(Dv16Command.GET_ID_CODE, "get ID code", read_len=ID_CODE_LEN)
        text = raw.split(b"\x00", 1)[0].decode("ascii", "replace").strip()
        if not text or not text.isascii() or not text.isprintable():
            raise ProtocolError(f"{self.dev.path}: bad ID code {raw.hex()}")
        return text

    def _officer_block(self) -> OfficerInfo:
        size = zfy.block_size(self.config.layout)
        raw = self._read(Dv16Command.GET_OFFICER_INFO, size, "get officer block")
        return decode_officer_block(raw, self.config.layout, self.config.encoding)

    def officer_info(self) -> OfficerInfo:
        with self._lock:
            return self._officer_block()

    def write_officer_info(self, info: OfficerInfo) -> None:
        """WriteZFYInfo, then the block read back: done only when it reads back."""
        layout, encoding = self.config.layout, self.config.encoding
        block = encode_officer_block(info, layout, encoding)
        expected = decode_officer_block(block, layout, encoding)
        with self._lock:
            self._write(Dv16Command.WRITE_OFFICER_INFO, block, "write officer block")
            back = self._officer_block()
        if back != expected:
            raise ProtocolError(
                f"{self.dev.path}: write officer block answered success, but the recorder "
                f"holds serial {back.serial}, officer {back.officer_no}: not written"
            )

    def check_password(self) -> None:
        """Raise AuthFailed unless the recorder's password is this session's."""
        with self._lock:
            self._check_password("password check")

    def battery_percent(self) -> int:
        with self._lock:
            raw = self._read(Dv16Command.BATTERY, BATTERY.size, "battery")
        (value,) = BATTERY.unpack(raw)
        if not 0 <= value <= 100:
            raise ProtocolError(f"{self.dev.path}: battery level {value} out of range")
        return value

    def resolution(self) -> tuple[int, int]:
        """ReadDeviceResolution (command 7): recording width and height."""
        with self._lock:
            raw = self._read(Dv16Command.RESOLUTION, RESOLUTION.size, "resolution", status=False)
        width, height = RESOLUTION.unpack(raw)
        if not (0 < width <= 16384 and 0 < height <= 16384):
            raise ProtocolError(f"{self.dev.path}: resolution {width}x{height} out of range")
        return width, height

    def card_present(self) -> bool:
        """Card status (command 12): whether the recorder has its card."""
        with self._lock:
            raw = self._read(Dv16Command.CARD_STATUS, STATUS_LEN, "card status", status=False)
        return raw[0] != 0

    def set_clock(self, now: dt.datetime) -> float | None:
        """SyncDevTime: the recorder is set to `now`'s wall-clock fields, as given.

        The station passes its local time; an aware datetime is not converted. The
        recorder's clock cannot be read over this transport, so the drift is None.
        """
        payload = SET_TIME.pack(now.year, now.month, now.day, now.hour, now.minute, now.second)
        with self._lock:
            self._write(Dv16Command.SET_TIME, payload, "set time")
        return None

    def enter_mass_storage(self) -> None:
        """SetMSDC: refuse without a card (MSDC_FAILED), else switch. Idempotent.

        As the public code: password, card status, then command 6 with no data and
        no status read (the recorder leaves the bus to come back as a disk).
        """
        if self._msdc:
            return
        if not self.card_present():
            raise ProtocolError(f"{self.dev.path}: no card in the recorder (MSDC_FAILED)")
        with self._lock:
            self._transfer(Dv16Command.ENTER_MSDC, "enter mass storage", status=False)
        self._msdc = True

    def alive(self) -> bool:
        return self.dev.alive()

    def close(self) -> None:
        self.dev.close()


def password_field(password: str, encoding: str = "gbk") -> bytes:
    """The 16-byte, NUL-padded password field; ValueError if it cannot be one."""
    raw = password.encode(encoding)
    if not raw or b"\x00" in raw or len(raw) >= PASSWORD_FIELD:
        raise ValueError(f"a device password is 1 to {PASSWORD_FIELD - 1} bytes without NUL")
    return raw.ljust(PASSWORD_FIELD, b"\x00")


# --- the driver ----------------------------------------------------------------------------

MATCH_SCORE = 60
LISTED_SCORE = 80  # INQUIRY says DV16 and config.usb_ids lists the device


class ScsiDv16Driver(RecorderDriver):
    """DV16-chipset recorders, reached with vendor SCSI commands on their sg node.

    `sg_nodes` maps a docked device to its candidate sg nodes (default: sysfs, see
    `find_sg_nodes`); `ioctl` is the kernel call. Both are for tests.
    """

    name = "scsi-dv16"

    def __init__(
        self,
        config: ScsiDv16Config | None = None,
        *,
        sg_nodes: Callable[[DockedDevice], list[str]] | None = None,
        ioctl: IoctlFn = fcntl.ioctl,
        sysfs_root: str = "/sys",
        dev_root: str = "/dev",
    ) -> None:
        self.config = config or ScsiDv16Config()
        self._ioctl = ioctl
        self._sg_nodes = sg_nodes or (
            lambda d: find_sg_nodes(d, sysfs_root=sysfs_root, dev_root=dev_root)
        )

    def _usb_id(self, device: DockedDevice) -> str | None:
        if device.vendor_id is None or device.product_id is None:
            return None
        return f"{device.vendor_id:04x}:{device.product_id:04x}"

    def _nodes(self, device: DockedDevice) -> list[str]:
        """The device's sg nodes, waiting up to settle_ms for a mass-storage device's to appear.

        usb-storage scans its LUNs a moment after the USB device appears, so the
        node may be missing when the dock first sees the recorder.
        """
        nodes = self._sg_nodes(device)
        if nodes or _is_mass_storage(device) is False:
            return nodes
        deadline = time.monotonic() + self.config.settle_ms / 1000
        while not nodes and time.monotonic() < deadline:
            time.sleep(0.1)
            nodes = self._sg_nodes(device)
        return nodes

    def _find_dv16(self, device: DockedDevice) -> tuple[SgDevice, Inquiry] | DeviceGone | None:
        """The device's sg node that answers INQUIRY as DV16, open.

        None if no node does; the DeviceGone seen if a node vanished while asked.
        """
        gone: DeviceGone | None = None
        for node in self._nodes(device):
            try:
                dev = SgDevice(node, ioctl=self._ioctl, timeout_ms=self.config.timeout_ms)
            except RecorderError as e:
                log.info("%s: %s", node, e)
                gone = e if isinstance(e, DeviceGone) else gone
                continue
            try:
                ident = inquiry(dev)
            except RecorderError as e:
                log.info("%s: INQUIRY failed: %s", node, e)
                gone = e if isinstance(e, DeviceGone) else gone
                dev.close()
                continue
            if ident.is_dv16:
                return dev, ident
            log.debug("%s: %s is not DV16", node, ident)
            dev.close()
        return gone

    def match(self, device: DockedDevice) -> int:
        """INQUIRY only: DV16 scores, anything else is 0 and gets no vendor command."""
        if device.kind != "usb":
            return 0
        listed = self._usb_id(device) in self.config.usb_ids
        if self.config.usb_ids and not listed:
            return 0
        found = self._find_dv16(device)
        if not isinstance(found, tuple):
            return 0
        dev, ident = found
        dev.close()
        log.info("port %s: %s on %s is a DV16 recorder", device.port, ident, dev.path)
        return LISTED_SCORE if listed else MATCH_SCORE

    def open(self, device: DockedDevice, passwords: list[str]) -> ScsiDv16Session:
        """Confirm DV16 by INQUIRY, init, then find the recorder's password among ours.

        The recorder's password is read once (command 13) and compared on the host
        with each configured one, as the public vendor code does: this family's
        firmware checks no password itself.
        """
        if device.kind != "usb":
            raise ProtocolError(f"{device.kind} device is not a SCSI recorder")
        found = self._find_dv16(device)
        if isinstance(found, DeviceGone):
            raise found
        if found is None:
            raise ProtocolError(f"port {device.port}: no sg node answers INQUIRY as DV16")
        dev, _ = found
        try:
            session = ScsiDv16Session(dev, self.config)
            session.init()
            stored = session.read_password() if passwords else None
            for pw in passwords:
                try:
                    session.use_password(pw)
                except (ValueError, UnicodeEncodeError):
                    log.warning("port %s: skipping a password that cannot be sent", device.port)
                    continue
                if session._password == stored:
                    return session
        except BaseException:
            dev.close()
            raise
        dev.close()
        raise AuthFailed(f"none of {len(passwords)} configured passwords is the recorder's")
