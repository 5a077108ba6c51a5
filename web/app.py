"""The station's HTTP side: the central server's API and the touchscreen.

Everything goes through the `Station` facade; this layer holds no SQL and no
file paths of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse

from station.eventlog import to_csv
from station.metrics import registry_for

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

    def token_ok(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
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

    @app.get("/api/v1/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "station": station.config.station.id}

    @app.get("/api/v1/status", dependencies=[Authorized])
    def status() -> dict[str, Any]:
        return station.status()

    metrics_registry = registry_for(station)

    @app.get("/metrics", dependencies=[Authorized], include_in_schema=False)
    def metrics() -> Response:
        """Prometheus text exposition (scrape with the bearer token)."""
        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/files", dependencies=[Authorized])
    def files(
        officer_no: str | None = None,
        serial: str | None = None,
        important: bool | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        return station.files(
            officer_no=officer_no or None,
            serial=serial or None,
            important=important,
            since=_aware(since),
            until=_aware(until),
            limit=limit,
            offset=offset,
        )

    @app.get("/api/v1/events", dependencies=[Authorized], response_model=None)
    def events(
        after: Annotated[int, Query(ge=0, description="cursor: the last event id seen")] = 0,
        kind: str | None = None,
        serial: str | None = None,
        officer_no: str | None = None,
        actor: str | None = None,
        file_id: int | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        text: str | None = None,
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
            since=_aware(since),
            until=_aware(until),
            text=text,
            limit=limit,
        )
        if format == "csv":
            return Response(to_csv(items), media_type="text/csv; charset=utf-8")
        return {"items": items, "cursor": items[-1]["id"] if items else after}

    @app.get("/api/v1/alarms", dependencies=[Authorized])
    def alarms(active: bool = True) -> dict[str, Any]:
        """Alarms still raised (or, with active=false, the history, newest first)."""
        return {"items": station.alarm_list(active_only=active)}

    @app.post("/api/v1/alarms/{alarm_id}/ack", dependencies=[Authorized])
    def ack_alarm(
        alarm_id: int, by: Annotated[str, Query(min_length=1, max_length=64)]
    ) -> dict[str, Any]:
        if not station.acknowledge_alarm(alarm_id, by):
            raise HTTPException(404, f"no raised alarm {alarm_id}")
        return {"acknowledged": alarm_id}

    @app.get("/api/v1/recorders", dependencies=[Authorized])
    def recorders() -> dict[str, Any]:
        return {"items": station.recorders()}

    @app.get("/api/v1/disks", dependencies=[Authorized])
    def disks() -> dict[str, Any]:
        return {"items": station.disks()}

    # --- the touchscreen (shown without login; S20) ---------------------------------

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/ui/state", include_in_schema=False)
    def ui_state() -> dict[str, Any]:
        return station.status()

    @app.get("/ui/stream", include_in_schema=False)
    async def ui_stream(request: Request) -> EventSourceResponse:
        async def events() -> AsyncIterator[dict[str, str]]:
            version = -1
            while not station.stopping and not await request.is_disconnected():
                version = await station.wait_change(version, timeout=5.0)
                yield {"event": "status", "data": json.dumps(station.status())}
                await asyncio.sleep(0.2)  # at most five frames a second

        return EventSourceResponse(events(), ping=15)

    if ui:
        _add_browser_ui(app, station)
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if not (api and ui):  # one listener each: keep only this side's routes
        app.router.routes = [r for r in app.router.routes if _is_api(r) == api or _is_docs(r)]
    return app


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
    from web import auth, media, ui
    from web.settings import SettingsStore

    app.state.ui = auth.UIContext(
        station, SettingsStore(station), Transcoder(auth.cache_dir_for(station))
    )
    app.include_router(auth.router())
    app.include_router(ui.pages())
    app.include_router(ui.router())
    app.include_router(media.router())

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        if not request.url.path.startswith("/api/"):
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Referrer-Policy", "same-origin")
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' data:; media-src 'self'; "
                "style-src 'self'; script-src 'self'; frame-ancestors 'none'",
            )
        return response


def _aware(t: dt.datetime | None) -> dt.datetime | None:
    if t is None or t.tzinfo is not None:
        return t
    return t.astimezone()
