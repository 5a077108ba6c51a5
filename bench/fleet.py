#!/usr/bin/env python3
"""Fleet benchmark: 325 central-server pollers hitting one station while 8 recorders collect.

    .venv/bin/python bench/fleet.py [--size-mb 256] [--recorders 8] [--read-mb-s 20]
        [--skip-limited] [--skip-unlimited] [--pollers 325] [--period 10]
        [--events-period 30] [--client httpx|raw] [--rounds 1] [--max-s 1800] [--seed 1]
        [--target-p99-ms 50] [--nice N] [--wait-quiet S] [--profile]
        [--profile-mode idle|gil] [--write-doc] [--keep] [--source CHECKOUT]

See docs/fleet.md for the figures, the profile and what they say.

The targets: p99 latency of `GET /api/v1/status` under 50 ms while the recorders collect,
and collection throughput with the pollers within 5 % of the same collection without them.

Per case ("limited": every recorder read at --read-mb-s, like USB 2.0; "unlimited": no
read limit) and per round, two runs, each on a fresh `station run` (bench/ingest.py's
daemon and cards: simulated bus, two store folders, SQLite catalog, station defaults):

- "no polling": page cache dropped, --period seconds of idle, all recorders docked at
  once, then nothing talks to the daemon until every card is empty; the completion
  times are read afterwards from the daemon's own event log (`collection_complete`).
- "polled": the same, with --pollers asyncio tasks (one HTTP client each: httpx with one
  connection, or --client raw, a minimal HTTP/1.1 GET that costs a third of the CPU;
  real HTTP to 127.0.0.1 only) each sending `GET /api/v1/status` with the bearer
  token every --period seconds at a random phase, and `GET /api/v1/events?after=CURSOR`
  every --events-period seconds, paging with the returned cursor like a central server.
  They start --period seconds before the docking (so every poller is in its steady
  state) and stop when the collection is over (or after --max-s, whatever happens).

Figures: status (and events) latency percentiles measured by the client from sending the
request to having the whole body, for the requests sent while the recorders collect;
collection throughput = card bytes / (last `collection_complete` - first dock), MB =
1e6 bytes; CPU seconds of the daemon over the collection. Each run is checked like
bench/ingest.py's (catalog, store and cards agree), and every poller's event cursor must
have seen each event exactly once.

--profile adds one polled run per case (not counted in the figures) with py-spy attached
to the daemon (`--idle`: waiting threads too, so the wall time shows; or `--gil`: only the
thread holding the GIL) and prints where the threads serving the API spent their time.

Exit status: 0 every target met, 1 a target missed, 2 the benchmark itself failed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import random
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import ingest as ing  # noqa: E402  bench/ingest.py: the daemon, the cards, the checks
from cabinet import CabinetCpu  # noqa: E402

ROOT = ing.ROOT
OUT = ing.OUT / "fleet"
DOC = ROOT / "docs" / "fleet.md"
DOC_BEGIN = "<!-- fleet.py figures ({key}): begin -->"
DOC_END = "<!-- fleet.py figures ({key}): end -->"
MB = ing.MB
MIB = ing.MIB
GIB = ing.GIB

TARGET_P99_MS = 50.0
TARGET_THROUGHPUT_LOSS = 0.05
EVENTS_PAGE = 1000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- the load generator ---------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    """One request of one poller."""

    kind: str  # "status" or "events"
    sent: float  # time.time() when sent
    latency: float  # seconds from sending to the whole body received
    lag: float  # how late the request left against its schedule (load generator's own delay)
    ok: bool
    error: str | None = None


class HttpxGetter:
    """One poller's HTTP client: httpx, one connection (uvicorn closes it after 5 s idle)."""

    errors: tuple[type[BaseException], ...] = (httpx.HTTPError,)

    def __init__(self, base_url: str, token: str, ctx: ssl.SSLContext) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            verify=ctx,  # shared: the URL is plain HTTP, but httpx builds one per client
        )

    async def get(self, path: str, params: dict[str, Any] | None = None) -> tuple[int, bytes]:
        r = await self.client.get(path, params=params)
        return r.status_code, r.content

    async def close(self) -> None:
        await self.client.aclose()


