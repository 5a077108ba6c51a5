"""Evidence safety, found by an adversarial review of the second pass: each test failed on
the code it reviewed, and passes on the fix."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select
from test_evidence_safety import Ingest, card_with, new_disk, put_file, row, store_of

from station import faults as faults_mod
from station.catalog import Catalog, StoredFile
from station.health.clockguard import RELEASED, ClockGuard
from station.ingest.transfer import FileChanged, VerifyFailed
from station.retention.sweeper import DiskFacts, RetentionSweeper, Rules
from station.store.disks import MARKER, Store
from station.store.identity import DiskBook
from station.store.recovery import recover
from station.store.sidecar import read_sidecar, sidecar_path

UNSYNCED = lambda: None  # noqa: E731 - the kernel cannot tell: no NTP (these scenarios)


def test_two_disks_swapping_mount_points_keep_their_own_rows(store_env, tmp_path) -> None:
    """Disk X at disk1 and Y at disk2 come back swapped (mount order changed): each file's
    row must follow its own disk, not be moved twice onto the wrong one."""
    catalog, d1 = store_env
    d2 = new_disk(catalog, tmp_path / "disk2")
    a = put_file(catalog, d1, "100001_B1_20200101080000_0001.MP4")
    b = put_file(catalog, d2, "100001_B1_20200101080000_0002.MP4")
    tmp = tmp_path / "swap"
    os.rename(d1, tmp)
    os.rename(d2, d1)
    os.rename(tmp, d2)  # X is now at disk2, Y at disk1
    report = recover(catalog, store_of(catalog, d1, d2).disks)
    for fid in (a, b):
        f = row(catalog, fid)
        assert (Path(f.disk) / f.rel_path).exists(), f"row {fid} points at {f.disk}"
    assert not report.missing and not report.duplicates


def test_a_new_station_never_marks_a_bare_mount_point_as_its_disk(tmp_path) -> None:
    """First boot of a new station, disk 2 did not mount: /srv/disk2 is an empty folder on
    the system disk (same filesystem as its parent: no mount point). It must not be taken
    into use, or footage goes to the system disk and is hidden when the disk mounts."""
    catalog = Catalog(tmp_path / "catalog.db")
    catalog.migrate()
    bare = tmp_path / "srv-disk2"
    bare.mkdir()
    assert not os.path.ismount(bare)
    store = Store([bare], 0)
    why = DiskBook(catalog, "T1").identify(store.disks[0])
    try:
        assert why is not None, "an empty folder that is no mount point was taken into use"
        assert list(bare.iterdir()) == []
    finally:
        catalog.close()


def test_deleting_the_row_of_a_lost_disk_never_removes_another_file_at_its_path(
    store_env, tmp_path
) -> None:
    """Disk 1 fails and is replaced at the same path (`station disks adopt`). A recorder whose
    RTC battery died repeats a file name the same day; the new recording is stored on the
    new disk at the very path a row of the lost disk still names, and graded evidence.
    Deleting the lost disk's row (retention, or an administrator cleaning up a 'missing'
    file) must not remove the evidence file at that path."""
    from test_evidence_safety import Ingest, card_with

    from station.retention.annotations import annotate
    from station.retention.sweeper import RetentionSweeper, Rules

    catalog, disk = store_env
    name = "100001_B1_20000101000000_0001.MP4"  # the clock reset to 2000-01-01 at boot
    root = card_with(tmp_path, name, os.urandom(50_000))
    ing = Ingest(catalog, disk, root)
    first = ing.collect(f"DCIM/{name}".encode())
    assert first.kind == "stored"
    # the disk fails; a new one is mounted at the same path and taken into use
    os.rename(disk, disk.with_name("disk1.dead"))
    disk.mkdir()
    DiskBook(catalog, "T1").adopt(ing.store.disks[0], "900001")
    # the recorder (clock reset again) records a new file under the same name
    (root / "DCIM" / name).write_bytes(os.urandom(60_000))
    second = ing.collect(f"DCIM/{name}".encode())
    assert second.kind == "stored"
    assert row(catalog, second.file_id).rel_path == row(catalog, first.file_id).rel_path
    annotate(catalog, second.file_id, by="admin", level="evidence", admin=True)
    # the first row's file is missing; it is deleted (by an administrator, or when it expires)
    RetentionSweeper(catalog, Rules(days={"normal": 1})).delete(
        first.file_id, "file lost with the failed disk", by="900001"
    )
    kept = Path(row(catalog, second.file_id).disk) / row(catalog, second.file_id).rel_path
    assert kept.exists(), "the evidence file stored at the same path was deleted"
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == second.sha256


def test_rebuild_never_marks_a_bare_mount_point(store_env, tmp_path) -> None:
    """`station catalog rebuild` run while disk 2 did not mount: the bare mount point must
    not be marked and recorded as a disk of the rebuilt catalog (the daemon would then
    write footage onto the system disk under it)."""
    from station.store.recovery import rebuild

    catalog, disk = store_env
    put_file(catalog, disk)
    bare = tmp_path / "disk2"
    bare.mkdir()  # disk 2 did not mount
    fresh = Catalog(tmp_path / "rebuilt.db")
    fresh.migrate()
    try:
        rebuild(fresh, [disk, bare])
        assert list(bare.iterdir()) == [], "rebuild wrote a marker into an empty mount point"
        store = Store([disk, bare], 0)
        assert DiskBook(fresh, "T1").identify(store.disks[1]) is not None
    finally:
        fresh.close()


def test_a_hold_can_be_placed_while_the_files_disk_is_unmounted(store_env) -> None:
    """A court order arrives while the file's disk is away (unmounted, being serviced). The
    hold must be recorded (the row is the truth; the sidecar follows at start-up), so the
    sweep cannot delete the file and the returning disk keeps it."""
    from station.retention.annotations import AnnotationError, annotate
    from station.retention.sweeper import RetentionSweeper, Rules

    catalog, disk = store_env
    fid = put_file(catalog, disk)  # collected in 2020: expired under a 1-day period
    real = disk.with_name("disk1.real")
    os.rename(disk, real)
    disk.mkdir()  # unmounted
    try:
        annotate(catalog, fid, by="admin", legal_hold="XS-9", admin=True)
    except AnnotationError as e:
        print("hold refused:", e)
    from station.retention.sweeper import DiskFacts

    RetentionSweeper(catalog, Rules(days={"normal": 1})).sweep([DiskFacts(str(disk), 10**12, 0)])
    os.rmdir(disk)
    os.rename(real, disk)
    recover(catalog, store_of(catalog, disk).disks)
    f = row(catalog, fid)
    assert (disk / f.rel_path).exists(), "the file the administrator tried to hold was deleted"
    assert f.legal_hold == "XS-9" and f.deleted_at is None


def test_a_file_stored_on_an_unmounted_disk_is_not_stored_a_second_time(
    store_env, tmp_path
) -> None:
    """The card clear after a commit was cut short (unplugged), so the card still holds a
    stored file; at the next docking its disk is unmounted. The file must not become a
    second live row on the other disk (stored once) — keep it on the card instead."""

    from test_evidence_safety import Ingest, card_with

    catalog, d1 = store_env
    d2 = new_disk(catalog, tmp_path / "disk2")
    name = "100001_B1_20261201080000_0007.MP4"
    data = os.urandom(40_000)
    root = card_with(tmp_path, name, data)
    ing = Ingest(catalog, [d1, d2], root)
    card, ingest = ing.card, ing.docking

    fi = ingest()
    fi._delete_from_card = lambda *a, **k: (_ for _ in ()).throw(OSError("unplugged"))
    cf = next(f for f in card.list_files())
    with pytest.raises(OSError):
        fi.copy(cf)()
    assert (root / "DCIM" / name).exists()
    os.rename(d1, d1.with_name("disk1.away"))  # disk 1 unmounted
    d1.mkdir()
    fi = ingest()
    try:
        fi.copy(next(f for f in card.list_files()))()
    except Exception as e:  # refusing (keeping it on the card) is fine
        print("kept:", e)
    with catalog.read() as s:
        live = s.scalars(select(StoredFile).where(StoredFile.deleted_at.is_(None))).all()
    assert len(live) == 1, f"{len(live)} live rows for one card file"


def test_a_sidecar_rewritten_from_its_row_keeps_clock_untrusted(store_env, tmp_path) -> None:
    """A file collected while the station clock could not be believed (dead RTC battery:
    collected_at years in the past) is never deleted by age. If its sidecar is damaged,
    start-up rewrites it from the row; the rewrite must keep clock_untrusted, or a later
    `catalog rebuild` makes it an ordinary file long expired, and the sweep deletes it."""
    from station.retention.sweeper import RetentionSweeper, Rules
    from station.store.recovery import rebuild
    from station.store.sidecar import read_sidecar, sidecar_path

    catalog, disk = store_env
    fid = put_file(catalog, disk, clock_untrusted=True)
    f = row(catalog, fid)
    assert f.clock_untrusted
    sidecar_path(disk, f.rel_path).write_bytes(b'{"torn')  # damaged
    report = recover(catalog, store_of(catalog, disk).disks)
    assert report.sidecars_rewritten
    assert read_sidecar(sidecar_path(disk, f.rel_path)).clock_untrusted
    fresh = Catalog(tmp_path / "rebuilt.db")
    fresh.migrate()
    try:
        rebuild(fresh, [disk])
        plan = RetentionSweeper(fresh, Rules(days={"normal": 180})).sweep([])
        assert not plan.expired
        assert (disk / f.rel_path).exists()
    finally:
        fresh.close()


def test_a_power_cut_between_marker_and_record_does_not_lock_out_an_upgraded_disk(
    store_env, monkeypatch
) -> None:
    """Upgrade from a station without markers: the disk with footage gets its marker, then
    the catalog records it. A power cut between the two must not leave the station's own
    disk refused as 'another station's disk' at the next start."""
    from station.store import identity as disks_mod

    catalog, disk = store_env
    put_file(catalog, disk)
    with catalog.write() as s:  # as before markers: no disks known, no marker on the disk
        from station.catalog import StoredDisk

        for d in s.scalars(select(StoredDisk)):
            s.delete(d)
    (disk / ".station-disk.json").unlink()
    real = disks_mod.DiskBook._record

    def cut(self, *a, **k):
        raise SystemExit("power cut")

    monkeypatch.setattr(disks_mod.DiskBook, "_record", cut)
    with pytest.raises(SystemExit):
        DiskBook(catalog, "T1").identify(Store([disk], 0).disks[0])
    monkeypatch.setattr(disks_mod.DiskBook, "_record", real)
    why = DiskBook(catalog, "T1").identify(Store([disk], 0).disks[0])
    assert why is None, why


