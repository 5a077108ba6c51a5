"""When retention runs: the periodic sweep, its pause for the clock, the forecast.

The policy itself is `station.retention.sweeper` (pure functions and the sweeper);
this module decides when to sweep and with which facts, and raises the alarms
about it (`clock_jump`, `central_unverified`, `storage_low`).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from station.catalog.models import utcnow
from station.config import StationConfig
from station.health.alarms import AlarmBook
from station.health.clock import clock_synchronized
from station.health.clockguard import ClockGuard
from station.retention.sweeper import DiskFacts, Plan, RetentionSweeper, days_until_full
from station.store.disks import Store

log = logging.getLogger(__name__)


class RetentionSchedule:
    """Runs the sweeper with the disks' facts, the clock's word and the alarms."""

    def __init__(
        self,
        config: Callable[[], StationConfig],
        sweeper: RetentionSweeper,
        store: Store,
        alarms: AlarmBook,
        *,
        notify: Callable[..., None],
    ) -> None:
        self.config = config
        self.sweeper = sweeper
        self.store = store
        self.alarms = alarms
        self.notify = notify
        self.clock: ClockGuard | None = None  # once the catalog is migrated
        self.paused: str | None = None  # why deletion by age waits (the clock)
        self.days_until_full: float | None = None
        self._lock = threading.Lock()

    def disk_facts(self) -> list[DiskFacts]:
        out = []
        for d in self.store.disks:
            if d.present() and not d.failed:
                total, free = d.usage()
                out.append(DiskFacts(str(d.path), total, free))
        return out

    def sweep(self) -> Plan:
        """One retention sweep (expired files; overwrite when every disk is past high water)."""
        with self._lock:
            paused = self._check_clock()
            plan = self.sweeper.sweep(self.disk_facts(), paused=paused)
            self._check_central()
        if plan.delete:
            log.info("retention: deleted %s file(s), %s bytes", len(plan.delete), plan.freed_bytes)
            self.notify()
        return plan

    def make_room(self) -> None:
        """Collection is blocked for space: sweep now rather than at the next interval."""
        self.sweep()

    def round(self) -> None:
        """The periodic work: a sweep and the forecast; a failure is logged, not raised."""
        try:
            self.sweep()
            self.forecast()
        except Exception:
            log.exception("retention sweep failed")

    def confirm_clock(self, by: str) -> None:
        """An administrator says the station clock is right (`station retention resume`,
        or the console): deletion by age goes on from the time it shows."""
        if self.clock is None:
            raise RuntimeError("the station is not started")
        self.clock.confirm(utcnow(), by=by)
        self._check_clock()
        self.notify()

    def upcoming(self, days_ahead: int) -> list[dict[str, Any]]:
        """What deletion by age removes in the next `days_ahead` days (shown beforehand)."""
        return self.sweeper.upcoming(days_ahead)

    def forecast(self) -> None:
        r = self.config().retention
        since = utcnow() - dt.timedelta(days=r.forecast_window_days)
        free = sum(d.free for d in self.disk_facts())
        days = days_until_full(free, self.sweeper.collected_bytes(since), r.forecast_window_days)
        self.days_until_full = days
        if days is not None and days < r.storage_low_days:
            self.alarms.raise_(
                "storage_low",
                f"the disks will be full in about {days:.1f} days "
                f"at the rate of the last {r.forecast_window_days:g} days",
            )
        else:
            self.alarms.clear("storage_low")

    def _check_central(self) -> None:
        """`central_unverified` while files wait too long for their central copy's check."""
        hours = self.config().retention.central_stuck_hours
        stuck = self.sweeper.stuck_unverified(dt.timedelta(hours=hours))
        if stuck:
            self.alarms.raise_(
                "central_unverified",
                f"{len(stuck)} file(s) collected more than {hours:g} h ago have no verified "
                "central copy yet: they are kept until they have",
            )
        else:
            self.alarms.clear("central_unverified")

    def _check_clock(self) -> str | None:
        """Why deletion by age must wait (the station clock), with its alarm, or None."""
        paused = None
        if self.clock is not None:
            synced = clock_synchronized()
            self.clock.check_step(utcnow(), synced)  # files stamped before a step: marked
            paused = self.clock.sweep_pause(utcnow(), synced)
        if paused:
            self.alarms.raise_("clock_jump", f"deletion by age paused: {paused}")
        else:
            self.alarms.clear("clock_jump")
        self.paused = paused
        return paused
