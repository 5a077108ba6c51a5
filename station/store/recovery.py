"""Making the store and the catalog agree again: at start-up, on demand, from scratch.

- `recover` runs at every start: finishes transfers that crashed after
  verification, clears staging files no transfer will resume, adopts stored
  files the catalog does not know (from their sidecars) or quarantines them,
  and reports catalog rows whose file is gone.
- `rebuild` makes a new catalog from the disks alone (`station catalog rebuild`).
- `verify` re-hashes stored files against the catalog (`station catalog verify`).

Why one module of about 550 lines: the three share the one way of reconciling a sidecar
with a catalog row; keeping them together keeps that rule in one place.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from station import faults
from station.catalog import (
    Catalog,
    IngestJob,
    Officer,
    Recorder,
    StationState,
    StoredDisk,
    StoredFile,
)
from station.catalog.db import REBUILDING, append_event
from station.catalog.models import utcnow
from station.drivers.base import OfficerInfo
from station.ingest.registration import officer_for
from station.ingest.transfer import file_row, hash_file, store_row
from station.retention.protection import is_permanent
from station.retention.sweeper import remove_stored
from station.store.disks import MIRROR, ROOT_FILES, STAGING, StoreDisk, is_station_temp
from station.store.durable import fsync_dir, link_into_place, make_dirs_durable
from station.store.identity import DiskIdentityError, read_marker, write_marker
from station.store.sidecar import (
    META,
    Sidecar,
    SidecarError,
    mirror_row,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

log = logging.getLogger(__name__)

QUARANTINE = ".quarantine"
HIDDEN = {STAGING, META, QUARANTINE, MIRROR}  # folders at a disk's root: no catalogued files


@dataclass
class Report:
    finished: list[str] = field(default_factory=list)  # verified transfers committed
    adopted: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    staging_removed: list[str] = field(default_factory=list)
    deletions_finished: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # second copies, quarantined
    restored: list[str] = field(default_factory=list)  # final names re-made from staging
    sidecars_rewritten: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # steps that failed; recovery went on
    checked: int = 0

    def lines(self) -> list[str]:
        out = []
        for name in (
            "finished",
            "adopted",
            "quarantined",
            "missing",
            "mismatched",
            "staging_removed",
            "restored",
            "sidecars_rewritten",
            "errors",
        ):
            for item in getattr(self, name):
                out.append(f"{name}: {item}")
        return out


def stored_files(disk: Path) -> Iterator[str]:
    """Relative paths of the evidence files on a disk (not staging, sidecars or quarantine)."""
    for root, dirs, files in os.walk(disk):
        if Path(root) == disk:
            dirs[:] = [d for d in dirs if d not in HIDDEN]
            files = [f for f in files if f not in ROOT_FILES and not is_station_temp(f)]
        for f in files:
            yield os.path.relpath(os.path.join(root, f), disk)


def adopt(s: Session, disk: Path, rel: str, sc: Sidecar) -> StoredFile:
    """Catalogue a stored file from its sidecar, creating its officer and recorder if needed."""
    officer = officer_for(
        s, OfficerInfo(sc.serial, sc.officer_no, sc.officer_name, sc.unit_no, sc.unit_name)
    )
    recorder = s.scalars(select(Recorder).where(Recorder.serial == sc.serial)).first()
    if recorder is None:
        recorder = Recorder(
            serial=sc.serial,
            id_code=sc.id_code,
            officer_id=officer.id,
            status="registered",
            registered_how="rebuilt",
            registered_at=utcnow(),
            registered_by="catalog rebuild",
            block_officer_no=sc.officer_no,
        )
        s.add(recorder)
        s.flush()
    f = file_row(sc, disk, rel, officer_id=officer.id, recorder_id=recorder.id)
    s.add(f)
    s.flush()
    return f


def _quarantine(disk: Path, rel: str, why: str, report: Report) -> None:
    src = disk / rel
    dst = disk / QUARANTINE / rel
    make_dirs_durable(dst.parent, disk)
    n = 1
    while dst.exists():
        dst = dst.with_name(f"{Path(rel).name}~{n}")
        n += 1
    os.rename(src, dst)
    fsync_dir(dst.parent)
    fsync_dir(src.parent)
    report.quarantined.append(f"{src} -> {dst}: {why}")


def live_copy(s: Session, serial: str, card_path: bytes, sha256: str) -> StoredFile | None:
    """A live catalogued copy of the same card file (same recorder, path and bytes)."""
    return s.scalars(
        select(StoredFile)
        .join(Recorder, StoredFile.recorder_id == Recorder.id)
        .where(
            Recorder.serial == serial,
            StoredFile.card_path == card_path,
            StoredFile.sha256 == sha256,
            StoredFile.deleted_at.is_(None),
        )
    ).first()


def _adopt_or_quarantine(catalog: Catalog, disk: Path, rel: str, report: Report) -> None:
    try:
        sc = read_sidecar(sidecar_path(disk, rel))
    except SidecarError as e:
        _quarantine(disk, rel, f"no usable sidecar ({e})", report)
        return
    if sc.deleted_at:  # a deletion was under way when the station stopped
        if sc.protected:  # ... of a protected file: never finished without a person
            _quarantine(disk, rel, "its sidecar says deleted, but it is protected", report)
        else:
            remove_stored(disk / rel)
            report.deletions_finished.append(str(disk / rel))
        return
    try:
        intact = (disk / rel).stat().st_size == sc.size and hash_file(
            disk / rel
        ).hexdigest() == sc.sha256
    except OSError as e:
        _quarantine(disk, rel, f"cannot be read ({e})", report)
        return
    if not intact:
        _quarantine(disk, rel, "bytes do not match the sidecar's hash", report)
        return
    with catalog.write() as s:
        other = live_copy(s, sc.serial, sc.card_path, sc.sha256)
        if other is None:
            f = adopt(s, disk, rel, sc)
            append_event(
                s,
                "file_adopted",
                f"{disk / rel}",
                serial=sc.serial,
                officer_no=sc.officer_no,
                file_id=f.id,
                sha256=sc.sha256,
            )
    if other is not None:
        _quarantine(disk, rel, f"a second copy of stored file {other.id}", report)
        report.duplicates.append(str(disk / rel))
        return
    report.adopted.append(str(disk / rel))


def _finish_verified(catalog: Catalog, disk: StoreDisk, job: IngestJob, report: Report) -> None:
    """Commit a transfer that was verified (sidecar written, maybe linked) before a stop."""
    assert job.final_path is not None
    final, temp = disk.path / job.final_path, Path(job.temp_path)
    if not final.exists() and temp.exists():
        link_into_place(temp, final)
    elif temp.exists() and final.exists() and hash_file(final).hexdigest() == job.sha256:
        remove_stored(temp)
    if not final.exists():
        # neither copy survived: the recorder still holds the file, collect it again
        with catalog.write() as s:
            row = s.get(IngestJob, job.id)
            assert row is not None
            row.state, row.error = "abandoned", "verified copy lost before commit"
        return
    fsync_dir(final.parent)  # a link made just before a power cut may not be durable yet
    try:
        sc = read_sidecar(sidecar_path(disk.path, job.final_path))
    except SidecarError:
        return  # left to the orphan pass
    if hash_file(final).hexdigest() != sc.sha256 or sc.sha256 != job.sha256:
        return  # left to the orphan pass (quarantined there)
    with catalog.write() as s:
        row = s.get(IngestJob, job.id)
        assert row is not None
        if row.state != "verified":
            return
        if live_copy(s, sc.serial, sc.card_path, sc.sha256) is not None:
            row.state, row.error = "superseded", "the file was stored by another job"
            return  # the orphan pass quarantines this copy as a duplicate
        store_row(
            s,
            job,
            disk.path,
            sc,
            officer_id=_officer_id(s, job, sc),
            session_id=job.session_id,
            message=f"recovered after a stop: {final}",
        )
    report.finished.append(str(final))


def _clear_staging(catalog: Catalog, disk: StoreDisk, resumable: set[str], report: Report) -> None:
    """Remove staging files no transfer will resume, unless one is the last copy of a file."""
    if not disk.staging.is_dir():
        return
    for temp in list(disk.staging.iterdir()):
        if str(temp) in resumable:
            continue
        job_id = temp.name.removesuffix(".part")
        with catalog.read() as s:
            job = s.get(IngestJob, int(job_id)) if job_id.isdigit() else None
        if job is None:
            _quarantine(
                disk.path, str(temp.relative_to(disk.path)), "staging file of no job", report
            )
            continue
        final = disk.path / job.final_path if job.final_path else None
        if (
            job.state in ("stored", "clearing", "cleared")
            and final is not None
            and not final.exists()
            and job.disk == str(disk.path)
            and job.sha256 == hash_file(temp).hexdigest()
        ):
            link_into_place(temp, final)  # the link was lost in a power cut: this is the file
            report.restored.append(str(final))
            continue
        remove_stored(temp)
        report.staging_removed.append(str(temp))


def reconcile_sidecars(catalog: Catalog, disk: Path, report: Report) -> None:
    """Every live row's sidecar says what the row says (grade, hold, not deleted).

    The row is the truth while it is live: a sidecar left marked deleted by a deletion
    that never committed, or holding an older grade, is rewritten from it; a missing or
    unreadable one is written anew. A sidecar naming other bytes or another officer is
    reported (an alarm), never rewritten.
    """
    with catalog.read() as s:
        rows = list(
            s.scalars(
                select(StoredFile).where(
                    StoredFile.disk == str(disk), StoredFile.deleted_at.is_(None)
                )
            )
        )
    for row in rows:
        path = sidecar_path(disk, row.rel_path)
        try:
            sc = read_sidecar(path)
        except SidecarError:
            if not (disk / row.rel_path).exists():
                continue  # reported as missing
            write_sidecar(disk, row.rel_path, sidecar_of(row))
            report.sidecars_rewritten.append(str(path))
            continue
        if (sc.sha256, sc.size, sc.officer_no, sc.serial) != (
            row.sha256,
            row.size,
            row.officer.officer_no,
            row.recorder.serial,
        ):
            report.mismatched.append(f"{path}: describes another file than catalog row {row.id}")
            continue
        live = mirror_row(sc, row)
        if live != sc:
            write_sidecar(disk, row.rel_path, live)
            report.sidecars_rewritten.append(str(path))


def sidecar_of(row: StoredFile) -> Sidecar:
    """A sidecar written from a catalog row (when the file's own was lost)."""
    return mirror_row(
        Sidecar(
            sha256=row.sha256,
            size=row.size,
            officer_no=row.officer.officer_no,
            serial=row.recorder.serial,
            card_path_hex=row.card_path.hex(),
            name=row.name,
            collected_at=row.collected_at.isoformat(),
            officer_name=row.officer.name,
            unit_no=row.officer.unit_no,
            unit_name=row.officer.unit_name,
            id_code=row.recorder.id_code,
            kind=row.kind,
            recorded_at=row.recorded_at.isoformat() if row.recorded_at else None,
            clock_untrusted=bool(row.clock_untrusted),
        ),
        row,
    )


def recover(catalog: Catalog, disks: list[StoreDisk]) -> Report:
    """Bring the catalog and the disks back into agreement after any stop, clean or not.

    Never raises for one bad file: whatever cannot be settled is reported (and alarmed
    by the caller), and the station starts.
    """
    report = Report()
    by_path = {str(d.path): d for d in disks if d.present()}
    with catalog.read() as s:
        jobs = s.scalars(select(IngestJob).where(IngestJob.state.in_(("copying", "verified"))))
        jobs = list(jobs)
    resumable = {job.temp_path for job in jobs if job.state == "copying"}
    for job in jobs:
        disk = by_path.get(job.disk)
        if job.state != "verified" or disk is None or job.final_path is None:
            continue
        _settle(report, f"job {job.id}", _finish_verified, catalog, disk, job, report)
        faults.crashpoint("recovery_after_finish")
    for disk in by_path.values():
        _settle(report, str(disk.path), _remove_station_temps, disk.path)
        _settle(report, str(disk.staging), _clear_staging, catalog, disk, resumable, report)
        known, deleted = _catalogued(catalog, disk.path)
        for rel in stored_files(disk.path):
            if rel in known:
                continue
            if rel in deleted:
                _settle(report, rel, _finish_deletion, disk.path, rel, report)
            else:
                _settle(report, rel, _adopt_or_quarantine, catalog, disk.path, rel, report)
        _settle(report, str(disk.path), reconcile_sidecars, catalog, disk.path, report)
        for rel in known:
            if not (disk.path / rel).exists():
                report.missing.append(str(disk.path / rel))
    if started := catalog.get_state(REBUILDING):
        # a rebuild cut short (it holds the catalog's lock while it runs, as the daemon
        # that calls this does): the files it had not reached are catalogued above, the
        # ids it gave are final, so holds and grades may go on
        with catalog.write() as s:
            s.merge(StationState(key=REBUILDING, value=""))
            append_event(
                s, "catalog_rebuild_completed", f"the catalog rebuild started {started} was "
                "cut short; recovery catalogued the rest from the sidecars of the disks "
                "present (a disk not here is catalogued when it is back)",
            )  # fmt: skip
    if report.lines():
        with catalog.write() as s:
            append_event(
                s,
                "store_recovered",
                "; ".join(report.lines())[:4000],
                adopted=len(report.adopted),
                quarantined=len(report.quarantined),
                missing=len(report.missing),
                finished=len(report.finished),
                duplicates=len(report.duplicates),
                errors=len(report.errors),
            )
    return report


def _remove_station_temps(disk: Path) -> None:
    """The torn atomic writes of the marker and the log anchor (their complete files stay)."""
    with os.scandir(disk) as entries:
        strays = [e.path for e in entries if e.is_file(follow_symlinks=False)]
    for path in strays:
        if is_station_temp(os.path.basename(path)):
            os.unlink(path)
            log.info("removed %s, an unfinished write of station metadata", path)


def _settle(report: Report, what: str, step: Callable[..., None], *args: Any) -> None:
    """Run one recovery step; a failure is reported, and recovery goes on."""
    try:
        step(*args)
    except Exception as e:
        log.exception("recovery: %s", what)
        report.errors.append(f"{what}: {type(e).__name__}: {e}")


def _finish_deletion(disk: Path, rel: str, report: Report) -> None:
    """The row is tombstoned but the file is still there: the removal was cut short. Its
    sidecar showing a hold or a permanent category (neither can be deleted: a person would
    have released or re-categorised it first) puts it aside for a person instead."""
    try:
        sc: Sidecar | None = read_sidecar(sidecar_path(disk, rel))
    except SidecarError:
        sc = None
    if sc is not None and sc.legal_hold:
        _quarantine(disk, rel, "tombstoned in the catalog, but its sidecar shows a hold", report)
        return
    if sc is not None and is_permanent(sc.retention_category):
        _quarantine(disk, rel, "tombstoned in the catalog, but its sidecar shows a permanent "
                    f"retention category ({sc.retention_category})", report)  # fmt: skip
        return
    remove_stored(disk / rel)
    report.deletions_finished.append(str(disk / rel))


def _officer_id(s: Session, job: IngestJob, sc: Sidecar) -> int:
    """The officer a recovered job is committed to: the one it began for."""
    if job.officer_id is not None:
        return job.officer_id
    officer = s.scalars(select(Officer).where(Officer.officer_no == sc.officer_no)).first()
    if officer is not None:
        return officer.id
    recorder = s.get(Recorder, job.recorder_id)
    assert recorder is not None and recorder.officer_id is not None
    return recorder.officer_id


def _catalogued(catalog: Catalog, disk: Path) -> tuple[set[str], set[str]]:
    """(paths of live rows, paths of tombstoned rows) on one disk."""
    with catalog.read() as s:
        rows = s.execute(
            select(StoredFile.rel_path, StoredFile.deleted_at).where(StoredFile.disk == str(disk))
        ).all()
    return ({r for r, d in rows if d is None}, {r for r, d in rows if d is not None})


def sidecars(disk: Path) -> Iterator[str]:
    """Relative paths of the stored files that have a sidecar on a disk."""
    meta = disk / META
    for root, _dirs, files in os.walk(meta):
        for f in files:
            if f.endswith(".json"):
                yield os.path.relpath(os.path.join(root, f), meta)[: -len(".json")]


def rebuild(catalog: Catalog, disks: list[Path], *, check_hashes: bool = True) -> Report:
    """Fill an empty catalog from the sidecars on the disks, tombstones included. While it
    runs (and after it was cut short) file ids are not yet final: holds and grades wait."""
    report = Report()
    catalog.set_state(REBUILDING, utcnow().isoformat())
    for disk in disks:
        try:
            marker = read_marker(disk)
        except DiskIdentityError as e:
            report.errors.append(str(e))
            marker = None
        if marker is None and (disk / META).is_dir():  # rebuilt from its sidecars: ours
            marker = write_marker(disk, "")
        if marker is not None:  # the rebuilt catalog knows the disk it was rebuilt from
            with catalog.write() as s:
                s.merge(StoredDisk(uuid=marker.uuid, path=str(disk), taken_by="catalog rebuild"))
        described = set()
        for rel in sidecars(disk):
            described.add(rel)
            _settle(report, str(disk / rel), _rebuild_one, catalog, disk, rel, check_hashes, report)
        for rel in stored_files(disk):
            if rel not in described:
                report.quarantined.append(f"{disk / rel}: no sidecar; left where it is")
    with catalog.write() as s:
        append_event(
            s,
            "catalog_rebuilt",
            f"{len(report.adopted)} files from the disks",
            adopted=len(report.adopted),
            unreadable=len(report.quarantined),
            mismatched=len(report.mismatched),
        )
    catalog.set_state(REBUILDING, "")
    return report


def _rebuild_one(
    catalog: Catalog, disk: Path, rel: str, check_hashes: bool, report: Report
) -> None:
    path = disk / rel
    try:
        sc = read_sidecar(sidecar_path(disk, rel))
    except SidecarError as e:
        report.quarantined.append(f"{path}: unusable sidecar ({e})")
        return
    if sc.deleted_at and sc.protected and path.exists():
        # never delete protected footage on a sidecar's word: a person decides
        report.quarantined.append(f"{path}: sidecar says deleted, but it is protected")
        return
    if sc.deleted_at:
        remove_stored(path)
    elif not path.exists():
        return  # written just before a stop that lost the file: nothing to record
    elif check_hashes and hash_file(path).hexdigest() != sc.sha256:
        report.mismatched.append(str(path))
        return
    with catalog.write() as s:
        other = None if sc.deleted_at else live_copy(s, sc.serial, sc.card_path, sc.sha256)
        if other is None:
            adopt(s, disk, rel, sc)
    if other is not None:
        _quarantine(disk, rel, f"a second copy of stored file {other.id}", report)
        report.duplicates.append(str(path))
        return
    report.adopted.append(str(path))


def verify(
    catalog: Catalog, *, progress: Callable[[StoredFile, bool], None] | None = None
) -> Report:
    """Re-hash every stored file against its catalog row."""
    report = Report()
    with catalog.read() as s:
        rows = list(s.scalars(select(StoredFile).where(StoredFile.deleted_at.is_(None))))
    for f in rows:
        path = Path(f.disk) / f.rel_path
        try:
            ok = hash_file(path, uncached=True).hexdigest() == f.sha256
        except FileNotFoundError:
            report.missing.append(str(path))
            ok = False
        else:
            if not ok:
                report.mismatched.append(str(path))
        report.checked += 1
        if progress:
            progress(f, ok)
    return report


def move_aside(path: Path) -> Path:
    """Keep a damaged catalog file (and its WAL) beside the new one."""
    stamp = utcnow().strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.broken-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        if p.exists():
            shutil.move(p, Path(str(target) + suffix))
    return target
