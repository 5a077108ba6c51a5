"""The DV16 SCSI driver against an emulated recorder plugged in below the SG_IO ioctl.

The emulator is handed exactly what the kernel would get: the request number and
the driver's ``struct sg_io_hdr``. As firmware, it is written from the public
vendor code (JieLi's USBJL.h / USBJL.cpp): the commands, directions and lengths
that code sends are the only ones a strict recorder takes (anything else is
ILLEGAL REQUEST), and it checks no password: it hands its password to command 13
and the host compares. It parses the header with its own layout (from
<scsi/sg.h>, independent of the driver's ctypes class), reads the CDB at ``cmdp``
and the data at ``dxferp``, and writes data, sense and status back the way the sg
driver does. Its officer blocks are its own too (ZFY_INFO as USBJL.h declares it,
packed 89 bytes, or the 94-byte variant with a NUL after each field), never the
driver's codec, so that a layout bug in the driver cannot be mirrored here.
Everything above the ioctl is the driver's real code.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import errno
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from dock_harness import Dock, card_files
from pydantic import ValidationError

from station.drivers.base import (
    AuthFailed,
    DeviceGone,
    DockedDevice,
    DriverRegistry,
    OfficerInfo,
    ProtocolError,
)
from station.drivers.scsi_dv16 import (
    SG_IO,
    Dv16Command,
    ScsiCheckCondition,
    ScsiDv16Config,
    ScsiDv16Driver,
    ScsiDv16Session,
    SgIoHdr,
    decode_officer_block,
    encode_officer_block,
    find_sg_nodes,
)
from station.drivers.simulated import SimulatedDriver

PASSWORD = "000000"
OFFICER = OfficerInfo(
    serial="B100001",
    officer_no="100001",
    officer_name="张三丰",
    unit_no="110101000000",
    unit_name="北京市公安局城关派出所",
)

# --- the kernel's struct sg_io_hdr, described independently of the driver -------------------

HDR_FIELDS = (
    ("interface_id", "i"),
    ("dxfer_direction", "i"),
    ("cmd_len", "B"),
    ("mx_sb_len", "B"),
    ("iovec_count", "H"),
    ("dxfer_len", "I"),
    ("dxferp", "P"),
    ("cmdp", "P"),
    ("sbp", "P"),
    ("timeout", "I"),
    ("flags", "I"),
    ("pack_id", "i"),
    ("usr_ptr", "P"),
    ("status", "B"),
    ("masked_status", "B"),
    ("msg_status", "B"),
    ("sb_len_wr", "B"),
    ("host_status", "H"),
    ("driver_status", "H"),
    ("resid", "i"),
    ("duration", "I"),
    ("info", "I"),
)


def _offsets() -> dict[str, tuple[int, str]]:
    out, fmt = {}, "@"
    for name, code in HDR_FIELDS:
        out[name] = (struct.calcsize(fmt + "0" + code), code)
        fmt += code
    return out


OFFSETS = _offsets()
HDR_SIZE = struct.calcsize("@" + "".join(c for _, c in HDR_FIELDS) + "0P")
DXFER_NONE, DXFER_TO_DEV, DXFER_FROM_DEV = -1, -2, -3
DRIVER_SENSE = 0x08
DID_NO_CONNECT, DID_ERROR = 0x01, 0x07


class Header:
    """Read and write fields of the sg_io_hdr the driver passed to ioctl."""

    def __init__(self, arg: Any) -> None:
        self.buf = memoryview(arg).cast("B")
        assert self.buf.nbytes == HDR_SIZE, "sg_io_hdr has the wrong size"

    def __getitem__(self, name: str) -> int:
        off, code = OFFSETS[name]
        return struct.unpack_from("@" + code, self.buf, off)[0]

    def __setitem__(self, name: str, value: int) -> None:
        off, code = OFFSETS[name]
        struct.pack_into("@" + code, self.buf, off, value)


# --- ZFY_INFO as the firmware holds it, independently of the driver -------------------------

# (member, offset, width) as USBJL.h declares the struct under #pragma pack(1):
# char cSerial[7]; char userNo[6]; char userName[32]; char unitNo[12]; char unitName[32]
ZFY_INFO_89 = (
    ("cSerial", 0, 7),
    ("userNo", 7, 6),
    ("userName", 13, 32),
    ("unitNo", 45, 12),
    ("unitName", 57, 32),
)
# the 94-byte variant: each array one larger, so the text is always NUL-terminated
ZFY_INFO_94 = (
    ("cSerial", 0, 8),
    ("userNo", 8, 7),
    ("userName", 15, 33),
    ("unitNo", 48, 13),
    ("unitName", 61, 33),
)
FIRMWARE_LAYOUTS = {"89": ZFY_INFO_89, "94": ZFY_INFO_94}
assert [sum(w for _, _, w in f) for f in (ZFY_INFO_89, ZFY_INFO_94)] == [89, 94]


def fw_pack(info: OfficerInfo, layout: str = "89") -> bytes:
    """The block as the firmware stores it: GBK text, NUL-padded, at the fixed offsets."""
    fields = FIRMWARE_LAYOUTS[layout]
    values = (info.serial, info.officer_no, info.officer_name, info.unit_no, info.unit_name)
    out = bytearray(fields[-1][1] + fields[-1][2])
    for (member, offset, width), value in zip(fields, values, strict=True):
        raw = value.encode("gbk")
        room = width - 1 if layout == "94" else width
        assert len(raw) <= room, f"{member}: {len(raw)} bytes, room for {room}"
        struct.pack_into(f"{width}s", out, offset, raw)
    return bytes(out)


def fw_unpack(block: bytes, layout: str = "89") -> OfficerInfo:
    """What the firmware holds after a write: each field up to its first NUL, GBK."""
    fields = FIRMWARE_LAYOUTS[layout]
    assert len(block) == fields[-1][1] + fields[-1][2]
    values = []
    for _, offset, width in fields:
        (raw,) = struct.unpack_from(f"{width}s", block, offset)
        values.append(raw.split(b"\0", 1)[0].decode("gbk"))
    return OfficerInfo(*values)


# --- the emulated recorder --------------------------------------------------------------------

R, W = "read", "write"
ILLEGAL = (0x05, 0x24, 0x00)  # ILLEGAL REQUEST, invalid field in CDB


def public_commands(block: int) -> dict[tuple[int, str], int]:
    """(command, direction) -> data length, as the public vendor code sends them."""
    return {
        (1, W): 0, (2, R): 6, (3, R): block, (4, W): block, (5, W): 7, (6, W): 0,
        (7, R): 8, (8, R): 4, (12, R): 4, (13, R): 16, (14, R): 4,
    }  # fmt: skip


def fixed_sense(key: int, asc: int, ascq: int) -> bytes:
    sense = bytearray(18)
    sense[0], sense[2], sense[7], sense[12], sense[13] = 0x70, key, 10, asc, ascq
    return bytes(sense)


def pw_field(pw: str) -> bytes:
    return pw.encode().ljust(16, b"\x00")


@dataclass
class Sent:
    """One command as the device received it."""

    cdb: bytes
    direction: int
    length: int
    data: bytes

    @property
    def command(self) -> int | None:
        return self.cdb[5] if len(self.cdb) == 16 else None


@dataclass
class Dv16Emulator:
    """A DV16 recorder as the SCSI layer sees it, with state and injectable faults."""

    node: Path | None = None
    vendor: bytes = b"DV16    "
    product: bytes = b"DEVICE V1.00    "
    revision: bytes = b"1.00"
    qualifier: int = 0
    password: str = PASSWORD  # what command 13 answers; the firmware compares nothing
    strict: bool = True  # only the public commands; False: any length, its own answers
    write_ignored: bool = False  # command 4 ends GOOD, status 0, and changes nothing
    layout: str = "89"
    officer: bytes = b""
    id_code: bytes = b"ZFY01\x00"
    battery: int = 67
    card: bool = True
    width_height: tuple[int, int] = (1920, 1080)
    clock_payload: bytes | None = None
    msdc: bool = False
    leave_on_msdc: bool = False
    # faults: command number (0x12 for INQUIRY) -> what happens
    gone_on: set[int] = field(default_factory=set)  # ioctl fails with ENODEV
    host_status_on: dict[int, int] = field(default_factory=dict)
    check_on: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    status_on: dict[int, int] = field(default_factory=dict)  # last status after a command
    short_on: dict[int, int] = field(default_factory=dict)  # bytes actually moved
    log: list[Sent] = field(default_factory=list, repr=False)
    violations: list[str] = field(default_factory=list)
    gone: bool = False
    last_status: int = 0

    def __post_init__(self) -> None:
        if not self.officer:
            self.officer = fw_pack(OFFICER, self.layout)

    @property
    def is_dv16(self) -> bool:
        return self.vendor.startswith(b"DV16") or self.product.startswith(b"DV16")

    def commands(self) -> list[int | None]:
        return [s.command for s in self.log if s.cdb[0] != 0x12]

    def unplug(self) -> None:
        self.gone = True
        if self.node is not None and self.node.exists():
            self.node.unlink()

    # --- the ioctl ------------------------------------------------------------------------

    def __call__(self, fd: int, request: int, arg: Any) -> int:
        assert request == SG_IO == 0x2285
        assert isinstance(fd, int) and fd >= 0
        if self.gone:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        h = Header(arg)
        if h["interface_id"] != ord("S"):
            self.violations.append("interface_id is not 'S'")
            raise OSError(errno.ENOSYS, "bad interface id")
        if h["iovec_count"] != 0:
            self.violations.append("scatter-gather used")
        cdb = ctypes.string_at(h["cmdp"], h["cmd_len"])
        direction, length = h["dxfer_direction"], h["dxfer_len"]
        data = ctypes.string_at(h["dxferp"], length) if direction == DXFER_TO_DEV else b""
        if direction == DXFER_NONE and length:
            self.violations.append("DXFER_NONE with a length")
        if direction in (DXFER_TO_DEV, DXFER_FROM_DEV) and not h["dxferp"]:
            self.violations.append("data phase without a buffer")
        if h["timeout"] == 0 or h["mx_sb_len"] < 18 or not h["sbp"]:
            self.violations.append("no timeout or no room for sense")
        sent = Sent(cdb, direction, length, data)
        self.log.append(sent)
        key = cdb[0] if cdb[0] == 0x12 else (cdb[5] if len(cdb) > 5 else -1)
        if key in self.gone_on:
            self.unplug()
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        for name in ("status", "masked_status", "msg_status", "sb_len_wr", "host_status"):
            h[name] = 0
        h["driver_status"], h["resid"], h["duration"], h["info"] = 0, 0, 1, 0
        if key in self.host_status_on:
            h["host_status"] = self.host_status_on[key]
            h["info"] = 1
            return 0
        answer, sense = self._handle(sent)
        if key in self.check_on and sense is None:
            sense, answer = fixed_sense(*self.check_on[key]), b""
        if sense is not None:
            n = min(len(sense), h["mx_sb_len"])
            ctypes.memmove(h["sbp"], sense, n)
            h["status"], h["masked_status"], h["sb_len_wr"] = 0x02, 0x01, n
            h["driver_status"], h["info"] = DRIVER_SENSE, 1
            h["resid"] = length
            return 0
        moved = length
        if direction == DXFER_FROM_DEV:
            moved = min(len(answer), length)
            ctypes.memmove(h["dxferp"], answer, moved)
        if key in self.short_on:
            moved = min(moved, self.short_on[key])
        h["resid"] = length - moved
        return 0

    def _handle(self, s: Sent) -> tuple[bytes, bytes | None]:
        """The device's answer: (data in, sense or None)."""
        illegal = fixed_sense(0x05, 0x24, 0x00)
        if s.cdb[0] == 0x12:
            if len(s.cdb) != 6 or s.direction != DXFER_FROM_DEV or s.cdb[4] > s.length:
                self.violations.append(f"bad INQUIRY {s.cdb.hex()}")
                return b"", illegal
            std = bytearray(36)
            std[0] = self.qualifier << 5
            std[2], std[3], std[4] = 0x02, 0x02, 31
            std[8:16], std[16:32], std[32:36] = self.vendor, self.product, self.revision
            return bytes(std), None
        if not self.is_dv16:
            self.violations.append(f"vendor command sent to a non-DV16 device: {s.cdb.hex()}")
            return b"", fixed_sense(0x05, 0x20, 0x00)
        if len(s.cdb) != 16:
            self.violations.append(f"vendor CDB of {len(s.cdb)} bytes")
            return b"", illegal
        reads = s.cdb[:2] == b"\xfd\x81"
        if not reads and s.cdb[:2] != b"\xfb\x82":
            self.violations.append(f"bad direction bytes {s.cdb[:2].hex()}")
            return b"", illegal
        if reads != (s.direction == DXFER_FROM_DEV) or (
            not reads and s.direction not in (DXFER_TO_DEV, DXFER_NONE)
        ):
            self.violations.append(f"CDB direction and SG_IO direction disagree: {s.cdb.hex()}")
        if s.cdb[6] << 8 | s.cdb[7] != s.length:
            self.violations.append(f"CDB length {s.cdb[7]} but {s.length} bytes moved")
        cmd = s.cdb[5]
        direction = R if reads else W
        expected = public_commands(len(self.officer)).get((cmd, direction))
        if expected is None or (self.strict and s.length != expected):
            what = f"command {cmd} ({direction}, {s.length} bytes)"
            self.violations.append(f"not in the public command set: {what}")
            return b"", fixed_sense(*ILLEGAL)
        if cmd == 14:
            return bytes([self.last_status, 0, 0, 0]), None
        self.last_status = 0
        answer = self._command(cmd, s.data)
        if cmd in self.status_on:
            self.last_status = self.status_on[cmd]
        return answer, None

    def _command(self, cmd: int, data: bytes) -> bytes:
        if cmd == 2:
            return self.id_code
        if cmd == 13:
            return pw_field(self.password)
        if cmd == 3:
            return self.officer
        if cmd == 7:
            return struct.pack("<ii", *self.width_height)
        if cmd == 8:
            return struct.pack("<i", self.battery)
        if cmd == 12:
            return bytes([int(self.card), 0, 0, 0])
        if cmd == 4 and not self.write_ignored:
            self.officer = data[: len(self.officer)]
        elif cmd == 5:
            self.clock_payload = data
        elif cmd == 6:
            self.msdc = True
            if self.leave_on_msdc:
                self.unplug()
        return b""


