"""The store can be trusted on its own: rebuild, verify, scrub, audit, adopt, hold."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from conftest import StationProc, card_hashes, wait_for
from evidence import Ledger, check

from station.sim.recorder import RecorderSpec


def _collect(
    st: StationProc, port: int = 1, serial: str = "V000001", officer: str = "900001", **kw
) -> Ledger:
    rec = st.build(
        RecorderSpec(serial=serial, officer_no=officer, files=5, imp=2, size_mb=0.8, **kw),
        seed=port,
    )
    ledger = Ledger()
    ledger.add(serial, officer, rec)
    st.dock(port, rec)
    st.wait_state(port, "complete")
    return ledger


def _files_view(st: StationProc) -> list[tuple]:
    return sorted(
        (
            i["officer_no"],
            i["serial"],
            i["name"],
            i["card_path"],
            i["stored_path"],
            i["size"],
            i["sha256"],
            i["recorded_at"],
            i["important"],
            i["level"],
        )
        for i in st.api("/api/v1/files", limit=1000)["items"]
    )


def test_catalog_rebuilt_from_the_disks_alone(station: StationProc) -> None:
    _collect(station, 1, "V000001", "900001")
    _collect(station, 2, "V000002", "900002")
    before = _files_view(station)
    station.stop()
    station.db.unlink()  # the database is lost
    for suffix in ("-wal", "-shm"):
        Path(f"{station.db}{suffix}").unlink(missing_ok=True)
    out = station.cli("catalog", "rebuild")
    assert f"{len(before)} file(s) catalogued" in out.stdout
    station.start()
    assert _files_view(station) == before
    assert station.cli("catalog", "verify").returncode == 0
    kinds = [k for (k,) in station.query("SELECT kind FROM events")]
    assert "catalog_rebuilt" in kinds


def test_corrupted_catalog_is_kept_aside_and_rebuilt(station: StationProc) -> None:
    _collect(station)
    before = _files_view(station)
    station.stop()
    station.db.write_bytes(b"this is not a database" * 100)
    out = station.cli("catalog", "rebuild")
    assert "old catalog kept as" in out.stdout
    station.start()
    assert _files_view(station) == before


def test_catalog_verify_finds_a_changed_and_a_missing_file(station: StationProc) -> None:
    _collect(station)
    items = station.api("/api/v1/files")["items"]
    assert station.cli("catalog", "verify").returncode == 0
    victim, gone = Path(items[0]["stored_path"]), Path(items[1]["stored_path"])
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    gone.unlink()
    out = station.cli("catalog", "verify", check=False)
    assert out.returncode == 1
    assert f"mismatched: {victim}" in out.stdout
    assert f"missing: {gone}" in out.stdout


def test_scrubber_raises_an_alarm_on_silent_corruption(make_station) -> None:
    st = make_station(store={"scrub_mb_s": 50.0, "scrub_every_days": 1e-5})
    _collect(st)
    items = st.api("/api/v1/files")["items"]
    victim = Path(items[0]["stored_path"])
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x80
    victim.write_bytes(bytes(data))

    def alarm() -> dict | None:
        return next(
            (a for a in st.api("/api/v1/status")["alarms"] if a["code"] == "store_corrupt"), None
        )

    a = wait_for(alarm, 120, "the scrubber to notice")
    assert str(victim) in a["message"]
    assert st.query("SELECT count(*) FROM events WHERE kind = 'scrub_failed'")[0][0] >= 1
    wait_for(  # every other file is checked too, and marked verified
        lambda: (
            st.query("SELECT count(*) FROM files WHERE verified_at IS NOT NULL")[0][0]
            >= len(items) - 1
        ),
        120,
        "the scrubber to verify the intact files",
    )


def test_audit_verify_finds_edited_inserted_and_deleted_entries(station: StationProc) -> None:
    _collect(station)
    station.stop()
    assert station.cli("audit", "verify").stdout.strip() == "event chain intact"

    def tamper(sql: str, *args) -> str:
        con = sqlite3.connect(station.db)
        with con:
            con.execute(sql, args)
        con.close()
        out = station.cli("audit", "verify", check=False)
        assert out.returncode == 1
        return out.stdout

    con = sqlite3.connect(station.db)
    rows = con.execute("SELECT id, message FROM events ORDER BY id").fetchall()
    con.close()
    mid = rows[len(rows) // 2][0]
    out = tamper("UPDATE events SET message = 'nothing happened' WHERE id = ?", mid)
    assert f"event {mid}: content does not match its hash" in out
    con = sqlite3.connect(station.db)
    with con:  # put it back: the chain is whole again
        con.execute("UPDATE events SET message = ? WHERE id = ?", (rows[len(rows) // 2][1], mid))
    con.close()
    assert station.cli("audit", "verify").returncode == 0
    out = tamper("DELETE FROM events WHERE id = ?", mid)
    assert f"event {mid + 1}: does not follow" in out


def test_orphans_found_at_startup_are_adopted_or_quarantined(station: StationProc) -> None:
    ledger = _collect(station)
    items = station.api("/api/v1/files")["items"]
    station.stop()
    # a file whose catalog row is lost (its sidecar survives) ...
    lost = items[0]
    con = sqlite3.connect(station.db)
    with con:
        con.execute("UPDATE ingest_jobs SET file_id = NULL WHERE file_id = ?", (lost["id"],))
        con.execute("DELETE FROM files WHERE id = ?", (lost["id"],))
    con.close()
    # ... and a file nobody can vouch for
    stranger = station.disks[0] / "900001" / "V000001" / "planted.AVI"
    stranger.parent.mkdir(parents=True, exist_ok=True)
    stranger.write_bytes(b"not collected by us")
    station.start()
    names = {i["stored_path"] for i in station.api("/api/v1/files")["items"]}
    assert lost["stored_path"] in names
    assert not stranger.exists()
    assert (station.disks[0] / ".quarantine" / "900001" / "V000001" / "planted.AVI").exists()
    alarms = {a["code"] for a in station.api("/api/v1/status")["alarms"]}
    assert "store_inconsistent" in alarms
    kinds = {k for (k,) in station.query("SELECT kind FROM events")}
    assert {"file_adopted", "store_recovered"} <= kinds
    findings = check(station.db, station.disks, ledger, {})
    planted = str(station.disks[0] / ".quarantine" / "900001" / "V000001" / "planted.AVI")
    assert findings.quarantined == [planted]  # the stranger, and nothing of ours
    findings.quarantined = []
    assert findings.problems() == {}


def _retag(recorder: Path, **fields) -> None:
    data = json.loads((recorder / "recorder.json").read_text())
    data.update(fields)
    tmp = recorder / "recorder.json.new"
    tmp.write_text(json.dumps(data, ensure_ascii=False))
    os.replace(tmp, recorder / "recorder.json")


def test_recorder_claiming_another_officer_is_held(station: StationProc) -> None:
    _collect(station, 1, "W000001", "910001", officer_name="王五")
    first = {i["id"] for i in station.api("/api/v1/files")["items"]}
    aside = station.undock(1)
    wait_for(lambda: station.slot(1)["state"] == "empty")
    rec = station.build(
        RecorderSpec(serial="W000001", officer_no="919999", files=2, imp=0, size_mb=0.5), seed=9
    )
    source = card_hashes(rec)
    docked = station.dock(2, rec)
    slot = station.wait_state(2, "unregistered")
    assert "919999" in slot["error"] and "910001" in slot["error"]
    assert slot["reason"] == "officer_changed"
    assert slot["reason_params"] == {"reported": "919999", "registered": "910001"}
    assert card_hashes(docked) == source  # nothing collected, nothing deleted
    # an administrator confirms: the recorder stays with its registered officer
    station.cli("recorders", "approve", "W000001", "--officer-no", "910001")
    station.wait_state(2, "complete")
    new = [
        i for i in station.api("/api/v1/files", serial="W000001")["items"] if i["id"] not in first
    ]
    assert len(new) == len(source) and {i["officer_no"] for i in new} == {"910001"}
    assert aside.exists()


def test_a_new_recorder_claiming_an_officer_with_a_recorder_is_held(station: StationProc) -> None:
    # automatic registration: a second recorder's own claim does not take an officer who
    # already has one (a cloned or re-flashed block); an administrator decides
    _collect(station, 1, "W000011", "911001")
    rec = station.build(
        RecorderSpec(serial="W000012", officer_no="911001", files=2, imp=0, size_mb=0.5), seed=5
    )
    source = card_hashes(rec)
    docked = station.dock(2, rec)
    slot = station.wait_state(2, "unregistered")
    assert "911001" in slot["error"] and "W000011" in slot["error"], slot
    assert slot["reason"] == "officer_has_recorder"
    assert slot["reason_params"] == {"officer": "911001", "other": "W000011"}
    assert card_hashes(docked) == source  # nothing collected, nothing deleted
    (status,) = station.query("SELECT status FROM recorders WHERE serial = 'W000012'")[0]
    assert status == "pending"
    station.cli("recorders", "approve", "W000012")  # the officer has two recorders
    station.wait_state(2, "complete")
    items = station.api("/api/v1/files", serial="W000012")["items"]
    assert len(items) == len(source) and {i["officer_no"] for i in items} == {"911001"}


def test_changed_officer_block_is_held(station: StationProc) -> None:
    _collect(station, 1, "W000002", "920001", officer_name="赵六", unit_name="一所")
    aside = station.undock(1)
    wait_for(lambda: station.slot(1)["state"] == "empty")
    _retag(aside, unit_name="二所")
    (aside / "card" / "DCIM" / "new.JPG").parent.mkdir(parents=True, exist_ok=True)
    (aside / "card" / "DCIM" / "new.JPG").write_bytes(b"x" * 1000)
    station.dock(1, aside)
    slot = station.wait_state(1, "unregistered")
    assert "changed since registration" in slot["error"] and "二所" in slot["error"]
    assert (slot["reason"], slot["reason_params"]) == ("block_changed", {})
    station.cli("recorders", "approve", "W000002")
    station.wait_state(1, "complete")


def test_same_serial_on_two_ports_is_held(station: StationProc) -> None:
    a = station.build(
        RecorderSpec(
            serial="W000003", officer_no="930001", files=2, imp=0, size_mb=0.5, read_mb_s=0.5
        ),
        seed=1,
    )
    b = station.build(
        RecorderSpec(serial="W000003", officer_no="930001", files=2, imp=0, size_mb=0.5), seed=2
    )
    station.dock(3, a)
    wait_for(lambda: station.slot(3)["state"] in ("collecting", "complete"))
    source_b = card_hashes(b)
    docked_b = station.dock(4, b)
    slot = station.wait_state(4, "unregistered")
    assert "also docked on port 3" in slot["error"]
    assert (slot["reason"], slot["reason_params"]) == ("possible_clone", {"other_port": "3"})
    assert card_hashes(docked_b) == source_b
    events = station.query("SELECT message FROM events WHERE kind = 'recorder_held'")
    assert any("possible clone" in m for (m,) in events)
