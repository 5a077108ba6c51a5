"""The Android (adb) driver against an emulated adb server and recorder services.

The emulation (tests/adb_emulation.py) is the server side of the adb host
protocol on a local socket, with E12 and JSON recorder services behind it; the
driver talks to it as to Debian's adb server. Eight recorders docked at once run
through the real Collector (tests/dock_harness.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from adb_emulation import (
    AdbServer,
    E12Recorder,
    JsonRecorder,
    RecorderState,
    e12_pack,
    e12_unpack,
)
from dock_harness import Dock, card_files
from pydantic import ValidationError

from station.drivers import zfy
from station.drivers.android_adb import AndroidAdbConfig, AndroidAdbDriver
from station.drivers.base import (
    AuthFailed,
    DeviceBusy,
    DeviceGone,
    DockedDevice,
    DriverRegistry,
    OfficerInfo,
    ProtocolError,
    WrongRecorder,
)

PASSWORDS = ["000000", "123456", "654321"]
SERVICE_PORT = 9000
SERVICES = {"e12": E12Recorder, "json": JsonRecorder}


@pytest.fixture
def adb() -> Iterator[AdbServer]:
    server = AdbServer()
    yield server
    server.close()


@pytest.fixture(params=["e12", "json"])
def fmt(request: pytest.FixtureRequest) -> str:
    return request.param


def driver(adb: AdbServer, fmt: str, **kw: Any) -> AndroidAdbDriver:
    return AndroidAdbDriver(
        AndroidAdbConfig(
            name=f"android-{fmt}",
            usb_ids=["2207:0006"],
            format=fmt,  # type: ignore[arg-type]
            device_port=SERVICE_PORT,
            adb_port=adb.port,
            start_server=False,
            **{"timeout_s": 5, **kw},
        )
    )


def docked(port: int, serial: str | None) -> DockedDevice:
    return DockedDevice(
        port=port,
        key=f"usb:{port}",
        kind="usb",
        path=f"/nonexistent/port-{port}",
        vendor_id=0x2207,
        product_id=0x0006,
        serial=serial,
    )


def recorder(adb: AdbServer, fmt: str, i: int = 1, **kw: Any) -> RecorderState:
    state = RecorderState(serial=f"A10000{i}", officer_no=f"20000{i}", battery=60 + i, **kw)
    adb.add(state.serial, SERVICE_PORT, SERVICES[fmt](state))
    return state


def test_end_to_end(adb: AdbServer, fmt: str) -> None:
    state = recorder(adb, fmt)
    drv = driver(adb, fmt)
    assert drv.match(docked(1, "A100001")) == 90
    assert drv.match(DockedDevice(port=1, key="k", kind="simulated", path="/x")) == 0
    with drv.open(docked(1, "A100001"), PASSWORDS) as rec:
        assert rec.password == "654321"
        assert rec.id_code() == "ZFY01"
        assert rec.officer_info() == OfficerInfo(
            "A100001", "200001", "张三", "110101", "城关派出所"
        )
        assert rec.battery_percent() == 61
        assert rec.resolution() == (1920, 1080)
        assert rec.set_clock(dt.datetime(2026, 11, 21, 8, 30, 5)) is None
        assert state.clock == "2026-11-21 08:30:05"
        new = OfficerInfo("A100001", "300003", "李四", "110102", "城关派出所")
        rec.write_officer_info(new)
        assert state.info() == new
        rec.enter_mass_storage()
        assert state.msdc
        assert rec.alive()
    assert any(r.startswith("host:transport:A100001") for r in adb.requests)
    assert f"tcp:{SERVICE_PORT}" in adb.requests


def test_e12_password_is_compared_on_the_host(adb: AdbServer) -> None:
    """The E12 service checks nothing: the station never sends a password to it."""
    state = recorder(adb, "e12")
    with driver(adb, "e12").open(docked(1, "A100001"), PASSWORDS) as rec:
        rec.battery_percent()
    assert all(b"654321" not in m and b"000000" not in m for m in state.received)
    assert b"E12CMDS010" in state.received


# A known officer and its packed block, written out byte by byte (GBK: 张 d5c5, 三 c8fd,
# 城 b3c7, 关 b9d8, 派 c5c9, 出 b3f6, 所 cbf9).
KNOWN_OFFICER = OfficerInfo("A100001", "200001", "张三", "110101", "城关派出所")
KNOWN_BLOCK = bytes.fromhex(
    "41 31 30 30 30 30 31"  # cSerial[7] @0: "A100001", full, no NUL
    "32 30 30 30 30 31"  # userNo[6] @7: "200001", full
    "d5 c5 c8 fd" + "00" * 28 +  # userName[32] @13: "张三"
    "31 31 30 31 30 31" + "00" * 6 +  # unitNo[12] @45: "110101"
    "b3 c7 b9 d8 c5 c9 b3 f6 cb f9" + "00" * 22  # unitName[32] @57: "城关派出所"
)  # fmt: skip


def test_e12_known_officer_block_bytes(adb: AdbServer) -> None:
    """One known block: the emulated service, the driver's codec and the wire agree on it."""
    assert len(KNOWN_BLOCK) == 89
    assert e12_pack(KNOWN_OFFICER) == KNOWN_BLOCK
    assert e12_unpack(KNOWN_BLOCK) == KNOWN_OFFICER
    assert zfy.encode(KNOWN_OFFICER, "89", "gbk") == KNOWN_BLOCK
    assert zfy.decode(KNOWN_BLOCK, "89", "gbk") == KNOWN_OFFICER
    state = recorder(adb, "e12")
    assert state.info() == KNOWN_OFFICER
    with driver(adb, "e12").open(docked(1, "A100001"), PASSWORDS) as rec:
        assert rec.officer_info() == KNOWN_OFFICER
        rec.write_officer_info(OfficerInfo("A100001", "300003", "李四"))
        assert state.officer_no == "300003"
        del state.received[:]
        rec.write_officer_info(KNOWN_OFFICER)
    sent = state.received
    assert sent[sent.index(b"E12CMDS005") + 1] == KNOWN_BLOCK
    assert state.info() == KNOWN_OFFICER


