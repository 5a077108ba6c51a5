"""The OpenAPI document of the central server's API: complete, and true to the running daemon.

`/api/v1/openapi.json` is what the central server's developers code against, so every
`/api/v1` operation must be in it with the status codes it really answers and a response
schema that says what the JSON holds (station/web/schemas.py). schemathesis checks the live daemon
against it with a bounded number of generated requests per operation, and the station's
own data is checked to hold no key the document leaves out (a response model would drop it
without a word).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import TOKEN, StationProc, free_port, wait_for, write_config
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from station.sim.recorder import RecorderSpec
from station.web.schemas import INT64_MAX, INT64_MIN

AUTH = {"Authorization": f"Bearer {TOKEN}"}

# The central server's API as README.md ("HTTP API") and CONTRACT.md describe it.
API_OPERATIONS = [
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/files"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/alarms"),
    ("POST", "/api/v1/alarms/{alarm_id}/ack"),
    ("GET", "/api/v1/recorders"),
    ("GET", "/api/v1/disks"),
    ("GET", "/api/v1/retention/upcoming"),
]
AUTHENTICATED = [op for op in API_OPERATIONS if op[1] != "/api/v1/health"]
ACK = ("POST", "/api/v1/alarms/{alarm_id}/ack")
EVENTS = ("GET", "/api/v1/events")
FILES = ("GET", "/api/v1/files")
WITH_PARAMETERS = [FILES, EVENTS, ("GET", "/api/v1/alarms"), ACK]

# Every generated request is a real HTTP request to the daemon: a few per operation, no
# shrinking (a failure is reported with its first example), the same examples every run.
BOUNDED = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def op_id(op: tuple[str, str]) -> str:
    return f"{op[0]} {op[1]}"


def params(ops: list[tuple[str, str]]) -> list[Any]:
    return [pytest.param(op, id=op_id(op)) for op in ops]


# --- the daemon ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StationProc]:
    """The `station` fixture's daemon, once for the module, with one recorder collected.

    Started like tests/conftest.py's `make_station` does, but module-scoped so the whole
    module pays for one start-up; the collected recorder gives the generated requests
    real files, events, recorders and a `complete` slot to read, and a central server
    nobody answers for raises `network_down`, an alarm to read and acknowledge.
    """
    root = tmp_path_factory.mktemp("openapi")
    for d in ("disk1", "disk2", "bus"):
        (root / d).mkdir()
    port = free_port()
    unreachable = {"check": f"127.0.0.1:{free_port()}"}
    st = StationProc(root, write_config(root, port, network=unreachable), port)
    st.start()
    try:
        spec = RecorderSpec(serial="OA00001", officer_no="200001", files=3, imp=1, size_mb=0.2)
        st.dock(1, st.build(spec))
        st.wait_state(1, "complete")
        yield st
    finally:
        st.stop()


@pytest.fixture(scope="module")
def document(api_station: StationProc) -> dict[str, Any]:
    r = httpx.get(api_station.url("/api/v1/openapi.json"), timeout=30)
    r.raise_for_status()
    return r.json()


@pytest.fixture(scope="module")
def schema(api_station: StationProc) -> Any:
    schema = schemathesis.openapi.from_url(api_station.url("/api/v1/openapi.json"))
    # Every generated request carries the token (the unauthenticated answers have tests of
    # their own), and an unknown query parameter is not an error: FastAPI ignores it, as
    # HTTP APIs do.
    schema.config.generation.update(with_security_parameters=False, allow_extra_parameters=False)
    return schema


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = document
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def operation(document: dict[str, Any], op: tuple[str, str]) -> dict[str, Any]:
    method, path = op
    assert path in document["paths"], f"{path} is not in the OpenAPI document"
    ops = document["paths"][path]
    assert method.lower() in ops, f"{method} {path} is not in the OpenAPI document"
    return ops[method.lower()]


# --- the document is complete --------------------------------------------------------------


def app_routes(routes: list[Any], prefix: str = "", hidden: bool = False) -> Iterator[Any]:
    """(path, methods, in schema, route) of every API route, inside included routers too.

    FastAPI >= 0.16x keeps an included router as one `_IncludedRouter` entry of
    `app.routes` instead of copying its routes in; older versions copy them.
    """
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            ctx = r.include_context
            yield from app_routes(
                inner.routes, prefix + ctx.prefix, hidden or not ctx.include_in_schema
            )
        elif isinstance(r, APIRoute):
            yield prefix + r.path, r.methods, r.include_in_schema and not hidden, r


@pytest.fixture(scope="module")
def local_station(api_station: StationProc) -> Iterator[Any]:
    """A `Station` in this process on the daemon's configuration and catalog (not running:
    for its routes and for the data its API methods build)."""
    from station.config import load_config
    from station.runtime import Station

    station = Station(load_config(api_station.config_path))
    try:
        yield station
    finally:
        station.catalog.close()
        station._executor.shutdown(wait=False)


@pytest.fixture(scope="module")
def front(local_station: Any) -> Any:
    """The `StationAPI` of that station: what the web layer is built on."""
    from station.api import StationAPI

    return StationAPI(local_station)


@pytest.fixture(scope="module")
def app(front: Any) -> Any:
    """The daemon's ASGI app (API and browser UI on one listener, as the tests run it)."""
    from station.web.app import create_app

    return create_app(front)


