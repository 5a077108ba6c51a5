"""Evidence safety, second pass: the ways footage could still be lost, doubled, misattributed
or wrongly deleted, each tried on purpose against the real catalog and a real disk folder.

The daemon-level halves of these live beside the behaviour they check (test_ui_api.py for
the console, test_faults.py for crash points); here the store is driven in process, so a
race or a half-finished step can be placed exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from station.catalog import Catalog, IngestJob, Officer, Recorder, StoredFile
from station.catalog.db import CatalogBusy, lock_exclusive
from station.devices import mount as mount_mod
from station.devices.mount import BlockDevice, Mounter, NotThisRecorder
from station.devices.ports import CardWait
from station.drivers.base import DockedDevice
from station.retention import sweeper as retention_mod
from station.retention.annotations import AnnotationError, ProtectionError, annotate
from station.retention.sweeper import DeletionRefused, DiskFacts, RetentionSweeper, Rules
from station.store.disks import Store
from station.store.identity import DiskBook
from station.store.recovery import adopt, rebuild, recover
from station.store.sidecar import Sidecar, SidecarError, read_sidecar, sidecar_path, write_sidecar

RULES = Rules(days={"normal": 1, "important": None, "evidence": None})
LONG_AGO = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def put_file(
    catalog: Catalog,
    disk: Path,
    name: str = "100001_B1_20200101080000_0001.MP4",
    *,
    officer_no: str = "100001",
    serial: str = "B1",
    data: bytes | None = None,
    **fields: object,
) -> int:
    """A stored file, its sidecar and its catalog row, as collection leaves them."""
    data = os.urandom(4096) if data is None else data
    rel = f"{officer_no}/{serial}/2020-01-01/{name}"
    (disk / rel).parent.mkdir(parents=True, exist_ok=True)
    (disk / rel).write_bytes(data)
    sc = Sidecar(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        officer_no=officer_no,
        serial=serial,
        card_path_hex=f"DCIM/{name}".encode().hex(),
        name=name,
        collected_at=LONG_AGO.isoformat(),
        **fields,  # type: ignore[arg-type]
    )
    write_sidecar(disk, rel, sc)
    with catalog.write() as s:
        return adopt(s, disk, rel, sc).id


def store_of(catalog: Catalog, *paths: Path) -> Store:
    """A Store over these folders, each identified as the daemon does at start-up."""
    store = Store(list(paths), 0)
    book = DiskBook(catalog, "T1", folder_disks=True)
    for d in store.disks:
        assert book.identify(d) is None, d.path
    return store


def new_disk(catalog: Catalog, path: Path) -> Path:
    """A second disk, taken into use by an administrator."""
    path.mkdir()
    DiskBook(catalog, "T1").adopt(Store([path], 0).disks[0], "900001")
    return path


def row(catalog: Catalog, file_id: int) -> StoredFile:
    with catalog.read() as s:
        f = s.get(StoredFile, file_id)
        assert f is not None
        return f


def sidecar_of(catalog: Catalog, file_id: int) -> Sidecar:
    f = row(catalog, file_id)
    return read_sidecar(sidecar_path(Path(f.disk), f.rel_path))


def path_of(catalog: Catalog, file_id: int) -> Path:
    f = row(catalog, file_id)
    return Path(f.disk) / f.rel_path


# --- 1. a hold or a re-grade racing a sweep ---------------------------------------------------


@pytest.mark.parametrize("change", [{"legal_hold": "XS-1"}, {"level": "evidence"}])
def test_a_hold_or_regrade_committed_during_a_sweep_wins(store_env, monkeypatch, change) -> None:
    catalog, disk = store_env
    fid = put_file(catalog, disk)
    sweeper = RetentionSweeper(catalog, RULES)
    plan = sweeper.plan(
        [DiskFacts(str(disk), 10**12, 10**11)], dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    )
    assert plan.expired == [fid]  # the sweep has decided: this file goes

    # Between the sweep's decision and its tombstone, an administrator holds the file
    # (from another thread, as the console or `station files hold` would).
    real = retention_mod.read_sidecar
    done = threading.Event()

    def hold_meanwhile(path: Path) -> Sidecar:
        def hold() -> None:
            # if the deletion committed first, the hold finds no file (AnnotationError)
            with contextlib.suppress(AnnotationError):
                annotate(catalog, fid, by="admin", admin=True, **change)
            done.set()

        threading.Thread(target=hold).start()
        done.wait(2)  # lets it commit if nothing keeps it out
        return real(path)

    monkeypatch.setattr(retention_mod, "read_sidecar", hold_meanwhile)
    for file_id in plan.expired:
        sweeper.delete(file_id, "retention period expired")
    assert done.wait(30)
    f = row(catalog, fid)
    held = f.legal_hold or f.level == "evidence"
    # never both: a protected row whose file was deleted
    assert not (held and f.deleted_at is not None)
    assert held == path_of(catalog, fid).exists()


# --- 2. a sidecar tombstone that outlives a failed catalog step ----------------------------------


def test_a_failed_catalog_step_puts_the_sidecar_back(store_env, monkeypatch) -> None:
    catalog, disk = store_env
    fid = put_file(catalog, disk)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(retention_mod, "append_event", broken)
    with pytest.raises(OSError):
        RetentionSweeper(catalog, RULES).delete(fid, "retention period expired")
    assert row(catalog, fid).deleted_at is None
    assert sidecar_of(catalog, fid).deleted_at is None  # put back
    assert path_of(catalog, fid).exists()


def test_recovery_rewrites_a_stale_sidecar_from_its_live_row(store_env) -> None:
    """The station died between the sidecar tombstone and the catalog commit."""
    catalog, disk = store_env
    fid = put_file(catalog, disk, level="important")
    f = row(catalog, fid)
    stale = dataclasses.replace(
        sidecar_of(catalog, fid), deleted_at=LONG_AGO.isoformat(), deleted_by="retention",
        level="normal",
    )  # fmt: skip
    write_sidecar(disk, f.rel_path, stale)
    report = recover(catalog, store_of(catalog, disk).disks)
    assert report.sidecars_rewritten
    sc = sidecar_of(catalog, fid)
    assert (sc.deleted_at, sc.level) == (None, "important")
    assert path_of(catalog, fid).exists()


def test_a_killed_metadata_write_leaves_no_footage_to_quarantine(store_env) -> None:
    """A kill during the log anchor's or the disk marker's atomic write leaves its temp
    file at the disk's root: station metadata, never footage; recovery removes it."""
    catalog, disk = store_env
    fid = put_file(catalog, disk)
    strays = [disk / "..station-log-anchor.json.2emoew8b", disk / "..station-disk.json.k3j2"]
    for p in strays:
        p.write_bytes(b'{"torn')
    report = recover(catalog, store_of(catalog, disk).disks)
    assert not report.quarantined and not report.errors, report.lines()
    assert not any(p.exists() for p in strays)
    assert not (disk / ".quarantine").exists()
    assert path_of(catalog, fid).exists()


