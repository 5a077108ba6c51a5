"""`station run`: the composition root, the one place that builds the running station."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import click

from station.cli.common import config_option, load, log
from station.cli.serve import listeners
from station.config import ConfigError, StationConfig, load_config
from station.runtime import Station

# Something that runs beside the daemon until it stops (the demo's recorder traffic).
SideTask = Callable[[Station, asyncio.Event], Awaitable[None]]


def run_station(
    config: StationConfig, extra: SideTask | None = None, path: str | None = None
) -> None:
    """Run the daemon until SIGTERM or SIGINT; `extra(station, stop)` runs beside it.

    The wiring of `station run` and `station demo`, and all of it: build the station
    from its configuration and the web listeners on it (station.cli.serve), hook the
    signals, serve until asked to stop. SIGHUP
    re-reads the configuration file `path` and applies what can change live (API
    tokens, registration mode, retention, thresholds): tokens rotate without a restart.
    Exit status 1 when the station stops without being asked to.
    """

    async def main() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        station = Station(config)
        if where := path or os.environ.get("STATION_CONFIG"):
            station.config_path = Path(where)

        def reload() -> None:
            try:
                new = load_config(path)
            except ConfigError as e:
                log.error("configuration not reloaded: %s", e)
                return
            for section in station.reload(new):
                log.warning("[%s] changed: it takes effect after a restart", section)
            log.info("configuration reloaded from %s", path)

        if path or os.environ.get("STATION_CONFIG"):
            loop.add_signal_handler(signal.SIGHUP, reload)
        side = asyncio.create_task(extra(station, stop)) if extra else None
        try:
            return await station.run(stop, lambda: listeners(station))
        finally:
            if side:
                side.cancel()
                await asyncio.gather(side, return_exceptions=True)

    if not asyncio.run(main()):
        log.error("the station stopped without being asked to: exit status 1")
        sys.exit(1)


@click.command()
@config_option
def run(config_path: str | None) -> None:
    """Run the station daemon."""
    run_station(load(config_path), path=config_path)
