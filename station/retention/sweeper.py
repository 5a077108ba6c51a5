"""Retention (S22, S34): expired footage is deleted, important footage never is.

`plan_sweep` is the whole policy, as a pure function of the files, the disks
and the rules, so it can be unit-tested and previewed (`station retention
preview`) before anything is deleted:

- a file is *protected* if it is marked important (IMP in its name, or level
  `important`), is `evidence`, or is under a legal hold: protected files are
  never deleted automatically, whatever the disks' state;
- an unprotected file whose level's retention period has run out is deleted;
- when every disk is past its high-water mark, the oldest unprotected files
  are deleted (overwrite) until each disk is back under its low-water mark; if
  only protected files remain, nothing is deleted and the station reports it
  cannot make room (collection then stops and `storage_full` is raised);
- a file in one of the 2016 rules' permanent categories (`CATEGORIES`: evidence in
  an administrative or criminal case, obstruction of duty, a major emergency or mass
  incident, another major or complex case) is never deleted, by age or to make room;
- when forwarding or the platform link is configured (`CentralCheck.required`), a
  file is never deleted, by age or to make room, before its central copy is
  verified (the central side's hash matched ours): it waits (`Plan.waiting_central`),
  and one waiting longer than `retention.central_stuck_hours` raises
  `central_unverified`.

The `RetentionSweeper` carries a plan out crash-safely: the sidecar is marked
deleted first, then the catalog row is tombstoned, then the file removed. A
stop in between is finished by start-up recovery, never undone.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy import func, select

from station import faults
from station.catalog import Catalog, StoredFile
from station.catalog.db import append_event
from station.catalog.models import utcnow
from station.config import StationConfig
from station.errors import DeletionError
from station.retention.protection import CATEGORIES, is_permanent, is_protected
from station.store.durable import remove
from station.store.mirror import remove_mirror
from station.store.sidecar import (
    Sidecar,
    SidecarError,
    mirror_row,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

log = logging.getLogger(__name__)
CLEARING_GRACE = dt.timedelta(minutes=10)  # a clearing mark older than this was left by a crash
# the stored files whose recorder copy this process is deleting right now: safe from a wall
# clock step, which can make the catalog's mark look stale (the mark is for other processes)
_clearing_now: set[int] = set()
_clearing_lock = threading.Lock()


def clearing(file_id: int, active: bool) -> None:
    """FileIngest: the card copy of `file_id` is being deleted (True), or no longer (False)."""
    with _clearing_lock:
        if active:
            _clearing_now.add(file_id)
        else:
            _clearing_now.discard(file_id)


@dataclass(frozen=True)
class FileFacts:
    id: int
    disk: str
    size: int
    collected_at: dt.datetime
    level: str
    important: bool
    legal_hold: str | None = None
    clock_untrusted: bool = False  # collected under a clock that could not be believed
    category: str | None = None  # a 2016 retention category (CATEGORIES)
    central_state: str | None = None  # the platform's copy: None/pending | verified | failed

    @property
    def protected(self) -> bool:
        return is_protected(self.important, self.level, self.legal_hold, self.category)

    @property
    def permanent(self) -> bool:
        return is_permanent(self.category)


@dataclass
class CentralCheck:
    """Whether a file's central copy is verified, when the station has a central copy at all.

    `platform`: the platform link uploads footage (its verified copy is
    `files.central_state == "verified"`); `forwarded`: the S3 forwarder's check (its
    HEAD after upload matched size, metadata and checksum), None until it runs. Either
    verified copy lets retention delete the local one."""

    platform: bool = False
    forward: bool = False
    forwarded: Callable[[int], bool] | None = None

    @property
    def required(self) -> bool:
        return self.platform or self.forward

    def verified(self, f: FileFacts) -> bool:
        if self.platform and f.central_state == "verified":
            return True
        return self.verified_elsewhere(f.id)

    def verified_elsewhere(self, file_id: int) -> bool:
        """Whether the S3 forwarder verified its copy of the file."""
        return bool(self.forward and self.forwarded is not None and self.forwarded(file_id))


@dataclass(frozen=True)
class DiskFacts:
    path: str
    total: int
    free: int


@dataclass(frozen=True)
class Rules:
    """Retention periods in days per level (None: kept until released) and water marks."""

    days: dict[str, int | None]
    high_water: float = 0.95  # fraction of a disk in use that starts overwriting
    low_water: float = 0.90  # fraction to get back under


@dataclass
class Plan:
    expired: list[int] = field(default_factory=list)  # past their retention period
    overwrite: list[int] = field(default_factory=list)  # oldest, to make room
    review: list[int] = field(default_factory=list)  # protected, period over: for people
    freed: dict[str, int] = field(default_factory=dict)  # bytes per disk
    cannot_make_room: list[str] = field(default_factory=list)  # disks full of protected files
    paused: str | None = None  # why nothing was deleted by age (the clock cannot be believed)
    waiting_central: list[int] = field(default_factory=list)  # due, central copy unverified
    permanent: list[int] = field(default_factory=list)  # due, but in a permanent category

    @property
    def delete(self) -> list[int]:
        return self.expired + self.overwrite

    @property
    def freed_bytes(self) -> int:
        return sum(self.freed.values())


def retention_rules(config: StationConfig) -> Rules:
    r = config.retention
    return Rules(
        days={"normal": r.days, "important": r.important_days, "evidence": r.evidence_days},
        high_water=r.high_water_percent / 100,
        low_water=r.low_water_percent / 100,
    )


def plan_sweep(
    files: Iterable[FileFacts],
    disks: Iterable[DiskFacts],
    rules: Rules,
    now: dt.datetime,
    *,
    paused: str | None = None,
    central_ok: Callable[[FileFacts], bool] | None = None,
) -> Plan:
    """What the next sweep deletes, and why. Pure: no I/O, no clock.

    `paused`: the station clock cannot be believed now, so nothing is deleted by age
    (overwrite when full goes on). A file collected under an untrusted clock is never
    deleted by age, and is overwritten only after every other unprotected file.
    `central_ok`: when given, a file it says False for (its central copy is not
    verified) is not deleted at all; it is asked only about files about to go.
    """
    plan = Plan(paused=paused)
    files = list(files)
    disks = {d.path: d for d in disks}
    gone: set[int] = set()
    held: set[int] = set()  # not deletable now whatever the disks' state

    def may_go(f: FileFacts) -> bool:
        if f.permanent or f.protected or f.id in held:
            return False
        if central_ok is not None and not central_ok(f):
            held.add(f.id)
            plan.waiting_central.append(f.id)
            return False
        return True

    for f in files if paused is None else ():
        if f.disk not in disks:
            continue  # its disk is not here: a hold placed meanwhile could not reach it
        days = rules.days.get(f.level, rules.days.get("normal"))
        if days is None or f.collected_at + dt.timedelta(days=days) > now:
            continue
        if f.permanent:
            plan.permanent.append(f.id)
        elif f.protected or f.clock_untrusted:
            plan.review.append(f.id)
        elif may_go(f):
            plan.expired.append(f.id)
            gone.add(f.id)
            plan.freed[f.disk] = plan.freed.get(f.disk, 0) + f.size

    def used(d: DiskFacts) -> float:
        return (d.total - d.free - plan.freed.get(d.path, 0)) / d.total if d.total else 0.0

    present = [d for d in disks.values() if d.total > 0]
    if present and all(used(d) > rules.high_water for d in present):
        for d in present:
            candidates = sorted(
                (
                    f
                    for f in files
                    if f.disk == d.path and f.id not in gone and not f.protected and not f.permanent
                ),
                key=lambda f: (f.clock_untrusted, f.collected_at, f.id),
            )
            for f in candidates:
                if used(d) <= rules.low_water:
                    break
                if not may_go(f):
                    continue
                plan.overwrite.append(f.id)
                gone.add(f.id)
                plan.freed[d.path] = plan.freed.get(d.path, 0) + f.size
            if used(d) > rules.high_water:
                plan.cannot_make_room.append(d.path)
    return plan


def upcoming_deletions(
    files: Iterable[FileFacts], rules: Rules, now: dt.datetime, days_ahead: int
) -> list[tuple[FileFacts, dt.datetime]]:
    """Files whose retention period runs out within `days_ahead` days (and would then be
    deleted by age), soonest first, with the time each is due. Pure."""
    until = now + dt.timedelta(days=days_ahead)
    out = []
    for f in files:
        days = rules.days.get(f.level, rules.days.get("normal"))
        if days is None or f.protected or f.permanent or f.clock_untrusted:
            continue
        due = f.collected_at + dt.timedelta(days=days)
        if due <= until:
            out.append((f, due))
    return sorted(out, key=lambda x: (x[1], x[0].id))


def days_until_full(free_bytes: int, collected_bytes: int, window_days: float) -> float | None:
    """At the rate of the window, how many days until the disks are full (None: no growth)."""
    if collected_bytes <= 0 or window_days <= 0:
        return None
    return free_bytes / (collected_bytes / window_days)


class DeletionRefused(DeletionError):
    """A person asked to delete a file that may not be deleted now: under a legal hold or in
    a permanent retention category (`held`: no confirmation lets it go; `permanent` says
    which, an administrator takes it out of the category first), or protected and not
    confirmed."""

    def __init__(self, message: str, *, held: bool, permanent: bool = False) -> None:
        super().__init__(message)
        self.held = held
        self.permanent = permanent


class RetentionSweeper:
    """Plans and carries out retention sweeps against the catalog and the disks."""

    def __init__(self, catalog: Catalog, rules: Rules, central: CentralCheck | None = None) -> None:
        self.catalog = catalog
        self.rules = rules
        self.central = central or CentralCheck()

    def facts(self) -> list[FileFacts]:
        with self.catalog.read() as s:
            rows = s.execute(
                select(
                    StoredFile.id,
                    StoredFile.disk,
                    StoredFile.size,
                    StoredFile.collected_at,
                    StoredFile.level,
                    StoredFile.important,
                    StoredFile.legal_hold,
                    StoredFile.clock_untrusted,
                    StoredFile.retention_category,
                    StoredFile.central_state,
                ).where(StoredFile.deleted_at.is_(None))
            ).all()
        return [FileFacts(*r) for r in rows]

    def plan(
        self, disks: list[DiskFacts], now: dt.datetime | None = None, paused: str | None = None
    ) -> Plan:
        check = self.central.verified if self.central.required else None
        return plan_sweep(
            self.facts(), disks, self.rules, now or utcnow(), paused=paused, central_ok=check
        )

    def upcoming(self, days_ahead: int, now: dt.datetime | None = None) -> list[dict[str, object]]:
        """What deletion by age will remove in the next `days_ahead` days (administrators
        are shown it beforehand), with whether each still waits for its central copy."""
        due = upcoming_deletions(self.facts(), self.rules, now or utcnow(), days_ahead)
        if not due:
            return []
        ids = [f.id for f, _ in due]
        with self.catalog.read() as s:
            rows = {
                r.id: r for r in s.scalars(select(StoredFile).where(StoredFile.id.in_(ids))).all()
            }
        out: list[dict[str, object]] = []
        for f, when in due:
            r = rows[f.id]
            out.append(
                {
                    "id": f.id,
                    "name": r.name,
                    "officer_no": r.officer.officer_no,
                    "serial": r.recorder.serial,
                    "level": f.level,
                    "collected_at": f.collected_at.isoformat(),
                    "delete_on": when.isoformat(),
                    "waiting_central": self.central.required and not self.central.verified(f),
                }
            )
        return out

    def stuck_unverified(
        self, older_than: dt.timedelta, now: dt.datetime | None = None
    ) -> list[int]:
        """Files whose central copy is still not verified `older_than` after collection."""
        if not self.central.required:
            return []
        before = (now or utcnow()) - older_than
        return [
            f.id for f in self.facts() if f.collected_at < before and not self.central.verified(f)
        ]

    def sweep(
        self, disks: list[DiskFacts], now: dt.datetime | None = None, paused: str | None = None
    ) -> Plan:
        """Delete what the plan says, one file at a time, crash-safely."""
        plan = self.plan(disks, now, paused)
        todo = [(i, "retention period expired") for i in plan.expired]
        todo += [(i, "disks past their high-water mark: oldest footage overwritten")
                 for i in plan.overwrite]  # fmt: skip
        for file_id, why in todo:
            try:
                self.delete(file_id, why)
            except Exception:  # one file that cannot be settled must not stop the sweep
                log.exception("retention: file %s not deleted", file_id)
        return plan

    def delete(
        self, file_id: int, reason: str, *, by: str = "retention", confirmed: bool = False
    ) -> bool:
        """Delete one file crash-safely: sidecar marked, row tombstoned, file removed.

        The protection check and the tombstone are one `BEGIN IMMEDIATE` transaction,
        so a hold or a re-grade committed meanwhile (by the console, or by `station
        files hold` in another process) is seen: a hold always wins. Retention never
        deletes a protected file; a person (`by` another name) may delete a protected
        one they confirmed, but never one under a legal hold (DeletionRefused). If the
        catalog step fails, the sidecar is put back; if the station dies before it,
        start-up recovery puts it back (`reconcile_sidecars`).
        """
        restore: tuple[Path, str, Sidecar] | None = None
        second: tuple[str, str] | None = None  # (disk of its second copy, sha256)
        try:
            with self.catalog.write() as s:
                row = s.get(StoredFile, file_id)
                if row is None or row.deleted_at is not None:
                    return False
                if row.legal_hold:
                    if by == "retention":
                        log.error("retention refused to delete file %s: legal hold", file_id)
                        return False
                    raise DeletionRefused(
                        f"file {file_id} is under legal hold {row.legal_hold!r}: release it first",
                        held=True,
                    )
                if is_permanent(row.retention_category):
                    if by == "retention":
                        log.error("retention refused to delete permanent file %s", file_id)
                        return False
                    raise DeletionRefused(
                        f"file {file_id} is kept permanently "
                        f"({CATEGORIES[row.retention_category or '']}): an administrator "
                        "must take it out of that category first",
                        held=True,
                        permanent=True,
                    )
                mark = row.card_clearing_at
                with _clearing_lock:
                    here = file_id in _clearing_now
                if here or (mark is not None and abs(utcnow() - mark) < CLEARING_GRACE):
                    # its recorder's copy is being deleted right now, trusting this one
                    if by == "retention":
                        log.info("file %s: its recorder copy is being cleared: later", file_id)
                        return False
                    raise DeletionRefused(
                        f"file {file_id}: its copy on the recorder is being cleared right "
                        "now; try again in a minute",
                        held=False,
                    )
                if is_protected(row.important, row.level, None, row.retention_category):
                    if by == "retention":
                        log.error("retention refused to delete protected file %s", file_id)
                        return False
                    if not confirmed:  # graded up since the person looked: ask again
                        raise DeletionRefused(
                            f"file {file_id} is protected: confirm it", held=False
                        )
                disk, path = Path(row.disk), Path(row.disk) / row.rel_path
                now = utcnow()
                sc, ours = _record_of(disk, path, row)
                if not ours:  # another file now has this name: tombstone, remove nothing
                    log.error("file %s: the file at %s is not this row's: kept", file_id, path)
                    reason += " (the file at its path is another one: nothing removed)"
                elif sc is not None:
                    live = mirror_row(sc, row)
                    write_sidecar(
                        disk,
                        row.rel_path,
                        replace(
                            live, deleted_at=now.isoformat(), deleted_by=by, delete_reason=reason
                        ),
                    )
                    restore = (disk, row.rel_path, live)
                    if sc.mirror_disk:
                        second = (sc.mirror_disk, row.sha256)
                faults.crashpoint("retention_after_sidecar")
                row.deleted_at, row.deleted_by, row.delete_reason = now, by, reason
                append_event(
                    s,
                    "file_deleted",
                    f"{path}: {reason}",
                    actor=by,
                    file_id=file_id,
                    officer_no=row.officer.officer_no,
                    serial=row.recorder.serial,
                    size=row.size,
                    sha256=row.sha256,
                )
        except BaseException:
            if restore is not None:
                try:
                    write_sidecar(*restore)
                except OSError as e:  # start-up recovery puts it back from the row
                    log.error("file %s: sidecar could not be restored: %s", file_id, e)
            raise
        faults.crashpoint("retention_after_tombstone")
        if ours:
            remove_stored(path)
        if second is not None:  # its second copy goes too (station.store.mirror)
            remove_mirror(self.catalog, Path(second[0]), second[1])
        return True

    def collected_bytes(self, since: dt.datetime) -> int:
        with self.catalog.read() as s:
            return int(
                s.scalar(
                    select(func.coalesce(func.sum(StoredFile.size), 0)).where(
                        StoredFile.collected_at >= since
                    )
                )
                or 0
            )


def _record_of(disk: Path, path: Path, row: StoredFile) -> tuple[Sidecar | None, bool]:
    """(the sidecar at the row's path, whether the file there is the row's file).

    A disk replaced at the same path, or a name reused, can put another file where an old
    row points: deleting that row must not remove it."""
    try:
        sc = read_sidecar(sidecar_path(disk, row.rel_path))
    except SidecarError as e:
        log.warning("file %s: no usable sidecar (%s)", row.id, e)
        try:
            return None, path.stat().st_size == row.size
        except OSError:
            return None, False
    return sc, (sc.sha256, sc.size, sc.card_path) == (row.sha256, row.size, row.card_path)


remove_stored = remove  # a stored file is removed durably (station.store.durable.remove)
