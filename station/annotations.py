"""Annotating stored files (S34): level, note, case number, legal hold.

Every change is written to the file's sidecar too, so a rebuilt catalog keeps
it, and is an event in the system log.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from station.catalog import Catalog, StoredFile
from station.catalog.db import append_event
from station.retention import LEVELS
from station.sidecar import SidecarError, read_sidecar, sidecar_path, write_sidecar


class AnnotationError(Exception):
    """The change is refused; the message says why."""


def annotate(
    catalog: Catalog,
    file_id: int,
    *,
    by: str,
    level: str | None = None,
    note: str | None = None,
    case_no: str | None = None,
    legal_hold: str | None = None,
) -> StoredFile:
    """Change what is given (None leaves a field alone, "" clears a text field)."""
    if level is not None and level not in LEVELS:
        raise AnnotationError(f"unknown level {level!r}: one of {', '.join(LEVELS)}")
    with catalog.write() as s:
        f = s.get(StoredFile, file_id)
        if f is None or f.deleted_at is not None:
            raise AnnotationError(f"no stored file {file_id}")
        if level is not None and f.important and level == "normal":
            raise AnnotationError("a file marked IMP by its recorder cannot be graded normal")
        changes = {}
        for name, value in (
            ("level", level),
            ("note", note),
            ("case_no", case_no),
            ("legal_hold", legal_hold),
        ):
            if value is None:
                continue
            new = value or None if name != "level" else value
            if getattr(f, name) != new:
                changes[name] = (getattr(f, name), new)
                setattr(f, name, new)
        if not changes:
            return f
        try:
            sc = read_sidecar(sidecar_path(Path(f.disk), f.rel_path))
            write_sidecar(
                Path(f.disk), f.rel_path, replace(sc, **{k: v for k, (_, v) in changes.items()})
            )
        except (SidecarError, OSError) as e:
            raise AnnotationError(f"the file's on-disk record could not be updated: {e}") from e
        append_event(
            s,
            "file_annotated",
            "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()),
            actor=by,
            file_id=f.id,
            officer_no=f.officer.officer_no,
            serial=f.recorder.serial,
        )
        s.flush()
        s.expunge(f)
        return f