class RawGetter:
    """A minimal HTTP/1.1 GET over asyncio streams, a connection per request: a fraction of
    httpx's CPU, so the load generator takes less of the machine from the daemon."""

    errors: tuple[type[BaseException], ...] = (OSError, asyncio.IncompleteReadError, ValueError)

    def __init__(self, base_url: str, token: str, ctx: ssl.SSLContext) -> None:
        self.port = int(base_url.rsplit(":", 1)[1])
        self.auth = f"Authorization: Bearer {token}\r\n"

    async def get(self, path: str, params: dict[str, Any] | None = None) -> tuple[int, bytes]:
        if params:
            path += "?" + "&".join(f"{k}={v}" for k, v in params.items())
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 30)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{self.auth}"
                "Connection: close\r\n\r\n".encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length = next(
                (int(x.split(":", 1)[1]) for x in lines if x.lower().startswith("content-length:")),
                None,
            )
            if length is None:
                body = await asyncio.wait_for(reader.read(), 30)
            else:
                body = await asyncio.wait_for(reader.readexactly(length), 30)
            return status, body
        finally:
            writer.close()

    async def close(self) -> None:
        pass


class Fleet:
    """`pollers` asyncio tasks polling one station, in a thread of their own."""

    def __init__(
        self,
        base_url: str,
        token: str,
        pollers: int,
        period: float,
        events_period: float,
        seed: int,
        max_s: float,
        ports: int,
        client: str = "httpx",
    ) -> None:
        if not base_url.startswith("http://127.0.0.1:"):
            raise ValueError("the fleet only targets a station on 127.0.0.1")
        self.base_url = base_url
        self.token = token
        self.pollers = pollers
        self.period = period
        self.events_period = events_period
        self.rng = random.Random(seed)
        self.max_s = max_s
        self.ports = ports
        self.getter = {"httpx": HttpxGetter, "raw": RawGetter}[client]
        self.samples: list[Sample] = []
        self.loop_lag: list[tuple[float, float]] = []  # (time.time(), the client loop's delay)
        self.seen: dict[int, list[int]] = {}  # poller -> event ids in the order received
        self.cursor: dict[int, int] = {}  # poller -> its last cursor
        self.ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.crashed: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self._thread.start()
        if not self.ready.wait(120):
            raise ing.BenchError("the load generator did not start")
        if self.crashed is not None:
            raise ing.BenchError(f"the load generator failed: {self.crashed!r}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended by itself (--max-s)
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(60)
            if self._thread.is_alive():
                raise ing.BenchError("the load generator did not stop")
        if self.crashed is not None:
            raise ing.BenchError(f"the load generator failed: {self.crashed!r}")

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported by start()/stop()
            self.crashed = e
            self.ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        stopper = asyncio.create_task(self._stop.wait())
        ctx = ssl.create_default_context()
        clients = [self.getter(self.base_url, self.token, ctx) for _ in range(self.pollers)]
        t0 = self._loop.time()
        deadline = t0 + self.max_s
        phases = [
            (self.rng.uniform(0, self.period), self.rng.uniform(0, self.events_period))
            for _ in range(self.pollers)
        ]
        self.ready.set()
        monitor = asyncio.create_task(self._monitor(stopper))
        try:
            await asyncio.gather(
                *(
                    self._poller(i, c, t0 + ps, t0 + pe, deadline, stopper)
                    for i, (c, (ps, pe)) in enumerate(zip(clients, phases, strict=True))
                )
            )
        finally:
            monitor.cancel()
            stopper.cancel()
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    async def _monitor(self, stopper: asyncio.Task[Any]) -> None:
        """How late this loop wakes up from a 50 ms sleep: the load generator's own delay."""
        assert self._loop is not None
        while not stopper.done():
            t = self._loop.time()
            await asyncio.sleep(0.05)
            self.loop_lag.append((time.time(), self._loop.time() - t - 0.05))

    async def _poller(
        self,
        i: int,
        client: HttpxGetter | RawGetter,
        next_status: float,
        next_events: float,
        deadline: float,
        stopper: asyncio.Task[Any],
    ) -> None:
        assert self._loop is not None
        loop = self._loop
        self.seen[i] = []
        self.cursor[i] = 0
        while True:
            due = min(next_status, next_events)
            if due >= deadline:
                return
            delay = due - loop.time()
            if delay > 0:
                await asyncio.wait([stopper], timeout=delay)
            if stopper.done():
                return
            lag = max(0.0, loop.time() - due)
            if due == next_status:
                next_status += self.period
                await self._status(client, lag)
            else:
                next_events += self.events_period
                await self._events(i, client, lag)

    async def _status(self, client: HttpxGetter | RawGetter, lag: float) -> None:
        sent, t = time.time(), time.perf_counter()
        try:
            code, body = await client.get("/api/v1/status")
            latency = time.perf_counter() - t
        except client.errors as e:
            self.samples.append(
                Sample("status", sent, time.perf_counter() - t, lag, False, repr(e))
            )
            return
        ok, error = code == 200, None
        if ok:
            try:
                ok = len(json.loads(body)["slots"]) == self.ports
            except (ValueError, KeyError, TypeError) as e:
                ok, error = False, repr(e)
        else:
            error = f"HTTP {code}"
        self.samples.append(Sample("status", sent, latency, lag, ok, error))

    async def _events(self, i: int, client: HttpxGetter | RawGetter, lag: float) -> None:
        """Fetch the log after this poller's cursor, page by page (one sample per page)."""
        while True:
            sent, t = time.time(), time.perf_counter()
            try:
                code, raw = await client.get(
                    "/api/v1/events", {"after": self.cursor[i], "limit": EVENTS_PAGE}
                )
                latency = time.perf_counter() - t
                body = json.loads(raw) if code == 200 else None
            except client.errors as e:
                self.samples.append(
                    Sample("events", sent, time.perf_counter() - t, lag, False, repr(e))
                )
                return
            if body is None:
                self.samples.append(Sample("events", sent, latency, lag, False, f"HTTP {code}"))
                return
            self.seen[i] += [e["id"] for e in body["items"]]
            self.cursor[i] = body["cursor"]
            self.samples.append(Sample("events", sent, latency, lag, True))
            if len(body["items"]) < EVENTS_PAGE:
                return
            lag = 0.0


def check_cursors(fleet: Fleet, all_ids: list[int]) -> tuple[int, int, int]:
    """(events received, missed, repeated or out of order) over every poller's cursor."""
    received = missed = repeated = 0
    for i, seen in fleet.seen.items():
        received += len(seen)
        top = 0
        for x in seen:
            if x <= top:
                repeated += 1
            top = max(top, x)
        upto = fleet.cursor[i]
        missed += len({x for x in all_ids if x <= upto} - set(seen))
    return received, missed, repeated


# --- one run --------------------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
    case: str
    polled: bool
    round: int
    read_mb_s: float | None
    recorders: int
    files: int
    bytes: int
    wall_s: float
    done_s: list[float]
    cpu_s: float
    others_cpu_s: float  # the rest of the machine, this benchmark's process excluded
    client_cpu_s: float  # this benchmark's process: the load generator, mostly
    caches_dropped: bool
    status_collecting: list[float]  # latencies (s) of status requests sent while collecting
    status_idle: list[float]  # before the docking
    events_collecting: list[float]
    loop_lag_max_s: float  # the load generator's own worst delay (its event loop's)
    requests: int
    errors: list[str]
    # the slowest status requests while collecting: (sent, s after the first dock; latency, s)
    status_slowest: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    warm_s: float = 0.0  # the --period seconds before the dock (pollers running, if any)
    warm_cpu_s: float = 0.0  # the daemon's CPU then
    warm_requests: int = 0
    events_received: int = 0
    events_missed: int = 0
    events_repeated: int = 0
    profile: str | None = None
    profile_ticks: float = 0.0  # sampling rate x seconds recorded

    @property
    def mb_s(self) -> float:
        return self.bytes / MB / self.wall_s


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (nan for no values)."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def cards_left(bus: Path, n: int) -> int:
    return sum(ing.card_stats(bus / f"port-{p}")[0] for p in range(1, n + 1))


def completions(daemon: ing.Daemon, after: int = 0) -> list[dict[str, Any]]:
    """The `collection_*` end events of the log."""
    r = daemon.client.get(
        "/api/v1/events",
        params={
            "after": after,
            "kind": "collection_complete,collection_failed,collection_interrupted",
            "limit": 10000,
        },
    )
    r.raise_for_status()
    return r.json()["items"]


def all_event_ids(daemon: ing.Daemon) -> list[int]:
    ids: list[int] = []
    cursor = 0
    while True:
        r = daemon.client.get("/api/v1/events", params={"after": cursor, "limit": 10000})
        r.raise_for_status()
        body = r.json()
        ids += [e["id"] for e in body["items"]]
        if len(body["items"]) < 10000:
            return ids
        cursor = body["cursor"]


class PySpy:
    """py-spy recording the daemon from start() to stop() (raw collapsed stacks)."""

    def __init__(self, pid: int, out: Path, mode: str = "idle", rate: int = 100) -> None:
        self.out = out
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                f"--{mode}",  # idle: waiting threads too (wall time); gil: the GIL's holder only
                "--threads",
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.rate = rate
        self.started = time.monotonic()
        self.seconds = 0.0

    def stop(self) -> None:
        self.seconds = time.monotonic() - self.started
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_once(
    case: str,
    cards: list[Path],
    read_mb_s: float | None,
    work: Path,
    args: argparse.Namespace,
    polled: bool,
    rnd: int,
    profile: bool = False,
) -> RunResult:
    """Collect fresh copies of `cards` on a fresh daemon, with or without the fleet."""
    name = f"{case}-{'polled' if polled else 'nopoll'}-r{rnd}" + ("-profile" if profile else "")
    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    n = len(cards)
    daemon = ing.Daemon(
        root, ports=max(8, n), source=args.source, nice=args.nice, cabinet=args.cabinet
    )
    staged = root / "bus" / ".building"
    files = size = 0
    for i, c in enumerate(cards):
        ing.fresh_copy(c, staged / f"rec-{i + 1:02d}", read_mb_s)
        f, s = ing.card_stats(staged / f"rec-{i + 1:02d}")
        files, size = files + f, size + s
    limit = f"{read_mb_s:g} MB/s each" if read_mb_s else "no read limit"
    who = f"{args.pollers} pollers" if polled else "no polling"
    log(f"{name}: {n} recorders, {files} files, {size / MB:.0f} MB, {limit}, {who}")
    fleet: Fleet | None = None
    spy: PySpy | None = None
    try:
        daemon.start()
        if args.wait_quiet > 0:
            log(f"  waiting up to {args.wait_quiet:g} s for the machine to be quiet")
            log(f"  {ing.wait_quiet(args.wait_quiet):.2f} core(s) busy")
        dropped = ing.drop_caches()
        first_event = max(all_event_ids(daemon), default=0)
        if polled:
            fleet = Fleet(
                f"http://127.0.0.1:{daemon.port}",
                ing.TOKEN,
                args.pollers,
                args.period,
                args.events_period,
                args.seed * 1000 + rnd,
                args.max_s,
                max(8, n),
                args.client,
            )
            fleet.start()
        cpu_warm, t_warm = sum(daemon.cpu_s()), time.time()
        time.sleep(args.period)  # every poller in its steady state (or the same idle time)
        expected = size / MB / (read_mb_s * n if read_mb_s else 50)
        timeout = max(180.0, 3 * expected)
        cpu0 = sum(daemon.cpu_s())
        busy0 = ing.busy_cpu_s()
        me0 = sum(psutil.Process().cpu_times()[:2])
        if profile:
            assert daemon.proc is not None
            spy = PySpy(daemon.proc.pid, root / "py-spy.txt", args.profile_mode)
        t_dock = time.time()
        t0 = time.monotonic()
        for i in range(n):
            ing.dock(daemon.bus, i + 1, staged / f"rec-{i + 1:02d}")
        # Nothing asks the daemon anything until the cards are empty (the no-polling run
        # must be free of HTTP load); then its event log says when each port completed.
        ends: list[dict[str, Any]] = []
        while True:
            time.sleep(0.25)
            if daemon.proc is not None and daemon.proc.poll() is not None:
                raise ing.BenchError(f"daemon died:\n{daemon.log_tail()}")
            if time.monotonic() - t0 > timeout:
                raise ing.BenchError(f"not complete after {timeout:.0f} s: {daemon.status()}")
            if cards_left(daemon.bus, n):
                continue
            ends = completions(daemon, first_event)
            bad = [e for e in ends if e["kind"] != "collection_complete"]
            if bad:
                raise ing.BenchError(f"a collection did not complete: {bad}")
            if len(ends) >= n:
                break
        t_end = max(dt.datetime.fromisoformat(e["at"]).timestamp() for e in ends)
        cpu1 = sum(daemon.cpu_s())
        busy1 = ing.busy_cpu_s()
        me1 = sum(psutil.Process().cpu_times()[:2])
        if spy is not None:
            spy.stop()
        if fleet is not None:
            fleet.stop()
        collected = daemon.files_total()
        slots = daemon.status()["slots"][:n]
        event_ids = all_event_ids(daemon) if fleet is not None else []
    except BaseException:
        print(daemon.log_tail(), file=sys.stderr)
        if spy is not None:
            spy.stop()
        if fleet is not None:
            try:
                fleet.stop()
            except ing.BenchError as e:
                log(str(e))
        daemon.stop()
        raise
    daemon.stop()

    problems = []
    s_files, s_bytes = ing.store_stats(daemon.disks)
    if collected != files:
        problems.append(f"catalog holds {collected} files, the cards had {files}")
    if (s_files, s_bytes) != (files, size):
        problems.append(f"store holds {s_files} files / {s_bytes} B, cards {files} / {size} B")
    not_complete = [s["port"] for s in slots if s["state"] != "complete"]
    if not_complete:
        problems.append(f"ports {not_complete} not complete")
    if problems:
        raise ing.BenchError(f"{name}: " + "; ".join(problems))

    wall = t_end - t_dock
    result = RunResult(
        case=case,
        polled=polled,
        round=rnd,
        read_mb_s=read_mb_s,
        recorders=n,
        files=files,
        bytes=size,
        wall_s=wall,
        done_s=sorted(dt.datetime.fromisoformat(e["at"]).timestamp() - t_dock for e in ends),
        cpu_s=cpu1 - cpu0,
        others_cpu_s=max(0.0, busy1 - busy0 - (cpu1 - cpu0) - (me1 - me0)),
        client_cpu_s=me1 - me0,
        caches_dropped=dropped,
        status_collecting=[],
        status_idle=[],
        events_collecting=[],
        loop_lag_max_s=0.0,
        warm_s=t_dock - t_warm,
        warm_cpu_s=cpu0 - cpu_warm,
        requests=0,
        errors=[],
    )
    if fleet is not None:
        during = [s for s in fleet.samples if t_dock <= s.sent <= t_end]
        result.status_collecting = [s.latency for s in during if s.kind == "status" and s.ok]
        result.events_collecting = [s.latency for s in during if s.kind == "events" and s.ok]
        slow = sorted((s for s in during if s.kind == "status" and s.ok), key=lambda s: s.latency)
        result.status_slowest = [(s.sent - t_dock, s.latency) for s in slow[-8:][::-1]]
        result.status_idle = [
            s.latency for s in fleet.samples if s.kind == "status" and s.ok and s.sent < t_dock
        ]
        result.loop_lag_max_s = max(
            (lag for t, lag in fleet.loop_lag if t_dock <= t <= t_end), default=0.0
        )
        result.warm_requests = sum(1 for s in fleet.samples if t_warm <= s.sent < t_dock)
        result.requests = len(fleet.samples)
        result.errors = [f"{s.kind}: {s.error}" for s in fleet.samples if not s.ok]
        result.events_received, result.events_missed, result.events_repeated = check_cursors(
            fleet, event_ids
        )
    if spy is not None:
        result.profile = str(root / "py-spy.txt")
        result.profile_ticks = spy.rate * spy.seconds
    log(
        f"{name}: {files} files / {size / MB:.0f} MB verified; {wall:.1f} s, "
        f"{result.mb_s:.1f} MB/s"
        + (
            f"; status p99 {percentile(result.status_collecting, 99) * 1000:.1f} ms "
            f"(n={len(result.status_collecting)}), {len(result.errors)} error(s)"
            if polled
            else ""
        )
    )
    return result


# --- the profile ----------------------------------------------------------------------------


def thread_group(name: str) -> str:
    if name.startswith("station_"):
        return "collectors (station_N)"
    if name.startswith("AnyIO worker"):
        return "API worker threads (AnyIO)"
    if name == "MainThread":
        return "event loop (MainThread)"
    return "other threads"


def summarize_profile(path: Path, ticks: float = 0.0, top: int = 10) -> list[str]:
    """Where the daemon's API-serving threads spent their (wall) time, from py-spy raw.

    For the status handler (AnyIO worker threads inside `station/web/app.py` `status`): the chain
    of the three frames below the handler, and the leaf. For the event-loop thread (it
    parses and writes HTTP, encodes JSON and runs port changes): its four innermost frames.
    """
    handler: collections.Counter[str] = collections.Counter()
    loop: collections.Counter[str] = collections.Counter()
    n_handler = n_loop = total = 0
    rows = []
    names_of: dict[str, str] = {}  # py-spy names a thread on some of its samples only
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count_s = raw.rpartition(" ")
        try:
            rows.append((stack.split(";"), int(count_s)))
        except ValueError:
            continue
        tid, _, name = rows[-1][0][0].partition(": ")
        if name:
            names_of[tid] = name
    for frames, count in rows:
        total += count
        names = [f.split(" (")[0] for f in frames]
        at = next((k for k, f in enumerate(frames) if ".status (station/web/app.py" in f), None)
        if at is not None:
            n_handler += count
            key = " > ".join(names[at + 1 : at + 4])
            if len(names) > at + 4:
                key += f" ... {names[-1]}"
            handler[key] += count
        elif names_of.get(frames[0].partition(": ")[0]) == "MainThread":
            n_loop += count
            loop[" < ".join(reversed(names[-4:]))] += count
    groups: collections.Counter[str] = collections.Counter()
    for frames, count in rows:
        groups[thread_group(names_of.get(frames[0].partition(": ")[0], "?"))] += count
    lines = [f"py-spy samples: {total}" + (f" in ~{ticks:.0f} sampling ticks" if ticks else "")]
    lines.append(
        "by thread group: "
        + ", ".join(f"{g} {c / max(total, 1):.1%}" for g, c in groups.most_common())
    )
    lines.append(f"status handler (worker threads): {n_handler} samples")
    lines += [f"  {c / max(n_handler, 1):6.1%}  {k}" for k, c in handler.most_common(top)]
    lines.append(f"event-loop thread: {n_loop} samples (innermost frame first)")
    lines += [f"  {c / max(n_loop, 1):6.1%}  {k}" for k, c in loop.most_common(top)]
    return lines


# --- the report -----------------------------------------------------------------------------


def ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 1000:.1f}"


