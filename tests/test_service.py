"""Running under systemd: readiness, a watchdog that notices a stuck collection, reloads."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import httpx
import tomli_w
from conftest import TOKEN, StationProc, wait_for

from station.config import load_config
from station.sim.recorder import RecorderSpec


class NotifySocket:
    """The receiving end of sd_notify, as systemd holds it."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                return [m for _, m in self.messages]

    def watchdogs_since(self, t: float) -> int:
        self.drain()
        return sum("WATCHDOG=1" in m for at, m in self.messages if at >= t)


def test_ready_watchdog_and_stopping(make_station, tmp_path: Path) -> None:
    ns = NotifySocket(tmp_path / "notify")
    st = make_station(start=False, bus={"stall_s": 2.0})
    st.env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "600000"}
    st.start()
    wait_for(lambda: any("READY=1" in m for m in ns.drain()), 60, "READY=1")
    t0 = time.monotonic()
    wait_for(lambda: ns.watchdogs_since(t0) >= 3, 60, "the watchdog to be petted")

    # a recorder whose reads hang (1 MiB at 10 kB/s): the collection shows no sign of life
    rec = st.build(
        RecorderSpec(
            serial="SD00001", officer_no="980001", files=1, imp=0, size_mb=3.0, read_mb_s=0.01
        )
    )
    st.dock(1, rec)
    wait_for(lambda: st.slot(1)["state"] == "collecting", 60)
    time.sleep(4.0)  # past stall_s
    ns.drain()  # what was sent before now is stamped before now
    t1 = time.monotonic()
    time.sleep(2.0)
    assert ns.watchdogs_since(t1) == 0, "the watchdog must not be petted while stuck"
    st.undock(1)  # the stuck worker ends; health is back
    ns.drain()
    t2 = time.monotonic()
    wait_for(lambda: ns.watchdogs_since(t2) >= 2, 120, "the watchdog to resume")
    st.stop()
    assert any("STOPPING=1" in m for m in ns.drain())


def test_tokens_rotate_on_sighup_without_a_restart(station: StationProc) -> None:
    new = "rotated-token-abcdefghijklmnop"
    pid = station.proc.pid
    data = load_config(station.config_path).model_dump(mode="json", exclude_none=True)
    data["api"]["tokens"] = [new]
    data["registration"]["mode"] = "manual"
    station.config_path.write_text(tomli_w.dumps(data))
    station.proc.send_signal(signal.SIGHUP)

    def rotated() -> bool:
        r = httpx.get(station.url("/api/v1/status"), headers={"Authorization": f"Bearer {new}"})
        return r.status_code == 200

    wait_for(rotated, 30, "the new token to be accepted")
    old = httpx.get(station.url("/api/v1/status"), headers={"Authorization": f"Bearer {TOKEN}"})
    assert old.status_code == 401
    status = httpx.get(
        station.url("/api/v1/status"), headers={"Authorization": f"Bearer {new}"}
    ).json()
    assert status["station"]["mode"] == "manual"
    assert station.proc.pid == pid and station.proc.poll() is None  # same process
