"""The vendor-library driver through the real C ABI, against the reference library.

station/drivers/native/gat947_ref.c is compiled once per test session in six builds:
the common 94-byte officer block, the packed 89-byte one, a single-device
library without GetDeviceCount and the _ByIndex calls, both kinds without the
release calls (UnInit_Device, UnInit_Device_ByIndex), and one whose
Init_Device and GetZFYInfo hang while the recorder's folder says so. Each test gives the
library its own recorder folders through GAT947_REF_ROOT.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dock_harness import Dock, card_files
from pydantic import ValidationError

from station.drivers import vendor_library as vl
from station.drivers.base import (
    AuthFailed,
    DeviceGone,
    DockedDevice,
    DriverRegistry,
    OfficerInfo,
    ProtocolError,
    WrongRecorder,
)
from station.drivers.vendor_library import (
    LibraryBusy,
    LibraryHung,
    VendorLibraryConfig,
    VendorLibraryDriver,
    VendorLibraryError,
    check_status,
    decode_officer_block,
    encode_officer_block,
)
from station.ingest import collector as collector_module

NATIVE = Path(__file__).resolve().parents[1] / "station" / "drivers" / "native"
PASSWORD = "654321"
STATION_PASSWORDS = ["000000", "123456", PASSWORD]
VID, PID = 0x1234, 0xABCD

RECORDER: dict[str, Any] = {
    "id_code": "ZFY01",
    "serial": "B100001",
    "officer_no": "100001",
    "officer_name": "张三",
    "unit_no": "110101",
    "unit_name": "城关派出所",
    "password": PASSWORD,
    "battery": 67,
    "clock_offset_s": -42,
    "msdc": 0,
}
NAME_32 = "张三李四王五赵六孙七周八吴九郑十"  # 16 characters, 32 bytes in GBK


# --- building the reference library ---------------------------------------------------------


CFLAGS = ["-shared", "-fPIC", "-O2", "-Wall", "-Werror"]


def _compile(cc: str, source: Path, targets: dict[Path, list[str]]) -> None:
    """Build each target from `source` with its extra flags, in parallel."""
    jobs = [
        ([cc, *CFLAGS, *flags, "-o", str(target), str(source)], target)
        for target, flags in targets.items()
    ]
    running = [(cmd, subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)) for cmd, _ in jobs]
    for cmd, proc in running:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{err}"


@pytest.fixture(scope="session")
def compiler() -> str:
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc is not None, "no C compiler: ./dev installs gcc"
    return cc


@pytest.fixture(scope="session")
def libs(compiler: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reference library built as "94", "89" (packed), "single" (no _ByIndex), and
    "nouninit", "single_nouninit" (no release call), and "hang" (calls that block)."""
    out = tmp_path_factory.mktemp("gat947ref")
    out.chmod(0o755)
    builds = {
        "94": (out / "libgat947ref94.so", []),
        "89": (out / "libgat947ref89.so", ["-DZFY_PACKED"]),
        "single": (out / "libgat947single.so", ["-DGAT947_REF_NO_INDEX"]),
        "nouninit": (out / "libgat947nouninit.so", ["-DGAT947_REF_NO_UNINIT"]),
        "single_nouninit": (
            out / "libgat947single_nouninit.so",
            ["-DGAT947_REF_NO_INDEX", "-DGAT947_REF_NO_UNINIT"],
        ),
        "hang": (out / "libgat947hang.so", ["-DGAT947_REF_HANG"]),
    }
    _compile(compiler, NATIVE / "gat947_ref.c", dict(builds.values()))
    return {name: target for name, (target, _) in builds.items()}


@pytest.fixture(autouse=True)
def _no_leaked_sessions() -> Iterator[None]:
    yield
    leaked = [s for lib in vl._LIBRARIES.values() for s in lib.sessions]
    for s in leaked:
        s.close()
    assert not leaked, f"sessions left open: {leaked}"


# --- recorders as folders ---------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    r = tmp_path / "recorders"
    r.mkdir()
    monkeypatch.setenv("GAT947_REF_ROOT", str(r))
    return r


def put_recorder(root: Path, index: int = 0, **fields: Any) -> Path:
    """Write recorder `index`'s device.txt; text is stored as GBK bytes, bytes as given."""
    values = {**RECORDER, **fields}
    lines = []
    for k, v in values.items():
        if v is None:
            continue
        data = v if isinstance(v, bytes) else str(v).encode("gbk")
        lines.append(k.encode() + b"=" + data + b"\n")
    folder = root / str(index)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "device.txt").write_bytes(b"".join(lines))
    return folder


def get_recorder(root: Path, index: int = 0) -> dict[str, bytes]:
    """Recorder `index`'s device.txt as raw bytes per key."""
    out = {}
    for line in (root / str(index) / "device.txt").read_bytes().splitlines():
        k, _, v = line.partition(b"=")
        out[k.decode()] = v
    return out


def docked(port: int = 1, serial: str | None = "B100001", **kw: Any) -> DockedDevice:
    return DockedDevice(
        port=port,
        key=f"usb:{port}:{serial}",
        kind=kw.pop("kind", "usb"),
        path=kw.pop("path", f"/nonexistent/port-{port}"),
        vendor_id=kw.pop("vendor_id", VID),
        product_id=kw.pop("product_id", PID),
        serial=serial,
        **kw,
    )