def test_one_pathological_sidecar_stops_neither_the_sweep_nor_rebuild(store_env, tmp_path) -> None:
    """A sidecar damaged into deeply nested JSON makes json.loads raise RecursionError, which
    read_sidecar does not turn into SidecarError: the sweep stops at that file (nothing after
    it is deleted, the disks fill) and `catalog rebuild` dies halfway (old catalog moved
    aside)."""
    from station.retention.sweeper import RetentionSweeper, Rules
    from station.store.recovery import rebuild
    from station.store.sidecar import sidecar_path

    catalog, disk = store_env
    bad = put_file(catalog, disk, "100001_B1_20200101080000_0001.MP4")
    good = put_file(catalog, disk, "100001_B1_20200101080000_0002.MP4")
    sidecar_path(disk, row(catalog, bad).rel_path).write_text("[" * 200_000 + "]" * 200_000)
    from station.retention.sweeper import DiskFacts

    RetentionSweeper(catalog, Rules(days={"normal": 1})).sweep([DiskFacts(str(disk), 10**12, 0)])
    assert row(catalog, good).deleted_at is not None
    fresh = Catalog(tmp_path / "rebuilt.db")
    fresh.migrate()
    try:
        rebuild(fresh, [disk])
    finally:
        fresh.close()


def test_a_replugged_recorder_cannot_commit_the_same_job_twice(
    store_env, tmp_path, monkeypatch
) -> None:
    """The recorder is unplugged while its last file is in its finishing step (verified,
    being linked and committed: fsyncs on a busy disk) and docked again at another port.
    The new docking finds the job 'verified' and finishes it too: nothing makes the two
    finishing steps exclusive, and store_row does not check the job is still 'verified',
    so one card file becomes two live rows."""
    from test_evidence_safety import Ingest, card_with

    from station.ingest import transfer as ingest_mod

    catalog, disk = store_env
    name = "100001_B1_20261201080000_0011.MP4"
    root = card_with(tmp_path, name, os.urandom(80_000))
    ing = Ingest(catalog, disk, root)
    from station.ingest.transfer import FileIngest

    second = FileIngest(ing.fi.catalog, ing.fi.store, ing.card, ing.fi.owner, chunk=1 << 20,
                        sync_every=1 << 30, tz=None, stop=ing.fi.stop,
                        progress=lambda n: None)  # fmt: skip
    real_point = ingest_mod.faults.crashpoint
    raced = []

    def linked_not_yet_committed(point, *a, **k):
        real_point(point, *a, **k)
        if point == "after_link" and not raced:  # the second docking runs now
            raced.append(True)
            cf = next(f for f in ing.card.list_files())
            try:
                second.copy(cf)()
            except Exception as e:
                print("second docking:", repr(e))

    monkeypatch.setattr(ingest_mod.faults, "crashpoint", linked_not_yet_committed)
    try:
        ing.collect(f"DCIM/{name}".encode())
    except Exception as e:
        print("first docking:", repr(e))
    with catalog.read() as s:
        live = s.scalars(select(StoredFile).where(StoredFile.deleted_at.is_(None))).all()
    assert len(live) == 1, f"{len(live)} live rows for one card file"


