"""Prometheus metrics, computed at scrape time from the station's own state and catalog."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select

from station.catalog import Event, StoredFile

if TYPE_CHECKING:
    from station.catalog import Catalog
    from station.health.alarms import AlarmBook
    from station.ingest.collector import Slot
    from station.store.disks import Store
    from station.voice import Announcer


class Measured(Protocol):
    """What a scrape reads of the running station (`station.runtime.Station` is one)."""

    catalog: Catalog
    alarms: AlarmBook
    announcer: Announcer
    store: Store
    slots: dict[int, Slot]
    network_online: bool | None


FAILURE_EVENTS = ("file_failed", "collection_failed", "recorder_auth_failed")


class StationCollector(Collector):
    """One scrape: a few indexed catalog counts plus the live slots, disks and alarms."""

    def __init__(self, station: Measured) -> None:
        self.station = station

    def collect(self) -> Iterator[Metric]:
        st = self.station
        with st.catalog.read() as s:
            files, size = s.execute(
                select(func.count(), func.coalesce(func.sum(StoredFile.size), 0))
            ).one()
            by_kind = dict(
                s.execute(
                    select(Event.kind, func.count())
                    .where(
                        Event.kind.in_(
                            (*FAILURE_EVENTS, "verify_failed", "scrub_failed", "file_deleted")
                        )
                    )
                    .group_by(Event.kind)
                ).all()
            )
        yield CounterMetricFamily("station_files_collected", "Files collected (ever)", value=files)
        yield CounterMetricFamily("station_bytes_collected", "Bytes collected (ever)", value=size)
        yield CounterMetricFamily(
            "station_collection_errors",
            "Files or recorders that could not be collected",
            value=sum(by_kind.get(k, 0) for k in FAILURE_EVENTS),
        )
        yield CounterMetricFamily(
            "station_verify_failures",
            "Stored bytes that did not verify (copy or scrub)",
            value=by_kind.get("verify_failed", 0) + by_kind.get("scrub_failed", 0),
        )
        yield CounterMetricFamily(
            "station_files_deleted",
            "Files deleted (retention or people)",
            value=by_kind.get("file_deleted", 0),
        )

        ports = GaugeMetricFamily(
            "station_port_state", "1 for the state each port is in", labels=["port", "state"]
        )
        pending = GaugeMetricFamily(
            "station_files_pending", "Files still to collect from docked recorders"
        )
        waiting = 0
        for slot in st.slots.values():
            ports.add_metric([str(slot.port), slot.state], 1)
            if slot.state == "collecting":
                waiting += max(0, slot.files_total - slot.files_done)
        pending.add_metric([], waiting)
        yield ports
        yield pending
        yield GaugeMetricFamily(
            "station_active_ports",
            "Ports with a device docked",
            value=sum(s.state != "empty" for s in st.slots.values()),
        )

        free = GaugeMetricFamily("station_disk_free_bytes", "Free bytes", labels=["disk"])
        total = GaugeMetricFamily("station_disk_total_bytes", "Size", labels=["disk"])
        usable = GaugeMetricFamily(
            "station_disk_usable", "1 if the disk takes files", labels=["disk"]
        )
        for d in st.store.disks:
            t, f = d.usage()
            free.add_metric([str(d.path)], f)
            total.add_metric([str(d.path)], t)
            usable.add_metric([str(d.path)], int(d.present() and not d.failed))
        yield free
        yield total
        yield usable

        alarms = GaugeMetricFamily(
            "station_alarm", "1 for each raised alarm", labels=["code", "severity", "subject"]
        )
        for a in st.alarms.active():
            alarms.add_metric([a.code, a.severity, a.subject], 1)
        yield alarms
        yield GaugeMetricFamily(
            "station_voice_queue", "Announcements waiting", value=len(st.announcer.pending())
        )
        link = getattr(st, "platform", None)
        if link is not None:
            depth = GaugeMetricFamily(
                "station_outbox_depth", "Outbox entries the platform has not acknowledged",
                labels=["kind"],
            )  # fmt: skip
            for kind, n in link.depth().items():
                depth.add_metric([kind], n)
            yield depth
            yield GaugeMetricFamily(
                "station_platform_connected",
                "1 when the last exchange with the platform succeeded",
                value=1 if link.last_error is None and link.registered else 0,
            )
        with st.catalog.read() as s:
            central = dict(
                s.execute(
                    select(StoredFile.central_state, func.count())
                    .where(StoredFile.deleted_at.is_(None))
                    .group_by(StoredFile.central_state)
                ).all()
            )
        files_central = GaugeMetricFamily(
            "station_files_central", "Stored files by central copy state", labels=["state"]
        )
        for state in ("pending", "verified", "failed"):
            n = central.get(state, 0) + (central.get(None, 0) if state == "pending" else 0)
            files_central.add_metric([state], n)
        yield files_central
        online = st.network_online
        yield GaugeMetricFamily(
            "station_network_online", "1 when the network check passes", value=1 if online else 0
        )


def registry_for(station: Measured) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StationCollector(station))
    return reg