def test_a_hold_never_carries_a_stale_deletion_forward_and_rebuild_keeps_the_file(
    store_env,
) -> None:
    catalog, disk = store_env
    fid = put_file(catalog, disk)
    f = row(catalog, fid)
    stale = dataclasses.replace(sidecar_of(catalog, fid), deleted_at=LONG_AGO.isoformat())
    write_sidecar(disk, f.rel_path, stale)
    annotate(catalog, fid, by="admin", legal_hold="XS-2", admin=True)
    assert sidecar_of(catalog, fid).deleted_at is None
    # the catalog is lost: a rebuild from the sidecars keeps the held file, live
    fresh = Catalog(disk.parent / "rebuilt.db")
    fresh.migrate()
    rebuild(fresh, [disk])
    with fresh.read() as s:
        (back,) = s.scalars(select(StoredFile)).all()
    assert back.deleted_at is None and back.legal_hold == "XS-2"
    assert path_of(catalog, fid).exists()
    fresh.close()


@pytest.mark.parametrize("fields", [{"legal_hold": "XS-3"}, {"level": "evidence"}])
def test_rebuild_and_the_orphan_pass_never_delete_protected_footage(store_env, fields) -> None:
    catalog, disk = store_env
    fid = put_file(catalog, disk, **fields)
    path = path_of(catalog, fid)
    sc = dataclasses.replace(sidecar_of(catalog, fid), deleted_at=LONG_AGO.isoformat())
    write_sidecar(disk, row(catalog, fid).rel_path, sc)
    fresh = Catalog(disk.parent / "rebuilt.db")
    fresh.migrate()
    report = rebuild(fresh, [disk])
    assert path.exists() and report.quarantined
    # the next start's orphan pass moves it aside for a person, and deletes nothing
    report = recover(fresh, store_of(fresh, disk).disks)
    assert not path.exists() and report.quarantined
    kept = list((disk / ".quarantine").rglob(path.name))
    assert len(kept) == 1 and hashlib.sha256(kept[0].read_bytes()).hexdigest() == sc.sha256
    fresh.close()


# --- 3 and 4. a hold blocks every deletion; only an administrator lowers a grade --------------


def test_an_administrator_cannot_delete_a_held_file(store_env) -> None:
    catalog, disk = store_env
    fid = put_file(catalog, disk, legal_hold="XS-4")
    with pytest.raises(DeletionRefused):
        RetentionSweeper(catalog, RULES).delete(fid, "clean-up", by="900001")
    assert row(catalog, fid).deleted_at is None and path_of(catalog, fid).exists()
    annotate(catalog, fid, by="900001", legal_hold="", admin=True)  # released first
    assert RetentionSweeper(catalog, RULES).delete(fid, "clean-up", by="900001")
    assert not path_of(catalog, fid).exists()
    # graded up after the administrator looked: the deletion asks again (confirmed)
    other = put_file(catalog, disk, "100001_B1_20200101080000_0005.MP4")
    annotate(catalog, other, by="900001", level="evidence", admin=True)
    with pytest.raises(DeletionRefused):
        RetentionSweeper(catalog, RULES).delete(other, "clean-up", by="900001")
    assert RetentionSweeper(catalog, RULES).delete(other, "x", by="900001", confirmed=True)