RULES90 = Rules(days={"normal": 90, "important": None, "evidence": None})


# --- review 12: found by an adversarial review of the second pass --------------------------


def test_a_collection_after_a_clock_jump_does_not_unpause_retention(
    store_env, tmp_path, monkeypatch
) -> None:
    """The station clock jumps 3 years ahead (not NTP-synchronised). The hourly sweep pauses
    (correct), but a recorder docked before the next sweep is collected through
    ClockGuard.untrusted(), which moves the high-water time up to the jumped clock with no
    jump check. The next sweep then sees no jump and deletes every normal file by age."""
    import station.ingest.transfer as ingest_mod

    catalog, disk = store_env
    t0 = RELEASED + dt.timedelta(days=30)
    guard = ClockGuard(catalog, max_jump_days=2)
    assert guard.untrusted(t0) is None
    assert guard.sweep_pause(t0, synced=False) is None

    name = "100001_B1_20261201080000_0001.MP4"
    root = card_with(tmp_path, name, os.urandom(10_000))
    ing = Ingest(catalog, disk, root, clock=guard)
    old = put_file(catalog, disk, "100001_B1_20261201070000_0009.MP4")
    with catalog.write() as s:  # collected yesterday, as the trusted clock said
        s.get(StoredFile, old).collected_at = t0 - dt.timedelta(days=1)

    jumped = t0 + dt.timedelta(days=3 * 365)
    assert guard.sweep_pause(jumped, synced=False)  # paused: right
    monkeypatch.setattr(ingest_mod, "utcnow", lambda: jumped)
    ing.collect(f"DCIM/{name}".encode())  # a recorder docked under the jumped clock

    later = jumped + dt.timedelta(hours=1)
    paused = guard.sweep_pause(later, synced=False)
    RetentionSweeper(catalog, RULES90).sweep(
        [DiskFacts(str(disk), 10**12, 10**11)], now=later, paused=paused
    )
    with catalog.read() as s:
        f = s.get(StoredFile, old)
    assert f.deleted_at is None, f"deleted by age under a clock 3 years ahead (paused={paused})"


def test_bytes_appended_while_the_deletion_is_logged_keep_the_file_on_the_card(
    store_env, tmp_path
) -> None:
    """_delete_from_card stats the card file, then commits the 'clearing' state and the
    card_file_deleted event (an fsynced SQLite commit behind the process-wide write lock and
    up to a 30 s busy timeout when the CLI or a sweep holds the catalog), and only then
    unlinks. Bytes the recorder appends in that window are deleted uncopied (item 9)."""
    catalog, disk = store_env
    name = "100001_B1_20261201080000_0001.MP4"
    root = card_with(tmp_path, name, os.urandom(300_000))
    ing = Ingest(catalog, disk, root)
    real = ing.fi._clearing

    def slow_commit(job_id, state, *args):
        real(job_id, state, *args)
        if state == "clearing":  # the recorder writes on while the commit waits
            with open(root / "DCIM" / name, "ab") as f:
                f.write(b"late bytes")

    ing.fi._clearing = slow_commit
    with pytest.raises(FileChanged):
        ing.collect(f"DCIM/{name}".encode())
    assert (root / "DCIM" / name).exists(), "10 appended bytes deleted from the card uncopied"


def _collect_then_rot(store_env, tmp_path, protect: bool = False) -> tuple[Ingest, Path, Path]:
    """A file collected (graded evidence under a hold if `protect`), its stored copy then
    rotten on the store disk while the recorder still holds it; a new docking ready."""
    from station.retention.annotations import annotate

    catalog, disk = store_env
    data = os.urandom(50_000)
    root = card_with(tmp_path, ROT_NAME, data)
    ing = Ingest(catalog, disk, root)
    first = ing.collect(f"DCIM/{ROT_NAME}".encode())
    if protect:
        annotate(catalog, first.file_id, by="900001", level="evidence", legal_hold="XS-9",
                 case_no="XS-9", admin=True)  # fmt: skip
    with catalog.read() as s:
        old = s.get(StoredFile, first.file_id)
        stored = Path(old.disk) / old.rel_path
    with open(stored, "r+b") as f:  # bit rot on the store disk
        f.seek(1000)
        f.write(b"\x00" * 16)
    (root / "DCIM" / ROT_NAME).write_bytes(data)  # the recorder still holds it
    ing.fi = ing.docking()
    return ing, root / "DCIM" / ROT_NAME, stored


ROT_NAME = "100001_B1_20261201080000_0001.MP4"


def test_a_corrupt_protected_copy_replaced_from_the_card_keeps_its_protection(
    store_env, tmp_path
) -> None:
    """A held, evidence-graded file whose stored bytes rot is collected again from the card:
    the good copy takes over the grade and hold (row and sidecar), the corrupt row is
    tombstoned, and one live row remains."""
    catalog, _disk = store_env
    ing, _card_file, _stored = _collect_then_rot(store_env, tmp_path, protect=True)
    second = ing.collect(f"DCIM/{ROT_NAME}".encode())
    assert second.kind == "stored"
    with catalog.read() as s:
        live = s.scalars(select(StoredFile).where(StoredFile.deleted_at.is_(None))).all()
        good = s.get(StoredFile, second.file_id)
        facts = (len(live), good.level, good.legal_hold)
    assert facts == (1, "evidence", "XS-9"), facts
    sc = read_sidecar(sidecar_path(Path(good.disk), good.rel_path))
    assert (sc.level, sc.legal_hold) == ("evidence", "XS-9")  # a rebuild keeps it too


