"""The catalog's recorders and files as the central API lists them (`GET /api/v1/...`).

(What is left of the old daemon module; the runtime is `station.runtime`.)
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from station.catalog import Catalog, Officer, Recorder, StoredFile
from station.names import parse_card_path
from station.retention import CentralCheck


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


def list_files(
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
    """Collected files, newest first, filtered as `GET /api/v1/files` allows; `central`
    is pending, verified or failed by `central`'s rules (None: no central copy is
    configured)."""
    q = (
        select(StoredFile)
        .join(Officer, StoredFile.officer_id == Officer.id)
        .join(Recorder, StoredFile.recorder_id == Recorder.id)
        .where(StoredFile.deleted_at.is_(None))
    )
    if officer_no:
        q = q.where(Officer.officer_no == officer_no)
    if serial:
        q = q.where(Recorder.serial == serial)
    if important is not None:
        q = q.where(StoredFile.important == important)
    if since is not None:
        q = q.where(StoredFile.collected_at >= since)
    if until is not None:
        q = q.where(StoredFile.collected_at < until)
    with catalog.read() as s:
        total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
        rows = s.scalars(
            q.order_by(StoredFile.collected_at.desc(), StoredFile.id.desc())
            .limit(limit)
            .offset(offset)
        ).all()
        items = [_file_item(f, tz) for f in rows]
    for item in items:
        if central is None or not central.required:
            item["central"] = None
        elif item["central"] != "verified" and central.verified_elsewhere(item["id"]):
            item["central"] = "verified"
    return {"total": total, "items": items}


def _file_item(f: StoredFile, tz: ZoneInfo | None) -> dict[str, Any]:
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
