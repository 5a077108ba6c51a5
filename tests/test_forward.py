"""Forwarding to a central S3-compatible store: a real server (moto) over real HTTP.

The stored files come from a real station run: simulated recorders are docked,
collected and cleared, the station is stopped, and the forwarder then works
on that catalog and those disks against moto's S3 server on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from conftest import StationProc, free_port, sha256_file, wait_for, write_config
from pydantic import ValidationError

from station.catalog import Catalog, ForwardObject
from station.config import ConfigError, StationConfig, parse_config
from station.forward import (
    ForwardConfig,
    Forwarder,
    ForwardState,
    alternate_key,
    import_forward_db,
    in_window,
    parse_window,
    seconds_until_open,
)
from station.health.alarms import AlarmBook
from station.sim.recorder import RecorderSpec

moto_server = pytest.importorskip("moto.server")

wired = pytest.mark.skipif(
    "forward" not in StationConfig.model_fields, reason="[forward] is not in StationConfig yet"
)

STATION_ID = "TEST-0001"
NOON = dt.datetime(2026, 11, 21, 12, 0)
MiB = 1024 * 1024


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _quiet_werkzeug() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server, in this process, listening on loopback."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass
class Collected:
    root: Path
    db: Path
    files: list[dict[str, Any]]  # the catalog's stored files


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collected]:
    """A real station collects two recorders (large videos, small files), then stops."""
    root = tmp_path_factory.mktemp("forward-station")
    for d in ("disk1", "disk2", "bus"):
        (root / d).mkdir()
    port = free_port()
    st = StationProc(root, write_config(root, port, store={"scrub_mb_s": 0.0}), port)
    st.start()
    try:
        big = RecorderSpec(serial="S000001", officer_no="700001", files=3, imp=1, size_mb=16)
        small = RecorderSpec(serial="S000002", officer_no="700002", files=5, imp=0, size_mb=1)
        st.dock(1, st.build(big, seed=11))
        st.dock(2, st.build(small, seed=12))
        st.wait_state(1, "complete")
        st.wait_state(2, "complete")
    finally:
        st.stop()
    con = sqlite3.connect(st.db)
    con.row_factory = sqlite3.Row
    rows = con.execute(
        "SELECT f.id, f.disk, f.rel_path, f.size, f.sha256, f.level, f.important, f.name, "
        "o.officer_no, r.serial FROM files f JOIN officers o ON o.id = f.officer_id "
        "JOIN recorders r ON r.id = f.recorder_id WHERE f.deleted_at IS NULL ORDER BY f.id"
    ).fetchall()
    con.close()
    files = [dict(r) for r in rows]
    assert sum(1 for f in files if f["size"] > 5 * MiB) >= 2  # multipart material
    yield Collected(root, st.db, files)


def copy_catalog(collected: Collected, path: Path) -> Catalog:
    """A copy of the collected station's catalog (the forwarder's state lives in it)."""
    src, dst = sqlite3.connect(collected.db), sqlite3.connect(path)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return Catalog(path)


@pytest.fixture
def catalog(collected: Collected, tmp_path: Path) -> Iterator[Catalog]:
    """Each test's own catalog (the same files and disks): its forwarding state starts empty."""
    cat = copy_catalog(collected, tmp_path / "catalog.db")
    yield cat
    cat.close()


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"fleet-{uuid.uuid4().hex[:12]}"
    s3(s3_endpoint).create_bucket(Bucket=name)
    return name


