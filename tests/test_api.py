"""The HTTP API of a real daemon, over real HTTP (CONTRACT.md, "HTTP API")."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TOKEN, StationProc, free_port, wait_for, write_config

from station.sim.recorder import RecorderSpec

SLOT_KEYS = {
    "port",
    "state",
    "recorder",
    "battery_percent",
    "files_total",
    "files_done",
    "bytes_total",
    "bytes_done",
    "error",
}
FILE_KEYS = {
    "id",
    "officer_no",
    "serial",
    "name",
    "stored_path",
    "size",
    "sha256",
    "recorded_at",
    "collected_at",
    "important",
    "level",
}
STATES = {"empty", "identifying", "unregistered", "collecting", "complete", "error"}


class Collected:
    """A station that has collected two recorders of two officers, both undocked again."""

    def __init__(self, st: StationProc, docked_status: dict[str, Any]) -> None:
        self.st = st
        self.docked_status = docked_status  # /api/v1/status while both were docked


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collected]:
    root = tmp_path_factory.mktemp("api") / "station"
    for d in ("disk1", "disk2", "bus"):
        (root / d).mkdir(parents=True)
    port = free_port()
    st = StationProc(root, write_config(root, port), port)
    try:
        st.start()
        specs = [
            (2, RecorderSpec(serial="K000001", officer_no="800001", officer_name="王五",
                             unit_name="一所", files=3, imp=1, size_mb=0.2, battery_percent=55)),
            (6, RecorderSpec(serial="K000002", officer_no="800002", files=2, imp=1,
                             size_mb=0.2)),
        ]  # fmt: skip
        for p, spec in specs:
            st.dock(p, st.build(spec, seed=p))
        for p, _ in specs:
            st.wait_state(p, "complete")
        docked = st.api("/api/v1/status")
        for p, _ in specs:
            st.undock(p)
        for p, _ in specs:
            wait_for(lambda p=p: st.slot(p)["state"] == "empty", 60, f"port {p} to empty")
        yield Collected(st, docked)
    finally:
        st.stop()


def _get(st: StationProc, path: str, headers: dict[str, str] | None = None, **params: Any):
    return httpx.get(st.url(path), params=params, headers=headers or {}, timeout=30)


def _files(st: StationProc, **params: Any) -> dict[str, Any]:
    return st.api("/api/v1/files", **params)


# --- authentication ---------------------------------------------------------------------------


def test_health_needs_no_token(collected: Collected) -> None:
    r = _get(collected.st, "/api/v1/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


BAD_AUTH = {
    "none": {},
    "wrong token": {"Authorization": "Bearer wrong-token-0123456789abcdef"},
    "token prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "token plus": {"Authorization": f"Bearer {TOKEN}x"},
    "no scheme": {"Authorization": TOKEN},
    "basic": {"Authorization": f"Basic {TOKEN}"},
    "bearer only": {"Authorization": "Bearer"},
    "other scheme": {"Authorization": f"Token {TOKEN}"},
    "token in wrong header": {"X-Api-Token": TOKEN},
    "two tokens": {"Authorization": f"Bearer {TOKEN} {TOKEN}"},
}


@pytest.mark.parametrize("path", ["/api/v1/status", "/api/v1/files"])
@pytest.mark.parametrize("headers", BAD_AUTH.values(), ids=BAD_AUTH.keys())
def test_api_refuses_without_a_valid_token(
    collected: Collected, path: str, headers: dict[str, str]
) -> None:
    r = _get(collected.st, path, headers)
    assert r.status_code == 401, r.text
    assert "Bearer" in r.headers.get("www-authenticate", "")
    assert "slots" not in r.text and "items" not in r.text


def test_api_accepts_the_token(collected: Collected) -> None:
    for path in ("/api/v1/status", "/api/v1/files"):
        r = _get(collected.st, path, {"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
        # the scheme is case-insensitive (RFC 7235)
        r = _get(collected.st, path, {"Authorization": f"bearer {TOKEN}"})
        assert r.status_code == 200


# --- status -------------------------------------------------------------------------------------


def _check_status_shape(s: dict[str, Any], st: StationProc) -> None:
    assert {"station", "network", "disks", "slots", "alarms"} <= set(s)
    station = s["station"]
    assert {"id", "name", "version", "time", "mode"} <= set(station)
    assert station["id"] == "TEST-0001"
    assert station["name"] == "Test station"
    assert station["mode"] == "auto"
    assert isinstance(station["version"], str) and station["version"]
    t = dt.datetime.fromisoformat(station["time"])
    assert t.tzinfo is not None
    assert abs(t - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    assert "online" in s["network"]
    assert s["network"]["online"] in (True, False, None)

    assert [d["path"] for d in s["disks"]] == [str(p) for p in st.disks]
    for d in s["disks"]:
        assert {"path", "total_bytes", "free_bytes", "active", "health"} <= set(d)
        assert isinstance(d["total_bytes"], int) and isinstance(d["free_bytes"], int)
        assert 0 < d["free_bytes"] <= d["total_bytes"]
        assert d["health"] == "healthy"
    assert [d["active"] for d in s["disks"]].count(True) == 1

    assert len(s["slots"]) == 8
    assert [slot["port"] for slot in s["slots"]] == list(range(1, 9))
    for slot in s["slots"]:
        assert set(slot) >= SLOT_KEYS
        assert slot["state"] in STATES
        for k in ("files_total", "files_done", "bytes_total", "bytes_done"):
            assert isinstance(slot[k], int)

    for a in s["alarms"]:
        assert {"code", "severity", "message", "since"} <= set(a)


def test_status_shape_when_empty(collected: Collected) -> None:
    s = collected.st.api("/api/v1/status")
    _check_status_shape(s, collected.st)
    for slot in s["slots"]:
        assert slot["state"] == "empty"
        assert slot["recorder"] is None
        assert slot["error"] is None


def test_status_shape_with_recorders_docked(collected: Collected) -> None:
    s = collected.docked_status
    _check_status_shape(s, collected.st)
    by_port = {slot["port"]: slot for slot in s["slots"]}
    two = by_port[2]
    assert two["state"] == "complete"
    assert {"serial", "officer_no", "officer_name", "unit_name"} <= set(two["recorder"])
    assert two["recorder"]["serial"] == "K000001"
    assert two["recorder"]["officer_no"] == "800001"
    assert two["recorder"]["officer_name"] == "王五"
    assert two["recorder"]["unit_name"] == "一所"
    assert two["battery_percent"] == 55
    assert two["files_done"] == two["files_total"] > 0
    assert two["bytes_done"] == two["bytes_total"] > 0
    assert by_port[6]["recorder"]["serial"] == "K000002"
    for p in (1, 3, 4, 5, 7, 8):
        assert by_port[p]["state"] == "empty"
        assert by_port[p]["recorder"] is None


# --- files --------------------------------------------------------------------------------------


def test_files_items_shape(collected: Collected) -> None:
    data = _files(collected.st)
    assert set(data) >= {"total", "items"}
    assert data["total"] == len(data["items"]) > 0
    disks = [str(p) for p in collected.st.disks]
    for f in data["items"]:
        assert set(f) >= FILE_KEYS
        stored = Path(f["stored_path"])
        assert stored.is_absolute()
        assert stored.is_file() and stored.stat().st_size == f["size"]
        assert any(f["stored_path"].startswith(d + "/") for d in disks)
        assert len(f["sha256"]) == 64
        assert dt.datetime.fromisoformat(f["collected_at"]).tzinfo is not None
        assert f["level"] == ("important" if f["important"] else "normal")


def test_files_filter_by_officer_and_serial(collected: Collected) -> None:
    st = collected.st
    everything = _files(st)
    one = _files(st, officer_no="800001")
    two = _files(st, officer_no="800002")
    assert one["total"] > 0 and two["total"] > 0
    assert one["total"] + two["total"] == everything["total"]
    assert {f["officer_no"] for f in one["items"]} == {"800001"}
    assert {f["serial"] for f in one["items"]} == {"K000001"}
    assert {f["officer_no"] for f in two["items"]} == {"800002"}
    assert _files(st, serial="K000002")["items"] == two["items"]
    assert _files(st, serial="K000001", officer_no="800002")["total"] == 0
    assert _files(st, officer_no="999999") == {"total": 0, "items": []}
    assert _files(st, officer_no="")["total"] == everything["total"]  # empty = no filter


def test_files_filter_important(collected: Collected) -> None:
    st = collected.st
    total = _files(st)["total"]
    imp = _files(st, important="true")
    normal = _files(st, important="false")
    assert imp["total"] >= 2  # one IMP file on each recorder
    assert all(f["important"] for f in imp["items"])
    assert not any(f["important"] for f in normal["items"])
    assert imp["total"] + normal["total"] == total
    assert {f["serial"] for f in imp["items"]} == {"K000001", "K000002"}
    assert all("IMP" in f["name"] for f in imp["items"])


def test_files_since_until(collected: Collected) -> None:
    st = collected.st
    items = _files(st)["items"]
    total = len(items)
    times = sorted(dt.datetime.fromisoformat(f["collected_at"]) for f in items)
    pivot = times[len(times) // 2]
    iso = pivot.isoformat()
    later = _files(st, since=iso)
    earlier = _files(st, until=iso)
    assert later["total"] + earlier["total"] == total
    assert all(dt.datetime.fromisoformat(f["collected_at"]) >= pivot for f in later["items"])
    assert all(dt.datetime.fromisoformat(f["collected_at"]) < pivot for f in earlier["items"])
    assert later["total"] >= 1
    # the same instant in another zone selects the same files
    utc = pivot.astimezone(dt.UTC).isoformat()
    assert _files(st, since=utc)["total"] == later["total"]
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
    assert _files(st, since=future)["total"] == 0
    assert _files(st, since=past)["total"] == total
    assert _files(st, until=past)["total"] == 0
    assert _files(st, since=past, until=future)["total"] == total


def test_files_pagination(collected: Collected) -> None:
    st = collected.st
    everything = _files(st)
    total = everything["total"]
    assert total >= 4
    # newest first
    times = [dt.datetime.fromisoformat(f["collected_at"]) for f in everything["items"]]
    assert times == sorted(times, reverse=True)
    pages = []
    for offset in range(0, total + 2, 2):
        page = _files(st, limit=2, offset=offset)
        assert page["total"] == total  # total ignores the page
        assert len(page["items"]) == max(0, min(2, total - offset))
        pages.extend(page["items"])
    assert [f["id"] for f in pages] == [f["id"] for f in everything["items"]]
    assert len({f["id"] for f in pages}) == total
    one = _files(st, limit=1, offset=1, officer_no="800001")
    assert one["total"] == _files(st, officer_no="800001")["total"]
    assert len(one["items"]) == 1


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 1001}, {"offset": -1}, {"important": "maybe"}, {"since": "yesterday"}],
    ids=str,
)
def test_files_bad_parameters_are_422(collected: Collected, params: dict[str, Any]) -> None:
    r = _get(collected.st, "/api/v1/files", {"Authorization": f"Bearer {TOKEN}"}, **params)
    assert r.status_code == 422, r.text


# --- the touchscreen ------------------------------------------------------------------------


def test_touchscreen_page_is_html(collected: Collected) -> None:
    r = _get(collected.st, "/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<html" in r.text.lower()


def test_ui_state_serves_only_what_the_screen_shows(collected: Collected) -> None:
    r = _get(collected.st, "/ui/state")  # no token: the touchscreen is shown without login
    assert r.status_code == 200
    ui = r.json()
    api = collected.st.api("/api/v1/status")
    assert set(ui) == {"station", "network", "disks", "alarms", "slots"}  # no log, clock...
    assert "/" not in json.dumps(ui["disks"]) and all("smart" not in d for d in ui["disks"])
    assert [s["recorder"] for s in ui["slots"]] == [
        s["recorder"] and {k: s["recorder"][k] for k in ("serial", "officer_no",
                                                         "officer_name", "unit_name")}
        for s in api["slots"]
    ]  # fmt: skip
    assert ui["station"]["id"] == api["station"]["id"]
    assert [s["state"] for s in ui["slots"]] == [s["state"] for s in api["slots"]]


def test_ui_stream_sends_a_status_event(collected: Collected) -> None:
    timeout = httpx.Timeout(30.0, read=30.0)
    event = data = None
    with (
        httpx.Client(timeout=timeout) as client,
        client.stream("GET", collected.st.url("/ui/stream")) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "status":
                data = json.loads(line.split(":", 1)[1])
                break
    assert event == "status"
    assert data is not None
    assert data["station"]["id"] == "TEST-0001"
    assert len(data["slots"]) == 8
