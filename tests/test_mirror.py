"""The second copy of protected footage on the other data disk (station/store/mirror.py, issue 17).

A real catalog and two real disk folders, identified as the daemon does; the worker, the
scrubber and retention are driven in process, one round at a time.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from sqlalchemy import select
from test_evidence_safety import RULES, new_disk, path_of, put_file, row, sidecar_of, store_of

from station.catalog import Catalog, Event
from station.health.alarms import AlarmBook
from station.retention.annotations import annotate
from station.retention.sweeper import RetentionSweeper
from station.store.mirror import Mirror, mirror_path
from station.store.recovery import rebuild, recover
from station.store.scrubber import Scrubber

DATA = os.urandom(70_000)


def setup(store_env, tmp_path: Path) -> tuple[Catalog, Path, Path, Mirror, Scrubber]:
    catalog, disk = store_env
    disk2 = new_disk(catalog, tmp_path / "disk2")
    store = store_of(catalog, disk, disk2)
    stop = threading.Event()
    alarms = AlarmBook(catalog)
    mirror = Mirror(catalog, store, alarms, stop=stop)
    scrub = Scrubber(catalog, alarms, mb_s=0, every_days=30, busy=lambda: False, stop=stop,
                     mirror=mirror)  # fmt: skip
    return catalog, disk, disk2, mirror, scrub


def alarms_of(catalog: Catalog, code: str) -> list[str]:
    return [a.message for a in AlarmBook(catalog).active() if a.code == code]


def kinds(catalog: Catalog, kind: str) -> list[str]:
    with catalog.read() as s:
        return [e.message for e in s.scalars(select(Event).where(Event.kind == kind))]


def test_protected_files_get_a_verified_second_copy_on_the_other_disk(store_env, tmp_path):
    catalog, disk, disk2, mirror, _ = setup(store_env, tmp_path)
    imp = put_file(catalog, disk, "100001_B1_20200101080000_0001_IMP.MP4", data=DATA,
                   important=True)  # fmt: skip
    plain = put_file(catalog, disk, "100001_B1_20200101080000_0002.MP4")
    assert mirror.round() == 1
    copy = mirror_path(disk2, row(catalog, imp).sha256)
    assert copy.read_bytes() == DATA
    assert sidecar_of(catalog, imp).mirror_disk == str(disk2)
    assert sidecar_of(catalog, plain).mirror_disk is None
    assert len(kinds(catalog, "file_mirrored")) == 1
    assert mirror.round() == 0  # nothing twice
    # graded later (a hold, a grade, a permanent category): mirrored at the next round
    annotate(catalog, plain, by="900001", legal_hold="XS-1", admin=True)
    assert mirror.round() == 1
    assert mirror_path(disk2, row(catalog, plain).sha256).exists()
    # the second copies are no footage of their own: recovery and rebuild leave them alone
    report = recover(catalog, mirror.store.disks)
    assert not report.quarantined and not report.adopted, report.lines()
    fresh = Catalog(tmp_path / "rebuilt.db")
    fresh.migrate()
    report = rebuild(fresh, [disk, disk2])
    assert len(report.adopted) == 2 and not report.quarantined, report.lines()
    fresh.close()


def test_a_corrupt_or_lost_primary_is_restored_from_the_second_copy(store_env, tmp_path):
    catalog, disk, _disk2, mirror, scrub = setup(store_env, tmp_path)
    fid = put_file(catalog, disk, data=DATA, level="evidence")
    mirror.round()
    path = path_of(catalog, fid)
    with open(path, "r+b") as f:  # bit rot on the primary disk
        f.seek(500)
        f.write(b"\x00" * 32)
    assert not scrub.check(row(catalog, fid))
    assert path.read_bytes() == DATA
    assert len(list((disk / ".quarantine").rglob(path.name))) == 1  # the bad bytes kept aside
    assert alarms_of(catalog, "store_copy_restored") and not alarms_of(catalog, "store_corrupt")
    assert kinds(catalog, "file_restored")
    path.unlink()  # lost outright
    assert not scrub.check(row(catalog, fid))
    assert path.read_bytes() == DATA
    assert scrub.check(row(catalog, fid))  # good again


def test_a_lost_or_corrupt_second_copy_is_written_again(store_env, tmp_path):
    catalog, disk, disk2, mirror, scrub = setup(store_env, tmp_path)
    fid = put_file(catalog, disk, data=DATA, retention_category="case_evidence")
    mirror.round()
    copy = mirror_path(disk2, row(catalog, fid).sha256)
    copy.write_bytes(b"rotten" + DATA[6:])
    assert scrub.check(row(catalog, fid))  # the primary is good
    assert copy.read_bytes() == DATA
    assert alarms_of(catalog, "store_copy_restored")
    copy.unlink()
    scrub.check(row(catalog, fid))
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == row(catalog, fid).sha256


def test_without_a_good_copy_the_scrubber_raises_store_corrupt(store_env, tmp_path):
    catalog, disk, _disk2, _mirror, scrub = setup(store_env, tmp_path)
    fid = put_file(catalog, disk, data=DATA, level="important")  # never mirrored yet
    path_of(catalog, fid).write_bytes(b"x" * len(DATA))
    assert not scrub.check(row(catalog, fid))
    assert alarms_of(catalog, "store_corrupt")


def test_deleting_the_file_removes_its_second_copy(store_env, tmp_path):
    catalog, disk, disk2, mirror, _ = setup(store_env, tmp_path)
    fid = put_file(catalog, disk, data=DATA, level="evidence")
    mirror.round()
    copy = mirror_path(disk2, row(catalog, fid).sha256)
    assert copy.exists()
    assert RetentionSweeper(catalog, RULES).delete(fid, "asked", by="900001", confirmed=True)
    assert not copy.exists() and not path_of(catalog, fid).exists()


def test_one_disk_keeps_one_copy(store_env):
    catalog, disk = store_env
    fid = put_file(catalog, disk, data=DATA, important=True)
    mirror = Mirror(catalog, store_of(catalog, disk), AlarmBook(catalog), stop=threading.Event())
    assert mirror.round() == 0
    assert sidecar_of(catalog, fid).mirror_disk is None
    assert not (disk / ".mirror").exists()


def test_a_corrupt_primary_is_never_mirrored(store_env, tmp_path, monkeypatch):
    """Its bytes no longer match its hash: no second copy is made of them (and the copy is
    not tried again at every round)."""
    import station.store.mirror as mirror_mod

    catalog, disk, disk2, mirror, _ = setup(store_env, tmp_path)
    fid = put_file(catalog, disk, data=DATA, important=True)
    path_of(catalog, fid).write_bytes(b"y" * len(DATA))
    assert mirror.round() == 0
    sha = row(catalog, fid).sha256
    assert not mirror_path(disk2, sha).exists()
    assert not list((disk2 / ".mirror").rglob("*")) or all(
        p.is_dir() for p in (disk2 / ".mirror").rglob("*")
    )  # no temp left either
    assert sidecar_of(catalog, fid).mirror_disk is None
    reads = []
    monkeypatch.setattr(mirror_mod, "_copy_verified", lambda *a: reads.append(a))
    mirror.round()
    assert reads == []


def test_a_failed_disks_protected_files_live_on_from_their_second_copies(store_env, tmp_path):
    """The primary disk dies and is replaced (`station disks adopt`), then retired: its
    mirrored files stay catalogued, from their second copies; the rest are lost as before.
    The worker then gives them a new second copy on the replacement."""
    from station.store.identity import DiskBook

    catalog, disk, disk2, mirror, _ = setup(store_env, tmp_path)
    kept = put_file(catalog, disk, data=DATA, level="evidence", case_no="XS-7")
    lost = put_file(catalog, disk, "100001_B1_20200101080000_0002.MP4")  # not protected
    assert mirror.round() == 1
    book = DiskBook(catalog, "T1")
    old = next(u for u, p in book.known().items() if p == str(disk))
    os.rename(disk, tmp_path / "dead-disk")  # the disk dies, is thrown away
    disk.mkdir()
    book.adopt(mirror.store.disks[0], "900001")  # its replacement, in the same bay
    assert book.retire(old, "900001") == 1  # only the unprotected file is lost
    f = row(catalog, kept)
    assert f.deleted_at is None and f.disk == str(disk2) and f.case_no == "XS-7"
    assert path_of(catalog, kept).read_bytes() == DATA
    assert sidecar_of(catalog, kept).level == "evidence"  # a rebuild keeps it too
    assert not mirror_path(disk2, f.sha256).exists()  # it is the stored copy now
    assert row(catalog, lost).deleted_at is not None
    assert alarms_of(catalog, "store_copy_restored") and kinds(catalog, "file_restored")
    assert mirror.round() == 1  # a new second copy, on the replacement disk
    assert mirror_path(disk, f.sha256).read_bytes() == DATA
    assert sidecar_of(catalog, kept).mirror_disk == str(disk)
    report = recover(catalog, mirror.store.disks)
    assert not report.quarantined and not report.adopted, report.lines()


def test_a_second_copy_whose_disk_is_away_raises_nothing_until_it_is_back(store_env, tmp_path):
    from station.store.disks import MARKER

    catalog, disk, disk2, mirror, scrub = setup(store_env, tmp_path)
    fid = put_file(catalog, disk, data=DATA, important=True)
    mirror.round()
    marker = (disk2 / MARKER).read_bytes()
    (disk2 / MARKER).unlink()  # the disk is away (its marker no longer where it was)
    assert scrub.check(row(catalog, fid))
    assert not alarms_of(catalog, "store_copy_restored")
    assert mirror.round() == 0
    (disk2 / MARKER).write_bytes(marker)
