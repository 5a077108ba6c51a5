"""The forwarder's state in the catalog: what is in the object store, the uploads in flight.

Tables `forward_objects` and `forward_parts` (station/catalog/forward_models.py,
revision 0011), written through the catalog's own sessions: WAL, synchronous=FULL,
`BEGIN IMMEDIATE` under the catalog's writer lock, so a part's acknowledgement is
durable before the next part starts. Rows are returned detached (read-only copies).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select

from station.catalog import Catalog, ForwardObject, ForwardPart
from station.catalog.models import utcnow

DROPPED = "dropped"  # the tombstone of an object row whose upload was abandoned
_RESET: dict[str, Any] = {  # a tombstoned row taken up again starts afresh
    c: None
    for c in ForwardObject.__table__.columns.keys()  # noqa: SIM118 - a ColumnCollection
    if c not in ("key", "sha256", "size", "file_id", "state")
} | {"attempts": 0}


class ForwardState:
    """The object rows (by key) and the acknowledged parts (by upload) in the catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def get(self, key: str) -> ForwardObject | None:
        """The live row of `key` (None when there is none, or only its tombstone)."""
        with self.catalog.read() as s:
            row = s.get(ForwardObject, key)
            return None if row is None or row.state == DROPPED else row

    def objects(self, state: str | None = None) -> list[ForwardObject]:
        """Every live row (done, refused, bad, in progress), or those in `state`."""
        q = select(ForwardObject).where(ForwardObject.state != DROPPED)
        if state is not None:
            q = q.where(ForwardObject.state == state)
        with self.catalog.read() as s:
            return list(s.scalars(q))

    def put(self, key: str, **values: Any) -> None:
        """Insert or update one object's row (the columns given; the others are kept)."""
        values["updated_at"] = utcnow()
        with self.catalog.write() as s:
            row = s.get(ForwardObject, key)
            if row is None:
                s.add(ForwardObject(key=key, **{**_RESET, **values}))
                return
            if row.state == DROPPED:
                values = {**_RESET, **values}
            for k, v in values.items():
                setattr(row, k, v)

    def failed(self, key: str, why: str) -> None:
        """One more failed attempt at `key`'s upload."""
        with self.catalog.write() as s:
            row = s.get(ForwardObject, key)
            if row is not None and row.state != DROPPED:
                row.attempts += 1
                row.error = why
                row.updated_at = utcnow()

    def drop(self, key: str, why: str) -> None:
        """Tombstone `key`'s row: its upload was abandoned (its file is no longer stored)."""
        with self.catalog.write() as s:
            row = s.get(ForwardObject, key)
            if row is not None:
                now = utcnow()
                row.state, row.upload_id, row.error = DROPPED, None, why
                row.updated_at = row.finished_at = now

    def parts(self, upload_id: str) -> dict[int, ForwardPart]:
        """The recorded parts of an upload, by part number."""
        with self.catalog.read() as s:
            rows = s.scalars(select(ForwardPart).where(ForwardPart.upload_id == upload_id))
            return {p.part_number: p for p in rows}

    def add_part(
        self, upload_id: str, number: int, size: int, etag: str, sha: str, md5: str
    ) -> None:
        """Record a part the server acknowledged (replacing one recorded before)."""
        with self.catalog.write() as s:
            s.merge(
                ForwardPart(
                    upload_id=upload_id,
                    part_number=number,
                    size=size,
                    etag=etag,
                    sha256=sha,
                    md5=md5,
                )
            )

    def drop_parts(self, upload_id: str) -> None:
        """Forget the parts of an upload that was completed or aborted."""
        with self.catalog.write() as s:
            s.execute(delete(ForwardPart).where(ForwardPart.upload_id == upload_id))

    def close(self) -> None:
        """Nothing to close: the catalog belongs to whoever opened it."""
