"""The touchscreen's routes (shown without login; S20): the page, its state, its stream.

An anonymous viewer is given only what the screen shows (`screen_view`): no disk
paths, SMART, log anchor, clock source or forwarding.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse
from sse_starlette.sse import EventSourceResponse

from station.web.deps import ApiDep
from station.web.guard import Slots

STATIC = Path(__file__).parent / "static"


def streams(request: Request) -> Slots:
    """The places among the live streams (`web.max_streams`, per client too)."""
    return request.app.state.streams


StreamsDep = Annotated[Slots, Depends(streams)]

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.get("/ui/state")
def ui_state(api: ApiDep) -> dict[str, Any]:
    return screen_view(api.status())


@router.get("/ui/stream")
async def ui_stream(request: Request, api: ApiDep, places: StreamsDep) -> EventSourceResponse:
    async def events() -> AsyncIterator[dict[str, str]]:
        version = -1
        while not api.stopping and not await request.is_disconnected():
            version = await api.wait_change(version, timeout=5.0)
            yield {"event": "status", "data": json.dumps(screen_view(api.status()))}
            await asyncio.sleep(0.2)  # at most five frames a second

    stream = events()
    # a place among the live streams for as long as this one lives
    why = places.hold(request.client.host if request.client else "", stream)
    if why is not None:
        raise HTTPException(503, why, headers={"Retry-After": "10"})
    return EventSourceResponse(stream, ping=15)


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
        view["reason"], view["reason_params"] = slot_reason(slot)
        slots.append(view)
    return {
        "station": pick(status["station"], "station"),
        "network": pick(status["network"], "network"),
        "disks": [pick(d, "disks") for d in status["disks"]],
        "alarms": [pick(a, "alarms") for a in status["alarms"]],
        "slots": slots,
    }


def slot_reason(slot: dict[str, Any]) -> tuple[str | None, dict[str, str]]:
    """Why a port is in error or held, as the kind the screen words in its own language
    (with what to do), and its details; (None, {}) when nothing is wrong. A held or
    failed port always has a kind: "held" or "recorder_error" if the station gave none."""
    state, reason = slot.get("state"), slot.get("reason")
    if state == "unregistered":
        return reason or ("held" if slot.get("error") else "waiting_approval"), dict(
            slot.get("reason_params") or {}
        )
    if state != "error":
        return None, {}
    return reason or "recorder_error", dict(slot.get("reason_params") or {})
