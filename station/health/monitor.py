"""The station's health checks: store disks, SMART, network, clock, the installed code.

`HealthMonitor` runs each check from the runtime's periodic loop (in a worker
thread), raises and clears their alarms, and keeps what the status shows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from station import eventlog
from station.catalog import Catalog, Event
from station.catalog.db import append_event
from station.config import StationConfig
from station.health import integrity
from station.health.alarms import AlarmBook
from station.health.clock import clock_status, clock_synchronized
from station.health.network import check_network
from station.store.disks import Store, StoreDisk
from station.store.identity import DiskBook
from station.store.recovery import recover
from station.store.smart import Health, HealthHistory, check_disk

log = logging.getLogger(__name__)


class HealthMonitor:
    """The disks, the network, the clock and the installed code, with their alarms."""

    def __init__(
        self,
        config: Callable[[], StationConfig],
        catalog: Catalog,
        store: Store,
        alarms: AlarmBook,
        *,
        notify: Callable[..., None],
        waiting_for_space: Callable[[], list[int]],
    ) -> None:
        cfg = config()
        self.config = config
        self.catalog = catalog
        self.store = store
        self.alarms = alarms
        self.notify = notify
        self.waiting_for_space = waiting_for_space
        self.disk_book = DiskBook(catalog, cfg.station.id, folder_disks=cfg.store.folder_disks)
        self.smart_history = HealthHistory(cfg.database_path.parent / "smart")
        self.disk_health: dict[str, Health] = {}
        self.network_online: bool | None = None
        self.clock_state: dict[str, Any] = {}
        self.log_head: dict[str, Any] = {}
        self._disk_refused: dict[str, str | None] = {}

    def disk_failed(self, disk: StoreDisk, why: str) -> None:
        """The store took `disk` out of use (`Store.on_failed`)."""
        self.alarms.raise_(
            "disk_unhealthy", f"store disk {disk.path} taken out of use: {why}", str(disk.path)
        )

    def health_word(self, d: StoreDisk) -> str:
        """missing, failed, degraded or healthy: one disk as the status shows it."""
        if not d.present():
            return "missing"
        if d.failed:
            return "failed"
        h = self.disk_health.get(str(d.path))
        return h.verdict if h and h.verdict != "unknown" else "healthy"

    def check_smart(self) -> None:
        """Grade each store disk from SMART; a failed disk is taken out of use."""
        for d in self.store.disks:
            if not d.present():
                continue
            try:
                h = check_disk(d.path, self.smart_history)
            except Exception:
                log.exception("SMART check of %s failed", d.path)
                continue
            self.disk_health[str(d.path)] = h
            where = f"store disk {d.path} ({h.model or h.device or 'no SMART'})"
            why = "; ".join(h.reasons)
            if h.verdict == "failed":
                self.alarms.raise_("disk_unhealthy", f"{where} is failing: {why}", str(d.path))
                if not d.failed:
                    self.store.take_out_of_use(d, f"SMART: {why}")
            elif h.verdict == "degraded":
                self.alarms.raise_("disk_degraded", f"{where} is degraded: {why}", str(d.path))
            elif h.verdict == "healthy":
                self.alarms.clear("disk_degraded", str(d.path))
                if not d.failed:
                    self.alarms.clear("disk_unhealthy", str(d.path))

    def check_network_and_clock(self) -> None:
        cfg = self.config()
        target = cfg.network.check
        online = check_network(target)
        if online != self.network_online:
            self.network_online = online
            self.notify()
        if online:
            self.alarms.clear("network_down")
        else:
            self.alarms.raise_(
                "network_down",
                f"the central server {target} is unreachable"
                if target
                else "no network link is up",
            )
        self.clock_state = clock_status()
        if cfg.alarms.check_clock:
            synced = clock_synchronized()
            if synced is False:
                self.alarms.raise_(
                    "clock_unsynced",
                    "the station clock is not synchronised (NTP): recorder clocks are set from it",
                )
            elif synced:
                self.alarms.clear("clock_unsynced")

    def anchor_log(self) -> None:
        """Keep the event chain's head on the data disks (and in the status for the central
        server), so deleting the newest entries of the log shows (`station audit verify`)."""
        try:
            with self.catalog.read() as s:  # the rowid's maximum: no scan while nothing changed
                last = s.scalar(select(func.max(Event.id))) or 0
            if last != self.log_head.get("last_id"):
                disks = [d.path for d in self.store.disks if d.present()]
                station_id = self.config().station.id
                self.log_head = eventlog.write_anchors(self.catalog, disks, station_id)
        except Exception:
            log.exception("the log anchor could not be written")

    def check_integrity(self, config_path: Path | None) -> None:
        """The installed code and configuration against the install-time manifest."""
        manifest = integrity.default_manifest()
        try:
            found = integrity.check(manifest, config_path)
        except integrity.ManifestError as e:
            log.info("%s", e)
            return
        if not found:
            self.alarms.clear("integrity")
            return
        summary = found.summary()
        log.error("integrity: %s", summary)
        self.alarms.raise_("integrity", f"the installed station differs from {manifest}: {summary}")
        with self.catalog.write() as s:
            append_event(
                s, "integrity_mismatch", summary[:4000], changed=len(found.changed),
                missing=len(found.missing), added=len(found.added), config=found.config,
            )  # fmt: skip

    def identify_disks(self) -> None:
        """Know each configured disk by its marker; one that is not this station's (an empty
        mount point, say) is never written to (station.store.identity)."""
        for d in self.store.disks:
            if d.present():
                continue
            was_present = d.identity is not None  # and lost it: remounted, swapped
            why = self.disk_book.identify(d)
            if why is None:
                d.prepare()
                if was_present or self._disk_refused.get(str(d.path)):  # back: settle it
                    report = recover(self.catalog, [d])
                    for line in report.lines():
                        log.warning("recovery of %s: %s", d.path, line)
            elif why != self._disk_refused.get(str(d.path)):
                log.warning("store disk %s not used: %s", d.path, why)
            self._disk_refused[str(d.path)] = why

    def check_disks(self) -> None:
        self.identify_disks()
        for d in self.store.disks:
            if d.present():
                self.alarms.clear("disk_missing", str(d.path))
            else:
                why = self._disk_refused.get(str(d.path)) or "its marker is gone (unmounted?)"
                self.alarms.raise_(
                    "disk_missing", f"store disk {d.path} is not usable: {why}", str(d.path)
                )
        if self.store.pick(0) is not None and not self.waiting_for_space():
            # a 0-byte file fitting is not enough while a recorder waits for room for its
            # next file: that collector clears the alarm itself once the file fits
            self.alarms.clear("storage_full")
        saved = self.catalog.get_state("active_disk")
        if saved != str(self.store.active):
            self.catalog.set_state("active_disk", str(self.store.active))
