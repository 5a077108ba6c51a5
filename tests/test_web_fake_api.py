"""The web layer on a fake `StationAPI`, in this process: no Station, no catalog.

The routes answer from whatever front door `create_app` is given, and a station
refusal (`station.errors`) becomes its HTTP answer by its kind.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from station.api import WebSection
from station.errors import PortNotCollecting
from station.web.app import create_app

TOKEN = "fake-token-0123456789abcdef"
STATUS: dict[str, Any] = {
    "station": {"id": "FAKE-1", "name": "Fake", "version": "0", "time": "t", "mode": "auto"},
    "network": {"online": True},
    "log": {},
    "clock": {},
    "disks": [{"path": "/secret/disk", "total_bytes": 10, "free_bytes": 4, "active": True,
               "health": "healthy", "smart": None}],
    "slots": [{"port": 1, "state": "error", "recorder": None, "error": "recorder gone",
               "files_total": 0, "files_done": 0, "bytes_total": 0, "bytes_done": 0,
               "bytes_per_s": 0, "battery_percent": None, "priority": False,
               "removed_early": None, "expected_finish": None, "expected_s": None}],
    "alarms": [],
}  # fmt: skip


class FakeAPI:
    """The few methods of `StationAPI` the routes under test use, answering canned data
    and noting what they were asked."""

    station_id = "FAKE-1"

    def __init__(self) -> None:
        self.asked: list[tuple[str, Any]] = []

    def web_limits(self) -> WebSection:
        return WebSection()

    def audit(self, kind: str, message: str, **fields: Any) -> None:
        self.asked.append(("audit", (kind, fields.get("path"), fields.get("status"))))

    def token_ok(self, given: bytes) -> bool:
        return given == TOKEN.encode()

    def cached_status_json(self) -> bytes | None:
        return None

    def status_json(self) -> bytes:
        self.asked.append(("status_json", None))
        return json.dumps(STATUS).encode()

    def status(self) -> dict[str, Any]:
        return STATUS

    def files(self, **filters: Any) -> dict[str, Any]:
        self.asked.append(("files", filters))
        item = {
            "id": 7, "officer_no": filters["officer_no"] or "000001", "serial": "K1",
            "name": "a.mp4", "card_path": "DCIM/a.mp4", "stored_path": "/d/a.mp4", "size": 3,
            "sha256": "0" * 64, "recorded_at": None,
            "collected_at": "2026-12-03T10:00:00+08:00", "important": False,
            "level": "normal", "sm3": None, "central": None, "retention_category": None,
        }  # fmt: skip
        return {"total": 1, "items": [item]}

    def set_priority(self, port: int, by: str) -> None:
        self.asked.append(("set_priority", (port, by)))
        raise PortNotCollecting(f"port {port} is not collecting")


@pytest.fixture
def fake() -> FakeAPI:
    return FakeAPI()


@pytest.fixture
def client(fake: FakeAPI) -> TestClient:
    return TestClient(create_app(fake), base_url="http://127.0.0.1")  # type: ignore[arg-type]


def test_the_central_api_answers_from_the_given_front_door(
    client: TestClient, fake: FakeAPI
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/v1/health").json() == {"status": "ok", "station": "FAKE-1"}
    assert client.get("/api/v1/status").status_code == 401  # the fake's tokens decide
    assert client.get("/api/v1/status", headers={"Authorization": "Bearer no"}).status_code == 401
    refused = ("audit", ("access_refused", "/api/v1/status", 401))
    assert fake.asked.count(refused) == 2  # each refusal is in the log, through the front door
    r = client.get("/api/v1/status", headers=auth)
    assert r.status_code == 200 and r.json()["station"]["id"] == "FAKE-1"
    r = client.get("/api/v1/files", params={"officer_no": "800001", "limit": 5}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["officer_no"] == "800001"
    asked = {"officer_no": "800001", "serial": None, "important": None,
             "since": None, "until": None, "limit": 5, "offset": 0}  # fmt: skip
    assert ("files", asked) in fake.asked
    assert client.get("/api/v1/files", params={"limit": 0}, headers=auth).status_code == 422


def test_the_screen_shows_only_what_the_screen_shows(client: TestClient) -> None:
    state = client.get("/ui/state").json()
    assert state["station"]["id"] == "FAKE-1"
    assert "path" not in state["disks"][0]  # no disk paths for an anonymous viewer
    assert state["slots"][0]["reason"] == "recorder_error"


def test_a_station_refusal_is_answered_by_its_kind(client: TestClient, fake: FakeAPI) -> None:
    csrf = client.get("/ui/api/session").json()["csrf"]
    r = client.post("/ui/api/ports/3/priority", headers={"X-CSRF-Token": csrf})
    assert ("set_priority", (3, "kiosk")) in fake.asked
    assert r.status_code == PortNotCollecting.http_status == 409
    assert r.json() == {"detail": "This port is not collecting"}


def test_every_error_kind_has_a_code_and_a_message_of_its_own() -> None:
    """Each `StationError` kind has a unique code that the web layer words (no kind falls
    through to a generic answer unnoticed), and a 4xx status."""
    from station import errors
    from station.web.refusals import MESSAGES

    kinds: list[type[errors.StationError]] = []
    todo = [errors.StationError]
    while todo:
        k = todo.pop()
        kinds += k.__subclasses__()
        todo += k.__subclasses__()
    codes = [
        k.code for k in kinds if "code" in vars(k)
    ]  # (retention's DeletionRefused: its base's)
    assert len(codes) == len(set(codes)), codes
    assert not [c for c in codes if c not in MESSAGES], "a kind without its message"
    assert all(400 <= k.http_status < 500 for k in kinds)


def test_the_domain_raises_the_kinds() -> None:
    """The refusals the web answers by kind are raised as those kinds by the domain."""
    from station import accounts
    from station.errors import DeletionError, SecretTooShort
    from station.ingest import registration
    from station.retention import annotations
    from station.retention import sweeper as retention

    with pytest.raises(SecretTooShort):
        accounts.check_secret_policy("1")
    assert issubclass(annotations.ProtectionError, annotations.AnnotationError)
    assert registration.RegistrationError.http_status == 409
    assert issubclass(retention.DeletionRefused, DeletionError)
