"""The USB vendor-interface driver against an emulated recorder, through real pyusb.

The recorder is a `usb.backend.IBackend` (HIL.md tier 1): descriptors, string
descriptors, vendor control requests answered by the protocol's reference
device side, STALL as EPIPE, unplug as ENODEV, and the switch to mass storage
as the recorder leaving and a disk with another product id arriving on the same
port. The driver finds it through `usb.core.find(backend=...)` like a real one. The
backend implements neither claim_interface nor set_configuration, so a driver
that claimed an interface or reconfigured the recorder would fail here.
"""

from __future__ import annotations

import array
import datetime as dt
import errno
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import usb.backend
import usb.core
from pydantic import ValidationError

from station.drivers.base import AuthFailed, DeviceGone, DockedDevice, OfficerInfo, ProtocolError
from station.drivers.usb_vendor import (
    Refused,
    UsbVendorConfig,
    UsbVendorDriver,
    UsbVendorSession,
    interface_classes,
    parse_port,
)
from station.drivers.usb_vendor_proto import (
    CAP_GET_TIME,
    CAP_UNIX_TIME,
    LAYOUT_89,
    OFFICER_BLOCK_SIZE,
    Battery,
    DeviceTime,
    Hello,
    LastStatus,
    OfficerBlock,
    Reason,
    RecorderState,
    ReferenceRecorder,
    Request,
    Stall,
    Status,
    WireError,
    pack_officer,
    unpack_officer,
)

VID, PID, DISK_PID = 0x1D6B, 0x0104, 0x0105
OTHER_VID, OTHER_PID = 0x0BDA, 0x8153
PASSWORD = "123456"
OFFICER = OfficerBlock("B100001", "100001", "张三", "110101", "北京市公安局城关派出所")


# --- the emulated bus ------------------------------------------------------------------


def _nodev() -> usb.core.USBError:
    return usb.core.USBError("No such device (it may have been disconnected)", -4, errno.ENODEV)


def _pipe() -> usb.core.USBError:
    return usb.core.USBError("Pipe error", -9, errno.EPIPE)


def _io() -> usb.core.USBError:
    return usb.core.USBError("Input/output error", -1, errno.EIO)


def _timeout() -> usb.core.USBError:
    return usb.core.USBTimeoutError("Operation timed out", -7, errno.ETIMEDOUT)


@dataclass(eq=False)
class EmuDevice:
    """One device on the emulated bus."""

    vid: int
    pid: int
    bus: int
    address: int
    port: tuple[int, ...]
    serial: str
    interface_class: int = 0xFF
    firmware: ReferenceRecorder | None = None
    present: bool = True
    # SET_MSDC: "ack" (status stage done, then gone), "nodev" (gone during the request),
    # "pipe" (the request fails as the device leaves), "late" (acked, leaves on demand)
    msdc_mode: str = "ack"
    # a refused OUT request with data: "stall" it, or "ack" it and leave the refusal to
    # LAST_STATUS, as a FunctionFS gadget must (its data stage completes before it looks)
    out_refusal: str = "stall"
    disk_pid: int = DISK_PID
    # one-shot hooks run before a request is handled: bRequest -> callable
    faults: dict[int, Callable[[], None]] = field(default_factory=dict)
    requests: list[tuple[int, int, int, int, bytes | int]] = field(default_factory=list)