def test_every_route_is_in_the_document(app: Any, document: dict[str, Any]) -> None:
    """Each route the app serves in its schema is documented, with a summary; /api/ is
    never hidden; the /api/v1 operations are exactly the ones README.md lists."""
    documented = {
        (m.upper(), p) for p, ops in document["paths"].items() for m in ops if m != "parameters"
    }
    routes = list(app_routes(app.routes))
    assert routes, "no routes found in the app"
    for path, methods, in_schema, _route in routes:
        if path.startswith("/api/"):
            assert in_schema, f"{path} is an API route hidden from the OpenAPI document"
        if not in_schema:
            continue
        for m in methods - {"HEAD", "OPTIONS"}:
            assert (m, path) in documented, f"{m} {path} is served but not documented"
            op = document["paths"][path][m.lower()]
            assert op.get("summary"), f"{m} {path} has no summary"
            assert "200" in op["responses"], f"{m} {path} documents no 200 response"
    api = sorted(op for op in documented if op[1].startswith("/api/"))
    assert api == sorted(API_OPERATIONS)


@pytest.mark.parametrize("op", params(API_OPERATIONS))
def test_json_response_has_a_schema(document: dict[str, Any], op: tuple[str, str]) -> None:
    """The 200 JSON body is described field by field, not as 'any' (`{}` or a free object)."""
    ok = operation(document, op)["responses"]["200"]
    content = ok.get("content", {})
    assert "application/json" in content, f"{op_id(op)}: no application/json response"
    body = resolve(document, content["application/json"].get("schema", {}))
    assert body.get("type") == "object" and body.get("properties"), (
        f"{op_id(op)}: the response schema is {body}, which allows anything"
    )
    assert body.get("additionalProperties") is not True, f"{op_id(op)}: a free-form object"
    required = set(body.get("required", []))
    assert required, f"{op_id(op)}: no field of the response is required"
    if op == EVENTS:
        assert "text/csv" in content, "GET /api/v1/events?format=csv answers text/csv"


def test_the_document_is_the_central_api(front: Any, document: dict[str, Any]) -> None:
    """Only the /api/v1 operations: the browser's routes (cookies and CSRF, not the central
    server's contract) stay out, so the document is the same whether the API has a
    listener of its own or shares the UI's."""
    from station.web.app import create_app

    assert all(p.startswith("/api/v1/") for p in document["paths"]), sorted(document["paths"])
    api_only = create_app(front, api=True, ui=False).openapi()
    assert api_only == document


@pytest.mark.parametrize("op", params(AUTHENTICATED))
def test_error_answers_are_documented(document: dict[str, Any], op: tuple[str, str]) -> None:
    """401 (no or a wrong token) and, for the acknowledgement, 404 are in the document."""
    responses = operation(document, op)["responses"]
    assert "401" in responses, f"{op_id(op)}: the 401 without a valid token is undocumented"
    body = resolve(document, responses["401"]["content"]["application/json"]["schema"])
    assert body.get("required") == ["detail"], body
    if op == ACK:
        assert "404" in responses, "the 404 for an unknown alarm is undocumented"


def test_integer_parameters_are_bounded(document: dict[str, Any]) -> None:
    """Every integer parameter within SQLite's INTEGER (signed 64 bits): a larger one is a
    422, not an OverflowError in the database driver (a 500)."""
    seen = []
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            for p in op.get("parameters", []):
                for s in p["schema"].get("anyOf", [p["schema"]]):
                    if s.get("type") == "integer":
                        seen.append(f"{method.upper()} {path} {p['name']}")
                        assert s.get("minimum", INT64_MIN - 1) >= INT64_MIN, seen[-1]
                        assert s.get("maximum", INT64_MAX + 1) <= INT64_MAX, seen[-1]
    assert len(seen) >= 5, seen  # files limit and offset, events after, file_id and limit


