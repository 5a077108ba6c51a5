"""File search for the retrieval screens (S31, S34): filters, scope, pages.

Newest first by the time the recorder stamped on the file (files without one
last), narrowed by officer, recorder, recorded date range, kind, IMP/level,
note text or case number. An officer's searches are scoped to their own files
in the query itself, never by filtering afterwards. Every filter has an index
(`station/catalog/accounts_models.py`), and the total is counted only up to
`COUNT_CAP` so a broad search over a million files stays fast.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, func, or_, select

from station.catalog import Catalog, Event, Officer, Recorder, StoredFile
from station.eventlog import as_dict
from station.names import parse_card_path
from station.protection import is_protected

KINDS = ("video", "audio", "photo", "log", "other")
COUNT_CAP = 10_000
MAX_PAGE = 200


class SearchError(Exception):
    """A search that cannot be run as asked."""


@dataclass(frozen=True)
class FileQuery:
    """What the user asked for; None or "" leaves a filter out."""

    officer_no: str | None = None
    serial: str | None = None
    date_from: dt.date | None = None  # recorded on or after this day
    date_to: dt.date | None = None  # recorded on or before this day
    kind: str | None = None
    important: bool | None = None  # IMP on the recorder, or graded important
    level: str | None = None
    text: str | None = None  # in the note, or a case number starting with it
    case_no: str | None = None


@dataclass(frozen=True)
class StoredRef:
    """Where a file is and what it is, for playback and download."""

    id: int
    name: str
    kind: str
    path: Path
    size: int
    sha256: str
    officer_no: str
    serial: str
    level: str
    important: bool
    legal_hold: str | None

    @property
    def protected(self) -> bool:
        return is_protected(self.important, self.level, self.legal_hold)


def _prefix_range(column: Any, prefix: str) -> Any:
    # a range instead of LIKE 'x%', so SQLite can use the index whatever its LIKE settings
    return (column >= prefix) & (column < prefix + "\U0010ffff")


def _filtered(q: FileQuery, scope_officer_no: str | None) -> Select[Any]:
    # No joins: officers and recorders are matched through their ids, so that SQLite
    # plans every search on the indexes of `files` alone.
    stmt = select(StoredFile.id).where(StoredFile.deleted_at.is_(None))
    for officer_no in {scope_officer_no, (q.officer_no or "").strip() or None} - {None}:
        stmt = stmt.where(
            StoredFile.officer_id
            == select(Officer.id).where(Officer.officer_no == officer_no).scalar_subquery()
        )
    if q.serial:
        stmt = stmt.where(
            StoredFile.recorder_id
            == select(Recorder.id).where(Recorder.serial == q.serial.strip()).scalar_subquery()
        )
    if q.date_from:
        stmt = stmt.where(StoredFile.recorded_at >= dt.datetime.combine(q.date_from, dt.time()))
    if q.date_to:
        end = dt.datetime.combine(q.date_to + dt.timedelta(days=1), dt.time())
        stmt = stmt.where(StoredFile.recorded_at < end)
    if q.kind:
        if q.kind not in KINDS:
            raise SearchError(f"unknown kind {q.kind!r}")
        stmt = stmt.where(StoredFile.kind == q.kind)
    if q.important is True:
        stmt = stmt.where(
            # "= 1", not "IS 1": so SQLite can answer the OR from two indexes
            or_(StoredFile.important == True, StoredFile.level.in_(("important", "evidence")))  # noqa: E712
        )
    elif q.important is False:
        stmt = stmt.where(StoredFile.important == False, StoredFile.level == "normal")  # noqa: E712
    if q.level:
        stmt = stmt.where(StoredFile.level == q.level)
    if q.case_no:
        stmt = stmt.where(_prefix_range(StoredFile.case_no, q.case_no.strip()))
    if q.text:
        t = q.text.strip()
        escaped = t.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(
            or_(
                StoredFile.note.is_not(None) & StoredFile.note.like(f"%{escaped}%", escape="\\"),
                _prefix_range(StoredFile.case_no, t),
            )
        )
    return stmt


def search_files(
    catalog: Catalog,
    tz: ZoneInfo | None,
    q: FileQuery,
    *,
    scope_officer_no: str | None,
    limit: int = 20,
    offset: int = 0,
) -> dict[str, Any]:
    """One page of matching files; `total` is exact up to COUNT_CAP (`total_capped` says)."""
    limit = max(1, min(limit, MAX_PAGE))
    offset = max(0, offset)
    ids = _filtered(q, scope_officer_no)
    # SQLite sorts NULL lowest: descending puts files without a recorded time last
    page = ids.order_by(StoredFile.recorded_at.desc(), StoredFile.id.desc())
    with catalog.read() as s:
        capped = (
            s.scalar(select(func.count()).select_from(ids.limit(COUNT_CAP + 1).subquery())) or 0
        )
        page_ids = list(s.scalars(page.limit(limit).offset(offset)))
        rows = {f.id: f for f in s.scalars(select(StoredFile).where(StoredFile.id.in_(page_ids)))}
        items = [file_item(rows[i], tz) for i in page_ids if i in rows]
    return {
        "total": min(capped, COUNT_CAP),
        "total_capped": capped > COUNT_CAP,
        "offset": offset,
        "limit": limit,
        "items": items,
    }


def file_item(f: StoredFile, tz: ZoneInfo | None) -> dict[str, Any]:
    """A file as the retrieval screens show it."""
    return {
        "id": f.id,
        "name": f.name,
        "kind": f.kind,
        "officer_no": f.officer.officer_no,
        "officer_name": f.officer.name,
        "unit_name": f.officer.unit_name,
        "serial": f.recorder.serial,
        "card_path": parse_card_path(f.card_path).display,
        "size": f.size,
        "sha256": f.sha256,
        "recorded_at": f.recorded_at.isoformat(timespec="seconds") if f.recorded_at else None,
        "collected_at": f.collected_at.astimezone(tz).isoformat(timespec="seconds"),
        "important": f.important,
        "level": f.level,
        "note": f.note or "",
        "case_no": f.case_no or "",
        "legal_hold": f.legal_hold or "",
        "protected": is_protected(f.important, f.level, f.legal_hold),
    }


def get_file(
    catalog: Catalog, tz: ZoneInfo | None, file_id: int, *, scope_officer_no: str | None
) -> dict[str, Any] | None:
    """One live file, if the viewer may see it (None otherwise: same answer as missing)."""
    with catalog.read() as s:
        f = s.get(StoredFile, file_id)
        if f is None or f.deleted_at is not None:
            return None
        if scope_officer_no is not None and f.officer.officer_no != scope_officer_no:
            return None
        return file_item(f, tz)


def stored_refs(
    catalog: Catalog, file_ids: list[int], *, scope_officer_no: str | None
) -> list[StoredRef]:
    """Where the given live files are, in the order asked; ones the viewer may not see are left
    out."""
    with catalog.read() as s:
        rows = {f.id: f for f in s.scalars(select(StoredFile).where(StoredFile.id.in_(file_ids)))}
        out = []
        for i in file_ids:
            f = rows.get(i)
            if f is None or f.deleted_at is not None:
                continue
            if scope_officer_no is not None and f.officer.officer_no != scope_officer_no:
                continue
            out.append(
                StoredRef(
                    id=f.id,
                    name=f.name,
                    kind=f.kind,
                    path=Path(f.disk) / f.rel_path,
                    size=f.size,
                    sha256=f.sha256,
                    officer_no=f.officer.officer_no,
                    serial=f.recorder.serial,
                    level=f.level,
                    important=f.important,
                    legal_hold=f.legal_hold,
                )
            )
        return out


def list_officers(catalog: Catalog) -> list[dict[str, str]]:
    """The officers the catalog knows (for choosing one on registration)."""
    with catalog.read() as s:
        return [
            {
                "officer_no": o.officer_no,
                "name": o.name,
                "unit_no": o.unit_no,
                "unit_name": o.unit_name,
            }
            for o in s.scalars(select(Officer).order_by(Officer.officer_no))
        ]


def recent_events(
    catalog: Catalog,
    *,
    before: int | None = None,
    kind: str | None = None,
    officer_no: str | None = None,
    serial: str | None = None,
    actor: str | None = None,
    file_id: int | None = None,
    text: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """The system log newest first, one page before the event id `before` (for the screens)."""
    stmt = select(Event)
    if before is not None:
        stmt = stmt.where(Event.id < before)
    if kind:
        stmt = stmt.where(Event.kind.in_([k.strip() for k in kind.split(",") if k.strip()]))
    if officer_no:
        stmt = stmt.where(Event.officer_no == officer_no)
    if serial:
        stmt = stmt.where(Event.serial == serial)
    if actor:
        stmt = stmt.where(Event.actor == actor)
    if file_id is not None:
        stmt = stmt.where(Event.file_id == file_id)
    if text:
        stmt = stmt.where(Event.message.contains(text))
    limit = max(1, min(limit, MAX_PAGE))
    with catalog.read() as s:
        rows = [as_dict(e) for e in s.scalars(stmt.order_by(Event.id.desc()).limit(limit))]
    return {"items": rows, "before": rows[-1]["id"] if len(rows) == limit else None}