class EmuBackend(usb.backend.IBackend):
    """A USB bus with recorders on it, as pyusb's backends present one."""

    def __init__(self) -> None:
        super().__init__()
        self.devices: list[EmuDevice] = []
        self.next_address = 2
        self.open_handles = 0

    # bus changes

    def plug(
        self,
        *,
        vid: int = VID,
        pid: int = PID,
        port: tuple[int, ...] = (2,),
        serial: str = "B100001",
        interface_class: int = 0xFF,
        firmware: ReferenceRecorder | None = None,
        **kw: Any,
    ) -> EmuDevice:
        dev = EmuDevice(
            vid, pid, 1, self.next_address, port, serial, interface_class, firmware, **kw
        )
        self.next_address += 1
        self.devices.append(dev)
        return dev

    def unplug(self, dev: EmuDevice) -> None:
        dev.present = False
        if dev in self.devices:
            self.devices.remove(dev)

    def yank(self, dev: EmuDevice, error: Callable[[], usb.core.USBError]) -> Callable[[], None]:
        """A fault hook: the device is pulled out mid-request, which fails with `error`."""

        def hook() -> None:
            self.unplug(dev)
            raise error()

        return hook

    def reenumerate_as_disk(self, dev: EmuDevice) -> EmuDevice:
        self.unplug(dev)
        return self.plug(
            vid=dev.vid, pid=dev.disk_pid, port=dev.port, serial=dev.serial, interface_class=0x08
        )

    # descriptors

    def enumerate_devices(self) -> list[EmuDevice]:
        return list(self.devices)

    def get_parent(self, dev: EmuDevice) -> None:
        return None

    def get_device_descriptor(self, dev: EmuDevice) -> SimpleNamespace:
        return SimpleNamespace(
            bLength=18,
            bDescriptorType=1,
            bcdUSB=0x0200,
            bDeviceClass=0,
            bDeviceSubClass=0,
            bDeviceProtocol=0,
            bMaxPacketSize0=64,
            idVendor=dev.vid,
            idProduct=dev.pid,
            bcdDevice=0x0100,
            iManufacturer=1,
            iProduct=2,
            iSerialNumber=3,
            bNumConfigurations=1,
            address=dev.address,
            bus=dev.bus,
            port_number=dev.port[-1],
            port_numbers=dev.port,
            speed=3,
        )

    def get_configuration_descriptor(self, dev: EmuDevice, config: int) -> SimpleNamespace:
        if config != 0:
            raise IndexError(config)
        return SimpleNamespace(
            bLength=9,
            bDescriptorType=2,
            wTotalLength=32,
            bNumInterfaces=1,
            bConfigurationValue=1,
            iConfiguration=0,
            bmAttributes=0x80,
            bMaxPower=250,
            extra_descriptors=[],
        )

    def get_interface_descriptor(
        self, dev: EmuDevice, intf: int, alt: int, config: int
    ) -> SimpleNamespace:
        if (intf, alt, config) != (0, 0, 0):
            raise IndexError((intf, alt, config))
        disk = dev.interface_class == 0x08
        return SimpleNamespace(
            bLength=9,
            bDescriptorType=4,
            bInterfaceNumber=0,
            bAlternateSetting=0,
            bNumEndpoints=2,
            bInterfaceClass=dev.interface_class,
            bInterfaceSubClass=0x06 if disk else 0,
            bInterfaceProtocol=0x50 if disk else 0,
            iInterface=0,
            extra_descriptors=[],
        )

    def get_endpoint_descriptor(
        self, dev: EmuDevice, ep: int, intf: int, alt: int, config: int
    ) -> SimpleNamespace:
        if ep not in (0, 1):
            raise IndexError(ep)
        return SimpleNamespace(
            bLength=7,
            bDescriptorType=5,
            bEndpointAddress=0x81 if ep == 0 else 0x01,
            bmAttributes=2,
            wMaxPacketSize=512,
            bInterval=0,
            bRefresh=0,
            bSynchAddress=0,
            extra_descriptors=[],
        )

    # I/O

    def open_device(self, dev: EmuDevice) -> SimpleNamespace:
        if not dev.present:
            raise _nodev()
        self.open_handles += 1
        return SimpleNamespace(dev=dev)

    def close_device(self, handle: SimpleNamespace) -> None:
        self.open_handles -= 1

    def ctrl_transfer(
        self,
        handle: SimpleNamespace,
        bmRequestType: int,
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: array.array,
        timeout: int,
    ) -> int:
        dev: EmuDevice = handle.dev
        is_in = bool(bmRequestType & 0x80)
        payload: bytes | int = len(data) if is_in else data.tobytes()
        dev.requests.append((bmRequestType, bRequest, wValue, wIndex, payload))
        if not dev.present:
            raise _nodev()
        hook = dev.faults.pop(bRequest, None)
        if hook is not None:
            hook()
        if bmRequestType & 0x60 == 0:
            reply = self._standard(dev, bmRequestType, bRequest, wValue)
        elif dev.firmware is None:
            raise _pipe()  # a vendor device that does not speak the protocol
        else:
            try:
                reply = dev.firmware.setup(bmRequestType, bRequest, wValue, wIndex, payload)
            except Stall:
                if is_in or not payload or dev.out_refusal == "stall":
                    raise _pipe() from None
                reply = None
            if dev.firmware.switch_requested:
                self._switch(dev)
        if not is_in:
            return len(data)
        assert reply is not None
        data[: len(reply)] = array.array("B", reply)
        return len(reply)

    def _standard(self, dev: EmuDevice, bm: int, req: int, value: int) -> bytes:
        if bm == 0x80 and req == 6 and value >> 8 == 3:  # GET_DESCRIPTOR(STRING)
            index = value & 0xFF
            if index == 0:
                return bytes([4, 3, 0x09, 0x04])
            text = {1: "Emu", 2: "ZFY recorder", 3: dev.serial}[index].encode("utf-16-le")
            return bytes([len(text) + 2, 3]) + text
        raise _pipe()

    def _switch(self, dev: EmuDevice) -> None:
        mode = dev.msdc_mode
        if mode == "late":
            return
        self.reenumerate_as_disk(dev)
        if mode == "nodev":
            raise _nodev()
        if mode == "pipe":
            raise _pipe()


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def bus() -> EmuBackend:
    return EmuBackend()