def report(
    results: list[RunResult], args: argparse.Namespace, notes: list[str], command: str
) -> tuple[int, list[str]]:
    out: list[str] = []
    out.append("=" * 100)
    out.append(f"fleet benchmark  {dt.datetime.now():%Y-%m-%d %H:%M}  {ing.machine()}")
    out.append(f"command: {command}")
    out.append(f"daemon: {ing.source_version(args.source)}")
    out.append(
        f"{args.recorders} recorders x {args.size_mb:g} MiB; {args.pollers} pollers: "
        f"GET /api/v1/status every {args.period:g} s, GET /api/v1/events?after= every "
        f"{args.events_period:g} s, random phase, {args.client} client"
    )
    for n in notes:
        out.append(f"note: {n}")
    out.append("-" * 100)
    out.append(
        f"{'case':<9} {'run':<10} {'wall s':>6} {'MB/s':>6} {'CPU s':>5} {'client':>6} "
        f"{'others':>6} "
        f"{'status n':>8} {'p50':>6} {'p95':>6} {'p99':>6} {'max':>6} {'idle p99':>8} "
        f"{'events n':>8} {'ev p99':>6} {'err':>3}"
    )
    for r in results:
        sc = r.status_collecting
        out.append(
            f"{r.case:<9} {('polled' if r.polled else 'no poll') + f' #{r.round}':<10} "
            f"{r.wall_s:>6.1f} {r.mb_s:>6.1f} {r.cpu_s:>5.1f} "
            f"{r.client_cpu_s / r.wall_s:>6.2f} {r.others_cpu_s / r.wall_s:>6.2f} "
            f"{len(sc) if r.polled else '-':>8} {ms(percentile(sc, 50)):>6} "
            f"{ms(percentile(sc, 95)):>6} {ms(percentile(sc, 99)):>6} "
            f"{ms(max(sc) if sc else math.nan):>6} {ms(percentile(r.status_idle, 99)):>8} "
            f"{len(r.events_collecting) if r.polled else '-':>8} "
            f"{ms(percentile(r.events_collecting, 99)):>6} "
            f"{len(r.errors) if r.polled else '-':>3}"
        )
    out.append(
        "CPU s = the daemon's over the collection; client / others = cores used meanwhile by "
        "this benchmark's process / the rest of the machine"
    )
    out.append(
        "latencies in ms, client side, of the requests sent between the first dock and the "
        "last collection_complete (idle p99: before the dock)"
    )
    for r in results:
        if r.polled:
            out.append(
                f"  {r.case} polled #{r.round}: {r.requests} requests in all, load generator "
                f"loop lag max {r.loop_lag_max_s * 1000:.0f} ms; event cursors: "
                f"{r.events_received} events received, {r.events_missed} missed, "
                f"{r.events_repeated} repeated"
            )
            for e in sorted(set(r.errors))[:5]:
                out.append(f"    error: {e} (x{r.errors.count(e)})")
            if r.status_slowest:
                out.append(
                    "    slowest status (s after the first dock: ms): "
                    + ", ".join(f"{t:.1f}: {lat * 1000:.0f}" for t, lat in r.status_slowest)
                )
    for case in dict.fromkeys(r.case for r in results):
        base = [r for r in results if r.case == case and not r.polled]
        for r in (r for r in results if r.case == case and r.polled):
            if not base or not r.warm_requests:
                continue
            idle = statistics.median(x.warm_cpu_s / x.warm_s for x in base)
            extra = r.warm_cpu_s - idle * r.warm_s
            out.append(
                f"  {case} polled #{r.round}: before the dock, the daemon used "
                f"{r.warm_cpu_s / r.warm_s:.2f} core for {r.warm_requests / r.warm_s:.1f} "
                f"requests/s ({idle:.2f} idle): {extra / r.warm_requests * 1000:.1f} ms of CPU "
                "per request"
            )
    out.append("-" * 100)
    checks: list[tuple[str, str, bool]] = []
    for case in dict.fromkeys(r.case for r in results):
        base = [r for r in results if r.case == case and not r.polled]
        pol = [r for r in results if r.case == case and r.polled]
        lat = [x for r in pol for x in r.status_collecting]
        p99 = percentile(lat, 99)
        checks.append(
            (
                f"{case}: status p99 < {args.target_p99_ms:g} ms",
                f"{ms(p99)} ms (n={len(lat)}, max {ms(max(lat) if lat else math.nan)} ms)",
                p99 * 1000 < args.target_p99_ms,
            )
        )
        b = statistics.median(r.mb_s for r in base)
        p = statistics.median(r.mb_s for r in pol)
        change = p / b - 1
        checks.append(
            (
                f"{case}: throughput polled >= {1 - TARGET_THROUGHPUT_LOSS:.0%} of no-poll",
                f"{p:.1f} vs {b:.1f} MB/s ({change:+.1%})"
                + (f", medians of {len(base)}" if len(base) > 1 else ""),
                change >= -TARGET_THROUGHPUT_LOSS,
            )
        )
        errs = sum(len(r.errors) for r in pol)
        cursor_bad = sum(r.events_missed + r.events_repeated for r in pol)
        checks.append(
            (
                f"{case}: no failed request, cursors exact",
                f"{errs} failed, {cursor_bad} missed/repeated events",
                errs == 0 and cursor_bad == 0,
            )
        )
    for what, got, ok in checks:
        out.append(f"{'PASS' if ok else 'FAIL'}  {what:<46} {got}")
    out.append("=" * 100)
    return (0 if all(ok for _, _, ok in checks) else 1), out