# --- fixtures ---------------------------------------------------------------------------------


def usb_device(**kw: Any) -> DockedDevice:
    base: dict[str, Any] = dict(
        port=1,
        key="k1",
        kind="usb",
        path="/sys/devices/pci0000:00/0000:00:14.0/usb1/1-1",
        vendor_id=0x1B3F,
        product_id=0x3002,
        properties={"ID_USB_INTERFACES": ":080650:"},
    )
    base.update(kw)
    return DockedDevice(**base)


@pytest.fixture
def node(tmp_path: Path) -> Path:
    p = tmp_path / "sg2"  # stands in for /dev/sg2: the emulator answers the ioctl
    p.write_bytes(b"")
    return p


@pytest.fixture
def emu(node: Path) -> Any:
    e = Dv16Emulator(node=node)
    yield e
    assert e.violations == []


def make_driver(emu: Dv16Emulator, node: Path, **config: Any) -> ScsiDv16Driver:
    return ScsiDv16Driver(
        ScsiDv16Config(**config), sg_nodes=lambda d: [str(node)] if node.exists() else [], ioctl=emu
    )


@pytest.fixture
def session(emu: Dv16Emulator, node: Path) -> Any:
    s = make_driver(emu, node).open(usb_device(), [PASSWORD])
    yield s
    s.close()


