"""The audit trail through the running daemon (GB/T 22239-2019 level 3): every access to
footage and every refused request is an event with who, what, when, from where and
whether it succeeded; the audit administrator's export of the log is an event itself.
"""

from __future__ import annotations

import csv
import io

import httpx
import pytest
from conftest import StationProc
from test_ui_api import ADMIN, AUDIT, AUDITOR, OFFICER_A, OFFICER_B, as_user, events, file_ids
from test_ui_api import st as st  # the running station: a shared fixture

from station.web.audit import REFUSED_PER_MINUTE


def _last(st: StationProc, kind: str) -> dict:
    found = events(st, kind=kind, limit=10000)
    assert found, kind
    return found[-1]


def test_footage_access_says_from_where(st: StationProc) -> None:
    b = as_user(st, OFFICER_A)
    fid = file_ids(st, OFFICER_A[0])[0]
    assert b.get(f"/ui/media/{fid}/download").status_code == 200
    ev = _last(st, "file_downloaded")
    assert (ev["actor"], ev["file_id"], ev["data"]["source"]) == (OFFICER_A[0], fid, "127.0.0.1")
    # the daemon's own events say nothing of the kind
    assert "source" not in _last(st, "file_stored")["data"]


def test_a_refused_request_is_an_event_with_who_and_from_where(st: StationProc) -> None:
    b = as_user(st, OFFICER_A)
    theirs = file_ids(st, OFFICER_B[0])[0]
    assert b.get(f"/ui/media/{theirs}/download").status_code == 404  # not his: not there
    ev = _last(st, "access_refused")
    assert ev["actor"] == OFFICER_A[0] and ev["data"]["source"] == "127.0.0.1"
    assert ev["data"]["path"] == f"/ui/media/{theirs}/download" and ev["data"]["status"] == 404
    # an officer may not read the log, nor export it
    assert b.get("/ui/api/log/export").status_code == 403
    ev = _last(st, "access_refused")
    assert (ev["actor"], ev["data"]["path"], ev["data"]["status"]) == (
        OFFICER_A[0],
        "/ui/api/log/export",
        403,
    )
    # and nobody logged in at all
    anon = as_user(st, OFFICER_A)
    anon.post("/ui/api/logout")
    assert anon.get("/ui/api/files").status_code == 401
    ev = _last(st, "access_refused")
    assert ev["actor"] == "anonymous" and ev["data"]["status"] == 401
    # a file's details that are not his: not there, and logged
    assert b.get(f"/ui/api/files/{theirs}").status_code == 404
    ev = _last(st, "access_refused")
    assert (ev["actor"], ev["data"]["path"], ev["data"]["status"]) == (
        OFFICER_A[0],
        f"/ui/api/files/{theirs}",
        404,
    )
    # the central server's API without its token, or with a wrong one
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        assert httpx.get(st.url("/api/v1/files"), headers=headers, timeout=30).status_code == 401
        ev = _last(st, "access_refused")
        assert (ev["actor"], ev["data"]["path"], ev["data"]["status"]) == (
            "anonymous",
            "/api/v1/files",
            401,
        )


def test_a_flood_of_refused_requests_does_not_flood_the_log(st: StationProc) -> None:
    before = len(events(st, kind="access_refused", limit=10000))
    b = as_user(st, OFFICER_B)
    for _ in range(REFUSED_PER_MINUTE * 3):
        assert b.get("/ui/api/log").status_code == 403
    logged = events(st, kind="access_refused", limit=10000)[before:]
    assert 0 < len(logged) <= REFUSED_PER_MINUTE


@pytest.mark.parametrize("who", [AUDIT, AUDITOR, ADMIN])
def test_the_log_export_is_itself_logged(st: StationProc, who: tuple[str, str]) -> None:
    b = as_user(st, who)
    r = b.get("/ui/api/log/export", format="csv", kind="file_stored")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    stored = events(st, kind="file_stored", limit=10000)
    assert [int(row["id"]) for row in rows] == [e["id"] for e in stored]
    ev = _last(st, "log_exported")
    assert ev["actor"] == who[0] and ev["data"]["source"] == "127.0.0.1"
    assert ev["data"]["count"] == len(rows) and ev["data"]["filters"] == {"kind": "file_stored"}
    assert (ev["data"]["first_id"], ev["data"]["last_id"]) == (stored[0]["id"], stored[-1]["id"])
    j = b.get("/ui/api/log/export", format="json", after=ev["id"] - 1)
    assert j.status_code == 200 and j.json()["items"][0]["id"] == ev["id"]  # it is in the log


def test_no_console_route_changes_the_log(st: StationProc) -> None:
    """The log cannot be changed from the console: no route writes to it but by adding."""
    b = as_user(st, AUDIT)
    head = events(st, limit=10000)
    for method in ("DELETE", "PUT", "PATCH", "POST"):
        for path in ("/ui/api/log", f"/ui/api/log/{head[0]['id']}", "/ui/api/log/export"):
            r = b.c.request(method, path, headers={"X-CSRF-Token": b.csrf})
            assert r.status_code in (404, 405), (method, path, r.status_code)
    after = events(st, limit=10000)
    assert [e["hash"] for e in after[: len(head)]] == [e["hash"] for e in head]


def test_refusals_from_many_addresses_are_bounded_in_total() -> None:
    """30,000 IPv6 addresses: the log and the table stay bounded."""
    from station.web.audit import REFUSED_TOTAL_PER_MINUTE, WINDOWS_KEPT, AuditTrail

    trail = AuditTrail(app=None, api=None)  # type: ignore[arg-type]
    admitted = sum(trail._admit(f"2001:db8:{i:x}::1") is not None for i in range(30_000))
    assert admitted == REFUSED_TOTAL_PER_MINUTE
    assert len(trail._windows) <= WINDOWS_KEPT
    # one /64 is one source
    trail = AuditTrail(app=None, api=None)  # type: ignore[arg-type]
    same = sum(trail._admit(f"2001:db8::{i:x}") is not None for i in range(100))
    assert same == REFUSED_PER_MINUTE
