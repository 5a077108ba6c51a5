#!/usr/bin/env python3
"""Ingest benchmark: several simulated recorders collected at once by a real daemon.

    .venv/bin/python bench/ingest.py [--size-gib 1.0] [--recorders 8] [--limited-mb-s 20]
        [--skip-limited] [--skip-unlimited] [--skip-cp] [--cp-runs 2] [--keep] [--seed 1]
        [--wait-quiet S] [--nice N] [--source CHECKOUT | --rev REVISION]

What one run does (see docs/benchmarks.md for the figures and what limits them):

1. Builds N recorder cards of SIZE GiB each with real media (AVI video of 50-500 MB,
   ~1.2 MB JPEG photos, WAV audio, a device log), once: they are cached under
   bench/out/cards/ and reused by later runs with the same parameters.
2. "limited" case: a fresh `station run` (simulated bus, two store folders, SQLite
   catalog, station defaults for chunk and sync sizes), a fresh copy of the cards with
   `read_mb_s` set (USB 2.0 speed), page cache dropped, all N recorders docked at once;
   timed from the first dock to every slot `complete`.
3. "unlimited" case: the same without a speed limit.
4. Baseline: `cp -r` of the same cards into the unlimited case's store folder (emptied
   first), then `sync`, from a cold page cache, --cp-runs times; the ratio of the
   station's time to the fastest cp is reported.

Per case it prints aggregate MB/s (MB = 1e6 bytes), CPU seconds of the daemon (user +
system, all threads) per GiB collected, and the daemon's peak RSS (kernel VmHWM, and the
maximum of 0.1 s samples). Every case is checked: the catalog must hold as many files as
the cards had, the store as many bytes, and the cards must be empty.

The "fresh copy" of a card is a tree of hard links to the cached files (the recorder's
card is another device in real life: the station reads and unlinks card files, never
writes them, so linking is safe and the store disk does not pay for freeing the card's
blocks). recorder.json is written anew each time.

Exit status: 0 every target met, 1 a target missed, 2 the benchmark itself failed (bad
arguments, a slot in error, counts that do not match, a timeout).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import tomli_w

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from station.config import StoreSection  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from cabinet import CabinetCpu, CabinetError  # noqa: E402, I001
from station.sim import media  # noqa: E402
from station.sim.recorder import RecorderSpec, build_recorder, dock  # noqa: E402

OUT = ROOT / "bench" / "out"
CARDS = OUT / "cards"
RUNS = OUT / "runs"
MB = 1_000_000
MIB = 1 << 20
GIB = 1 << 30
PLAN_VERSION = 1  # bump when the card plan changes: cached cards are rebuilt
TOKEN = "bench-" + secrets.token_hex(16)

# Targets from the issue.
TARGET_LIMITED_MB_S = 150.0
TARGET_RATIO = 2.0
TARGET_CPU_S_PER_GIB = 3.0
TARGET_RSS_MB = 200.0
# Issue #15, on the emulated cabinet: share of the ceiling, status p99, peak RSS.
TARGET_SHARE = 0.95
TARGET_STATUS_P99_MS = 100.0
TARGET_CABINET_RSS_MB = 150.0
TARGET_MEAN_GAIN = 0.30  # scheduled per link vs equal shares: mean time to complete
TARGET_MASKED_CPU_S_PER_GIB = 4.5  # SHA extensions masked, no quota
CHROMIUM = "/usr/bin/chromium"
# Cores used by other processes (and kernel threads) during a case above which its figures
# are flagged: the station's own writeback alone stays below this.
BUSY_CORES = 0.5

# The card mix: share of files by kind, and their sizes.
VIDEO_SHARE, PHOTO_SHARE = 0.65, 0.25  # the rest is audio
VIDEO_MB = (50, 500)  # log-uniform
AUDIO_S = (120, 1200)  # WAV 16 kHz mono s16 = 32 kB/s, so 3.8-38 MB
PHOTO_BYTES = 1_200_000  # what make_photo writes at 1920x1080, roughly
WAV_HEADER = 78


class BenchError(Exception):
    """The benchmark could not produce honest figures."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- the cards ----------------------------------------------------------------------------


def card_plan(index: int, target: int, seed: int) -> list[tuple[str, str, int, dt.datetime]]:
    """(card path, kind, size or seconds, recorded at) for recorder `index`, ~`target` bytes."""
    rng = random.Random(f"{seed}-{index}-{target}")
    officer, serial = officer_no(index), serial_no(index)
    t = dt.datetime(2026, 11, 20, 7, 30, 0) + dt.timedelta(minutes=rng.randint(0, 60))
    plan: list[tuple[str, str, int, dt.datetime]] = []
    remaining = target - 200  # the device log
    seq = 0
    while remaining > 0:
        seq += 1
        r = rng.random()
        kind = "video" if seq == 1 or r < VIDEO_SHARE else "photo"
        if kind == "photo" and r >= VIDEO_SHARE + PHOTO_SHARE:
            kind = "audio"
        imp = seq == 2 or (kind == "video" and rng.random() < 0.1)
        if kind == "video":
            lo, hi = VIDEO_MB
            size = int(math.exp(rng.uniform(math.log(lo), math.log(hi))) * MB)
            amount = size = min(size, remaining)
            seconds = size / 6_500_000  # ~215 kB MJPEG frames at 30 fps
        elif kind == "audio":
            seconds = rng.uniform(*AUDIO_S)
            size = int(seconds * 32_000) + WAV_HEADER
            if size > remaining:
                seconds = max(remaining - WAV_HEADER, 32_000) / 32_000
                size = int(seconds * 32_000) + WAV_HEADER
            amount = round(seconds * 1000)  # milliseconds, an int like the sizes
        else:
            size = amount = PHOTO_BYTES
            seconds = 0
        ext = {"video": "AVI", "photo": "JPG", "audio": "WAV"}[kind]
        name = f"{officer}_{serial}_{t:%Y%m%d%H%M%S}_{seq % 999 + 1:04d}{'IMP' if imp else ''}"
        folder = "DCIM/101ANDRO" if imp else "DCIM/100ANDRO"
        plan.append((f"{folder}/{name}.{ext}", kind, amount, t))
        remaining -= size
        t += dt.timedelta(seconds=int(seconds) + rng.randint(30, 900))
    return plan


