"""Shared fixtures: a real station daemon in a subprocess, driven over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w

from station.sim.recorder import RecorderSpec, build_recorder, dock, undock

TOKEN = "test-token-0123456789abcdef"
STATION = [sys.executable, "-m", "station"]


def wait_for(pred: Callable[[], Any], timeout: float = 120.0, what: str = "condition") -> Any:
    """Poll until `pred()` is truthy; generous by default, for slow busy machines."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def card_hashes(recorder: Path) -> dict[str, tuple[int, str]]:
    """{card path: (size, sha256)} of a simulated recorder's card."""
    card = recorder / "card"
    return {
        str(p.relative_to(card)): (p.stat().st_size, sha256_file(p))
        for p in sorted(card.rglob("*"))
        if p.is_file()
    }


@dataclass
class StationProc:
    """A running `station run` and the folders it owns."""

    root: Path
    config_path: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    wrapper: list[str] = field(default_factory=list)  # e.g. unshare + mounts, then exec
    env: dict[str, str] = field(default_factory=dict)  # extra environment (fault points)

    def in_namespace(self, *cmd: str) -> str:
        """Run a command in the daemon's mount namespace (to see its private disks)."""
        assert self.proc is not None
        return subprocess.run(
            ["nsenter", "-t", str(self.proc.pid), "-m", "--", *cmd],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    @property
    def bus(self) -> Path:
        return self.root / "bus"

    @property
    def disks(self) -> list[Path]:
        return [self.root / "disk1", self.root / "disk2"]

    @property
    def db(self) -> Path:
        return self.root / "catalog.db"

    def start(self, wait: bool = True) -> None:
        log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - lives with the process
        cmd = [*self.wrapper, *STATION, "run", "--config", str(self.config_path)]
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parent.parent,
            env={**os.environ, **self.env},
        )
        if wait:
            wait_for(self._healthy, 60, "the daemon to answer /api/v1/health")

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.url("/api/v1/health"), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return (self.root / "daemon.log").read_text(errors="replace")[-5000:]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def api(self, path: str, **params: Any) -> Any:
        r = httpx.get(
            self.url(path), params=params, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        )
        r.raise_for_status()
        return r.json()

    def slot(self, port: int) -> dict[str, Any]:
        return self.api("/api/v1/status")["slots"][port - 1]

    def wait_state(self, port: int, *states: str, timeout: float = 120) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            s = self.slot(port)
            return s if s["state"] in states else None

        try:
            return wait_for(check, timeout, f"port {port} to be {states}")
        except AssertionError:
            raise AssertionError(f"port {port}: {self.slot(port)}\n{self.log()}") from None

    def query(self, sql: str, *args: Any) -> list[tuple]:
        """Run SQL on the catalog (committed: tests also use it to age or damage rows)."""
        con = sqlite3.connect(self.db, timeout=30)
        try:
            with con:
                return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*STATION, *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    # --- recorders ---------------------------------------------------------------------

    def build(self, spec: RecorderSpec, seed: int = 1) -> Path:
        spare = self.root / "spare"
        spare.mkdir(exist_ok=True)
        return build_recorder(spare, spec, seed)

    def dock(self, port: int, recorder: Path) -> Path:
        return dock(self.bus, port, recorder)

    def undock(self, port: int) -> Path:
        return undock(self.bus, port)


def write_config(root: Path, port: int, **overrides: dict[str, Any]) -> Path:
    cfg: dict[str, Any] = {
        "station": {"id": "TEST-0001", "name": "Test station"},
        "store": {
            "disks": [str(root / "disk1"), str(root / "disk2")],
            "min_free_mb": 1,
            "sync_every_mb": 2,
            "folder_disks": True,  # the tests' disks are folders, or tmpfs mounts
        },
        "database": {"url": f"sqlite:///{root / 'catalog.db'}"},
        "bus": {"kind": "simulated", "path": str(root / "bus"), "ports": 8, "debounce_ms": 100},
        "registration": {"mode": "auto"},
        "web": {"host": "127.0.0.1", "port": port},
        "api": {"tokens": [TOKEN]},
        "network": {"interval_s": 2.0},
        "voice": {"enabled": False},  # the voice test turns it on with a recording player
    }
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    path = root / "station.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


@pytest.fixture
def make_station(tmp_path: Path) -> Iterator[Callable[..., StationProc]]:
    """Start a station (stopped again at the end of the test)."""
    started: list[StationProc] = []

    def make(
        *, start: bool = True, wrapper: list[str] | None = None, **overrides: dict[str, Any]
    ) -> StationProc:
        root = tmp_path / f"station{len(started)}"
        for d in ("disk1", "disk2", "bus"):
            (root / d).mkdir(parents=True, exist_ok=True)
        port = free_port()
        st = StationProc(root, write_config(root, port, **overrides), port, wrapper=wrapper or [])
        started.append(st)
        if start:
            st.start()
        return st

    yield make
    for st in started:
        st.stop()


@pytest.fixture
def station(make_station: Callable[..., StationProc]) -> StationProc:
    return make_station()


@pytest.fixture
def store_env(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """A migrated catalog and one disk folder taken into use, as the daemon leaves them."""
    from station.catalog import Catalog
    from station.store.disks import Store
    from station.store.identity import DiskBook

    catalog = Catalog(tmp_path / "catalog.db")
    catalog.migrate()
    disk = tmp_path / "disk1"
    disk.mkdir()
    for d in Store([disk], 0).disks:
        assert DiskBook(catalog, "T1", folder_disks=True).identify(d) is None
    yield catalog, disk
    catalog.close()


def recorder_json(path: Path) -> dict[str, Any]:
    return json.loads((path / "recorder.json").read_text("utf-8"))


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for mount namespaces")


def tmpfs_disks(*sizes: tuple[Path, str]) -> list[str]:
    """A wrapper that runs the daemon in a private mount namespace on small tmpfs disks."""
    mounts = " && ".join(f"mount -t tmpfs -o size={size} tmpfs {path}" for path, size in sizes)
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$0" "$@"']
