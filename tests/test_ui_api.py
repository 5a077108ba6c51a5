"""The browser API over real HTTP: sessions, CSRF, roles and scopes, access log, settings."""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import tomli_w
from conftest import TOKEN, StationProc, free_port, wait_for, write_config

from station import accounts
from station.catalog import Catalog
from station.config import load_config
from station.sim.recorder import RecorderSpec

ADMIN = ("900001", "135790")
OFFICER_A = ("800001", "246801")
OFFICER_B = ("800002", "112233")
AUDITOR = ("700001", "998877")
SECURITY = ("600001", "864200")  # the security administrator: accounts
AUDIT = ("600002", "975310")  # the audit administrator: the system log


@pytest.fixture(scope="module")
def st(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StationProc]:
    root = tmp_path_factory.mktemp("uiapi") / "station"
    for d in ("disk1", "disk2", "bus"):
        (root / d).mkdir(parents=True)
    port = free_port()
    proc = StationProc(root, write_config(root, port), port)
    try:
        proc.start()
        catalog = Catalog(proc.db)
        for (no, pin), role in (
            (ADMIN, "administrator"),
            (OFFICER_A, "officer"),
            (OFFICER_B, "officer"),
            (AUDITOR, "auditor"),
            (SECURITY, "security_admin"),
            (AUDIT, "audit_admin"),
        ):
            accounts.create_user(catalog, no, pin, role=role)
        catalog.close()
        for p, serial, (officer, _) in ((1, "K100001", OFFICER_A), (2, "K100002", OFFICER_B)):
            spec = RecorderSpec(serial=serial, officer_no=officer, files=4, imp=1, size_mb=0.5)
            proc.dock(p, proc.build(spec, seed=p))
        for p in (1, 2):
            proc.wait_state(p, "complete")
        yield proc
    finally:
        proc.stop()


class Browser:
    """An httpx client that behaves like the pages: session cookie plus CSRF header."""

    def __init__(self, st: StationProc) -> None:
        self.c = httpx.Client(base_url=st.url(""), timeout=60)
        self.csrf = self.c.get("/ui/api/session").json()["csrf"]

    def login(self, who: tuple[str, str]) -> httpx.Response:
        r = self.post("/ui/api/login", {"officer_no": who[0], "secret": who[1]})
        if r.status_code == 200:
            self.csrf = r.json()["csrf"]
        return r

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.c.get(path, params=params)

    def post(self, path: str, body: Any = None, **headers: str) -> httpx.Response:
        return self.c.post(
            path, json=body if body is not None else {}, headers={"X-CSRF-Token": self.csrf,
                                                                   **headers})  # fmt: skip


def as_user(st: StationProc, who: tuple[str, str]) -> Browser:
    b = Browser(st)
    assert b.login(who).status_code == 200
    return b


def file_ids(st: StationProc, officer_no: str) -> list[int]:
    return [f["id"] for f in st.api("/api/v1/files", officer_no=officer_no)["items"]]


def events(st: StationProc, **params: Any) -> list[dict[str, Any]]:
    return st.api("/api/v1/events", **params)["items"]


# --- sessions and CSRF ------------------------------------------------------------------------


def test_login_sets_a_strict_httponly_cookie(st: StationProc) -> None:
    b = Browser(st)
    r = b.login(OFFICER_A)
    assert r.status_code == 200
    cookie = r.headers["set-cookie"].lower()
    assert "station_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    me = b.get("/ui/api/session").json()
    assert me["user"]["officer_no"] == OFFICER_A[0] and me["user"]["role"] == "officer"
    assert b.post("/ui/api/logout").status_code == 200
    assert b.get("/ui/api/files").status_code == 401


def test_state_changes_need_the_csrf_token(st: StationProc) -> None:
    c = httpx.Client(base_url=st.url(""))
    c.get("/ui/api/session")
    body = {"officer_no": OFFICER_A[0], "secret": OFFICER_A[1]}
    assert c.post("/ui/api/login", json=body).status_code == 403  # no token
    assert c.post("/ui/api/login", json=body, headers={"X-CSRF-Token": "forged"}).status_code == 403
    b = as_user(st, OFFICER_A)
    fid = file_ids(st, OFFICER_A[0])[0]
    # the pre-login token does not do once logged in... (it is another token)
    r = b.c.post(f"/ui/api/files/{fid}/annotate", json={"note": "x"})
    assert r.status_code == 403
    # ... and a request from another site is refused even with the token
    r = b.post(f"/ui/api/files/{fid}/annotate", {"note": "x"}, Origin="http://evil.example")
    assert r.status_code == 403
    assert b.post(f"/ui/api/files/{fid}/annotate", {"note": "ok"}).status_code == 200


