"""The touchscreen's routes (shown without login; S20): the page, its state, its stream.

An anonymous viewer is given only what the screen shows (`screen_view`): no disk
paths, SMART, log anchor, clock source or forwarding.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse
from sse_starlette.sse import EventSourceResponse

from station.api import reason_code
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

    The texts come from station.ingest.collector and station.voice.reason_code; a text this does
    not know is "recorder_error" (a failure) or "held" (a hold), shown as such, never blank.
    """
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
