"""The station's status as the central server and the screens see it (`GET /api/v1/status`).

Rendered from the ports, the health monitor and the alarms; the JSON is cached
for `STATUS_MAX_AGE_S` so that many pollers share one rendering, and renewed at
once after anything visible changed (`changed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from station import __version__
from station.config import StationConfig
from station.devices.ports import Ports
from station.health.alarms import AlarmBook
from station.health.monitor import HealthMonitor
from station.ingest.collector import Slot
from station.store.disks import Store

STATUS_MAX_AGE_S = 0.5  # the central API's status: rendered at most twice a second


class ChangeFeed:
    """The status's version, moved on the loop whenever something visible changed.

    `notify` is safe from any thread (it reaches the loop with `call_soon_threadsafe`);
    the live streams wait on `wait_change`; `on_change` runs on the loop at each move
    (the ports announce their changes there)."""

    def __init__(self) -> None:
        self.version = 0
        self.view: StatusView | None = None  # its next rendering is made fresh
        self.on_change: Callable[[], None] = lambda: None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def notify(self, progress: bool = False) -> None:
        """Something visible changed. What is notified (slot states, alarms raised or
        cleared, settings) is in the very next rendering; progress and what is only
        measured (disk space, SMART) within STATUS_MAX_AGE_S."""
        if not progress and self.view is not None:
            self.view.changed()
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(self.bump)

    def bump(self) -> None:
        """Move the version and wake the waiting streams (on the loop)."""
        self.on_change()
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, version: int, timeout: float) -> int:
        """Wait until the version moves past `version` (or the timeout)."""
        if self.version == version:
            ev = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), timeout)
        return self.version


class StatusView:
    """Renders the status; `changed()` (any thread) makes the next rendering fresh."""

    def __init__(
        self,
        config: Callable[[], StationConfig],
        ports: Ports,
        health: HealthMonitor,
        store: Store,
        alarms: AlarmBook,
        *,
        now: Callable[[], dt.datetime],
    ) -> None:
        self.config = config
        self.ports = ports
        self.health = health
        self.store = store
        self.alarms = alarms
        self.now = now
        # forward, platform, integrity: each status of what the runtime started
        self.parts: dict[str, Callable[[], dict[str, Any]]] = {
            "forward": lambda: {"enabled": False},
            "platform": lambda: {"enabled": False},
            "integrity": lambda: {"sm3": False},
        }
        self._lock = threading.Lock()
        self._cache: tuple[float, int, bytes] = (-math.inf, 0, b"")
        self._changes = 0

    def changed(self) -> None:
        """Something the status shows changed: the next rendering is a new one."""
        self._changes += 1

    def expected_finish(self, slot: Slot) -> dict[str, Any]:
        """A collecting window's expected finish, from the measured rate of its link (or
        its own, on no shared link): `expected_finish` (ISO time) and `expected_s`, both
        None when there is no rate yet or the port is not collecting."""
        secs = None
        links = self.ports.links
        if slot.state == "collecting" and links is not None:
            left = max(0, slot.bytes_total - slot.bytes_done)
            secs = links.expected_s(slot.port, left, slot.bytes_per_s())
        if secs is None:
            return {"expected_finish": None, "expected_s": None}
        at = self.now() + dt.timedelta(seconds=secs)
        return {"expected_finish": at.isoformat(timespec="seconds"), "expected_s": round(secs)}

    def disks(self) -> list[dict[str, Any]]:
        """The store disks (`GET /api/v1/disks`)."""
        out = []
        for d in self.store.disks:
            total, free = d.usage()
            h = self.health.disk_health.get(str(d.path))
            out.append(
                {
                    "path": str(d.path),
                    "total_bytes": total,
                    "free_bytes": free,
                    "active": d.index == self.store.active,
                    "health": self.health.health_word(d),
                    "smart": h.to_dict() if h else None,
                }
            )
        return out

    def status(self) -> dict[str, Any]:
        """The data of `GET /api/v1/status` (CONTRACT.md)."""
        ports = self.ports
        priority = ports.priority.port
        slots = []
        for slot in ports.slots.values():
            rec = slot.recorder
            slots.append(
                {
                    "port": slot.port,
                    "state": slot.state,
                    "recorder": None
                    if rec is None
                    else {
                        k: rec.get(k, "")
                        for k in ("serial", "officer_no", "officer_name", "unit_no", "unit_name")
                    },
                    "battery_percent": slot.battery_percent,
                    "files_total": slot.files_total,
                    "files_done": slot.files_done,
                    "bytes_total": slot.bytes_total,
                    "bytes_done": slot.bytes_done,
                    "bytes_per_s": round(slot.bytes_per_s()),
                    "error": slot.error,
                    "reason": slot.reason,
                    "reason_params": dict(slot.reason_params),
                    "priority": slot.port == priority,
                    "removed_early": ports.removed_early(slot.port)
                    if slot.state == "empty"
                    else None,
                    **self.expected_finish(slot),
                }
            )
        # a recorder's alarm names the port it is docked on (the screen shows where)
        port_of = {s.recorder.get("serial"): s.port for s in ports.slots.values() if s.recorder}
        alarms = [
            {
                "id": a.id,
                "code": a.code,
                "severity": a.severity,
                "message": a.message,
                "since": a.since,
                "subject": a.subject,
                "port": port_of.get(a.subject) or port_subject(a.subject),
                "acked": a.acked_at is not None,
            }
            for a in self.alarms.active()
        ]
        cfg = self.config()
        return {
            "station": {
                "id": cfg.station.id,
                "name": cfg.station.name,
                "version": __version__,
                "time": self.now().isoformat(timespec="seconds"),
                "mode": cfg.registration.mode,
            },
            "network": {"online": self.health.network_online},
            "log": self.health.log_head,
            "clock": self.health.clock_state,
            "disks": self.disks(),
            "slots": slots,
            "alarms": alarms,
            **{name: part() for name, part in self.parts.items()},
        }

    def json(self, max_age_s: float = STATUS_MAX_AGE_S) -> bytes:
        """`status()` rendered as JSON, at most `max_age_s` old: the central server's
        pollers (325 stations' worth may poll one station) share one rendering."""
        body = self.cached_json(max_age_s)
        if body is not None:
            return body
        with self._lock:  # one rendering at a time; the others take its result
            body = self.cached_json(max_age_s)
            if body is None:
                at, seen = time.monotonic(), self._changes
                text = json.dumps(self.status(), ensure_ascii=False, separators=(",", ":"))
                body = text.encode()
                self._cache = (at, seen, body)
        return body

    def cached_json(self, max_age_s: float = STATUS_MAX_AGE_S) -> bytes | None:
        """The last rendering of `status()` if it is fresh enough, without waiting."""
        at, seen, body = self._cache
        fresh = seen == self._changes and time.monotonic() - at < max_age_s
        return body if fresh else None


def port_subject(subject: str) -> int | None:
    """The port an alarm about a port ("port3") is about."""
    rest = subject.removeprefix("port")
    return int(rest) if rest != subject and rest.isdigit() else None