@pytest.fixture
def firmware() -> ReferenceRecorder:
    state = RecorderState(
        id_code="ZFY01",
        password=PASSWORD,
        officer=OFFICER,
        battery_percent=67,
        clock_offset_s=90.0,
    )
    return ReferenceRecorder(state)


@pytest.fixture(params=["stall", "ack"], ids=["stalls", "acks-data"])
def recorder(bus: EmuBackend, firmware: ReferenceRecorder, request: Any) -> EmuDevice:
    """The recorder, refusing OUT data either way a real one may."""
    return bus.plug(firmware=firmware, out_refusal=request.param)


@pytest.fixture
def driver(bus: EmuBackend) -> UsbVendorDriver:
    config = UsbVendorConfig(usb_ids=[f"{VID:04x}:{PID:04X}"], timeout_ms=200)
    return UsbVendorDriver(config, backend=bus)


def docked(dev: EmuDevice, **override: Any) -> DockedDevice:
    """The DockedDevice the udev bus would report for this device."""
    sys_name = f"{dev.bus}-{'.'.join(map(str, dev.port))}"
    props = {
        "BUSNUM": f"{dev.bus:03d}",
        "DEVNUM": f"{dev.address:03d}",
        "USB_PORT": sys_name,
        "ID_USB_INTERFACES": f":{dev.interface_class:02x}0000:",
        "ID_SERIAL_SHORT": dev.serial,
    }
    props.update(override)
    props = {k: v for k, v in props.items() if v is not None}
    return DockedDevice(
        port=1,
        key=f"{sys_name}#{dev.bus}:{dev.address}:{dev.pid:04x}",
        kind="usb",
        path=f"/sys/devices/pci0000:00/0000:00:14.0/usb{dev.bus}/{sys_name}",
        vendor_id=dev.vid,
        product_id=dev.pid,
        serial=dev.serial,
        properties=props,
    )


def vendor_requests(dev: EmuDevice, request: int) -> list[tuple[int, int, int, int, Any]]:
    return [r for r in dev.requests if r[1] == request and r[0] & 0x60 == 0x40]


# --- the wire format -----------------------------------------------------------------------


def test_officer_block_bytes_are_the_94_byte_gbk_layout() -> None:
    raw = pack_officer(OFFICER)
    assert len(raw) == OFFICER_BLOCK_SIZE == 94
    assert raw[0:8] == b"B100001\0"
    assert raw[8:15] == b"100001\0"
    assert raw[15:48] == "张三".encode("gbk").ljust(33, b"\0") == b"\xd5\xc5\xc8\xfd" + b"\0" * 29
    assert raw[48:61] == b"110101".ljust(13, b"\0")
    assert raw[61:94] == "北京市公安局城关派出所".encode("gbk").ljust(33, b"\0")
    assert unpack_officer(raw) == OFFICER
    # fields filling their slot without a terminator, and junk after a terminator
    odd = bytearray(raw)
    odd[0:8] = b"B1000012"
    odd[8:15] = b"1\0junk\0"
    assert unpack_officer(bytes(odd)) == OfficerBlock(
        "B1000012", "1", "张三", "110101", "北京市公安局城关派出所"
    )