def test_a_card_file_with_a_corrupt_and_a_good_stored_copy_is_cleared_as_a_duplicate(
    store_env, tmp_path
) -> None:
    """After the replacement the card shows the file once more: it is cleared as a duplicate
    of the good copy, not copied again (and again) beside it."""
    from station.ingest.transfer import AlreadyStored

    ing, card_file, stored = _collect_then_rot(store_env, tmp_path)
    data = card_file.read_bytes()
    ing.collect(f"DCIM/{ROT_NAME}".encode())
    card_file.write_bytes(data)  # once more (the delete failed again)
    ing.fi = ing.docking()
    for _ in range(3):
        try:
            out = ing.collect(f"DCIM/{ROT_NAME}".encode())
        except AlreadyStored:
            continue
        assert out.kind == "duplicate"
        break
    else:
        copies = sorted(p.name for p in stored.parent.iterdir())
        raise AssertionError(f"never settled (AlreadyStored x3); files on disk: {copies}")


def _swap(a: Path, b: Path) -> None:
    """Two disks come back on each other's mount points (maintenance, mount order)."""
    os.rename(a, a.with_name("swap"))
    os.rename(b, a)
    os.rename(a.with_name("swap"), b)


def _live_where(catalog: Catalog) -> dict[str, bool]:
    with catalog.read() as s:
        live = s.scalars(select(StoredFile).where(StoredFile.deleted_at.is_(None))).all()
        return {f.name: (Path(f.disk) / f.rel_path).exists() for f in live}


@pytest.mark.parametrize("when", ["between_files", "after_verify", "after_link"])
def test_disks_that_swap_mount_points_while_the_station_runs_keep_their_footage(
    store_env, tmp_path, monkeypatch, when
) -> None:
    """A disk that is swapped for another marked disk under a running station is no longer
    'present' until it is identified again (the marker it was identified by is gone), so
    nothing is written or committed under the wrong identity: every file ends up with one
    live row that points at its bytes, and nothing leaves the card uncommitted."""
    catalog, d1 = store_env
    d2 = new_disk(catalog, tmp_path / "disk2")
    a, b = "100001_B1_20261201080000_0001.MP4", "100001_B1_20261201090000_0002.MP4"
    root = card_with(tmp_path, a, os.urandom(10_000))
    (root / "DCIM" / b).write_bytes(os.urandom(20_000))
    ing = Ingest(catalog, [d1, d2], root)
    ing.collect(f"DCIM/{a}".encode())
    if when == "between_files":
        _swap(d1, d2)
        assert not any(d.present() for d in ing.store.disks)
        book = DiskBook(catalog, "T1")
        assert all(book.identify(d) is None for d in ing.store.disks)  # the periodic check
        ing.collect(f"DCIM/{b}".encode())
        assert not (root / "DCIM" / b).exists()
    else:
        real = faults_mod.crashpoint

        def swap_there(name: str) -> None:
            if name == when:
                _swap(d1, d2)
            real(name)

        monkeypatch.setattr(faults_mod, "crashpoint", swap_there)
        with pytest.raises((VerifyFailed, FileNotFoundError)):  # refused, or the temp is gone
            ing.collect(f"DCIM/{b}".encode())
        assert (root / "DCIM" / b).exists(), "the card was cleared into the wrong disk"
    report = recover(catalog, store_of(catalog, d1, d2).disks)  # the next start
    assert _live_where(catalog) == {a: True, b: True}, report.lines()


def test_a_replaced_disk_that_comes_back_keeps_its_rows(store_env, tmp_path) -> None:
    """An administrator takes a new disk into use where a dead one was (`station disks
    adopt`); the old disk is then put back (a loose cable, a repaired disk). Its rows went
    with it and come back with it: none point into the new disk meanwhile, and the orphan
    pass never takes its files for second copies."""
    catalog, disk = store_env
    fid = put_file(catalog, disk)
    os.rename(disk, tmp_path / "old-disk")  # gone from the bay
    disk.mkdir()
    (disk / "lost+found").mkdir()
    book = DiskBook(catalog, "T1")
    new = Store([disk], 0).disks[0]
    book.adopt(new, "900001")  # the replacement
    assert row(catalog, fid).disk != str(disk), "the old disk's row points into the new one"
    os.rename(disk, tmp_path / "new-disk")  # the replacement out, the old disk back
    os.rename(tmp_path / "old-disk", disk)
    again = Store([disk], 0)
    assert book.identify(again.disks[0]) is None
    report = recover(catalog, again.disks)
    f = row(catalog, fid)
    assert (f.disk, (Path(f.disk) / f.rel_path).exists()) == (str(disk), True), report.lines()
    assert not report.quarantined and not report.duplicates


def test_a_clock_stepped_forward_after_collecting_marks_those_files_untrusted(
    store_env, tmp_path, monkeypatch
) -> None:
    """A dead RTC battery: timesyncd restored the clock to the last shutdown (not 1970, not
    earlier than H, so nothing looked wrong), the station collected, then NTP answered and
    stepped the clock 60 days forward. Those files were stamped 60 days early: a 30-day
    sweep under the synchronised clock must not delete them the same day. The step shows
    as the wall clock moving against the boot clock, and also when the daemon was
    restarted in between."""
    import station.ingest.transfer as ingest_mod

    catalog, disk = store_env
    uptime = [30.0]
    t0 = RELEASED + dt.timedelta(days=30)  # what the restored clock reads
    guard = ClockGuard(catalog, 2, boot=lambda: uptime[0], boot_id="boot-1", synced=UNSYNCED)
    assert guard.sweep_pause(t0 - dt.timedelta(minutes=5), synced=None) is None
    name = "100001_B1_20261231080000_0001.MP4"
    root = card_with(tmp_path, name, os.urandom(10_000))
    monkeypatch.setattr(ingest_mod, "utcnow", lambda: t0)
    done = Ingest(catalog, disk, root, clock=guard).collect(f"DCIM/{name}".encode())
    assert not row(catalog, done.file_id).clock_untrusted  # nothing to see yet
    other_boot = put_file(catalog, disk, "100001_B1_20261201070000_0009.MP4")  # trusted
    with catalog.write() as s:
        s.get(StoredFile, other_boot).collected_at = t0 - dt.timedelta(days=20)

    uptime[0] += 300  # five minutes later NTP steps the clock 60 days forward
    now = t0 + dt.timedelta(days=60, minutes=5)
    restarted = ClockGuard(
        catalog, 2, boot=lambda: uptime[0], boot_id="boot-1", synced=lambda: None
    )
    assert "forward" in (restarted.check_step(now) or "")
    f = row(catalog, done.file_id)
    assert f.clock_untrusted
    assert read_sidecar(sidecar_path(disk, f.rel_path)).clock_untrusted
    paused = restarted.sweep_pause(now, synced=True)
    plan = RetentionSweeper(catalog, Rules(days={"normal": 30})).sweep(
        [DiskFacts(str(disk), 10**12, 10**11)], now=now, paused=paused
    )
    assert row(catalog, done.file_id).deleted_at is None, "deleted by a clock 60 days early"
    assert list(plan.delete) == [other_boot]  # the rest ages as before
    assert restarted.check_step(now + dt.timedelta(seconds=1)) is None  # once


