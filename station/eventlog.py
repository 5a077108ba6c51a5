"""The system log (S21): search and export of the hash-chained event table."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from station.catalog import Catalog, Event
from station.catalog.db import chain_head, verify_anchor
from station.store.disks import LOG_ANCHOR
from station.store.durable import replace_file
from station.store.identity import DiskIdentityError, read_marker

FIELDS = (
    "id",
    "at",
    "kind",
    "actor",
    "port",
    "serial",
    "officer_no",
    "file_id",
    "message",
    "data",
    "hash",
)


def search(
    catalog: Catalog,
    *,
    after: int = 0,
    before: int | None = None,
    kind: str | None = None,
    serial: str | None = None,
    officer_no: str | None = None,
    actor: str | None = None,
    file_id: int | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    text: str | None = None,
    limit: int = 1000,
    newest_first: bool = False,
) -> list[dict[str, Any]]:
    """The one event query: events after the cursor `after` (and before `before`: event
    ids), filtered, in log order (or newest first). `kind` is one kind or several: a,b."""
    q = select(Event).where(Event.id > after)
    if before is not None:
        q = q.where(Event.id < before)
    if kind:
        q = q.where(Event.kind.in_([k.strip() for k in kind.split(",") if k.strip()]))
    if serial:
        q = q.where(Event.serial == serial)
    if officer_no:
        q = q.where(Event.officer_no == officer_no)
    if actor:
        q = q.where(Event.actor == actor)
    if file_id is not None:
        q = q.where(Event.file_id == file_id)
    if since is not None:
        q = q.where(Event.at >= since)
    if until is not None:
        q = q.where(Event.at < until)
    if text:
        q = q.where(Event.message.contains(text))
    order = Event.id.desc() if newest_first else Event.id
    with catalog.read() as s:
        return [as_dict(e) for e in s.scalars(q.order_by(order).limit(limit))]


def as_dict(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": e.at.isoformat(),
        "kind": e.kind,
        "actor": e.actor,
        "port": e.port,
        "serial": e.serial,
        "officer_no": e.officer_no,
        "file_id": e.file_id,
        "message": e.message,
        "data": json.loads(e.data or "{}"),
        "hash": e.hash,
    }


def _cell(value: Any) -> Any:
    """A cell a spreadsheet shows as text: one that starts like a formula (`=`, `+`, `-`,
    `@`, tab, CR; from a recorder's name or serial) gets a `'` in front (OWASP)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(events: Iterable[dict[str, Any]]) -> str:
    """The events as CSV for a spreadsheet; the JSON form (`format=json`) has them verbatim,
    for `audit verify` and the central server."""
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=FIELDS, extrasaction="ignore")
    w.writeheader()
    for e in events:
        row = {**e, "data": json.dumps(e["data"], ensure_ascii=False)}
        w.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue()


# --- anchors: the chain's head kept outside the database ---------------------------------------


def anchor_paths(disks: Iterable[Path]) -> list[Path]:
    return [Path(d) / LOG_ANCHOR for d in disks]


def write_anchors(catalog: Catalog, disks: Iterable[Path], station_id: str) -> dict[str, Any]:
    """Write the chain's head to every given disk; return it (the status carries it too)."""
    with catalog.read() as s:
        head = chain_head(s)
    body = {**head, "station_id": station_id, "at": dt.datetime.now(dt.UTC).isoformat()}
    data = json.dumps(body, indent=1).encode()
    for path in anchor_paths(disks):
        replace_file(path, data, mode=0o644)
    return head


def verify_anchors(
    catalog: Catalog, disks: Iterable[Path], station_id: str | None = None
) -> list[str]:
    """Compare the log with the anchors on the disks (`station audit verify`). Whose disk
    it is comes from its marker (the station id written on it), never from the catalog
    being checked: one that deleted entries could forget the disk too."""
    problems = []
    with catalog.read() as s:
        for path in anchor_paths(disks):
            try:
                marker = read_marker(path.parent)
            except DiskIdentityError:  # no disk the station would write to either
                marker = None
            # "" is the station id on a marker `catalog rebuild` wrote
            in_use = marker is not None and (
                station_id is None or marker.station_id in (station_id, "")
            )
            try:
                anchor = json.loads(path.read_text("utf-8"))
            except FileNotFoundError:
                if in_use:
                    problems.append(f"{path}: missing (removed?): the log's end is unproven")
                continue
            except (OSError, ValueError) as e:
                problems.append(f"{path}: unreadable anchor ({e})")
                continue
            if not isinstance(anchor, dict) or not anchor.get("last_id") or not anchor.get("hash"):
                if in_use:
                    problems.append(f"{path}: emptied anchor: the log's end is unproven")
                continue
            problems += verify_anchor(s, anchor, str(path))
    return problems
