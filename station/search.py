"""The one query of collected files: for the retrieval screens (S31, S34), for
`GET /api/v1/files` and for `station files` (the CLI).

`find_files` is the query: a `FileQuery`'s filters (officer, recorder, recorded
date range, collected time range, kind, IMP flag or grade, level, note text or
case number), the viewer's scope, an order and a page. An officer's searches are
scoped to their own files in the query itself, never by filtering afterwards.
Every filter has an index (`station/catalog/accounts_models.py`).

Two renderings of its rows, one per audience, kept as they are documented:
`file_item` for the screens (newest recorded first, times to the second, the
total counted only up to `COUNT_CAP` so a broad search over a million files
stays fast) and `api_file_item` for the central server's API and the CLI (newest
collected first, the exact total, where the file is stored and its central copy;
CONTRACT.md).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import Select, func, or_, select

from station import eventlog
from station.catalog import Catalog, Officer, Recorder, StoredFile
from station.names import parse_card_path
from station.retention.protection import is_protected
from station.retention.sweeper import CentralCheck

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
    imp: bool | None = None  # the recorder's IMP flag itself (not a grade)
    collected_since: dt.datetime | None = None  # collected at or after
    collected_until: dt.datetime | None = None  # collected before


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
    retention_category: str | None = None

    @property
    def protected(self) -> bool:
        return is_protected(self.important, self.level, self.legal_hold, self.retention_category)


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
    if q.imp is not None:
        stmt = stmt.where(StoredFile.important == q.imp)
    if q.collected_since is not None:
        stmt = stmt.where(StoredFile.collected_at >= q.collected_since)
    if q.collected_until is not None:
        stmt = stmt.where(StoredFile.collected_at < q.collected_until)
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


Order = Literal["recorded", "collected"]
_ORDER = {
    # SQLite sorts NULL lowest: descending puts files without a recorded time last
    "recorded": (StoredFile.recorded_at.desc(), StoredFile.id.desc()),
    "collected": (StoredFile.collected_at.desc(), StoredFile.id.desc()),
}


def find_files(
    catalog: Catalog,
    q: FileQuery,
    render: Callable[[StoredFile], dict[str, Any]],
    *,
    scope_officer_no: str | None,
    newest: Order = "recorded",
    limit: int,
    offset: int,
    count_cap: int | None = COUNT_CAP,
) -> tuple[int, list[dict[str, Any]]]:
    """The one file query: how many files match (counted up to `count_cap` + 1; None:
    all) and one page of them, newest first by `newest`, each as `render` makes it."""
    ids = _filtered(q, scope_officer_no)
    counted = ids if count_cap is None else ids.limit(count_cap + 1)
    with catalog.read() as s:
        total = s.scalar(select(func.count()).select_from(counted.subquery())) or 0
        page_ids = list(s.scalars(ids.order_by(*_ORDER[newest]).limit(limit).offset(offset)))
        rows = {f.id: f for f in s.scalars(select(StoredFile).where(StoredFile.id.in_(page_ids)))}
        return total, [render(rows[i]) for i in page_ids if i in rows]


def search_files(
    catalog: Catalog,
    tz: ZoneInfo | None,
    q: FileQuery,
    *,
    scope_officer_no: str | None,
    limit: int = 20,
    offset: int = 0,
) -> dict[str, Any]:
    """One page of matching files for the screens; `total` is exact up to COUNT_CAP
    (`total_capped` says)."""
    limit = max(1, min(limit, MAX_PAGE))
    offset = max(0, offset)
    capped, items = find_files(
        catalog,
        q,
        lambda f: file_item(f, tz),
        scope_officer_no=scope_officer_no,
        limit=limit,
        offset=offset,
    )
    return {
        "total": min(capped, COUNT_CAP),
        "total_capped": capped > COUNT_CAP,
        "offset": offset,
        "limit": limit,
        "items": items,
    }


def api_files(
    catalog: Catalog,
    tz: ZoneInfo | None,
    *,
    officer_no: str | None = None,
    serial: str | None = None,
    important: bool | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 100,
    offset: int = 0,
    central: CentralCheck | None = None,
) -> dict[str, Any]:
    """Collected files, newest collected first, as `GET /api/v1/files` and `station files`
    give them: `important` is the recorder's IMP flag, `since`/`until` the collection
    time, `total` exact; `central` is pending, verified or failed by `central`'s rules
    (None: no central copy is configured)."""
    q = FileQuery(
        officer_no=officer_no or None,
        serial=serial or None,
        imp=important,
        collected_since=since,
        collected_until=until,
    )
    total, items = find_files(
        catalog,
        q,
        lambda f: api_file_item(f, tz),
        scope_officer_no=None,
        newest="collected",
        limit=limit,
        offset=offset,
        count_cap=None,
    )
    for item in items:
        if central is None or not central.required:
            item["central"] = None
        elif item["central"] != "verified" and central.verified_elsewhere(item["id"]):
            item["central"] = "verified"
    return {"total": total, "items": items}


def api_file_item(f: StoredFile, tz: ZoneInfo | None) -> dict[str, Any]:
    """A file as the central server's API and the CLI show it (CONTRACT.md): the recorded
    time in the station's zone, where it is stored, its central copy."""
    recorded = f.recorded_at
    if recorded is not None:
        recorded = recorded.replace(tzinfo=tz) if tz else recorded.astimezone()
    return {
        "id": f.id,
        "officer_no": f.officer.officer_no,
        "serial": f.recorder.serial,
        "name": f.name,
        "card_path": parse_card_path(f.card_path).display,
        "stored_path": str(Path(f.disk) / f.rel_path),
        "size": f.size,
        "sha256": f.sha256,
        "recorded_at": recorded.isoformat() if recorded else None,
        "collected_at": f.collected_at.astimezone(tz).isoformat(),
        "important": f.important,
        "level": f.level,
        "sm3": f.sm3,
        "central": f.central_state or "pending",
        "retention_category": f.retention_category,
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
        "retention_category": f.retention_category or "",
        "central": f.central_state or "pending",
        "protected": is_protected(f.important, f.level, f.legal_hold, f.retention_category),
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
                    retention_category=f.retention_category,
                )
            )
        return out


def list_recorders(catalog: Catalog) -> list[dict[str, Any]]:
    """Every recorder the station has seen, registered or not."""
    with catalog.read() as s:
        return [
            {
                "serial": r.serial,
                "id_code": r.id_code,
                "status": r.status,
                "officer_no": r.officer.officer_no if r.officer else None,
                "officer_name": r.officer.name if r.officer else None,
                "reported": json.loads(r.reported_block or "{}"),
                "registered_how": r.registered_how,
                "registered_by": r.registered_by,
                "registered_at": r.registered_at.isoformat() if r.registered_at else None,
                "first_seen_at": r.first_seen_at.isoformat(),
                "last_seen_at": r.last_seen_at.isoformat(),
                "last_port": r.last_port,
                "battery_percent": r.battery_percent,
                "clock_drift_s": r.clock_drift_s,
            }
            for r in s.scalars(select(Recorder).order_by(Recorder.serial))
        ]


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
    """The system log newest first, one page before the event id `before` (for the screens;
    the one event query, `station.eventlog.search`)."""
    limit = max(1, min(limit, MAX_PAGE))
    rows = eventlog.search(
        catalog,
        before=before,
        kind=kind,
        officer_no=officer_no,
        serial=serial,
        actor=actor,
        file_id=file_id,
        text=text,
        limit=limit,
        newest_first=True,
    )
    return {"items": rows, "before": rows[-1]["id"] if len(rows) == limit else None}