def test_only_an_administrator_lowers_a_protected_grade(store_env) -> None:
    catalog, disk = store_env
    fid = put_file(catalog, disk)
    annotate(catalog, fid, by="900001", level="evidence", case_no="XS-5", admin=True)
    for change in ({"level": "normal"}, {"level": "important"}, {"case_no": ""}):
        with pytest.raises(ProtectionError):
            annotate(catalog, fid, by="100001", **change)
    f = row(catalog, fid)
    assert (f.level, f.case_no) == ("evidence", "XS-5")
    annotate(catalog, fid, by="100001", level="evidence", note="raised is fine")
    annotate(catalog, fid, by="900001", level="normal", admin=True)
    assert row(catalog, fid).level == "normal"


# --- 6. a second copy of a stored file is never catalogued ------------------------------------


def test_a_superseded_verified_job_is_not_committed_twice(store_env, tmp_path) -> None:
    """Power cut after verify; the disk stays away; the recorder is collected onto the other
    disk; the first disk comes back: its verified job must not become a second live row."""
    catalog, disk = store_env
    data = os.urandom(8192)
    name = "100001_B1_20200101080000_0002.MP4"
    first = put_file(catalog, disk, name, data=data)  # the copy made on the other disk
    other = new_disk(catalog, tmp_path / "disk2")
    (other / ".staging").mkdir(parents=True)
    rel = f"100001/B1/2020-01-01/{name}"
    (other / rel).parent.mkdir(parents=True)
    (other / rel).write_bytes(data)
    write_sidecar(other, rel, sidecar_of(catalog, first))
    with catalog.write() as s:
        f = s.get(StoredFile, first)
        job = IngestJob(
            recorder_id=f.recorder_id, officer_id=f.officer_id, card_path=f.card_path,
            size=len(data), mtime=0.0, state="verified", disk=str(other),
            temp_path=str(other / ".staging" / "99.part"), final_path=rel, sha256=f.sha256,
        )  # fmt: skip
        s.add(job)
    report = recover(catalog, store_of(catalog, disk, other).disks)
    with catalog.read() as s:
        live = s.scalars(select(StoredFile).where(StoredFile.deleted_at.is_(None))).all()
    assert [f.id for f in live] == [first]
    assert report.duplicates and not (other / rel).exists()
    assert list((other / ".quarantine").rglob(name))  # kept aside, not deleted


def test_rebuild_catalogues_one_copy_of_a_file_found_on_both_disks(store_env, tmp_path) -> None:
    catalog, disk = store_env
    data = os.urandom(4096)
    fid = put_file(catalog, disk, data=data)
    other = new_disk(catalog, tmp_path / "disk2")
    rel = row(catalog, fid).rel_path
    (other / rel).parent.mkdir(parents=True)
    (other / rel).write_bytes(data)
    write_sidecar(other, rel, sidecar_of(catalog, fid))
    fresh = Catalog(tmp_path / "rebuilt.db")
    fresh.migrate()
    report = rebuild(fresh, [disk, other])
    with fresh.read() as s:
        assert len(s.scalars(select(StoredFile)).all()) == 1
    assert len(report.duplicates) == 1
    fresh.close()


# --- 8. a late commit files the footage under the officer it was collected for -----------------


def test_a_verified_job_is_committed_to_the_officer_it_began_for(store_env) -> None:
    catalog, disk = store_env
    data = os.urandom(4096)
    fid = put_file(catalog, disk, "100001_B1_20200101080000_0009.MP4", data=data)
    f = row(catalog, fid)
    rel, sc = f.rel_path, sidecar_of(catalog, fid)
    with catalog.write() as s:
        # the row is not there yet (the power cut came after verify) ...
        s.delete(s.get(StoredFile, fid))
        s.add(
            IngestJob(
                recorder_id=f.recorder_id, officer_id=f.officer_id, card_path=f.card_path,
                size=len(data), mtime=0.0, state="verified", disk=str(disk),
                temp_path=str(disk / ".staging" / "7.part"), final_path=rel, sha256=sc.sha256,
            )
        )  # fmt: skip
        # ... and meanwhile the recorder was given to another officer
        other = Officer(officer_no="200002", name="李四")
        s.add(other)
        s.flush()
        s.get(Recorder, f.recorder_id).officer_id = other.id
    recover(catalog, store_of(catalog, disk).disks)
    with catalog.read() as s:
        (back,) = s.scalars(select(StoredFile)).all()
        assert back.officer.officer_no == "100001"  # as its sidecar and its folder say


# --- 12. a malformed sidecar never stops the station ------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        {"collected_at": "2026-13-01T00:00:00+00:00"},
        {"size": "many"},
        {"sha256": "not-a-hash"},
        {"level": "destroy"},
        {"recorded_at": "yesterday"},
        {"important": "yes"},
    ],
)
def test_a_bad_sidecar_field_is_quarantined_and_recovery_goes_on(store_env, damage) -> None:
    import json

    catalog, disk = store_env
    fid = put_file(catalog, disk)
    orphan = put_file(catalog, disk, "100001_B1_20200101080000_0003.MP4")
    with catalog.write() as s:  # an orphan: on the disk, not in the catalog
        s.delete(s.get(StoredFile, orphan))
    rel = "100001/B1/2020-01-01/100001_B1_20200101080000_0003.MP4"
    meta = sidecar_path(disk, rel)
    meta.write_text(json.dumps({**json.loads(meta.read_text()), **damage}))
    with pytest.raises(SidecarError):
        read_sidecar(meta)
    report = recover(catalog, store_of(catalog, disk).disks)
    assert any(rel in q for q in report.quarantined)
    assert (disk / ".quarantine" / rel).exists()
    assert path_of(catalog, fid).exists()


