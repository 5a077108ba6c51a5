"""The upgrade from `forward.db`: the forwarder's state before it moved into the catalog.

Up to revision 0010 the forwarder kept its rows in a SQLite file of its own beside the
catalog. On the first start with such a file present, every row is copied into the
catalog's `forward_objects` / `forward_parts` in one transaction, and only then is the
file renamed aside (`forward.db.imported`). A crash between the two imports again on
the next start: rows already in the catalog (by key, by upload and part number) are
left as they are, so nothing is doubled and nothing the new forwarder wrote is undone.
A file that cannot be read is left where it is (logged): the forwarder then works
without it, HEADing each key once and adopting what the store already holds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import select

from station.catalog import Catalog, ForwardObject, ForwardPart
from station.store.durable import fsync_dir

log = logging.getLogger(__name__)

IMPORTED = ".imported"  # forward.db -> forward.db.imported
_OBJECT_COLUMNS = {c.name for c in ForwardObject.__table__.columns}
_PART_COLUMNS = {c.name for c in ForwardPart.__table__.columns}
_TIMES = ("started_at", "updated_at", "finished_at")


def _time(text: Any) -> dt.datetime | None:
    """An ISO time as `forward.db` wrote it (UTC); None when absent or unreadable."""
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t


def _read(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every object and part row of an old `forward.db` (its WAL included)."""
    con = sqlite3.connect(path)
    try:
        con.row_factory = sqlite3.Row
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        objects = (
            [dict(r) for r in con.execute("SELECT * FROM objects")] if "objects" in tables else []
        )
        parts = [dict(r) for r in con.execute("SELECT * FROM parts")] if "parts" in tables else []
    finally:
        con.close()
    return objects, parts


def _aside(path: Path) -> Path:
    """Rename `forward.db` (and a WAL left beside it) out of the way, durably."""
    target = path.with_name(path.name + IMPORTED)
    n = 1
    while target.exists():  # never replace an earlier import's file
        target = path.with_name(f"{path.name}{IMPORTED}.{n}")
        n += 1
    os.rename(path, target)
    for suffix in ("-wal", "-shm"):  # SQLite finds them by the main file's name
        with contextlib.suppress(FileNotFoundError):
            os.rename(path.with_name(path.name + suffix), target.with_name(target.name + suffix))
    fsync_dir(path.parent)
    return target


def import_forward_db(catalog: Catalog, path: Path) -> int:
    """Import an old `forward.db` into the catalog and rename it aside; the rows added."""
    if not path.is_file():
        return 0
    try:
        objects, parts = _read(path)
    except sqlite3.DatabaseError as e:
        log.error("%s cannot be read (%s): left as it is, not imported", path, e)
        return 0
    added = 0
    with catalog.write() as s:
        have = set(s.scalars(select(ForwardObject.key)))
        for row in objects:
            if row["key"] in have:
                continue
            values = {k: v for k, v in row.items() if k in _OBJECT_COLUMNS}
            for k in _TIMES:
                values[k] = _time(values.get(k))
            values["attempts"] = values.get("attempts") or 0
            s.add(ForwardObject(**values))
            have.add(row["key"])
            added += 1
        had = set(s.execute(select(ForwardPart.upload_id, ForwardPart.part_number)).tuples())
        for row in parts:
            if (row["upload_id"], row["part_number"]) in had:
                continue
            s.add(ForwardPart(**{k: v for k, v in row.items() if k in _PART_COLUMNS}))
            had.add((row["upload_id"], row["part_number"]))
            added += 1
    target = _aside(path)
    log.warning(
        "forwarding state imported from %s into the catalog (%s object(s), %s part(s), "
        "%s new row(s)); the old file is now %s",
        path,
        len(objects),
        len(parts),
        added,
        target,
    )
    return added