# --- the SG_IO layer --------------------------------------------------------------------------


def test_sg_io_hdr_matches_the_kernel_layout() -> None:
    assert ctypes.sizeof(SgIoHdr) == HDR_SIZE
    for name, (offset, _) in OFFSETS.items():
        assert getattr(SgIoHdr, name).offset == offset, name


def test_every_call_is_a_well_formed_sg_io(emu: Dv16Emulator, session: ScsiDv16Session) -> None:
    session.id_code()
    session.officer_info()
    session.set_clock(dt.datetime(2026, 1, 2, 3, 4, 5))
    vendor = [s for s in emu.log if s.cdb[0] != 0x12]
    assert vendor and all(len(s.cdb) == 16 for s in vendor)
    for s in vendor:
        if s.cdb[0] == 0xFD:
            assert (s.cdb[1], s.direction) == (0x81, DXFER_FROM_DEV)
        else:
            assert s.cdb[:2] == b"\xfb\x82"
            assert s.direction == (DXFER_TO_DEV if s.length else DXFER_NONE)
        assert s.cdb[7] == s.length and s.cdb[6] == 0


# --- matching ---------------------------------------------------------------------------------


def test_inquiry_dv16_matches_with_inquiry_only(emu: Dv16Emulator, node: Path) -> None:
    driver = make_driver(emu, node)
    assert driver.match(usb_device()) > 0
    assert [s.cdb for s in emu.log] == [bytes([0x12, 0, 0, 0, 36, 0])]