# --- 14. smaller ones ---------------------------------------------------------------------------


def test_catalog_rebuild_refuses_while_the_daemon_runs(store_env, tmp_path) -> None:
    from station.cli import cli

    catalog, disk = store_env
    config = tmp_path / "station.toml"
    config.write_text(
        f'[station]\nid = "T1"\n[store]\ndisks = ["{disk}"]\n'
        f'[database]\nurl = "sqlite:///{catalog.path}"\n'
    )
    fd = lock_exclusive(catalog.path)  # what the running daemon holds
    try:
        with pytest.raises(CatalogBusy):
            lock_exclusive(catalog.path)
        r = CliRunner().invoke(cli, ["catalog", "rebuild", "--config", str(config)])
        assert r.exit_code != 0 and "running station" in r.output
        assert catalog.path.exists() and not list(tmp_path.glob("catalog.db.broken-*"))
    finally:
        os.close(fd)


def test_sidecar_writes_survive_short_writes(store_env, monkeypatch) -> None:
    catalog, disk = store_env
    fid = put_file(catalog, disk)
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:7])))
    annotate(catalog, fid, by="admin", note="x" * 5000, admin=True)
    monkeypatch.undo()
    assert sidecar_of(catalog, fid).note == "x" * 5000


# --- collection in process: the card, the ingest, the store -----------------------------------


class Ingest:
    """One docked recorder's FileIngest over a real folder card and a real disk folder."""

    def __init__(
        self, catalog: Catalog, disks: Path | list[Path], card_root: Path, **options: object
    ) -> None:
        from station.drivers.card import FolderCard
        from station.ingest.transfer import Owner

        with catalog.write() as s:
            officer = Officer(officer_no="100001", name="张三")
            s.add(officer)
            s.flush()
            rec = Recorder(serial="B1", officer_id=officer.id, status="registered")
            s.add(rec)
            s.flush()
            from station.catalog import CollectionSession

            sess = CollectionSession(recorder_id=rec.id, port=1)
            s.add(sess)
            s.flush()
            owner = Owner(rec.id, "B1", officer.id, "100001", sess.id, 1)
        self.card = FolderCard(card_root)
        self.catalog, self.owner, self.options = catalog, owner, options
        self.store = store_of(catalog, *(disks if isinstance(disks, list) else [disks]))
        self.fi = self.docking()

    def docking(self):
        from station.ingest.transfer import FileIngest

        return FileIngest(
            self.catalog, self.store, self.card, self.owner, chunk=1 << 20, sync_every=1 << 30,
            tz=None, stop=threading.Event(), progress=lambda n: None, **self.options,
        )  # fmt: skip

    def collect(self, name: bytes):
        cf = next(f for f in self.card.list_files() if f.path == name)
        return self.fi.copy(cf)()


def card_with(tmp_path: Path, name: str, data: bytes) -> Path:
    root = tmp_path / "card"
    (root / "DCIM").mkdir(parents=True)
    (root / "DCIM" / name).write_bytes(data)
    return root


def test_bytes_appended_after_the_second_look_keep_the_file_on_the_card(
    store_env, tmp_path
) -> None:
    from station.ingest.transfer import FileChanged

    catalog, disk = store_env
    name = "100001_B1_20261201080000_0001.MP4"
    root = card_with(tmp_path, name, os.urandom(300_000))
    ing = Ingest(catalog, disk, root)
    real = ing.fi._second_look

    def then_append(job, cf) -> None:  # the recorder writes on, just after the second look
        real(job, cf)
        with open(root / "DCIM" / name, "ab") as f:
            f.write(b"late bytes")

    ing.fi._second_look = then_append
    with pytest.raises(FileChanged):
        ing.collect(f"DCIM/{name}".encode())
    assert (root / "DCIM" / name).read_bytes().endswith(b"late bytes")  # not deleted
    # the next pass collects the grown file as well; nothing is lost
    ing.fi._second_look = real
    ing.collect(f"DCIM/{name}".encode())
    assert not (root / "DCIM" / name).exists()
    with catalog.read() as s:
        sizes = sorted(f.size for f in s.scalars(select(StoredFile)))
    assert sizes == [300_000, 300_010]


@pytest.mark.parametrize("name", ["100001_B1_20261201080000_0002.MP4",
                                  "100001_B1_20261201080000_0003_IMP.MP4"])  # fmt: skip
