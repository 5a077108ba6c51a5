"""The central server's API (`/api/v1/...`, `/metrics`), behind its bearer tokens.

What each route answers is documented field by field in station/web/schemas.py (the
OpenAPI document, CONTRACT.md); the data comes from `StationAPI`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import AfterValidator, BeforeValidator
from starlette.concurrency import run_in_threadpool

from station.web import schemas as m
from station.web.deps import ApiDep
from station.web.schemas import INT64_MAX, INT64_MIN

_bearer = HTTPBearer(auto_error=False)


async def token_ok(
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)], api: ApiDep
) -> None:  # async: checked on the event loop, no hop to a worker thread
    given = creds.credentials.encode() if creds else b""
    if not creds or not api.token_ok(given):
        raise HTTPException(
            401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )


Authorized = Depends(token_ok)
# the answers of every /api/v1 route but health, besides its own (OpenAPI document)
unauthorized: dict[int | str, dict[str, Any]] = {
    401: {"model": m.ErrorDetail, "description": "No bearer token, or a wrong one"}
}


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

health_router = APIRouter()
"""Liveness: on every listener, the UI's too."""

router = APIRouter()
"""The central server's routes: on the API's listener (or the one shared)."""


@health_router.get("/api/v1/health", response_model=m.Health, summary="Liveness (no token needed)")
def health(api: ApiDep) -> dict[str, Any]:
    return {"status": "ok", "station": api.station_id}


# Polled by the central server from every station: the model only documents the answer
# (`responses=`); the body is the station's own rendering, shared by every poll within
# half a second (no per-request validation or encoding, no worker thread unless it has
# to be rendered anew; tests/test_openapi.py checks it against the document).
@router.get(
    "/api/v1/status",
    dependencies=[Authorized],
    response_model=None,
    responses={200: {"model": m.Status}, **unauthorized},
    summary="The station's status: disks, ports, alarms",
)
async def status(api: ApiDep) -> Response:
    body = api.cached_status_json()
    if body is None:
        body = await run_in_threadpool(api.status_json)
    return Response(body, media_type="application/json")


@router.get("/metrics", dependencies=[Authorized], include_in_schema=False)
def metrics(api: ApiDep) -> Response:
    """Prometheus text exposition (scrape with the bearer token)."""
    return Response(api.metrics(), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/api/v1/files",
    dependencies=[Authorized],
    response_model=m.FileList,
    responses=unauthorized,
    summary="Collected files, newest first",
)
def files(
    api: ApiDep,
    officer_no: str | None = None,
    serial: str | None = None,
    important: bool | None = None,
    since: Instant | None = None,
    until: Instant | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
) -> dict[str, Any]:
    return api.files(
        officer_no=officer_no or None,
        serial=serial or None,
        important=important,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )


@router.get(
    "/api/v1/retention/upcoming",
    dependencies=[Authorized],
    response_model=m.UpcomingDeletions,
    responses=unauthorized,
    summary="Files deletion by age will remove in the next days (for administrators)",
)
def upcoming(
    api: ApiDep,
    days: Annotated[int | None, Query(ge=0, le=365)] = None,
) -> dict[str, Any]:
    return api.upcoming_deletions(days)


@router.get(
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
    api: ApiDep,
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
    items = api.events(
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
        return Response(api.events_csv(items), media_type="text/csv; charset=utf-8")
    return {"items": items, "cursor": items[-1]["id"] if items else after}


@router.get(
    "/api/v1/alarms",
    dependencies=[Authorized],
    response_model=m.AlarmList,
    responses=unauthorized,
    summary="Alarms raised, or their history",
)
def alarms(api: ApiDep, active: bool = True) -> dict[str, Any]:
    """Alarms still raised (or, with active=false, the history, newest first)."""
    return {"items": api.alarm_list(active_only=active)}


@router.post(
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
    api: ApiDep,
    alarm_id: Annotated[int, PathParam(ge=INT64_MIN, le=INT64_MAX)],
    by: Annotated[str, Query(min_length=1, max_length=64, description="who acknowledges")],
) -> dict[str, Any]:
    if not api.acknowledge_alarm(alarm_id, by):
        raise HTTPException(404, f"no raised alarm {alarm_id}")
    return {"acknowledged": alarm_id}


@router.get(
    "/api/v1/recorders",
    dependencies=[Authorized],
    response_model=m.RecorderList,
    responses=unauthorized,
    summary="Every recorder seen, with its registration",
)
def recorders(api: ApiDep) -> dict[str, Any]:
    return {"items": api.recorders()}


@router.get(
    "/api/v1/disks",
    dependencies=[Authorized],
    response_model=m.DiskList,
    responses=unauthorized,
    summary="The store disks, with their SMART health",
)
def disks(api: ApiDep) -> dict[str, Any]:
    return {"items": api.disks()}