def test_officer_block_limits_and_the_89_byte_layout() -> None:
    with pytest.raises(WireError, match="at most 32"):
        pack_officer(OfficerBlock("B100001", "100001", "张" * 17))  # 34 bytes in GBK
    with pytest.raises(WireError, match="cannot be written"):
        pack_officer(OfficerBlock("B100001", "100001", "🙂"))
    with pytest.raises(WireError, match="not valid gbk"):
        unpack_officer(b"B100001\0" + b"100001\0" + b"\xff\xff" + bytes(77))
    with pytest.raises(WireError, match="93 bytes"):
        unpack_officer(bytes(93))
    old = pack_officer(OFFICER, layout=LAYOUT_89)
    assert len(old) == 89 and old[:13] == b"B100001100001"
    assert unpack_officer(old, layout=LAYOUT_89) == OFFICER


def test_small_payloads_byte_for_byte() -> None:
    assert Hello(1, 1, CAP_GET_TIME).pack() == b"ZFYV\x01\x01\x01\x00"
    assert Hello.unpack(b"ZFYV\x01\x02\x03\x00future") == Hello(1, 2, 3)
    with pytest.raises(WireError, match="magic"):
        Hello.unpack(b"ABCD\x01\x01\x00\x00")
    t = DeviceTime(dt.datetime(2026, 11, 21, 8, 30, 5), 0x6A1B2C3D)
    assert t.pack() == b"\xea\x07\x0b\x15\x08\x1e\x05\x3d\x2c\x1b\x6a"
    assert DeviceTime.unpack(t.pack()) == t
    assert DeviceTime.unpack(t.pack()[:7]) == DeviceTime(t.local, None)
    with pytest.raises(WireError, match="impossible"):
        DeviceTime.unpack(b"\xea\x07\x02\x1e\x00\x00\x00")  # 30 February
    st = LastStatus(Request.SET_MSDC, Status.MSDC_FAILED, 0x1234, Reason.NO_CARD, "no card")
    assert st.pack() == b"\x06\x08\x34\x12\x08\x07no card"
    assert LastStatus.unpack(st.pack()) == st
    assert "MSDC_FAILED, NO_CARD (no card)" in st.describe()
    assert Battery.unpack(b"\x43") == Battery(67, 0)
    with pytest.raises(WireError):
        Battery.unpack(b"\x65\x00")  # 101 %


def test_protocol_module_needs_only_the_standard_library() -> None:
    """The gadget responder runs it in the HIL guest: the standard library, and of ours
    station.drivers.zfy and station.drivers.base only."""
    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(root)!r})\n"
        "from station.drivers import usb_vendor_proto as m\n"
        "r = m.ReferenceRecorder(m.RecorderState(password='x'))\n"
        "assert r.setup(0xC0, 1, 1, 7, 64)[:4] == b'ZFYV'\n"
        "top = {n.split('.')[0] for n in sys.modules} - {'__main__', 'station'}\n"
        "ours = {n for n in sys.modules if n.split('.')[0] == 'station'}\n"
        "print(sorted(top - sys.stdlib_module_names), sorted(ours))\n"
    )
    # -I -S: no site-packages, nothing on the path but the repository root
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    )
    allowed = [
        "station",
        "station.drivers",
        "station.drivers.base",
        "station.drivers.usb_vendor_proto",
        "station.drivers.zfy",
    ]
    assert out.stdout.strip() == f"[] {allowed}"


def test_reference_recorder_refuses_with_a_readable_last_status() -> None:
    fw = ReferenceRecorder(RecorderState(password=PASSWORD))
    with pytest.raises(Stall):
        fw.setup(0xC0, Request.GET_OFFICER, 0, 11, 94)
    st = LastStatus.unpack(fw.setup(0xC0, Request.LAST_STATUS, 0, 0, 64) or b"")
    assert (st.request, st.status, st.tag, st.reason) == (
        Request.GET_OFFICER,
        Status.CHECK_PWD_FAILED,
        11,
        Reason.NOT_AUTHENTICATED,
    )
    # reading LAST_STATUS does not replace it
    assert LastStatus.unpack(fw.setup(0xC0, Request.LAST_STATUS, 0, 0, 64) or b"") == st
    with pytest.raises(Stall):
        fw.setup(0x40, Request.GET_ID_CODE, 0, 12, b"")  # wrong direction
    assert fw.last.reason == Reason.UNKNOWN_REQUEST
    with pytest.raises(Stall):
        fw.setup(0xC0, 0x0D, 0, 13, 32)  # "read password" does not exist
    with pytest.raises(Stall):
        fw.setup(0x40, Request.AUTH, 0, 14, b"000000")
    assert (fw.last.status, fw.last.reason) == (Status.CHECK_PWD_FAILED, Reason.WRONG_PASSWORD)
    fw.setup(0x40, Request.AUTH, 0, 15, PASSWORD.encode())
    assert (fw.last.status, fw.last.reason) == (Status.CHECK_PWD_SUCCESS, Reason.OK)
    with pytest.raises(Stall):
        fw.setup(0x40, Request.SET_TIME, 0, 16, b"\xea\x07\x0d\x01\x00\x00\x00")  # month 13
    assert (fw.last.status, fw.last.reason) == (Status.SET_SYSTEMTIME_FAILED, Reason.BAD_VALUE)


