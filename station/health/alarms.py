"""Alarms: raised once per (code, subject), counted while they persist, cleared when fixed."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from station.catalog import Alarm, Catalog
from station.catalog.db import append_event
from station.catalog.models import utcnow

log = logging.getLogger(__name__)

SEVERITY = {
    "storage_full": "critical",
    "storage_low": "warning",
    "disk_missing": "critical",
    "disk_unhealthy": "critical",
    "disk_degraded": "warning",
    "network_down": "warning",
    "collection_failed": "warning",
    "verify_failed": "critical",
    "store_inconsistent": "critical",
    "store_corrupt": "critical",
    "store_copy_restored": "critical",  # one of a file's two copies was lost (station.store.mirror)
    "recorder_clock_drift": "warning",
    "battery_critical": "warning",
    "clock_unsynced": "warning",
    "clock_jump": "critical",  # retention paused: the station clock cannot be believed
    "forward_failing": "warning",
    "integrity": "critical",  # installed code or configuration differ from the manifest
}


@dataclass(frozen=True)
class ActiveAlarm:
    code: str
    subject: str
    severity: str
    message: str
    since: str
    id: int = 0
    count: int = 1
    acked_by: str | None = None
    acked_at: str | None = None
    cleared_at: str | None = None


ACTIVE_MAX_AGE_S = 5.0


class AlarmBook:
    """The station's alarms, persisted in the catalog with their history."""

    def __init__(
        self,
        catalog: Catalog,
        on_change: Callable[[], None] = lambda: None,
        on_raised: Callable[[str], None] = lambda code: None,
    ) -> None:
        self.catalog = catalog
        self.on_change = on_change
        self.on_raised = on_raised  # a new alarm (not a repeat): e.g. speak it
        # The raised alarms, kept between changes (the central server's status polls read
        # them hundreds of times a minute): (changes seen, when read, alarms).
        self._changes = 0
        self._active: tuple[int, float, list[ActiveAlarm]] | None = None

    @contextlib.contextmanager
    def _write(self) -> Iterator[Session]:
        try:
            with self.catalog.write() as s:
                yield s
        finally:
            self._changes += 1  # after the commit: a reader meanwhile caches nothing stale

    def raise_(self, code: str, message: str, subject: str = "") -> None:
        """Raise (or refresh) an alarm; a repeat only bumps its count."""
        with self._write() as s:
            row = s.scalars(
                select(Alarm).where(
                    Alarm.code == code, Alarm.subject == subject, Alarm.cleared_at.is_(None)
                )
            ).first()
            if row is not None:
                row.count += 1
                row.last_seen_at = utcnow()
                row.message = message
                return
            s.add(
                Alarm(
                    code=code,
                    subject=subject,
                    severity=SEVERITY.get(code, "warning"),
                    message=message,
                )
            )
            append_event(s, "alarm_raised", message, code=code, subject=subject)
        log.warning("alarm %s %s: %s", code, subject, message)
        self.on_change()
        self.on_raised(code)

    def clear(self, code: str, subject: str = "") -> None:
        with self._write() as s:
            rows = s.scalars(
                select(Alarm).where(
                    Alarm.code == code, Alarm.subject == subject, Alarm.cleared_at.is_(None)
                )
            ).all()
            for row in rows:
                row.cleared_at = utcnow()
                append_event(s, "alarm_cleared", row.message, code=code, subject=subject)
        if rows:
            log.info("alarm %s %s cleared", code, subject)
            self.on_change()

    def active(self) -> list[ActiveAlarm]:
        """The raised alarms: from memory until this book changes one (and read again
        after ACTIVE_MAX_AGE_S anyway, for changes made by `station alarms ack`)."""
        cached = self._active
        if (
            cached is not None
            and cached[0] == self._changes
            and time.monotonic() - cached[1] < ACTIVE_MAX_AGE_S
        ):
            return cached[2]
        seen = self._changes
        alarms = self.history(active_only=True)
        self._active = (seen, time.monotonic(), alarms)
        return alarms

    def history(self, *, active_only: bool = False, limit: int = 500) -> list[ActiveAlarm]:
        """Alarms newest first (or only the ones still raised)."""
        q = select(Alarm)
        if active_only:
            q = q.where(Alarm.cleared_at.is_(None)).order_by(Alarm.raised_at)
        else:
            q = q.order_by(Alarm.raised_at.desc()).limit(limit)
        with self.catalog.read() as s:
            rows = s.scalars(q).all()

        def iso(t: object) -> str | None:
            return t.isoformat() if t is not None else None  # type: ignore[attr-defined]

        return [
            ActiveAlarm(
                r.code,
                r.subject,
                r.severity,
                r.message,
                r.raised_at.isoformat(),
                r.id,
                r.count,
                r.acked_by,
                iso(r.acked_at),
                iso(r.cleared_at),
            )
            for r in rows
        ]

    def acknowledge(self, alarm_id: int, by: str) -> bool:
        """Someone on duty has seen it; it stays until its cause is fixed."""
        with self._write() as s:
            row = s.get(Alarm, alarm_id)
            if row is None or row.cleared_at is not None:
                return False
            if row.acked_at is None:
                row.acked_at, row.acked_by = utcnow(), by
                append_event(
                    s,
                    "alarm_acknowledged",
                    row.message,
                    actor=by,
                    code=row.code,
                    subject=row.subject,
                )
        self.on_change()
        return True