def write_doc(lines: list[str], profiles: list[str], key: str) -> None:
    """Replace the figures block `key` of docs/fleet.md (between its markers), or append it."""
    begin, end = DOC_BEGIN.format(key=key), DOC_END.format(key=key)
    block = [begin, "", "```text", *lines]
    if profiles:
        block += ["", *profiles]
    block += ["```", "", end]
    text = DOC.read_text("utf-8") if DOC.exists() else "# Fleet benchmark\n"
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        text = text.rstrip("\n") + "\n\n" + begin + "\n" + end + "\n"
        start, stop = text.find(begin), text.find(end)
    DOC.write_text(text[:start] + "\n".join(block) + text[stop + len(end) :], "utf-8")


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=float, default=256, help="card size per recorder (MiB)")
    p.add_argument("--recorders", type=int, default=8, help="recorders docked at once (1-32)")
    p.add_argument("--read-mb-s", type=float, default=20.0, help="read limit, limited case")
    p.add_argument("--skip-limited", action="store_true", help="no speed-limited case")
    p.add_argument("--skip-unlimited", action="store_true", help="no unlimited case")
    p.add_argument("--pollers", type=int, default=325, help="central-server pollers")
    p.add_argument("--period", type=float, default=10.0, help="status poll period (s)")
    p.add_argument("--events-period", type=float, default=30.0, help="events poll period (s)")
    p.add_argument(
        "--client",
        choices=("httpx", "raw"),
        default="httpx",
        help="the pollers' HTTP client: httpx, or a minimal one (less CPU taken from the daemon)",
    )
    p.add_argument("--rounds", type=int, default=1, help="no-poll/polled pairs per case")
    p.add_argument("--max-s", type=float, default=1800, help="the load generator's hard stop")
    p.add_argument("--seed", type=int, default=1, help="seed of the cards and the phases")
    p.add_argument("--target-p99-ms", type=float, default=TARGET_P99_MS)
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="nice value of the daemon and of this process (the load generator); e.g. -15 on "
        "a shared host, to approach a dedicated station (root for < 0)",
    )
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S", help="see ingest.py")
    p.add_argument("--profile", action="store_true", help="one more polled run under py-spy")
    p.add_argument(
        "--profile-mode",
        choices=("idle", "gil"),
        default="idle",
        help="py-spy: every thread, waiting ones too (idle), or only the GIL's holder (gil)",
    )
    p.add_argument("--write-doc", action="store_true", help="put the figures in docs/fleet.md")
    p.add_argument("--keep", action="store_true", help="keep run folders")
    p.add_argument("--source", type=Path, default=ROOT, help="run the daemon from this checkout")
    p.add_argument(
        "--cabinet-cpu",
        action="store_true",
        help="the daemon on the emulated cabinet CPU (bench/cabinet.py: 0.84 CPU, SHA "
        "extensions masked; the pollers stay outside, as the central server is)",
    )
    args = p.parse_args(argv)
    if not 1 <= args.recorders <= 32 or args.size_mb <= 0 or args.read_mb_s <= 0:
        p.error("need 1 <= --recorders <= 32, --size-mb > 0, --read-mb-s > 0")
    if args.pollers < 1 or args.period <= 0 or args.events_period <= 0 or args.rounds < 1:
        p.error("need --pollers >= 1, --period > 0, --events-period > 0, --rounds >= 1")
    if args.skip_limited and args.skip_unlimited:
        p.error("nothing to do with both --skip-limited and --skip-unlimited")
    if args.profile and not (
        shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy").exists()
    ):
        p.error("--profile needs py-spy (pip install py-spy)")
    args.source = args.source.resolve()
    command = " ".join(["python", "bench/fleet.py", *(argv if argv is not None else sys.argv[1:])])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    notes: list[str] = []
    load = os.getloadavg()
    notes.append(f"load average at the start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if os.geteuid() != 0:
        notes.append("not root: the page cache cannot be dropped")
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        notes.append(f"daemon and load generator run at nice {args.nice}")
    size_gib = args.size_mb / 1024
    OUT.mkdir(parents=True, exist_ok=True)
    stack = contextlib.ExitStack()
    args.cabinet = stack.enter_context(CabinetCpu(0.84)) if args.cabinet_cpu else None
    if args.cabinet is not None:
        notes.append(f"daemon on the emulated cabinet CPU: {args.cabinet.describe()}")
    started = time.monotonic()
    cards = ing.ensure_cards(size_gib, args.recorders, args.seed)
    work = OUT / "runs" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True)
    cases = []
    if not args.skip_limited:
        cases.append(("limited", args.read_mb_s))
    if not args.skip_unlimited:
        cases.append(("unlimited", None))
    results: list[RunResult] = []
    profiles: list[str] = []
    try:
        for case, rate in cases:
            for rnd in range(1, args.rounds + 1):
                order = [False, True] if rnd % 2 else [True, False]  # interleaved
                for polled in order:
                    results.append(run_once(case, cards, rate, work, args, polled, rnd))
                    if not args.keep:
                        shutil.rmtree(work / f"{case}-{'polled' if polled else 'nopoll'}-r{rnd}")
            if args.profile:
                r = run_once(case, cards, rate, work, args, True, 0, profile=True)
                assert r.profile is not None
                sc = r.status_collecting
                profiles.append(
                    f"py-spy ({case}, polled, profiled run not counted above): status p50/p99 "
                    f"{ms(percentile(sc, 50))}/{ms(percentile(sc, 99))} ms, "
                    f"{r.mb_s:.1f} MB/s"
                )
                profiles.append(f"py-spy mode: --{args.profile_mode}")
                profiles += summarize_profile(Path(r.profile), r.profile_ticks)
                keep = OUT / f"py-spy-{case}-{dt.datetime.now():%Y%m%d-%H%M%S}.txt"
                shutil.copy(r.profile, keep)
                profiles.append(f"raw stacks: {keep.relative_to(ROOT)}")
                if not args.keep:
                    shutil.rmtree(Path(r.profile).parent)
    except ing.BenchError as e:
        log(f"BENCHMARK FAILED: {e}")
        return 2
    finally:
        stack.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if any(not r.caches_dropped for r in results):
        notes.append("page cache not dropped before a run")
    notes.append(f"whole benchmark took {time.monotonic() - started:.0f} s")
    code, lines = report(results, args, notes, command)
    print()
    print("\n".join(lines))
    for line in profiles:
        print(line)
    saved = OUT / f"results-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    saved.write_text(
        json.dumps(
            {
                "args": {
                    k: str(v) if isinstance(v, Path) else v
                    for k, v in vars(args).items()
                    if k != "cabinet"
                },
                "notes": notes,
                "runs": [{**dataclasses.asdict(r), "mb_s": r.mb_s} for r in results],
                "profile": profiles,
            }
        )
    )
    print(f"raw figures: {saved.relative_to(ROOT)}")
    if args.write_doc:
        write_doc(lines, profiles, f"{args.client} client")
        print(f"figures written to {DOC.relative_to(ROOT)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