def s3(endpoint: str) -> Any:
    """A plain client of our own, to look at the server independently of the forwarder."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="central",
        aws_secret_access_key="central-secret",
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def fconfig(endpoint: str, bucket: str, **kw: Any) -> ForwardConfig:
    values: dict[str, Any] = {
        "enabled": True,
        "endpoint_url": endpoint,
        "bucket": bucket,
        "access_key_id": "station-0001",
        "secret_access_key": "station-secret-do-not-log",
        "part_size_mb": 5,
        "poll_interval_s": 0.2,
    }
    values.update(kw)
    return ForwardConfig(**values)


def forwarder(
    catalog: Catalog,
    config: ForwardConfig,
    state: Path,
    *,
    clock: dt.datetime = NOON,
    stop: threading.Event | None = None,
    alarms: AlarmBook | None = None,
) -> Forwarder:
    return Forwarder(
        config,
        catalog,
        STATION_ID,
        clock=lambda: clock,
        stop=stop or threading.Event(),
        alarms=alarms,
        state_path=state,
    )


def drain(fw: Forwarder, rounds: int = 50) -> None:
    """Run rounds until nothing is pending (or a round asks to back off)."""
    for _ in range(rounds):
        fw.cycle()
        if not fw.pending():
            return
    raise AssertionError(f"still pending after {rounds} rounds: {fw.status()}")


class Calls:
    """The S3 operations a client makes, with their parameters (botocore's event hooks)."""

    def __init__(self, client: Any) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        client.meta.events.register("provide-client-params.s3.*", self._seen)

    def _seen(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.name, {k: v for k, v in params.items() if k != "Body"}))

    def of(self, op: str) -> list[dict[str, Any]]:
        return [p for name, p in self.calls if name == op]


def key_of(f: dict[str, Any]) -> str:
    return f"{STATION_ID}/{f['rel_path']}"


def largest(collected: Collected) -> dict[str, Any]:
    return max(collected.files, key=lambda f: f["size"])


# --- configuration and pure parts -----------------------------------------------------------


def test_config_is_off_by_default_and_strict() -> None:
    c = ForwardConfig()
    assert c.enabled is False and c.part_size_mb == 16 and c.verify is True
    with pytest.raises(ValidationError, match="endpoint_url"):
        ForwardConfig(enabled=True, bucket="fleet", access_key_id="a", secret_access_key="b")
    with pytest.raises(ValidationError):
        ForwardConfig(part_size_mb=4)  # S3's smallest part is 5 MiB
    with pytest.raises(ValidationError):
        ForwardConfig(window="25:00-06:00")
    with pytest.raises(ValidationError):
        ForwardConfig(window="06:00-06:00")
    with pytest.raises(ValidationError):
        ForwardConfig(prefix="{officer}/")
    with pytest.raises(ValidationError):
        ForwardConfig(bucket="Bad_Bucket")
    with pytest.raises(ValidationError, match=r"unknown|extra"):
        ForwardConfig(part_size=16)
    c = ForwardConfig(
        enabled=True,
        endpoint_url="https://s3.example",
        bucket="fleet",
        access_key_id="a",
        secret_access_key="hunter2-hunter2",
        prefix="stations/{station_id}/",
    )
    assert "hunter2" not in repr(c) and "hunter2" not in str(c.model_dump())
    assert c.key_prefix("ST-9") == "stations/ST-9/"


def test_window_wraps_midnight() -> None:
    night = parse_window("22:00-06:00")
    assert in_window(night, dt.time(23, 0)) and in_window(night, dt.time(5, 59))
    assert not in_window(night, dt.time(6, 0)) and not in_window(night, dt.time(12, 0))
    early = parse_window("01:00-06:00")
    assert in_window(early, dt.time(1, 0)) and not in_window(early, dt.time(0, 59))
    assert in_window(None, dt.time(12, 0))
    assert seconds_until_open(early, dt.datetime(2026, 1, 1, 0, 30)) == 1800
    assert seconds_until_open(early, dt.datetime(2026, 1, 1, 7, 0)) == 18 * 3600
    assert seconds_until_open(early, dt.datetime(2026, 1, 1, 2, 0)) == 0


def test_alternate_key_keeps_the_extension() -> None:
    assert (
        alternate_key("S/1/2/2026-01-01/a.AVI", "ab" * 32)
        == "S/1/2/2026-01-01/a~abababababababab.AVI"
    )
    assert alternate_key("S/x", "cd" * 32) == "S/x~cdcdcdcdcdcdcdcd"


# --- against the server -----------------------------------------------------------------------