def test_a_transient_misread_during_the_copy_never_clears_the_card(
    store_env, tmp_path, name
) -> None:
    """One wrong read while copying is hashed, read back and would be committed: the full
    re-read of the second look (small and IMP files) sees it, and the card keeps the file."""
    from station.ingest.transfer import VerifyFailed

    catalog, disk = store_env
    size = 2 * 1024 * 1024 + 12345
    data = os.urandom(size)
    root = card_with(tmp_path, name, data)
    # IMP files are re-read in full whatever their size; the others up to the threshold
    limit = 0 if "IMP" in name else 64 << 20
    ing = Ingest(catalog, disk, root, full_recheck_below=limit)
    opened = ing.card.open_file
    flipped = []

    def flaky_open(path, offset=0, *, direct=False):
        stream = opened(path, offset, direct=direct)
        read = stream.readinto

        def readinto(buf):
            n = read(buf)
            if direct and not flipped and n > 700_000:
                buf[700_000] ^= 0x10
                flipped.append(True)
            return n

        stream.readinto = readinto
        return stream

    ing.card.open_file = flaky_open
    with pytest.raises(VerifyFailed):
        ing.collect(f"DCIM/{name}".encode())
    assert flipped
    assert (root / "DCIM" / name).read_bytes() == data
    with catalog.read() as s:
        assert s.scalars(select(StoredFile)).all() == []


def test_a_deleted_copy_is_no_duplicate(store_env, tmp_path, monkeypatch) -> None:
    """The same card file stored, then deleted from the store: seen again, it must be
    collected, not dropped from the card as a 'duplicate' of nothing."""
    catalog, disk = store_env
    name = "100001_B1_20261201080000_0004.MP4"
    data = os.urandom(100_000)
    root = card_with(tmp_path, name, data)
    ing = Ingest(catalog, disk, root)
    (root / "DCIM" / "keep").write_bytes(data)  # the same bytes, to put back after the first
    ing.collect(f"DCIM/{name}".encode())
    with catalog.read() as s:
        (first,) = s.scalars(select(StoredFile)).all()
    # deleted from the store, the removal of its file not yet done (cut short, or racing)
    monkeypatch.setattr(retention_mod, "remove_stored", lambda path: None)
    RetentionSweeper(catalog, RULES).delete(first.id, "test", by="900001")
    os.rename(root / "DCIM" / "keep", root / "DCIM" / name)  # the card shows it again
    out = ing.collect(f"DCIM/{name}".encode())
    assert out.kind == "stored" and out.file_id != first.id
    with catalog.read() as s:
        live = s.scalars(select(StoredFile).where(StoredFile.deleted_at.is_(None))).all()
    assert [f.id for f in live] == [out.file_id]
    assert hashlib.sha256((disk / live[0].rel_path).read_bytes()).hexdigest() == out.sha256


# --- 7. a store disk is known by its marker, not by its path ----------------------------------


def test_an_empty_mount_point_is_never_taken_for_the_disk(store_env) -> None:
    catalog, disk = store_env
    put_file(catalog, disk)
    real = disk.with_name("disk1.real")
    os.rename(disk, real)
    disk.mkdir()  # the data disk did not mount: its bare mount point is left
    store = Store([disk], 0)
    why = DiskBook(catalog, "T1").identify(store.disks[0])
    assert why and "mounted" in why
    assert not store.disks[0].present() and store.reserve(1) is None
    os.rmdir(disk)
    os.rename(real, disk)  # mounted after all
    assert DiskBook(catalog, "T1").identify(store.disks[0]) is None
    assert store.reserve(1) is store.disks[0]


def test_an_unmounted_disk_under_a_running_store_is_no_longer_used(store_env) -> None:
    catalog, disk = store_env
    store = store_of(catalog, disk)
    assert store.pick(1) is store.disks[0]
    (disk / ".station-disk.json").rename(disk.parent / "marker-aside")  # as an unmount shows it
    assert store.pick(1) is None


def test_a_disk_mounted_at_another_path_keeps_its_rows(store_env, tmp_path) -> None:
    catalog, disk = store_env
    ids = {put_file(catalog, disk, f"100001_B1_20200101080000_000{i}.MP4") for i in range(3)}
    moved = tmp_path / "mnt-b"
    os.rename(disk, moved)  # the mounts were renamed or reordered
    report = recover(catalog, store_of(catalog, moved).disks)
    assert not report.adopted and not report.missing
    with catalog.read() as s:
        live = s.scalars(select(StoredFile).where(StoredFile.deleted_at.is_(None))).all()
    assert {f.id for f in live} == ids and {f.disk for f in live} == {str(moved)}


def test_another_stations_disk_is_refused_until_an_administrator_adopts_it(
    store_env, tmp_path
) -> None:
    from station.store.identity import write_marker

    catalog, disk = store_env
    put_file(catalog, disk)
    foreign = tmp_path / "disk2"
    foreign.mkdir()
    write_marker(foreign, "OTHER-STATION")
    store = Store([disk, foreign], 0)
    book = DiskBook(catalog, "T1")
    assert book.identify(store.disks[0]) is None
    assert "another station" in (book.identify(store.disks[1]) or "")
    book.adopt(store.disks[1], "900001")
    assert book.identify(store.disks[1]) is None
    with catalog.read() as s:
        from station.catalog import Event

        assert s.scalars(select(Event).where(Event.kind == "disk_identified",
                                             Event.actor == "900001")).first()  # fmt: skip


