"""Retention: the pure policy, sweeps through the CLI and the daemon, overwrite when full."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from conftest import StationProc, needs_root, tmpfs_disks, wait_for

from station.faults import RETENTION_CRASHPOINTS
from station.retention.sweeper import DiskFacts, FileFacts, Rules, days_until_full, plan_sweep
from station.sim.recorder import RecorderSpec

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
RULES = Rules(
    days={"normal": 180, "important": 365, "evidence": None}, high_water=0.9, low_water=0.7
)
GB = 10**9


def f(
    i: int,
    age_days: float,
    *,
    level: str = "normal",
    imp: bool = False,
    hold: str | None = None,
    disk: str = "/d1",
    size: int = GB,
) -> FileFacts:
    return FileFacts(i, disk, size, NOW - dt.timedelta(days=age_days), level, imp, hold)


def test_expired_unprotected_files_are_deleted() -> None:
    files = [
        f(1, 181),
        f(2, 179),
        f(3, 500, level="important"),
        f(4, 9999, level="evidence"),
        f(5, 400, imp=True),
        f(6, 400, hold="CASE-7"),
        f(7, 366, level="important"),
    ]
    plan = plan_sweep(files, [DiskFacts("/d1", 100 * GB, 50 * GB)], RULES, NOW)
    assert plan.expired == [1]
    assert plan.overwrite == []
    assert sorted(plan.review) == [3, 5, 6, 7]  # protected: past their period, never deleted
    assert plan.freed == {"/d1": GB}


def test_imp_name_protects_even_when_graded_normal() -> None:
    plan = plan_sweep([f(1, 1000, imp=True)], [DiskFacts("/d1", 10 * GB, 0)], RULES, NOW)
    assert plan.delete == [] and plan.cannot_make_room == ["/d1"]


def test_overwrite_only_when_every_disk_is_past_high_water() -> None:
    files = [f(i, 100 - i, disk="/d1") for i in range(10)]
    one_full = [DiskFacts("/d1", 10 * GB, 0), DiskFacts("/d2", 10 * GB, 5 * GB)]
    assert plan_sweep(files, one_full, RULES, NOW).delete == []
    both = [DiskFacts("/d1", 10 * GB, 0), DiskFacts("/d2", 10 * GB, 0)]
    plan = plan_sweep(files, both, RULES, NOW)
    assert plan.overwrite == [0, 1, 2]  # oldest first, until /d1 is at 70 %
    assert plan.cannot_make_room == ["/d2"]  # nothing of ours there to overwrite


def test_overwrite_skips_protected_and_stops_at_low_water() -> None:
    files = [f(1, 50, imp=True), f(2, 40), f(3, 30, level="evidence"), f(4, 20), f(5, 10)]
    plan = plan_sweep(files, [DiskFacts("/d1", 10 * GB, GB // 2)], RULES, NOW)
    assert plan.overwrite == [2, 4, 5]  # 95 % -> 65 %, IMP and evidence skipped
    assert plan.cannot_make_room == []


def test_only_protected_files_left_cannot_make_room() -> None:
    files = [f(1, 50, imp=True), f(3, 30, level="evidence"), f(4, 20, hold="C-1")]
    plan = plan_sweep(files, [DiskFacts("/d1", 4 * GB, GB // 10)], RULES, NOW)
    assert plan.delete == [] and plan.cannot_make_room == ["/d1"]


def test_expired_files_count_towards_making_room() -> None:
    files = [f(1, 200), f(2, 10), f(3, 5)]
    plan = plan_sweep(files, [DiskFacts("/d1", 10 * GB, GB // 2)], RULES, NOW)
    assert plan.expired == [1] and plan.overwrite == [2, 3][: len(plan.overwrite)]


def test_forecast() -> None:
    assert days_until_full(100 * GB, 14 * GB, 14) == 100
    assert days_until_full(100 * GB, 0, 14) is None


# --- through the station -----------------------------------------------------------------


def _age(st: StationProc, days: int, where: str = "1 = 1") -> None:
    st.query(
        f"UPDATE files SET collected_at = datetime(collected_at, '-{days} days') WHERE {where}"
    )


def test_sweep_deletes_expired_footage_and_keeps_imp(station: StationProc) -> None:
    rec = station.build(
        RecorderSpec(serial="X000001", officer_no="950001", files=6, imp=2, size_mb=0.5)
    )
    station.dock(1, rec)
    station.wait_state(1, "complete")
    items = station.api("/api/v1/files")["items"]
    station.stop()
    _age(station, 200)
    preview = json.loads(station.cli("retention", "preview", "--json").stdout)
    imp = {i["id"] for i in items if i["important"]}
    expired = {e["id"] for e in preview["expired"]}
    assert expired == {i["id"] for i in items} - imp
    assert {r["id"] for r in preview["review"]} == set()  # IMP period is 365 days
    assert preview["freed_bytes"] == sum(i["size"] for i in items if i["id"] in expired)
    out = station.cli("retention", "sweep").stdout
    assert f"deleted {len(expired)} file(s)" in out
    for i in items:
        assert Path(i["stored_path"]).exists() == (i["id"] in imp)
    rows = station.query(
        "SELECT id, deleted_by, delete_reason FROM files WHERE deleted_at IS NOT NULL"
    )
    assert {r[0] for r in rows} == expired and {r[1] for r in rows} == {"retention"}
    sidecar = json.loads(next((station.disks[0] / ".meta").rglob("*.json")).read_text())
    assert "deleted_at" in sidecar
    events = station.query("SELECT count(*) FROM events WHERE kind = 'file_deleted'")
    assert events == [(len(expired),)]
    assert station.cli("audit", "verify").returncode == 0
    station.start()
    assert station.api("/api/v1/files")["total"] == len(imp)


def test_legal_hold_freezes_a_file(station: StationProc) -> None:
    rec = station.build(
        RecorderSpec(serial="X000002", officer_no="950002", files=3, imp=0, size_mb=0.3)
    )
    station.dock(2, rec)
    station.wait_state(2, "complete")
    held = station.api("/api/v1/files")["items"][0]
    station.cli("files", "hold", str(held["id"]), "CASE-2026-117", "--by", "judge")
    _age(station, 400)
    station.cli("retention", "sweep")
    assert Path(held["stored_path"]).exists()
    assert station.api("/api/v1/files")["total"] == 1
    station.cli("files", "release", str(held["id"]))
    station.cli("retention", "sweep")
    assert not Path(held["stored_path"]).exists()


@pytest.mark.parametrize("point", RETENTION_CRASHPOINTS)
def test_killed_mid_deletion_is_settled_once(station: StationProc, point: str) -> None:
    """Killed after the sidecar tombstone (the catalog step never committed: the file stays
    live, its sidecar is put right) or after the row's tombstone (the deletion is finished,
    not undone): either way each expired file ends deleted exactly once."""
    rec = station.build(
        RecorderSpec(serial="X000003", officer_no="950003", files=3, imp=0, size_mb=0.3)
    )
    station.dock(3, rec)
    station.wait_state(3, "complete")
    items = station.api("/api/v1/files")["items"]
    station.stop()
    _age(station, 200)
    import os
    import subprocess
    import sys

    env = {**os.environ, "STATION_CRASHPOINTS": f"{point}:1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "station",
            "retention",
            "sweep",
            "--config",
            str(station.config_path),
        ],
        env=env,
        capture_output=True,
    )
    assert r.returncode == -9
    left = [i for i in items if Path(i["stored_path"]).exists()]
    assert len(left) == len(items)  # the kill came before any file was removed
    (live,) = station.query("SELECT count(*) FROM files WHERE deleted_at IS NULL")[0]
    assert live == len(items) - (point == "retention_after_tombstone")
    station.start()  # recovery settles the cut-short deletion; it adopts nothing again
    # ... and the daemon's own first sweep deletes the other expired files
    wait_for(lambda: station.api("/api/v1/files")["total"] == 0, 60, "the sweep to finish")
    assert not any(Path(i["stored_path"]).exists() for i in items)
    kinds = {k for (k,) in station.query("SELECT kind FROM events")}
    assert "file_adopted" not in kinds
    (tombstones,) = station.query("SELECT count(*) FROM files WHERE deleted_at IS NOT NULL")[0]
    assert tombstones == len(items)  # each deleted once, none resurrected


@needs_root
def test_full_disks_overwrite_the_oldest_unprotected_footage(make_station) -> None:
    st = make_station(
        start=False,
        store={"min_free_mb": 1},
        retention={"high_water_percent": 60.0, "low_water_percent": 30.0},
    )
    st.wrapper = tmpfs_disks((st.disks[0], "24m"), (st.disks[1], "24m"))
    st.start()
    old = st.build(
        RecorderSpec(serial="Y000001", officer_no="960001", files=10, imp=2, size_mb=4.0), seed=1
    )
    st.dock(1, old)
    st.wait_state(1, "complete", "error")
    first = st.api("/api/v1/files", limit=100)["items"]
    st.undock(1)
    wait_for(lambda: st.slot(1)["state"] == "empty")
    new = st.build(
        RecorderSpec(serial="Y000002", officer_no="960002", files=8, imp=0, size_mb=4.0), seed=2
    )
    st.dock(2, new)
    st.wait_state(2, "complete")
    alive = {i["id"] for i in st.api("/api/v1/files", limit=100)["items"]}
    deleted = st.query("SELECT id, delete_reason FROM files WHERE deleted_at IS NOT NULL")
    assert deleted, "old footage was overwritten to make room"
    assert all("overwritten" in r for _, r in deleted)
    for i in first:
        if i["important"]:
            assert i["id"] in alive  # IMP footage is never overwritten
    oldest_deleted = max(d for d, _ in deleted)
    survivors = [i["id"] for i in first if not i["important"] and i["id"] in alive]
    assert all(s > oldest_deleted for s in survivors)  # the oldest went first
