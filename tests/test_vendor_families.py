"""The vendor-library driver against emulations of real vendor families (real C ABI).

Each emulation in tests/native/ is written from one family's public declarations,
not from the driver: a packed-ZFY_INFO library with C `bool` returns, an
`unsigned short` status and `Uninit_Device(char *, unsigned short *)` (built also
with an input ID code and a wrong password reported as CONNECT_FAILED), and a
Falcon-style library with the canonical EYLOG_DLL.h calls plus
`Init_Device_UsbTotal` and four `_ByIndex` calls (built also without them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from vendor_emu import PACKED, PASSWORD, PASSWORDS, build, get, put

from station.drivers import vendor_library as vl
from station.drivers.base import (
    AuthFailed,
    DeviceGone,
    DockedDevice,
    OfficerInfo,
    ProtocolError,
    WrongRecorder,
)
from station.drivers.vendor_library import LibraryBusy, VendorLibraryConfig, VendorLibraryDriver


@pytest.fixture(scope="session")
def emu(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build(tmp_path_factory)


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    r = tmp_path / "recorders"
    r.mkdir()
    monkeypatch.setenv("RECORDERS_ROOT", str(r))
    return r


@pytest.fixture(autouse=True)
def _no_leaked_sessions() -> Iterator[None]:
    yield
    leaked = [s for lib in vl._LIBRARIES.values() for s in lib.sessions]
    for s in leaked:
        s.close()
    assert not leaked, f"sessions left open: {leaked}"


def docked(port: int, serial: str | None, path: str | None = None) -> DockedDevice:
    return DockedDevice(
        port=port,
        key=f"usb:{port}",
        kind="usb",
        path=path or f"/nonexistent/port-{port}",
        vendor_id=0x1234,
        product_id=0xABCD,
        serial=serial,
    )


def driver(library: Path, **kw: Any) -> VendorLibraryDriver:
    return VendorLibraryDriver(
        VendorLibraryConfig(name="emu", usb_ids=["1234:abcd"], library=library, **kw)
    )


# --- the packed family: bool, unsigned short status, Uninit_Device(char *, ...) ----------------


def test_packed_bool_family_end_to_end(root: Path, emu: dict[str, Path]) -> None:
    put(root)
    drv = driver(emu["packed"], **PACKED)
    assert not drv.multi_device
    proto = drv.load().calls["UnInit_Device"].proto
    assert proto.symbol == "Uninit_Device"
    assert proto.roles == ("id_code", "status")
    assert drv.load().calls["GetZFYInfo"].proto.restype is vl.ctypes.c_bool
    with drv.open(docked(1, "B100000"), PASSWORDS) as rec:
        assert rec.password == PASSWORD
        assert rec.id_code() == "ZFY01"
        assert rec.officer_info() == OfficerInfo(
            "B100000", "100000", "李四", "110101", "城关派出所"
        )
        assert rec.battery_percent() == 60
        assert rec.resolution() == (1920, 1080)
        rec.set_clock(dt.datetime.now().astimezone())
        new = OfficerInfo("B100000", "100009", "王五", "110102", "城关派出所")
        rec.write_officer_info(new)
        assert rec.officer_info() == new
        rec.enter_mass_storage()
    stored = get(root)
    assert (stored["clock_offset_s"], stored["msdc"]) == (b"0", b"1")
    assert stored["officer_name"] == "王五".encode("gbk")


def test_library_without_uninit_device_loads(root: Path, emu: dict[str, Path]) -> None:
    """No UnInit_Device under that name: the release call is optional."""
    put(root)
    drv = driver(emu["packed"], layout="89", return_type="bool", status_type="uint16")
    assert "UnInit_Device" not in drv.load().calls
    with drv.open(docked(1, "B100000"), PASSWORDS) as rec:
        assert rec.battery_percent() == 60


def test_input_id_code(root: Path, emu: dict[str, Path]) -> None:
    put(root)
    with driver(emu["packed_in"], init_id_code="ZFY01", **PACKED).open(
        docked(1, "B100000"), [PASSWORD]
    ) as rec:
        assert rec.id_code() == "ZFY01"
    # an empty buffer (no input code) is refused by this family: CONNECT_FAILED
    with pytest.raises(DeviceGone):
        driver(emu["packed_in"], **PACKED).open(docked(1, "B100000"), PASSWORDS)


def test_wrong_password_as_connect_failed_while_docked(root: Path, emu: dict[str, Path]) -> None:
    """CONNECT_FAILED for a wrong password: the next password is tried, and with none
    accepted the recorder refuses passwords (it is not "unplugged": no re-dock loop)."""
    node = Path("/sys/bus")  # stands in for the docked device's sysfs node
    assert node.is_dir(), "no /sys"
    put(root)
    drv = driver(emu["packed_in"], init_id_code="ZFY01", **PACKED)
    with drv.open(docked(1, "B100000", str(node)), PASSWORDS) as rec:
        assert rec.password == PASSWORD
    with pytest.raises(AuthFailed, match=r"CONNECT_FAILED .* although the recorder is docked"):
        drv.open(docked(1, "B100000", str(node)), ["000000", "123456"])
    # gone from sysfs too: that is an unplugged recorder
    with pytest.raises(DeviceGone):
        drv.open(docked(1, "B100000", "/sys/no-such-device"), ["000000"])


@pytest.mark.parametrize("build", ["packed", "falcon"])
def test_write_true_with_status_0_is_not_success(
    root: Path, emu: dict[str, Path], build: str
) -> None:
    put(root, write_ignored=1)
    drv = driver(emu[build], **(PACKED if build == "packed" else {}))
    before = get(root)
    with drv.open(docked(1, "B100000"), PASSWORDS) as rec:
        with pytest.raises(ProtocolError, match="WriteZFYInfo answered success, but"):
            rec.write_officer_info(OfficerInfo("B100000", "200002", "王五"))
        assert rec.officer_info().officer_no == "100000"
        assert rec.serial == "B100000"
    assert get(root)["officer_no"] == before["officer_no"]


# --- Falcon: Init_Device_UsbTotal and _ByIndex --------------------------------------------------


def test_falcon_eight_recorders_each_session_on_its_own(root: Path, emu: dict[str, Path]) -> None:
    for i in range(8):
        put(root, i)
    drv = driver(emu["falcon"])
    assert drv.load().mode == "usbtotal"
    ports = [5, 2, 8, 1, 7, 3, 6, 4]  # port p holds the recorder at library index i
    sessions = [drv.open(docked(p, f"B10000{i}"), PASSWORDS) for i, p in enumerate(ports)]
    try:
        for i, rec in enumerate(sessions):
            assert rec.index == i
            assert rec.officer_info().serial == f"B10000{i}"
            assert rec.battery_percent() == 60 + i
            assert rec.id_code() == "ZFY01"  # the family's, from Init_Device_UsbTotal
            assert rec.set_clock(dt.datetime.now().astimezone()) is None  # no _ByIndex: left
        for i in (6, 1, 3):
            sessions[i].enter_mass_storage()
        assert [get(root, i)["msdc"] for i in range(8)] == [
            b"1" if i in (1, 3, 6) else b"0" for i in range(8)
        ]
        assert all(get(root, i)["clock_offset_s"] == b"-42" for i in range(8))
    finally:
        for rec in sessions:
            rec.close()


def test_falcon_serial_matches_or_holds(root: Path, emu: dict[str, Path]) -> None:
    for i in range(3):
        put(root, i)
    drv = driver(emu["falcon"])
    with pytest.raises(WrongRecorder, match=r"none of the 3 recorders .* 'B999999'"):
        drv.open(docked(1, "B999999"), PASSWORDS)
    with pytest.raises(WrongRecorder):
        drv.open(docked(1, None), PASSWORDS)


def test_falcon_one_recorder_at_a_time_without_index_calls(
    root: Path, emu: dict[str, Path]
) -> None:
    put(root, 0)
    put(root, 1)
    drv = driver(emu["falcon_single"])
    assert drv.load().mode == "none"
    with drv.open(docked(1, "B100000"), PASSWORDS), pytest.raises(LibraryBusy):
        drv.open(docked(2, "B100001"), PASSWORDS)
    # the library reaches recorder 0 only: port 2's recorder is not it
    with pytest.raises(WrongRecorder, match="library answers for recorder B100000"):
        drv.open(docked(2, "B100001"), PASSWORDS)


def test_multi_device_forced_without_the_calls(emu: dict[str, Path]) -> None:
    with pytest.raises(vl.VendorLibraryError, match="does not export Init_Device_UsbTotal"):
        driver(emu["falcon_single"], multi_device="usbtotal").load()


# --- configuration of names and prototypes -------------------------------------------------------


@pytest.mark.parametrize(
    ("functions", "message"),
    [
        ({"Frobnicate": "x"}, "is not one of the library calls"),
        ({"GetZFYInfo": ""}, "cannot be left out"),
        ({"GetZFYInfo": "int GetZFYInfo(ZFY_INFO *info, char *sPwd)"}, "no \\*iRet"),
        ({"GetZFYInfo": "int GetZFYInfo(ZFY_INFO *info, int *iRet)"}, "lacks password"),
        ({"SetMSDC": "float SetMSDC(char *sPwd, int *iRet)"}, "return type"),
        ({"SetMSDC": "int SetMSDC(char *sPwd, long *iRet)"}, "cannot be 'long \\*'"),
        ({"SetMSDC": "int SetMSDC(char *foo, int *iRet)"}, "says nothing the station knows"),
        ({"SetMSDC_ByIndex": "int X(char *sPwd, int *iRet)"}, "needs an int index"),
        ({"SetMSDC": "not a name!"}, "neither a C name"),
    ],
)
def test_function_configuration_is_checked(
    tmp_path: Path, functions: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        VendorLibraryConfig(
            name="x", usb_ids=["1234:abcd"], library=tmp_path / "l.so", functions=functions
        )


def test_prototype_parsing() -> None:
    p = vl.parse_prototype(
        "UnInit_Device",
        'extern "C" __declspec(dllexport) bool Uninit_Device(char *IDCode, unsigned short *iRet);',
        "int",
        "int",
    )
    assert (p.symbol, p.restype, p.roles) == (
        "Uninit_Device",
        vl.ctypes.c_bool,
        ("id_code", "status"),
    )
    q = vl.parse_prototype("GetZFYInfo_ByIndex", "GetZFYInfo_ByIndex", "bool", "uint16")
    assert q.roles == ("info", "password", "status", "index")
    assert q.params[2][1] is vl._U16_P and q.restype is vl.ctypes.c_bool