# --- matching and configuration --------------------------------------------------------------


def test_match_only_listed_ids_with_the_vendor_interface(
    driver: UsbVendorDriver, bus: EmuBackend, recorder: EmuDevice
) -> None:
    assert driver.match(docked(recorder)) == 100
    assert driver.match(docked(recorder, ID_USB_INTERFACES=None)) == 50
    # the same recorder after the switch: a disk, even if its ids were listed too
    assert driver.match(docked(recorder, ID_USB_INTERFACES=":080650:")) == 0
    # another vendor-class device (a network adapter, say) is never touched
    other = bus.plug(vid=OTHER_VID, pid=OTHER_PID, port=(3,), serial="X")
    assert driver.match(docked(other)) == 0
    sim = DockedDevice(port=1, key="k", kind="simulated", path="/tmp/port-1")
    assert driver.match(sim) == 0
    assert interface_classes(":ff0000:080650:") == {0xFF, 0x08}
    assert parse_port("1-1.2") == (1, (1, 2)) and parse_port("usb1") is None


def test_config_is_strict() -> None:
    c = UsbVendorConfig(usb_ids=[" 1D6B:0104 "])
    assert c.usb_ids == ["1d6b:0104"] and c.ids() == {(0x1D6B, 0x0104)}
    assert (c.interface_class, c.timeout_ms, c.encoding) == (0xFF, 2000, "gbk")
    for bad in (
        {"usb_ids": ["1d6b-0104"]},
        {"usb_ids": []},
        {"usb_ids": ["1d6b:0104"], "encoding": "klingon"},
        {"usb_ids": ["1d6b:0104"], "interface_class": 256},
        {"usb_ids": ["1d6b:0104"], "passwrods": ["1"]},
    ):
        with pytest.raises(ValidationError):
            UsbVendorConfig(**bad)


# --- a session -----------------------------------------------------------------------------------


def test_identify_through_real_pyusb(
    driver: UsbVendorDriver, bus: EmuBackend, recorder: EmuDevice
) -> None:
    with driver.open(docked(recorder), ["000000", PASSWORD]) as rec:
        assert isinstance(rec, UsbVendorSession)
        assert rec.hello == Hello(1, 1, CAP_GET_TIME | CAP_UNIX_TIME)
        assert rec.id_code() == "ZFY01"
        assert rec.officer_info() == OfficerInfo(
            "B100001", "100001", "张三", "110101", "北京市公安局城关派出所"
        )
        assert rec.battery_percent() == 67
        assert rec.card() is None
        assert rec.alive()
    assert bus.open_handles == 0
    # every request went to the device, vendor type, with a fresh tag in wIndex
    vendor = [r for r in recorder.requests if r[0] & 0x60 == 0x40]
    assert {r[0] for r in vendor} <= {0xC0, 0x40}
    tags = [r[3] for r in vendor if r[1] != Request.LAST_STATUS]
    assert len(set(tags)) == len(tags)
    # the first password was refused, the second taken: two AUTHs, nothing claimed
    assert [r[4] for r in vendor_requests(recorder, Request.AUTH)] == [b"000000", b"123456"]


def test_write_officer_block_in_gbk(
    driver: UsbVendorDriver, recorder: EmuDevice, firmware: ReferenceRecorder
) -> None:
    new = OfficerInfo("B100001", "200002", "李四", "110102", "东城分局交警支队")
    with driver.open(docked(recorder), [PASSWORD]) as rec:
        rec.write_officer_info(new)
        assert rec.officer_info() == new
    assert firmware.state.officer == OfficerBlock(
        "B100001", "200002", "李四", "110102", new.unit_name
    )
    (sent,) = vendor_requests(recorder, Request.SET_OFFICER)
    assert sent[0] == 0x40 and len(sent[4]) == 94
    assert sent[4][15:19] == "李四".encode("gbk") == b"\xc0\xee\xcb\xc4"