def test_bearer_api_and_browser_sessions_are_separate(st: StationProc) -> None:
    b = as_user(st, ADMIN)
    assert b.get("/api/v1/status").status_code == 401  # a session is not a bearer token
    r = httpx.get(st.url("/ui/api/files"), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 401  # and a bearer token is not a session


def test_wrong_pins_lock_through_the_api_too(st: StationProc) -> None:
    catalog = Catalog(st.db)
    accounts.create_user(catalog, "800077", "777777", role="officer")
    catalog.close()
    b = Browser(st)
    codes = [b.login(("800077", "000000")).status_code for _ in range(5)]
    assert codes == [401, 401, 401, 401, 423]
    r = b.login(("800077", "777777"))
    assert r.status_code == 423 and "locked" in r.json()["detail"]


# --- who sees what -----------------------------------------------------------------------------


def test_an_officer_sees_only_their_own_files(st: StationProc) -> None:
    a, b = as_user(st, OFFICER_A), as_user(st, OFFICER_B)
    mine, theirs = file_ids(st, OFFICER_A[0]), file_ids(st, OFFICER_B[0])
    got = a.get("/ui/api/files", limit=100).json()
    assert sorted(f["id"] for f in got["items"]) == sorted(mine) and got["total"] == len(mine)
    # asking for the other officer's files by filter gives nothing
    assert a.get("/ui/api/files", officer_no=OFFICER_B[0]).json()["total"] == 0
    for fid in theirs:
        assert a.get(f"/ui/api/files/{fid}").status_code == 404
        for how in ("view", "play", "download", "text", "status"):
            assert a.get(f"/ui/media/{fid}/{how}").status_code == 404, how
        assert a.post(f"/ui/api/files/{fid}/annotate", {"note": "x"}).status_code == 404
    assert a.post("/ui/media/zip", {"ids": [mine[0], theirs[0]]}).status_code == 404
    # and a zip link is only good for the one who asked for it, once
    url = a.post("/ui/media/zip", {"ids": mine}).json()["url"]
    assert b.get(url).status_code == 404
    assert a.get(url).status_code == 200
    assert a.get(url).status_code == 404
    # an officer has no system log, users or settings
    for path in ("/ui/api/log", "/ui/api/users", "/ui/api/settings"):
        assert a.get(path).status_code == 403


def test_auditor_reads_everything_and_changes_nothing(st: StationProc) -> None:
    au = as_user(st, AUDITOR)
    everything = au.get("/ui/api/files", limit=100).json()
    assert everything["total"] == len(file_ids(st, OFFICER_A[0])) + len(file_ids(st, OFFICER_B[0]))
    fid = everything["items"][0]["id"]
    assert "history" in au.get(f"/ui/api/files/{fid}").json()
    assert au.get("/ui/api/log").status_code == 200
    assert au.post(f"/ui/api/files/{fid}/annotate", {"level": "evidence"}).status_code == 403
    assert au.post(f"/ui/api/files/{fid}/delete", {"reason": "test"}).status_code == 403
    assert au.get("/ui/api/settings").status_code == 403
    assert au.post("/ui/api/users", {"officer_no": "1", "role": "officer",
                                     "secret": "123456"}).status_code == 403  # fmt: skip


def test_every_access_to_footage_is_logged(st: StationProc) -> None:
    a = as_user(st, OFFICER_A)
    files = a.get("/ui/api/files", limit=100).json()["items"]
    photo = next(f for f in files if f["kind"] == "photo" or f["kind"] == "video")
    log = next(f for f in files if f["kind"] == "log")
    assert a.get(f"/ui/media/{log['id']}/text").json()["text"]
    r = a.get(f"/ui/media/{photo['id']}/download")
    assert r.status_code == 200 and r.headers["x-content-sha256"] == photo["sha256"]
    assert hashlib.sha256(r.content).hexdigest() == photo["sha256"]
    mine = {(e["kind"], e["file_id"]) for e in events(st, actor=OFFICER_A[0])}
    assert ("file_viewed", log["id"]) in mine
    assert ("file_downloaded", photo["id"]) in mine


def test_video_plays_with_range_requests(st: StationProc) -> None:
    a = as_user(st, OFFICER_A)
    video = next(f for f in a.get("/ui/api/files", kind="video").json()["items"])
    first = a.get(f"/ui/media/{video['id']}/play")
    assert first.status_code == 200 and first.headers["content-type"] == "video/mp4"
    wait_for(
        lambda: a.get(f"/ui/media/{video['id']}/status").json()["state"] == "ready", 60, "ready"
    )
    r = a.c.get(f"/ui/media/{video['id']}/play", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and len(r.content) == 100
    assert r.headers["content-range"].startswith("bytes 100-199/")
    plays = [e for e in events(st, kind="file_viewed", file_id=video["id"])]
    assert len(plays) == 1  # one viewing, however many range requests


# --- administration ------------------------------------------------------------------------


def test_administrator_deletes_with_a_reason_and_confirms_protected(st: StationProc) -> None:
    adm = as_user(st, ADMIN)
    items = adm.get("/ui/api/files", officer_no=OFFICER_B[0], limit=100).json()["items"]
    plain = next(f for f in items if not f["protected"])
    imp = next(f for f in items if f["important"])
    assert adm.post(f"/ui/api/files/{plain['id']}/delete", {}).status_code == 422
    assert adm.post(f"/ui/api/files/{plain['id']}/delete", {"reason": "duplicate test clip"}
                    ).status_code == 200  # fmt: skip
    r = adm.post(f"/ui/api/files/{imp['id']}/delete", {"reason": "wrong recorder"})
    assert r.status_code == 409  # protected: a second confirmation is needed
    assert adm.get(f"/ui/api/files/{imp['id']}").status_code == 200
    r = adm.post(
        f"/ui/api/files/{imp['id']}/delete", {"reason": "wrong recorder", "confirm_protected": True}
    )
    assert r.status_code == 200
    left = {f["id"] for f in adm.get("/ui/api/files", officer_no=OFFICER_B[0]).json()["items"]}
    assert plain["id"] not in left and imp["id"] not in left
    deleted = {e["file_id"]: e for e in events(st, kind="file_deleted", actor=ADMIN[0])}
    assert "duplicate test clip" in deleted[plain["id"]]["message"]
    assert "confirmed twice" in deleted[imp["id"]]["message"]
    # an officer may not delete, even their own
    a = as_user(st, OFFICER_A)
    fid = file_ids(st, OFFICER_A[0])[0]
    assert a.post(f"/ui/api/files/{fid}/delete", {"reason": "mine"}).status_code == 403


def test_a_legal_hold_blocks_every_deletion_and_a_grade_only_an_admin_may_lower(
    st: StationProc,
) -> None:
    adm, a = as_user(st, ADMIN), as_user(st, OFFICER_A)
    fid = file_ids(st, OFFICER_A[0])[1]
    assert adm.post(f"/ui/api/files/{fid}/annotate",
                    {"level": "evidence", "case_no": "XS-2026-1"}).status_code == 200  # fmt: skip
    # the officer may not take the protection away again, nor clear its case number
    assert a.post(f"/ui/api/files/{fid}/annotate", {"level": "normal"}).status_code == 403
    assert a.post(f"/ui/api/files/{fid}/annotate", {"level": "important"}).status_code == 403
    assert a.post(f"/ui/api/files/{fid}/annotate", {"case_no": ""}).status_code == 403
    assert a.post(f"/ui/api/files/{fid}/annotate", {"note": "seen"}).status_code == 200
    got = adm.get(f"/ui/api/files/{fid}").json()
    assert (got["level"], got["case_no"]) == ("evidence", "XS-2026-1")
    # held: not even a twice-confirmed administrator deletes it until the hold is released
    assert adm.post(f"/ui/api/files/{fid}/annotate", {"legal_hold": "XS-2026-1"}).status_code == 200
    r = adm.post(f"/ui/api/files/{fid}/delete", {"reason": "clean-up", "confirm_protected": True})
    assert r.status_code == 409 and "hold" in r.json()["detail"].lower()
    assert adm.get(f"/ui/api/files/{fid}").status_code == 200
    stored = st.query("SELECT disk, rel_path, deleted_at FROM files WHERE id = ?", fid)[0]
    assert stored[2] is None and (st.root / stored[0] / stored[1]).exists()
    # released (logged), graded back down by the administrator: then it can go
    assert adm.post(f"/ui/api/files/{fid}/annotate", {"legal_hold": ""}).status_code == 200
    assert adm.post(f"/ui/api/files/{fid}/annotate", {"level": "normal"}).status_code == 200
    assert any("legal_hold" in e["message"] for e in events(st, kind="file_annotated"))


def test_an_administrator_keeps_a_file_permanently_from_the_console(st: StationProc) -> None:
    """The 2016 categories are chosen when grading (administrator only, logged); a file in
    one is protected and refused deletion until it is taken out; the console says whether
    a central copy is kept (none here: neither the platform nor forwarding is set up)."""
    adm, b = as_user(st, ADMIN), as_user(st, OFFICER_B)
    fid = file_ids(st, OFFICER_B[0])[1]
    got = adm.get(f"/ui/api/files/{fid}").json()
    assert (got["retention_category"], got["central"]) == ("", "none")
    assert b.post(f"/ui/api/files/{fid}/annotate", {"category": "obstruction"}).status_code == 403
    r = adm.post(f"/ui/api/files/{fid}/annotate", {"category": "no_such_category"})
    assert r.status_code == 409
    r = adm.post(f"/ui/api/files/{fid}/annotate", {"category": "obstruction"})
    assert r.status_code == 200 and r.json()["retention_category"] == "obstruction"
    assert r.json()["protected"] is True
    listed = {f["id"]: f for f in b.get("/ui/api/files").json()["items"]}
    assert listed[fid]["retention_category"] == "obstruction" and listed[fid]["protected"]
    r = adm.post(f"/ui/api/files/{fid}/delete", {"reason": "clean-up", "confirm_protected": True})
    assert r.status_code == 409 and "permanently" in r.json()["detail"], r.json()
    assert any("obstruction" in e["message"] for e in events(st, kind="file_annotated"))
    assert adm.post(f"/ui/api/files/{fid}/annotate", {"category": ""}).status_code == 200
    assert adm.get(f"/ui/api/files/{fid}").json()["protected"] is False


def test_annotation_and_search_by_case_and_note(st: StationProc) -> None:
    a = as_user(st, OFFICER_A)
    fid = file_ids(st, OFFICER_A[0])[-1]
    r = a.post(f"/ui/api/files/{fid}/annotate",
               {"level": "important", "case_no": "PG-2026-7", "note": "交通事故"})  # fmt: skip
    assert r.status_code == 200 and r.json()["level"] == "important"
    assert [f["id"] for f in a.get("/ui/api/files", case_no="PG-2026").json()["items"]] == [fid]
    assert [f["id"] for f in a.get("/ui/api/files", text="事故").json()["items"]] == [fid]
    assert fid in [f["id"] for f in a.get("/ui/api/files", important=True).json()["items"]]
    assert a.post(f"/ui/api/files/{fid}/annotate", {"legal_hold": "X"}).status_code == 403


def test_registration_needs_an_administrator_pin(st: StationProc) -> None:
    b = Browser(st)
    body = {"admin_no": OFFICER_A[0], "secret": OFFICER_A[1]}
    assert b.post("/ui/api/recorders/K100001/approve", body).status_code == 403
    body = {"admin_no": ADMIN[0], "secret": "000000"}
    assert b.post("/ui/api/recorders/K100001/approve", body).status_code == 401
    body = {"admin_no": ADMIN[0], "secret": ADMIN[1]}
    assert b.post("/ui/api/recorders/NOSUCH/approve", body).status_code == 409
    assert b.post("/ui/api/recorders/K100001/approve", body).status_code == 200


def test_settings_apply_live_and_survive_a_restart(st: StationProc) -> None:
    adm = as_user(st, ADMIN)
    s = adm.get("/ui/api/settings").json()["settings"]
    assert s["registration_mode"] == "auto" and s["layout_order"] == list(range(1, 9))
    assert adm.post("/ui/api/settings", {"network_check": "nonsense"}).status_code == 400
    assert adm.post("/ui/api/settings", {"layout_order": [1, 1]}).status_code == 400
    assert adm.post("/ui/api/settings", {"bogus": 1}).status_code == 400
    r = adm.post("/ui/api/settings", {"registration_mode": "manual", "layout_cols": 2,
                                      "layout_order": [5, 1, 6, 2, 7, 3, 8, 4],
                                      "retention_days": 90})  # fmt: skip
    assert r.status_code == 200
    assert st.api("/api/v1/status")["station"]["mode"] == "manual"
    assert httpx.get(st.url("/ui/layout")).json() == {"cols": 2, "order": [5, 1, 6, 2, 7, 3, 8, 4]}
    assert events(st, kind="settings_changed")[-1]["actor"] == ADMIN[0]
    st.stop()
    st.start()
    assert st.api("/api/v1/status")["station"]["mode"] == "manual"
    adm = as_user(st, ADMIN)
    assert adm.get("/ui/api/settings").json()["settings"]["retention_days"] == 90
    adm.post("/ui/api/settings", {"registration_mode": "auto"})
    assert st.api("/api/v1/status")["station"]["mode"] == "auto"


def test_a_reloaded_configuration_file_keeps_the_touchscreen_settings(make_station: Any) -> None:
    st = make_station(registration={"mode": "auto"}, retention={"days": 30})
    catalog = Catalog(st.db)
    accounts.create_user(catalog, *ADMIN, role="administrator")
    catalog.close()
    adm = as_user(st, ADMIN)
    assert adm.post("/ui/api/settings", {"registration_mode": "manual"}).status_code == 200
    # the file changes something else and the daemon is told to reload it (SIGHUP)
    data = load_config(st.config_path).model_dump(mode="json", exclude_none=True)
    data["retention"]["days"] = 45
    st.config_path.write_text(tomli_w.dumps(data))
    # a change on the screen goes live through the reload path too: wait for the next one
    reloads = len(events(st, kind="settings_reloaded"))
    st.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(events(st, kind="settings_reloaded")) > reloads, 30, "the reload")
    assert st.api("/api/v1/status")["station"]["mode"] == "manual"  # the touchscreen's
    settings = adm.get("/ui/api/settings").json()["settings"]
    assert (settings["registration_mode"], settings["retention_days"]) == ("manual", 45)


def test_users_are_managed_by_the_security_administrator(st: StationProc) -> None:
    adm = as_user(st, SECURITY)
    r = adm.post("/ui/api/users", {"officer_no": "800050", "name": "新警员", "role": "officer",
                                   "secret": "123"})  # fmt: skip
    assert r.status_code == 409  # too short
    r = adm.post("/ui/api/users", {"officer_no": "800050", "name": "新警员", "role": "officer",
                                   "secret": "505050"})  # fmt: skip
    assert r.status_code == 200
    new = as_user(st, ("800050", "505050"))
    assert adm.post("/ui/api/users/800050", {"active": False}).status_code == 200
    assert new.get("/ui/api/files").status_code == 401  # the session ended with the account
    assert Browser(st).login(("800050", "505050")).status_code == 403
    system = as_user(st, ADMIN)  # the system administrator manages no accounts
    assert system.post(f"/ui/api/users/{ADMIN[0]}", {"active": False}).status_code == 403
    r = adm.post(f"/ui/api/users/{ADMIN[0]}", {"active": False})
    assert r.status_code == 409  # the last administrator stays
    r = adm.post(f"/ui/api/users/{SECURITY[0]}", {"active": False})
    assert r.status_code == 409  # and the last security administrator
    r = adm.post(f"/ui/api/users/{SECURITY[0]}", {"role": "administrator"})
    assert r.status_code == 403  # nobody takes another duty for themselves


def test_an_expired_secret_must_be_changed_before_anything_else(st: StationProc) -> None:
    """The policy's periodic change (90 days for the administrators' roles by default):
    logged in, the account may only change its secret, and not back to a recent one."""
    who = ("600009", "864209")
    con = Catalog(st.db)
    accounts.create_user(con, who[0], who[1], role="audit_admin")
    con.close()
    st.query(
        "UPDATE users SET password_changed_at = '2020-01-01 00:00:00.000000' WHERE officer_no = ?",
        who[0],
    )
    b = Browser(st)
    r = b.login(who)
    assert r.status_code == 200 and r.json()["user"]["must_change"] is True
    assert b.get("/ui/api/log").status_code == 403
    assert b.post("/ui/api/password", {"current": who[1], "new": who[1]}).status_code == 400
    assert b.post("/ui/api/password", {"current": who[1], "new": "100200300"}).status_code == 200
    b = Browser(st)
    assert b.login((who[0], "100200300")).json()["user"]["must_change"] is False
    assert b.get("/ui/api/log").status_code == 200


# GB/T 22239 separation of duties: what each role gets from every console route (200/OK,
# 403 refused; 404 for an officer's view of a file that is not theirs is tested above)
ROLE_ROUTES = [
    ("GET", "/ui/api/files"), ("GET", "/ui/api/files/{fid}"), ("GET", "/ui/media/{fid}/download"),
    ("GET", "/ui/media/{fid}/status"), ("POST", "/ui/api/files/{fid}/annotate"),
    ("GET", "/ui/api/log"), ("GET", "/ui/api/users"), ("GET", "/ui/api/settings"),
    ("POST", "/ui/api/files/{fid}/delete"),
]  # fmt: skip
ALLOWED = {
    "officer": {"/ui/api/files", "/ui/api/files/{fid}", "/ui/media/{fid}/download",
                "/ui/media/{fid}/status", "/ui/api/files/{fid}/annotate"},
    "administrator": {"/ui/api/files", "/ui/api/files/{fid}", "/ui/media/{fid}/download",
                      "/ui/media/{fid}/status", "/ui/api/files/{fid}/annotate",
                      "/ui/api/log", "/ui/api/settings", "/ui/api/files/{fid}/delete"},
    "auditor": {"/ui/api/files", "/ui/api/files/{fid}", "/ui/media/{fid}/download",
                "/ui/media/{fid}/status", "/ui/api/log"},
    "security_admin": {"/ui/api/log", "/ui/api/users"},
    "audit_admin": {"/ui/api/log"},
}  # fmt: skip


@pytest.mark.parametrize("role", list(ALLOWED))
def test_each_role_reaches_only_its_own_duties(st: StationProc, role: str) -> None:
    who = {"officer": OFFICER_A, "administrator": ADMIN, "auditor": AUDITOR,
           "security_admin": SECURITY, "audit_admin": AUDIT}[role]  # fmt: skip
    b = as_user(st, who)
    fid = file_ids(st, OFFICER_A[0])[0]
    for method, route in ROLE_ROUTES:
        # a deletion is asked for a file that does not exist: 404 when the role may delete
        path = route.format(fid=10**9 if route.endswith("/delete") else fid)
        if method == "GET":
            r = b.get(path)
        else:
            r = b.post(path, {"reason": "role test"} if "delete" in route else {"note": role})
        # allowed: anything but a refusal (a photo's /status is 415); refused: 403
        refused = r.status_code in (401, 403)
        assert refused != (route in ALLOWED[role]) and r.status_code != 401, (
            method,
            path,
            r.status_code,
            r.text[:200],
        )
        assert not refused or r.status_code == 403


def test_pages_and_translations(st: StationProc) -> None:
    for path in ("/", "/ui/console"):
        r = httpx.get(st.url(path))
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert "script-src 'self'" in r.headers["content-security-policy"]
    zh = httpx.get(st.url("/ui/i18n/zh-CN.json")).json()
    assert zh["lang"] == "zh-CN" and zh["messages"]["Register"] == "注册"
    assert httpx.get(st.url("/ui/state")).json()["slots"][0]["port"] == 1


def test_a_zip_of_hostile_names_extracts_strictly_and_checks(make_station, tmp_path) -> None:
    import io
    import os
    import subprocess
    import unicodedata
    import zipfile

    st = make_station()
    rec = st.build(RecorderSpec(serial="Z000001", officer_no="860001", files=0, imp=0))
    hostile = [b"..\\..\\evil.AVI", b"line\r\nbreak.JPG", b"evil\xe2\x80\xaeIVA.exe",
               b"../../x.AVI", b"\x1b[31mred.WAV", b"same.AVI"]  # fmt: skip
    folder = os.path.join(os.fsencode(rec / "card"), b"DCIM", b"100ANDRO")
    os.makedirs(folder)
    for i, n in enumerate(hostile):
        with open(os.path.join(folder, n.replace(b"/", b"_")), "wb") as f:
            f.write(b"hostile %d" % i)
    st.dock(1, rec)
    st.wait_state(1, "complete")
    catalog = Catalog(st.db)
    accounts.create_user(catalog, *ADMIN, role="administrator")
    catalog.close()
    admin = as_user(st, ADMIN)
    ids = [f["id"] for f in admin.get("/ui/api/files", limit=100).json()["items"]]
    url = admin.post("/ui/media/zip", {"ids": ids}).json()["url"]
    archive = zipfile.ZipFile(io.BytesIO(admin.get(url).content))
    out = tmp_path / "out"
    for member in archive.namelist():  # a strict extractor: plain relative paths only
        parts = member.split("/")
        assert not member.startswith("/") and "\\" not in member, member
        assert all(p not in ("", ".", "..") for p in parts), member
        bad = [c for c in member if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
        assert not bad, (member, bad)
        target = out / member
        assert target.resolve().is_relative_to(out.resolve())
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read(member))
    assert len(archive.namelist()) == len(ids) + 2  # the files and the two manifests
    check = subprocess.run(["sha256sum", "--strict", "-c", "MANIFEST.sha256"], cwd=out,
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == len(ids)


def test_ids_past_64_bits_are_refused_not_a_server_error(st: StationProc) -> None:
    admin = as_user(st, ADMIN)
    huge = 2**63
    for path in (f"/ui/api/files/{huge}", f"/ui/media/{huge}/download",
                 f"/ui/media/{huge}/view", f"/ui/media/{huge}/status"):  # fmt: skip
        assert admin.get(path).status_code == 422, path
    assert admin.post(f"/ui/api/files/{huge}/annotate", {"note": "x"}).status_code == 422
    assert admin.post("/ui/media/zip", {"ids": [huge]}).status_code == 422
    assert admin.get(f"/ui/api/files/{huge - 1}").status_code == 404  # the largest id: none


# --- thumbnails and lengths, the screen's alarm acknowledgement -------------------------------


def test_thumbnails_and_lengths_are_made_once_in_the_background_for_the_viewer_only(
    st: StationProc,
) -> None:
    a = as_user(st, OFFICER_A)
    files = a.get("/ui/api/files", limit=100).json()["items"]
    video = next(f for f in files if f["kind"] == "video")
    ids = ",".join(str(f["id"]) for f in files)

    def ready() -> dict[str, Any] | None:
        items = a.get("/ui/api/files/media", ids=ids).json()["items"]
        return None if any(i.get("pending") for i in items.values()) else items

    items = wait_for(ready, 60, "thumbnails made")
    assert set(items) == {str(f["id"]) for f in files}
    assert items[str(video["id"])]["thumbnail"] is True
    assert items[str(video["id"])]["duration_s"] > 0
    log = next(f for f in files if f["kind"] == "log")
    assert items[str(log["id"])] == {"thumbnail": False, "duration_s": None}
    r = a.get(f"/ui/api/files/{video['id']}/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content[:2] == b"\xff\xd8"  # a JPEG
    seen = [e for e in events(st, kind="file_viewed", file_id=video["id"], actor=OFFICER_A[0])]
    assert any("thumbnail" in e["message"] for e in seen)
    # another officer's file: not there, as for a missing one
    b = as_user(st, OFFICER_B)
    assert b.get(f"/ui/api/files/{video['id']}/thumbnail").status_code == 404
    assert b.get("/ui/api/files/media", ids=str(video["id"])).json()["items"] == {}


def test_an_alarm_is_acknowledged_on_the_screen_with_an_administrators_pin(
    st: StationProc,
) -> None:
    from station.health.alarms import AlarmBook

    catalog = Catalog(st.db)
    book = AlarmBook(catalog)
    book.raise_("forward_failing", "test alarm", "ack-test")
    try:
        alarm = wait_for(
            lambda: next((a for a in st.api("/ui/state")["alarms"] if a["message"] == "test alarm"),
                         None), 30, "the alarm on the screen")  # fmt: skip
        assert alarm["acked"] is False and alarm["severity"] == "warning"
        kiosk = Browser(st)  # no login: the screen
        path = f"/ui/api/alarms/{alarm['id']}/ack"
        assert (
            kiosk.post(path, {"admin_no": OFFICER_A[0], "secret": OFFICER_A[1]}).status_code == 403
        )
        assert kiosk.post(path, {"admin_no": ADMIN[0], "secret": "000000"}).status_code == 401
        r = kiosk.post(path, {"admin_no": ADMIN[0], "secret": ADMIN[1]})
        assert r.status_code == 200, r.text
        row = st.query("SELECT acked_by, cleared_at FROM alarms WHERE id = ?", alarm["id"])[0]
        assert row == (ADMIN[0], None)  # seen, and still raised until its cause is gone
        assert any(e["kind"] == "alarm_acknowledged" for e in events(st, actor=ADMIN[0]))
    finally:
        book.clear("forward_failing", "ack-test")
        catalog.close()
    assert kiosk.post(path, {"admin_no": ADMIN[0], "secret": ADMIN[1]}).status_code == 404
