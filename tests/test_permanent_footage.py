"""Footage kept permanently (the 2016 rules' categories) and its SM3, as the disks remember them.

The catalog can be lost and rebuilt from the sidecars (`station catalog rebuild`): a file
graded into a permanent category must come back permanent, with its SM3, and stay
undeletable. A file in a permanent category is protected by the one protection rule
(`station.retention.protection.is_protected`), wherever a file is deleted or shown. Driven
in process against a real catalog and a real disk folder, and through the running daemon.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from pathlib import Path

import pytest
from conftest import StationProc
from sqlalchemy import select
from test_evidence_safety import LONG_AGO, RULES, path_of, put_file, row, sidecar_of, store_of
from test_ui_api import ADMIN, as_user, file_ids
from test_ui_api import st as st  # the running station: a shared fixture

from station.catalog import Catalog, StoredFile
from station.forward.files import Candidate
from station.platform.sm3 import Sm3Digester
from station.retention.annotations import annotate
from station.retention.protection import CATEGORIES, is_protected
from station.retention.sweeper import DeletionRefused, DiskFacts, FileFacts, RetentionSweeper
from station.store.recovery import rebuild, recover
from station.store.sidecar import Sidecar, SidecarError, read_sidecar, sidecar_path, write_sidecar

DATA = b"permanent footage " * 300


def graded_and_digested(catalog: Catalog, disk: Path) -> int:
    """A stored file graded into a permanent category, its SM3 computed in the background."""
    fid = put_file(catalog, disk, data=DATA)
    annotate(catalog, fid, by="admin", category="case_evidence", admin=True)
    assert Sm3Digester(catalog, threading.Event()).round() == 1
    assert row(catalog, fid).sm3 == hashlib.new("sm3", DATA).hexdigest()
    return fid


def rebuilt(catalog_dir: Path, disk: Path) -> Catalog:
    fresh = Catalog(catalog_dir / "rebuilt.db")
    fresh.migrate()
    report = rebuild(fresh, [disk])
    assert len(report.adopted) == 1, report.lines()
    return fresh


def only_row(catalog: Catalog) -> StoredFile:
    with catalog.read() as s:
        (back,) = s.scalars(select(StoredFile)).all()
        return back


def test_a_rebuilt_catalog_keeps_the_category_and_the_sm3(store_env, tmp_path) -> None:
    catalog, disk = store_env
    fid = graded_and_digested(catalog, disk)
    sc = sidecar_of(catalog, fid)
    assert sc.retention_category == "case_evidence"
    assert sc.sm3 == hashlib.new("sm3", DATA).hexdigest()
    path = path_of(catalog, fid)
    # the catalog is lost: rebuilt from the disk alone
    fresh = rebuilt(tmp_path, disk)
    back = only_row(fresh)
    assert back.retention_category == "case_evidence"
    assert back.sm3 == hashlib.new("sm3", DATA).hexdigest()
    # ... and still kept: by age, to make room, and when a person asks
    sweeper = RetentionSweeper(fresh, RULES)
    full = [DiskFacts(str(disk), total=100, free=0)]
    plan = sweeper.sweep(full)
    assert back.id in plan.permanent and back.id not in plan.delete
    assert not sweeper.delete(back.id, "retention period expired")
    with pytest.raises(DeletionRefused, match="permanently"):
        sweeper.delete(back.id, "asked", by="admin", confirmed=True)
    assert path.exists() and only_row(fresh).deleted_at is None
    fresh.close()


def test_an_orphan_adopted_at_start_up_keeps_the_category_and_the_sm3(store_env) -> None:
    catalog, disk = store_env
    fid = graded_and_digested(catalog, disk)
    with catalog.write() as s:  # the row is lost, the file and its sidecar stay
        s.delete(s.get(StoredFile, fid))
    report = recover(catalog, store_of(catalog, disk).disks)
    assert len(report.adopted) == 1, report.lines()
    back = only_row(catalog)
    assert back.retention_category == "case_evidence"
    assert back.sm3 == hashlib.new("sm3", DATA).hexdigest()


def test_a_category_cleared_by_an_administrator_is_cleared_on_disk(store_env, tmp_path) -> None:
    catalog, disk = store_env
    fid = graded_and_digested(catalog, disk)
    annotate(catalog, fid, by="admin", category="", admin=True)
    assert sidecar_of(catalog, fid).retention_category is None
    fresh = rebuilt(tmp_path, disk)
    back = only_row(fresh)
    assert back.retention_category is None and back.sm3 is not None
    fresh.close()


def test_a_sidecar_missed_while_its_disk_was_away_is_written_at_start_up(
    store_env, monkeypatch
) -> None:
    """The SM3 and the category are recorded even when the sidecar cannot be written then;
    start-up recovery writes the sidecar from the row."""
    import station.platform.sm3 as sm3_mod
    import station.retention.annotations as annotations_mod

    catalog, disk = store_env
    fid = put_file(catalog, disk, data=DATA)

    def fails(*_a: object, **_k: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(annotations_mod, "write_sidecar", fails)
    monkeypatch.setattr(sm3_mod, "write_sidecar", fails)
    annotate(catalog, fid, by="admin", category="obstruction", admin=True)
    Sm3Digester(catalog, threading.Event()).round()
    assert row(catalog, fid).sm3 and row(catalog, fid).retention_category == "obstruction"
    assert sidecar_of(catalog, fid).sm3 is None
    assert sidecar_of(catalog, fid).retention_category is None
    monkeypatch.undo()
    report = recover(catalog, store_of(catalog, disk).disks)
    assert report.sidecars_rewritten, report.lines()
    sc = sidecar_of(catalog, fid)
    assert sc.retention_category == "obstruction"
    assert sc.sm3 == hashlib.new("sm3", DATA).hexdigest()


def test_an_old_sidecar_without_the_fields_is_still_read(store_env, tmp_path) -> None:
    catalog, disk = store_env
    fid = put_file(catalog, disk, data=DATA)
    meta = sidecar_path(disk, row(catalog, fid).rel_path)
    raw = json.loads(meta.read_text())
    for name in ("sm3", "retention_category"):
        raw.pop(name, None)
    meta.write_text(json.dumps(raw))
    sc = read_sidecar(meta)
    assert sc.sm3 is None and sc.retention_category is None
    back = only_row(rebuilt(tmp_path, disk))
    assert back.sm3 is None and back.retention_category is None


@pytest.mark.parametrize(
    "damage",
    [{"sm3": "not a digest"}, {"sm3": 12}, {"retention_category": "forever"},
     {"retention_category": ["case_evidence"]}],
)  # fmt: skip
def test_a_bad_sm3_or_category_in_a_sidecar_is_refused(store_env, damage) -> None:
    catalog, disk = store_env
    fid = put_file(catalog, disk, data=DATA)
    meta = sidecar_path(disk, row(catalog, fid).rel_path)
    meta.write_text(json.dumps({**json.loads(meta.read_text()), **damage}))
    with pytest.raises(SidecarError):
        read_sidecar(meta)


def test_a_corrupt_permanent_copy_replaced_from_the_card_stays_permanent(
    store_env, tmp_path
) -> None:
    """A stored copy in a permanent category rots while the recorder still holds the file:
    the good copy collected again takes over the category, in its row and its sidecar."""
    from test_evidence_review import ROT_NAME, _collect_then_rot

    catalog, _disk = store_env
    ing, _card_file, _stored = _collect_then_rot(store_env, tmp_path)
    with catalog.read() as s:
        (old,) = s.scalars(select(StoredFile)).all()
    annotate(catalog, old.id, by="admin", category="major_incident", admin=True)
    second = ing.collect(f"DCIM/{ROT_NAME}".encode())
    assert second.kind == "stored" and second.file_id != old.id
    good = row(catalog, second.file_id)
    assert good.retention_category == "major_incident"
    assert sidecar_of(catalog, good.id).retention_category == "major_incident"
    assert not RetentionSweeper(catalog, RULES).delete(good.id, "retention period expired")


# --- the one protection rule counts the permanent categories ---------------------------------


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_a_permanent_category_is_protected_wherever_the_rule_is_asked(category) -> None:
    assert is_protected(False, "normal", None, category)
    assert not is_protected(False, "normal", None, None)
    facts = FileFacts(1, "/d1", 10, LONG_AGO, "normal", False, category=category)
    assert facts.protected and facts.permanent
    cand = Candidate(1, "/d1", "a", 10, "0" * 64, "a", b"a", "1", "B1", LONG_AGO, None,
                     "normal", False, None, category)  # fmt: skip
    assert cand.protected  # forwarded among the first
    sc = Sidecar("0" * 64, 0, "100001", "B1", "", "a", LONG_AGO.isoformat(),
                 retention_category=category)  # fmt: skip
    assert sc.protected  # what rebuild and recovery ask


def test_a_sidecar_tombstone_never_deletes_permanent_footage(store_env) -> None:
    """A sidecar marked deleted (a deletion that never committed, or a stale one) of a file
    in a permanent category: rebuild and the orphan pass quarantine it for a person."""
    catalog, disk = store_env
    fid = put_file(catalog, disk, retention_category="case_evidence")
    path = path_of(catalog, fid)
    sc = dataclasses.replace(sidecar_of(catalog, fid), deleted_at=LONG_AGO.isoformat())
    write_sidecar(disk, row(catalog, fid).rel_path, sc)
    fresh = Catalog(disk.parent / "rebuilt.db")
    fresh.migrate()
    report = rebuild(fresh, [disk])
    assert path.exists() and report.quarantined, report.lines()
    report = recover(fresh, store_of(fresh, disk).disks)
    assert not path.exists() and report.quarantined and not report.deletions_finished
    kept = list((disk / ".quarantine").rglob(path.name))
    assert len(kept) == 1 and hashlib.sha256(kept[0].read_bytes()).hexdigest() == sc.sha256
    fresh.close()


def test_a_tombstoned_row_whose_sidecar_shows_a_permanent_category_is_quarantined(
    store_env,
) -> None:
    """The catalog says deleted, the file and its sidecar say permanent: a person decides."""
    catalog, disk = store_env
    fid = put_file(catalog, disk, retention_category="obstruction")
    path = path_of(catalog, fid)
    with catalog.write() as s:
        s.get(StoredFile, fid).deleted_at = LONG_AGO
    report = recover(catalog, store_of(catalog, disk).disks)
    assert not report.deletions_finished and report.quarantined, report.lines()
    assert len(list((disk / ".quarantine").rglob(path.name))) == 1


def test_no_deletion_path_takes_a_permanent_file(store_env) -> None:
    """By a person (confirmed twice), by age, and to make room on full disks."""
    catalog, disk = store_env
    keep = put_file(catalog, disk, data=DATA)
    other = put_file(catalog, disk, "100001_B1_20200101080000_0002.MP4")
    annotate(catalog, keep, by="admin", category="major_case", admin=True)
    sweeper = RetentionSweeper(catalog, RULES)
    with pytest.raises(DeletionRefused, match="permanently") as refused:
        sweeper.delete(keep, "asked", by="900001", confirmed=True)
    assert refused.value.permanent and refused.value.held
    assert not sweeper.delete(keep, "retention period expired")
    paused = sweeper.sweep([DiskFacts(str(disk), total=100, free=0)], paused="clock")
    assert paused.overwrite == [other] and keep not in paused.delete  # overwrite when full
    assert row(catalog, keep).deleted_at is None and path_of(catalog, keep).exists()


# --- through the running daemon ----------------------------------------------------------------


def test_the_console_refuses_to_delete_a_permanent_file(st: StationProc) -> None:
    adm = as_user(st, ADMIN)
    fid = file_ids(st, "800001")[0]
    catalog = Catalog(st.db)
    try:
        annotate(catalog, fid, by=ADMIN[0], category="case_evidence", admin=True)
        r = adm.post(
            f"/ui/api/files/{fid}/delete", {"reason": "clean-up", "confirm_protected": True}
        )
        assert r.status_code == 409, r.text
        stored = st.query("SELECT disk, rel_path, deleted_at FROM files WHERE id = ?", fid)[0]
        assert stored[2] is None and (st.root / stored[0] / stored[1]).exists()
        (api,) = [f for f in st.api("/api/v1/files")["items"] if f["id"] == fid]
        assert api["retention_category"] == "case_evidence"
    finally:
        annotate(catalog, fid, by=ADMIN[0], category="", admin=True)
        catalog.close()


def test_the_console_shows_a_permanent_file_as_protected(st: StationProc) -> None:
    adm = as_user(st, ADMIN)
    fid = file_ids(st, "800001")[0]
    catalog = Catalog(st.db)
    try:
        assert adm.get(f"/ui/api/files/{fid}").json()["protected"] is False
        annotate(catalog, fid, by=ADMIN[0], category="major_incident", admin=True)
        assert adm.get(f"/ui/api/files/{fid}").json()["protected"] is True
    finally:
        annotate(catalog, fid, by=ADMIN[0], category="", admin=True)
        catalog.close()
