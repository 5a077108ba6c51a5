"""Prometheus metrics, and the central API on a listener of its own."""

from __future__ import annotations

import httpx
from conftest import TOKEN, free_port
from prometheus_client.parser import text_string_to_metric_families

from station.sim.recorder import RecorderSpec

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_metrics_scraped_and_parsed_with_the_official_parser(station) -> None:
    rec = station.build(
        RecorderSpec(serial="MT00001", officer_no="990101", files=3, imp=1, size_mb=0.3)
    )
    station.dock(2, rec)
    station.wait_state(2, "complete")
    assert httpx.get(station.url("/metrics")).status_code == 401
    r = httpx.get(station.url("/metrics"), headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    files = station.api("/api/v1/files")
    assert fams["station_files_collected"].samples[0].value == files["total"]
    assert fams["station_bytes_collected"].samples[0].value == sum(
        i["size"] for i in files["items"]
    )
    assert fams["station_active_ports"].samples[0].value == 1
    states = {(s.labels["port"], s.labels["state"]) for s in fams["station_port_state"].samples}
    assert ("2", "complete") in states and ("1", "empty") in states
    disks = {s.labels["disk"] for s in fams["station_disk_free_bytes"].samples}
    assert disks == {str(d) for d in station.disks}
    assert "station_collection_errors" in fams and "station_verify_failures" in fams


def test_api_and_kiosk_on_separate_listeners(make_station) -> None:
    api_port = free_port()
    st = make_station(api={"host": "127.0.0.1", "port": api_port})
    kiosk, api = st.url(""), f"http://127.0.0.1:{api_port}"
    assert httpx.get(f"{api}/api/v1/status", headers=AUTH).status_code == 200
    assert httpx.get(f"{api}/metrics", headers=AUTH).status_code == 200
    assert httpx.get(f"{api}/").status_code == 404  # no touchscreen on the network listener
    assert httpx.get(f"{api}/ui/state").status_code == 404
    assert httpx.get(f"{kiosk}/").status_code == 200
    assert httpx.get(f"{kiosk}/ui/state").status_code == 200
    assert httpx.get(f"{kiosk}/api/v1/status", headers=AUTH).status_code == 404
