#!/usr/bin/env python3
"""Platform benchmark: N simulated stations pushing to one reference platform.

    .venv/bin/python bench/platform.py [--stations 325] [--procs 2] [--backlog-files 40]
        [--steady-s 60] [--steady-period 10] [--heartbeat-s 30] [--batch 100] [--keep]

Each simulated station is the station's real link code (station/platform/link.py:
`PlatformLink`, the outbox in its own migrated SQLite catalog, the breaker, real HTTP to
127.0.0.1) around a small stand-in for the rest of the daemon (no bus, no collection).
The reference platform (station/platform/reference.py) runs as its own process, as in
the tests. The stations run as threads spread over --procs processes.

1. Backlog (an outage just ended): every station's catalog holds --backlog-files stored
   files, each with three system-log entries (`file_stored` and two more), and one
   alarm raised and cleared; all stations connect at once. Measured: the time until every
   outbox is empty, the platform's ingest rate (entries committed per second, read from
   its own database) and the sum of the stations' outbox depths over time.
2. Steady state: for --steady-s seconds every station adds one file and its three log
   entries every --steady-period seconds (a busy station: 8 recorders of 40 files a
   day is one file every ~4.5 minutes); measured: the outbox depth the stations carry
   (max and mean of the sum) and the delay from a file's catalog commit to the platform's.

Footage is not uploaded here (`upload_content = false`): the figure is the platform's
indexing rate, the part every station shares; the bytes are the network's and the disks'.
"""

from __future__ import annotations

import os
import sys

# run as a script, this file's folder comes first on the path, and its name would hide the
# standard library's `platform` module (SQLAlchemy imports it)
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import multiprocessing as mp
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOKEN = "bench-platform-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Disk:
    def __init__(self, path: Path) -> None:
        self.path = path

    def usage(self) -> tuple[int, int]:
        st = os.statvfs(self.path)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


class _Store:
    def __init__(self, path: Path) -> None:
        self.disks = [_Disk(path)]


class BenchStation:
    """The part of `station.runtime.Station` the link talks to, around a real catalog."""

    def __init__(self, root: Path, sid: str, url: str, args: argparse.Namespace) -> None:
        from station.catalog import Catalog
        from station.config import parse_config
        from station.health.alarms import AlarmBook
        from station.ingest.collector import Slot

        self.config = parse_config(
            {
                "station": {"id": sid, "name": f"Bench {sid}"},
                "store": {"disks": [str(root)]},
                "database": {"url": f"sqlite:///{root / 'catalog.db'}"},
                "platform": {
                    "enabled": True, "url": url, "token": TOKEN, "upload_content": False,
                    "heartbeat_s": args.heartbeat_s, "poll_s": args.heartbeat_s,
                    "batch": args.batch, "backoff_base_s": 0.5, "max_backoff_s": 10.0,
                },
            }
        )  # fmt: skip
        self.catalog = Catalog(root / "catalog.db")
        self.alarms = AlarmBook(self.catalog)
        self.store = _Store(root)
        self.slots = {p: Slot(p) for p in range(1, 9)}
        self.network_online = True
        self.reload_hooks: list[Any] = []

    def notify(self, progress: bool = False) -> None:
        pass

    def reload(self, config: Any) -> list[str]:
        self.config = config
        return []

    def self_check(self) -> dict[str, Any]:
        return {"disks": [], "alarms": [], "slots": []}


def add_files(catalog: Any, n: int, start: int) -> None:
    """`n` stored files, each with the three log entries collection writes around one."""
    from station.catalog import Officer, Recorder, StoredFile
    from station.catalog.db import append_event

    with catalog.write() as s:
        off = s.query(Officer).first()
        if off is None:
            off = Officer(officer_no="100001", name="Bench")
            s.add(off)
            s.flush()
        rec = s.query(Recorder).first()
        if rec is None:
            rec = Recorder(serial="B000001", officer_id=off.id)
            s.add(rec)
            s.flush()
        for i in range(start, start + n):
            name = f"100001_B000001_20261203{i:06d}_0001.AVI"
            row = StoredFile(
                officer_id=off.id, recorder_id=rec.id, card_path=name.encode(), name=name,
                disk="/bench", rel_path=f"100001/B000001/2026-12-03/{name}", size=64 << 20,
                sha256=hashlib.sha256(name.encode()).hexdigest(), kind="video",
            )  # fmt: skip
            s.add(row)
            s.flush()
            append_event(s, "file_copying", name, file_id=row.id, serial="B000001")
            append_event(s, "file_verified", name, file_id=row.id, serial="B000001")
            append_event(s, "file_stored", name, file_id=row.id, serial="B000001")


