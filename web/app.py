"""The station's HTTP side: the central server's API and the touchscreen.

Everything goes through the `Station` facade; this layer holds no SQL and no
file paths of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator, BeforeValidator
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from station.eventlog import to_csv
from station.metrics import registry_for
from web import schemas as m
from web.guard import BodyLimit, HostCheck, Slots, host_names
from web.schemas import INT64_MAX, INT64_MIN

if TYPE_CHECKING:
    from station.daemon import Station

STATIC = Path(__file__).parent / "static"
_bearer = HTTPBearer(auto_error=False)


def create_app(station: Station, *, api: bool = True, ui: bool = True) -> FastAPI:
    """The ASGI app for one running station: the central server's API (`/api/...`,
    `/metrics`), the touchscreen and browser UI, or both on one listener."""
    app = FastAPI(
        title="Collection station",
        version="1",
        docs_url="/api/docs",
        openapi_url="/api/v1/openapi.json",
    )

    async def token_ok(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:  # async: checked on the event loop, no hop to a worker thread
        given = creds.credentials.encode() if creds else b""
        # compare with every token, in constant time, so timing says nothing
        ok = False
        for t in station.config.api.tokens:
            ok |= hmac.compare_digest(given, t.encode())
        if not creds or not ok:
            raise HTTPException(
                401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )

    Authorized = Depends(token_ok)
    # the answers of every /api/v1 route but health, besides its own (OpenAPI document)
    unauthorized: dict[int | str, dict[str, Any]] = {
        401: {"model": m.ErrorDetail, "description": "No bearer token, or a wrong one"}
    }

    @app.get("/api/v1/health", response_model=m.Health, summary="Liveness (no token needed)")
    def health() -> dict[str, Any]:
        return {"status": "ok", "station": station.config.station.id}

    # Polled by the central server from every station: the model only documents the answer
    # (`responses=`); the body is the station's own rendering, shared by every poll within
    # half a second (no per-request validation or encoding, no worker thread unless it has
    # to be rendered anew; tests/test_openapi.py checks it against the document).
    @app.get(
        "/api/v1/status",
        dependencies=[Authorized],
        response_model=None,
        responses={200: {"model": m.Status}, **unauthorized},
        summary="The station's status: disks, ports, alarms",
    )
    async def status() -> Response:
        body = station.cached_status_json()
        if body is None:
            body = await run_in_threadpool(station.status_json)
        return Response(body, media_type="application/json")

    metrics_registry = registry_for(station)

    @app.get("/metrics", dependencies=[Authorized], include_in_schema=False)
    def metrics() -> Response:
        """Prometheus text exposition (scrape with the bearer token)."""
        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/api/v1/files",
        dependencies=[Authorized],
        response_model=m.FileList,
        responses=unauthorized,
        summary="Collected files, newest first",
    )
    def files(
        officer_no: str | None = None,
        serial: str | None = None,
        important: bool | None = None,
        since: Instant | None = None,
        until: Instant | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    ) -> dict[str, Any]:
        return station.files(
            officer_no=officer_no or None,
            serial=serial or None,
            important=important,
            since=since,
            until=until,
            limit=limit,
            offset=offset,
        )

    @app.get(
        "/api/v1/retention/upcoming",
        dependencies=[Authorized],
        response_model=m.UpcomingDeletions,
        responses=unauthorized,
        summary="Files deletion by age will remove in the next days (for administrators)",
    )
    def upcoming(
        days: Annotated[int | None, Query(ge=0, le=365)] = None,
    ) -> dict[str, Any]:
        ahead = station.config.retention.warn_days if days is None else days
        return {"days": ahead, "items": station.upcoming_deletions(ahead)}

    @app.get(
        "/api/v1/events",
        dependencies=[Authorized],
        response_model=m.EventPage,
        responses={
            200: {
                "description": "The events: JSON, or with `format=csv` a CSV file",
                "content": {"text/csv": {"schema": {"type": "string"}}},
            },
            **unauthorized,
        },
        summary="The system log after a cursor",
    )
    def events(
        after: Annotated[
            int, Query(ge=0, le=INT64_MAX, description="cursor: the last event id seen")
        ] = 0,
        kind: Annotated[str | None, Query(description="one kind, or several: a,b")] = None,
        serial: str | None = None,
        officer_no: str | None = None,
        actor: str | None = None,
        file_id: Annotated[int | None, Query(ge=INT64_MIN, le=INT64_MAX)] = None,
        since: Instant | None = None,
        until: Instant | None = None,
        text: Annotated[str | None, Query(description="in the message")] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
        format: Literal["json", "csv"] = "json",
    ) -> dict[str, Any] | Response:
        """The system log in order, after a cursor: poll with `after` = the last id seen."""
        items = station.events(
            after=after,
            kind=kind,
            serial=serial,
            officer_no=officer_no,
            actor=actor,
            file_id=file_id,
            since=since,
            until=until,
            text=text,
            limit=limit,
        )
        if format == "csv":
            return Response(to_csv(items), media_type="text/csv; charset=utf-8")
        return {"items": items, "cursor": items[-1]["id"] if items else after}

    @app.get(
        "/api/v1/alarms",
        dependencies=[Authorized],
        response_model=m.AlarmList,
        responses=unauthorized,
        summary="Alarms raised, or their history",
    )
    def alarms(active: bool = True) -> dict[str, Any]:
        """Alarms still raised (or, with active=false, the history, newest first)."""
        return {"items": station.alarm_list(active_only=active)}

    @app.post(
        "/api/v1/alarms/{alarm_id}/ack",
        dependencies=[Authorized],
        response_model=m.Acknowledged,
        responses={
            **unauthorized,
            404: {"model": m.ErrorDetail, "description": "No raised alarm with this id"},
        },
        summary="Acknowledge a raised alarm",
    )
    def ack_alarm(
        alarm_id: Annotated[int, PathParam(ge=INT64_MIN, le=INT64_MAX)],
        by: Annotated[str, Query(min_length=1, max_length=64, description="who acknowledges")],
    ) -> dict[str, Any]:
        if not station.acknowledge_alarm(alarm_id, by):
            raise HTTPException(404, f"no raised alarm {alarm_id}")
        return {"acknowledged": alarm_id}

    @app.get(
        "/api/v1/recorders",
        dependencies=[Authorized],
        response_model=m.RecorderList,
        responses=unauthorized,
        summary="Every recorder seen, with its registration",
    )
    def recorders() -> dict[str, Any]:
        return {"items": station.recorders()}

    @app.get(
        "/api/v1/disks",
        dependencies=[Authorized],
        response_model=m.DiskList,
        responses=unauthorized,
        summary="The store disks, with their SMART health",
    )
    def disks() -> dict[str, Any]:
        return {"items": station.disks()}

    # --- the touchscreen (shown without login; S20) ---------------------------------

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/ui/state", include_in_schema=False)
    def ui_state() -> dict[str, Any]:
        return screen_view(station.status())

    streams = Slots(station.config.web.max_streams, station.config.web.max_streams_per_client)

    @app.get("/ui/stream", include_in_schema=False)
    async def ui_stream(request: Request) -> EventSourceResponse:
        async def events() -> AsyncIterator[dict[str, str]]:
            version = -1
            while not station.stopping and not await request.is_disconnected():
                version = await station.wait_change(version, timeout=5.0)
                yield {"event": "status", "data": json.dumps(screen_view(station.status()))}
                await asyncio.sleep(0.2)  # at most five frames a second

        stream = events()
        # a place among the live streams for as long as this one lives
        why = streams.hold(request.client.host if request.client else "", stream)
        if why is not None:
            raise HTTPException(503, why, headers={"Retry-After": "10"})
        return EventSourceResponse(stream, ping=15)

    if ui:
        _add_browser_ui(app, station)
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if not (api and ui):  # one listener each: keep only this side's routes
        app.router.routes = [r for r in app.router.routes if _is_api(r) == api or _is_docs(r)]
    if ui:
        app.add_middleware(HostCheck, names=host_names(station.config.web))
    app.add_middleware(BodyLimit, limits=station.config.web)  # outermost: before any parsing
    return app


SCREEN_FIELDS = {  # what the touchscreen shows, and all an anonymous viewer is given
    "station": ("id", "name", "version", "time", "mode"),
    "network": ("online",),
    "disks": ("total_bytes", "free_bytes", "active", "health"),
    "alarms": ("id", "code", "severity", "message", "since", "port", "acked"),
    "slots": (
        "port", "state", "recorder", "battery_percent", "files_total", "files_done",
        "bytes_total", "bytes_done", "bytes_per_s", "error", "priority", "removed_early",
        "expected_finish", "expected_s",
    ),
    "recorder": ("serial", "officer_no", "officer_name", "unit_name"),
}  # fmt: skip


def screen_view(status: dict[str, Any]) -> dict[str, Any]:
    """The status as the anonymous touchscreen routes give it: only what the screen shows
    (no disk paths, SMART, log anchor, clock source or forwarding); the full document is
    `/api/v1/status`, behind its token."""

    def pick(d: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
        return None if d is None else {k: d.get(k) for k in SCREEN_FIELDS[kind]}

    slots = []
    for slot in status["slots"]:
        view = pick(slot, "slots")
        assert view is not None
        view["recorder"] = pick(slot.get("recorder"), "recorder")
        view["reason"], view["reason_params"] = slot_reason(slot.get("state"), slot.get("error"))
        slots.append(view)
    return {
        "station": pick(status["station"], "station"),
        "network": pick(status["network"], "network"),
        "disks": [pick(d, "disks") for d in status["disks"]],
        "alarms": [pick(a, "alarms") for a in status["alarms"]],
        "slots": slots,
    }


_FILES_KEPT = re.compile(r"^(\d+) file\(s\) kept on the recorder")
_CLONE = re.compile(r"also docked on port (\d+)")
_REPORTS = re.compile(r"^recorder reports officer (\S+), but it was registered reporting (\S+)")
_CLAIMED = re.compile(r"^recorder reports officer (\S+), who already has recorder (\S+):")


def slot_reason(state: str | None, error: str | None) -> tuple[str | None, dict[str, str]]:
    """Why a port is in error or held, as a kind the screen words in its own language (with
    what to do), from the collector's English `error` text; (None, {}) when nothing is wrong.

    The texts come from station.collector and station.voice.reason_code; a text this does
    not know is "recorder_error" (a failure) or "held" (a hold), shown as such, never blank.
    """
    from station.voice import reason_code

    if state == "unregistered":
        if not error:
            return "waiting_approval", {}
        if m := _CLONE.search(error):
            return "possible_clone", {"other_port": m[1]}
        if m := _REPORTS.match(error):
            return "officer_changed", {"reported": m[1], "registered": m[2]}
        if m := _CLAIMED.match(error):
            return "officer_has_recorder", {"officer": m[1], "other": m[2]}
        if error.startswith("officer block changed"):
            return "block_changed", {}
        return "held", {}
    if state != "error":
        return None, {}
    code = reason_code(error)
    if code == "files_kept" and (m := _FILES_KEPT.match(error or "")):
        return "files_kept", {"n": m[1]}
    return code or "recorder_error", {}


def _is_api(route: Any) -> bool:
    path = getattr(route, "path", "")
    return path.startswith("/api/") or path == "/metrics"


def _is_docs(route: Any) -> bool:
    """Routes both listeners keep: health, and the API's own documentation."""
    return getattr(route, "path", "") in (
        "/api/v1/health",
        "/api/docs",
        "/api/docs/oauth2-redirect",
        "/api/v1/openapi.json",
    )


