"""The station's HTTP side: the central server's API and the touchscreen.

`create_app(api)` assembles module-level routers around one `StationAPI`: the
central API (station/web/central.py), the touchscreen (station/web/screen.py), sessions
(station/web/auth.py), the console (station/web/ui.py), footage (station/web/media.py) and the log's
export (station/web/audit.py). This layer holds no SQL and no file paths of its own, and
imports nothing of the station but `station.api` and `station.errors`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from station.api import StationAPI
from station.errors import StationError
from station.web import audit, auth, central, media, screen
from station.web import ui as console
from station.web.deps import UIContext
from station.web.guard import BodyLimit, HostCheck, Slots, host_names
from station.web.refusals import station_error
from station.web.screen import screen_view, slot_reason

__all__ = ["create_app", "screen_view", "slot_reason"]

STATIC = Path(__file__).parent / "static"


def create_app(station: StationAPI, *, api: bool = True, ui: bool = True) -> FastAPI:
    """The ASGI app for one running station: the central server's API (`/api/...`,
    `/metrics`), the touchscreen and browser UI, or both on one listener."""
    app = FastAPI(
        title="Collection station",
        version="1",
        docs_url="/api/docs",
        openapi_url="/api/v1/openapi.json",
    )
    limits = station.web_limits()
    app.state.api = station
    app.state.ui = UIContext()
    app.state.streams = Slots(limits.max_streams, limits.max_streams_per_client)
    app.add_exception_handler(StationError, station_error)

    app.include_router(central.health_router)  # both listeners: health and the documents
    if api:
        app.include_router(central.router)
    if ui:
        app.include_router(screen.router)
        _add_browser_ui(app, station)
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
        app.add_middleware(HostCheck, names=host_names(limits))
    app.add_middleware(BodyLimit, limits=limits)  # outermost: before any parsing
    return app


def _add_browser_ui(app: FastAPI, station: StationAPI) -> None:
    """Accounts, retrieval, playback, registration and settings for browsers (cookies + CSRF)."""
    # the browser's own routes (cookies and CSRF): not in the central server's API document
    for router in (auth.router, audit.router, console.pages, console.router, media.router):
        app.include_router(router, include_in_schema=False)

    app.add_middleware(audit.AuditTrail, api=station)
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