@pytest.mark.parametrize("state", ["stored", "clearing", "cleared"])
def test_a_staging_file_whose_final_link_was_lost_is_put_back(store_env, tmp_path, state) -> None:
    """A power cut lost the final name of a committed file but not its staging name: that
    staging file is the only copy, whatever the job's card clearing had got to."""
    from station.catalog import IngestJob

    catalog, disk = store_env
    name = "100001_B1_20261201080000_0001.MP4"
    data = os.urandom(30_000)
    done = Ingest(catalog, disk, card_with(tmp_path, name, data)).collect(f"DCIM/{name}".encode())
    f = row(catalog, done.file_id)
    with catalog.write() as s:
        job = s.scalars(select(IngestJob).where(IngestJob.final_path == f.rel_path)).one()
        job.state = state
        temp = Path(job.temp_path)
    os.rename(disk / f.rel_path, temp)
    report = recover(catalog, store_of(catalog, disk).disks)
    assert (disk / f.rel_path).read_bytes() == data, report.lines()
    assert not report.staging_removed


@pytest.mark.parametrize("path", ["stored", "duplicate"])
def test_a_card_file_is_cleared_only_while_its_stored_row_is_live(
    store_env, tmp_path, monkeypatch, path
) -> None:
    """The stored copy is deleted (an administrator, a sweep) between the check that found it
    and the card's delete: the recorder's copy is then the only one, and stays."""
    from station.ingest.transfer import FileIngest, KeptOnCard
    from station.retention.sweeper import RetentionSweeper

    catalog, disk = store_env
    name = "100001_B1_20261201080000_0001.MP4"
    root = card_with(tmp_path, name, os.urandom(30_000))
    ing = Ingest(catalog, disk, root)
    if path == "duplicate":  # stored before, its card clear cut short
        monkeypatch.setattr(FileIngest, "_delete_from_card", lambda *a, **k: None)
        ing.collect(f"DCIM/{name}".encode())
        monkeypatch.undo()
        ing.fi = ing.docking()
    real = FileIngest._changed_on_card

    def deleted_meanwhile(self, cf):
        with catalog.read() as s:
            live = s.scalars(select(StoredFile).where(StoredFile.deleted_at.is_(None))).all()
        for f in live:
            RetentionSweeper(catalog, Rules(days={"normal": 1})).delete(f.id, "cleanup", by="a")
        return real(self, cf)

    monkeypatch.setattr(FileIngest, "_changed_on_card", deleted_meanwhile)
    with pytest.raises(KeptOnCard):
        ing.collect(f"DCIM/{name}".encode())
    assert (root / "DCIM" / name).exists(), "the card's copy went after the stored one"


def test_a_hold_placed_during_a_catalog_rebuild_is_refused_not_lost(
    store_env, tmp_path, monkeypatch
) -> None:
    """`station files hold ID` while `station catalog rebuild` runs would land on a catalog
    whose ids are still being handed out (another file, or none): it is refused with what
    to do, and works on the finished catalog."""
    import station.store.recovery as recovery_mod
    from station.retention.annotations import AnnotationError, annotate

    catalog, disk = store_env
    for i in range(3):
        put_file(catalog, disk, f"100001_B1_20200101080000_000{i}.MP4")
    fresh = Catalog(tmp_path / "rebuilt.db")
    fresh.migrate()
    real, tried = recovery_mod._rebuild_one, []

    def hold_meanwhile(cat, *args):
        real(cat, *args)
        with pytest.raises(AnnotationError, match="being rebuilt"):
            annotate(fresh, 1, by="900001", legal_hold="XS-1", admin=True)
        tried.append(1)

    monkeypatch.setattr(recovery_mod, "_rebuild_one", hold_meanwhile)
    recovery_mod.rebuild(fresh, [disk])
    assert tried
    annotate(fresh, 1, by="900001", legal_hold="XS-1", admin=True)
    fresh.close()


# --- review 13: the second review, of the fixes above --------------------------------------

DAY30 = Rules(days={"normal": 30, "important": None, "evidence": None})


def _facts(*disks: Path) -> list[DiskFacts]:
    return [DiskFacts(str(d), 10**12, 10**11) for d in disks]


def _collect_under(catalog, disk, tmp_path, monkeypatch, guard, when, name):
    import station.ingest.transfer as ingest_mod

    root = card_with(tmp_path, name, os.urandom(10_000))
    monkeypatch.setattr(ingest_mod, "utcnow", lambda: when)
    done = Ingest(catalog, disk, root, clock=guard).collect(f"DCIM/{name}".encode())
    monkeypatch.undo()
    return done.file_id


# --- clockguard.check_step ----------------------------------------------------------------------


def test_a_clock_step_is_not_forgotten_when_marking_its_files_fails(
    store_env, tmp_path, monkeypatch
) -> None:
    """check_step saves the new offset (the step 'seen') before it marks the files. If the
    marking fails (the catalog busy with a CLI command: 'database is locked'; a kill or power
    cut between the two commits), the step is consumed: the next round, or the restarted
    daemon in the same boot, sees no step, and the files stamped 60 days early are deleted
    by a 30-day sweep the same day."""
    catalog, disk = store_env
    uptime = [30.0]
    t0 = RELEASED + dt.timedelta(days=30)  # the clock timesyncd restored (dead RTC)
    guard = ClockGuard(catalog, 2, boot=lambda: uptime[0], boot_id="boot-1", synced=UNSYNCED)
    assert guard.sweep_pause(t0 - dt.timedelta(minutes=5), synced=None) is None
    fid = _collect_under(
        catalog, disk, tmp_path, monkeypatch, guard, t0, "100001_B1_20261231080000_0001.MP4"
    )
    uptime[0] += 300
    now = t0 + dt.timedelta(days=60, minutes=5)  # NTP steps the clock 60 days forward

    def locked(self, lo, hi):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(ClockGuard, "_mark_untrusted", locked)
    with pytest.raises(sqlite3.OperationalError):
        guard.check_step(now)  # the sweep round fails and is logged; the daemon goes on
    monkeypatch.undo()
    # the next round (same guard), and a daemon restarted in this boot
    guard.check_step(now + dt.timedelta(seconds=60))
    restarted = ClockGuard(
        catalog, 2, boot=lambda: uptime[0], boot_id="boot-1", synced=lambda: None
    )
    restarted.check_step(now + dt.timedelta(seconds=60))
    paused = restarted.sweep_pause(now, synced=True)
    RetentionSweeper(catalog, DAY30).sweep(_facts(disk), now=now, paused=paused)
    f = row(catalog, fid)
    assert f.clock_untrusted and f.deleted_at is None, (
        "the clock step was consumed before its files were marked: deleted 60 days early"
    )


