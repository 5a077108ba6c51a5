"""Opening the catalog: engines, pragmas, migrations, sessions and the event chain."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from station.catalog.models import Event, StationState, utcnow

log = logging.getLogger(__name__)
# Where the request being served comes from (its address): set by the web front door
# (station/web/audit.py) for the events written while serving it; None for the daemon's own work.
REQUEST_SOURCE: ContextVar[str | None] = ContextVar("request_source", default=None)

MIGRATIONS = Path(__file__).parent / "migrations"
GENESIS = "0" * 64


def _engine(path: Path, begin: str) -> Engine:
    engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite recipe).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


REBUILDING = "catalog_rebuild_started"  # state key: set while `station catalog rebuild` runs


class CatalogBusy(Exception):
    """Another process (the running daemon) holds the catalog exclusively."""


def lock_exclusive(path: Path) -> int:
    """Take the station's lock beside the catalog (`<catalog>.lock`); return its descriptor.

    The daemon holds it for as long as it runs; `station catalog rebuild` takes it too,
    so a rebuild can never run under a collecting station. Released when the process
    ends, however it ends.
    """
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CatalogBusy(
            f"{path} is in use by a running station (stop it first: systemctl stop station)"
        ) from None
    return fd


class Catalog:
    """The station's SQLite catalog.

    Writers take `BEGIN IMMEDIATE` under a process-wide lock, so concurrent
    collection workers (and the CLI in another process, through the busy
    timeout) serialise cleanly instead of failing with SQLITE_BUSY.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_engine = _engine(self.path, "BEGIN IMMEDIATE")
        self._read_engine = _engine(self.path, "BEGIN")
        self._writes = sessionmaker(self._write_engine, expire_on_commit=False)
        self._reads = sessionmaker(self._read_engine, expire_on_commit=False)
        self._lock = threading.Lock()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self._lock, self._write_engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A read-write transaction, committed on success."""
        with self._lock, self._writes() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only snapshot."""
        with self._reads() as session:
            yield session

    def close(self) -> None:
        self._write_engine.dispose()
        self._read_engine.dispose()

    # --- small persistent state -------------------------------------------------

    def get_state(self, key: str, default: str | None = None) -> str | None:
        with self.read() as s:
            row = s.get(StationState, key)
            return row.value if row else default

    def set_state(self, key: str, value: str) -> None:
        with self.write() as s:
            s.merge(StationState(key=key, value=value))


def event_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    """The chain hash of one event: SHA-256 over the previous hash and its fields."""
    body = json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def event_fields(ev: Event) -> dict[str, Any]:
    """The fields of an event that its hash covers."""
    return {
        "at": ev.at.isoformat(),
        "kind": ev.kind,
        "actor": ev.actor,
        "port": ev.port,
        "serial": ev.serial,
        "officer_no": ev.officer_no,
        "file_id": ev.file_id,
        "message": ev.message,
        "data": ev.data,
    }


def verify_chain(session: Session) -> list[str]:
    """Every break in the event chain: an edited entry, or one inserted or deleted."""
    problems = []
    prev = GENESIS
    for ev in session.scalars(select(Event).order_by(Event.id)).yield_per(1000):
        if ev.prev_hash != prev:
            problems.append(
                f"event {ev.id}: does not follow the entry before it "
                "(an entry was inserted or deleted)"
            )
        if event_hash(ev.prev_hash, event_fields(ev)) != ev.hash:
            problems.append(f"event {ev.id}: content does not match its hash (edited)")
        prev = ev.hash
    return problems


def chain_head(session: Session) -> dict[str, Any]:
    """The newest entry of the chain: {"last_id", "hash", "count"} (the anchor's content)."""
    last = session.scalars(select(Event).order_by(Event.id.desc()).limit(1)).first()
    count = session.scalar(select(func.count()).select_from(Event)) or 0
    return {
        "last_id": last.id if last else 0,
        "hash": last.hash if last else GENESIS,
        "count": count,
    }


def verify_anchor(session: Session, anchor: dict[str, Any], where: str) -> list[str]:
    """What an anchor (a chain head kept outside the database) says is missing now.

    The chain itself cannot show that its newest entries were deleted; an anchor can:
    the entry it names must still be there with the same hash, and as many entries up to it.
    """
    last_id, want = int(anchor.get("last_id", 0)), str(anchor.get("hash", GENESIS))
    if last_id == 0:
        return []
    ev = session.get(Event, last_id)
    if ev is None:
        newest = session.scalar(select(func.max(Event.id))) or 0
        return [
            f"{where}: event {last_id} is gone (the log now ends at {newest}): "
            "its newest entries were deleted"
        ]
    problems = []
    if ev.hash != want:
        problems.append(f"{where}: event {last_id} does not have the anchored hash (rewritten)")
    upto = session.scalar(select(func.count()).select_from(Event).where(Event.id <= last_id))
    if upto != int(anchor.get("count", upto)):
        problems.append(
            f"{where}: {anchor.get('count')} entries up to event {last_id} were anchored, "
            f"{upto} are there (entries deleted)"
        )
    return problems


def append_event(
    session: Session,
    kind: str,
    message: str = "",
    *,
    actor: str = "station",
    port: int | None = None,
    serial: str | None = None,
    officer_no: str | None = None,
    file_id: int | None = None,
    **data: Any,
) -> Event:
    """Append one entry to the system log inside the caller's write transaction. An event
    written while serving a person's request says where it came from (`source`)."""
    source = REQUEST_SOURCE.get()
    if source is not None:
        data.setdefault("source", source)
    last = session.scalars(select(Event).order_by(Event.id.desc()).limit(1)).first()
    prev = last.hash if last else GENESIS
    ev = Event(
        at=utcnow(),
        kind=kind,
        actor=actor,
        port=port,
        serial=serial,
        officer_no=officer_no,
        file_id=file_id,
        message=message,
        data=json.dumps(data, sort_keys=True, ensure_ascii=False, default=str),
        prev_hash=prev,
    )
    ev.hash = event_hash(prev, event_fields(ev))
    session.add(ev)
    session.flush()
    log.info("event %s: %s", kind, message)
    return ev
