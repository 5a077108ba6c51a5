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
- overwrite-when-full goes on: it orders footage by age and needs no absolute time;
- a clock that is stepped forward while the station runs (NTP answering at last after
  a dead RTC battery, whose clock timesyncd had restored to the last shutdown) shows as
  a change of the wall clock against the kernel's boot clock: every file collected
  before the step since the clock was last vouched for (the kernel said NTP-synchronised,
  or an administrator confirmed it), in this boot or an earlier one, was stamped too
  early and is marked `clock_untrusted`; so are an earlier boot's such files when this
  boot first finds the clock synchronised (a step before that look cannot be measured).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from station.catalog import Catalog, StoredFile
from station.catalog.db import append_event
from station.health.clock import clock_synchronized
from station.store.sidecar import (
    SidecarError,
    mirror_row,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

log = logging.getLogger(__name__)

RELEASED = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)  # nothing is collected before this
TOLERANCE = dt.timedelta(minutes=10)  # clock steps NTP makes, disk time granularity
STATE = "clock_high_water"
PERSIST_EVERY = dt.timedelta(minutes=1)
CONFIRMED = "clock_confirmed_at"  # set by `station retention resume` (another process)
OFFSET = "clock_offset"  # wall clock minus boot clock, and this boot's first collection


def boot_clock() -> float:
    """Seconds since boot, counting suspend; never stepped, whatever the wall clock does."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class ClockGuard:
    def __init__(
        self,
        catalog: Catalog,
        max_jump_days: float,
        *,
        boot: Callable[[], float] = boot_clock,
        boot_id: str | None = None,
        synced: Callable[[], bool | None] = clock_synchronized,
    ) -> None:
        self.catalog = catalog
        self.max_jump = dt.timedelta(days=max_jump_days)
        self._lock = threading.Lock()
        self._boot = boot
        self._synced = synced  # the kernel's word, asked at each collection (a syscall)
        self._carried = False  # `since` is an earlier boot's: no offset of ours measures it
        self._boot_id = boot_id if boot_id is not None else globals()["boot_id"]()
        # wall minus boot clock when last looked at, and when this boot (under that offset)
        # first collected; kept across a restart of the daemon within one boot
        self._offset: float | None = None
        self._saved_offset: float | None = None  # as the catalog has it
        self._since: dt.datetime | None = None
        step = json.loads(catalog.get_state(OFFSET) or "null")
        if step:
            # the offset only means something within one boot; the unsynchronised period
            # goes on across boots (a dead RTC restored to the last shutdown, no network)
            # until NTP or an administrator vouches for the clock
            if step.get("boot") == self._boot_id:
                self._offset = self._saved_offset = step["offset"]
            self._since = dt.datetime.fromisoformat(step["since"]) if step["since"] else None
            self._carried = self._since is not None and self._offset is None
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
            if self._since is None and not self._synced():
                # the first collection under a clock nobody vouches for: remembered (while
                # the kernel says NTP-synchronised, the stamp is right)
                self._since = now
                self._offset = self._offset_at(now) if self._offset is None else self._offset
                self._save_offset()
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
            self._since = None  # what was collected so far is vouched for
            self._save_offset()
        self.catalog.set_state(STATE, now.isoformat())
        self.catalog.set_state(CONFIRMED, now.isoformat())
        with self.catalog.write() as s:
            append_event(
                s, "clock_confirmed", f"station clock confirmed at {now.isoformat()}", actor=by
            )

    def _offset_at(self, now: dt.datetime) -> float:
        return now.timestamp() - self._boot()

    def _save_offset(self) -> None:
        self._saved_offset = self._offset
        since = self._since.isoformat() if self._since else None
        value = {"boot": self._boot_id, "offset": self._offset, "since": since}
        self.catalog.set_state(OFFSET, json.dumps(value))

    def check_step(self, now: dt.datetime, synced: bool | None = None) -> str | None:
        """Look for a step of the wall clock since the last look (before every sweep). A
        step forward means the files collected before it while the clock was not vouched
        for (by NTP, or an administrator), in this boot or earlier ones, were stamped too
        early and would be aged too soon: they are marked `clock_untrusted` (rows and
        sidecars) before the step counts as seen, so a failed marking is tried again.
        `synced`: the kernel reports the clock NTP-synchronised; with no step, that
        vouches for what was collected so far. Returns what happened, or None."""
        with self._lock:
            offset = self._offset_at(now)
            since, carried, high = self._since, self._carried, self.high
            step = 0.0 if self._offset is None else offset - self._offset
        if carried and synced and since is not None:
            # files of an earlier boot under a clock nobody vouched for, and now a
            # synchronised one: whether NTP stepped it before this first look cannot be
            # seen, so they cannot be vouched for
            until = max(since, high or since) + TOLERANCE
            marked = self._mark_untrusted(since - TOLERANCE, until)
            msg = (
                f"{marked} file(s) collected in an earlier boot under a clock not vouched for "
                "are marked collected under an untrusted clock (the clock is synchronised "
                "now; a step before this boot's first look cannot be measured)"
            )
        elif step > TOLERANCE.total_seconds():
            marked = 0
            if since is not None:
                until = now - dt.timedelta(seconds=step) + TOLERANCE  # the old clock's "now"
                marked = self._mark_untrusted(since - TOLERANCE, until)
            msg = (
                f"the station clock was set forward by {step:.0f} s: {marked} file(s) "
                "collected before it under a clock not confirmed since are marked collected "
                "under an untrusted clock"
            )
        elif step < -TOLERANCE.total_seconds():
            msg = f"the station clock was set back by {-step:.0f} s"
        else:
            msg = ""
        with self._lock:
            self._carried = False
            closes = bool(msg or synced) and self._since is not None
            if closes:  # later collections are stamped under a clock vouched for
                self._since = None
            self._offset = offset  # within the tolerance: NTP slewing, followed
            if closes or self._saved_offset is None or abs(offset - self._saved_offset) >= 1:
                self._save_offset()
        if msg:
            with self.catalog.write() as s:
                append_event(s, "clock_stepped", msg, seconds=round(step))
            log.warning("%s", msg)
        return msg or None

    def _mark_untrusted(self, lo: dt.datetime, hi: dt.datetime) -> int:
        with self.catalog.write() as s:
            rows = s.scalars(
                select(StoredFile).where(
                    StoredFile.deleted_at.is_(None),
                    StoredFile.clock_untrusted.is_(False),
                    StoredFile.collected_at >= lo,
                    StoredFile.collected_at <= hi,
                )
            ).all()
            for f in rows:
                f.clock_untrusted = True
                try:
                    sc = read_sidecar(sidecar_path(Path(f.disk), f.rel_path))
                    write_sidecar(Path(f.disk), f.rel_path, mirror_row(sc, f))
                except (SidecarError, OSError) as e:  # rewritten from the row at start-up
                    log.warning("file %s: sidecar not updated now (%s)", f.id, e)
            return len(rows)