def officer_no(index: int) -> str:
    return f"{310101 + index:06d}"


def serial_no(index: int) -> str:
    return f"ZFY{index + 1:05d}"


def build_card(dest: Path, index: int, target: int, seed: int) -> tuple[int, int]:
    """Build recorder `index` into `dest` (a new folder); return (files, bytes) on its card."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    spec = RecorderSpec(
        serial=serial_no(index),
        officer_no=officer_no(index),
        officer_name=f"Bench Officer {index + 1}",
        unit_no="310101000000",
        unit_name="Bench Unit",
        battery_percent=90,
        files=0,  # the card's files are ours; build_recorder writes recorder.json and the log
    )
    folder = build_recorder(tmp, spec, seed=seed + index)
    card = folder / "card"
    for rel, kind, amount, when in card_plan(index, target, seed):
        path = card / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        label = f"{spec.officer_no} {spec.serial}"
        s = random.Random(f"{seed}-{index}-{rel}").randrange(1 << 30)
        if kind == "video":
            media.make_video(path, amount, label=label, seed=s, recorded_at=when)
        elif kind == "photo":
            media.make_photo(path, label=label, seed=s)
        else:
            media.make_audio(path, amount / 1000, seed=s)
        os.utime(path, (when.timestamp(), when.timestamp()))
    os.rename(folder, dest)
    tmp.rmdir()
    return card_stats(dest)


def card_stats(recorder: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _dirs, names in os.walk(recorder / "card"):
        for n in names:
            files += 1
            size += os.lstat(os.path.join(dirpath, n)).st_size
    return files, size


def cache_dir(size_gib: float, seed: int) -> Path:
    return CARDS / f"v{PLAN_VERSION}-{size_gib:g}gib-seed{seed}"


def ensure_cards(size_gib: float, recorders: int, seed: int) -> list[Path]:
    """The cached recorder folders, built (two at a time) where missing."""
    base = cache_dir(size_gib, seed)
    base.mkdir(parents=True, exist_ok=True)
    target = int(size_gib * GIB)
    wanted = [base / f"rec-{i + 1:02d}" for i in range(recorders)]
    missing = [(i, p) for i, p in enumerate(wanted) if not (p / "card").is_dir()]
    if missing:
        log(f"building {len(missing)} card(s) of {size_gib:g} GiB in {base} (cached for reuse)")
        t0 = time.monotonic()
        workers = min(len(missing), max(1, os.cpu_count() or 1))
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            futs = [pool.submit(build_card, p, i, target, seed) for i, p in missing]
            for f in futs:
                f.result()
        subprocess.run(["sync"], check=False)
        log(f"cards built in {time.monotonic() - t0:.1f} s")
    else:
        log(f"reusing cached cards in {base}")
    return wanted


def fresh_copy(cached: Path, dest: Path, read_mb_s: float | None) -> None:
    """A recorder folder at `dest` whose card files are hard links to the cached ones."""
    for dirpath, _dirs, names in os.walk(cached / "card"):
        rel = Path(dirpath).relative_to(cached)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for n in names:
            src, dst = Path(dirpath) / n, dest / rel / n
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    meta = json.loads((cached / "recorder.json").read_text("utf-8"))
    meta.pop("read_mb_s", None)
    if read_mb_s:
        meta["read_mb_s"] = read_mb_s
    (dest / "recorder.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2), "utf-8")


def drop_caches() -> bool:
    """Write back and drop the page cache, so reads come from the disk (needs root)."""
    subprocess.run(["sync"], check=False)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


# --- the daemon ---------------------------------------------------------------------------


def export_rev(rev: str) -> Path:
    """The station's code at git revision `rev`, exported under bench/out/src/."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dest = OUT / "src" / sha[:12]
    if not (dest / "REVISION").is_file():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        top = subprocess.run(  # before the renovation, drivers/ and web/ stood beside station/
            ["git", "-C", str(ROOT), "ls-tree", "--name-only", sha],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        packages = [p for p in ("station", "drivers", "web") if p in top]
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", sha, *packages],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        (dest / "REVISION").write_text(sha + "\n")
    return dest


def source_version(source: Path) -> str:
    """The commit the daemon runs from, and whether its code differs from it."""
    if (source / "REVISION").is_file():
        return "git archive of " + (source / "REVISION").read_text().strip()[:12]
    try:
        top = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if Path(top).resolve() != source.resolve():
            return "not a git checkout"
        head = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--", "station"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return head + (" with uncommitted changes" if dirty else "")


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent not idle (all cores)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def wait_quiet(max_wait: float) -> float:
    """Wait (at most `max_wait` s) for 4 s in a row with under 0.25 core busy; return it."""
    deadline = time.monotonic() + max_wait
    quiet = 0
    busy = math.inf
    while quiet < 2:
        b0 = busy_cpu_s()
        time.sleep(2)
        busy = (busy_cpu_s() - b0) / 2
        quiet = quiet + 1 if busy < 0.25 else 0
        if time.monotonic() > deadline:
            break
    return busy


def niceness(n: int) -> Callable[[], None] | None:
    """A preexec_fn giving a child process nice value `n` (None for 0)."""
    if not n:
        return None

    def apply() -> None:
        os.setpriority(os.PRIO_PROCESS, 0, n)

    return apply


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.node()}: {os.cpu_count()}-core {model} VM, "
        f"{psutil.virtual_memory().total / GIB:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """A `station run` in a subprocess, with a sampler for its CPU time and memory."""

    def __init__(
        self,
        root: Path,
        ports: int,
        source: Path,
        nice: int = 0,
        *,
        cabinet: CabinetCpu | None = None,
        links: list[dict[str, Any]] | None = None,
        chunk_kb: int | None = None,
        link_scheduling: bool | None = None,
        bus: Path | None = None,
    ) -> None:
        self.root = root
        self.source = source
        self.nice = nice
        self.cabinet = cabinet
        self.bus = bus or root / "bus"
        self.disks = [root / "disk1", root / "disk2"]
        self.port = free_port()
        self.config = root / "station.toml"
        for d in (self.bus, *self.disks):
            d.mkdir(parents=True, exist_ok=True)
        cfg = {
            "station": {"id": "BENCH-0001", "name": "Benchmark station"},
            "store": {
                "disks": [str(d) for d in self.disks],
                "min_free_mb": 64,
                "folder_disks": True,  # plain folders of the bench, not mounted disks
            },
            "database": {"url": f"sqlite:///{root / 'catalog.db'}"},
            "bus": {"kind": "simulated", "path": str(self.bus), "ports": ports},
            "registration": {"mode": "auto"},
            "web": {"host": "127.0.0.1", "port": self.port},
            "api": {"tokens": [TOKEN]},
        }
        if chunk_kb:
            cfg["store"]["chunk_kb"] = chunk_kb
        if link_scheduling is not None:  # left out: the code under test may predate the key
            cfg["bus"]["link_scheduling"] = link_scheduling
        if links:  # the simulated bus's shared USB links (station/drivers/simulated.py)
            (self.bus / "links.json").write_text(json.dumps({"links": links}))
        self.config.write_text(tomli_w.dumps(cfg))
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        self.rss_max = 0
        self._sampling = threading.Event()

    def start(self) -> None:
        logf = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - lives with the process
        cab, nice = self.cabinet, niceness(self.nice)

        def preexec() -> None:
            if nice is not None:
                nice()
            if cab is not None:
                cab.enter()

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "station", "run", "--config", str(self.config)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
            env=cab.env(os.environ) if cab is not None else None,
            cwd=self.source,  # `python -m` puts the working folder first on sys.path
        )
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.client.get("/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"daemon did not answer /api/v1/health:\n{self.log_tail()}")
            time.sleep(0.1)
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        assert self.ps is not None
        while not self._sampling.is_set():
            try:
                self.rss_max = max(self.rss_max, self.ps.memory_info().rss)
            except psutil.Error:
                return
            self._sampling.wait(0.1)

    def cpu_s(self) -> tuple[float, float, float]:
        """CPU seconds of the daemon, all threads: (user, system, its finished children)."""
        assert self.ps is not None
        t = self.ps.cpu_times()
        return t.user, t.system, t.children_user + t.children_system

    def vm_hwm(self) -> int:
        """The kernel's peak resident set size of the daemon, in bytes."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def status(self) -> dict[str, Any]:
        r = self.client.get("/api/v1/status")
        r.raise_for_status()
        return r.json()

    def files_total(self) -> int:
        r = self.client.get("/api/v1/files", params={"limit": 1})
        r.raise_for_status()
        return int(r.json()["total"])

    def log_tail(self, n: int = 4000) -> str:
        try:
            return (self.root / "daemon.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        self._sampling.set()
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Kiosk:
    """The touchscreen's page (`/`) open in Debian's Chromium, headless at 1024x600, as
    the cabinet's kiosk runs it beside the daemon; in its own cgroup of the cabinet's
    quota when the cabinet CPU is emulated (the cabinet's second core)."""

    def __init__(self, url: str, root: Path, cabinet: CabinetCpu | None) -> None:
        self.url, self.root, self.cabinet = url, root, cabinet
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    def start(self) -> None:
        cab = self.cabinet
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--window-size=1024,600",
                f"--user-data-dir={self.root / 'chromium'}",
                "--remote-debugging-port=0",
                "--no-first-run",
                self.url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=cab.enter if cab is not None else None,
            env=cab.env(os.environ) if cab is not None else None,
        )
        self.ps = psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        """CPU seconds of Chromium and all its processes so far (the live ones)."""
        if self.ps is None:
            return 0.0
        total = 0.0
        for p in [self.ps, *self.ps.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def hub_links(hubs: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """links.json entries for `--hub N:MBPS` (repeated): ports 1..N behind hub-1, etc."""
    links, port = [], 1
    for i, (n, mb_s) in enumerate(hubs):
        links.append({"name": f"hub-{i + 1}", "ports": list(range(port, port + n)), "mb_s": mb_s})
        port += n
    return links


def ceiling_mb_s(recorders: int, read_mb_s: float | None, links: list[dict[str, Any]]) -> float:
    """The bus's ceiling: each link's rate (or what its recorders can read, if less), plus
    the recorders on no link at their own limit (inf when a recorder has none)."""
    per = read_mb_s or math.inf
    on_link: set[int] = set()
    total = 0.0
    for link in links:
        ports = [p for p in link["ports"] if p <= recorders]
        on_link |= set(ports)
        total += min(float(link["mb_s"]), per * len(ports)) if ports else 0.0
    return total + per * (recorders - len(on_link))


# --- one case -----------------------------------------------------------------------------


@dataclasses.dataclass
class CaseResult:
    name: str
    read_mb_s: float | None
    recorders: int
    files: int
    bytes: int
    wall_s: float
    cpu_s: float
    cpu_sys_s: float  # the part spent in the kernel (copying, page cache, fdatasync)
    cpu_children_s: float  # the part spent by its child processes (speech synthesis, ...)
    rss_peak: int  # VmHWM
    rss_sampled: int
    all_collecting_s: float
    done_s: list[float]
    caches_dropped: bool
    others_cpu_s: float  # CPU time of everything but the daemon meanwhile (incl. writeback)
    run_dir: str
    ceiling_mb_s: float = math.inf
    status_ms: list[float] = dataclasses.field(default_factory=list)
    kiosk_cpu_s: float | None = None
    throttled_s: float = 0.0  # time the cabinet's quota held the daemon back
    card_bytes_read: int = 0  # all the card reads (the second look included), from the catalog

    @property
    def share(self) -> float:
        return self.mb_s / self.ceiling_mb_s if math.isfinite(self.ceiling_mb_s) else math.nan

    @property
    def mean_done_s(self) -> float:
        return sum(self.done_s) / len(self.done_s)

    def status_pct(self, p: float) -> float:
        xs = sorted(self.status_ms)
        if not xs:
            return math.nan
        return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]

    @property
    def mb_s(self) -> float:
        return self.bytes / MB / self.wall_s

    @property
    def cpu_per_gib(self) -> float:
        return self.cpu_s / (self.bytes / GIB)


def store_stats(disks: list[Path]) -> tuple[int, int]:
    files = size = 0
    for d in disks:
        for dirpath, dirs, names in os.walk(d):
            if Path(dirpath) == d:  # .staging, .meta, the disk's marker: the station's own
                dirs[:] = [x for x in dirs if not x.startswith(".")]
                names = [x for x in names if not x.startswith(".")]
            for n in names:
                files += 1
                size += os.lstat(os.path.join(dirpath, n)).st_size
    return files, size


@dataclasses.dataclass
class Setup:
    """How a case runs: where the cards live, the CPU, the bus's links, the kiosk."""

    source: Path
    quiet_s: float = 0.0
    nice: int = 0
    cabinet: CabinetCpu | None = None
    kiosk_cabinet: CabinetCpu | None = None
    kiosk: bool = False
    links: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    chunk_kb: int | None = None
    card_root: Path | None = None  # the cards' own filesystem (tmpfs), None: the store's


def run_case(
    name: str,
    cards: list[Path],
    read_mb_s: float | None,
    keep_dir: Path,
    setup: Setup,
    link_scheduling: bool | None = None,
) -> tuple[CaseResult, Daemon]:
    """Collect fresh copies of `cards` with a fresh daemon; the daemon is returned stopped."""
    source, quiet_s, nice = setup.source, setup.quiet_s, setup.nice
    root = keep_dir / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    n = len(cards)
    # With a card tmpfs the whole bus lives there (cards are docked by a rename, within
    # one filesystem): the cards are another device than the store, as real cards are.
    bus = None
    if setup.card_root is not None:
        bus = setup.card_root / "bus" / name
        shutil.rmtree(bus, ignore_errors=True)
    daemon = Daemon(
        root, ports=max(8, n), source=source, nice=nice, cabinet=setup.cabinet,
        links=setup.links, chunk_kb=setup.chunk_kb, link_scheduling=link_scheduling, bus=bus,
    )  # fmt: skip
    staged = daemon.bus / ".building"
    files = size = 0
    for i, c in enumerate(cards):
        fresh_copy(c, staged / f"rec-{i + 1:02d}", read_mb_s)
        f, s = card_stats(staged / f"rec-{i + 1:02d}")
        files, size = files + f, size + s
    limit = f"{read_mb_s:g} MB/s each" if read_mb_s else "no speed limit"
    log(f"{name}: {n} recorders, {files} files, {size / GIB:.2f} GiB, {limit}")
    try:
        daemon.start()
        time.sleep(1.0)  # let start-up work (migrations, first disk check) settle
        if quiet_s > 0:
            log(f"waiting up to {quiet_s:g} s for the machine to be quiet")
            busy = wait_quiet(quiet_s)
            log(f"  {busy:.2f} core(s) busy")
        kiosk = None
        if setup.kiosk:
            kiosk = Kiosk(f"http://127.0.0.1:{daemon.port}/", root, setup.kiosk_cabinet)
            kiosk.start()
            time.sleep(5)  # the page loaded and its live stream open
        dropped = drop_caches()
        if not dropped:
            log("WARNING: could not drop the page cache (not root?): reads may come from RAM")
        ceiling = ceiling_mb_s(n, read_mb_s, setup.links)
        expected = size / MB / (ceiling if math.isfinite(ceiling) else 50)
        timeout = max(180.0, 3 * expected)
        status_ms: list[float] = []
        kiosk0 = kiosk.cpu_s() if kiosk else 0.0
        throttled0 = setup.cabinet.throttled_s() if setup.cabinet else 0.0
        cpu0 = daemon.cpu_s()
        busy0 = busy_cpu_s()
        t0 = time.monotonic()
        for i in range(n):
            dock(daemon.bus, i + 1, staged / f"rec-{i + 1:02d}")
        done: dict[int, float] = {}
        all_collecting = math.nan
        last_report = t0
        while True:
            time.sleep(0.2)
            q0 = time.perf_counter()
            st = daemon.status()
            status_ms.append((time.perf_counter() - q0) * 1000)
            now = time.monotonic()
            slots = st["slots"][:n]
            for s in slots:
                if s["state"] == "complete" and s["port"] not in done:
                    done[s["port"]] = now - t0
                if s["state"] == "error":
                    raise BenchError(f"port {s['port']} in error: {s['error']}")
            if math.isnan(all_collecting) and all(
                s["state"] in ("collecting", "complete") for s in slots
            ):
                all_collecting = now - t0
            if len(done) == n:
                break
            if now - last_report >= 10:
                last_report = now
                got = sum(s["bytes_done"] for s in slots)
                log(f"  {now - t0:5.0f} s: {got / GIB:.2f} GiB, {len(done)}/{n} complete")
            if now - t0 > timeout:
                raise BenchError(f"not complete after {timeout:.0f} s: {slots}")
            if daemon.proc is not None and daemon.proc.poll() is not None:
                raise BenchError(f"daemon died:\n{daemon.log_tail()}")
        wall = max(done.values())
        cpu1 = daemon.cpu_s()
        busy1 = busy_cpu_s()
        kiosk_cpu = kiosk.cpu_s() - kiosk0 if kiosk else None
        throttled = (setup.cabinet.throttled_s() if setup.cabinet else 0.0) - throttled0
        if kiosk is not None:
            kiosk.stop()
        hwm = daemon.vm_hwm()
        collected = daemon.files_total()
        slots = daemon.status()["slots"][:n]
    except BaseException:
        print(daemon.log_tail(), file=sys.stderr)
        if kiosk is not None:
            kiosk.stop()
        daemon.stop()
        raise
    daemon.stop()
    with contextlib.closing(sqlite3.connect(root / "catalog.db")) as db:
        row = db.execute("SELECT sum(bytes_read) FROM collection_sessions").fetchone()
        bytes_read = int(row[0] or 0)

    # Honest numbers: everything on the cards reached the catalog and the store.
    left = sum(card_stats(daemon.bus / f"port-{i + 1}")[0] for i in range(n))
    s_files, s_bytes = store_stats(daemon.disks)
    slot_files = sum(s["files_total"] for s in slots)
    slot_bytes = sum(s["bytes_total"] for s in slots)
    problems = []
    if collected != files:
        problems.append(f"catalog holds {collected} files, the cards had {files}")
    if (slot_files, slot_bytes) != (files, size):
        problems.append(f"slots saw {slot_files} files / {slot_bytes} B, cards {files} / {size} B")
    if (s_files, s_bytes) != (files, size):
        problems.append(f"store holds {s_files} files / {s_bytes} B, cards {files} / {size} B")
    if left:
        problems.append(f"{left} file(s) left on the cards")
    if problems:
        raise BenchError(f"{name}: " + "; ".join(problems))
    log(
        f"{name}: verified {collected} files / {size / GIB:.2f} GiB in catalog and store, "
        f"cards empty; {wall:.1f} s"
    )
    result = CaseResult(
        name=name,
        read_mb_s=read_mb_s,
        recorders=n,
        files=files,
        bytes=size,
        wall_s=wall,
        cpu_s=sum(cpu1) - sum(cpu0),
        cpu_sys_s=cpu1[1] - cpu0[1],
        cpu_children_s=cpu1[2] - cpu0[2],
        rss_peak=hwm,
        rss_sampled=daemon.rss_max,
        all_collecting_s=all_collecting,
        done_s=[done[p] for p in sorted(done)],
        caches_dropped=dropped,
        others_cpu_s=max(0.0, busy1 - busy0 - (sum(cpu1) - sum(cpu0)) - (kiosk_cpu or 0.0)),
        run_dir=str(root),
        ceiling_mb_s=ceiling,
        status_ms=status_ms,
        kiosk_cpu_s=kiosk_cpu,
        throttled_s=throttled,
        card_bytes_read=bytes_read,
    )
    return result, daemon


@dataclasses.dataclass
class CpResult:
    wall_s: float  # the fastest of the runs: the baseline the station is held to
    cpu_s: float  # of cp and sync themselves, in that run (the kernel's writeback threads not)
    runs_s: list[float]
    caches_dropped: bool


def cp_baseline(
    cards: list[Path], store: Path, work: Path, runs: int, quiet_s: float, nice: int
) -> CpResult:
    """`cp -r` of fresh copies of the cards into `store` (emptied first), then `sync`.

    Repeated `runs` times (this disk's speed wanders); the fastest run counts.
    """
    timings: list[tuple[float, float]] = []
    dropped = True
    for _ in range(runs):
        staged = work / "cp-cards"
        shutil.rmtree(staged, ignore_errors=True)
        for i, c in enumerate(cards):
            fresh_copy(c, staged / f"rec-{i + 1:02d}", None)
        for p in list(store.iterdir()):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        if quiet_s > 0:
            wait_quiet(quiet_s)
        dropped = drop_caches() and dropped
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        cards_now = sorted(str(p) for p in staged.iterdir())
        subprocess.run(["cp", "-r", *cards_now, str(store)], check=True, preexec_fn=niceness(nice))
        subprocess.run(["sync"], check=True, preexec_fn=niceness(nice))
        secs = time.monotonic() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        shutil.rmtree(staged)
        timings.append((secs, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime))
        log(f"  cp -r + sync: {secs:.1f} s")
    best = min(timings)
    return CpResult(best[0], best[1], [t for t, _ in timings], dropped)


# --- reporting ----------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(
    results: list[CaseResult], cp: CpResult | None, args: argparse.Namespace, notes: list[str]
) -> int:
    store_cfg = StoreSection()
    print()
    print("=" * 78)
    print(
        f"ingest benchmark  {dt.datetime.now():%Y-%m-%d %H:%M}  {platform.node()}  "
        f"{os.cpu_count()} cores  {psutil.virtual_memory().total / GIB:.0f} GiB RAM"
    )
    print(
        f"{args.recorders} recorders x {args.size_gib:g} GiB; station defaults: chunk "
        f"{store_cfg.chunk_kb} KiB, fdatasync every {store_cfg.sync_every_mb} MiB, "
        "SHA-256 while streaming + uncached read-back"
    )
    print(f"daemon: {args.source} ({source_version(args.source)})")
    print(f"CPU: {args.cpu_desc}; cards on {args.cards}; store on the disk of {OUT}")
    if args.hub:
        print(f"links: {json.dumps(hub_links(args.hub))}")
    print(f"command: {args.command}")
    for n in notes:
        print(f"note: {n}")
    print("-" * 78)
    print(
        f"{'case':<10} {'files':>5} {'GiB':>5} {'wall s':>6} {'MB/s':>6} {'CPU s':>5} "
        f"{'(sys)':>5} {'CPU s/GiB':>9} {'VmHWM MB':>8} {'RSS MB':>6}"
    )
    for r in results:
        print(
            f"{r.name:<10} {r.files:>5} {r.bytes / GIB:>5.2f} {r.wall_s:>6.1f} {r.mb_s:>6.1f} "
            f"{r.cpu_s:>5.1f} {r.cpu_sys_s:>5.1f} {r.cpu_per_gib:>9.2f} "
            f"{r.rss_peak / MB:>8.1f} {r.rss_sampled / MB:>6.1f}"
        )
    print(
        f"{'case':<14} {'ceiling':>7} {'share':>6} {'mean done s':>11} {'worst s':>7} "
        f"{'status p50/p99/max ms':>21} {'kiosk CPU-s':>11} {'throttled s':>11}"
    )
    for r in results:
        kiosk = f"{r.kiosk_cpu_s:.1f}" if r.kiosk_cpu_s is not None else "-"
        print(
            f"{r.name:<14} {r.ceiling_mb_s:>7.0f} {r.share:>6.1%} {r.mean_done_s:>11.1f} "
            f"{max(r.done_s):>7.1f} {r.status_pct(50):>7.1f}/{r.status_pct(99):>5.1f}/"
            f"{max(r.status_ms, default=math.nan):>6.1f} {kiosk:>11} {r.throttled_s:>11.1f}"
        )
    for r in results:
        first, last = min(r.done_s), max(r.done_s)
        print(
            f"  {r.name}: all slots collecting after {r.all_collecting_s:.1f} s; recorders "
            f"complete between {first:.1f} and {last:.1f} s"
            + (
                f"; ceiling {r.ceiling_mb_s:g} MB/s ({r.read_mb_s:g} MB/s per recorder"
                f"{', on the links above' if args.hub else ''}), reached {r.share:.0%}"
                if r.read_mb_s
                else ""
            )
        )
        if r.card_bytes_read:
            print(
                f"  {r.name}: {r.card_bytes_read / MB:.0f} MB read from the cards for "
                f"{r.bytes / MB:.0f} MB of files ({r.card_bytes_read / r.bytes - 1:+.0%}: the "
                f"second look); all reads {r.card_bytes_read / MB / r.wall_s:.1f} MB/s"
            )
        if r.cpu_children_s > 0.05:
            print(
                f"  {r.name}: {r.cpu_children_s:.1f} of the daemon's CPU-s were its child "
                "processes (spoken announcements)"
            )
        others = r.others_cpu_s / r.wall_s
        print(
            f"  {r.name}: the rest of the machine used {r.others_cpu_s:.1f} CPU-s meanwhile "
            f"(kernel writeback included; {others:.2f} of {os.cpu_count()} cores)"
            + ("  WARNING: busy machine, figures skewed" if others > BUSY_CORES else "")
        )
    unlimited = next((r for r in results if r.read_mb_s is None), None)
    if cp is not None and unlimited is not None:
        print(
            f"  cp -r + sync of the same cards: {cp.wall_s:.1f} s "
            f"({unlimited.bytes / MB / cp.wall_s:.1f} MB/s; fastest of "
            f"{', '.join(f'{t:.1f}' for t in cp.runs_s)} s), cp+sync CPU "
            f"{cp.cpu_s / (unlimited.bytes / GIB):.2f} s/GiB"
        )
    print("-" * 78)
    checks: list[tuple[str, str, bool]] = []
    limited = next((r for r in results if r.name == "limited"), None)
    if limited is not None:
        # 150 MB/s is 93.75 % of the 8 x 20 MB/s ceiling; other shapes keep that share.
        assert limited.read_mb_s is not None
        ceiling = limited.recorders * limited.read_mb_s
        target = TARGET_LIMITED_MB_S * ceiling / (8 * 20)
        checks.append(
            (
                f"limited aggregate >= {target:g} MB/s",
                f"{limited.mb_s:.1f} MB/s",
                limited.mb_s >= target,
            )
        )
    if unlimited is not None and cp is not None:
        ratio = unlimited.wall_s / cp.wall_s
        checks.append(
            (
                f"unlimited station / cp -r+sync <= {TARGET_RATIO:g}",
                f"{ratio:.2f} ({unlimited.wall_s:.1f} s / {cp.wall_s:.1f} s)",
                ratio <= TARGET_RATIO,
            )
        )
    cpu_target = TARGET_CPU_S_PER_GIB if not args.mask_sha else TARGET_MASKED_CPU_S_PER_GIB
    rss_target = TARGET_RSS_MB if not args.cabinet_cpu else TARGET_CABINET_RSS_MB
    for r in results:
        if args.cabinet_cpu:
            continue  # under the quota CPU-s are capped, not a cost: see the --mask-sha run
        checks.append(
            (
                f"{r.name}: CPU <= {cpu_target:g} s per GiB",
                f"{r.cpu_per_gib:.2f} s/GiB",
                r.cpu_per_gib <= cpu_target,
            )
        )
    for r in results:
        checks.append(
            (
                f"{r.name}: peak RSS <= {rss_target:g} MB",
                f"{r.rss_peak / MB:.1f} MB",
                r.rss_peak / MB <= rss_target,
            )
        )
    for r in results:
        if r.read_mb_s and (args.cabinet_cpu or args.hub):
            checks.append(
                (
                    f"{r.name}: >= {TARGET_SHARE:.0%} of the {r.ceiling_mb_s:g} MB/s ceiling",
                    f"{r.share:.1%}",
                    r.share >= TARGET_SHARE or r.name == "hub-equal",
                )
            )
        if args.kiosk and r.read_mb_s:
            checks.append(
                (
                    f"{r.name}: status p99 < {TARGET_STATUS_P99_MS:g} ms (kiosk open)",
                    f"{r.status_pct(99):.1f} ms",
                    r.status_pct(99) < TARGET_STATUS_P99_MS,
                )
            )
    sched = next((r for r in results if r.name == "hub-scheduled"), None)
    equal = next((r for r in results if r.name == "hub-equal"), None)
    if sched is not None and equal is not None:
        gain = 1 - sched.mean_done_s / equal.mean_done_s
        checks.append(
            (
                f"mean time to complete >= {TARGET_MEAN_GAIN:.0%} below equal shares",
                f"{gain:.1%} ({sched.mean_done_s:.1f} s vs {equal.mean_done_s:.1f} s)",
                gain >= TARGET_MEAN_GAIN,
            )
        )
    for what, got, ok in checks:
        print(f"{verdict(ok)}  {what:<44} {got}")
    print("=" * 78)
    return 0 if all(ok for _, _, ok in checks) else 1