def test_files_collected_before_a_reboot_under_the_restored_clock_are_marked_too(
    store_env, tmp_path, monkeypatch
) -> None:
    """A dead RTC and no network for a while (the cabinet is portable: powered off at night):
    boot 1 collects under the clock timesyncd restored, the station is powered off, boot 2
    restores the clock to boot 1's shutdown and NTP finally steps it 60 days forward. The
    boot-1 files were stamped just as early as boot 2's, but check_step only marks 'this
    boot' (the saved offset of another boot id is dropped): they are deleted at once."""
    catalog, disk = store_env
    t0 = RELEASED + dt.timedelta(days=30)
    up1 = [30.0]
    boot1 = ClockGuard(catalog, 2, boot=lambda: up1[0], boot_id="boot-1", synced=UNSYNCED)
    assert boot1.sweep_pause(t0 - dt.timedelta(minutes=5), synced=None) is None
    fid = _collect_under(
        catalog, disk, tmp_path, monkeypatch, boot1, t0, "100001_B1_20261231080000_0001.MP4"
    )
    # power off after 2 hours; next day power on: the clock reads boot 1's shutdown
    shutdown = t0 + dt.timedelta(hours=2)
    up2 = [20.0]
    boot2 = ClockGuard(catalog, 2, boot=lambda: up2[0], boot_id="boot-2", synced=UNSYNCED)
    assert boot2.check_step(shutdown) is None
    assert boot2.sweep_pause(shutdown, synced=None) is None  # nothing looks wrong
    up2[0] += 300
    now = shutdown + dt.timedelta(days=60, minutes=5)  # NTP answers
    boot2.check_step(now)
    paused = boot2.sweep_pause(now, synced=True)
    RetentionSweeper(catalog, DAY30).sweep(_facts(disk), now=now, paused=paused)
    assert row(catalog, fid).deleted_at is None, (
        "collected under the same unsynchronised clock one boot earlier: deleted 60 days early"
    )


# --- disks: parking, adopt, identify ----------------------------------------------------------


def test_a_card_file_whose_stored_copy_was_on_a_replaced_disk_is_collected_again(
    store_env, tmp_path, monkeypatch
) -> None:
    """The card clear was cut short (power cut between commit and delete), then the disk
    died and an administrator adopted a new one in its bay. The dead disk's rows are parked
    on '(moved) UUID' and stay live for ever; `_find_duplicate` finds the parked row, whose
    disk is 'not present', and keeps the card file (KeptOnCard) at every docking: the
    recorder holds the only copy and the station never stores it again."""
    from station.ingest.transfer import FileIngest, KeptOnCard

    catalog, disk = store_env
    name = "100001_B1_20261201080000_0001.MP4"
    root = card_with(tmp_path, name, os.urandom(30_000))
    ing = Ingest(catalog, disk, root)
    monkeypatch.setattr(FileIngest, "_delete_from_card", lambda *a, **k: None)
    ing.collect(f"DCIM/{name}".encode())  # stored; the card's delete never happened
    monkeypatch.undo()
    os.rename(disk, tmp_path / "dead-disk")  # the disk dies, is thrown away
    disk.mkdir()
    book = DiskBook(catalog, "T1")
    old = next(iter(book.known()))
    book.adopt(ing.store.disks[0], "900001")  # its replacement
    ing.fi = ing.docking()
    with pytest.raises(KeptOnCard):  # the old disk may come back: the card keeps it
        ing.collect(f"DCIM/{name}".encode())
    assert book.retire(old, "900001") == 1  # the administrator: that disk is lost
    ing.fi = ing.docking()
    out = ing.collect(f"DCIM/{name}".encode())  # KeptOnCard on the code reviewed
    assert out.kind == "stored"
    f = row(catalog, out.file_id)
    assert (Path(f.disk) / f.rel_path).exists()


def test_re_adopting_a_disk_whose_marker_was_lost_keeps_its_footage_catalogued(
    store_env,
) -> None:
    """The marker of a disk in use is lost or unreadable (fsck, a bad sector, someone
    removed it); the documented remedy is `station disks adopt PATH`. adopt now parks the
    disk's rows on '(moved) OLD-UUID' and writes a new marker on the SAME disk, so the
    orphan pass takes every file on it for a 'second copy' of its parked row and
    quarantines it: the whole disk's footage leaves the catalog (nothing to search, play,
    hold or forward), and the rows point at a disk that can never come back."""
    catalog, disk = store_env
    ids = [put_file(catalog, disk, f"100001_B1_20200101080000_000{i}.MP4") for i in range(3)]
    (disk / MARKER).unlink()  # lost
    d = Store([disk], 0).disks[0]
    DiskBook(catalog, "T1").adopt(d, "900001")
    report = recover(catalog, [d])  # the daemon, seeing the disk back
    for fid in ids:
        f = row(catalog, fid)
        assert f.disk == str(disk), f"row {fid} parked on {f.disk!r}"
    assert not report.quarantined, report.quarantined


def test_identify_never_pairs_one_disks_uuid_with_another_disks_marker(
    store_env, tmp_path, monkeypatch
) -> None:
    """identify() reads the marker, and the identity setter stats the marker again later to
    take its (st_dev, st_ino). A swap between the two (a remount during identification)
    pairs disk A's UUID with disk B's marker inode: present() is then True for a disk that
    is not the one named, and stays True, so it is never identified again."""
    from test_evidence_safety import new_disk

    import station.store.identity as disks_mod

    catalog, d1 = store_env
    d2 = new_disk(catalog, tmp_path / "disk2")
    store = store_of(catalog, d1, d2)
    real = disks_mod.read_marker
    swapped = []

    def read_then_swap(path):
        m = real(path)
        if not swapped and path == d1:
            swapped.append(1)
            os.rename(d1, tmp_path / "swap")
            os.rename(d2, d1)
            os.rename(tmp_path / "swap", d2)
        return m

    monkeypatch.setattr(disks_mod, "read_marker", read_then_swap)
    first = store.disks[0]
    first.identity = None
    assert DiskBook(catalog, "T1").identify(first) is None
    on_disk = json.loads((d1 / MARKER).read_text())["uuid"]
    assert not (first.present() and first.identity != on_disk), (
        f"{d1} is 'present' as {first.identity} but holds disk {on_disk}"
    )