@pytest.mark.parametrize(
    ("vendor", "product", "revision", "score"),
    [
        (b"DV16    ", b"DEVICE V1.00    ", b"1.00", True),  # as the vendor library compares
        (b"JL      ", b"DV16 DEVICE V1.0", b"0   ", True),  # product + revision
        (b"dv16    ", b"device v1.00    ", b"    ", True),
        (b"DV16    ", b"DEVICE V2.00    ", b"1.00", False),
        (b"Generic ", b"Flash Disk      ", b"8.07", False),
        (b"JL      ", b"DV160DEVICE V1.0", b"0   ", False),
    ],
)
def test_inquiry_names(
    node: Path, vendor: bytes, product: bytes, revision: bytes, score: bool
) -> None:
    emu = Dv16Emulator(node=node, vendor=vendor, product=product, revision=revision)
    assert (make_driver(emu, node).match(usb_device()) > 0) is score
    assert emu.commands() == []


def test_non_dv16_device_gets_no_vendor_command(node: Path) -> None:
    emu = Dv16Emulator(node=node, vendor=b"Generic ", product=b"STORAGE DEVICE  ")
    driver = make_driver(emu, node)
    assert driver.match(usb_device()) == 0
    with pytest.raises(ProtocolError, match="DV16"):
        driver.open(usb_device(), [PASSWORD])
    assert [s.cdb[0] for s in emu.log] == [0x12, 0x12]
    assert emu.violations == []


def test_unconnected_lun_and_short_inquiry_do_not_match(node: Path) -> None:
    emu = Dv16Emulator(node=node, qualifier=1)
    assert make_driver(emu, node).match(usb_device()) == 0
    emu = Dv16Emulator(node=node, short_on={0x12: 20})
    assert make_driver(emu, node).match(usb_device()) == 0
    emu = Dv16Emulator(node=node, check_on={0x12: (0x02, 0x04, 0x01)})
    assert make_driver(emu, node).match(usb_device()) == 0
    assert emu.commands() == []


def test_match_only_usb_and_listed_ids(emu: Dv16Emulator, node: Path) -> None:
    assert make_driver(emu, node).match(usb_device(kind="simulated")) == 0
    assert make_driver(emu, node, usb_ids=["abcd:0001"]).match(usb_device()) == 0
    assert emu.log == []  # not listed: not even an INQUIRY
    plain = make_driver(emu, node).match(usb_device())
    listed = make_driver(emu, node, usb_ids=["1B3F:3002"]).match(usb_device())
    assert listed > plain > 0
    registry = DriverRegistry([SimulatedDriver(), make_driver(emu, node)])
    assert isinstance(registry.best(usb_device()), ScsiDv16Driver)


def test_match_waits_for_the_sg_node(emu: Dv16Emulator, node: Path) -> None:
    calls = []

    def nodes(d: DockedDevice) -> list[str]:
        calls.append(1)
        return [str(node)] if len(calls) > 2 else []

    driver = ScsiDv16Driver(ScsiDv16Config(settle_ms=2000), sg_nodes=nodes, ioctl=emu)
    assert driver.match(usb_device()) > 0
    # a device without a mass-storage interface is not waited for
    driver = ScsiDv16Driver(ScsiDv16Config(settle_ms=2000), sg_nodes=lambda d: [], ioctl=emu)
    t0 = time.monotonic()
    assert driver.match(usb_device(properties={"ID_USB_INTERFACES": ":030000:"})) == 0
    assert time.monotonic() - t0 < 0.5


def test_missing_node_does_not_match(emu: Dv16Emulator, tmp_path: Path) -> None:
    driver = ScsiDv16Driver(
        ScsiDv16Config(settle_ms=0), sg_nodes=lambda d: [str(tmp_path / "sg9")], ioctl=emu
    )
    assert driver.match(usb_device()) == 0
    with pytest.raises(DeviceGone):  # the node sysfs named has gone
        driver.open(usb_device(), [PASSWORD])