def test_an_unmounted_disk_gets_no_footage_through_the_daemon(make_station) -> None:
    from conftest import card_hashes, wait_for

    from station.sim.recorder import RecorderSpec

    st = make_station()
    rec = st.build(RecorderSpec(serial="M000001", officer_no="300001", files=2, size_mb=0.2))
    first = len(card_hashes(rec))
    st.dock(1, rec)
    st.wait_state(1, "complete")
    st.stop()
    real = st.disks[0].with_name("disk1.real")
    os.rename(st.disks[0], real)
    st.disks[0].mkdir()  # disk 1 did not mount at boot: an empty folder on the system disk
    st.start()
    alarms = {a["code"]: a for a in st.api("/api/v1/status")["alarms"]}
    assert "mounted" in alarms["disk_missing"]["message"]
    rec2 = st.build(RecorderSpec(serial="M000002", officer_no="300002", files=3, size_mb=0.2), 2)
    source = card_hashes(rec2)
    st.dock(2, rec2)
    st.wait_state(2, "complete")
    assert list(st.disks[0].iterdir()) == []  # nothing hidden under the mount point
    items = st.api("/api/v1/files", serial="M000002")["items"]
    assert len(items) == len(source)
    assert all(i["stored_path"].startswith(f"{st.disks[1]}/") for i in items)
    # the disk is mounted again: taken back into use, nothing catalogued twice
    os.rmdir(st.disks[0])
    os.rename(real, st.disks[0])
    wait_for(lambda: "disk_missing" not in {a["code"] for a in st.api("/api/v1/status")["alarms"]},
             60, "disk 1 to be back")  # fmt: skip
    assert st.api("/api/v1/files")["total"] == first + len(source)


# --- 5. a station clock that cannot be believed ---------------------------------------------


def test_a_paused_sweep_deletes_nothing_by_age_but_still_makes_room() -> None:
    from station.retention.sweeper import DiskFacts, FileFacts, plan_sweep

    now = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    old = now - dt.timedelta(days=400)
    files = [FileFacts(i, "/d1", 10**9, old + dt.timedelta(days=i), "normal", False)
             for i in range(1, 6)]  # fmt: skip
    roomy = [DiskFacts("/d1", 100 * 10**9, 90 * 10**9)]
    rules = Rules(days={"normal": 30, "important": None, "evidence": None},
                  high_water=0.9, low_water=0.7)  # fmt: skip
    assert plan_sweep(files, roomy, rules, now).expired == [1, 2, 3, 4, 5]
    paused = plan_sweep(files, roomy, rules, now, paused="clock jumped")
    assert paused.expired == [] and paused.paused == "clock jumped"
    full = [DiskFacts("/d1", 10 * 10**9, 5 * 10**8)]
    assert plan_sweep(files, full, rules, now, paused="clock jumped").overwrite  # room made
    # a file collected under an untrusted clock is never deleted by age, overwritten last
    untrusted = [dataclasses.replace(files[0], clock_untrusted=True), *files[1:]]
    plan = plan_sweep(untrusted, roomy, rules, now)
    assert 1 not in plan.expired and 1 in plan.review
    plan = plan_sweep(untrusted, [DiskFacts("/d1", 5 * 10**9, 0)], rules, now, paused="x")
    assert plan.overwrite == [2, 3]  # the oldest trusted ones; the untrusted one goes last


def test_clock_guard_distrusts_a_clock_that_went_back_or_jumped(store_env) -> None:
    from station.health.clockguard import RELEASED, ClockGuard

    catalog, _disk = store_env
    guard = ClockGuard(catalog, max_jump_days=2)
    t0 = RELEASED + dt.timedelta(days=30)
    assert guard.untrusted(t0) is None  # believed: the high-water time moves up
    assert guard.sweep_pause(t0, synced=False) is None
    assert guard.untrusted(RELEASED - dt.timedelta(days=3000))  # a dead RTC battery: 2018
    assert guard.untrusted(t0 - dt.timedelta(days=1))  # earlier than what it showed before
    assert "went back" in guard.sweep_pause(t0 - dt.timedelta(days=1), synced=False)
    assert "jumped ahead" in guard.sweep_pause(t0 + dt.timedelta(days=900), synced=False)
    assert guard.sweep_pause(t0 + dt.timedelta(days=1), synced=False) is None  # normal time
    # NTP, or an administrator, makes the clock believed again, forwards or back
    assert guard.sweep_pause(t0 + dt.timedelta(days=900), synced=True) is None
    assert guard.sweep_pause(t0, synced=False) is not None
    ClockGuard(catalog, 2).confirm(t0, by="admin")  # `station retention resume`, another process
    assert guard.sweep_pause(t0, synced=False) is None


def test_a_new_station_believes_its_first_clock_reading(store_env) -> None:
    # installed long after the release, nothing collected yet: no jump to pause for
    from station.health.clockguard import RELEASED, ClockGuard

    catalog, _disk = store_env
    first = RELEASED + dt.timedelta(days=400)
    guard = ClockGuard(catalog, max_jump_days=2)
    assert guard.sweep_pause(first, synced=False) is None
    assert "went back" in guard.sweep_pause(first - dt.timedelta(days=3), synced=False)
    assert ClockGuard(catalog, max_jump_days=2).untrusted(first - dt.timedelta(days=3))
    # a clock before the release is never believed, even as the first reading
    assert ClockGuard(catalog, 2).untrusted(RELEASED - dt.timedelta(days=1))


