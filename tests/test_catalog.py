"""The catalog on a real SQLite file: migrations, pragmas, the event chain, concurrency."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import StatementError

from station.catalog import Catalog, Event, Officer, StationState
from station.catalog.db import GENESIS, append_event, event_hash
from station.catalog.models import Base

TABLES = {
    "alarms",
    "collection_sessions",
    "disks",
    "events",
    "files",
    "forward_objects",
    "forward_parts",
    "ingest_jobs",
    "login_throttle",
    "officers",
    "outbox",
    "platform_commands",
    "recorders",
    "station_state",
    "user_sessions",
    "users",
}


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    c = Catalog(tmp_path / "var" / "catalog.db")
    c.migrate()
    yield c
    c.close()


def _tables(path: Path) -> set[str]:
    con = sqlite3.connect(path)
    try:
        rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    finally:
        con.close()
    return {r[0] for r in rows}


def test_fresh_migrate_creates_every_table(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "catalog.db"
    c = Catalog(path)  # the folder is created
    c.migrate()
    c.close()
    assert TABLES | {"alembic_version"} <= _tables(path)
    assert set(Base.metadata.tables) == TABLES


def test_migrate_is_idempotent(catalog: Catalog) -> None:
    with catalog.write() as s:
        append_event(s, "test", "kept")
        s.add(StationState(key="k", value="v"))
    catalog.migrate()
    catalog.migrate()
    with catalog.read() as s:
        assert [e.message for e in s.scalars(select(Event))] == ["kept"]
        version = s.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert len(version) == 1
    assert catalog.get_state("k") == "v"
    # a second Catalog on the same file (the CLI beside the daemon) migrates as a no-op
    other = Catalog(catalog.path)
    other.migrate()
    other.close()
    assert catalog.get_state("k") == "v"


def test_migrated_schema_equals_the_models(catalog: Catalog) -> None:
    with catalog._write_engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_migrated_indexes_and_uniques(catalog: Catalog) -> None:
    with catalog._read_engine.connect() as conn:
        insp = inspect(conn)
        files = {i["name"] for i in insp.get_indexes("files")}
        jobs = {i["name"] for i in insp.get_indexes("ingest_jobs")}
        officer_uniques = insp.get_unique_constraints("officers")
        recorder_uniques = insp.get_unique_constraints("recorders")
    assert {"ix_files_dedup", "ix_files_officer_time", "ix_files_collected_at"} <= files
    assert "ix_ingest_jobs_card" in jobs
    assert [u["column_names"] for u in officer_uniques] == [["officer_no"]]
    assert [u["column_names"] for u in recorder_uniques] == [["serial"]]


def _pragmas(session: object) -> tuple[str, int, int, int]:
    ex = session.execute  # type: ignore[attr-defined]
    return (
        ex(text("PRAGMA journal_mode")).scalar(),
        ex(text("PRAGMA synchronous")).scalar(),
        ex(text("PRAGMA foreign_keys")).scalar(),
        ex(text("PRAGMA busy_timeout")).scalar(),
    )


def test_pragmas_on_every_connection_handed_out(catalog: Catalog) -> None:
    for _ in range(3):  # pooled connections keep them too
        with catalog.read() as s:
            journal, sync, fk, busy = _pragmas(s)
            assert (journal, sync, fk) == ("wal", 2, 1)
            assert busy > 0
        with catalog.write() as s:
            journal, sync, fk, busy = _pragmas(s)
            assert (journal, sync, fk) == ("wal", 2, 1)
            assert busy > 0


def test_pragmas_on_connections_opened_in_other_threads(catalog: Catalog) -> None:
    seen: list[tuple] = []

    def worker() -> None:
        with catalog.write() as s:
            seen.append(_pragmas(s)[:3])
        with catalog.read() as s:
            seen.append(_pragmas(s)[:3])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert seen == [("wal", 2, 1)] * 8


def test_foreign_keys_are_enforced(catalog: Catalog) -> None:
    from station.catalog import Recorder

    with pytest.raises(Exception, match="FOREIGN KEY"), catalog.write() as s:
        s.add(Recorder(serial="X1", officer_id=12345))
    with catalog.read() as s:
        assert s.scalars(select(Recorder)).all() == []


def _fields(e: Event) -> dict[str, object]:
    return {
        "at": e.at.isoformat(),
        "kind": e.kind,
        "actor": e.actor,
        "port": e.port,
        "serial": e.serial,
        "officer_no": e.officer_no,
        "file_id": e.file_id,
        "message": e.message,
        "data": e.data,
    }


def _check_chain(events: list[Event]) -> None:
    prev = GENESIS
    for e in events:
        assert e.prev_hash == prev, f"event {e.id} does not link to the one before"
        assert e.hash == event_hash(e.prev_hash, _fields(e)), f"event {e.id} hash"
        prev = e.hash


def test_append_event_chain(catalog: Catalog) -> None:
    with catalog.write() as s:
        first = append_event(s, "station_started", "version x")
    with catalog.write() as s:
        append_event(s, "device_docked", "simulated", port=3, key="k1")
        append_event(
            s,
            "file_stored",
            "张三的文件",
            actor="station",
            port=3,
            serial="B100001",
            officer_no="100001",
            file_id=7,
            size=123,
            sha256="ab" * 32,
        )
    assert first.prev_hash == GENESIS
    with catalog.read() as s:
        events = s.scalars(select(Event).order_by(Event.id)).all()
    assert [e.kind for e in events] == ["station_started", "device_docked", "file_stored"]
    _check_chain(events)
    assert json.loads(events[2].data) == {"size": 123, "sha256": "ab" * 32}
    assert events[2].at.tzinfo is not None
    assert len({e.hash for e in events}) == 3


def test_tampering_breaks_the_chain(catalog: Catalog) -> None:
    with catalog.write() as s:
        for i in range(3):
            append_event(s, "note", f"event {i}")
    con = sqlite3.connect(catalog.path)
    con.execute("UPDATE events SET message = 'forged' WHERE id = 2")
    con.commit()
    con.close()
    with catalog.read() as s:
        events = s.scalars(select(Event).order_by(Event.id)).all()
    with pytest.raises(AssertionError, match="event 2 hash"):
        _check_chain(events)


def test_event_rolled_back_with_its_transaction(catalog: Catalog) -> None:
    with pytest.raises(RuntimeError), catalog.write() as s:
        append_event(s, "lost", "never committed")
        raise RuntimeError("boom")
    with catalog.write() as s:
        ev = append_event(s, "kept")
    assert ev.prev_hash == GENESIS


def test_concurrent_writers_do_not_fail(catalog: Catalog) -> None:
    # 8 threads: 4 on the daemon's Catalog, 4 on a second one (the CLI in another process
    # takes the same path through SQLite's locks and the busy timeout)
    other = Catalog(catalog.path)
    errors: list[BaseException] = []
    per_thread = 15
    barrier = threading.Barrier(8)

    def worker(c: Catalog, k: int) -> None:
        try:
            barrier.wait(timeout=60)
            for i in range(per_thread):
                with c.write() as s:
                    append_event(s, "test", f"t{k}-{i}", port=k)
                    s.merge(StationState(key=f"w{k}", value=str(i)))
                with c.read() as s:
                    s.scalars(select(Event).limit(5)).all()
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=worker, args=(catalog if k < 4 else other, k)) for k in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    other.close()
    assert errors == []
    with catalog.read() as s:
        events = s.scalars(select(Event).order_by(Event.id)).all()
        states = {r.key: r.value for r in s.scalars(select(StationState))}
    assert len(events) == 8 * per_thread
    _check_chain(events)  # writers were serialised: the chain has no fork
    assert states == {f"w{k}": str(per_thread - 1) for k in range(8)}


def test_utc_datetime_refuses_naive_datetimes(catalog: Catalog) -> None:
    with pytest.raises((ValueError, StatementError), match="naive"), catalog.write() as s:
        s.add(Officer(officer_no="1", created_at=dt.datetime(2026, 11, 21, 10, 0)))
    with catalog.read() as s:
        assert s.scalars(select(Officer)).all() == []


def test_utc_datetime_stores_utc_and_returns_aware(catalog: Catalog) -> None:
    beijing = dt.timezone(dt.timedelta(hours=8))
    t = dt.datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=beijing)
    with catalog.write() as s:
        s.add(Officer(officer_no="1", created_at=t))
    with catalog.read() as s:
        o = s.scalars(select(Officer)).one()
    assert o.created_at == t
    assert o.created_at.tzinfo == dt.UTC
    assert o.created_at.hour == 2
    con = sqlite3.connect(catalog.path)
    (raw,) = con.execute("SELECT created_at FROM officers").fetchone()
    con.close()
    assert raw.startswith("2026-11-21 02:00:00")


def test_state_helpers(catalog: Catalog) -> None:
    assert catalog.get_state("active_disk") is None
    assert catalog.get_state("active_disk", "0") == "0"
    catalog.set_state("active_disk", "1")
    catalog.set_state("active_disk", "0")
    assert catalog.get_state("active_disk") == "0"
