"""The audit trail of people's requests: from where, refused ones, and the log's export.

GB/T 22239-2019 level 3 asks that every administrative action and every access to
footage be an event with who, what, when, from where and whether it succeeded, and that
the audit administrator's export of the log be logged too. The routes write their own
events for what succeeds (`file_downloaded`, `file_deleted`, `settings_changed`, ...);
this module adds the rest:

- `AuditTrail`, an ASGI middleware on the browser's routes (`/ui/...`) and the central
  server's (`/api/...`, `/metrics`): every event written
  while a request is served carries the address it came from (`source`, through
  `station.api.request_source`), and a request refused for want of a login or of
  rights or a token (401/403; 404 for a file that is not the user's) becomes an `access_refused`
  event: who (when logged in), the method and path, the status, from where. At most
  `REFUSED_PER_MINUTE` of those per address (IPv6: per /64) and minute, and
  `REFUSED_TOTAL_PER_MINUTE` from all together, are written one by one; the rest are
  counted into the next one, so a flood of refused requests cannot flood the log.
- `GET /ui/api/log/export`: the system log, filtered, as CSV or JSON, for the
  administrators and auditors who may read it; the export is itself an event
  (`log_exported`), written before the file is handed over.

Nothing here, or anywhere in the console, changes or deletes an event.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
import time
from collections import OrderedDict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from station.api import StationAPI, request_source
from station.web.auth import LogUser, csrf_protect
from station.web.deps import ApiDep
from station.web.media import attachment
from station.web.schemas import INT64_MAX

REFUSED_PER_MINUTE = 30  # per address (an IPv6 /64 counts as one)
REFUSED_TOTAL_PER_MINUTE = 300  # from all addresses together
WINDOWS_KEPT = 4096
EXPORT_MAX = 10_000
# Routes that log their own refusals (a wrong PIN is `login_failed`), or answer 401 to
# say "nobody is logged in" as a matter of course.
OWN_REFUSALS = ("/ui/api/login", "/ui/api/session", "/ui/api/approve")


def _network(source: str) -> str:
    """What the limit counts as one source: an IPv4 address, or an IPv6 /64."""
    try:
        addr = ipaddress.ip_address(source)
    except ValueError:
        return source
    if addr.version == 6:
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


# a file's own routes: 404 is how a file that is not the user's is refused
FILE_ROUTE = re.compile(r"^/ui/(media|api/files)/\d+(/|$)")
AUDITED = ("/ui/", "/api/", "/metrics")  # the browser's routes and the central server's


def refused(method: str, path: str, status: int) -> bool:
    """Whether a response is a refusal worth an event."""
    if path.startswith(OWN_REFUSALS):
        return False
    if FILE_ROUTE.match(path):
        return status in (401, 403, 404)
    if path.startswith(("/ui/api/", "/ui/media/", "/api/", "/metrics")):
        return status in (401, 403)  # no session or rights; no token or a wrong one
    return False


class AuditTrail:
    """ASGI middleware: the source of every event written for a browser request, and the
    refused requests as events (bounded per source)."""

    def __init__(self, app: ASGIApp, api: StationAPI) -> None:
        self.app = app
        self.api = api
        self._lock = threading.Lock()
        # per address: window start, logged, held back (least recently refused first)
        self._windows: OrderedDict[str, tuple[float, int, int]] = OrderedDict()
        self._total = (time.monotonic(), 0)  # all addresses: window start, logged

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(AUDITED):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        source = client[0] if client else "?"
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with request_source(source):
            await self.app(scope, receive, send_status)
        method = scope.get("method", "")
        if refused(method, path, status):
            account = scope.get("state", {}).get("account")
            actor = account.officer_no if account is not None else "anonymous"
            await run_in_threadpool(self._log_refused, source, actor, method, path, status)

    def _admit(self, source: str) -> int | None:
        """None when this refusal is only counted; else how many were held back before.
        Bounded per address (IPv6 per /64) and in total, in a table of bounded size."""
        now = time.monotonic()
        key = _network(source)
        with self._lock:
            if now - self._total[0] >= 60:
                self._total = (now, 0)
            start, logged, held = self._windows.pop(key, (now, 0, 0))
            if now - start >= 60:
                start, logged = now, 0
            admit = logged < REFUSED_PER_MINUTE and self._total[1] < REFUSED_TOTAL_PER_MINUTE
            if admit:
                self._total = (self._total[0], self._total[1] + 1)
                self._windows[key] = (start, logged + 1, 0)
            else:
                self._windows[key] = (start, logged, held + 1)
            while len(self._windows) > WINDOWS_KEPT:  # the least recently refused go first
                self._windows.popitem(last=False)
            return held if admit else None

    def _log_refused(self, source: str, actor: str, method: str, path: str, status: int) -> None:
        held = self._admit(source)
        if held is None:
            return
        extra: dict[str, Any] = {"held_back": held} if held else {}
        with request_source(source):
            self.api.audit(
                "access_refused",
                f"{method} {path[:200]}: {status}",
                actor=actor,
                method=method,
                path=path[:200],
                status=status,
                **extra,
            )


router = APIRouter(prefix="/ui/api", dependencies=[Depends(csrf_protect)], tags=["ui"])


@router.get("/log/export")
def export_log(
    user: LogUser,
    api: ApiDep,
    after: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    kind: Annotated[str | None, Query(max_length=200)] = None,
    officer_no: Annotated[str | None, Query(max_length=32)] = None,
    serial: Annotated[str | None, Query(max_length=32)] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    text: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=EXPORT_MAX)] = EXPORT_MAX,
    format: Literal["csv", "json"] = "csv",
) -> Response:
    """The system log in order after `after`, filtered, as a file; logged as
    `log_exported` (who, which filters, how many, which ids) before it is sent."""
    filters = {
        k: v
        for k, v in {
            "kind": kind,
            "officer_no": officer_no,
            "serial": serial,
            "actor": actor,
            "text": text,
        }.items()
        if v
    }
    items = api.events(after=after, limit=limit, **filters)
    first, last = (items[0]["id"], items[-1]["id"]) if items else (None, None)
    api.audit(
        "log_exported",
        f"{len(items)} event(s) as {format}",
        actor=user.officer_no,
        role=user.role,
        format=format,
        count=len(items),
        first_id=first,
        last_id=last,
        after=after,
        filters=filters,
    )
    stamp = api.now().strftime("%Y%m%d-%H%M%S")
    name = f"{api.station_id}-log-{stamp}.{format}"
    headers = attachment(name)
    if format == "csv":
        return Response(api.events_csv(items), media_type="text/csv", headers=headers)
    body = json.dumps({"items": items}, ensure_ascii=False)
    return Response(body, media_type="application/json", headers=headers)
