"""The simulated driver in-process: GA/T 947.4 semantics and a careful card reader."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from station.drivers.base import (
    AuthFailed,
    CardReadError,
    DeviceGone,
    DockedDevice,
    OfficerInfo,
    ProtocolError,
)
from station.drivers.simulated import SimulatedCard, SimulatedDriver, SimulatedSession

PASSWORD = "654321"
AVI = b"DCIM/100ANDRO/100001_B100001_20261121083000_0001.AVI"
IMP = b"DCIM/101ANDRO/100001_B100001_20261121084000_0002IMP.AVI"
LOG = b"Log/20261121.LOG"


def _recorder(port_dir: Path, **fields: Any) -> dict[str, Any]:
    meta = {
        "id_code": "ZFY01",
        "serial": "B100001",
        "officer_no": "100001",
        "officer_name": "张三",
        "unit_no": "110101",
        "unit_name": "城关派出所",
        "password": PASSWORD,
        "battery_percent": 67,
        "clock_offset_s": -42.5,
    }
    meta.update(fields)
    port_dir.mkdir(parents=True, exist_ok=True)
    (port_dir / "recorder.json").write_text(json.dumps(meta, ensure_ascii=False), "utf-8")
    return meta


def _put(port_dir: Path, rel: bytes, data: bytes) -> Path:
    p = Path(os.fsdecode(os.path.join(os.fsencode(port_dir / "card"), rel)))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


@pytest.fixture
def port(tmp_path: Path) -> Path:
    p = tmp_path / "bus" / "port-1"
    _recorder(p)
    _put(p, AVI, os.urandom(300_000))
    _put(p, IMP, os.urandom(200_000))
    _put(p, LOG, b"2026-11-21 08:00:00 POWER ON\n")
    return p


def _device(port_dir: Path) -> DockedDevice:
    return DockedDevice(port=1, key="sim-1", kind="simulated", path=str(port_dir))


_cards: dict[int, SimulatedCard] = {}


def card_of(s: SimulatedSession) -> SimulatedCard:
    """The session's card (one per session, so its byte counter carries on)."""
    if id(s) not in _cards:
        _cards[id(s)] = s.card()
    return _cards[id(s)]


def _open(port_dir: Path, passwords: list[str] | None = None) -> SimulatedSession:
    s = SimulatedDriver().open(_device(port_dir), passwords or [PASSWORD])
    s.enter_mass_storage()
    return s


def _read_all(s: SimulatedSession, path: bytes, chunk: int = 65536) -> bytes:
    stream = card_of(s).open_file(path)
    out = bytearray()
    buf = bytearray(chunk)
    try:
        while n := stream.readinto(memoryview(buf)):
            out += buf[:n]
    finally:
        stream.close()
    return bytes(out)


def _json(port_dir: Path) -> dict[str, Any]:
    return json.loads((port_dir / "recorder.json").read_text("utf-8"))


# --- matching and passwords ------------------------------------------------------------------


def test_matches_only_simulated_devices(port: Path) -> None:
    d = SimulatedDriver()
    assert d.match(_device(port)) > 0
    usb = DockedDevice(port=1, key="k", kind="usb", path="/sys/x", vendor_id=1, product_id=2)
    assert d.match(usb) == 0


def test_wrong_password_fails(port: Path) -> None:
    with pytest.raises(AuthFailed):
        SimulatedDriver().open(_device(port), ["000000"])
    with pytest.raises(AuthFailed):
        SimulatedDriver().open(_device(port), [])


def test_the_right_password_among_several_works(port: Path) -> None:
    s = SimulatedDriver().open(_device(port), ["000000", "123456", PASSWORD, "999999"])
    assert s.password == PASSWORD
    assert s.id_code() == "ZFY01"


def test_the_password_is_checked_on_every_call(port: Path) -> None:
    s = _open(port)
    assert s.officer_info().serial == "B100001"
    meta = _json(port)
    meta["password"] = "111111"
    (port / "recorder.json").write_text(json.dumps(meta), "utf-8")
    for call in (s.id_code, s.officer_info, s.battery_percent, s.enter_mass_storage):
        with pytest.raises(AuthFailed):
            call()
    with pytest.raises(AuthFailed):
        s.set_clock(dt.datetime.now())
    with pytest.raises(AuthFailed):
        card_of(s).open_file(AVI)


# --- GA/T 947.4 calls ------------------------------------------------------------------------


def test_officer_info(port: Path) -> None:
    info = _open(port).officer_info()
    assert info == OfficerInfo("B100001", "100001", "张三", "110101", "城关派出所")