def test_write_officer_block_refuses_what_cannot_be_stored(
    driver: UsbVendorDriver, recorder: EmuDevice
) -> None:
    with driver.open(docked(recorder), [PASSWORD]) as rec:
        with pytest.raises(ValueError, match="at most 32"):
            rec.write_officer_info(OfficerInfo("B100001", "1", "名" * 17))
        with pytest.raises(ValueError, match="officer number is empty"):
            rec.write_officer_info(OfficerInfo("B100001", ""))
    assert not vendor_requests(recorder, Request.SET_OFFICER)


def test_wrong_passwords(driver: UsbVendorDriver, recorder: EmuDevice, bus: EmuBackend) -> None:
    with pytest.raises(AuthFailed, match="none of 2"):
        driver.open(docked(recorder), ["000000", "111111"])
    assert len(vendor_requests(recorder, Request.AUTH)) == 2
    with pytest.raises(AuthFailed):
        driver.open(docked(recorder), [])
    assert bus.open_handles == 0


def test_rate_limited_auth_is_not_a_wrong_password(
    driver: UsbVendorDriver, recorder: EmuDevice, firmware: ReferenceRecorder
) -> None:
    firmware.state.max_failed_auth = 1
    with pytest.raises(Refused) as info:
        driver.open(docked(recorder), ["000000", "111111", PASSWORD])
    assert not isinstance(info.value, AuthFailed)
    assert info.value.status.reason == Reason.RATE_LIMITED
    assert "RATE_LIMITED" in str(info.value)


def test_clock_drift_measured_then_set(
    driver: UsbVendorDriver, recorder: EmuDevice, firmware: ReferenceRecorder
) -> None:
    with driver.open(docked(recorder), [PASSWORD]) as rec:
        drift = rec.set_clock(dt.datetime.now())
        assert drift is not None and abs(drift - 90) <= 1.0
        assert abs(firmware.state.clock_offset_s) <= 1.0
        again = rec.set_clock(dt.datetime.now())
        assert again is not None and abs(again) <= 1.0
    (first, _) = vendor_requests(recorder, Request.SET_TIME)
    assert len(first[4]) == 11  # local fields and the unix time
    unix = DeviceTime.unpack(first[4]).unix
    assert unix is not None and abs(unix - time.time()) <= 2


def test_clock_uses_the_station_zone_wall_time(
    driver: UsbVendorDriver, recorder: EmuDevice, firmware: ReferenceRecorder
) -> None:
    zone = ZoneInfo("Asia/Shanghai")
    firmware.now = lambda: dt.datetime.now(zone).replace(tzinfo=None)
    firmware.state.clock_offset_s = -30.0
    with driver.open(docked(recorder), [PASSWORD]) as rec:
        drift = rec.set_clock(dt.datetime.now(zone))
    assert drift is not None and abs(drift + 30) <= 1.0
    assert abs(firmware.state.clock_offset_s) <= 1.0
    (sent,) = vendor_requests(recorder, Request.SET_TIME)
    unix = DeviceTime.unpack(sent[4]).unix
    assert unix is not None and abs(unix - time.time()) <= 2


def test_clock_without_a_readable_recorder_clock(
    driver: UsbVendorDriver, recorder: EmuDevice, firmware: ReferenceRecorder
) -> None:
    firmware.capabilities = 0
    with driver.open(docked(recorder), [PASSWORD]) as rec:
        assert rec.set_clock(dt.datetime.now()) is None
    assert abs(firmware.state.clock_offset_s) <= 1.0
    assert not vendor_requests(recorder, Request.GET_TIME)


@pytest.mark.parametrize("mode", ["ack", "nodev", "pipe"])
def test_switch_to_mass_storage(
    driver: UsbVendorDriver, bus: EmuBackend, recorder: EmuDevice, mode: str
) -> None:
    recorder.msdc_mode = mode
    rec = driver.open(docked(recorder), [PASSWORD])
    rec.enter_mass_storage()
    rec.enter_mass_storage()  # idempotent
    assert len(vendor_requests(recorder, Request.SET_MSDC)) == 1
    assert not recorder.present
    (disk,) = bus.devices
    assert (disk.pid, disk.port, disk.interface_class) == (DISK_PID, recorder.port, 0x08)
    assert disk.address != recorder.address
    assert driver.match(docked(disk)) == 0
    assert rec.alive()  # still docked: the disk is on its port
    with pytest.raises(ProtocolError, match="switched to mass storage"):
        rec.id_code()
    rec.close()
    assert bus.open_handles == 0


