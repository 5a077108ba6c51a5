"""End to end through the running daemon: dock, collect, verify, clear."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from conftest import StationProc, card_hashes, recorder_json, sha256_file, wait_for

from station.sim import media
from station.sim.recorder import RecorderSpec


def test_one_recorder_end_to_end(station: StationProc) -> None:
    spec = RecorderSpec(
        serial="B100001",
        officer_no="100001",
        officer_name="张三",
        unit_no="110101",
        unit_name="城关派出所",
        files=6,
        imp=2,
        size_mb=1.5,
        clock_offset_s=-42.5,
        battery_percent=67,
    )
    rec = station.build(spec)
    source = card_hashes(rec)
    docked = station.dock(3, rec)

    slot = station.wait_state(3, "complete")
    assert slot["recorder"] == {
        "serial": "B100001",
        "officer_no": "100001",
        "officer_name": "张三",
        "unit_no": "110101",
        "unit_name": "城关派出所",
    }
    assert slot["battery_percent"] == 67
    assert slot["files_done"] == slot["files_total"] == len(source)
    assert slot["bytes_done"] == slot["bytes_total"] == sum(s for s, _ in source.values())

    # the recorder is cleared, and its clock was set
    assert [p for p in (docked / "card").rglob("*") if p.is_file()] == []
    assert recorder_json(docked)["clock_offset_s"] == 0

    files = station.api("/api/v1/files", serial="B100001")
    assert files["total"] == len(source)
    today = dt.date.today().isoformat()
    by_name = {Path(card).name: (size, digest, card) for card, (size, digest) in source.items()}
    for item in files["items"]:
        size, digest, card = by_name[item["name"]]
        stored = Path(item["stored_path"])
        assert stored.is_absolute()
        assert stored.parent == station.disks[0] / "100001" / "B100001" / today
        assert (item["size"], item["sha256"]) == (size, digest)
        assert sha256_file(stored) == digest  # stored bytes identical to the source
        assert item["officer_no"] == "100001"
        imp = "IMP" in item["name"]
        assert item["important"] is imp
        assert item["level"] == ("important" if imp else "normal")
        if card.endswith(".AVI"):
            assert item["recorded_at"].startswith(item["name"].split("_")[2][:4])

    # catalog rows: one complete session, the drift recorded, no job left open
    sessions = station.query("SELECT state, clock_drift_s, files_done FROM collection_sessions")
    assert sessions == [("complete", -42.5, len(source))]
    open_jobs = station.query("SELECT count(*) FROM ingest_jobs WHERE state != 'cleared'")
    assert open_jobs == [(0,)]
    kinds = {k for (k,) in station.query("SELECT kind FROM events")}
    assert {
        "recorder_identified",
        "recorder_registered",
        "clock_set",
        "file_stored",
        "card_file_deleted",
        "collection_complete",
    } <= kinds
    assert not list(station.disks[0].joinpath(".staging").iterdir())


def test_eight_recorders_at_once(station: StationProc) -> None:
    recorders = []
    expected = 0
    for port in range(1, 9):
        spec = RecorderSpec(
            serial=f"C{port:06d}",
            officer_no=f"2000{port:02d}",
            files=4,
            imp=1,
            size_mb=1.0,
            read_mb_s=20,
        )
        rec = station.build(spec, seed=port)
        expected += len(card_hashes(rec))
        recorders.append(rec)
    for port, rec in enumerate(recorders, 1):
        station.dock(port, rec)
    for port in range(1, 9):
        station.wait_state(port, "complete", timeout=240)
    files = station.api("/api/v1/files", limit=1000)
    assert files["total"] == expected
    assert len({f["sha256"] for f in files["items"]}) == expected
    officers = {f["officer_no"] for f in files["items"]}
    assert officers == {f"2000{p:02d}" for p in range(1, 9)}
    for port in range(1, 9):
        card = station.bus / f"port-{port}" / "card"
        assert [p for p in card.rglob("*") if p.is_file()] == []


def test_manual_registration_holds_until_approved(make_station) -> None:
    station = make_station(registration={"mode": "manual"})
    spec = RecorderSpec(
        serial="D000001",
        officer_no="300001",
        officer_name="李四",
        files=3,
        imp=1,
        size_mb=1.0,
        clock_offset_s=12.0,
    )
    rec = station.build(spec)
    source = card_hashes(rec)
    docked = station.dock(5, rec)

    slot = station.wait_state(5, "unregistered")
    assert slot["recorder"]["serial"] == "D000001"
    wait_for(
        lambda: station.query("SELECT count(*) FROM events WHERE kind = 'recorder_held'") == [(1,)]
    )
    # held: nothing collected, nothing deleted, the clock not touched
    assert card_hashes(docked) == source
    assert recorder_json(docked)["clock_offset_s"] == 12.0
    assert station.api("/api/v1/files")["total"] == 0
    assert station.slot(5)["state"] == "unregistered"

    listed = station.cli("recorders", "list", "--json").stdout
    assert '"status": "pending"' in listed
    out = station.cli("recorders", "approve", "D000001", "--by", "admin1")
    assert "registered" in out.stdout

    station.wait_state(5, "complete")
    assert station.api("/api/v1/files")["total"] == len(source)
    row = station.query("SELECT registered_how, registered_by FROM recorders")
    assert row == [("manual", "admin1")]


def test_unplug_mid_file_resumes_from_durable_offset(station: StationProc) -> None:
    spec = RecorderSpec(serial="E000001", officer_no="400001", files=0, imp=0, read_mb_s=8)
    rec = station.build(spec)
    big = rec / "card" / "DCIM" / "100ANDRO" / "400001_E000001_20261120083000_0001.AVI"
    big.parent.mkdir(parents=True)
    size = media.make_video(big, 24_000_000, label="resume test")
    source = card_hashes(rec)

    station.dock(2, rec)
    wait_for(lambda: station.slot(2)["bytes_done"] > 12_000_000, 120, "half the file")
    aside = station.undock(2)
    wait_for(lambda: station.slot(2)["state"] == "empty", 60, "the port to empty")
    wait_for(
        lambda: station.query("SELECT state FROM collection_sessions") == [("interrupted",)],
        60,
        "interrupted",
    )
    (durable,) = station.query("SELECT durable_offset FROM ingest_jobs WHERE state = 'copying'")[0]
    assert durable >= 8_000_000
    assert big.name in {Path(p).name for p in source}

    station.dock(2, aside)  # the same recorder comes back
    station.wait_state(2, "complete")
    reads = station.query("SELECT bytes_read FROM collection_sessions ORDER BY id")
    second = reads[1][0]
    # only the remaining part is copied, plus the overlap proving it is the same file; the
    # second look then compares every byte again (files up to store.card_recheck_full_mb)
    assert second <= (size - durable) + (1 << 20) + size, (second, size, durable)
    assert second >= size - durable
    files = station.api("/api/v1/files")
    avi = [f for f in files["items"] if f["name"] == big.name]
    assert len(avi) == 1
    assert avi[0]["sha256"] == source[str(big.relative_to(rec / "card"))][1]
    assert sha256_file(Path(avi[0]["stored_path"])) == avi[0]["sha256"]
    assert station.query("SELECT count(*) FROM files") == [(files["total"],)]


def test_already_collected_file_is_not_stored_again(station: StationProc) -> None:
    spec = RecorderSpec(serial="F000001", officer_no="500001", files=2, imp=0, size_mb=1)
    rec = station.build(spec)
    keep = station.root / "keep"
    shutil.copytree(rec, keep)
    station.dock(4, rec)
    station.wait_state(4, "complete")
    first = station.api("/api/v1/files")["total"]
    aside = station.undock(4)
    wait_for(lambda: station.slot(4)["state"] == "empty")
    # the card comes back with the same files (say the delete was lost): same bytes, same paths
    shutil.rmtree(aside / "card")
    shutil.copytree(keep / "card", aside / "card")
    station.dock(4, aside)
    station.wait_state(4, "complete")
    assert station.api("/api/v1/files")["total"] == first
    assert [p for p in (station.bus / "port-4" / "card").rglob("*") if p.is_file()] == []
    dups = station.query(
        "SELECT count(*) FROM events WHERE kind = 'card_file_deleted' AND message LIKE 'duplicate%'"
    )
    assert dups == [(first,)]


def test_a_duplicate_is_only_dropped_if_the_stored_copy_still_verifies(
    station: StationProc,
) -> None:
    spec = RecorderSpec(serial="F000002", officer_no="500002", files=2, imp=0, size_mb=1)
    rec = station.build(spec)
    keep = station.root / "keep"
    shutil.copytree(rec, keep)
    source = card_hashes(rec)
    station.dock(5, rec)
    station.wait_state(5, "complete")
    items = station.api("/api/v1/files", serial="F000002")["items"]
    # one stored copy goes bad (cut short), and the card comes back with the same files
    bad = next(i for i in items if i["size"] > 1000)
    Path(bad["stored_path"]).chmod(0o640)
    with open(bad["stored_path"], "r+b") as f:
        f.truncate(bad["size"] // 2)
    aside = station.undock(5)
    wait_for(lambda: station.slot(5)["state"] == "empty")
    shutil.rmtree(aside / "card")
    shutil.copytree(keep / "card", aside / "card")
    station.dock(5, aside)
    station.wait_state(5, "complete")
    # the intact one was dropped as a duplicate; the other was collected again, intact
    assert [p for p in (station.bus / "port-5" / "card").rglob("*") if p.is_file()] == []
    again = station.api("/api/v1/files", serial="F000002")["items"]
    assert len(again) == len(items)  # the good copy took the corrupt one's place
    (reason,) = station.query("SELECT delete_reason FROM files WHERE id = ?", bad["id"])[0]
    assert "failed their check" in reason
    good = [
        i
        for i in again
        if i["name"] == bad["name"] and sha256_file(Path(i["stored_path"])) == i["sha256"]
    ]
    assert len(good) == 1 and (good[0]["size"], good[0]["sha256"]) == source[bad["card_path"]]
