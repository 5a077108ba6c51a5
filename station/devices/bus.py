"""The bus interface and the debounced, snapshot-diffing port watcher.

A bus only has to do two things: say "something may have changed" (from udev
events, inotify, anything) and list what is docked right now, by physical port.
The watcher never trusts individual events: each one schedules a debounced
rescan whose result is diffed against the previous snapshot, so a missed,
duplicated or reordered event cannot desynchronise the station (the Home
Assistant usb discovery pattern).
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from station.drivers.base import DockedDevice

log = logging.getLogger(__name__)

Snapshot = dict[int, DockedDevice]


@dataclass(frozen=True)
class Link:
    """Physical ports that share one USB link (a hub's upstream port, a root port): their
    recorders' reads add up to at most `mb_s` MB/s (None: not known)."""

    name: str
    ports: tuple[int, ...]
    mb_s: float | None = None
    hub: str = ""  # what the ports hang from, as the bus names it


@dataclass(frozen=True)
class PortChange:
    """A device left (`old`) and/or arrived (`new`) on `port`."""

    port: int
    old: DockedDevice | None
    new: DockedDevice | None


class Bus(abc.ABC):
    """Where recorders are plugged in."""

    @abc.abstractmethod
    def start(self, loop: asyncio.AbstractEventLoop, poke: Callable[[], None]) -> None:
        """Begin watching; call `poke` (on `loop`) whenever something may have changed.

        Called before the first `scan`, so nothing plugged in between is missed.
        """

    @abc.abstractmethod
    def scan(self) -> Snapshot:
        """What is docked now, by physical port. Blocking; run in an executor."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop watching."""

    def links(self) -> list[Link]:
        """The shared USB links of the dock: which ports share which hub and root port
        (only links of two ports or more matter to the scheduling)."""
        return []


def diff(old: Snapshot, new: Snapshot) -> list[PortChange]:
    """The changes that turn snapshot `old` into `new`, by port."""
    changes = []
    for port in sorted(old.keys() | new.keys()):
        a, b = old.get(port), new.get(port)
        if (a.key if a else None) != (b.key if b else None):
            changes.append(PortChange(port, a, b))
    return changes


class PortWatcher:
    """Turns bus pokes into debounced rescans and reports per-port changes."""

    def __init__(
        self,
        bus: Bus,
        on_change: Callable[[PortChange], None],
        debounce_s: float = 0.2,
    ) -> None:
        self.bus = bus
        self.on_change = on_change
        self.debounce_s = debounce_s
        self.snapshot: Snapshot = {}
        self._pending: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scan_lock = asyncio.Lock()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.bus.start(self._loop, self.poke)  # watch first, then enumerate
        await self.rescan()

    def poke(self) -> None:
        """Something may have changed: rescan once things settle."""
        assert self._loop is not None
        if self._pending is not None:
            self._pending.cancel()
        self._pending = self._loop.call_later(
            self.debounce_s, lambda: self._loop.create_task(self.rescan())
        )

    async def rescan(self) -> None:
        assert self._loop is not None
        async with self._scan_lock:
            try:
                new = await self._loop.run_in_executor(None, self.bus.scan)
            except Exception:
                log.exception("bus scan failed; keeping the previous snapshot")
                return
            changes = diff(self.snapshot, new)
            self.snapshot = new
        for change in changes:
            try:
                self.on_change(change)
            except Exception:
                log.exception("port change handler failed for port %s", change.port)

    def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        self.bus.stop()