def test_switch_refused_without_a_card(
    driver: UsbVendorDriver, recorder: EmuDevice, firmware: ReferenceRecorder
) -> None:
    firmware.state.card_ok = False
    with driver.open(docked(recorder), [PASSWORD]) as rec:
        with pytest.raises(Refused) as info:
            rec.enter_mass_storage()
        assert info.value.status.status == Status.MSDC_FAILED
        assert info.value.status.reason == Reason.NO_CARD
        assert rec.alive() and recorder.present
        assert rec.battery_percent() == 67


@pytest.mark.parametrize(("grace", "expected"), [(30.0, True), (0.0, False)])
def test_alive_between_leaving_and_the_disk_arriving(
    bus: EmuBackend, recorder: EmuDevice, grace: float, expected: bool
) -> None:
    recorder.msdc_mode = "late"
    config = UsbVendorConfig(usb_ids=[f"{VID:04x}:{PID:04x}"], switch_grace_s=grace)
    with UsbVendorDriver(config, backend=bus).open(docked(recorder), [PASSWORD]) as rec:
        rec.enter_mass_storage()
        assert rec.alive()  # acknowledged, still on the bus
        bus.unplug(recorder)  # left; the disk is not there yet
        assert rec.alive() is expected
        bus.reenumerate_as_disk(recorder)
        assert rec.alive()


@pytest.mark.parametrize("error", [_nodev, _io, _pipe], ids=["ENODEV", "EIO", "EPIPE"])
def test_unplug_mid_call(
    driver: UsbVendorDriver, bus: EmuBackend, recorder: EmuDevice, error: Any
) -> None:
    rec = driver.open(docked(recorder), [PASSWORD])
    recorder.faults[Request.GET_OFFICER] = bus.yank(recorder, error)
    with pytest.raises(DeviceGone):
        rec.officer_info()
    assert not rec.alive()
    with pytest.raises(DeviceGone):
        rec.battery_percent()
    rec.close()
    rec.close()
    assert bus.open_handles == 0


def test_io_errors_and_timeouts_with_the_recorder_still_there(
    driver: UsbVendorDriver, recorder: EmuDevice
) -> None:
    def fail(error: Callable[[], usb.core.USBError]) -> Callable[[], None]:
        def hook() -> None:
            raise error()

        return hook

    with driver.open(docked(recorder), [PASSWORD]) as rec:
        recorder.faults[Request.GET_BATTERY] = fail(_io)
        with pytest.raises(ProtocolError, match="GET_BATTERY") as info:
            rec.battery_percent()
        assert not isinstance(info.value, DeviceGone)
        recorder.faults[Request.GET_ID_CODE] = fail(_timeout)
        with pytest.raises(ProtocolError, match="no answer in 200 ms"):
            rec.id_code()
        recorder.faults[Request.LAST_STATUS] = fail(_pipe)
        recorder.faults[Request.GET_TIME] = fail(_pipe)
        with pytest.raises(ProtocolError, match="LAST_STATUS stalled too"):
            rec.set_clock(dt.datetime.now())
        assert rec.battery_percent() == 67  # and the session carries on


def test_logs_in_again_after_a_recorder_reset(
    driver: UsbVendorDriver, recorder: EmuDevice, firmware: ReferenceRecorder
) -> None:
    with driver.open(docked(recorder), [PASSWORD]) as rec:
        firmware.reset()
        assert rec.officer_info().officer_name == "张三"
        assert len(vendor_requests(recorder, Request.AUTH)) == 2
        firmware.reset()
        firmware.state.password = "999999"
        with pytest.raises(AuthFailed, match="no longer accepted"):
            rec.battery_percent()


def test_a_device_that_does_not_speak_the_protocol(
    driver: UsbVendorDriver, bus: EmuBackend
) -> None:
    dev = bus.plug()  # listed ids, vendor interface, but stalls every vendor request
    with pytest.raises(ProtocolError, match="HELLO stalled"):
        driver.open(docked(dev), [PASSWORD])
    assert not vendor_requests(dev, Request.AUTH)
    assert bus.open_handles == 0