def save_json(
    results: list[CaseResult], cp: CpResult | None, args: argparse.Namespace, notes: list[str]
) -> Path:
    path = OUT / f"results-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    data = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "notes": notes,
        "cp": dataclasses.asdict(cp) if cp else None,
        "cases": [
            {**dataclasses.asdict(r), "mb_s": r.mb_s, "cpu_s_per_gib": r.cpu_per_gib}
            for r in results
        ],
    }
    path.write_text(json.dumps(data, indent=2))
    return path


# --- main ---------------------------------------------------------------------------------


@contextlib.contextmanager
def card_tmpfs(path: Path, args: argparse.Namespace) -> Iterator[Path]:
    """A tmpfs for the cards (the cached cards copied in, and the bus), unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    size = int(args.recorders * args.size_gib * GIB * 1.1) + GIB
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "station-bench-cards", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def tmpfs_cards(cards: list[Path], root: Path) -> list[Path]:
    """The cached cards copied into the card tmpfs once (each case links to them there)."""
    log(f"copying the cards into the tmpfs at {root}")
    out = []
    for c in cards:
        dest = root / "cards" / c.name
        shutil.copytree(c, dest)
        out.append(dest)
    return out


def fit_to_disk(args: argparse.Namespace, notes: list[str]) -> None:
    """Shrink --size-gib when the disk cannot hold the cards and the store (with margin)."""
    OUT.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(OUT).free
    cached = sum(card_stats(p)[1] for p in cache_dir(args.size_gib, args.seed).glob("rec-??"))
    need_per_gib = args.recorders * GIB
    # New cards (unless cached), one store full of them (+ the cp copy after emptying it),
    # and a margin for staging files, the catalog and hard-link fallbacks.
    need = (args.size_gib * need_per_gib - cached) + args.size_gib * need_per_gib + 2 * GIB
    if need <= free * 0.9:
        return
    size = max(0.05, round((free * 0.9 - 2 * GIB) / (2 * need_per_gib), 2))
    notes.append(
        f"only {free / GIB:.1f} GiB free on {OUT}: --size-gib reduced from "
        f"{args.size_gib:g} to {size:g}"
    )
    log(notes[-1])
    args.size_gib = size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, default=1.0, help="card size per recorder (GiB)")
    p.add_argument("--recorders", type=int, default=8, help="recorders docked at once (1-32)")
    p.add_argument("--limited-mb-s", type=float, default=20.0, help="read limit, limited case")
    p.add_argument("--skip-limited", action="store_true", help="no speed-limited case")
    p.add_argument("--skip-unlimited", action="store_true", help="no unlimited case (and no cp)")
    p.add_argument("--skip-cp", action="store_true", help="no cp -r baseline (store is kept)")
    p.add_argument("--cp-runs", type=int, default=2, help="cp -r baselines; the fastest counts")
    p.add_argument("--keep", action="store_true", help="keep run folders (store, catalog, logs)")
    p.add_argument("--seed", type=int, default=1, help="seed of the card contents")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the daemon and cp at this nice value (e.g. -10 on a shared host; root)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="before each case wait up to S seconds for the machine to be idle (shared hosts)",
    )
    p.add_argument(
        "--source",
        type=Path,
        default=ROOT,
        help="run the daemon from this checkout (to measure a change); default: this one",
    )
    p.add_argument(
        "--rev",
        help="run the daemon from this git revision of this repository (exported with "
        "git archive), not from the working tree: figures for a known commit",
    )
    p.add_argument(
        "--cabinet-cpu",
        action="store_true",
        help="emulate the cabinet's CPU: the daemon in a cgroup of 0.84 CPU, SHA extensions "
        "masked for OpenSSL (bench/cabinet.py; root)",
    )
    p.add_argument(
        "--mask-sha", action="store_true", help="mask the SHA extensions (implied by --cabinet-cpu)"
    )
    p.add_argument(
        "--hub",
        action="append",
        default=[],
        metavar="N:MBPS",
        help="N ports sharing one USB link of MBPS MB/s, enforced by the simulated bus for "
        "every recorder on it (repeat: the next N ports on the next link); runs the cases "
        "'hub-scheduled' (the station's per-link scheduling) and 'hub-equal' (all at once)",
    )
    p.add_argument(
        "--cards",
        choices=("tmpfs", "disk"),
        default="tmpfs",
        help="where the cards live: a tmpfs (another device than the store, as a real card "
        "is; default) or the store's disk (hard links into bench/out/cards, as before)",
    )
    p.add_argument("--chunk-kb", type=int, help="store.chunk_kb of the daemon (default: its own)")
    p.add_argument(
        "--kiosk", action="store_true", help="the touchscreen page open in Chromium meanwhile"
    )
    args = p.parse_args(argv)
    args.command = " ".join(
        ["python", "bench/ingest.py", *(argv if argv is not None else sys.argv[1:])]
    )
    try:
        args.hub = [(int(n), float(r)) for n, r in (h.split(":", 1) for h in args.hub)]
    except ValueError:
        p.error("--hub takes N:MBPS, like 4:40")
    args.mask_sha = args.mask_sha or args.cabinet_cpu
    if args.kiosk and not Path(CHROMIUM).exists():
        p.error(f"--kiosk needs {CHROMIUM} (Debian's chromium)")
    if not 1 <= args.recorders <= 32 or args.size_gib <= 0 or args.limited_mb_s <= 0:
        p.error("need 1 <= --recorders <= 32, --size-gib > 0, --limited-mb-s > 0")
    if args.cp_runs < 1:
        p.error("--cp-runs must be at least 1")
    if args.skip_limited and args.skip_unlimited:
        p.error("nothing to do with both --skip-limited and --skip-unlimited")

    if args.rev and args.source != ROOT:
        p.error("--rev and --source exclude each other")
    if args.rev:
        try:
            args.source = export_rev(args.rev)
        except (OSError, subprocess.CalledProcessError) as e:
            p.error(f"--rev {args.rev}: {e}")
    args.source = args.source.resolve()
    if not (args.source / "station" / "__main__.py").is_file():
        p.error(f"--source {args.source}: no station package there")
    # SIGTERM unwinds like Ctrl-C, so the daemon is stopped and the run folder removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    notes: list[str] = []
    load = os.getloadavg()[0]
    if load > 0.5:
        notes.append(f"load average was {load:.1f} at the start: other work may skew figures")
    if args.nice:
        notes.append(f"daemon and cp run at nice {args.nice}")
    if os.geteuid() != 0:
        notes.append("not root: the page cache cannot be dropped, figures are optimistic")
    fit_to_disk(args, notes)
    started = time.monotonic()
    cards = ensure_cards(args.size_gib, args.recorders, args.seed)
    work = RUNS / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True)
    results: list[CaseResult] = []
    cp: CpResult | None = None
    stack = contextlib.ExitStack()
    try:
        setup = Setup(
            source=args.source, quiet_s=args.wait_quiet, nice=args.nice, kiosk=args.kiosk,
            links=hub_links(args.hub), chunk_kb=args.chunk_kb,
        )  # fmt: skip
        try:
            if args.mask_sha:
                quota = 0.84 if args.cabinet_cpu else None
                setup.cabinet = stack.enter_context(CabinetCpu(quota))
                if args.kiosk and args.cabinet_cpu:
                    setup.kiosk_cabinet = stack.enter_context(CabinetCpu(quota, mask_sha=False))
        except (OSError, CabinetError) as e:
            raise BenchError(f"cannot emulate the cabinet CPU: {e}") from e
        args.cpu_desc = setup.cabinet.describe() if setup.cabinet else "the machine as it is"
        if args.cards == "tmpfs":
            setup.card_root = stack.enter_context(card_tmpfs(work / "cards-tmpfs", args))
            cards = tmpfs_cards(cards, setup.card_root)
        if args.hub:
            for case, scheduling in (("hub-scheduled", True), ("hub-equal", False)):
                r, _ = run_case(case, cards, args.limited_mb_s, work, setup, scheduling)
                results.append(r)
                if not args.keep:
                    shutil.rmtree(r.run_dir)
            args.skip_limited = args.skip_unlimited = True
        if not args.skip_limited:
            r, _ = run_case("limited", cards, args.limited_mb_s, work, setup)
            results.append(r)
            if not args.keep:
                shutil.rmtree(r.run_dir)
        if not args.skip_unlimited:
            r, daemon = run_case("unlimited", cards, None, work, setup)
            results.append(r)
            if not args.skip_cp:
                log("baseline: cp -r + sync of the same cards into the same store folder")
                cp = cp_baseline(
                    cards, daemon.disks[0], work, args.cp_runs, args.wait_quiet, args.nice
                )
                if not cp.caches_dropped:
                    notes.append("page cache not dropped before cp")
            if not args.keep:
                shutil.rmtree(r.run_dir)
    except BenchError as e:
        log(f"BENCHMARK FAILED: {e}")
        return 2
    finally:
        stack.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            subprocess.run(["sync"], check=False)
    if any(not r.caches_dropped for r in results):
        notes.append("page cache not dropped before a station run")
    notes.append(f"whole benchmark took {time.monotonic() - started:.0f} s")
    saved = save_json(results, cp, args, notes)
    code = report(results, cp, args, notes)
    print(f"raw figures: {saved.relative_to(ROOT)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
