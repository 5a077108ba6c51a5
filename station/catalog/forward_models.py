"""The catalog tables of S3 forwarding: what is in the object store, and the uploads in flight.

Kept beside `models.py` (same `Base`, same metadata) so that Alembic sees them; the
revision that creates them is `0011_forward_state`. Until then they lived in a SQLite
file of their own (`forward.db` beside the catalog), which `station.forward.legacy`
imports once on the first start (see docs/forwarding.md).

An object row whose upload was abandoned (its file deleted locally before it was sent)
is tombstoned (`state = "dropped"`), not deleted; it is reused if a file is later sent
to the same key. Part rows are the server's acknowledgements of one multipart upload:
they are deleted once that upload is completed or aborted (the object row keeps its
final ETag and checksum, and the system log its `file_forwarded` event), since nothing
ever reads them again and a tombstone per part would grow the catalog by a row per
16 MiB sent.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from station.catalog.models import Base, UTCDateTime


class ForwardObject(Base):
    """One object key in the bucket: the file sent there and how far its upload got.

    `state`: uploading | done | refused (the local bytes did not match) | bad (the
    server's copy did not verify) | dropped (tombstone). `file_id` is the catalog id
    when last seen: ids change on a rebuild, so rows are found by key and content hash.
    """

    __tablename__ = "forward_objects"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int]
    file_id: Mapped[int] = mapped_column(index=True)
    state: Mapped[str] = mapped_column(String(16))
    upload_id: Mapped[str | None] = mapped_column(Text)  # the multipart upload in flight
    part_size: Mapped[int | None]
    mode: Mapped[str | None] = mapped_column(String(8))  # put | sha256 | md5
    etag: Mapped[str | None] = mapped_column(Text)
    checksum: Mapped[str | None] = mapped_column(Text)  # the server's SHA-256 checksum
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class ForwardPart(Base):
    """A part of a multipart upload in flight that the server acknowledged."""

    __tablename__ = "forward_parts"

    upload_id: Mapped[str] = mapped_column(Text, primary_key=True)
    part_number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    size: Mapped[int]
    etag: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))  # base64, as S3 carries it
    md5: Mapped[str] = mapped_column(String(32))  # hex