def _fake_sysfs(root: Path, usb: str, names: list[str]) -> Path:
    device = root / "sys" / "devices" / "pci0000:00" / "usb1" / usb
    cls = root / "sys" / "class" / "scsi_generic"
    cls.mkdir(parents=True)
    for name in names:
        real = device / f"{usb}:1.0" / "host6" / "target6:0:0" / "6:0:0:0" / "scsi_generic" / name
        real.mkdir(parents=True)
        (cls / name).symlink_to(os.path.relpath(real, cls))
    return device


def test_find_sg_nodes_from_sysfs(tmp_path: Path) -> None:
    mine = _fake_sysfs(tmp_path, "1-1", ["sg10", "sg2"])
    other = tmp_path / "sys" / "devices" / "pci0000:00" / "usb1" / "1-2" / "x" / "scsi_generic"
    (other / "sg3").mkdir(parents=True)
    cls = tmp_path / "sys" / "class" / "scsi_generic"
    (cls / "sg3").symlink_to(os.path.relpath(other / "sg3", cls))
    roots = dict(sysfs_root=str(tmp_path / "sys"), dev_root="/dev")

    dev = usb_device(path=str(mine))
    assert find_sg_nodes(dev, **roots) == ["/dev/sg2", "/dev/sg10"]
    hinted = usb_device(path=str(mine), properties={"SG_NODE": "/dev/sg10"})
    assert find_sg_nodes(hinted, **roots) == ["/dev/sg10", "/dev/sg2"]
    for bad in ("/dev/sg3", "/etc/passwd", "/dev/sg2/../sda"):  # foreign or not an sg node
        d = usb_device(path=str(mine), properties={"SG_NODE": bad})
        assert find_sg_nodes(d, **roots) == ["/dev/sg2", "/dev/sg10"]
    assert find_sg_nodes(usb_device(path=str(mine)), sysfs_root=str(tmp_path / "none")) == []


def test_default_discovery_end_to_end(tmp_path: Path) -> None:
    device_dir = _fake_sysfs(tmp_path, "1-1", ["sg4"])
    dev_root = tmp_path / "dev"
    dev_root.mkdir()
    (dev_root / "sg4").write_bytes(b"")
    emu = Dv16Emulator(node=dev_root / "sg4")
    driver = ScsiDv16Driver(ioctl=emu, sysfs_root=str(tmp_path / "sys"), dev_root=str(dev_root))
    device = usb_device(path=str(device_dir))
    assert driver.match(device) > 0
    with driver.open(device, [PASSWORD]) as rec:
        assert rec.id_code() == "ZFY01"
    assert emu.violations == []


# --- opening and the password -----------------------------------------------------------------


def test_identify(emu: Dv16Emulator, session: ScsiDv16Session) -> None:
    assert session.id_code() == "ZFY01"
    assert session.officer_info() == OFFICER
    assert session.battery_percent() == 67
    assert session.resolution() == (1920, 1080)
    assert session.alive()
    assert session.card() is None
    assert emu.commands()[0] == 1  # init first


def test_open_tries_passwords_in_turn(emu: Dv16Emulator, node: Path) -> None:
    emu.password = "123456"
    driver = make_driver(emu, node)
    with driver.open(usb_device(), ["x" * 16, "000000", "123456"]) as rec:
        assert rec.officer_info() == OFFICER
    assert emu.commands().count(1) == 1


def test_wrong_password_is_auth_failed(node: Path) -> None:
    emu = Dv16Emulator(node=node, password="654321")
    with pytest.raises(AuthFailed, match="none of 2 configured passwords"):
        make_driver(emu, node).open(usb_device(), ["000000", "123456"])
    assert emu.violations == []
    assert emu.commands() == [1, 2, 14, 13]  # init, ID code, status, the password once
    assert open_on(node) == 0  # the node was closed again


def open_on(path: Path) -> int:
    """How many of our file descriptors are open on `path`."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}") == str(path)
    return n


def test_no_passwords_is_auth_failed(emu: Dv16Emulator, node: Path) -> None:
    with pytest.raises(AuthFailed):
        make_driver(emu, node).open(usb_device(), [])


def test_password_is_checked_on_the_host(node: Path) -> None:
    """The firmware compares nothing: the host reads the password back and compares it,
    before every protected call, and never sends a password or changes credentials."""
    emu = Dv16Emulator(node=node, password="123456")
    with make_driver(emu, node).open(usb_device(), ["000000", "123456"]) as rec:
        assert rec.battery_percent() == 67
        for cmd in (Dv16Command.SET_PASSWORD, Dv16Command.SET_ID_CODE):
            with pytest.raises(ValueError):
                rec._transfer(cmd, "forbidden", read_len=16)
    assert not {10, 11} & set(emu.commands())
    # no password goes to the recorder in any data phase
    assert all(b"123456" not in sent.data for sent in emu.log)


def test_password_changed_mid_session(emu: Dv16Emulator, session: ScsiDv16Session) -> None:
    emu.password = "999999"
    with pytest.raises(AuthFailed, match="compared on the host"):
        session.officer_info()
    with pytest.raises(AuthFailed):
        session.set_clock(dt.datetime(2026, 1, 1))
    assert emu.clock_payload is None


def test_exactly_the_public_command_set(emu: Dv16Emulator, node: Path) -> None:
    """Each call sends the public code's commands, directions and lengths, in order."""

    def sent() -> list[tuple[int, str, int]]:
        out = [
            (x.cdb[5], R if x.cdb[:2] == b"\xfd\x81" else W, x.length)
            for x in emu.log
            if x.cdb[0] != 0x12  # INQUIRY
        ]
        emu.log.clear()
        return out

    pw, status = (13, R, 16), (14, R, 4)
    rec = make_driver(emu, node).open(usb_device(), ["123456", PASSWORD])
    try:
        assert sent() == [(1, W, 0), (2, R, 6), status, pw]
        rec.id_code()
        assert sent() == [(2, R, 6), status]
        rec.officer_info()
        assert sent() == [pw, (3, R, 89), status]
        rec.write_officer_info(OFFICER)
        assert sent() == [pw, (4, W, 89), status, pw, (3, R, 89), status]
        rec.set_clock(dt.datetime(2026, 11, 21, 8, 30, 5))
        assert sent() == [pw, (5, W, 7), status]
        rec.battery_percent()
        assert sent() == [pw, (8, R, 4), status]
        rec.resolution()
        assert sent() == [pw, (7, R, 8)]
        rec.enter_mass_storage()
        assert sent() == [pw, (12, R, 4), (6, W, 0)]
    finally:
        rec.close()
    assert emu.violations == []