def test_the_high_water_time_outlives_a_stop_before_any_sweep(store_env) -> None:
    # a daemon that collects and stops before its first sweep: the next process (the CLI
    # sweep) must know the time it believed, not derive it from collection times that an
    # administrator or a restore may since have changed
    from station.health.clockguard import RELEASED, STATE, ClockGuard

    catalog, _disk = store_env
    t0 = RELEASED + dt.timedelta(days=300)
    assert ClockGuard(catalog, max_jump_days=2).untrusted(t0) is None
    assert catalog.get_state(STATE) == t0.isoformat()
    assert ClockGuard(catalog, max_jump_days=2).sweep_pause(t0, synced=False) is None


def _console(st: Any, who: tuple[str, str]) -> httpx.Client:
    """A logged-in console session (cookie and CSRF header), as the touchscreen has."""
    c = httpx.Client(base_url=st.url(""), timeout=60)
    csrf = c.get("/ui/api/session").json()["csrf"]
    r = c.post("/ui/api/login", json={"officer_no": who[0], "secret": who[1]},
               headers={"X-CSRF-Token": csrf})  # fmt: skip
    assert r.status_code == 200, r.text
    c.headers["X-CSRF-Token"] = r.json()["csrf"]
    return c


@pytest.mark.parametrize("resume", ["cli", "touchscreen"])
def test_a_clock_jump_pauses_retention_and_marks_files_through_the_daemon(
    make_station: Any, resume: str
) -> None:
    from conftest import card_hashes, wait_for

    from station import accounts
    from station.sim.recorder import RecorderSpec

    st = make_station(retention={"sweep_interval_s": 1.0, "days": 1})
    rec = st.build(RecorderSpec(serial="C000001", officer_no="310001", files=2, imp=0,
                                size_mb=0.2))  # fmt: skip
    first = len(card_hashes(rec))
    st.dock(1, rec)
    st.wait_state(1, "complete")
    st.stop()
    st.query("UPDATE files SET collected_at = datetime(collected_at, '-30 days')")
    # the station last believed a time 10 days from now: its clock now reads 10 days back
    ahead = (dt.datetime.now(dt.UTC) + dt.timedelta(days=10)).isoformat()
    st.query("INSERT OR REPLACE INTO station_state (key, value) VALUES (?, ?)",
             "clock_high_water", ahead)  # fmt: skip
    st.start()
    wait_for(lambda: "clock_jump" in {a["code"] for a in st.api("/api/v1/status")["alarms"]},
             60, "the clock_jump alarm")  # fmt: skip
    assert st.api("/api/v1/files")["total"] == first  # expired, but nothing deleted by age
    rec2 = st.build(RecorderSpec(serial="C000002", officer_no="310002", files=1, imp=0,
                                 size_mb=0.2), 2)  # fmt: skip
    second = len(card_hashes(rec2))
    st.dock(2, rec2)
    st.wait_state(2, "complete")
    flags = st.query("SELECT r.serial, f.clock_untrusted FROM files f "
                     "JOIN recorders r ON r.id = f.recorder_id")  # fmt: skip
    assert {s for s, bad in flags if bad} == {"C000002"}
    listed = st.cli("retention", "untrusted").stdout
    assert "/C000002/" in listed and "/C000001/" not in listed
    if resume == "cli":
        st.cli("retention", "resume", "--by", "900001")
    else:
        catalog = Catalog(st.db)
        accounts.create_user(catalog, "900001", "135790", role="administrator")
        accounts.create_user(catalog, "800001", "246801", role="officer")
        catalog.close()
        officer = _console(st, ("800001", "246801"))
        assert officer.post("/ui/api/retention/resume").status_code == 403
        admin = _console(st, ("900001", "135790"))
        assert "went back" in admin.get("/ui/api/settings").json()["retention_paused"]
        r = admin.post("/ui/api/retention/resume")
        assert r.status_code == 200 and r.json() == {"retention_paused": None}, r.text
        assert "clock_jump" not in {a["code"] for a in st.api("/api/v1/status")["alarms"]}
    confirmed = st.api("/api/v1/events", kind="clock_confirmed")["items"]
    assert [e["actor"] for e in confirmed] == ["900001"]
    wait_for(lambda: st.api("/api/v1/files", serial="C000001")["total"] == 0, 60,
             "the sweep to go on")  # fmt: skip
    # collected under the untrusted clock: never deleted by age
    assert st.api("/api/v1/files", serial="C000002")["total"] == second


# --- 13. the newest entries of the log cannot vanish unseen ---------------------------------


def test_deleting_the_newest_log_entries_shows_against_the_anchors(store_env) -> None:
    import sqlite3

    from station.catalog.db import append_event, verify_chain
    from station.eventlog import verify_anchors, write_anchors

    catalog, disk = store_env
    for i in range(5):
        with catalog.write() as s:
            append_event(s, "test", f"entry {i}")
    head = write_anchors(catalog, [disk], "T1")
    assert verify_anchors(catalog, [disk]) == []
    con = sqlite3.connect(catalog.path)
    with con:  # someone with the database deletes the last two entries ...
        con.execute("DELETE FROM events WHERE id > ?", (head["last_id"] - 2,))
    con.close()
    with catalog.read() as s:
        assert verify_chain(s) == []  # ... which the chain alone cannot show
    problems = verify_anchors(catalog, [disk])
    assert problems and "deleted" in problems[0]
    with catalog.write() as s:  # ... and ids are never handed out again to cover it up
        ev = append_event(s, "test", "new entry")
    assert ev.id > head["last_id"]
    assert verify_anchors(catalog, [disk])  # still shows
    (disk / ".station-log-anchor.json").unlink()  # ... and so does removing the anchor too
    assert any("missing" in p for p in verify_anchors(catalog, [disk]))


