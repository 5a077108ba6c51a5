"""The catalog tables of station accounts: users, their sessions, and the search indexes.

Kept beside `models.py` (same `Base`, same metadata) so that Alembic sees them;
the revision that creates them is `0004_accounts`.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from station.catalog.models import Base, StoredFile, UTCDateTime, utcnow

# GB/T 22239-2019 level 3, separation of duties: the system administrator (configuration,
# disks, recorders, footage), the security administrator (accounts, roles, lockouts) and
# the audit administrator (the system log, nothing else); one role per account
ROLES = ("officer", "administrator", "auditor", "security_admin", "audit_admin")
FOOTAGE_ROLES = ("officer", "administrator", "auditor")  # officers: their own files only
LOG_ROLES = ("administrator", "auditor", "security_admin", "audit_admin")
KEEP_ONE = ("administrator", "security_admin")  # the last active one of these stays


class User(Base):
    """A person who may log in: an officer, an administrator or an auditor.

    `officer_no` is the login name; an officer sees the files of the catalog
    officer with the same number. The secret (PIN or password) is kept only as
    an argon2 hash. Accounts are disabled, never deleted, so the system log's
    actors stay meaningful.
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    officer_no: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    role: Mapped[str] = mapped_column(String(16))  # one of ROLES
    password_hash: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(default=True)
    failed_logins: Mapped[int] = mapped_column(default=0)  # in a row
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    password_changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # JSON list of the previous secrets' argon2 hashes, newest first (accounts.secret_history)
    secret_history: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")
    # TOTP (RFC 6238) second factor: its base32 secret, and the last time step used (a
    # code is good once)
    totp_secret: Mapped[str | None] = mapped_column(Text)
    totp_last_step: Mapped[int] = mapped_column(default=0, server_default="0")
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class LoginThrottle(Base):
    """Wrong secrets for one account from one source (an address; the touchscreen is
    127.0.0.1): `failures` in a row lock that pair for a time that doubles with each lock
    (`locks`), so guessing from one place is slow while the account stays usable from
    another, and one wrong PIN now and then never keeps it locked. A good login from the
    source, or `station users unlock`, clears it."""

    __tablename__ = "login_throttle"

    officer_no: Mapped[str] = mapped_column(String(32), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    locks: Mapped[int] = mapped_column(default=0)
    last_failure_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class UserSession(Base):
    """One login: the hash of its cookie token, when it started, last acted and ends."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)  # absolute limit
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ended_why: Mapped[str | None] = mapped_column(String(32))  # logout|idle|expired|...
    client: Mapped[str] = mapped_column(String(128), default="")

    user: Mapped[User] = relationship(lazy="joined")


# Search indexes on `files` for the retrieval screens (station/search.py): newest first by
# recorded time, narrowed by recorder, kind or level. (officer_id, recorded_at) and
# case_no already exist. Declared here, against the files table, so that the models
# and the schema agree.
_LIVE = StoredFile.deleted_at.is_(None)  # partial: the index alone answers "not deleted"
Index("ix_files_recorded", StoredFile.recorded_at, StoredFile.id, sqlite_where=_LIVE)
Index("ix_files_recorder_time", StoredFile.recorder_id, StoredFile.recorded_at, sqlite_where=_LIVE)
Index("ix_files_kind_time", StoredFile.kind, StoredFile.recorded_at, sqlite_where=_LIVE)
Index("ix_files_level_time", StoredFile.level, StoredFile.recorded_at, sqlite_where=_LIVE)
Index("ix_files_important_time", StoredFile.important, StoredFile.recorded_at, sqlite_where=_LIVE)
Index(
    "ix_files_note",
    StoredFile.note,
    sqlite_where=StoredFile.note.is_not(None),
)