def test_strict_firmware_refuses_anything_else(emu: Dv16Emulator, session: ScsiDv16Session) -> None:
    """What a strict recorder does with a command outside the public set."""
    with pytest.raises(ScsiCheckCondition, match="ILLEGAL REQUEST"):
        session._transfer(Dv16Command.BATTERY, "arming write", data_out=b"\x00" * 16)
    emu.violations.clear()


def test_write_that_did_not_happen_is_caught(emu: Dv16Emulator, session: ScsiDv16Session) -> None:
    """GOOD and status 0, but the block is unchanged: read back, it is not written."""
    emu.write_ignored = True
    with pytest.raises(ProtocolError, match="not written"):
        session.write_officer_info(OfficerInfo("B100002", "200002", "李四"))
    assert session.officer_info() == OFFICER


def test_lenient_firmware_with_the_94_layout_configured(node: Path) -> None:
    """Firmware with the public 89-byte block, the station set to 94: refused, not misread."""
    emu = Dv16Emulator(node=node, strict=False)
    with (
        make_driver(emu, node, layout="94").open(usb_device(), [PASSWORD]) as rec,
        pytest.raises(ProtocolError, match="short transfer, 89 of 94"),
    ):
        rec.officer_info()


# --- the officer block ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["94", "89"])
def test_officer_block_layouts_gbk(node: Path, layout: str) -> None:
    emu = Dv16Emulator(node=node, layout=layout)
    block = fw_pack(OFFICER, layout)
    assert len(block) == int(layout)
    assert "张三丰".encode("gbk") in block
    if layout == "94":
        assert block[:8] == b"B100001\x00" and block[8:15] == b"100001\x00"
    else:
        assert block[:7] == b"B100001" and block[7:13] == b"100001"
    with make_driver(emu, node, layout=layout).open(usb_device(), [PASSWORD]) as rec:
        assert rec.officer_info() == OFFICER
        new = OfficerInfo("B100002", "200002", "李四" * 8, "3" * 12, "上海市公安局" * 2)
        rec.write_officer_info(new)
        assert fw_unpack(emu.officer, layout) == new
        assert emu.officer == fw_pack(new, layout)
        assert rec.officer_info() == new
        write = next(s for s in emu.log if s.command == 4)
        assert write.data == fw_pack(new, layout)
        assert write.cdb[7] == int(layout)
    assert emu.violations == []


# A known officer and its block, written out byte by byte (GBK: 张 d5c5, 三 c8fd, 城 b3c7,
# 关 b9d8, 派 c5c9, 出 b3f6, 所 cbf9): the firmware's layout, the driver's codec and the
# bytes on the wire must all agree with these, not merely with each other.
KNOWN_OFFICER = OfficerInfo("B100001", "100001", "张三", "110101", "城关派出所")
KNOWN_BLOCKS = {
    "89": bytes.fromhex(
        "42 31 30 30 30 30 31"  # cSerial[7] @0: "B100001", full, no NUL
        "31 30 30 30 30 31"  # userNo[6] @7: "100001", full
        "d5 c5 c8 fd" + "00" * 28 +  # userName[32] @13: "张三"
        "31 31 30 31 30 31" + "00" * 6 +  # unitNo[12] @45: "110101"
        "b3 c7 b9 d8 c5 c9 b3 f6 cb f9" + "00" * 22  # unitName[32] @57: "城关派出所"
    ),
    "94": bytes.fromhex(
        "42 31 30 30 30 30 31 00"  # cSerial[8] @0
        "31 30 30 30 30 31 00"  # userNo[7] @8
        "d5 c5 c8 fd" + "00" * 29 +  # userName[33] @15
        "31 31 30 31 30 31" + "00" * 7 +  # unitNo[13] @48
        "b3 c7 b9 d8 c5 c9 b3 f6 cb f9" + "00" * 23  # unitName[33] @61
    ),
}  # fmt: skip


