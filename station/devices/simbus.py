"""The simulated bus: a folder whose `port-N` sub-folders are docked recorders.

Watched with the `watchdog` package (inotify on Linux); every event only pokes
the debounced rescan, so the snapshot is always read from the folder itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from station.devices.bus import Bus, Link, Snapshot
from station.drivers.base import DockedDevice, ProtocolError
from station.drivers.simulated import RECORDER_JSON, read_links

log = logging.getLogger(__name__)

PORT_DIR = re.compile(r"^port-(\d+)$")


class _Poke(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, poke: Callable[[], None]) -> None:
        self.loop = loop
        self.poke = poke

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.loop.call_soon_threadsafe(self.poke)


class SimulatedBus(Bus):
    """Ports 1..`ports` under `path`."""

    def __init__(self, path: Path, ports: int = 8) -> None:
        self.path = Path(path)
        self.ports = ports
        self._observer: Observer | None = None

    def start(self, loop: asyncio.AbstractEventLoop, poke: Callable[[], None]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._observer = Observer()
        # docking is a rename into the folder, so the top level is enough
        self._observer.schedule(_Poke(loop, poke), str(self.path), recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def scan(self) -> Snapshot:
        found: Snapshot = {}
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return found
        for e in entries:
            m = PORT_DIR.match(e.name)
            if not m or not e.is_dir(follow_symlinks=False):
                continue
            port = int(m.group(1))
            if not 1 <= port <= self.ports:
                log.warning("simulated bus: %s is not a configured port", e.name)
                continue
            if not os.path.exists(os.path.join(e.path, RECORDER_JSON)):
                continue  # not a recorder (yet)
            # The folder's inode survives the recorder rewriting its own files;
            # a re-dock of the same folder is caught by the station forgetting
            # the port when its worker sees the device gone.
            found[port] = DockedDevice(
                port=port,
                key=f"sim:{e.inode()}",
                kind="simulated",
                path=e.path,
            )
        return found

    def links(self) -> list[Link]:
        """The shared links of `links.json` (station/drivers/simulated.py), which the simulated
        driver enforces: the simulated dock's topology."""
        try:
            found = read_links(self.path)
        except ProtocolError as e:
            log.warning("simulated bus: %s; no shared links", e)
            return []
        return [
            Link(f"sim:{x.name}", tuple(p for p in x.ports if 1 <= p <= self.ports), x.mb_s,
                 hub=x.name)
            for x in found
        ]  # fmt: skip

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