# --- no key the station sends is left out of the document ----------------------------------


def undocumented(
    document: dict[str, Any], schema: dict[str, Any], value: Any, where: str = ""
) -> list[str]:
    """The keys of `value` (JSON data) that `schema` does not name, wherever they are: a
    response model drops such a key silently, and a client cannot know it is there."""
    schema = resolve(document, schema)
    if "anyOf" in schema:
        kind = {dict: "object", list: "array", type(None): "null"}.get(type(value))
        branches = [b for b in schema["anyOf"] if resolve(document, b).get("type") == kind]
        return undocumented(document, branches[0], value, where) if branches else []
    if isinstance(value, dict) and "properties" in schema:
        found = [f"{where}.{k}" for k in value if k not in schema["properties"]]
        for k, v in value.items():
            if k in schema["properties"]:
                found += undocumented(document, schema["properties"][k], v, f"{where}.{k}")
        return found
    if isinstance(value, list) and "items" in schema:
        return sorted(
            {x for v in value for x in undocumented(document, schema["items"], v, f"{where}[]")}
        )
    return []


def response_schema(document: dict[str, Any], op: tuple[str, str]) -> dict[str, Any]:
    return operation(document, op)["responses"]["200"]["content"]["application/json"]["schema"]


def test_the_station_sends_no_undocumented_key(
    api_station: StationProc, front: Any, document: dict[str, Any]
) -> None:
    """What `StationAPI` builds for each endpoint (before any response model filters it),
    and the live status (served as built): every key is in the document."""
    st = front
    built: dict[tuple[str, str], Any] = {
        ("GET", "/api/v1/status"): api_station.api("/api/v1/status"),
        ("GET", "/api/v1/files"): st.files(),
        EVENTS: {"items": st.events(after=0, limit=1000), "cursor": 0},
        ("GET", "/api/v1/alarms"): {"items": st.alarm_list(active_only=False)},
        ("GET", "/api/v1/recorders"): {"items": st.recorders()},
        ("GET", "/api/v1/disks"): {"items": st.disks()},
    }
    # the collected recorder is in every list, and its slot in the status
    assert all(built[op]["items"] for op in built if "items" in built[op]), built
    assert built[("GET", "/api/v1/status")]["slots"][0]["recorder"], built
    found = {
        op_id(op): undocumented(document, response_schema(document, op), data)
        for op, data in built.items()
    }
    assert not any(found.values()), found


def test_forwarding_status_is_documented(
    local_station: Any, document: dict[str, Any], tmp_path: Path
) -> None:
    """`status.forward` of a station that forwards (the module's daemon does not)."""
    from station.forward import ForwardConfig, Forwarder

    config = ForwardConfig(
        enabled=True,
        endpoint_url="http://127.0.0.1:9",
        bucket="footage",
        access_key_id="TEST-0001",
        secret_access_key="not-used",
        window="22:00-06:00",
        bandwidth_mb_s=5,
    )
    fwd = Forwarder(
        config,
        local_station.catalog,
        "TEST-0001",
        clock=lambda: dt.datetime.now(dt.UTC),
        stop=threading.Event(),
        state_path=tmp_path / "forward.db",
    )
    status = fwd.status()
    schema = resolve(document, {"$ref": "#/components/schemas/ForwardStatus"})
    assert not undocumented(document, schema, status), status
    assert set(status) <= set(schema["properties"])


# --- the daemon answers as documented (schemathesis) -----------------------------------------

# What the document must hold for every answer (the generated tests run all the checks).
DOCUMENTED = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
BIG = 2**63  # SQLite's INTEGER is -BIG..BIG-1: beyond, a 422
# Requests a bounded random sample may or may not hit, asked for explicitly.
EDGE_CASES: dict[tuple[str, str], list[dict[str, Any]]] = {
    FILES: [{"query": {"offset": BIG}}],
    EVENTS: [
        {"query": {"format": "csv"}},
        {"query": {"after": BIG}},
        {"query": {"file_id": BIG}},
        {"query": {"file_id": -BIG - 1}},
        {"query": {"since": "0001-01-01T00:00:00+08:00"}},  # before year 1 in UTC
        {"query": {"until": "9999-12-31T23:00:00-08:00"}},  # after 9999 in UTC
    ],
    ACK: [
        {"path_parameters": {"alarm_id": 999_999_999}, "query": {"by": "openapi-test"}},
        {"path_parameters": {"alarm_id": BIG}, "query": {"by": "openapi-test"}},
        {"path_parameters": {"alarm_id": -BIG - 1}, "query": {"by": "openapi-test"}},
    ],
}