def driver(library: Path, **kw: Any) -> VendorLibraryDriver:
    config = VendorLibraryConfig(name="ref", usb_ids=["1234:ABCD"], library=library, **kw)
    return VendorLibraryDriver(config)


@pytest.fixture(params=["94", "89"])
def layout(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def drv(libs: dict[str, Path], layout: str) -> VendorLibraryDriver:
    return driver(libs[layout], layout=layout)


# --- identify, officer block, battery, clock, mass storage -----------------------------------


def test_identify(root: Path, drv: VendorLibraryDriver) -> None:
    put_recorder(root)
    assert drv.multi_device
    with drv.open(docked(serial="B100001"), STATION_PASSWORDS) as rec:
        assert rec.password == PASSWORD
        assert rec.index == 0
        assert rec.id_code() == "ZFY01"
        assert rec.officer_info() == OfficerInfo(
            "B100001", "100001", "张三", "110101", "城关派出所"
        )
        assert rec.battery_percent() == 67
        assert rec.resolution() == (1920, 1080)
        assert rec.card() is None
        assert rec.alive()
    assert not rec.alive()


def test_officer_block_round_trip_gbk(root: Path, drv: VendorLibraryDriver) -> None:
    put_recorder(root)
    new = OfficerInfo("B100002", "200002", "李四", "110102", "城关派出所")
    with drv.open(docked(), STATION_PASSWORDS) as rec:
        rec.write_officer_info(new)
        assert rec.officer_info() == new
        assert rec.serial == "B100002"
        assert rec.battery_percent() == 67  # the session follows the new serial
    stored = get_recorder(root)
    assert stored["officer_name"] == "李四".encode("gbk")
    assert stored["unit_name"] == "城关派出所".encode("gbk")
    assert stored["serial"] == b"B100002"
    with drv.open(docked(serial="B100002"), STATION_PASSWORDS) as rec:
        assert rec.officer_info() == new


def test_name_of_32_gbk_bytes_fits_and_33_is_refused(root: Path, drv: VendorLibraryDriver) -> None:
    put_recorder(root)
    assert len(NAME_32.encode("gbk")) == 32
    full = OfficerInfo("B100001", "100001", NAME_32, "123456789012", NAME_32)
    with drv.open(docked(), STATION_PASSWORDS) as rec:
        rec.write_officer_info(full)
        assert rec.officer_info() == full
        before = (root / "0" / "device.txt").read_bytes()
        for too_long in (NAME_32 + "A", "A" + NAME_32, NAME_32[:15] + "AAA"):
            assert len(too_long.encode("gbk")) > 32
            with pytest.raises(ValueError, match=r"officer_name .* bytes in gbk.* at most 32"):
                rec.write_officer_info(OfficerInfo("B100001", "100001", too_long))
        with pytest.raises(ValueError, match="serial"):
            rec.write_officer_info(OfficerInfo("B1000012", "100001"))
        with pytest.raises(ValueError, match="officer_no must not be empty"):
            rec.write_officer_info(OfficerInfo("B100001", " "))
        with pytest.raises(ValueError, match="cannot be written in gbk"):
            rec.write_officer_info(OfficerInfo("B100001", "100001", "😀"))
        with pytest.raises(ValueError, match="control characters"):
            rec.write_officer_info(OfficerInfo("B100001", "100001", "a\nb"))
        assert (root / "0" / "device.txt").read_bytes() == before
        assert rec.officer_info() == full


def test_undecodable_name_is_replaced_identifiers_are_refused(
    root: Path, drv: VendorLibraryDriver, caplog: pytest.LogCaptureFixture
) -> None:
    cut = NAME_32.encode("gbk")[:31]  # a vendor tool cut the last character in two
    put_recorder(root, officer_name=cut)
    with caplog.at_level(logging.WARNING), drv.open(docked(), STATION_PASSWORDS) as rec:
        info = rec.officer_info()
        assert info.officer_name == NAME_32[:15] + "\ufffd"
        assert "userName is not valid gbk" in caplog.text
        put_recorder(root, serial=b"B\xff1")
        with pytest.raises(ProtocolError, match=r"cSerial is not valid gbk: 42 ff 31"):
            rec.officer_info()


def test_empty_serial_or_officer_number_is_a_protocol_error(
    root: Path, drv: VendorLibraryDriver
) -> None:
    put_recorder(root, officer_no="")
    with pytest.raises(ProtocolError, match="userNo is empty"):
        drv.open(docked(), STATION_PASSWORDS)
    put_recorder(root, serial="", officer_no="100001")
    with pytest.raises(ProtocolError, match="cSerial is empty"):
        drv.open(docked(), STATION_PASSWORDS)
    put_recorder(root, id_code="")
    with pytest.raises(ProtocolError, match="empty ID code"):
        drv.open(docked(), STATION_PASSWORDS)


def test_passwords(root: Path, drv: VendorLibraryDriver, libs: dict[str, Path]) -> None:
    put_recorder(root)
    with pytest.raises(AuthFailed, match="none of 2 configured passwords"):
        drv.open(docked(), ["000000", "123456"])
    with drv.open(docked(), ["000000", "123456", PASSWORD, "999999"]) as rec:
        assert rec.password == PASSWORD
        put_recorder(root, password="111111")  # changed behind our back
        with pytest.raises(AuthFailed, match="CHECK_PWD_FAILED"):
            rec.battery_percent()
    own = driver(libs[drv.config.layout], layout=drv.config.layout, passwords=["111111"])
    with own.open(docked(), ["000000"]) as rec:  # the driver's list replaces the station's
        assert rec.password == "111111"


def test_battery_out_of_range(root: Path, drv: VendorLibraryDriver) -> None:
    put_recorder(root, battery=150)
    with drv.open(docked(), STATION_PASSWORDS) as rec:
        with pytest.raises(ProtocolError, match="battery level 150 is not 0-100"):
            rec.battery_percent()
        put_recorder(root, battery=0)
        assert rec.battery_percent() == 0


def test_sync_time_zeroes_offset_and_msdc(
    root: Path, drv: VendorLibraryDriver, caplog: pytest.LogCaptureFixture
) -> None:
    put_recorder(root)
    with drv.open(docked(), STATION_PASSWORDS) as rec:
        with caplog.at_level(logging.WARNING):
            assert rec.set_clock(dt.datetime.now().astimezone()) is None
        assert "SyncDevTime sets the host's local time" not in caplog.text
        assert get_recorder(root)["clock_offset_s"] == b"0"
        put_recorder(root, clock_offset_s=5)
        host = dt.datetime.now().astimezone()
        elsewhere = dt.timezone(host.utcoffset() + dt.timedelta(hours=1))  # type: ignore[operator]
        with caplog.at_level(logging.WARNING):
            assert rec.set_clock(dt.datetime.now(elsewhere)) is None
        assert "SyncDevTime sets the host's local time" in caplog.text
        assert get_recorder(root)["clock_offset_s"] == b"0"
        assert get_recorder(root)["msdc"] == b"0"
        rec.enter_mass_storage()
        assert get_recorder(root)["msdc"] == b"1"
        rec.enter_mass_storage()  # idempotent
        assert rec.alive()
    assert get_recorder(root)["officer_name"] == "张三".encode("gbk")  # the rest kept


# --- devices that are not there ------------------------------------------------------------


@pytest.mark.parametrize("build", ["94", "single"])
def test_missing_device_is_device_gone(
    root: Path, libs: dict[str, Path], build: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    drv = driver(libs[build])
    with pytest.raises(DeviceGone):
        drv.open(docked(), STATION_PASSWORDS)
    monkeypatch.delenv("GAT947_REF_ROOT")
    with pytest.raises(DeviceGone):
        drv.open(docked(), STATION_PASSWORDS)


@pytest.mark.parametrize("build", ["94", "single"])
def test_unplugged_mid_session(root: Path, libs: dict[str, Path], build: str) -> None:
    folder = put_recorder(root)
    with driver(libs[build]).open(docked(), STATION_PASSWORDS) as rec:
        assert rec.alive()
        shutil.rmtree(folder)
        assert not rec.alive()
        with pytest.raises(DeviceGone):
            rec.battery_percent()
        with pytest.raises(DeviceGone):
            rec.set_clock(dt.datetime.now())


def test_alive_follows_sysfs_after_msdc(root: Path, libs: dict[str, Path]) -> None:
    """After SetMSDC a recorder may stop answering its library: sysfs presence decides."""
    node = Path("/sys/bus")  # a folder that exists, standing in for the device's sysfs node
    assert node.is_dir(), "no /sys"
    folder = put_recorder(root)
    with driver(libs["94"]).open(docked(path=str(node)), STATION_PASSWORDS) as rec:
        rec.enter_mass_storage()
        shutil.rmtree(folder)  # the recorder no longer answers the library ...
        assert rec.alive()  # ... but is still on the bus
    put_recorder(root)
    with driver(libs["94"]).open(docked(path="/sys/no-such-device"), STATION_PASSWORDS) as rec:
        assert not rec.alive()  # the library answers, the docked device is gone


# --- several recorders ------------------------------------------------------------------------


def test_by_index_sessions_go_to_the_right_recorder(root: Path, drv: VendorLibraryDriver) -> None:
    put_recorder(root, 0)
    put_recorder(root, 1, serial="B200002", officer_no="200002", officer_name="李四", battery=20)
    with (
        drv.open(docked(2, serial="B200002"), STATION_PASSWORDS) as b,
        drv.open(docked(1, serial="B100001"), STATION_PASSWORDS) as a,
    ):
        assert (a.index, b.index) == (0, 1)
        assert a.officer_info().officer_name == "张三"
        assert b.officer_info().officer_name == "李四"
        assert (a.battery_percent(), b.battery_percent()) == (67, 20)
        b.enter_mass_storage()
        b.set_clock(dt.datetime.now())
        assert get_recorder(root, 1)["msdc"] == b"1"
        assert get_recorder(root, 0)["msdc"] == b"0"
        assert get_recorder(root, 0)["clock_offset_s"] == b"-42"
        # the library renumbers its recorders: each session follows its own
        os.rename(root / "0", root / "x")
        os.rename(root / "1", root / "0")
        os.rename(root / "x", root / "1")
        assert (a.battery_percent(), b.battery_percent()) == (67, 20)
        assert (a.index, b.index) == (1, 0)
        shutil.rmtree(root / "1")  # a leaves
        with pytest.raises(DeviceGone, match="B100001 no longer answers"):
            a.battery_percent()
        assert b.officer_info().serial == "B200002"


def test_opening_a_second_port_releases_no_index_another_session_holds(
    root: Path, drv: VendorLibraryDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new session probes every index the library counts; the probes it does not keep
    are released, but never the index of a session open on another port (its recorder
    would be closed under it)."""
    put_recorder(root, 0)
    put_recorder(root, 1, serial="B200002", officer_no="200002")
    put_recorder(root, 2, serial="B300003", officer_no="300003")
    api, released = drv.load(), []
    real = api.call

    def call(label: str, function: str, index: int | None = None, **values: Any) -> int:
        if function == "UnInit_Device":
            released.append(index)
        return real(label, function, index, **values)

    monkeypatch.setattr(api, "call", call)
    with drv.open(docked(2, serial="B200002"), STATION_PASSWORDS) as b:
        assert b.index == 1 and sorted(released) == [0, 2]  # the probes it did not keep
        released.clear()
        with drv.open(docked(1, serial="B100001"), STATION_PASSWORDS) as a:
            assert a.index == 0
            assert released == [2], "only the probe nobody holds is released"
            assert b.battery_percent() == 67 and b.officer_info().serial == "B200002"
        assert released == [2, 0]  # a's own release when it ends
    assert released == [2, 0, 1]


def test_by_index_matches_usb_serial_to_id_code(root: Path, drv: VendorLibraryDriver) -> None:
    put_recorder(root, 0)
    put_recorder(root, 1, id_code="ZFY02", serial="B200002")
    with drv.open(docked(1, serial="ZFY02"), STATION_PASSWORDS) as rec:
        assert rec.index == 1


def test_by_index_without_usb_serial_takes_the_one_left(
    root: Path, libs: dict[str, Path], layout: str
) -> None:
    """With require_serial_match off (a maker whose USB serial is something else)."""
    drv = driver(libs[layout], layout=layout, require_serial_match=False)
    put_recorder(root, 0)
    put_recorder(root, 1, serial="B200002")
    with pytest.raises(
        ProtocolError, match=r"port 1\): cannot tell which of 2 recorders is docked here"
    ):
        drv.open(docked(1, serial=None), STATION_PASSWORDS)
    with (
        drv.open(docked(1, serial="B200002"), STATION_PASSWORDS) as first,
        drv.open(docked(2, serial="not-the-serial"), STATION_PASSWORDS) as second,
    ):
        assert (first.index, second.index) == (1, 0)
        with pytest.raises(ProtocolError, match="all open on other ports"):
            drv.open(docked(3, serial=None), STATION_PASSWORDS)


def test_by_index_wrong_password_for_the_docked_one(
    root: Path, libs: dict[str, Path], layout: str
) -> None:
    drv = driver(libs[layout], layout=layout, require_serial_match=False)
    put_recorder(root, 0)
    put_recorder(root, 1, id_code="ZFY02", serial="B200002", password="777777")
    with pytest.raises(AuthFailed):
        drv.open(docked(2, serial="ZFY02"), STATION_PASSWORDS)
    with drv.open(docked(1, serial="B100001"), STATION_PASSWORDS) as rec:
        # the only other recorder refuses every password: that is the docked one
        with pytest.raises(AuthFailed):
            drv.open(docked(2, serial=None), STATION_PASSWORDS)
        assert rec.index == 0


def test_require_serial_match(root: Path, libs: dict[str, Path]) -> None:
    put_recorder(root)
    for build in ("94", "single"):
        strict = driver(libs[build], require_serial_match=True)
        with pytest.raises(ProtocolError, match="B999999"):
            strict.open(docked(serial="B999999"), STATION_PASSWORDS)
        with strict.open(docked(serial="B100001"), STATION_PASSWORDS) as rec:
            assert rec.serial == "B100001"


def test_concurrent_calls_are_serialized(root: Path, drv: VendorLibraryDriver) -> None:
    put_recorder(root, 0)
    put_recorder(root, 1, serial="B200002", battery=20)
    errors: list[BaseException] = []
    with (
        drv.open(docked(1, serial="B100001"), STATION_PASSWORDS) as a,
        drv.open(docked(2, serial="B200002"), STATION_PASSWORDS) as b,
    ):

        def work(rec: vl.VendorLibrarySession, battery: int) -> None:
            try:
                for i in range(40):
                    assert rec.battery_percent() == battery
                    if i % 10 == 0:  # a write (the reference library fsyncs)
                        rec.set_clock(dt.datetime.now())
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(r, n)) for r, n in [(a, 67), (b, 20)] * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors


# --- a single-device library --------------------------------------------------------------------


def test_single_device_library_one_recorder_at_a_time(root: Path, libs: dict[str, Path]) -> None:
    put_recorder(root)
    drv = driver(libs["single"])
    assert not drv.multi_device
    with drv.open(docked(1), STATION_PASSWORDS) as rec:
        assert rec.index is None
        assert rec.officer_info().officer_name == "张三"
        with pytest.raises(LibraryBusy, match=r"one recorder at a time.*port 1; port 2 must wait"):
            drv.open(docked(2), STATION_PASSWORDS)
        # a second driver entry naming the same file shares the library and its limit
        with pytest.raises(ProtocolError, match="one recorder at a time"):
            driver(libs["single"]).open(docked(3), STATION_PASSWORDS)
    with drv.open(docked(2), STATION_PASSWORDS) as rec:
        assert rec.battery_percent() == 67


def test_single_device_library_recorder_swapped(root: Path, libs: dict[str, Path]) -> None:
    put_recorder(root)
    with driver(libs["single"]).open(docked(), STATION_PASSWORDS) as rec:
        put_recorder(root, serial="B300003")
        assert not rec.alive()
        with pytest.raises(DeviceGone, match="answers for recorder B300003, not B100001"):
            rec.enter_mass_storage()
    assert get_recorder(root)["msdc"] == b"0"


# --- status codes, layouts, a malformed recorder ---------------------------------------------


@pytest.mark.parametrize(
    ("ret", "status", "error", "message"),
    [
        (1, 1, None, ""),
        (1, 3, None, ""),
        (1, 5, None, ""),
        (1, 7, None, ""),
        (1, 0, None, ""),
        (0, 2, DeviceGone, "CONNECT_FAILED, status 2"),
        (1, 2, DeviceGone, "CONNECT_FAILED"),
        (0, 4, AuthFailed, "CHECK_PWD_FAILED, status 4"),
        (0, 6, ProtocolError, "SET_SYSTEMTIME_FAILED, status 6"),
        (0, 8, ProtocolError, "MSDC_FAILED, status 8"),
        (0, 1, ProtocolError, "although its status is CONNECT_SUCCESS"),
        (0, 0, ProtocolError, "without writing a status code"),
        (0, 42, ProtocolError, "Fn failed .* unknown status code 42"),
        (1, 42, ProtocolError, "Fn returned 1 with unknown status code 42"),
    ],
)
def test_status_codes(ret: int, status: int, error: type[Exception] | None, message: str) -> None:
    if error is None:
        check_status("Fn", ret, status)
    else:
        with pytest.raises(error, match=message):
            check_status("Fn", ret, status)


def test_vendor_status_code_from_the_library(root: Path, drv: VendorLibraryDriver) -> None:
    folder = put_recorder(root)
    with drv.open(docked(), STATION_PASSWORDS) as rec:
        (folder / "device.txt").write_bytes(b"password=654321\nnot a key value line\n")
        with pytest.raises(ProtocolError, match=r"GetZFYInfo_ByIndex .*unknown status code 100"):
            rec.officer_info()


def test_layout_mismatch_is_a_protocol_error(root: Path, libs: dict[str, Path]) -> None:
    put_recorder(root)
    with pytest.raises(ProtocolError, match="not NUL-terminated"):
        driver(libs["89"], layout="94").open(docked(), STATION_PASSWORDS)
    with pytest.raises(ProtocolError, match=r"userNo is empty .*94-byte"):
        driver(libs["94"], layout="89").open(docked(), STATION_PASSWORDS)


def test_block_codec_both_layouts() -> None:
    info = OfficerInfo("B100001", "100001", "张三", "", "城关派出所")
    for layout, size in (("94", 94), ("89", 89)):
        raw = encode_officer_block(info, layout, "gbk")  # type: ignore[arg-type]
        assert len(raw) == size
        assert decode_officer_block(raw, layout, "gbk") == info  # type: ignore[arg-type]
    packed = encode_officer_block(OfficerInfo("B100001", "100001", NAME_32), "89", "gbk")
    assert packed[:13] == b"B100001100001"  # no terminators between full fields
    with pytest.raises(ProtocolError, match="89 bytes, layout 94 has 94"):
        decode_officer_block(packed, "94", "gbk")


def test_reference_library_rejects_bad_arguments(root: Path, libs: dict[str, Path]) -> None:
    """The C side is memory-safe: NULL pointers and unterminated fields are refused."""
    put_recorder(root)
    lib = ctypes.CDLL(str(libs["94"]))
    status = ctypes.c_int(0)
    pwd = ctypes.create_string_buffer(PASSWORD.encode())
    block = ctypes.create_string_buffer(b"A" * 94, 94)  # no terminators at all
    assert lib.WriteZFYInfo(block, pwd, ctypes.byref(status)) == 0
    assert status.value == 101
    assert lib.GetZFYInfo(None, pwd, ctypes.byref(status)) == 0
    assert status.value == 101
    assert lib.GetZFYInfo(block, None, ctypes.byref(status)) == 0
    assert status.value == 4
    assert lib.GetIDCode(None, None) == 0  # no iRet: nothing written, nothing crashes
    assert lib.GetZFYInfo_ByIndex(block, pwd, ctypes.byref(status), -1) == 0
    assert status.value == 2
    assert lib.GetDeviceCount(ctypes.byref(status)) == 1
    assert get_recorder(root)["serial"] == b"B100001"


# --- matching, configuration, loading ------------------------------------------------------------


def test_match_on_usb_ids(libs: dict[str, Path]) -> None:
    drv = driver(libs["94"])
    assert drv.match(docked()) > 0
    assert drv.match(docked(product_id=0xABCE)) == 0
    assert drv.match(docked(vendor_id=None, product_id=None)) == 0
    assert drv.match(docked(kind="simulated")) == 0
    assert drv._lib is None  # matching does not load the library


def test_config_validation(tmp_path: Path) -> None:
    lib = tmp_path / "lib.so"
    c = VendorLibraryConfig(
        name=" acme ", usb_ids=["1234:ABCD", "1234:abcd", "0fe6:9900"], library=lib, layout=89
    )
    assert c.name == "acme"
    assert c.usb_ids == ["1234:abcd", "0fe6:9900"]
    assert c.layout == "89"
    assert c.usb_id_pairs() == {(0x1234, 0xABCD), (0x0FE6, 0x9900)}
    bad: list[dict[str, Any]] = [
        {"usb_ids": ["1234abcd"]},
        {"usb_ids": ["12345:abcd"]},
        {"usb_ids": []},
        {"library": "relative/lib.so"},
        {"layout": "90"},
        {"encoding": "no-such-codec"},
        {"passwords": []},
        {"name": " "},
        {"unknown": 1},
    ]
    for override in bad:
        with pytest.raises(ValidationError):
            VendorLibraryConfig(
                **{"name": "a", "usb_ids": ["1234:abcd"], "library": lib, **override}
            )


def test_library_that_cannot_be_loaded(tmp_path: Path, compiler: str) -> None:
    missing = tmp_path / "nope" / "libzfy.so"
    with pytest.raises(VendorLibraryError, match=f"{missing}: no such library file"):
        driver(missing).open(docked(), STATION_PASSWORDS)
    not_elf = tmp_path / "libtext.so"
    not_elf.write_text("not a library")
    with pytest.raises(VendorLibraryError, match=f"cannot load {not_elf}"):
        driver(not_elf).load()
    src = tmp_path / "partial.c"
    src.write_text("int Init_Device(char *c, int *r) { (void)c; *r = 1; return 1; }\n")
    partial = tmp_path / "libpartial.so"
    _compile(compiler, src, {partial: []})
    with pytest.raises(VendorLibraryError, match=r"does not export GetIDCode, GetZFYInfo"):
        driver(partial).load()
    writable = tmp_path / "shared"
    writable.mkdir()
    lib = writable / "libpartial2.so"
    _compile(compiler, src, {lib: []})
    lib.chmod(0o777)
    with pytest.raises(VendorLibraryError, match="writable by group or others"):
        driver(lib).load()


# --- one serial on two recorders (a factory default): never reach the other one -----------


def test_renumbered_recorder_is_followed_by_its_id_code(
    root: Path, drv: VendorLibraryDriver
) -> None:
    """Port 1's recorder is known by its ID code (its USB serial); the recorder docked
    later on port 2 has the same officer-block serial. After the library renumbers
    them, port 1's session must read and switch its own recorder, not port 2's."""
    put_recorder(root, 0, id_code="AAAA1", serial="D000001", officer_no="100001")
    with drv.open(docked(1, serial="AAAA1"), STATION_PASSWORDS) as rec:
        put_recorder(root, 1, id_code="BBBB1", serial="D000001", officer_no="200002")
        with pytest.raises(ProtocolError, match="D000001"):
            drv.open(docked(2, serial="BBBB1"), STATION_PASSWORDS)
        os.rename(root / "0", root / "x")
        os.rename(root / "1", root / "0")
        os.rename(root / "x", root / "1")
        assert rec.officer_info().officer_no == "100001"
        assert rec.id_code() == "AAAA1"
        assert rec.index == 1
        rec.enter_mass_storage()
        assert get_recorder(root, 1)["msdc"] == b"1"  # AAAA1, port 1's
        assert get_recorder(root, 0)["msdc"] == b"0"  # BBBB1, port 2's: untouched


def test_open_refuses_a_serial_two_recorders_have(root: Path, drv: VendorLibraryDriver) -> None:
    put_recorder(root, 0, id_code="AAAA1", serial="D000001", officer_no="100001")
    put_recorder(root, 1, id_code="BBBB1", serial="D000001", officer_no="200002")
    for usb_serial in ("AAAA1", "BBBB1"):
        with pytest.raises(WrongRecorder, match="D000001"):
            drv.open(docked(1, serial=usb_serial), STATION_PASSWORDS)
    assert [get_recorder(root, i)["msdc"] for i in (0, 1)] == [b"0", b"0"]


def test_following_never_takes_one_of_two_candidates(root: Path, drv: VendorLibraryDriver) -> None:
    """Its index now answers for another recorder, and two others answer as it: hold."""
    put_recorder(root, 0)
    with drv.open(docked(1, serial="B100001"), STATION_PASSWORDS) as rec:
        put_recorder(root, 0, serial="B300003", officer_no="300003")
        put_recorder(root, 1, officer_no="200002")
        put_recorder(root, 2, officer_no="200003")
        with pytest.raises(ProtocolError, match="2 recorders"):
            rec.enter_mass_storage()
        assert [get_recorder(root, i)["msdc"] for i in (0, 1, 2)] == [b"0", b"0", b"0"]
        assert rec.index == 0


def test_control_characters_allowed_only_in_display_fields() -> None:
    good = OfficerInfo("B100001", "100001", "张三", "110101", "城关派出所")
    for layout in ("94", "89"):
        raw = bytearray(encode_officer_block(good, layout, "gbk"))
        bad_serial = bytes(raw[:3]) + b"\x07" + bytes(raw[4:])
        with pytest.raises(ProtocolError, match="control"):
            decode_officer_block(bad_serial, layout, "gbk")
        size = vl.zfy.slot_sizes(layout)[0]
        bad_officer = bytes(raw[: size + 2]) + b"\x1b" + bytes(raw[size + 3 :])
        with pytest.raises(ProtocolError, match="control"):
            decode_officer_block(bad_officer, layout, "gbk")
        name_at = sum(vl.zfy.slot_sizes(layout)[:2])
        bell = bytes(raw[:name_at]) + b"\x07" + bytes(raw[name_at + 1 :])
        assert decode_officer_block(bell, layout, "gbk").serial == "B100001"


def test_get_device_count_stays_int_with_bool_returns(root: Path, libs: dict[str, Path]) -> None:
    """return_type "bool" is for the 1/0 calls; GetDeviceCount returns the count."""
    for i in range(3):
        put_recorder(root, i, serial=f"B10000{i + 1}", officer_no=f"10000{i + 1}")
    with driver(libs["94"], return_type="bool").open(
        docked(serial="B100003"), STATION_PASSWORDS
    ) as rec:
        assert rec.index == 2


# --- a library without a release call -----------------------------------------------------


@pytest.mark.parametrize("build", ["nouninit", "single_nouninit"])
def _spy_calls(drv: VendorLibraryDriver, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of every library call the driver asks for."""
    api, called = drv.load(), []
    real = api.call

    def call(label: str, function: str, index: int | None = None, **values: Any) -> int:
        called.append(function)
        return real(label, function, index, **values)

    monkeypatch.setattr(api, "call", call)
    return called


def test_release_call_is_made_when_the_library_has_one(
    root: Path, libs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    put_recorder(root)
    for build in ("94", "single"):
        drv = driver(libs[build])
        called = _spy_calls(drv, monkeypatch)
        with drv.open(docked(), STATION_PASSWORDS) as rec:
            rec.battery_percent()
        assert called[-1] == "UnInit_Device", called


@pytest.mark.parametrize("build", ["nouninit", "single_nouninit"])
def test_library_without_release_call_still_collects(
    root: Path,
    libs: dict[str, Path],
    tmp_path: Path,
    build: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No UnInit_Device (nor _ByIndex): the driver loads the library, never asks for a
    release, and the real Collector collects; the library is free for the next docking."""
    so = ctypes.CDLL(str(libs[build]))
    assert not hasattr(so, "UnInit_Device") and not hasattr(so, "UnInit_Device_ByIndex")
    assert hasattr(so, "GetZFYInfo")
    drv = driver(libs[build])
    assert not {"UnInit_Device", "UnInit_Device_ByIndex"} & set(drv.load().calls)
    called = _spy_calls(drv, monkeypatch)
    n = 1 if build.startswith("single") else 3
    for i in range(n):
        put_recorder(root, i, serial=f"B10000{i}", officer_no=f"10000{i}")
    (tmp_path / "station").mkdir()
    dock = Dock(tmp_path / "station", DriverRegistry([drv]), STATION_PASSWORDS)
    try:
        footage = {}
        for i in range(n):
            card = tmp_path / f"card{i}"
            footage[i] = card_files(card, f"10000{i}", f"B10000{i}")
            dock.dock(i + 1, f"B10000{i}", card, usb_id=(VID, PID))
        dock.wait(f"{n} collections", lambda: len(dock.results) == n)
        assert dock.results == {i + 1: "complete" for i in range(n)}, {
            p: s.error for p, s in dock.slots.items()
        }
        for i in range(n):
            assert dock.stored(f"10000{i}", f"B10000{i}") == footage[i]
            assert get_recorder(root, i)["msdc"] == b"1"
        assert not vl._LIBRARIES[os.path.realpath(libs[build])].sessions
        # the recorder docked again on another port: opened again, nothing held the library
        dock.dock(8, "B100000", tmp_path / "card0", usb_id=(VID, PID))
        dock.wait("the second docking", lambda: 8 in dock.results)
        assert dock.results[8] == "complete", dock.slots[8].error
        assert "GetZFYInfo" in called and "SetMSDC" in called
        assert "UnInit_Device" not in called  # skipped, not tried and failed
    finally:
        dock.close()


# --- a library call that never returns ----------------------------------------------------

WAIT_S = 120.0  # generous: a slow, busy machine must not fail these tests


def _wait(what: str, cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _within(fn: Callable[[], Any]) -> Any:
    """fn() in a thread, failing the test (rather than hanging it) if it never returns."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(WAIT_S)
    assert not t.is_alive(), f"{fn} did not return in {WAIT_S} s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


@pytest.fixture
def hang(root: Path, libs: dict[str, Path]) -> Iterator[Callable[[int, str], Path]]:
    """hang(index, call): that recorder's Init_Device ("init") or GetZFYInfo ("info")
    blocks in the hang build until the test ends (which lets the stuck calls return)."""
    made: list[Path] = []

    def make(index: int, call: str) -> Path:
        flag = root / str(index) / f"hang_{call}"
        flag.write_bytes(b"")
        made.append(flag)
        return flag

    yield make
    for flag in made:
        flag.unlink(missing_ok=True)
    lib = vl.load_library(libs["hang"])
    _wait("the stuck calls to return", lambda: lib.hung is None)


def test_hung_call_is_abandoned_and_the_library_waits(
    root: Path,
    libs: dict[str, Path],
    hang: Callable[[int, str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GetZFYInfo never returns: after call_timeout_s its session gets LibraryHung and is
    given up without a release call; the library is hung (other ports wait, nothing
    blocks on its lock) until the call returns; then it is used again."""
    put_recorder(root, 0, serial="B100000", officer_no="100000")
    put_recorder(root, 1, serial="B100001", officer_no="100001")
    drv = driver(libs["hang"], call_timeout_s=0.5)
    called = _spy_calls(drv, monkeypatch)
    rec = drv.open(docked(1, "B100000"), STATION_PASSWORDS)
    flag = hang(0, "info")
    with pytest.raises(LibraryHung, match=r"GetZFYInfo_ByIndex did not return within 0.5 s"):
        _within(rec.officer_info)
    assert drv.load().lib.hung is not None
    with pytest.raises(LibraryHung, match="is hung"):
        rec.battery_percent()  # not sent: the library is still in the stuck call
    with pytest.raises(LibraryBusy, match=r"is hung: .* port 2 must wait"):
        drv.open(docked(2, "B100001"), STATION_PASSWORDS)
    del called[:]
    rec.close()
    assert called == []  # abandoned: no UnInit_Device into a hung library
    flag.unlink()
    _wait("the stuck call to return", lambda: drv.load().lib.hung is None)
    with drv.open(docked(2, "B100001"), STATION_PASSWORDS) as other:
        assert other.officer_info().serial == "B100001"


@pytest.mark.parametrize("call", ["init", "info"])
def test_hung_library_stalls_no_other_port(
    root: Path,
    libs: dict[str, Path],
    hang: Callable[[int, str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
) -> None:
    """Port 1's Init_Device or GetZFYInfo never returns: port 1 goes to error with the
    reason, ports 2 and 3 (another library) collect meanwhile, and port 4 (the hung
    library) waits, beating, and collects once the stuck call has returned."""
    monkeypatch.setattr(collector_module, "OPEN_RETRY_FIRST_S", 0.05)
    monkeypatch.setattr(collector_module, "OPEN_RETRY_MAX_S", 0.2)
    for i in range(4):
        put_recorder(root, i, serial=f"B10000{i}", officer_no=f"10000{i}")
    flag = hang(0, call)
    hung = VendorLibraryDriver(
        VendorLibraryConfig(
            name="hang", usb_ids=["1234:0001"], library=libs["hang"], call_timeout_s=1
        )
    )
    registry = DriverRegistry([hung, driver(libs["94"])])
    (tmp_path / "station").mkdir()
    dock = Dock(tmp_path / "station", registry, STATION_PASSWORDS)
    try:
        footage = {}
        for i in range(4):
            footage[i] = card_files(tmp_path / f"card{i}", f"10000{i}", f"B10000{i}")
        dock.dock(1, "B100000", tmp_path / "card0", usb_id=(0x1234, 0x0001))
        dock.wait("port 1's call to hang", lambda: hung.load().lib.hung is not None)
        dock.dock(2, "B100001", tmp_path / "card1", usb_id=(VID, PID))
        dock.dock(3, "B100002", tmp_path / "card2", usb_id=(VID, PID))
        dock.dock(4, "B100003", tmp_path / "card3", usb_id=(0x1234, 0x0001))
        dock.wait("ports 1-3", lambda: {1, 2, 3} <= set(dock.results))
        assert dock.results[1] == "error"
        assert "did not return within 1 s" in (dock.slots[1].error or "")
        assert (dock.results[2], dock.results[3]) == ("complete", "complete")
        for i in (1, 2):
            assert dock.stored(f"10000{i}", f"B10000{i}") == footage[i]
        assert dock.stored("100000", "B100000") == {}
        dock.wait(
            "port 4 waiting for the hung library",
            lambda: "is hung" in (dock.slots[4].error or ""),
        )
        assert 4 not in dock.results and dock.slots[4].state == "identifying"
        flag.unlink()
        dock.wait("port 4", lambda: 4 in dock.results)
        assert dock.results[4] == "complete", dock.slots[4].error
        assert dock.stored("100003", "B100003") == footage[3]
        assert get_recorder(root, 0)["msdc"] == b"0"  # port 1's recorder: nothing switched
    finally:
        flag.unlink(missing_ok=True)
        dock.close()
