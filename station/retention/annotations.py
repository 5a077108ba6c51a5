"""Annotating stored files (S34): level, note, case number, legal hold, retention category.

A retention category (station/retention/protection.py CATEGORIES, the 2016 rules' permanent
ones) is an administrator's choice, to set and to clear.

Every change is written to the file's sidecar too, so a rebuilt catalog keeps
it, and is an event in the system log.
"""

from __future__ import annotations

import logging
from pathlib import Path

from station.catalog import Catalog, StoredFile
from station.catalog.db import REBUILDING, append_event
from station.errors import AnnotationError, ImportantOnRecorder, ProtectionError
from station.retention.protection import CATEGORIES, LEVELS, PROTECTED_LEVELS, lowers_protection
from station.store.sidecar import (
    SidecarError,
    mirror_row,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

log = logging.getLogger(__name__)


def annotate(
    catalog: Catalog,
    file_id: int,
    *,
    by: str,
    level: str | None = None,
    note: str | None = None,
    case_no: str | None = None,
    legal_hold: str | None = None,
    category: str | None = None,
    admin: bool = False,
) -> StoredFile:
    """Change what is given (None leaves a field alone, "" clears a text field).

    Only an administrator (`admin`) may take protection away: lower an `important`
    or `evidence` grade, or clear the case number of such a file. The sidecar is
    rewritten from the row (never carrying a stale field of its own forward).
    """
    if level is not None and level not in LEVELS:
        raise AnnotationError(f"unknown level {level!r}: one of {', '.join(LEVELS)}")
    if category is not None:
        if category and category not in CATEGORIES:
            raise AnnotationError(
                f"unknown retention category {category!r}: one of {', '.join(CATEGORIES)}"
            )
        if not admin:
            raise ProtectionError("only an administrator may set or clear a retention category")
    if started := catalog.get_state(REBUILDING):
        raise AnnotationError(
            f"the catalog is being rebuilt from the disks (since {started}): file ids are not "
            "final yet; try again when `station catalog rebuild` has finished (run it again if "
            "it was cut short)"
        )
    with catalog.write() as s:
        f = s.get(StoredFile, file_id)
        if f is None or f.deleted_at is not None:
            raise AnnotationError(f"no stored file {file_id}")
        if level is not None and f.important and level == "normal":
            raise ImportantOnRecorder("a file marked IMP by its recorder cannot be graded normal")
        if not admin and level is not None and lowers_protection(f.level, level):
            raise ProtectionError(f"only an administrator may lower a file graded {f.level}")
        if not admin and case_no == "" and f.case_no and f.level in PROTECTED_LEVELS:
            raise ProtectionError(
                f"only an administrator may clear the case number of a file graded {f.level}"
            )
        changes = {}
        for name, value in (
            ("level", level),
            ("note", note),
            ("case_no", case_no),
            ("legal_hold", legal_hold),
            ("retention_category", category),
        ):
            if value is None:
                continue
            new = value or None if name != "level" else value
            if getattr(f, name) != new:
                changes[name] = (getattr(f, name), new)
                setattr(f, name, new)
        if not changes:
            return f
        pending = ""
        try:
            sc = read_sidecar(sidecar_path(Path(f.disk), f.rel_path))
            write_sidecar(Path(f.disk), f.rel_path, mirror_row(sc, f))
        except (SidecarError, OSError) as e:
            # The change stands (a hold must not wait for a disk); the sidecar is written
            # from the row when the disk is back (recovery.reconcile_sidecars).
            log.warning("file %s: sidecar not updated now (%s)", f.id, e)
            pending = " (its sidecar is updated when its disk is back)"
        append_event(
            s,
            "file_annotated",
            "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()) + pending,
            actor=by,
            file_id=f.id,
            officer_no=f.officer.officer_no,
            serial=f.recorder.serial,
        )
        s.flush()
        s.expunge(f)
        return f