def _add_browser_ui(app: FastAPI, station: Station) -> None:
    """Accounts, retrieval, playback, registration and settings for browsers (cookies + CSRF)."""
    from station.playback import Transcoder
    from web import audit, auth, media, ui
    from web.settings import SettingsStore

    app.state.ui = auth.UIContext(
        station, SettingsStore(station), Transcoder(auth.cache_dir_for(station))
    )
    # the browser's own routes (cookies and CSRF): not in the central server's API document
    for router in (auth.router(), audit.router(), ui.pages(), ui.router(), media.router()):
        app.include_router(router, include_in_schema=False)

    app.add_middleware(audit.AuditTrail, station=station)
    app.add_middleware(SecurityHeaders)


class SecurityHeaders:
    """Browser hardening headers on every page but the central API's (plain ASGI: no
    per-request task or response streaming as with `@app.middleware`)."""

    HEADERS = (
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"same-origin"),
        (
            b"content-security-policy",
            b"default-src 'self'; img-src 'self' data:; media-src 'self'; "
            b"style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        ),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.HEADERS if k not in have]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_hardened)


def _iso_text(v: object) -> object:
    """Times as ISO 8601 text only, as documented: not pydantic's Unix timestamps ("1.0")."""
    try:
        float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return v
    raise ValueError("an ISO 8601 time is expected, e.g. 2026-11-21T10:00:00+08:00")


def _instant(t: dt.datetime) -> dt.datetime:
    """A time parameter made aware (local time when it has no offset) and checked to be
    storable: the catalog keeps UTC, and e.g. 0001-01-01T00:00+08:00 is before year 1."""
    try:
        aware = t if t.tzinfo is not None else t.astimezone()
        aware.astimezone(dt.UTC)
    except (OverflowError, ValueError, OSError):
        raise ValueError("outside the range of UTC times from year 1 to 9999") from None
    return aware


# a time query parameter (ISO 8601; without an offset, station local time)
Instant = Annotated[dt.datetime, BeforeValidator(_iso_text), AfterValidator(_instant)]