def test_wrong_password(adb: AdbServer, fmt: str) -> None:
    recorder(adb, fmt, password="999999")
    with pytest.raises(AuthFailed, match="none of 3 configured passwords"):
        driver(adb, fmt).open(docked(1, "A100001"), PASSWORDS)


def test_password_changed_mid_session(adb: AdbServer, fmt: str) -> None:
    state = recorder(adb, fmt)
    with driver(adb, fmt).open(docked(1, "A100001"), PASSWORDS) as rec:
        state.password = "111111"
        with pytest.raises(AuthFailed):
            rec.battery_percent()


def test_not_on_adb_unauthorised_or_another_recorder(adb: AdbServer, fmt: str) -> None:
    drv = driver(adb, fmt)
    with pytest.raises(DeviceGone, match="adb does not see device A100001"):
        drv.open(docked(1, "A100001"), PASSWORDS)
    adb.add("A100001", SERVICE_PORT, None, state="unauthorized")
    with pytest.raises(ProtocolError, match="unauthorized"):
        drv.open(docked(1, "A100001"), PASSWORDS)
    # the adb serial answers for another officer block's serial: held
    state = RecorderState(serial="A999999", officer_no="200009")
    adb.add("A100001", SERVICE_PORT, SERVICES[fmt](state))
    with pytest.raises(WrongRecorder, match="answers for recorder A999999"):
        drv.open(docked(1, "A100001"), PASSWORDS)
    with pytest.raises(WrongRecorder):
        drv.open(docked(1, None), PASSWORDS)


def test_no_service_on_the_port(adb: AdbServer, fmt: str) -> None:
    state = RecorderState(serial="A100001", officer_no="200001")
    adb.add("A100001", SERVICE_PORT + 1, SERVICES[fmt](state))
    with pytest.raises(ProtocolError, match="closed"):
        driver(adb, fmt).open(docked(1, "A100001"), PASSWORDS)


def test_write_that_did_not_happen(adb: AdbServer, fmt: str) -> None:
    recorder(adb, fmt, write_ignored=True)
    with driver(adb, fmt).open(docked(1, "A100001"), PASSWORDS) as rec:
        with pytest.raises(ProtocolError, match=r"not written|failed"):
            rec.write_officer_info(OfficerInfo("A100001", "300003", "李四"))
        assert rec.officer_info().officer_no == "200001"