def test_a_stale_last_status_is_not_believed(
    driver: UsbVendorDriver, recorder: EmuDevice, firmware: ReferenceRecorder
) -> None:
    with driver.open(docked(recorder), [PASSWORD]) as rec:
        stale = LastStatus(Request.GET_ID_CODE, Status.CONNECT_SUCCESS, 1, Reason.OK)

        def stall_and_forget() -> None:
            firmware.last = stale
            raise _pipe()

        recorder.faults[Request.GET_BATTERY] = stall_and_forget
        with pytest.raises(
            ProtocolError, match=r"stalled \(tag \d+\), but LAST_STATUS is about GET_ID_CODE"
        ):
            rec.battery_percent()


def test_locating_the_device(driver: UsbVendorDriver, bus: EmuBackend) -> None:
    fw = ReferenceRecorder(RecorderState(password=PASSWORD))
    a = bus.plug(port=(1, 2), serial="AAA", firmware=fw)
    b = bus.plug(
        port=(1, 3), serial="BBB", firmware=ReferenceRecorder(RecorderState("ZFY02", PASSWORD))
    )
    by_port = docked(b, BUSNUM=None, DEVNUM=None)
    with driver.open(by_port, [PASSWORD]) as rec:
        assert rec.id_code() == "ZFY02"
    by_serial = docked(a, BUSNUM=None, DEVNUM=None, USB_PORT=None)
    by_serial = DockedDevice(**{**by_serial.__dict__, "path": "/nowhere"})
    with driver.open(by_serial, [PASSWORD]) as rec:
        assert rec.id_code() == "ZFY01"
    # the scan saw it, but it left before the open
    gone = docked(a)
    bus.unplug(a)
    with pytest.raises(DeviceGone):
        driver.open(gone, [PASSWORD])
    # a disk on a listed port is not opened as a recorder
    disk = bus.reenumerate_as_disk(b)
    disk.pid = PID
    with pytest.raises(ProtocolError, match="no interface of class 0xff"):
        driver.open(docked(disk), [PASSWORD])


def test_refused_writes_are_reported_whether_stalled_or_acknowledged(
    driver: UsbVendorDriver, recorder: EmuDevice, firmware: ReferenceRecorder
) -> None:
    firmware.capabilities = 0  # no GET_TIME: set_clock goes straight to SET_TIME
    with driver.open(docked(recorder), [PASSWORD]) as rec:
        firmware.state.busy = True
        with pytest.raises(Refused, match="SET_OFFICER: CONNECT_FAILED, BUSY"):
            rec.write_officer_info(OfficerInfo("B100001", "200002"))
        with pytest.raises(Refused, match="SET_TIME: SET_SYSTEMTIME_FAILED, BUSY"):
            rec.set_clock(dt.datetime.now())
        assert firmware.state.officer == OFFICER
        firmware.state.busy = False
        rec.write_officer_info(OfficerInfo("B100001", "200002"))
    # every OUT request with data is followed by LAST_STATUS, stalled or not
    names = [r[1] for r in recorder.requests if r[0] & 0x60 == 0x40]
    for i, req in enumerate(names):
        if req in (Request.AUTH, Request.SET_OFFICER, Request.SET_TIME):
            assert names[i + 1] == Request.LAST_STATUS


def test_switch_with_an_io_error_while_the_recorder_detaches(
    driver: UsbVendorDriver, bus: EmuBackend, recorder: EmuDevice
) -> None:
    def io_error_then_leave() -> None:
        threading.Timer(0.05, bus.reenumerate_as_disk, [recorder]).start()
        raise _io()

    with driver.open(docked(recorder), [PASSWORD]) as rec:
        recorder.faults[Request.SET_MSDC] = io_error_then_leave
        rec.enter_mass_storage()  # waited for it to leave
        assert not recorder.present and rec.alive()


def test_switch_with_an_io_error_and_a_recorder_that_stays(
    driver: UsbVendorDriver, recorder: EmuDevice
) -> None:
    def io_error() -> None:
        raise _io()

    with driver.open(docked(recorder), [PASSWORD]) as rec:
        recorder.faults[Request.SET_MSDC] = io_error
        with pytest.raises(ProtocolError, match="SET_MSDC"):
            rec.enter_mass_storage()
        assert rec.alive() and rec.battery_percent() == 67