# --- ingest._clearing ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["stored", "duplicate"])
@pytest.mark.parametrize("clock_step_min", [0, 15])
def test_the_stored_row_cannot_be_deleted_between_the_clearing_check_and_the_card_delete(
    store_env, tmp_path, monkeypatch, path, clock_step_min
) -> None:
    """_clearing checks the stored row is live in the transaction that logs the delete, but
    the card delete comes after that commit (and after a second card stat). A sweep
    (overwrite when full: the make_room of another port) or an administrator must not
    tombstone the stored file in between, or the card's copy goes too: also when NTP
    steps the wall clock meanwhile, which could make the catalog's clearing mark look
    stale (the duplicate path is the likely one: an old stored copy, the sweep's first
    pick)."""
    import station.retention.sweeper as retention_mod
    from station.ingest.transfer import FileIngest

    catalog, disk = store_env
    name = "100001_B1_20261201080000_0001.MP4"
    root = card_with(tmp_path, name, os.urandom(30_000))
    ing = Ingest(catalog, disk, root)
    if path == "duplicate":  # stored long ago; the card clear was cut short
        monkeypatch.setattr(FileIngest, "_delete_from_card", lambda *a, **k: None)
        ing.collect(f"DCIM/{name}".encode())
        monkeypatch.undo()
        ing.fi = ing.docking()
    real, calls = FileIngest._changed_on_card, []
    stepped = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=clock_step_min)

    def sweep_in_the_window(self, cf):
        calls.append(1)
        if len(calls) == 2:  # the re-stat right after the 'clearing' commit
            monkeypatch.setattr(retention_mod, "utcnow", lambda: stepped)
            with catalog.read() as s:
                live = s.scalars(select(StoredFile).where(StoredFile.deleted_at.is_(None))).all()
            for f in live:
                assert not RetentionSweeper(catalog, DAY30).delete(f.id, "room", by="retention")
        return real(self, cf)

    monkeypatch.setattr(FileIngest, "_changed_on_card", sweep_in_the_window)
    ing.collect(f"DCIM/{name}".encode())  # the sweep leaves the file being cleared alone
    assert len(calls) >= 2
    with catalog.read() as s:
        live = s.scalars(select(StoredFile).where(StoredFile.deleted_at.is_(None))).all()
    assert len(live) == 1 and not (root / "DCIM" / name).exists()


# --- recovery.rebuild's flag ------------------------------------------------------------------


def test_a_cut_short_rebuild_does_not_leave_holds_refused_on_a_running_station(
    store_env, tmp_path, monkeypatch
) -> None:
    """`catalog rebuild` is interrupted (Ctrl-C, a power cut, an OSError writing a marker:
    the steps outside _settle). Nothing refuses the daemon's start on that catalog, and its
    start-up recovery catalogues the rest from the sidecars; but `catalog_rebuild_started`
    is never cleared, so every hold and grade (also raising one to evidence) is refused
    while retention deletes by age as usual."""
    import station.store.recovery as recovery_mod
    from station.retention.annotations import annotate

    catalog, disk = store_env
    for i in range(3):
        put_file(catalog, disk, f"100001_B1_20200101080000_000{i}.MP4")
    fresh = Catalog(tmp_path / "rebuilt.db")
    fresh.migrate()
    real, n = recovery_mod._rebuild_one, []

    def cut(*args):
        n.append(1)
        if len(n) == 2:
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(recovery_mod, "_rebuild_one", cut)
    with pytest.raises(KeyboardInterrupt):
        recovery_mod.rebuild(fresh, [disk])
    monkeypatch.undo()
    recover(fresh, store_of(fresh, disk).disks)  # the daemon starts on it
    with fresh.read() as s:
        ids = [f.id for f in s.scalars(select(StoredFile))]
    assert len(ids) == 3  # every file is catalogued, ids final
    try:
        annotate(fresh, ids[0], by="900001", legal_hold="XS-9", admin=True)
    finally:
        fresh.close()


# --- eventlog.verify_anchors ----------------------------------------------------------------


# --- review 14: the third review, of review 13's fixes ---------------------------------------

# --- clockguard: a step NTP makes before the daemon's first look in a new boot ---------------


def test_ntp_stepping_before_the_first_look_of_a_new_boot_does_not_vouch_for_the_old_boot(
    store_env, tmp_path, monkeypatch
) -> None:
    """Boot 1: dead RTC, no network; files collected under the clock timesyncd restored
    (`since` persisted). Boot 2 has network: timesyncd steps the clock 60 days forward at
    boot, before the daemon's first check_step (the daemon starts after time-sync, or the
    step lands in the seconds before its first round). The saved offset is another boot's,
    so the step cannot be seen: check_step(now, synced=True) takes 'synced, no step' as
    NTP vouching for boot 1's files and closes `since`: they are aged 60 days early."""
    catalog, disk = store_env
    t0 = RELEASED + dt.timedelta(days=30)
    up1 = [30.0]
    boot1 = ClockGuard(catalog, 2, boot=lambda: up1[0], boot_id="boot-1", synced=UNSYNCED)
    assert boot1.sweep_pause(t0 - dt.timedelta(minutes=5), synced=None) is None
    boot1.check_step(t0 - dt.timedelta(minutes=5), None)
    fid = _collect_under(
        catalog, disk, tmp_path, monkeypatch, boot1, t0, "100001_B1_20261231080000_0001.MP4"
    )
    # power off; boot 2: NTP already stepped the clock when the daemon first looks
    now = t0 + dt.timedelta(days=60, hours=2)
    boot2 = ClockGuard(catalog, 2, boot=lambda: 25.0, boot_id="boot-2", synced=UNSYNCED)
    boot2.check_step(now, True)  # the daemon's first sweep round in boot 2
    paused = boot2.sweep_pause(now, synced=True)
    RetentionSweeper(catalog, DAY30).sweep(_facts(disk), now=now, paused=paused)
    f = row(catalog, fid)
    assert f.deleted_at is None, (
        "collected under an unsynchronised clock in boot 1; boot 2's first look at a synced "
        "clock vouched for it without being able to see the step: deleted 60 days early"
    )


# --- disks.retire: the protection of a retired disk's files -----------------------------------


