"""The web listeners served beside the runtime: the touchscreen and the central API.

uvicorn runs inside the station's own loop (`uvicorn.Server.serve()`), with
the connection caps and header limits of `station.web.guard`; the station, not
uvicorn, owns the signals. Only the composition root (`station run`, station.cli.run) uses this.
"""

from __future__ import annotations

import contextlib
from typing import Any

import uvicorn

from station.api import StationAPI
from station.runtime import Station
from station.web.app import create_app
from station.web.guard import protocol


class _Server(uvicorn.Server):
    """uvicorn inside our loop: the station, not uvicorn, owns the signals."""

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass

    def capture_signals(self) -> Any:  # uvicorn >= 0.29
        return contextlib.nullcontext()

    async def serve(self, sockets: Any = None) -> None:
        # uvicorn calls sys.exit(1) when it cannot listen: that would unwind the loop
        # past the station's shutdown (the workers' threads would keep the process up)
        try:
            await super().serve(sockets)
        except SystemExit as e:
            raise RuntimeError(f"the listener could not start (uvicorn exit {e.code})") from None


class Listener:
    """One HTTP listener (`station.runtime.Served`)."""

    name = "web"

    def __init__(self, app: Any, host: str, port: int, web: Any) -> None:
        self.server = _Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                http=protocol(web),  # connection caps, header limits
                # also how many connections asyncio accepts in one go, before any is
                # refused: small, so a burst cannot take every descriptor at once
                backlog=64,
                # the address a request came from is the socket's, never a header
                proxy_headers=False,
                log_level="warning",
                log_config=None,  # uvicorn logs through ours (repeats held back)
                lifespan="off",
                access_log=False,
                timeout_graceful_shutdown=3,
            )
        )

    async def serve(self) -> None:
        await self.server.serve()

    def stop(self) -> None:
        self.server.should_exit = True


def listeners(station: Station) -> list[Listener]:
    """The touchscreen's listener, and the central server's API on its own when
    `[api] port` is set (else both on one)."""
    web, api = station.config.web, station.config.api
    front = StationAPI(station)  # one front door for both listeners
    if api.port is None:
        return [Listener(create_app(front), web.host, web.port, web)]
    return [
        Listener(create_app(front, api=False), web.host, web.port, web),
        Listener(create_app(front, ui=False), api.host or web.host, api.port, web),
    ]