@pytest.mark.parametrize("layout", ["89", "94"])
def test_known_officer_block_bytes(node: Path, layout: str) -> None:
    """One known block: the emulated firmware, the driver's codec and the wire agree on it."""
    known = KNOWN_BLOCKS[layout]
    assert len(known) == int(layout)
    assert fw_pack(KNOWN_OFFICER, layout) == known
    assert fw_unpack(known, layout) == KNOWN_OFFICER
    assert encode_officer_block(KNOWN_OFFICER, layout) == known
    assert decode_officer_block(known, layout) == KNOWN_OFFICER
    emu = Dv16Emulator(node=node, layout=layout, officer=known)
    with make_driver(emu, node, layout=layout).open(usb_device(), [PASSWORD]) as rec:
        assert rec.officer_info() == KNOWN_OFFICER
        rec.write_officer_info(OfficerInfo("B100002", "200002", "李四"))
        assert emu.officer != known
        rec.write_officer_info(KNOWN_OFFICER)
    assert [s.data for s in emu.log if s.command == 4][-1] == known
    assert emu.officer == known
    assert emu.violations == []


def test_officer_block_too_long_or_unencodable(emu: Dv16Emulator, session: ScsiDv16Session) -> None:
    before = len(emu.log)
    with pytest.raises(ProtocolError, match="officer_name"):
        session.write_officer_info(OfficerInfo("B1", "1", "张" * 17))  # 34 bytes > 32
    with pytest.raises(ProtocolError, match="gbk"):
        session.write_officer_info(OfficerInfo("B1", "1", "\U0001f46e"))
    with pytest.raises(ProtocolError):
        session.write_officer_info(OfficerInfo("", "1"))
    assert len(emu.log) == before


def test_officer_block_from_a_lying_device(emu: Dv16Emulator, session: ScsiDv16Session) -> None:
    emu.officer = b"\x00" * 89
    with pytest.raises(ProtocolError, match="cSerial is empty"):
        session.officer_info()
    emu.officer = b"B100001" + b"\xff\xfe\x00" + b"\x00" * 79
    with pytest.raises(ProtocolError, match="userNo is not valid gbk: ff fe"):
        session.officer_info()
    with pytest.raises(ProtocolError):
        decode_officer_block(b"\x00" * 90, "94")


# --- clock, mass storage, battery -------------------------------------------------------------


def test_set_time_payload(emu: Dv16Emulator, session: ScsiDv16Session) -> None:
    now = dt.datetime(2026, 11, 21, 8, 30, 5, 999_999, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert session.set_clock(now) is None
    assert emu.clock_payload == b"\xea\x07\x0b\x15\x08\x1e\x05"  # 2026-11-21 08:30:05 local
    sent = next(s for s in emu.log if s.command == 5)
    assert sent.cdb[:2] == b"\xfb\x82" and sent.cdb[7] == 7
    assert sent.data == b"\xea\x07\x0b\x15\x08\x1e\x05"


def test_set_time_failure_status(emu: Dv16Emulator, session: ScsiDv16Session) -> None:
    emu.status_on[5] = 6
    with pytest.raises(ProtocolError, match="SET_SYSTEMTIME_FAILED"):
        session.set_clock(dt.datetime(2026, 1, 1))


def test_enter_mass_storage(emu: Dv16Emulator, session: ScsiDv16Session) -> None:
    session.enter_mass_storage()
    assert emu.msdc
    n = len(emu.log)
    session.enter_mass_storage()  # idempotent
    assert len(emu.log) == n
    assert session.card() is None


def test_enter_mass_storage_leaving_the_bus(emu: Dv16Emulator, session: ScsiDv16Session) -> None:
    emu.leave_on_msdc = True
    session.enter_mass_storage()
    assert emu.msdc and not session.alive()
    session.close()
    session.close()


def test_enter_mass_storage_without_card(emu: Dv16Emulator, session: ScsiDv16Session) -> None:
    emu.card = False
    with pytest.raises(ProtocolError, match="MSDC_FAILED"):
        session.enter_mass_storage()
    assert 6 not in emu.commands()


@pytest.mark.parametrize("level", [-1, 101, 255, 2**31 - 1])
def test_battery_out_of_range(emu: Dv16Emulator, session: ScsiDv16Session, level: int) -> None:
    emu.battery = level
    with pytest.raises(ProtocolError, match="battery"):
        session.battery_percent()


def test_open_does_not_judge_the_battery(emu: Dv16Emulator, node: Path) -> None:
    emu.battery = 200
    with make_driver(emu, node).open(usb_device(), [PASSWORD]) as rec:
        assert rec.id_code() == "ZFY01"


# --- SCSI and transport errors ----------------------------------------------------------------


def test_check_condition_is_protocol_error_with_sense(
    emu: Dv16Emulator, session: ScsiDv16Session
) -> None:
    emu.check_on[3] = (0x03, 0x11, 0x00)  # MEDIUM ERROR, unrecovered read error
    with pytest.raises(ScsiCheckCondition) as e:
        session.officer_info()
    assert isinstance(e.value, ProtocolError)
    assert "CHECK CONDITION" in str(e.value) and "MEDIUM ERROR" in str(e.value)
    assert "0x11/0x00" in str(e.value)
    assert (e.value.sense_key, e.value.asc, e.value.ascq) == (3, 0x11, 0)


def test_failure_status_after_check_condition(emu: Dv16Emulator, session: ScsiDv16Session) -> None:
    emu.check_on[2] = (0x05, 0x24, 0x00)
    emu.status_on[2] = 2
    with pytest.raises(ProtocolError, match=r"ILLEGAL REQUEST.*CONNECT_FAILED"):
        session.id_code()
    emu.check_on.clear()
    emu.status_on[2] = 99
    with pytest.raises(ProtocolError, match="unknown status 99"):
        session.id_code()


def test_short_transfer_is_protocol_error(emu: Dv16Emulator, session: ScsiDv16Session) -> None:
    emu.short_on[3] = 50
    with pytest.raises(ProtocolError, match="short transfer, 50 of 89"):
        session.officer_info()
    emu.short_on = {4: 10}
    with pytest.raises(ProtocolError, match="short transfer"):
        session.write_officer_info(OFFICER)


def test_device_gone_enodev_mid_command(emu: Dv16Emulator, session: ScsiDv16Session) -> None:
    emu.gone_on.add(3)
    with pytest.raises(DeviceGone):
        session.officer_info()
    assert not session.alive()
    with pytest.raises(DeviceGone):
        session.battery_percent()
    session.close()
    session.close()


def test_device_gone_during_open(emu: Dv16Emulator, node: Path) -> None:
    emu.gone_on.add(0x12)
    with pytest.raises(DeviceGone):
        make_driver(emu, node, settle_ms=0).open(usb_device(), [PASSWORD])
    assert emu.commands() == []


def test_device_gone_host_status(emu: Dv16Emulator, session: ScsiDv16Session) -> None:
    emu.host_status_on[8] = DID_NO_CONNECT
    with pytest.raises(DeviceGone, match="DID_NO_CONNECT"):
        session.battery_percent()
    assert not session.alive()


def test_host_error_while_present_is_protocol_error(
    emu: Dv16Emulator, session: ScsiDv16Session, node: Path
) -> None:
    emu.host_status_on[2] = DID_ERROR
    with pytest.raises(ProtocolError, match="DID_ERROR") as e:
        session.id_code()
    assert not isinstance(e.value, DeviceGone)
    assert session.alive()
    node.unlink()  # the same error with the node gone: the recorder left
    with pytest.raises(DeviceGone):
        session.id_code()


def test_other_ioctl_errors(emu: Dv16Emulator, node: Path) -> None:
    def broken(fd: int, request: int, arg: Any) -> int:
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")

    driver = ScsiDv16Driver(sg_nodes=lambda d: [str(node)], ioctl=broken)
    assert driver.match(usb_device()) == 0


def test_real_ioctl_on_a_node_that_is_not_sg(node: Path) -> None:
    """The real fcntl.ioctl takes the header; a file that is no sg node says ENOTTY."""
    driver = ScsiDv16Driver(sg_nodes=lambda d: [str(node)])
    assert driver.match(usb_device()) == 0
    with pytest.raises(ProtocolError, match="no sg node answers"):
        driver.open(usb_device(), [PASSWORD])
    assert open_on(node) == 0


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError):
        ScsiDv16Config(layout="95")
    with pytest.raises(ValidationError):
        ScsiDv16Config(encoding="no-such-codec")
    with pytest.raises(ValidationError):
        ScsiDv16Config(usb_ids=["12345:1"])
    with pytest.raises(ValidationError):
        ScsiDv16Config(pasword="x")
    assert ScsiDv16Config(usb_ids=[" 1B3F:3002 "]).usb_ids == ["1b3f:3002"]