def test_officer_block_without_serial_is_a_protocol_error(tmp_path: Path) -> None:
    p = tmp_path / "port-2"
    _recorder(p, serial="")
    with pytest.raises(ProtocolError):
        _open(p).officer_info()


def test_unreadable_recorder_json_is_a_protocol_error(port: Path) -> None:
    s = _open(port)
    (port / "recorder.json").write_text("{not json", "utf-8")
    with pytest.raises(ProtocolError):
        s.id_code()
    (port / "recorder.json").write_text("[1, 2]", "utf-8")
    with pytest.raises(ProtocolError):
        s.id_code()


def test_sync_dev_time_zeroes_the_offset_and_returns_the_drift(port: Path) -> None:
    s = _open(port)
    assert s.set_clock(dt.datetime.now()) == -42.5
    meta = _json(port)
    assert meta["clock_offset_s"] == 0
    assert meta["officer_name"] == "张三" and meta["password"] == PASSWORD  # the rest kept
    assert s.set_clock(dt.datetime.now()) == 0.0


def test_write_zfy_info_rewrites_the_officer_fields(port: Path) -> None:
    s = _open(port)
    new = OfficerInfo("B100001", "200002", "李四", "220202", "新城派出所")
    s.write_officer_info(new)
    meta = _json(port)
    assert {
        k: meta[k] for k in ("serial", "officer_no", "officer_name", "unit_no", "unit_name")
    } == {
        "serial": "B100001",
        "officer_no": "200002",
        "officer_name": "李四",
        "unit_no": "220202",
        "unit_name": "新城派出所",
    }
    assert meta["password"] == PASSWORD
    assert meta["battery_percent"] == 67
    assert meta["clock_offset_s"] == -42.5
    assert s.officer_info() == new
    assert not (port / "recorder.json.tmp").exists()


@pytest.mark.parametrize("level", [0, 1, 100])
def test_battery_in_range(tmp_path: Path, level: int) -> None:
    p = tmp_path / "port-1"
    _recorder(p, battery_percent=level)
    assert _open(p).battery_percent() == level


@pytest.mark.parametrize("level", [-1, 101, 255, "80", 80.5, None])
def test_battery_out_of_range_is_a_protocol_error(tmp_path: Path, level: object) -> None:
    p = tmp_path / "port-1"
    _recorder(p, battery_percent=level)
    with pytest.raises(ProtocolError):
        _open(p).battery_percent()


# --- the card --------------------------------------------------------------------------------


def test_list_files(port: Path) -> None:
    files = card_of(_open(port)).list_files()
    assert [f.path for f in files] == sorted([AVI, IMP, LOG])
    sizes = {f.path: f.size for f in files}
    assert sizes[AVI] == 300_000 and sizes[IMP] == 200_000
    for f in files:
        assert isinstance(f.path, bytes)
        assert f.mtime > 0


def test_non_utf8_names_are_kept_as_bytes(port: Path) -> None:
    gbk = "DCIM/100ANDRO/执法_0003.AVI".encode("gbk")
    _put(port, gbk, b"x" * 10)
    s = _open(port)
    assert gbk in [f.path for f in card_of(s).list_files()]
    assert _read_all(s, gbk) == b"x" * 10


def test_symlinks_fifos_are_never_listed_or_opened(port: Path, tmp_path: Path) -> None:
    card = port / "card"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.AVI").write_bytes(b"not on the card")
    os.symlink("/etc/passwd", card / "DCIM" / "100ANDRO" / "passwd.AVI")
    os.symlink(outside, card / "DCIM" / "linked")
    os.symlink("../../Log/20261121.LOG", card / "DCIM" / "100ANDRO" / "relative.LOG")
    os.symlink(card / "missing", card / "dangling.AVI")
    os.mkfifo(card / "DCIM" / "pipe.AVI")

    s = _open(port)
    assert [f.path for f in card_of(s).list_files()] == sorted([AVI, IMP, LOG])
    for path in (
        b"DCIM/100ANDRO/passwd.AVI",
        b"DCIM/linked/secret.AVI",
        b"DCIM/100ANDRO/relative.LOG",
        b"dangling.AVI",
    ):
        with pytest.raises(CardReadError):
            card_of(s).open_file(path)
        assert card_of(s).stat_file(path) is None
        with pytest.raises(CardReadError):
            card_of(s).delete_file(path)
    assert (outside / "secret.AVI").exists()
    assert (card / "DCIM" / "100ANDRO" / "passwd.AVI").is_symlink()


