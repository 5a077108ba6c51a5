"""The catalog reads and writes the administrator's commands need (`station ...`, support).

The command line and the support tools hold no SQL: what they ask of the
catalog is here, each in its own transaction, and what comes back is plain
data (frozen dataclasses, strings, numbers), never a row bound to a session.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from station.catalog.db import Catalog, append_event, verify_chain
from station.catalog.models import Event, StationState, StoredFile


@dataclass(frozen=True)
class FileBrief:
    """A stored file as a listing shows it."""

    id: int
    path: Path  # where it is stored: its disk and its path there
    size: int
    level: str
    collected_at: dt.datetime


def _brief(f: StoredFile) -> FileBrief:
    return FileBrief(f.id, Path(f.disk) / f.rel_path, f.size, f.level, f.collected_at)


def describe_files(catalog: Catalog, ids: Iterable[int]) -> list[FileBrief]:
    """The stored files with these ids, in the same order (a retention plan's lists)."""
    with catalog.read() as s:
        out = []
        for i in ids:
            f = s.get(StoredFile, i)
            if f is None:
                raise LookupError(f"no stored file {i} in the catalog")
            out.append(_brief(f))
        return out


def untrusted_files(catalog: Catalog) -> list[FileBrief]:
    """Files still stored that were collected under a clock that could not be believed."""
    with catalog.read() as s:
        rows = s.scalars(
            select(StoredFile).where(
                StoredFile.clock_untrusted.is_(True), StoredFile.deleted_at.is_(None)
            )
        ).all()
        return [_brief(f) for f in rows]


def verify_event_chain(catalog: Catalog) -> list[str]:
    """What is wrong with the system log's hash chain (empty: intact)."""
    with catalog.read() as s:
        return verify_chain(s)


def last_event_id(catalog: Catalog) -> int:
    """The id of the newest entry of the system log (0 when it is empty)."""
    with catalog.read() as s:
        return int(s.scalar(select(func.max(Event.id))) or 0)


def log_event(
    catalog: Catalog,
    kind: str,
    message: str,
    *,
    actor: str,
    state: dict[str, str | None] | None = None,
    **data: Any,
) -> dict[str, str | None]:
    """Append one entry to the system log, in one transaction with a change of the
    station's small state (`state`: each key set to its value, or removed for None).

    Returns what those keys held before (None: not set), so a caller can undo it.
    """
    before: dict[str, str | None] = {}
    with catalog.write() as s:
        for key, value in (state or {}).items():
            row = s.get(StationState, key)
            before[key] = row.value if row is not None else None
            if value is not None:
                s.merge(StationState(key=key, value=value))
            elif row is not None:
                s.delete(row)
        append_event(s, kind, message, actor=actor, **data)
    return before