def worker(
    index: int, roots: list[str], url: str, args: argparse.Namespace, go: Any, stop: Any, q: Any
) -> None:
    """One process: its share of the stations, their links in threads, depth samples to `q`."""
    from station.platform import outbox
    from station.platform.link import PlatformLink

    stations = [BenchStation(Path(r), Path(r).name, url, args) for r in roots]
    for st in stations:
        add_files(st.catalog, args.backlog_files, 0)
        st.alarms.raise_("disk_degraded", "bench", "d1")
        st.alarms.clear("disk_degraded", "d1")
    q.put(("ready", index, len(stations)))
    go.wait()
    halt = threading.Event()
    links = [PlatformLink(st, halt) for st in stations]
    threads = [threading.Thread(target=lk.run, daemon=True) for lk in links]
    for t in threads:
        t.start()
    made = {id(st): args.backlog_files for st in stations}
    next_add = time.monotonic() + 1e9
    while not stop.is_set():
        now = time.monotonic()
        depth = sum(sum(outbox.depth(st.catalog).values()) for st in stations)
        q.put(("depth", index, time.time(), depth))
        if q_steady(stop) and next_add > now + 1e8:
            next_add = now
        if now >= next_add:
            for st in stations:
                add_files(st.catalog, 1, made[id(st)])
                made[id(st)] += 1
            next_add = now + args.steady_period
        time.sleep(1.0)
    halt.set()
    for t in threads:
        t.join(30)
    q.put(("done", index, sum(lk.delivered for lk in links)))


_STEADY: Any = None


def q_steady(stop: Any) -> bool:
    return bool(_STEADY is not None and _STEADY.is_set())


def platform_count(db: Path) -> tuple[int, int]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        n = con.execute("SELECT count(*) FROM entries").fetchone()[0]
        f = con.execute("SELECT count(*) FROM entries WHERE kind = 'file'").fetchone()[0]
        return n, f
    finally:
        con.close()