# --- eight recorders through the real collector ------------------------------------------------


def test_eight_dv16_recorders_docked_at_once(tmp_path: Path) -> None:
    """Eight DV16 recorders, each on its own sg node, collected at once by the real
    Collector: each port reads, switches and stores its own recorder."""
    emus: dict[str, Dv16Emulator] = {}
    nodes: dict[int, Path] = {}
    for port in range(1, 9):
        node = tmp_path / f"sg{port}"
        node.write_bytes(b"")
        info = OfficerInfo(f"B10000{port}", f"10000{port}", "张三", "110101", "城关派出所")
        emus[str(node)] = Dv16Emulator(node=node, officer=fw_pack(info, "89"))
        nodes[port] = node

    def ioctl(fd: int, request: int, arg: Any) -> int:
        return emus[os.readlink(f"/proc/self/fd/{fd}")](fd, request, arg)

    driver = ScsiDv16Driver(
        ScsiDv16Config(settle_ms=0), sg_nodes=lambda d: [str(nodes[d.port])], ioctl=ioctl
    )
    dock = Dock(tmp_path, DriverRegistry([driver]), ["123456", PASSWORD])
    try:
        footage = {}
        for port in range(1, 9):
            footage[port] = card_files(tmp_path / f"card{port}", f"10000{port}", f"B10000{port}")
        for port in (4, 1, 7, 2, 8, 5, 3, 6):
            dock.dock(port, None, tmp_path / f"card{port}")
        dock.wait("8 collections", lambda: len(dock.results) == 8)
        assert dock.results == {p: "complete" for p in range(1, 9)}, {
            p: s.error for p, s in dock.slots.items()
        }
        for port in range(1, 9):
            assert dock.stored(f"10000{port}", f"B10000{port}") == footage[port]
            assert emus[str(nodes[port])].msdc
            assert emus[str(nodes[port])].violations == []
    finally:
        dock.close()


def test_empty_password_is_refused() -> None:
    from station.drivers.scsi_dv16 import password_field

    with pytest.raises(ValueError):
        password_field("")
    assert password_field("654321") == b"654321".ljust(16, b"\0")
