"""Whether the station's own clock can be believed (retention ages footage by it).

A clock that jumps years ahead would age every file past its period at once; a dead
RTC battery before NTP syncs stamps files years in the past, and those go as soon as
the clock is put right. So the station keeps a high-water time H: the latest time it
believed, persisted in the catalog. Then:

- a file collected while the clock reads earlier than H, or earlier than this
  software's release, is marked `clock_untrusted`: it is never deleted by age and is
  listed for an administrator;
- age-based sweeps pause (alarm `clock_jump`) while the clock reads earlier than H, or
  more than `retention.max_clock_jump_days` after it, until the kernel reports the
  clock NTP-synchronised or an administrator confirms it (`station retention resume`);
- overwrite-when-full goes on: it orders footage by age and needs no absolute time.
"""

from __future__ import annotations

import datetime as dt
import threading

from sqlalchemy import func, select

from station.catalog import Catalog, StoredFile
from station.catalog.db import append_event

RELEASED = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)  # nothing is collected before this
TOLERANCE = dt.timedelta(minutes=10)  # clock steps NTP makes, disk time granularity
STATE = "clock_high_water"
PERSIST_EVERY = dt.timedelta(minutes=1)
CONFIRMED = "clock_confirmed_at"  # set by `station retention resume` (another process)


class ClockGuard:
    def __init__(self, catalog: Catalog, max_jump_days: float) -> None:
        self.catalog = catalog
        self.max_jump = dt.timedelta(days=max_jump_days)
        self._lock = threading.Lock()
        self.high: dt.datetime | None  # the latest time believed; None: nothing yet
        saved = catalog.get_state(STATE)
        self._saved = dt.datetime.fromisoformat(saved) if saved else None
        if saved:
            self.high = dt.datetime.fromisoformat(saved)
        else:
            with catalog.read() as s:
                newest = s.scalar(
                    select(func.max(StoredFile.collected_at)).where(
                        StoredFile.clock_untrusted.is_(False)
                    )
                )
            # a new station believes its first reading (not before the release)
            self.high = newest.replace(tzinfo=dt.UTC) if newest else None
        self._confirmed = catalog.get_state(CONFIRMED)

    def untrusted(self, now: dt.datetime) -> str | None:
        """Why a file collected `now` cannot be aged by the clock, or None (H moves up,
        and is persisted at most once a minute, so that the next start knows it)."""
        with self._lock:
            if now < RELEASED:
                return f"the clock reads {now:%Y-%m-%d}, before this software was released"
            if self.high is not None and now < self.high - TOLERANCE:
                return f"the clock reads {now.isoformat()}, earlier than {self.high.isoformat()}"
            if self.high is not None and now > self.high + self.max_jump:
                # a jump ahead is not believed by collecting under it: H stays, so the
                # sweep stays paused until NTP or an administrator confirms the clock
                return f"the clock reads {now.isoformat()}, far after {self.high.isoformat()}"
            self.high = max(self.high or now, now)
            if self._saved is not None and self.high - self._saved < PERSIST_EVERY:
                return None
            high = self._saved = self.high
        self.catalog.set_state(STATE, high.isoformat())
        return None

    def sweep_pause(self, now: dt.datetime, synced: bool | None) -> str | None:
        """Why age-based deletion must wait now, or None (and H is persisted)."""
        confirmed = self.catalog.get_state(CONFIRMED)
        with self._lock:
            if confirmed and confirmed != self._confirmed:  # an administrator confirmed it
                self._confirmed = confirmed
                self.high = dt.datetime.fromisoformat(confirmed)
            if synced:
                self.high = now  # NTP says so: believed, forwards or back
            elif now < RELEASED:
                return f"the station clock reads {now:%Y-%m-%d}, before this software's release"
            elif self.high is None:
                self.high = now  # a new station: its first reading is believed
            elif now < self.high - TOLERANCE:
                return (
                    f"the station clock went back to {now.isoformat()}, before "
                    f"{self.high.isoformat()}: check it, then `station retention resume`"
                )
            elif now > self.high + self.max_jump:
                return (
                    f"the station clock jumped ahead to {now.isoformat()} from "
                    f"{self.high.isoformat()}: check it, then `station retention resume`"
                )
            self.high = max(self.high, now)
            high = self.high
        self._saved = high
        self.catalog.set_state(STATE, high.isoformat())
        return None

    def confirm(self, now: dt.datetime, *, by: str) -> None:
        """An administrator confirmed the clock: believe it from now on (logged)."""
        with self._lock:
            self.high = self._saved = now
            self._confirmed = now.isoformat()
        self.catalog.set_state(STATE, now.isoformat())
        self.catalog.set_state(CONFIRMED, now.isoformat())
        with self.catalog.write() as s:
            append_event(
                s, "clock_confirmed", f"station clock confirmed at {now.isoformat()}", actor=by
            )