# --- 11 and 14. files that are not this recorder's; a file no disk can hold -----------------


def test_files_naming_another_recorder_or_officer_are_kept_for_an_administrator(
    make_station,
) -> None:
    from conftest import card_hashes

    from station.sim import media
    from station.sim.recorder import RecorderSpec

    st = make_station()
    rec = st.build(RecorderSpec(serial="N000001", officer_no="320001", files=2, imp=0,
                                size_mb=0.2))  # fmt: skip
    folder = rec / "card" / "DCIM" / "100ANDRO"
    strangers = {
        folder / "320001_Z999999_20261201080000_0007.MP4": "another recorder",
        folder / "329999_N000001_20261201080000_0008.MP4": "another officer",
    }
    for path in strangers:
        media.make_video(path, 200_000, label=path.name)
    source = card_hashes(rec)
    docked = st.dock(1, rec)
    slot = st.wait_state(1, "error")
    assert "kept on the recorder" in slot["error"]
    left = card_hashes(docked)
    assert {Path(p).name for p in left} == {p.name for p in strangers}  # untouched
    for p, (size, digest) in left.items():
        assert source[p] == (size, digest)
    names = {i["name"] for i in st.api("/api/v1/files")["items"]}
    assert names == {Path(p).name for p in source} - {p.name for p in strangers}
    held = st.query("SELECT message FROM events WHERE kind = 'file_held'")
    assert len(held) == 2 and any("Z999999" in m for (m,) in held)


# --- 11. after SetMSDC, the disk must be the identified recorder ------------------------


class _Mounter(Mounter):
    """Records what is mounted and unmounted where; touches no kernel."""

    def __init__(self) -> None:
        self.mounted: list[Path] = []
        self.unmounted: list[Path] = []

    def mount(self, dev: BlockDevice, target: Path) -> None:
        self.mounted.append(target)

    def unmount(self, target: Path, *, lazy: bool = False) -> None:
        self.unmounted.append(target)


def _usb(port: int, key: str, serial: str | None, path: str = "/sys/nowhere") -> DockedDevice:
    return DockedDevice(port=port, key=key, kind="usb", path=path, serial=serial)


@pytest.mark.parametrize(
    ("before", "after", "ok"),
    [
        ("ZFY0003", "ZFY0003", True),  # the same iSerial in both modes
        (None, "0123456789AB", True),  # nothing to compare: the file names decide
        ("USB-A", "ZFY0003", True),  # the disk reports the recorder's own number
        ("ZFY0003", "ZFY0009", False),  # another recorder docked while this one switched
    ],
)
def test_the_disk_after_the_switch_must_be_the_identified_recorder(
    tmp_path: Path, before: str | None, after: str, ok: bool
) -> None:
    mounted: list[DockedDevice] = []
    fake = SimpleNamespace(
        config=lambda: SimpleNamespace(bus=SimpleNamespace(reenumerate_timeout_s=5)),
        card_waits={},
        slots={3: SimpleNamespace(generation=0)},
        on_loop=lambda work: work(),
        mount=lambda d: mounted.append(d) or SimpleNamespace(close=lambda: None),
    )
    with CardWait(fake, _usb(3, "vendor", before), 0) as wait:  # type: ignore[arg-type]
        wait.came_back(_usb(3, "disk", after))
        if ok:
            wait.card("ZFY0003")
        else:
            with pytest.raises(NotThisRecorder, match="ZFY0009"):
                wait.card("ZFY0003")
    assert [d.key for d in mounted] == (["disk"] if ok else [])


# --- 14. a docking never shares, nor is unmounted by, an older docking's folder ----------


def test_each_docking_mounts_its_card_in_a_folder_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = tmp_path / "sys-device"
    node.mkdir()
    dev = BlockDevice("/dev/sdz1", "vfat", str(node))
    monkeypatch.setattr(mount_mod, "find_card_device", lambda path, **_: dev)
    mounter = _Mounter()
    root = tmp_path / "cards"
    old = mount_mod.mount_card(mounter, _usb(1, "a", "S1", str(node)), root)
    new = mount_mod.mount_card(mounter, _usb(1, "b", "S1", str(node)), root)
    assert old.target != new.target and old.target.parent == new.target.parent == root
    old.close()  # the first docking lets go late, after the second one mounted
    assert mounter.unmounted == [old.target]
    assert new.target.is_dir() and not old.target.exists()
    # a killed run's folders are let go at the next start, before any docking
    (root / "port-2.deadbeef").mkdir()
    (root / "elsewhere").mkdir()
    assert sorted(mount_mod.clear_mount_root(mounter, root)) == sorted(
        [new.target.name, "port-2.deadbeef"]
    )
    assert [p.name for p in root.iterdir()] == ["elsewhere"]
