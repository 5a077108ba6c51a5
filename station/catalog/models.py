"""The catalog schema: SQLAlchemy 2 typed models. Alembic owns the tables.

Times are stored as UTC; `recorded_at` is the recorder's local wall time from
the file name and is kept as it was read. Rows are tombstoned, never deleted.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware datetime stored as naive UTC (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where UTC is required")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    pass


class Officer(Base):
    __tablename__ = "officers"

    id: Mapped[int] = mapped_column(primary_key=True)
    officer_no: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    unit_no: Mapped[str] = mapped_column(String(32), default="")
    unit_name: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Recorder(Base):
    """A recorder the station has seen; `status` says whether it may be collected."""

    __tablename__ = "recorders"

    id: Mapped[int] = mapped_column(primary_key=True)
    serial: Mapped[str] = mapped_column(String(32), unique=True)
    id_code: Mapped[str] = mapped_column(String(16), default="")
    officer_id: Mapped[int | None] = mapped_column(ForeignKey("officers.id"))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|registered
    registered_how: Mapped[str | None] = mapped_column(String(16))  # auto|manual
    registered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    registered_by: Mapped[str | None] = mapped_column(String(64))
    first_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # the officer block as it was when the recorder was registered ...
    block_officer_no: Mapped[str] = mapped_column(String(32), default="")
    block_officer_name: Mapped[str] = mapped_column(String(64), default="")
    block_unit_no: Mapped[str] = mapped_column(String(32), default="")
    block_unit_name: Mapped[str] = mapped_column(String(64), default="")
    # ... and as the recorder last reported it (JSON): it may lie, or change
    reported_block: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    last_port: Mapped[int | None]
    battery_percent: Mapped[int | None]
    clock_drift_s: Mapped[float | None]

    officer: Mapped[Officer | None] = relationship(lazy="joined")


class CollectionSession(Base):
    """One docking of one recorder, from identification to unplug."""

    __tablename__ = "collection_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    recorder_id: Mapped[int] = mapped_column(ForeignKey("recorders.id"), index=True)
    port: Mapped[int]
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # running | complete | interrupted | failed | held
    state: Mapped[str] = mapped_column(String(16), default="running")
    files_total: Mapped[int] = mapped_column(default=0)
    files_done: Mapped[int] = mapped_column(default=0)
    bytes_total: Mapped[int] = mapped_column(default=0)
    bytes_done: Mapped[int] = mapped_column(default=0)
    bytes_read: Mapped[int] = mapped_column(default=0)  # card bytes actually read
    battery_percent: Mapped[int | None]
    clock_drift_s: Mapped[float | None]
    error: Mapped[str | None] = mapped_column(Text)


class IngestJob(Base):
    """The persisted state machine of one card file's transfer.

    copying -> verified -> stored -> cleared (or abandoned). Written before the
    first byte moves, so a crash at any point resumes from `durable_offset`.
    """

    __tablename__ = "ingest_jobs"
    __table_args__ = (Index("ix_ingest_jobs_card", "recorder_id", "card_path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    recorder_id: Mapped[int] = mapped_column(ForeignKey("recorders.id"))
    session_id: Mapped[int | None] = mapped_column(ForeignKey("collection_sessions.id"))
    # whose file this is: the officer bound to the recorder when the job began
    officer_id: Mapped[int | None] = mapped_column(ForeignKey("officers.id"))
    card_path: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int]
    mtime: Mapped[float]
    state: Mapped[str] = mapped_column(String(16), default="copying")
    disk: Mapped[str] = mapped_column(Text)
    temp_path: Mapped[str] = mapped_column(Text)
    final_path: Mapped[str | None] = mapped_column(Text)  # relative to the disk
    durable_offset: Mapped[int] = mapped_column(default=0)
    prefix_sha256: Mapped[str | None] = mapped_column(String(64))  # of bytes [0, durable)
    sha256: Mapped[str | None] = mapped_column(String(64))
    file_id: Mapped[int | None] = mapped_column(ForeignKey("files.id"))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class StoredFile(Base):
    """A collected file: where it lives, whose it is, and its verified hash."""

    __tablename__ = "files"
    __table_args__ = (
        Index("ix_files_dedup", "recorder_id", "card_path", "size", "sha256"),
        Index("ix_files_officer_time", "officer_id", "recorded_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    officer_id: Mapped[int] = mapped_column(ForeignKey("officers.id"))
    recorder_id: Mapped[int] = mapped_column(ForeignKey("recorders.id"))
    session_id: Mapped[int | None] = mapped_column(ForeignKey("collection_sessions.id"))
    card_path: Mapped[bytes] = mapped_column(LargeBinary)
    name: Mapped[str] = mapped_column(Text)  # the original name, decoded for people
    disk: Mapped[str] = mapped_column(Text)
    rel_path: Mapped[str] = mapped_column(Text)
    size: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8), default="other")
    recorded_at: Mapped[dt.datetime | None] = mapped_column(DateTime)  # recorder wall time
    collected_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    important: Mapped[bool] = mapped_column(default=False)
    level: Mapped[str] = mapped_column(String(16), default="normal")
    note: Mapped[str | None] = mapped_column(Text)
    case_no: Mapped[str | None] = mapped_column(String(64), index=True)
    legal_hold: Mapped[str | None] = mapped_column(String(64))  # case number freezing the file
    verified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # last scrub
    # collected while the station clock could not be believed: never deleted by age
    clock_untrusted: Mapped[bool] = mapped_column(default=False, server_default="0")
    # set while the recorder's copy is being deleted (FileIngest._clearing): retention and
    # people leave the stored copy alone meanwhile (stale after CLEARING_GRACE)
    card_clearing_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    deleted_by: Mapped[str | None] = mapped_column(String(64))
    delete_reason: Mapped[str | None] = mapped_column(Text)
    # SM3 (GB/T 32905) of the stored bytes, computed in the background (station/platform/sm3.py)
    sm3: Mapped[str | None] = mapped_column(String(64))
    sm3_error: Mapped[str | None] = mapped_column(Text)
    # the platform's copy: None/pending | verified (its hash matched ours) | failed
    central_state: Mapped[str | None] = mapped_column(String(16))
    central_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    central_error: Mapped[str | None] = mapped_column(Text)
    # a 2016 permanent-retention category (station/retention/protection.py CATEGORIES), or None
    retention_category: Mapped[str | None] = mapped_column(String(32))

    officer: Mapped[Officer] = relationship(lazy="joined")
    recorder: Mapped[Recorder] = relationship(lazy="joined")


class StoredDisk(Base):
    """A data disk the station took into use, known by the UUID of its marker."""

    __tablename__ = "disks"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    path: Mapped[str] = mapped_column(Text)  # where it was last seen
    taken_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    taken_by: Mapped[str] = mapped_column(String(64), default="station")


class Event(Base):
    """The system log: append-only, each entry chained to the previous one's hash."""

    __tablename__ = "events"
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012 - SQLAlchemy's form

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    actor: Mapped[str] = mapped_column(String(64), default="station")
    port: Mapped[int | None]
    serial: Mapped[str | None] = mapped_column(String(32))
    officer_no: Mapped[str | None] = mapped_column(String(32))
    file_id: Mapped[int | None]
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Alarm(Base):
    """An alarm's lifecycle: raised, acknowledged, cleared."""

    __tablename__ = "alarms"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), index=True)
    subject: Mapped[str] = mapped_column(String(128), default="")  # which disk/port/...
    severity: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    raised_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    count: Mapped[int] = mapped_column(default=1)
    acked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    acked_by: Mapped[str | None] = mapped_column(String(64))
    cleared_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class StationState(Base):
    """Small persistent facts about the station (the active disk, ...)."""

    __tablename__ = "station_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class OutboxEntry(Base):
    """One message for the central platform, kept until the platform acknowledged it.

    `(kind, key)` is unique: the key is the idempotency key the platform deduplicates on
    (station id + file id for files). Delivered rows are kept with the platform's answer.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_pending", "kind", "delivered_at", "id"),
        UniqueConstraint("kind", "key", name="uq_outbox_kind_key"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # file | alarm | log | receipt | report
    key: Mapped[str] = mapped_column(String(128))
    file_id: Mapped[int | None] = mapped_column(index=True)
    body: Mapped[str] = mapped_column(Text)  # JSON
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    answer: Mapped[str | None] = mapped_column(String(16))  # accepted | duplicate | rejected


class PlatformCommand(Base):
    """A command the platform sent, by its id: a second one with the same id is a replay."""

    __tablename__ = "platform_commands"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    issued_at: Mapped[str | None] = mapped_column(String(40))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    status: Mapped[str] = mapped_column(String(16))  # done | failed | refused
    detail: Mapped[str | None] = mapped_column(Text)