def test_a_folder_reached_only_through_a_symlink_is_not_walked(port: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "x.AVI").write_bytes(b"x")
    os.symlink(outside, port / "card" / "Record")
    s = _open(port)
    assert all(not f.path.startswith(b"Record") for f in card_of(s).list_files())


def _call_with_deadline(fn: Any, fifo: Path, timeout: float = 3.0) -> tuple[Any, Any]:
    """(result, exception) of fn() run in a thread; if it blocks on the FIFO, unblock it
    and fail."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"], out["error"] = fn(), None
        except BaseException as e:
            out["value"], out["error"] = None, e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # let the blocked open return
        t.join(timeout)
        os.close(fd)
        pytest.fail(f"{fn} blocked on a FIFO")
    return out["value"], out["error"]


def test_opening_a_fifo_fails_fast(port: Path) -> None:
    fifo = port / "card" / "DCIM" / "pipe.AVI"
    os.mkfifo(fifo)
    s = _open(port)
    _, err = _call_with_deadline(lambda: card_of(s).open_file(b"DCIM/pipe.AVI"), fifo)
    assert isinstance(err, CardReadError)
    assert _call_with_deadline(lambda: card_of(s).stat_file(b"DCIM/pipe.AVI"), fifo) == (None, None)
    _, err = _call_with_deadline(lambda: card_of(s).delete_file(b"DCIM/pipe.AVI"), fifo)
    assert isinstance(err, CardReadError)
    assert fifo.exists()


@pytest.mark.parametrize(
    "path",
    [
        b"../recorder.json",
        b"DCIM/../../recorder.json",
        b"DCIM/./100ANDRO/x.AVI",
        b"/etc/passwd",
        b"//etc/passwd",
        b"",
        b"/",
        b"..",
    ],
)
def test_dot_dot_and_absolute_card_paths_are_refused(port: Path, path: bytes) -> None:
    s = _open(port)
    with pytest.raises(CardReadError):
        card_of(s).open_file(path)
    with pytest.raises(CardReadError):
        card_of(s).delete_file(path)
    assert (port / "recorder.json").exists()


def test_card_read_before_set_msdc_is_a_protocol_error(port: Path) -> None:
    s = SimulatedDriver().open(_device(port), [PASSWORD])
    with pytest.raises(ProtocolError):
        card_of(s).open_file(AVI)
    s.enter_mass_storage()
    s.enter_mass_storage()  # idempotent
    assert _read_all(s, LOG).startswith(b"2026-11-21")


def test_read_from_an_offset_and_read_range(port: Path) -> None:
    s = _open(port)
    whole = (port / "card" / os.fsdecode(AVI)).read_bytes()
    stream = card_of(s).open_file(AVI, offset=100_000)
    buf = bytearray(1000)
    n = stream.readinto(memoryview(buf))
    stream.close()
    stream.close()  # closing twice is harmless
    assert bytes(buf[:n]) == whole[100_000 : 100_000 + n]
    assert card_of(s).read_range(AVI, 299_990, 100) == whole[299_990:]  # short at the end


def test_stat_file(port: Path) -> None:
    s = _open(port)
    f = card_of(s).stat_file(AVI)
    assert f is not None
    assert (f.path, f.size) == (AVI, 300_000)
    assert f.mtime == (port / "card" / os.fsdecode(AVI)).stat().st_mtime
    with (port / "card" / os.fsdecode(AVI)).open("ab") as grow:
        grow.write(b"more")  # a file the recorder is still writing
    assert card_of(s).stat_file(AVI).size == 300_004
    assert card_of(s).stat_file(b"DCIM/100ANDRO/missing.AVI") is None
    assert card_of(s).stat_file(b"../recorder.json") is None


def test_bytes_read_counts(port: Path) -> None:
    s = _open(port)
    assert card_of(s).bytes_read == 0
    assert len(_read_all(s, AVI)) == 300_000
    assert card_of(s).bytes_read == 300_000
    _read_all(s, IMP, chunk=7000)
    assert card_of(s).bytes_read == 500_000
    card_of(s).read_range(AVI, 1000, 5000)
    assert card_of(s).bytes_read == 505_000


def test_unplug_mid_read_raises_device_gone(port: Path, tmp_path: Path) -> None:
    big = b"DCIM/100ANDRO/100001_B100001_20261121090000_0003.AVI"
    _put(port, big, os.urandom(4_000_000))
    s = _open(port)
    stream = card_of(s).open_file(big)
    buf = memoryview(bytearray(65536))
    assert stream.readinto(buf) == 65536
    os.rename(port, tmp_path / "aside")  # unplugged
    assert not s.alive()
    with pytest.raises(DeviceGone):
        stream.readinto(buf)
    stream.close()
    for call in (s.id_code, s.battery_percent, lambda: card_of(s).list_files()):
        with pytest.raises(DeviceGone):
            call()
    with pytest.raises(DeviceGone):
        card_of(s).open_file(AVI)


def test_another_recorder_in_the_same_port_is_not_the_same_device(port: Path) -> None:
    s = _open(port)
    assert s.alive()
    gone = port.with_name("old")
    os.rename(port, gone)
    _recorder(port)  # a different recorder folder appears at the same port
    assert not s.alive()
    with pytest.raises(DeviceGone):
        s.id_code()
    # the same folder put back is the same recorder again
    os.rename(port, port.with_name("new"))
    os.rename(gone, port)
    assert s.alive()
    assert s.id_code() == "ZFY01"


def test_read_mb_s_limits_the_rate(tmp_path: Path) -> None:
    p = tmp_path / "port-1"
    _recorder(p, read_mb_s=4)
    _put(p, AVI, os.urandom(2_000_000))
    s = _open(p)
    t0 = time.monotonic()
    assert len(_read_all(s, AVI, chunk=256 * 1024)) == 2_000_000
    elapsed = time.monotonic() - t0
    # 2 MB at 4 MB/s is 0.5 s; only check it is not much faster than the limit
    assert elapsed >= 0.3, elapsed


def test_delete_file_removes_exactly_one_file(port: Path) -> None:
    s = _open(port)
    twin = AVI.replace(b"0001.AVI", b"0001.JPG")
    _put(port, twin, b"photo")
    before = {f.path for f in card_of(s).list_files()}
    card_of(s).delete_file(AVI)
    after = {f.path for f in card_of(s).list_files()}
    assert before - after == {AVI}
    assert (port / "card" / os.fsdecode(twin)).read_bytes() == b"photo"
    assert (port / "card" / "DCIM" / "100ANDRO").is_dir()  # the folder stays
    with pytest.raises(CardReadError):
        card_of(s).delete_file(AVI)  # already gone
    assert {f.path for f in card_of(s).list_files()} == after


def test_delete_file_on_a_folder_is_a_card_read_error(port: Path) -> None:
    s = _open(port)
    with pytest.raises(CardReadError):
        card_of(s).delete_file(b"DCIM/100ANDRO")
    assert len(card_of(s).list_files()) == 3


def _links(bus: Path, *links: dict[str, Any]) -> None:
    (bus / "links.json").write_text(json.dumps({"links": list(links)}), "utf-8")


def test_ports_behind_one_link_share_its_rate(tmp_path: Path) -> None:
    """Two recorders behind one 4 MB/s link (links.json): read at once, their 2 MB each
    take at least the 1 s that 4 MB at 4 MB/s take, though neither has a limit of its own."""
    bus = tmp_path / "bus"
    sessions = []
    for port in (1, 2):
        p = bus / f"port-{port}"
        _recorder(p, serial=f"B10000{port}")
        _put(p, AVI, os.urandom(2_000_000))
        sessions.append(_open(p))
    _links(bus, {"name": "hub-1", "ports": [1, 2], "mb_s": 4})
    got: list[int] = []
    t0 = time.monotonic()
    threads = [
        threading.Thread(target=lambda s=s: got.append(len(_read_all(s, AVI, 256 * 1024))))
        for s in sessions
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert got == [2_000_000, 2_000_000]
    assert elapsed >= 0.85, elapsed  # a lower bound only: a slow machine is slower still


def test_a_port_on_no_link_and_a_bad_links_file(tmp_path: Path) -> None:
    from station.drivers.simulated import link_clock, read_links

    bus = tmp_path / "bus"
    bus.mkdir()
    assert read_links(bus) == [] and link_clock(bus, 1) is None
    _links(bus, {"name": "hub-1", "ports": [1, 2], "mb_s": 40})
    (link,) = read_links(bus)
    assert (link.name, link.ports, link.mb_s) == ("hub-1", (1, 2), 40.0)
    assert link_clock(bus, 3) is None
    assert link_clock(bus, 1) is link_clock(bus, 2)  # one budget for both ports
    _links(bus, {"name": "hub-1", "ports": "x"})
    with pytest.raises(ProtocolError):
        read_links(bus)
