"""What keeps a flood of connections or bodies from taking the station down.

A listener admits at most `web.max_connections` connections, at most `web.max_per_client` of
them from one address; more are answered 503 and closed at once, so descriptors stay
far below the daemon's limit whatever arrives. A request must send its headers within
`header_timeout_s` (slowloris) and no more than `max_header_bytes` of them, and its
body within `body_timeout_s`; bodies are bounded (`max_body_kb`, larger only where a
route needs it) and refused with 413 before they are read, ahead of any login or CSRF
check. Live streams (SSE) have their own, smaller caps. Collection runs in threads of
its own and goes on meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from station.api import WebSection

KB = 1024


# routes whose bodies may be larger than `web.max_body_kb`: the zip export lists up to
# thousands of file ids
LARGE_BODIES_KB = {"/ui/api/zip": 1024}


class Slots:
    """Counted places, in total and per client address (thread-safe)."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self.held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, client: str) -> str | None:
        """None when a place was taken, else why not."""
        with self._lock:
            if self.held.total() >= self.total:
                return "the station is serving as many clients as it can: try again shortly"
            if self.held[client] >= self.per_client:
                return "too many connections from this address"
            self.held[client] += 1
            return None

    def give_back(self, client: str) -> None:
        with self._lock:
            self.held[client] -= 1
            if self.held[client] <= 0:
                del self.held[client]

    def hold(self, client: str, owner: object) -> str | None:
        """Take a place for as long as `owner` lives (or until it is given back)."""
        why = self.take(client)
        if why is None:
            weakref.finalize(owner, self.give_back, client)
        return why


def _answer(status: bytes, text: str) -> bytes:
    body = text.encode() + b"\n"
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def protocol(limits: WebSection) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with the connection caps and header limits of one listener."""
    slots = Slots(limits.max_connections, limits.max_per_client)

    class Guarded(HttpToolsProtocol):
        _client: str | None = None
        _timer: asyncio.TimerHandle | None = None
        _in_headers = True
        _header_bytes = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            peer = transport.get_extra_info("peername")
            client = str(peer[0]) if peer else ""
            why = slots.take(client)
            if why is not None:
                transport.write(_answer(b"503 Service Unavailable", why))
                transport.close()
                return
            self._client = client
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._client is None:  # refused in connection_made
                return
            slots.give_back(self._client)
            self._client = None
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._in_headers:
                self._header_bytes += len(data)
            super().data_received(data)
            if self._in_headers and self._header_bytes > limits.max_header_bytes:
                self._refuse(b"431 Request Header Fields Too Large", "request headers too large")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_headers = True
            self._arm()

        def on_headers_complete(self) -> None:
            self._in_headers, self._header_bytes = False, 0
            self._disarm()
            super().on_headers_complete()

        def _arm(self) -> None:
            self._disarm()
            self._timer = self.loop.call_later(limits.header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _headers_late(self) -> None:
            self._timer = None
            if self._in_headers:
                self._refuse(b"408 Request Timeout", "request headers not sent in time")

        def _refuse(self, status: bytes, why: str) -> None:
            if not self.transport.is_closing():
                self.transport.write(_answer(status, why))
                self.transport.close()

    return Guarded


class BodyLimit:
    """Bound every request body, and the time it may take to arrive (plain ASGI)."""

    def __init__(self, app: ASGIApp, limits: WebSection) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = LARGE_BODIES_KB.get(scope["path"], self.limits.max_body_kb) * KB
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _refuse(send, 413, f"the request body is limited to {limit // KB} KiB")
            return
        await self.app(scope, _bounded(receive, limit, self.limits.body_timeout_s), send)


def _bounded(receive: Receive, limit: int, timeout: float) -> Callable[[], Any]:
    got, done = 0, False

    async def bounded() -> Message:
        nonlocal got, done
        if done:  # the body is in: what follows is the wait for a disconnect
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), timeout)
        except TimeoutError:
            raise HTTPException(408, "the request body was not sent in time") from None
        if message["type"] == "http.request":
            got += len(message.get("body", b""))
            if got > limit:
                raise HTTPException(413, f"the request body is limited to {limit // KB} KiB")
            done = not message.get("more_body", False)
        return message

    return bounded


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = ('{"detail": "' + detail + '"}').encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def host_names(web: WebSection) -> frozenset[str]:
    """The names a browser may use for the station's pages (`Host`), against DNS
    rebinding: loopback, the listener's own address, `web.allowed_hosts`, and when the
    listener is on every address, this machine's name and its addresses."""
    names = set(LOOPBACK_NAMES) | {h.lower() for h in web.allowed_hosts}
    if web.host in WILDCARDS:
        import socket

        import psutil

        names.add(socket.gethostname().lower())
        for addrs in psutil.net_if_addrs().values():
            names.update(a.address.split("%")[0] for a in addrs if a.family in
                         (socket.AF_INET, socket.AF_INET6))  # fmt: skip
    else:
        names.add(web.host.lower())
    return frozenset(names)


def _host_of(header: bytes) -> str:
    host = header.decode("latin-1").strip().lower()
    if host.startswith("["):  # [::1]:8080
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class HostCheck:
    """Pages only for the station's own names (`Host`); the central API (`/api/`, bearer
    token) and the metrics are left alone (plain ASGI)."""

    def __init__(self, app: ASGIApp, names: frozenset[str]) -> None:
        self.app = app
        self.names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(("/api/", "/metrics")):
            host = _host_of(dict(scope["headers"]).get(b"host", b""))
            if host not in self.names:
                await _refuse(send, 400, "this station does not answer to that host name")
                return
        await self.app(scope, receive, send)