def test_a_held_file_collected_again_after_its_disk_was_retired_keeps_its_hold(
    store_env, tmp_path, monkeypatch
) -> None:
    """A file is stored and put under legal hold (graded evidence); its card clear was cut
    short, so the recorder still holds it. The disk dies; a replacement is adopted in its
    bay; `station disks retire OLD` tombstones every parked row, held ones included, so
    that the card's copy is 'collected again'. The new row is a plain normal file: the
    hold, grade and case number stay on the tombstone (store_row carries them only for a
    corrupt copy, `replaces`), and the next sweeps delete held evidence by age."""
    from station.ingest.transfer import FileIngest
    from station.retention.annotations import annotate

    catalog, disk = store_env
    name = "100001_B1_20261201080000_0001.MP4"
    root = card_with(tmp_path, name, os.urandom(30_000))
    ing = Ingest(catalog, disk, root)
    monkeypatch.setattr(FileIngest, "_delete_from_card", lambda *a, **k: None)
    first = ing.collect(f"DCIM/{name}".encode()).file_id  # card clear cut short
    monkeypatch.undo()
    annotate(catalog, first, by="900001", level="evidence", case_no="XS-7",
             legal_hold="XS-7", admin=True)  # fmt: skip
    os.rename(disk, tmp_path / "dead-disk")
    disk.mkdir()
    book = DiskBook(catalog, "T1")
    old = next(iter(book.known()))
    book.adopt(ing.store.disks[0], "900001")
    assert book.retire(old, "900001") == 1
    ing.fi = ing.docking()
    out = ing.collect(f"DCIM/{name}".encode())
    assert out.kind == "stored"
    f = row(catalog, out.file_id)
    assert (f.legal_hold, f.level, f.case_no) == ("XS-7", "evidence", "XS-7"), (
        f"held evidence collected again after `disks retire` as level={f.level!r}, "
        f"hold={f.legal_hold!r}: retention deletes it by age"
    )


# --- eventlog.verify_anchors: 'ours' and 'logged' come from the catalog being checked ---------


@pytest.mark.parametrize("how", ["delete-the-tail", "forget-the-disk", "wipe-the-log"])
def test_an_emptied_anchor_is_reported_whatever_else_the_catalog_was_made_to_say(
    store_env, how
) -> None:
    """Whoever deletes the newest entries rewrites the anchor as `{}` (verify_anchor has
    nothing to compare for last_id 0), and may also run `DELETE FROM disks` or delete the
    whole log, so that a check deciding from the catalog would skip the disk. The disk
    still carries this station's marker: the emptied anchor is reported every time."""
    from station.catalog.db import append_event
    from station.eventlog import verify_anchors, write_anchors

    catalog, disk = store_env
    for i in range(5):
        with catalog.write() as s:
            append_event(s, "test", f"entry {i}")
    head = write_anchors(catalog, [disk], "T1")
    con = sqlite3.connect(catalog.path)
    with con:
        if how == "wipe-the-log":
            con.execute("DELETE FROM events")
        else:
            con.execute("DELETE FROM events WHERE id > ?", (head["last_id"] - 2,))
        if how == "forget-the-disk":
            con.execute("DELETE FROM disks")
    con.close()
    (disk / ".station-log-anchor.json").write_text("{}")
    assert verify_anchors(catalog, [disk]), f"{how}: entries deleted, anchor emptied, no problem"
    assert verify_anchors(catalog, [disk], "T1")  # the station's own id: its disk
    assert verify_anchors(catalog, [disk], "OTHER") == []  # another station's disk: not ours


# --- disks.adopt: the lost marker's own identity, when the disk is not in its old bay ----------


def test_a_disk_that_lost_its_marker_and_changed_bays_gets_its_identity_back(
    store_env, tmp_path
) -> None:
    """Disk B (at P2) loses its marker; while looking into the alarm the disks are reseated
    in each other's bays: A at P2, B at P1. A's marker moves A's rows to P2 and parks B's
    rows on '(moved) B'. `station disks adopt P1` restores a lost marker only for the uuid
    last seen at P1 itself (that is A, now elsewhere), so B gets a new uuid and the orphan
    pass quarantines every one of B's files as 'a second copy' of its parked row: the
    disk's footage leaves the catalog, and `station disks` invites `retire B`, which
    tombstones the parked rows (holds included)."""
    from test_evidence_safety import new_disk

    from station.store.disks import MARKER

    catalog, p1 = store_env
    p2 = new_disk(catalog, tmp_path / "disk2")
    ids = [put_file(catalog, p2, f"100001_B1_20200101080000_000{i}.MP4") for i in range(3)]
    (p2 / MARKER).unlink()  # B's marker lost
    os.rename(p1, tmp_path / "swap")  # reseated in each other's bays
    os.rename(p2, p1)
    os.rename(tmp_path / "swap", p2)
    store = Store([p1, p2], 0)
    book = DiskBook(catalog, "T1", folder_disks=True)
    for d in store.disks:
        book.identify(d)  # the daemon's start-up: P2 is A (moved); P1 is refused
    book.adopt(store.disks[0], "900001")  # the documented remedy for P1
    report = recover(catalog, [d for d in store.disks if d.present()])
    assert not report.quarantined, report.quarantined
    for fid in ids:
        f = row(catalog, fid)
        assert f.disk == str(p1), f"row {fid} left parked on {f.disk!r}"


def test_a_lost_marker_is_restored_even_if_the_first_three_sidecars_are_damaged(
    store_env,
) -> None:
    """`_holds_our_files` looks at 3 rows only (`.limit(3)`, the oldest by rowid). The
    damage that lost the marker (fsck, bad sectors) easily took a few sidecars too: with
    those 3 unreadable, adopt falls back to parking the disk's rows, and recovery
    quarantines every file on it as a second copy, the very outcome the fix removed."""
    from station.store.disks import MARKER
    from station.store.sidecar import sidecar_path as scp

    catalog, disk = store_env
    ids = [put_file(catalog, disk, f"100001_B1_20200101080000_000{i}.MP4") for i in range(8)]
    for fid in ids[:3]:
        scp(disk, row(catalog, fid).rel_path).write_text("{torn")
    (disk / MARKER).unlink()
    d = Store([disk], 0).disks[0]
    DiskBook(catalog, "T1").adopt(d, "900001")
    recover(catalog, [d])
    parked = [fid for fid in ids if row(catalog, fid).disk != str(disk)]
    assert not parked, f"{len(parked)} of {len(ids)} rows parked: 5 intact sidecars ignored"


# --- retention: the clearing mark's grace is measured on the wall clock ------------------------