def file_delays(db: Path, since: float) -> list[float]:
    """Seconds from a steady-state file's station commit (its body's collected_at) to the
    platform's receipt."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("SELECT body, received_at FROM entries WHERE kind = 'file'").fetchall()
    finally:
        con.close()
    out = []
    for body, received in rows:
        b = json.loads(body)
        made = dt.datetime.fromisoformat(b["collected_at"])
        if made.tzinfo is None:
            made = made.replace(tzinfo=dt.UTC)
        if made.timestamp() < since:
            continue  # the backlog's
        out.append((dt.datetime.fromisoformat(received) - made).total_seconds())
    return out


def main() -> int:
    global _STEADY
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--stations", type=int, default=325)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--backlog-files", type=int, default=40)
    p.add_argument("--steady-s", type=float, default=60.0)
    p.add_argument("--steady-period", type=float, default=10.0)
    p.add_argument("--heartbeat-s", type=float, default=30.0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()

    from station.catalog import Catalog

    work = Path(tempfile.mkdtemp(prefix="bench-platform-"))
    template = work / "template.db"
    c = Catalog(template)
    c.migrate()
    c.close()
    roots = []
    for i in range(args.stations):
        r = work / f"BENCH-{i:04d}"
        r.mkdir()
        shutil.copy(template, r / "catalog.db")
        roots.append(str(r))
    port = free_port()
    data = work / "platform"
    plat = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "station.platform.reference",
            "--data",
            str(data),
            "--port",
            str(port),
            "--token",
            TOKEN,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the reference platform did not start")
        time.sleep(0.2)

    ctx = mp.get_context("fork")
    go, stop, steady = ctx.Event(), ctx.Event(), ctx.Event()
    _STEADY = steady
    q = ctx.Queue()
    shares = [roots[i :: args.procs] for i in range(args.procs)]
    procs = [ctx.Process(target=worker, args=(i, s, url, args, go, stop, q))
             for i, s in enumerate(shares) if s]  # fmt: skip
    for pr in procs:
        pr.start()
    ready = 0
    while ready < len(procs):
        msg = q.get(timeout=1800)
        if msg[0] == "ready":
            ready += 1
    # files + 3 log entries each; an alarm raised and cleared (2 log, 2 alarm); registration
    per_station = args.backlog_files * 4 + 5
    expected = args.stations * per_station
    print(f"{args.stations} stations over {len(procs)} processes; backlog {expected} entries "
          f"(~{per_station} per station)", flush=True)  # fmt: skip
    depths: dict[int, tuple[float, int]] = {}
    samples: list[tuple[float, int]] = []
    rates: list[tuple[float, int]] = []
    db = data / "platform.db"
    started = time.time()
    go.set()
    drained_at = None
    cpu0 = _cpu(plat.pid)
    while drained_at is None:
        while not q.empty():
            msg = q.get()
            if msg[0] == "depth":
                depths[msg[1]] = (msg[2], msg[3])
        total = sum(d for _, d in depths.values())
        n, _ = platform_count(db)
        rates.append((time.time() - started, n))
        samples.append((time.time() - started, total))
        if len(depths) == len(procs) and total == 0 and n >= expected:
            drained_at = time.time() - started
        if time.time() - started > 3600:
            print("backlog not drained in an hour", flush=True)
            break
        time.sleep(1.0)
    cpu_backlog = _cpu(plat.pid) - cpu0
    n_backlog, _ = platform_count(db)
    peak = max(d for _, d in samples) if samples else 0
    print(f"backlog: {n_backlog} entries in {drained_at:.1f} s = "
          f"{n_backlog / drained_at:.0f} entries/s; platform CPU {cpu_backlog:.1f} s "
          f"({cpu_backlog / drained_at * 100:.0f} % of one core); peak outbox sum {peak}",
          flush=True)  # fmt: skip
    best = (
        max((b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(rates, rates[5:], strict=False))
        if len(rates) > 5
        else 0
    )
    print(f"  best 5-s ingest rate {best:.0f} entries/s", flush=True)
    # steady state
    steady_start = time.time()
    steady.set()
    steady_samples = []
    while time.time() - steady_start < args.steady_s:
        while not q.empty():
            msg = q.get()
            if msg[0] == "depth":
                depths[msg[1]] = (msg[2], msg[3])
        steady_samples.append(sum(d for _, d in depths.values()))
        time.sleep(1.0)
    stop.set()
    delivered = 0
    finished = 0
    while finished < len(procs):
        msg = q.get(timeout=120)
        if msg[0] == "done":
            finished += 1
            delivered += msg[2]
    for pr in procs:
        pr.join(60)
    steady_delays = file_delays(db, since=steady_start)
    n_final, files = platform_count(db)
    dupes = _duplicates(db)
    rate = args.stations / args.steady_period
    print(f"steady: {args.stations} stations x 1 file / {args.steady_period:g} s "
          f"({rate:.0f} files/s, {4 * rate:.0f} entries/s): "
          f"outbox sum max {max(steady_samples)}, mean {statistics.mean(steady_samples):.0f}; "
          f"file delay p50 {_pct(steady_delays, 50):.1f} s p99 {_pct(steady_delays, 99):.1f} s",
          flush=True)  # fmt: skip
    print(f"platform holds {n_final} entries ({files} files), duplicates {dupes}; stations "
          f"delivered {delivered}", flush=True)  # fmt: skip
    plat.send_signal(signal.SIGTERM)
    plat.wait(30)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")
    return 0 if dupes == 0 and drained_at is not None else 1


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def _duplicates(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(
            "SELECT count(*) - count(DISTINCT station_id || kind || key) FROM entries"
        ).fetchone()[0]
    finally:
        con.close()


def _cpu(pid: int) -> float:
    with contextlib.suppress(Exception):
        import psutil

        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