def test_unplugged_mid_session(adb: AdbServer, fmt: str) -> None:
    recorder(adb, fmt)
    with driver(adb, fmt).open(docked(1, "A100001"), PASSWORDS) as rec:
        adb.remove("A100001")
        assert not rec.alive()


def test_no_adb_server(fmt: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    drv = AndroidAdbDriver(
        AndroidAdbConfig(
            usb_ids=["2207:0006"],
            format=fmt,
            device_port=1,
            adb_port=free,
            start_server=False,  # type: ignore[arg-type]
        )
    )
    with pytest.raises(ProtocolError, match="no adb server"):
        drv.open(docked(1, "A100001"), PASSWORDS)


def test_config() -> None:
    with pytest.raises(ValidationError):
        AndroidAdbConfig(usb_ids=["x"], format="e12", device_port=1)
    with pytest.raises(ValidationError):
        AndroidAdbConfig(usb_ids=["2207:0006"], format="xml", device_port=1)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        AndroidAdbConfig(usb_ids=["2207:0006"], format="e12", device_port=1, bogus=1)


# --- eight recorders through the real collector ----------------------------------------------


@pytest.fixture
def dock_factory(tmp_path: Path) -> Iterator[Callable[[DriverRegistry], Dock]]:
    docks: list[Dock] = []

    def make(registry: DriverRegistry) -> Dock:
        d = Dock(tmp_path, registry, PASSWORDS)
        docks.append(d)
        return d

    yield make
    for d in docks:
        d.close()


def test_eight_android_recorders_docked_at_once(
    adb: AdbServer, fmt: str, tmp_path: Path, dock_factory: Callable[..., Dock]
) -> None:
    dock = dock_factory(DriverRegistry([driver(adb, fmt)]))
    states, footage = {}, {}
    for port in range(1, 9):
        states[port] = recorder(adb, fmt, port)
        footage[port] = card_files(tmp_path / f"card{port}", f"20000{port}", f"A10000{port}")
    for port in (3, 8, 1, 6, 2, 7, 5, 4):
        dock.dock(port, f"A10000{port}", tmp_path / f"card{port}", usb_id=(0x2207, 0x0006))
    dock.wait("8 collections", lambda: len(dock.results) == 8)
    assert dock.results == {p: "complete" for p in range(1, 9)}, {
        p: s.error for p, s in dock.slots.items()
    }
    for port in range(1, 9):
        assert dock.stored(f"20000{port}", f"A10000{port}") == footage[port]
        assert states[port].msdc
        assert states[port].clock is not None


def test_real_debian_adb_server(tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver starts Debian's adb server and speaks the host protocol to it.

    No recorder is attached to this machine, so the real server sees none: the
    docked device is reported gone (not a protocol error), and the server is
    stopped again at the end.
    """
    assert shutil.which("adb"), "Debian's adb is missing: ./dev installs it"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    drv = AndroidAdbDriver(
        AndroidAdbConfig(
            usb_ids=["2207:0006"],
            format=fmt,  # type: ignore[arg-type]
            device_port=SERVICE_PORT,
            adb_port=port,
            start_server=True,
            timeout_s=20,
        )
    )
    monkeypatch.setenv("HOME", str(tmp_path))  # adb keeps its keys below $HOME
    try:
        with pytest.raises(DeviceGone, match="adb does not see device A100001"):
            drv.open(docked(1, "A100001"), PASSWORDS)
        assert drv.adb.devices() == {}
    finally:
        subprocess.run(["adb", "-P", str(port), "kill-server"], capture_output=True, check=False)


# --- trouble while the recorder is still docked; deadlines; hostile answers -----------------

PRESENT = "/sys/bus"  # a folder that exists, standing in for the docked device's sysfs node


class Raw:
    """A service that does whatever `fn` does with the connection."""

    def __init__(self, fn: Callable[[socket.socket], None]) -> None:
        self.fn = fn

    def serve(self, sock: socket.socket) -> None:
        self.fn(sock)


def at(port: int, serial: str, path: str) -> DockedDevice:
    return DockedDevice(port=port, key=f"usb:{port}", kind="usb", path=path,
                        vendor_id=0x2207, product_id=0x0006, serial=serial)  # fmt: skip


def test_adb_trouble_while_docked_is_not_unplugged(adb: AdbServer, fmt: str) -> None:
    """With the USB device still in sysfs, adb not (yet) listing it or its service closing
    is busy (the collector retries with backoff) or an error, never "unplugged"."""
    assert Path(PRESENT).is_dir(), "no /sys"
    drv = driver(adb, fmt)
    with pytest.raises(DeviceBusy, match="adb does not see device A100001"):
        drv.open(at(1, "A100001", PRESENT), PASSWORDS)
    with pytest.raises(DeviceGone):
        drv.open(at(1, "A100001", "/sys/no-such-device"), PASSWORDS)
    adb.add("A100001", SERVICE_PORT, Raw(lambda s: s.close()))
    with pytest.raises(DeviceBusy):
        drv.open(at(1, "A100001", PRESENT), PASSWORDS)
    adb.add("A100001", SERVICE_PORT, SERVICES[fmt](RecorderState("A100001", "200001")))
    with drv.open(at(1, "A100001", PRESENT), PASSWORDS) as rec:
        adb.close()  # the service resets its connection
        with pytest.raises(ProtocolError, match="still docked"):
            rec.battery_percent()


def test_a_dripping_answer_ends_at_the_call_deadline(adb: AdbServer, fmt: str) -> None:
    """timeout_s bounds a whole exchange, not each receive: a byte every 0.3 s ends it."""
    stop = threading.Event()

    def drip(sock: socket.socket) -> None:
        sock.recv(4096)
        with contextlib.suppress(OSError):
            if fmt == "e12":
                sock.sendall(struct.pack("<I", 1000))
            for _ in range(100):
                if stop.wait(0.3):
                    return
                sock.sendall(b" ")

    adb.add("A100001", SERVICE_PORT, Raw(drip))
    start = time.monotonic()
    try:
        with pytest.raises(ProtocolError, match="did not answer"):
            driver(adb, fmt, timeout_s=1).open(docked(1, "A100001"), PASSWORDS)
        assert time.monotonic() - start < 15  # the drip alone would last 30 s
    finally:
        stop.set()


def test_e12_password_is_compared_as_stored(adb: AdbServer) -> None:
    """No whitespace is stripped from the stored password before comparing."""
    recorder(adb, "e12", password=" 654321\t")
    with pytest.raises(AuthFailed):
        driver(adb, "e12").open(docked(1, "A100001"), PASSWORDS)
    recorder(adb, "e12", 2, password="654321\0junk")  # a C string: up to its NUL
    with driver(adb, "e12").open(docked(1, "A100002"), PASSWORDS) as rec:
        assert rec.password == "654321"


def test_json_nested_too_deep_is_a_protocol_error(adb: AdbServer) -> None:
    def deep(sock: socket.socket) -> None:
        sock.recv(4096)
        with contextlib.suppress(OSError):
            sock.sendall(b"[" * 60000 + b"\n")
            sock.recv(4096)

    adb.add("A100001", SERVICE_PORT, Raw(deep))
    with pytest.raises(ProtocolError, match="not JSON"):
        driver(adb, "json").open(docked(1, "A100001"), PASSWORDS)


class TwiceRecorder(JsonRecorder):
    """Answers one request twice when `twice` is set (a service out of step)."""

    twice = False

    def serve(self, sock: socket.socket) -> None:
        pending = b""
        while True:
            while b"\n" not in pending:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                pending += chunk
            line, _, pending = pending.partition(b"\n")
            answer = json.dumps(self.answer(json.loads(line))).encode() + b"\n"
            sock.sendall(answer * (2 if self.twice else 1))
            self.twice = False


def test_json_answer_belongs_to_its_request(adb: AdbServer) -> None:
    state = RecorderState("A100001", "200001")
    service = TwiceRecorder(state)
    adb.add("A100001", SERVICE_PORT, service)
    with driver(adb, "json").open(docked(1, "A100001"), PASSWORDS) as rec:
        service.twice = True
        rec.officer_info()
        state.officer_no = "300003"
        with pytest.raises(ProtocolError, match="nobody asked for"):
            rec.officer_info()  # not the stale answer, with officer 200001
