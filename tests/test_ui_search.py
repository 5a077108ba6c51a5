"""File search (station/search.py): filters, officer scope, pages, and speed on a million files."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from station.catalog import Catalog
from station.search import COUNT_CAP, FileQuery, list_officers, search_files

# functional here; bench/search.py times the same searches on a million files
BIG = int(os.environ.get("SEARCH_BENCH_FILES", "50000"))


def fill(db: Path, n: int, officers: int = 300, recorders: int = 400) -> None:
    """Write `n` catalogued files straight into a migrated catalog (fast: one transaction)."""
    con = sqlite3.connect(db)
    con.execute("PRAGMA synchronous=OFF")
    # building the indexes once at the end is much faster than keeping them up to date
    found = con.execute(
        "SELECT name, sql FROM sqlite_master "
        "WHERE type = 'index' AND tbl_name = 'files' AND sql NOT NULL"
    ).fetchall()
    indexes = [(sql,) for _, sql in found]
    for name, _ in found:
        con.execute(f"DROP INDEX {name}")
    now = "2026-11-21 00:00:00.000000"
    with con:
        con.executemany(
            "INSERT INTO officers (id, officer_no, name, unit_no, unit_name, created_at) "
            "VALUES (?, ?, ?, '', '', ?)",
            [(i, f"{800000 + i}", f"officer {i}", now) for i in range(1, officers + 1)],
        )
        con.executemany(
            "INSERT INTO recorders (id, serial, id_code, officer_id, status, first_seen_at, "
            "last_seen_at, block_officer_no, block_officer_name, block_unit_no, block_unit_name,"
            " reported_block) VALUES (?, ?, '', ?, 'registered', ?, ?, '', '', '', '', '{}')",
            [(i, f"K{i:06d}", (i - 1) % officers + 1, now, now) for i in range(1, recorders + 1)],
        )
        # the files themselves in SQL (a recursive sequence and SQLite's random()): fast.
        # recorded over three years from 2024-01-01; 70% video; 5% IMP; 1% evidence;
        # 0.2% with a note, 1% with a case number
        con.execute(
            f"""
            WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {n}),
            r AS (SELECT i, abs(random()) % {recorders} + 1 AS rec,
                         abs(random()) % (3 * 365 * 86400) AS t,
                         abs(random()) % 100 AS k, abs(random()) % 1000 AS x FROM seq)
            INSERT INTO files (id, officer_id, recorder_id, card_path, name, disk, rel_path,
                size, sha256, kind, recorded_at, collected_at, important, level, note, case_no)
            SELECT i, (rec - 1) % {officers} + 1, rec, CAST(i AS BLOB),
                printf('%d_K%06d_%08d.AVI', 800000 + (rec - 1) % {officers} + 1, rec, i),
                '/srv/disk1', 'x/' || i, 1000 + i, printf('%064x', i),
                CASE WHEN k < 70 THEN 'video' WHEN k < 90 THEN 'photo'
                     WHEN k < 95 THEN 'audio' ELSE 'log' END,
                datetime(1704067200 + t, 'unixepoch') || '.000000', '{now}',
                x < 50, CASE WHEN x >= 990 THEN 'evidence' WHEN x < 50 THEN 'important'
                             ELSE 'normal' END,
                CASE WHEN x BETWEEN 600 AND 601 THEN 'note ' || i || ' 纠纷' END,
                CASE WHEN x BETWEEN 700 AND 709
                     THEN printf('PG%s-%04d', strftime('%Y', 1704067200 + t, 'unixepoch'),
                                 i % 5000) END
            FROM r
            """
        )
    with con:
        for (sql,) in indexes:
            con.execute(sql)
    con.execute("ANALYZE")
    con.close()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    db = tmp_path_factory.mktemp("search") / "catalog.db"
    c = Catalog(db)
    c.migrate()
    fill(db, 3000, officers=5, recorders=8)
    yield c
    c.close()


def ids(page: dict) -> list[int]:
    return [f["id"] for f in page["items"]]


def test_officer_scope_is_in_the_query(small: Catalog) -> None:
    mine = search_files(small, None, FileQuery(), scope_officer_no="800001", limit=200)
    assert mine["total"] > 0
    assert all(f["officer_no"] == "800001" for f in mine["items"])
    other = search_files(
        small, None, FileQuery(officer_no="800002"), scope_officer_no="800001", limit=200
    )
    assert other["total"] == 0


def test_filters(small: Catalog) -> None:
    everything = search_files(small, None, FileQuery(), scope_officer_no=None, limit=200)
    assert everything["total"] == 3000
    rec = search_files(small, None, FileQuery(serial="K000003"), scope_officer_no=None, limit=200)
    assert rec["items"] and all(f["serial"] == "K000003" for f in rec["items"])
    day = dt.date(2025, 3, 1)
    one_day = search_files(small, None, FileQuery(date_from=day, date_to=day),
                           scope_officer_no=None, limit=200)  # fmt: skip
    assert all(f["recorded_at"].startswith("2025-03-01") for f in one_day["items"])
    photos = search_files(small, None, FileQuery(kind="photo"), scope_officer_no=None, limit=200)
    assert photos["total"] > 0 and {f["kind"] for f in photos["items"]} == {"photo"}
    imp = search_files(small, None, FileQuery(important=True), scope_officer_no=None, limit=200)
    assert all(f["important"] or f["level"] != "normal" for f in imp["items"])
    ev = search_files(small, None, FileQuery(level="evidence"), scope_officer_no=None, limit=200)
    assert {f["level"] for f in ev["items"]} <= {"evidence"}
    noted = search_files(small, None, FileQuery(text="纠纷"), scope_officer_no=None, limit=200)
    assert all("纠纷" in f["note"] for f in noted["items"])
    case = next(f["case_no"] for f in everything["items"] if f["case_no"]) if any(
        f["case_no"] for f in everything["items"]) else None  # fmt: skip
    if case:
        found = search_files(small, None, FileQuery(case_no=case[:6]), scope_officer_no=None)
        assert all(f["case_no"].startswith(case[:6]) for f in found["items"])


def test_pages_are_newest_first_and_do_not_overlap(small: Catalog) -> None:
    seen: list[int] = []
    times: list[str] = []
    for offset in range(0, 100, 20):
        page = search_files(small, None, FileQuery(), scope_officer_no=None, limit=20,
                            offset=offset)  # fmt: skip
        seen += ids(page)
        times += [f["recorded_at"] for f in page["items"]]
    assert len(seen) == len(set(seen)) == 100
    assert times == sorted(times, reverse=True)


def test_officers_list(small: Catalog) -> None:
    assert [o["officer_no"] for o in list_officers(small)][:2] == ["800001", "800002"]


@pytest.mark.skipif(BIG < 1, reason="SEARCH_BENCH_FILES=0")
def test_every_screen_search_works_on_a_large_catalog(tmp_path: Path) -> None:
    """Every search the screens make finds results on a large generated catalog."""
    db = tmp_path / "catalog.db"
    c = Catalog(db)
    c.migrate()
    t = time.perf_counter()
    fill(db, BIG)
    print(f"\ngenerated {BIG} files in {time.perf_counter() - t:.1f} s")
    queries = {
        "everything, first page": (FileQuery(), None, 0),
        "everything, page 50": (FileQuery(), None, 1000),
        "one officer (their own view)": (FileQuery(), "800042", 0),
        "one officer, videos, one month": (
            FileQuery(kind="video", date_from=dt.date(2025, 5, 1), date_to=dt.date(2025, 5, 31)),
            "800042",
            0,
        ),
        "one recorder": (FileQuery(serial="K000123"), None, 0),
        "date range, one week": (
            FileQuery(date_from=dt.date(2026, 1, 5), date_to=dt.date(2026, 1, 11)), None, 0),
        "IMP/important": (FileQuery(important=True), None, 0),
        "evidence": (FileQuery(level="evidence"), None, 0),
        "photos": (FileQuery(kind="photo"), None, 0),
        "case number prefix": (FileQuery(case_no="PG2025-"), None, 0),  # ~170 in 50,000
        "note text": (FileQuery(text="纠纷"), None, 0),
    }  # fmt: skip
    worst = 0.0
    for what, (q, scope, offset) in queries.items():
        search_files(c, None, q, scope_officer_no=scope, offset=offset)  # warm the cache
        t = time.perf_counter()
        page = search_files(c, None, q, scope_officer_no=scope, offset=offset)
        took = time.perf_counter() - t
        worst = max(worst, took)
        print(f"{what:32s} {took * 1000:7.1f} ms  total={page['total']}"
              f"{'+' if page['total_capped'] else ''}")  # fmt: skip
        assert page["items"], what
        assert page["total"] <= COUNT_CAP
    c.close()
    print(f"slowest: {worst * 1000:.0f} ms (timed for real by bench/search.py)")
