"""The durable outbox in the catalog: what the platform has not acknowledged yet.

Filled from the catalog's own commits, by cursor, in the same transaction that moves the
cursor: every system-log entry (kind `log`, with its chain hashes), every alarm change
(kind `alarm`) and every stored file (kind `file`, once its SM3 is known when SM3 is on)
gets exactly one entry, whether the network is up or not. Receipts of commands and
reports on configuration versions are added where they happen. An entry is settled only
by the platform's answer: `accepted`, `duplicate` (it already had it: delivered) or
`rejected` (it refuses it: kept, logged, not sent again). Entries go out per kind in
the order they were made (`id`), so the platform sees each kind in order.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import and_, exists, func, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.orm import Session

from station.catalog import Catalog, Event, OutboxEntry, StoredFile
from station.catalog.db import append_event, event_fields
from station.catalog.models import StationState, utcnow
from station.names import parse_card_path
from station.platform.protocol import KINDS

log = logging.getLogger(__name__)

EVENT_CURSOR = "platform_event_cursor"  # station_state: the last event put in the outbox
FILL_CHUNK = 2000  # rows per fill transaction (a long backlog is taken in steps)
ALARM_EVENTS = {
    "alarm_raised": "raised",
    "alarm_acknowledged": "acknowledged",
    "alarm_cleared": "cleared",
}


def file_key(station_id: str, file_id: int) -> str:
    """The idempotency key of a file's metadata: station id + file id."""
    return f"{station_id}:{file_id}"


def add(
    session: Session, kind: str, key: str, body: dict[str, Any], file_id: int | None = None
) -> bool:
    """Add one entry inside the caller's transaction; False if (kind, key) is there already."""
    assert kind in KINDS, kind
    result = session.execute(
        insert(OutboxEntry)
        .values(
            kind=kind,
            key=key,
            file_id=file_id,
            body=json.dumps(body, sort_keys=True, ensure_ascii=False, default=str),
            created_at=utcnow(),
            attempts=0,
        )
        .on_conflict_do_nothing(index_elements=["kind", "key"])
    )
    return bool(result.rowcount)


def file_body(f: StoredFile, station_id: str) -> dict[str, Any]:
    """A stored file as the platform indexes it."""
    return {
        "station_id": station_id,
        "file_id": f.id,
        "officer_no": f.officer.officer_no,
        "officer_name": f.officer.name,
        "unit_no": f.officer.unit_no,
        "unit_name": f.officer.unit_name,
        "serial": f.recorder.serial,
        "name": f.name,
        "card_name": parse_card_path(f.card_path).display,
        "rel_path": f.rel_path,
        "kind": f.kind,
        "size": f.size,
        "sha256": f.sha256,
        "sm3": f.sm3,
        "recorded_at": f.recorded_at.isoformat() if f.recorded_at else None,
        "collected_at": f.collected_at.isoformat(),
        "level": f.level,
        "important": f.important,
        "case_no": f.case_no,
        "retention_category": f.retention_category,
    }


def _event_body(ev: Event) -> dict[str, Any]:
    """The event as its hash covers it, with its place in the chain: the platform can
    check the chain from what it is sent."""
    return {"id": ev.id, **event_fields(ev), "prev_hash": ev.prev_hash, "hash": ev.hash}


def fill(catalog: Catalog, station_id: str, *, sm3: bool) -> int:
    """Put what the catalog committed since the last fill into the outbox; how many entries.

    With `sm3`, a file waits until its SM3 is computed (or could not be)."""
    added = 0
    with catalog.write() as s:
        cursor = int((s.get(StationState, EVENT_CURSOR) or StationState(value="0")).value)
        events = s.scalars(
            select(Event).where(Event.id > cursor).order_by(Event.id).limit(FILL_CHUNK)
        ).all()
        for ev in events:
            body = _event_body(ev)
            added += add(s, "log", f"{station_id}:log:{ev.id}", body)
            if ev.kind in ALARM_EVENTS:
                data = json.loads(ev.data or "{}")
                alarm = {
                    "event_id": ev.id,
                    "action": ALARM_EVENTS[ev.kind],
                    "code": data.get("code"),
                    "subject": data.get("subject", ""),
                    "message": ev.message,
                    "at": body["at"],
                    "actor": ev.actor,
                }
                added += add(s, "alarm", f"{station_id}:alarm:{ev.id}", alarm)
        if events:
            s.merge(StationState(key=EVENT_CURSOR, value=str(events[-1].id)))
        queued = exists().where(
            and_(OutboxEntry.kind == "file", OutboxEntry.file_id == StoredFile.id)
        )
        q = select(StoredFile).where(StoredFile.deleted_at.is_(None), ~queued)
        if sm3:
            q = q.where((StoredFile.sm3.is_not(None)) | (StoredFile.sm3_error.is_not(None)))
        for f in s.scalars(q.order_by(StoredFile.id).limit(FILL_CHUNK)).all():
            added += add(s, "file", file_key(station_id, f.id), file_body(f, station_id), f.id)
    return added


def pending(catalog: Catalog, kind: str, limit: int) -> list[OutboxEntry]:
    """The oldest undelivered entries of one kind, in order."""
    with catalog.read() as s:
        return list(
            s.scalars(
                select(OutboxEntry)
                .where(OutboxEntry.kind == kind, OutboxEntry.delivered_at.is_(None))
                .order_by(OutboxEntry.id)
                .limit(limit)
            ).all()
        )


def settle(
    catalog: Catalog, entries: list[OutboxEntry], answers: dict[str, tuple[str, str | None]]
) -> int:
    """Record the platform's answers; entries it did not answer stay pending. Returns how
    many were settled. A `rejected` entry is settled (not sent again) and logged."""
    now = utcnow()
    settled = 0
    with catalog.write() as s:
        for e in entries:
            row = s.get(OutboxEntry, e.id)
            if row is None or row.delivered_at is not None:
                continue
            row.attempts += 1
            answer = answers.get(e.key)
            if answer is None:
                row.last_error = "not answered"
                continue
            row.answer, reason = answer
            row.delivered_at = now
            settled += 1
            if row.answer == "rejected":
                row.last_error = reason
                append_event(
                    s,
                    "platform_rejected",
                    f"the platform refused {row.kind} {row.key}: {reason or 'no reason given'}",
                    file_id=row.file_id,
                    outbox_id=row.id,
                )
    return settled


def failed(catalog: Catalog, entries: list[OutboxEntry], why: str) -> None:
    """A push that got no answer: count the attempt, keep the entries pending."""
    with catalog.write() as s:
        for e in entries:
            row = s.get(OutboxEntry, e.id)
            if row is not None and row.delivered_at is None:
                row.attempts += 1
                row.last_error = why[:500]


def depth(catalog: Catalog) -> dict[str, int]:
    """Undelivered entries per kind (every kind listed)."""
    with catalog.read() as s:
        rows = dict(
            s.execute(
                select(OutboxEntry.kind, func.count())
                .where(OutboxEntry.delivered_at.is_(None))
                .group_by(OutboxEntry.kind)
            ).all()
        )
    return {k: int(rows.get(k, 0)) for k in KINDS}


def delivered(catalog: Catalog, kind: str, key: str) -> bool:
    with catalog.read() as s:
        return (
            s.scalar(
                select(func.count()).where(
                    OutboxEntry.kind == kind,
                    OutboxEntry.key == key,
                    OutboxEntry.delivered_at.is_not(None),
                )
            )
            or 0
        ) > 0
