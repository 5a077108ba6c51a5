"""Making the store and the catalog agree again: at start-up, on demand, from scratch.

- `recover` runs at every start: finishes transfers that crashed after
  verification, clears staging files no transfer will resume, adopts stored
  files the catalog does not know (from their sidecars) or quarantines them,
  and reports catalog rows whose file is gone.
- `rebuild` makes a new catalog from the disks alone (`station catalog rebuild`).
- `verify` re-hashes stored files against the catalog (`station catalog verify`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from drivers.base import OfficerInfo
from station.catalog import Catalog, IngestJob, Recorder, StoredFile
from station.catalog.db import append_event
from station.catalog.models import utcnow
from station.ingest import file_row, hash_file, store_row
from station.registration import officer_for
from station.retention import remove_stored
from station.sidecar import META, Sidecar, SidecarError, read_sidecar, sidecar_path
from station.store import STAGING, StoreDisk, fsync_dir, make_dirs_durable

log = logging.getLogger(__name__)

QUARANTINE = ".quarantine"
HIDDEN = {STAGING, META, QUARANTINE}


@dataclass
class Report:
    finished: list[str] = field(default_factory=list)  # verified transfers committed
    adopted: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    staging_removed: list[str] = field(default_factory=list)
    deletions_finished: list[str] = field(default_factory=list)
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
        ):
            for item in getattr(self, name):
                out.append(f"{name}: {item}")
        return out


def stored_files(disk: Path) -> Iterator[str]:
    """Relative paths of the evidence files on a disk (not staging, sidecars or quarantine)."""
    for root, dirs, files in os.walk(disk):
        if Path(root) == disk:
            dirs[:] = [d for d in dirs if d not in HIDDEN]
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


def _adopt_or_quarantine(catalog: Catalog, disk: Path, rel: str, report: Report) -> None:
    try:
        sc = read_sidecar(sidecar_path(disk, rel))
        if sc.deleted_at:  # a deletion was under way when the station stopped: finish it
            remove_stored(disk / rel)
            report.deletions_finished.append(str(disk / rel))
            return
        digest = hash_file(disk / rel).hexdigest()
    except (SidecarError, OSError) as e:
        _quarantine(disk, rel, f"no usable sidecar ({e})", report)
        return
    if digest != sc.sha256 or (disk / rel).stat().st_size != sc.size:
        _quarantine(disk, rel, "bytes do not match the sidecar's hash", report)
        return
    with catalog.write() as s:
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
    report.adopted.append(str(disk / rel))


def recover(catalog: Catalog, disks: list[StoreDisk]) -> Report:
    """Bring the catalog and the disks back into agreement after any stop, clean or not."""
    report = Report()
    by_path = {str(d.path): d for d in disks if d.present()}
    with catalog.read() as s:
        jobs = s.scalars(select(IngestJob).where(IngestJob.state.in_(("copying", "verified"))))
        jobs = list(jobs)
    resumable = set()
    for job in jobs:
        disk = by_path.get(job.disk)
        if job.state == "copying":
            resumable.add(job.temp_path)
            continue
        if disk is None or job.final_path is None:
            continue
        final, temp = disk.path / job.final_path, Path(job.temp_path)
        if not final.exists() and temp.exists():
            os.link(temp, final)
            fsync_dir(final.parent)
        if temp.exists() and final.exists():
            os.unlink(temp)
            fsync_dir(temp.parent)
        if not final.exists():
            # neither copy survived: the recorder still holds the file, collect it again
            with catalog.write() as s:
                row = s.get(IngestJob, job.id)
                assert row is not None
                row.state, row.error = "abandoned", "verified copy lost before commit"
            continue
        # the file is whole and in place: commit it (the sidecar was written first)
        try:
            sc = read_sidecar(sidecar_path(disk.path, job.final_path))
        except SidecarError:
            continue  # left to the orphan pass below
        if hash_file(final).hexdigest() != sc.sha256 or sc.sha256 != job.sha256:
            continue
        with catalog.write() as s:
            store_row(
                s,
                job,
                disk.path,
                sc,
                officer_id=_officer_id(s, job),
                session_id=job.session_id,
                message=f"recovered after a stop: {final}",
            )
        report.finished.append(str(final))

    for disk in by_path.values():
        if disk.staging.is_dir():
            for temp in disk.staging.iterdir():
                if str(temp) not in resumable:
                    temp.unlink()
                    report.staging_removed.append(str(temp))
        known, deleted = _catalogued(catalog, disk.path)
        for rel in stored_files(disk.path):
            if rel in deleted and rel not in known:
                remove_stored(disk.path / rel)  # tombstoned, removal cut short
                report.deletions_finished.append(str(disk.path / rel))
            elif rel not in known:
                _adopt_or_quarantine(catalog, disk.path, rel, report)
        for rel in known:
            if not (disk.path / rel).exists():
                report.missing.append(str(disk.path / rel))
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
            )
    return report


def _officer_id(s: Session, job: IngestJob) -> int:
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
    """Fill an empty catalog from the sidecars on the disks, tombstones included."""
    report = Report()
    for disk in disks:
        described = set()
        for rel in sidecars(disk):
            described.add(rel)
            path = disk / rel
            try:
                sc = read_sidecar(sidecar_path(disk, rel))
            except SidecarError as e:
                report.quarantined.append(f"{path}: unusable sidecar ({e})")
                continue
            if sc.deleted_at:
                remove_stored(path)
            elif not path.exists():
                continue  # written just before a stop that lost the file: nothing to record
            elif check_hashes and hash_file(path).hexdigest() != sc.sha256:
                report.mismatched.append(str(path))
                continue
            with catalog.write() as s:
                adopt(s, disk, rel, sc)
            report.adopted.append(str(path))
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
    return report


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