def check_operation(schema: Any, op: tuple[str, str], mode: GenerationMode) -> None:
    """Generated requests (BOUNDED) with the token, each validated with schemathesis's
    default checks: no 5xx, status code and content type documented, body matching the
    response schema, valid data accepted / invalid data rejected."""
    method, path = op
    api_op = schema[path][method]

    @BOUNDED
    @given(case=api_op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        case.call_and_validate(headers=AUTH, timeout=30)

    run()


@pytest.mark.parametrize("op", params(API_OPERATIONS))
def test_generated_requests_conform(schema: Any, op: tuple[str, str]) -> None:
    """Valid requests (by the document) with the token: answered as the document says."""
    check_operation(schema, op, GenerationMode.POSITIVE)


@pytest.mark.parametrize("op", params(list(EDGE_CASES)))
def test_edge_requests_conform(schema: Any, op: tuple[str, str]) -> None:
    """The answers a small random sample can miss: each documented, none a 5xx."""
    method, path = op
    failures = []
    for kwargs in EDGE_CASES[op]:
        case = schema[path][method].Case(**kwargs)
        try:
            case.call_and_validate(headers=AUTH, checks=DOCUMENTED, timeout=30)
        except (AssertionError, BaseExceptionGroup) as e:  # schemathesis's FailureGroup: keep
            # going, so that one failure does not hide another
            failures.append(f"{kwargs}: {e}")
    assert not failures, "\n\n".join(failures)
    if op == EVENTS:  # the CSV and the bounds were asked for, not just documented
        csv = schema[path][method].Case(query={"format": "csv"}).call(headers=AUTH, timeout=30)
        assert csv.headers["content-type"][0].startswith("text/csv"), csv.headers
        assert csv.text.startswith("id,"), csv.text[:200]
    for kwargs in EDGE_CASES[op]:
        if kwargs.get("query", {}).get("format") != "csv":
            case = schema[path][method].Case(**kwargs)
            assert case.call(headers=AUTH, timeout=30).status_code in (404, 422), kwargs


def test_acknowledging_a_raised_alarm_conforms(api_station: StationProc, schema: Any) -> None:
    """The 200 of the acknowledgement (generated ids are almost never a raised alarm)."""

    def network_down() -> dict[str, Any] | None:
        raised = api_station.api("/api/v1/alarms")["items"]
        return next((a for a in raised if a["code"] == "network_down"), None)

    alarm = wait_for(network_down, 30, "the network_down alarm")
    case = schema[ACK[1]][ACK[0]].Case(
        path_parameters={"alarm_id": alarm["id"]}, query={"by": "openapi-test"}
    )
    response = case.call(headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"acknowledged": alarm["id"]}
    case.validate_response(response, checks=DOCUMENTED)
    acked = next(a for a in api_station.api("/api/v1/alarms")["items"] if a["id"] == alarm["id"])
    assert acked["acked_at"] is not None, acked


@pytest.mark.parametrize("op", params(WITH_PARAMETERS))
def test_invalid_requests_are_rejected_as_documented(schema: Any, op: tuple[str, str]) -> None:
    """Invalid parameters (negative mode), with the token: a documented 4xx, never a 5xx."""
    check_operation(schema, op, GenerationMode.NEGATIVE)


@pytest.mark.parametrize("op", params(AUTHENTICATED))
def test_requests_without_token_conform(schema: Any, op: tuple[str, str]) -> None:
    """No token, or a wrong one: 401, and that answer is in the document."""
    method, path = op
    params = {"alarm_id": 1} if "{alarm_id}" in path else {}
    query = {"by": "openapi-test"} if method == "POST" else {}
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789abcdef"}):
        case = schema[path][method].Case(path_parameters=params, query=query, headers=headers)
        response = case.call(timeout=30)
        assert response.status_code == 401
        case.validate_response(response, checks=DOCUMENTED)
