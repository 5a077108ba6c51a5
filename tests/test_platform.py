"""The platform link (station/platform/): through the real daemon against the reference
platform, a real HTTP server in its own process (python -m station.platform.reference)."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import StationProc, free_port, wait_for

from station.platform import secrets, signing
from station.platform.protocol import Command
from station.sim.recorder import RecorderSpec

PTOKEN = "platform-token-0123456789"


@dataclass
class PlatformProc:
    """A running reference platform."""

    data: Path
    port: int
    key: Path
    pub: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *extra: str) -> None:
        log = open(self.data.parent / "platform.log", "ab")  # noqa: SIM115 - lives with it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "station.platform.reference",
                "--data",
                str(self.data),
                "--port",
                str(self.port),
                "--token",
                PTOKEN,
                "--signing-key",
                str(self.key),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parent.parent,
        )

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "platform exited"
            try:
                return httpx.get(self.url + "/", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "the reference platform to answer")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(self.url + path, params=params, timeout=30, headers=self._auth)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: Any) -> Any:
        r = httpx.post(self.url + path, json=body, timeout=30, headers=self._auth)
        r.raise_for_status()
        return r.json()

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {PTOKEN}"}

    def entries(self, station_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        params = {"kind": kind} if kind else {}
        return self.get(f"/admin/stations/{station_id}/entries", **params)["entries"]

    def station(self, station_id: str) -> dict[str, Any] | None:
        for s in self.get("/admin/stations")["stations"]:
            if s["station_id"] == station_id:
                return s
        return None


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[PlatformProc]:
    keys = tmp_path / "keys"
    keys.mkdir()
    signing.new_key(keys / "platform.key", keys / "platform.pub")
    p = PlatformProc(
        tmp_path / "platform", free_port(), keys / "platform.key", keys / "platform.pub"
    )
    p.start()
    yield p
    p.stop()


def link_config(p: PlatformProc, **more: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "url": p.url,
        "token": PTOKEN,
        "command_key": str(p.pub),
        "heartbeat_s": 1.0,
        "poll_s": 1.0,
        "backoff_base_s": 0.2,
        "max_backoff_s": 1.0,
        "breaker_after": 3,
        "breaker_open_s": 1.0,
        "timeout_s": 10.0,
        **more,
    }


def platform_status(st: StationProc) -> dict[str, Any]:
    return st.api("/api/v1/status")["platform"]


def delivered_all(st: StationProc) -> Callable[[], bool]:
    def check() -> bool:
        p = platform_status(st)
        return p["state"] == "connected" and p["outbox_pending"] == 0

    return check


def collect(st: StationProc, port: int, spec: RecorderSpec, seed: int) -> None:
    st.dock(port, st.build(spec, seed=seed))
    st.wait_state(port, "complete", timeout=300)


def all_files(st: StationProc) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = st.api("/api/v1/files", limit=1000, offset=len(out))
        out += page["items"]
        if len(out) >= page["total"] or not page["items"]:
            return out


def outbox_rows(st: StationProc) -> list[tuple]:
    return st.query("SELECT id, kind, key, delivered_at, answer FROM outbox ORDER BY id")


def test_week_long_outage_every_entry_delivered_once_in_order(
    make_station: Callable[..., StationProc], platform: PlatformProc
) -> None:
    st = make_station(platform=link_config(platform), integrity={"sm3": True})
    wait_for(lambda: platform_status(st)["registered"], 60, "registration")
    assert platform.station("TEST-0001")["online"]
    wait_for(delivered_all(st), 120, "the start-up log to be pushed")

    platform.stop()  # the link goes down for "a week": collection goes on
    for day in range(7):  # a shift's recorders docked each "day", a week long
        for port in range(1, 5):
            i = day * 4 + port
            spec = RecorderSpec(
                serial=f"OUT{i:04d}", officer_no=f"7{i:05d}", files=40, imp=2, size_mb=0.01
            )
            st.dock(port, st.build(spec, seed=100 + i))
        for port in range(1, 5):
            st.wait_state(port, "complete", timeout=300)
            st.undock(port)
    wait_for(lambda: platform_status(st)["breaker"] == "open", 60, "the breaker to open")
    codes = [a["code"] for a in st.api("/api/v1/status")["alarms"]]
    assert "platform_unreachable" in codes
    depth = platform_status(st)["outbox_depth"]
    files = all_files(st)
    n = len(files)
    assert n >= 7 * 4 * 40 and all(f["central"] == "pending" for f in files)
    wait_for(lambda: platform_status(st)["outbox_depth"]["file"] == n, 60, "SM3, then queueing")
    depth = platform_status(st)["outbox_depth"]
    assert sum(depth.values()) >= 3000, depth  # thousands of entries wait, none lost
    metrics = httpx.get(
        st.url("/metrics"), headers={"Authorization": "Bearer test-token-0123456789abcdef"}
    ).text
    assert f'station_outbox_depth{{kind="file"}} {n}.0' in metrics

    platform.start()  # the link is back
    wait_for(delivered_all(st), 600, "the backlog to be delivered")
    wait_for(
        lambda: all(f["central"] == "verified" for f in all_files(st)),
        600,
        "every file's central copy to verify",
    )
    rows = outbox_rows(st)
    assert all(r[3] is not None and r[4] in ("accepted", "duplicate") for r in rows)
    for kind in ("file", "alarm", "log"):
        ours = [(r[0], r[2]) for r in rows if r[1] == kind]
        theirs = platform.entries("TEST-0001", kind)
        # once each: every key the station queued is there exactly once ...
        assert sorted(e["key"] for e in theirs) == sorted(k for _, k in ours), kind
        # ... and in the order the station made them
        seqs = [e["seq"] for e in theirs]
        assert seqs == sorted(seqs), kind
    held = {e["body"]["file_id"]: e["body"] for e in platform.entries("TEST-0001", "file")}
    for f in all_files(st):
        body = held[f["id"]]
        assert body["sha256"] == f["sha256"] and body["sm3"] == f["sm3"] is not None
        data = Path(f["stored_path"]).read_bytes()
        assert hashlib.new("sm3", data).hexdigest() == f["sm3"]
        copy = platform.data / "files" / "TEST-0001" / f"{f['id']}.bin"
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == f["sha256"]
    # the log the platform holds is the station's chain, link by link
    logs = [e["body"] for e in platform.entries("TEST-0001", "log")]
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(logs))
    codes = [a["code"] for a in st.api("/api/v1/status")["alarms"]]
    assert "platform_unreachable" not in codes

    def unreachable_actions() -> set[str]:
        alarms = [e["body"] for e in platform.entries("TEST-0001", "alarm")]
        return {a["action"] for a in alarms if a["code"] == "platform_unreachable"}

    # the platform hears of the outage itself once it is over: raised, then cleared
    wait_for(lambda: unreachable_actions() == {"raised", "cleared"}, 60, "the outage's alarm")


def test_platform_restart_in_the_middle_of_a_push(
    make_station: Callable[..., StationProc], platform: PlatformProc
) -> None:
    platform.stop()
    platform.start("--ingest-mb-s", "1")  # a slow link: an upload takes seconds
    st = make_station(platform=link_config(platform))
    spec = RecorderSpec(serial="RST0001", officer_no="710001", files=3, imp=1, size_mb=6)
    collect(st, 1, spec, seed=7)
    parts = platform.data / "files" / "TEST-0001"
    wait_for(lambda: parts.exists() and any(parts.glob("*.part")), 120, "an upload to begin")
    platform.stop(signal.SIGKILL)  # the platform dies mid-upload
    platform.start()
    wait_for(delivered_all(st), 300, "delivery after the restart")
    items = st.api("/api/v1/files")["items"]
    wait_for(
        lambda: all(f["central"] == "verified" for f in st.api("/api/v1/files")["items"]),
        300,
        "the copies to verify",
    )
    for f in items:
        copy = parts / f"{f['id']}.bin"
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == f["sha256"]
    keys = [e["key"] for e in platform.entries("TEST-0001")]
    assert len(keys) == len(set(keys))


def test_signed_command_runs_once_and_unsigned_or_replayed_ones_are_refused(
    make_station: Callable[..., StationProc], platform: PlatformProc, tmp_path: Path
) -> None:
    # the platform token is stored encrypted, its key outside the configuration file
    secrets.new_key(tmp_path / "secrets.key")
    sealed = secrets.encrypt(secrets.load_key(tmp_path / "secrets.key"), "platform.token", PTOKEN)
    st = make_station(start=False, platform=link_config(platform, token=sealed))
    assert PTOKEN not in st.config_path.read_text()
    st.env = {"STATION_SECRETS_KEY": str(tmp_path / "secrets.key")}
    st.start()
    wait_for(lambda: platform_status(st)["registered"], 60, "registration")
    cmd = platform.post("/admin/stations/TEST-0001/commands", {"kind": "self_check"})

    def receipt(command_id: str) -> dict[str, Any] | None:
        for c in platform.get("/admin/stations/TEST-0001/commands")["commands"]:
            if c["command"]["id"] == command_id and c["receipt"]:
                return c["receipt"]
        return None

    got = wait_for(lambda: receipt(cmd["id"]), 60, "the self-check's receipt")
    assert got["status"] == "done" and "disks" in got["result"]
    # the same signed command again: a replay
    platform.post("/admin/stations/TEST-0001/commands/raw", cmd)
    wait_for(delivered_all(st), 60, "the replay's receipt")
    # unsigned, and signed by another key
    unsigned = Command(
        id=uuid.uuid4().hex,
        station_id="TEST-0001",
        kind="self_check",
        issued_at=dt.datetime.now(dt.UTC).isoformat(),
    )
    platform.post("/admin/stations/TEST-0001/commands/raw", unsigned.model_dump())
    signing.new_key(tmp_path / "other.key", tmp_path / "other.pub")
    forged = signing.sign(
        unsigned.model_copy(update={"id": uuid.uuid4().hex}),
        signing.load_private(tmp_path / "other.key"),
    )
    platform.post("/admin/stations/TEST-0001/commands/raw", forged.model_dump())
    old = signing.sign(
        unsigned.model_copy(
            update={"id": uuid.uuid4().hex, "issued_at": "2020-01-01T00:00:00+00:00"}
        ),
        signing.load_private(platform.key),
    )
    platform.post("/admin/stations/TEST-0001/commands/raw", old.model_dump())
    for c in (unsigned, forged, old):
        r = wait_for(lambda c=c: receipt(c.id), 60, "a refusal receipt")
        assert r["status"] == "refused", r
    assert "not signed" in receipt(unsigned.id)["detail"]
    assert "does not verify" in receipt(forged.id)["detail"]
    assert "expired" in receipt(old.id)["detail"]
    refused = st.query("SELECT message FROM events WHERE kind = 'platform_command_refused'")
    assert any(cmd["id"] in m and "replayed" in m for (m,) in refused)
    assert len(refused) == 4
    ran = st.query(
        "SELECT count(*) FROM events WHERE kind = 'platform_command' AND message LIKE ?",
        f"%{cmd['id']}%",
    )
    assert ran == [(1,)]


def test_configuration_version_applied_and_a_bad_one_rejected(
    make_station: Callable[..., StationProc], platform: PlatformProc
) -> None:
    st = make_station(platform=link_config(platform))
    wait_for(lambda: platform_status(st)["registered"], 60, "registration")
    assert st.api("/api/v1/status")["station"]["mode"] == "auto"
    v1 = platform.post(
        "/admin/stations/TEST-0001/config", {"settings": {"registration": {"mode": "manual"}}}
    )["version"]
    wait_for(lambda: st.api("/api/v1/status")["station"]["mode"] == "manual", 60, "v1 applied")
    wait_for(
        lambda: (platform.station("TEST-0001") or {}).get("config_applied") == v1,
        60,
        "the platform to hear of it",
    )
    assert platform_status(st)["config_version"] == v1
    bad = platform.post(
        "/admin/stations/TEST-0001/config", {"settings": {"retention": {"days": 0}}}
    )["version"]

    def report() -> dict[str, Any] | None:
        rep = (platform.station("TEST-0001") or {}).get("config_report")
        return rep if rep and rep["version"] == bad else None

    rep = wait_for(report, 60, "the rejection report")
    assert rep["result"] == "rejected" and "retention.days" in rep["reason"]
    foreign = platform.post(
        "/admin/stations/TEST-0001/config", {"settings": {"api": {"tokens": ["x" * 20]}}}
    )["version"]
    wait_for(
        lambda: (
            (platform.station("TEST-0001") or {}).get("config_report", {}).get("version") == foreign
        ),
        60,
        "the second rejection",
    )
    assert (
        "cannot be set by the platform" in platform.station("TEST-0001")["config_report"]["reason"]
    )
    # still the good version, and the station's tokens untouched
    assert st.api("/api/v1/status")["station"]["mode"] == "manual"
    assert platform_status(st)["config_version"] == v1
    kinds = [k for (k,) in st.query("SELECT kind FROM events WHERE kind LIKE 'platform_config%'")]
    assert kinds == [
        "platform_config_applied",
        "platform_config_rejected",
        "platform_config_rejected",
    ]
    # applied again after a restart, without the platform
    platform.stop()
    st.stop()
    st.start()
    assert st.api("/api/v1/status")["station"]["mode"] == "manual"


def test_retention_waits_for_the_central_copy(
    make_station: Callable[..., StationProc], platform: PlatformProc
) -> None:
    platform.stop()  # the platform is away while the files expire
    st = make_station(
        platform=link_config(platform),
        retention={"days": 1, "sweep_interval_s": 1.0, "central_stuck_hours": 0.001},
    )
    spec = RecorderSpec(serial="RET0001", officer_no="720001", files=4, imp=0, size_mb=0.05)
    collect(st, 1, spec, seed=3)
    n = len(st.api("/api/v1/files")["items"])
    assert n >= 4
    st.query("UPDATE files SET collected_at = datetime('now', '-30 days')")
    wait_for(
        lambda: any(a["code"] == "central_unverified" for a in st.api("/api/v1/status")["alarms"]),
        60,
        "the stuck alarm",
    )
    time.sleep(3)  # several sweeps
    assert st.query("SELECT count(*) FROM files WHERE deleted_at IS NULL") == [(n,)]
    assert all(Path(f["stored_path"]).exists() for f in st.api("/api/v1/files")["items"])
    upcoming = st.api("/api/v1/retention/upcoming", days=0)["items"]
    assert len(upcoming) == n and all(u["waiting_central"] for u in upcoming)
    platform.start()
    wait_for(
        lambda: st.query("SELECT count(*) FROM files WHERE deleted_at IS NULL") == [(0,)],
        300,
        "deletion once the central copies verified",
    )
    deleted = st.query("SELECT id FROM files WHERE central_state = 'verified'")
    assert len(deleted) == n
    wait_for(
        lambda: (
            not any(a["code"] == "central_unverified" for a in st.api("/api/v1/status")["alarms"])
        ),
        60,
        "the alarm to clear",
    )