def test_forwards_every_file_verified_with_metadata(
    collected: Collected, catalog: Catalog, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    fw = forwarder(catalog, fconfig(s3_endpoint, bucket), tmp_path / "forward.db")
    calls = Calls(fw.client)
    assert fw.pending_count() == len(collected.files)
    first = fw.pending()[0]
    assert first.important  # IMP footage goes first
    drain(fw)

    assert fw.pending_count() == 0
    client = s3(s3_endpoint)
    listed = client.list_objects_v2(Bucket=bucket)
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(map(key_of, collected.files))
    multipart = 0
    for f in collected.files:
        key = key_of(f)
        assert key.startswith(f"{STATION_ID}/{f['officer_no']}/{f['serial']}/")
        obj = client.get_object(Bucket=bucket, Key=key)
        body = obj["Body"].read()
        assert len(body) == f["size"]
        assert hashlib.sha256(body).hexdigest() == f["sha256"]  # the bytes themselves
        meta = obj["Metadata"]
        assert meta["sha256"] == f["sha256"]
        assert meta["officer-no"] == f["officer_no"] and meta["serial"] == f["serial"]
        assert meta["station"] == STATION_ID
        assert meta["level"] == f["level"]
        assert meta["card-path"].endswith(f["name"])
        assert meta["important"] == ("true" if f["important"] else "false")
        if f["size"] > 5 * MiB:
            multipart += 1
            assert obj["ETag"].strip('"').endswith(f"-{-(-f['size'] // (5 * MiB))}")
        assert fw.forwarded(f["id"])
        # the local copy is untouched: retention stays in charge of it
        assert sha256_file(Path(f["disk"]) / f["rel_path"]) == f["sha256"]
    assert multipart >= 2
    assert {p["PartNumber"] for p in calls.of("UploadPart")} >= {1, 2, 3}
    # every part carried its SHA-256 and its MD5 (moto supports additional checksums)
    for p in calls.of("UploadPart"):
        assert p["ChecksumSHA256"] and p["ContentMD5"]
    assert all(p["ChecksumAlgorithm"] == "SHA256" for p in calls.of("CreateMultipartUpload"))

    st = fw.status()
    assert st["pending_files"] == 0 and st["forwarded_files"] == len(collected.files)
    assert st["forwarded_bytes"] == sum(f["size"] for f in collected.files)
    assert "secret" not in repr(st)
    # the system log says what left the station
    forwarded = catalog_events(catalog, "file_forwarded")
    assert len(forwarded) >= len(collected.files)

    # a second round sends nothing
    before = len(calls.calls)
    fw.cycle()
    assert [n for n, _ in calls.calls[before:] if n in ("PutObject", "UploadPart")] == []


def catalog_events(catalog: Catalog, kind: str) -> list[tuple]:
    con = sqlite3.connect(catalog.path)
    try:
        return con.execute("SELECT file_id, message FROM events WHERE kind = ?", (kind,)).fetchall()
    finally:
        con.close()


def test_resume_after_stop_sends_only_the_missing_parts(
    collected: Collected, catalog: Catalog, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    state = tmp_path / "forward.db"
    stop = threading.Event()
    fw1 = forwarder(catalog, fconfig(s3_endpoint, bucket), state, stop=stop)
    big = fw1.pending()[0]
    assert big.size > 2 * 5 * MiB  # three parts or more
    sent: list[int] = []

    def after_part(http_response: Any, parsed: Any, model: Any, **_: Any) -> None:
        sent.append(1)
        if len(sent) == 2:
            stop.set()  # stop after the second part is acknowledged

    fw1.client.meta.events.register("after-call.s3.UploadPart", after_part)
    fw1.cycle()
    assert stop.is_set()
    key = f"{STATION_ID}/{big.rel_path}"
    client = s3(s3_endpoint)
    assert "Contents" not in client.list_objects_v2(Bucket=bucket)  # nothing completed
    con = sqlite3.connect(catalog.path)  # the forwarder's state is in the catalog
    (upload_id,) = con.execute(
        "SELECT upload_id FROM forward_objects WHERE key = ?", (key,)
    ).fetchone()
    recorded = con.execute(
        "SELECT part_number FROM forward_parts WHERE upload_id = ?", (upload_id,)
    )
    assert sorted(n for (n,) in recorded) == [1, 2]
    con.close()
    listed = client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)["Parts"]
    assert [p["PartNumber"] for p in listed] == [1, 2]
    etags_before = {p["PartNumber"]: p["ETag"] for p in listed}
    assert fw1.status()["pending_files"] == len(collected.files)

    fw2 = forwarder(catalog, fconfig(s3_endpoint, bucket), state)  # a restart
    calls = Calls(fw2.client)
    assert fw2.forward(fw2.pending()[0]) == key
    parts = [p["PartNumber"] for p in calls.of("UploadPart") if p["Key"] == key]
    assert parts == list(range(3, -(-big.size // (5 * MiB)) + 1))  # 1 and 2 not sent again
    assert calls.of("ListParts") and not calls.of("CreateMultipartUpload")
    done = calls.of("CompleteMultipartUpload")[0]["MultipartUpload"]["Parts"]
    assert {p["PartNumber"]: p["ETag"] for p in done[:2]} == etags_before
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == big.sha256
    assert fw2.forwarded(big.id)


def test_upload_of_a_file_deleted_meanwhile_is_abandoned(
    collected: Collected, catalog: Catalog, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    state = tmp_path / "forward.db"
    stop = threading.Event()
    fw1 = forwarder(catalog, fconfig(s3_endpoint, bucket), state, stop=stop)
    fw1.client.meta.events.register("after-call.s3.UploadPart", lambda **_: stop.set())
    big = fw1.pending()[0]
    fw1.cycle()  # one part sent, then stopped
    client = s3(s3_endpoint)
    assert len(client.list_multipart_uploads(Bucket=bucket)["Uploads"]) == 1
    con = sqlite3.connect(catalog.path)
    try:
        with con:  # retention tombstones it (the bytes stay: other tests use them)
            con.execute(
                "UPDATE files SET deleted_at = '2026-11-21 00:00:00' WHERE id = ?", (big.id,)
            )
        fw2 = forwarder(catalog, fconfig(s3_endpoint, bucket), state)
        drain(fw2)
        assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")  # aborted
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
        assert f"{STATION_ID}/{big.rel_path}" not in keys
        assert len(keys) == len(collected.files) - 1
        assert fw2.status()["refused"] == []  # deleted is not corrupt: no alarm
    finally:
        with con:
            con.execute("UPDATE files SET deleted_at = NULL WHERE id = ?", (big.id,))
        con.close()


def test_resume_after_kill_mid_upload(
    collected: Collected, catalog: Catalog, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    """SIGKILL a forwarding process mid-file (no chance to tidy up); the next one resumes."""
    state = tmp_path / "forward.db"
    script = textwrap.dedent(
        f"""
        import datetime as dt, threading
        from pathlib import Path
        from station.catalog import Catalog
        from station.forward import ForwardConfig, Forwarder
        cfg = ForwardConfig(enabled=True, endpoint_url={s3_endpoint!r}, bucket={bucket!r},
                            access_key_id="a", secret_access_key="b", part_size_mb=5,
                            bandwidth_mb_s=6)
        fw = Forwarder(cfg, Catalog(Path({str(catalog.path)!r})), {STATION_ID!r},
                       clock=lambda: dt.datetime(2026, 1, 1, 12), stop=threading.Event(),
                       state_path=Path({str(state)!r}))
        fw.run()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)
    client = s3(s3_endpoint)
    try:

        def two_parts() -> tuple[str, str, list[dict[str, Any]]] | None:
            for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
                parts = client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
                if len(parts.get("Parts", [])) >= 2:
                    return u["Key"], u["UploadId"], parts["Parts"]
            assert proc.poll() is None, "the forwarder exited"
            return None

        key, upload_id, _ = wait_for(two_parts, 60, "two parts on the server")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    on_server = client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)["Parts"]
    have = {p["PartNumber"] for p in on_server}

    fw = forwarder(catalog, fconfig(s3_endpoint, bucket), state)
    calls = Calls(fw.client)
    drain(fw)
    resent = {p["PartNumber"] for p in calls.of("UploadPart") if p["Key"] == key}
    assert not have & resent, f"parts {have & resent} were sent again"
    f = next(f for f in collected.files if key_of(f) == key)
    assert have | resent == set(range(1, -(-f["size"] // (5 * MiB)) + 1))
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    for f in collected.files:
        body = client.get_object(Bucket=bucket, Key=key_of(f))["Body"].read()
        assert hashlib.sha256(body).hexdigest() == f["sha256"]


def test_file_that_no_longer_matches_its_hash_is_not_sent(
    collected: Collected, catalog: Catalog, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    small = next(f for f in collected.files if f["size"] < 5 * MiB and f["size"] > 1000)
    big = largest(collected)
    alarms = AlarmBook(catalog)
    fw = forwarder(catalog, fconfig(s3_endpoint, bucket), tmp_path / "forward.db", alarms=alarms)
    damaged = [Path(f["disk"]) / f["rel_path"] for f in (small, big)]
    originals = []
    try:
        for path in damaged:
            with open(path, "r+b") as fh:
                fh.seek(777)
                b = fh.read(1)
                originals.append(b)
                fh.seek(777)
                fh.write(bytes([b[0] ^ 0xFF]))
        drain(fw)
        client = s3(s3_endpoint)
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
        assert key_of(small) not in keys and key_of(big) not in keys
        assert len(keys) == len(collected.files) - 2  # the others went
        assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
        assert not fw.forwarded(small["id"]) and not fw.forwarded(big["id"])
        refused = {r["file_id"]: r["error"] for r in fw.status()["refused"]}
        assert set(refused) == {small["id"], big["id"]}
        assert "catalog says" in refused[small["id"]]
        active = {(a.code, a.subject) for a in alarms.active()}
        assert {("store_corrupt", str(p)) for p in damaged} <= active
        assert {fid for fid, _ in catalog_events(catalog, "forward_refused")} >= {
            small["id"],
            big["id"],
        }
        fw.cycle()  # a refused file is not tried again at once
        assert len(client.list_objects_v2(Bucket=bucket)["Contents"]) == len(keys)
    finally:
        for path, b in zip(damaged, originals, strict=True):
            with open(path, "r+b") as fh:
                fh.seek(777)
                fh.write(b)
        for a in AlarmBook(catalog).active():
            AlarmBook(catalog).clear(a.code, a.subject)


def test_bandwidth_limit_is_respected(
    collected: Collected, catalog: Catalog, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    rate = 4.0  # MB/s
    fw = forwarder(catalog, fconfig(s3_endpoint, bucket, bandwidth_mb_s=rate), tmp_path / "f.db")
    f = next(c for c in fw.pending() if c.id == largest(collected)["id"])
    t0 = time.monotonic()
    fw.forward(f)
    elapsed = time.monotonic() - t0
    ideal = f.size / (rate * 1e6)
    assert elapsed >= ideal * 0.8, (elapsed, ideal)
    assert elapsed <= ideal * 3 + 10, (elapsed, ideal)
    assert fw.bytes_sent == f.size


def test_nothing_is_sent_outside_the_window(
    collected: Collected, catalog: Catalog, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    cfg = fconfig(s3_endpoint, bucket, window="01:00-06:00")
    fw = forwarder(catalog, cfg, tmp_path / "forward.db", clock=NOON)
    calls = Calls(fw.client)
    wait = fw.cycle()
    assert wait > 0
    assert calls.calls == []  # not even a HEAD
    assert "Contents" not in s3(s3_endpoint).list_objects_v2(Bucket=bucket)
    st = fw.status()
    assert st["state"] == "outside_window" and st["in_window"] is False
    assert st["pending_files"] == len(collected.files)

    # the same station at 02:00 forwards (a window across midnight works the same way)
    at_night = forwarder(catalog, cfg, tmp_path / "forward.db", clock=NOON.replace(hour=2))
    drain(at_night)
    assert len(s3(s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]) == len(collected.files)


def test_lost_state_adopts_what_the_store_has(
    collected: Collected, catalog: Catalog, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    drain(forwarder(catalog, fconfig(s3_endpoint, bucket), tmp_path / "one.db"))
    fresh = copy_catalog(collected, tmp_path / "fresh.db")  # a catalog without that state
    try:
        fw = forwarder(fresh, fconfig(s3_endpoint, bucket), tmp_path / "two.db")  # a fresh state
        calls = Calls(fw.client)
        drain(fw)
        assert not calls.of("PutObject") and not calls.of("UploadPart")
        assert all(fw.forwarded(f["id"]) for f in collected.files)
    finally:
        fresh.close()


def test_md5_only_servers_and_key_conflicts(
    collected: Collected, catalog: Catalog, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    client = s3(s3_endpoint)
    big = largest(collected)
    client.put_object(Bucket=bucket, Key=key_of(big), Body=b"somebody else's object")
    fw = forwarder(catalog, fconfig(s3_endpoint, bucket, checksum="md5"), tmp_path / "f.db")
    calls = Calls(fw.client)
    drain(fw)
    assert not any("ChecksumSHA256" in p for p in calls.of("UploadPart"))
    assert all(p["ContentMD5"] for p in calls.of("UploadPart"))
    # the other object is left alone; ours goes to its content-addressed alternate key
    assert client.get_object(Bucket=bucket, Key=key_of(big))["Body"].read() == (
        b"somebody else's object"
    )
    alt = alternate_key(key_of(big), big["sha256"])
    body = client.get_object(Bucket=bucket, Key=alt)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == big["sha256"]
    assert fw.forwarded(big["id"])


def test_run_loop_stops_promptly_mid_part(
    collected: Collected, catalog: Catalog, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    stop = threading.Event()
    cfg = fconfig(s3_endpoint, bucket, bandwidth_mb_s=1)
    fw = forwarder(catalog, cfg, tmp_path / "forward.db", stop=stop)
    t = threading.Thread(target=fw.run)
    t.start()
    wait_for(lambda: fw.bytes_sent > 1_000_000, 30, "sending to start")
    t0 = time.monotonic()
    stop.set()
    t.join(15)
    assert not t.is_alive() and time.monotonic() - t0 < 5  # no waiting for a 5 MiB part at 1 MB/s
    st = fw.status()
    assert st["state"] == "stopped" and st["last_error"] is None and fw.failures == 0


# --- upgrading a station that kept its state in forward.db --------------------------------------

# The schema of `forward.db` as the forwarder wrote it before revision 0011.
OLD_FORWARD_DB = """
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    file_id INTEGER NOT NULL, state TEXT NOT NULL, upload_id TEXT, part_size INTEGER,
    mode TEXT, etag TEXT, checksum TEXT, attempts INTEGER NOT NULL DEFAULT 0, error TEXT,
    started_at TEXT, updated_at TEXT, finished_at TEXT
);
CREATE INDEX IF NOT EXISTS ix_objects_sha ON objects (sha256);
CREATE INDEX IF NOT EXISTS ix_objects_file ON objects (file_id);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL, part_number INTEGER NOT NULL, size INTEGER NOT NULL,
    etag TEXT NOT NULL, sha256 TEXT NOT NULL, md5 TEXT NOT NULL,
    PRIMARY KEY (upload_id, part_number)
);
"""


def _old_forward_db(path: Path, objects: list[dict[str, Any]], parts: list[tuple]) -> None:
    """Write `forward.db` as the old forwarder did, in a process that dies without closing
    it (its last transactions are still in the WAL, as after a power cut or kill -9)."""
    script = textwrap.dedent(
        f"""
        import os, sqlite3
        db = sqlite3.connect({str(path)!r}, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.executescript({OLD_FORWARD_DB!r})
        for row in {objects!r}:
            cols = ", ".join(row)
            db.execute(f"INSERT INTO objects ({{cols}}) VALUES ({{', '.join('?' * len(row))}})",
                       tuple(row.values()))
        for part in {parts!r}:
            db.execute("INSERT INTO parts VALUES (?, ?, ?, ?, ?, ?)", part)
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    assert path.with_name(path.name + "-wal").stat().st_size > 0


def _forward_rows(catalog: Catalog) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    con = sqlite3.connect(catalog.path)
    con.row_factory = sqlite3.Row
    try:
        objects = [dict(r) for r in con.execute("SELECT * FROM forward_objects ORDER BY key")]
        parts = [
            dict(r)
            for r in con.execute("SELECT * FROM forward_parts ORDER BY upload_id, part_number")
        ]
    finally:
        con.close()
    return objects, parts


def test_upgrade_imports_the_old_forward_db_once(
    collected: Collected, catalog: Catalog, tmp_path: Path
) -> None:
    """A station upgraded from forward.db keeps every row of it, imported once."""
    catalog.migrate()
    small = [f for f in collected.files if f["size"] <= 5 * MiB]
    big = largest(collected)
    done, refused = small[0], small[1]
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    old_objects = [
        {
            "key": key_of(done), "sha256": done["sha256"], "size": done["size"],
            "file_id": done["id"], "state": "done", "mode": "put", "etag": '"e-done"',
            "checksum": "c2hhMjU2", "attempts": 1, "error": None,
            "started_at": "2026-11-21T01:00:00+00:00", "updated_at": "2026-11-21T01:00:05+00:00",
            "finished_at": "2026-11-21T01:00:05+00:00",
        },
        {
            "key": key_of(big), "sha256": big["sha256"], "size": big["size"],
            "file_id": big["id"], "state": "uploading", "upload_id": "UPLOAD-1",
            "part_size": 5 * MiB, "mode": "sha256", "attempts": 2, "error": "timed out",
            "started_at": "2026-11-21T01:01:00+00:00", "updated_at": "2026-11-21T01:02:00+00:00",
        },
        {
            "key": key_of(refused), "sha256": refused["sha256"], "size": refused["size"],
            "file_id": refused["id"], "state": "refused", "error": "the catalog says x",
            "finished_at": now.isoformat(), "updated_at": now.isoformat(),
        },
        {  # another file's object (no longer in this catalog), never adopted
            "key": f"{STATION_ID}/gone/a.AVI", "sha256": "ab" * 32, "size": 7, "file_id": 999999,
            "state": "bad",
        },
    ]  # fmt: skip
    old_parts = [
        ("UPLOAD-1", 1, 5 * MiB, '"p1"', "c2hhLTE=", "11" * 16),
        ("UPLOAD-1", 2, 5 * MiB, '"p2"', "c2hhLTI=", "22" * 16),
    ]
    old = tmp_path / "forward.db"
    _old_forward_db(old, old_objects, old_parts)
    config = ForwardConfig(
        enabled=True,
        endpoint_url="http://127.0.0.1:9",  # nothing is sent: only the state is looked at
        bucket="footage",
        access_key_id="a",
        secret_access_key="b",
        part_size_mb=5,
    )

    fw = forwarder(catalog, config, old)
    objects, parts = _forward_rows(catalog)
    assert [o["key"] for o in objects] == sorted(o["key"] for o in old_objects)
    by_key = {o["key"]: o for o in objects}
    for want in old_objects:
        got = by_key[want["key"]]
        for k, v in want.items():
            if k.endswith("_at"):
                stored = dt.datetime.fromisoformat(got[k]).replace(tzinfo=dt.UTC)
                assert stored == dt.datetime.fromisoformat(v), (want["key"], k)
            else:
                assert got[k] == v, (want["key"], k)
    assert [tuple(p.values()) for p in parts] == old_parts
    # the old file is out of the way, with its WAL, under a name that says what happened
    assert not old.exists() and not old.with_name("forward.db-wal").exists()
    assert (tmp_path / "forward.db.imported").is_file()
    # and the forwarder goes by what it imported
    assert fw.forwarded(done["id"]) and not fw.forwarded(big["id"])
    pending = {f.id for f in fw.pending()}
    assert done["id"] not in pending and refused["id"] not in pending  # sent / held
    assert big["id"] in pending
    assert fw.status()["refused"] == [
        {"file_id": refused["id"], "key": key_of(refused), "error": "the catalog says x"}
    ]

    # a crash after the import's commit, before the rename: the next start imports again
    old.write_bytes((tmp_path / "forward.db.imported").read_bytes())
    forwarder(catalog, config, old)
    assert _forward_rows(catalog) == (objects, parts)  # nothing doubled, nothing changed
    assert not old.exists() and (tmp_path / "forward.db.imported.1").is_file()
    forwarder(catalog, config, old)  # and later starts find nothing to import
    assert _forward_rows(catalog) == (objects, parts)


def test_state_tombstones_an_abandoned_upload(tmp_path: Path) -> None:
    """A dropped row is kept (state `dropped`) but reads as absent; reused, it starts afresh."""
    cat = Catalog(tmp_path / "catalog.db")
    cat.migrate()
    try:
        state = ForwardState(cat)
        state.put("S/k", sha256="aa" * 32, size=9, file_id=1, state="uploading", upload_id="U")
        state.failed("S/k", "timed out")
        state.add_part("U", 1, 9, '"e"', "c2hh", "11" * 16)
        state.drop("S/k", "its file is no longer stored")
        assert state.get("S/k") is None and state.objects() == []
        with cat.read() as s:
            tomb = s.get(ForwardObject, "S/k")
        assert tomb is not None and tomb.state == "dropped" and tomb.upload_id is None
        assert tomb.error == "its file is no longer stored" and tomb.attempts == 1
        state.put("S/k", sha256="bb" * 32, size=3, file_id=2, state="uploading", mode="put")
        row = state.get("S/k")
        assert row is not None and row.sha256 == "bb" * 32 and row.mode == "put"
        assert row.attempts == 0 and row.error is None and row.finished_at is None
        state.drop_parts("U")
        assert state.parts("U") == {}
    finally:
        cat.close()


def test_unreadable_forward_db_is_left_alone(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "catalog.db")
    cat.migrate()
    old = tmp_path / "forward.db"
    old.write_bytes(b"not a database, " * 512)
    try:
        assert import_forward_db(cat, old) == 0
        assert old.read_bytes() == b"not a database, " * 512  # kept for a person to look at
        assert ForwardState(cat).objects() == []
    finally:
        cat.close()


# --- wired into the station ---------------------------------------------------------------------


@wired
def test_forward_section_of_the_station_config() -> None:
    assert parse_config({}).forward.enabled is False  # off by default
    cfg = parse_config(
        {
            "forward": {
                "enabled": True,
                "endpoint_url": "https://s3.central.example",
                "bucket": "bwc-footage",
                "access_key_id": "STATION-0001",
                "secret_access_key": "not-for-the-log-0001",
                "window": "22:00-06:00",
            }
        }
    )
    assert cfg.forward.window == "22:00-06:00"
    with pytest.raises(ConfigError, match=r"forward.part_size_mb"):
        parse_config({"forward": {"part_size_mb": 1}})
    with pytest.raises(ConfigError, match=r"forward.endpoint: unknown key"):
        parse_config({"forward": {"endpoint": "https://x"}})


@wired
def test_the_station_forwards_what_it_collects(make_station, s3_endpoint: str, bucket: str) -> None:
    station: StationProc = make_station(
        forward={
            "enabled": True,
            "endpoint_url": s3_endpoint,
            "bucket": bucket,
            "access_key_id": "TEST-0001",
            "secret_access_key": "station-secret-do-not-log",
            "part_size_mb": 5,
            "poll_interval_s": 0.5,
        }
    )
    assert station.api("/api/v1/status")["forward"]["enabled"] is True
    spec = RecorderSpec(serial="W000001", officer_no="800001", files=3, imp=1, size_mb=7)
    station.dock(1, station.build(spec, seed=5))
    station.wait_state(1, "complete")
    stored = station.api("/api/v1/files", serial="W000001")["items"]

    def all_forwarded() -> dict[str, Any] | None:
        fwd = station.api("/api/v1/status")["forward"]
        return fwd if fwd["pending_files"] == 0 and fwd["forwarded_files"] else None

    fwd = wait_for(all_forwarded, 120, "the files to be forwarded")
    assert fwd["forwarded_files"] == len(stored) and fwd["refused"] == []
    client = s3(s3_endpoint)
    for item in stored:
        key = f"TEST-0001/{Path(item['stored_path']).relative_to(station.disks[0])}"
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == item["sha256"]
    assert "station-secret-do-not-log" not in (station.root / "daemon.log").read_text()
    kinds = [k for (k,) in station.query("SELECT kind FROM events WHERE kind = 'file_forwarded'")]
    assert len(kinds) == len(stored)
