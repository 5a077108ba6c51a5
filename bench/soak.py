#!/usr/bin/env python3
"""Evidence-safety soak: a real daemon killed hundreds of times while recorders collect.

    .venv/bin/python bench/soak.py [--kills 200] [--seed 1] [--out bench/out/soak]
        [--scenarios kill,yank,small-files,big-file,clock] [--yanks 60] [--keep]

Scenarios (each on its own fresh station folder, catalog and simulated bus):

kill         8 recorders collect while the daemon is SIGKILLed --kills times: at a crash
             point of station.faults.CRASHPOINTS armed with a random count (copy chunk,
             after fsync, after verify, after link, after commit, after card delete), by an
             external SIGKILL at a random moment (start-up and recovery included), and at
             `retention_after_tombstone` while a retention sweep runs (catalog rows aged
             first; the daemon's own sweep, or `station retention sweep` from the CLI).
             Recorders whose card empties get a new card, so there is always work. Every
             --check-every kills, and at the end, a clean run drains every card and the
             invariants are checked.
yank         8 recorders unplugged at random card bytes (`faults.unplug_after_bytes`) and
             at random moments (the port folder renamed away), re-docked on the same or
             another port, until --yanks unplugs landed; the daemon stays up.
small-files  one card of 10,000 small files, with a few kills on the way.
big-file     one card file of 4.6 GB (> 4 GiB; sparse on the simulated card, a folder, so
             no exFAT is involved), killed at a chunk past 4 GiB, after its final fsync,
             after verification and at a random moment, then finished.
clock        the daemon under `faketime -f +3y` (Debian's faketime) with recorders whose
             clocks are years off (2000, -3 y, +2 y, 2041); kills on the way; stored
             folders, sidecars and catalog rows must carry the fake date. Then a probe
             (reported, not an invariant): footage collected at the true time, and the
             station restarted with its clock 3 years ahead.

Every scenario ends with tests/evidence.py's `check` (the issue's invariants 1-3), an
early-wipe watcher that runs the whole time (invariant 2 directly: every card file that
disappears must already have a committed catalog row with its hash), an audit of every
resumed transfer (invariant 4: a transfer interrupted with a durable prefix is resumed at
exactly that offset, never rejected or restarted), `station catalog verify` and
`station audit verify`.

Output: one folder per scenario under --out (kept whole on failure, without the stored
bytes on success unless --keep), `iterations.jsonl` (one line per run of the daemon), a
`summary-*.json` and a table on stdout. Exit status 0 when every invariant held, 1 when
one broke (FAILURE.txt in the scenario folder has the evidence), 2 when the soak itself
failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import faulthandler
import json
import os
import random
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT / "tests", ROOT):  # the harness of tests/ is reused, not copied
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from conftest import STATION, StationProc, free_port, write_config  # noqa: E402
from evidence import Findings, Ledger, card_files, check  # noqa: E402

from station.faults import CRASHPOINTS  # noqa: E402
from station.sim import media  # noqa: E402
from station.sim.recorder import RecorderSpec, build_recorder, dock, undock  # noqa: E402

MB = 1_000_000
MIB = 1 << 20
GIB = 1 << 30
OVERLAP = 64 * 1024  # station.ingest.transfer.OVERLAP: re-read on resume to prove the same file
YEAR = 365 * 86400
SCENARIOS = ("kill", "yank", "small-files", "big-file", "clock")
RESUME_RE = re.compile(r"job (\d+): resuming at byte (\d+) of (\d+)")
REJECT_RE = re.compile(r"job (\d+): cannot resume at (\d+) \((.*)\)")
NAME_TIME_RE = re.compile(rb"^(.*_)(\d{14})(_\d{4}.*)$")


class Violation(Exception):
    """An evidence invariant broke: the scenario stops and its folder keeps the evidence."""


class SoakError(Exception):
    """The soak itself failed (a timeout, a daemon that would not start)."""


def now_s() -> float:
    return time.monotonic()


def log(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", flush=True)


# --- the station ------------------------------------------------------------------------


def make_station(root: Path, **overrides: dict[str, Any]) -> StationProc:
    """A station folder (two store disks, a bus, a catalog) and its config; not started."""
    if root.exists():
        shutil.rmtree(root)
    for d in ("disk1", "disk2", "bus", "spare"):
        (root / d).mkdir(parents=True)
    port = free_port()
    return StationProc(root, write_config(root, port, **overrides), port)


def log_size(st: StationProc) -> int:
    p = st.root / "daemon.log"
    return p.stat().st_size if p.exists() else 0


def log_since(st: StationProc, mark: int) -> str:
    with open(st.root / "daemon.log", "rb") as f:
        f.seek(mark)
        return f.read().decode(errors="replace")


def healthy(st: StationProc) -> bool:
    try:
        return httpx.get(st.url("/api/v1/health"), timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def start(st: StationProc, env: dict[str, str]) -> None:
    """Start `station run` with extra environment (crash points, libfaketime)."""
    st.env = env
    st.start(wait=False)


# Daemons that exited 0 without being asked to by the soak: a SIGTERM from elsewhere (other
# jobs share the machine). A clean stop is just one more interruption, not a failure; each
# is counted and the daemon started again.
FOREIGN_STOPS: list[str] = []


def foreign_stop(st: StationProc, where: str) -> None:
    FOREIGN_STOPS.append(f"{dt.datetime.now():%H:%M:%S} {where}")
    log(f"daemon exited 0 without being asked to ({where}): restarting it")


def wait_healthy(st: StationProc, timeout: float = 240) -> bool:
    """Wait for /api/v1/health; False if the daemon was stopped cleanly meanwhile."""
    deadline = now_s() + timeout
    while not healthy(st):
        assert st.proc is not None
        rc = st.proc.poll()
        if rc == 0:
            foreign_stop(st, "starting")
            return False
        if rc is not None:
            raise Violation(f"daemon exited with {rc} while starting:\n{st.log()}")
        if now_s() > deadline:
            raise SoakError(f"daemon not healthy after {timeout} s:\n{st.log()}")
        time.sleep(0.2)
    return True


def start_healthy(st: StationProc, env: dict[str, str], attempts: int = 6) -> None:
    """Start the daemon and wait until it answers (again, if something else stops it)."""
    for _ in range(attempts):
        start(st, env)
        if wait_healthy(st):
            return
    raise SoakError(f"the daemon was stopped by someone else {attempts} times in a row")


def stop(st: StationProc, timeout: float = 180) -> int:
    """SIGTERM and wait (generously: the machine is busy); SIGKILL only as a last resort."""
    assert st.proc is not None
    if st.proc.poll() is None:
        st.proc.send_signal(signal.SIGTERM)
        try:
            st.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"daemon ignored SIGTERM for {timeout} s: SIGKILL")
            st.proc.kill()
            st.proc.wait()
    return st.proc.returncode


def kill(st: StationProc) -> bool:
    """SIGKILL the daemon; False if it had died already."""
    assert st.proc is not None
    if st.proc.poll() is not None:
        return False
    st.proc.send_signal(signal.SIGKILL)
    st.proc.wait()
    return True


def slot_states(st: StationProc) -> dict[int, str]:
    try:
        return {s["port"]: s["state"] for s in st.api("/api/v1/status")["slots"]}
    except httpx.HTTPError:
        return {}


def query(db: Path, sql: str, *args: Any) -> list[tuple]:
    con = sqlite3.connect(db, timeout=60, isolation_level=None)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


# --- recorders --------------------------------------------------------------------------


@dataclass
class Rec:
    """One simulated recorder the soak owns: where its folder is, which port it is on."""

    serial: str
    officer: str
    path: Path
    port: int | None = None  # docked here, or None (aside)
    last_port: int | None = None
    gen: int = 0  # cards it has had
    clock_offset_s: float = 0.0
    built: set[bytes] = field(default_factory=set)  # what its current card held when built


def has_files(path: Path) -> bool:
    return any(files for _root, _dirs, files in os.walk(path / "card"))


def card_relpaths(path: Path) -> set[bytes]:
    card = os.fsencode(path / "card")
    out = set()
    for root, _dirs, files in os.walk(card):
        for f in files:
            out.add(os.path.relpath(os.path.join(root, f), card))
    return out


def set_faults(path: Path, faults: dict[str, Any] | None) -> None:
    """Rewrite recorder.json's `faults` atomically (the recorder may be in use)."""
    target = path / "recorder.json"
    data = json.loads(target.read_text("utf-8"))
    if faults:
        data["faults"] = faults
    else:
        data.pop("faults", None)
    tmp = path / "recorder.json.soak"
    tmp.write_text(json.dumps(data, ensure_ascii=False))
    os.replace(tmp, target)


def shift_names(card: Path, offset_s: float) -> None:
    """Give a card the recorder's wrong clock: times in file names and mtimes moved."""
    cardb = os.fsencode(card)
    for root, _dirs, files in os.walk(cardb):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            m = NAME_TIME_RE.match(f)
            if m:
                t = dt.datetime.strptime(m.group(2).decode(), "%Y%m%d%H%M%S")
                t += dt.timedelta(seconds=offset_s)
                new = m.group(1) + t.strftime("%Y%m%d%H%M%S").encode() + m.group(3)
                os.rename(p, os.path.join(root, new))
                p = os.path.join(root, new)
            ts = max(st.st_mtime + offset_s, 315532800)  # not before 1980 (FAT's epoch)
            os.utime(p, (ts, ts))


class Fleet:
    """The recorders of one scenario, their cards, and the ledger of what went onto them."""

    def __init__(self, st: StationProc, rng: random.Random, **card: Any) -> None:
        self.st = st
        self.rng = rng
        self.card = card  # files, imp, size_mb, read_mb_s, big_mb
        self.ledger = Ledger()
        self.recs: dict[str, Rec] = {}
        self.lock = threading.RLock()
        self.cards_built = 0
        self.retired: list[tuple[str, set[bytes]]] = []  # emptied cards, for the watcher

    def new_card(self, serial: str, officer: str, gen: int, **over: Any) -> Path:
        """Build a card with fresh footage, named so no path repeats for this serial.

        The first card of a recorder holds real media (PyAV/Pillow); later cards, built
        while the daemon runs, hold random bytes under the same names and sizes, which is
        all the collection path looks at and costs no encoding time.
        """
        kw = {**self.card, **over}
        big_mb = kw.pop("big_mb", 0)
        clock = kw.pop("clock_offset_s", 0.0)
        spec = RecorderSpec(serial=serial, officer_no=officer, clock_offset_s=clock, **kw)
        quick = gen > 0
        if quick:
            spec.files, spec.imp = 0, 0
        path = build_recorder(self.st.root / "spare", spec, seed=self.rng.randrange(1 << 30))
        card = path / "card"
        if quick:
            self._random_files(card, serial, officer, kw)
        if big_mb:
            when = dt.datetime.now() - dt.timedelta(hours=1)
            big = card / "DCIM" / "100ANDRO" / f"{officer}_{serial}_{when:%Y%m%d%H%M%S}_0999.AVI"
            big.parent.mkdir(parents=True, exist_ok=True)
            if quick:
                big.write_bytes(self.rng.randbytes(int(big_mb * MB)))
            else:
                media.make_video(
                    big, int(big_mb * MB), label=serial, seed=self.rng.randrange(1 << 30)
                )
        if clock:
            shift_names(card, clock)
        self._unique_names(serial, path, gen)
        self._ledger_add(serial, officer, path)
        self.cards_built += 1
        return path

    def _random_files(self, card: Path, serial: str, officer: str, kw: dict[str, Any]) -> None:
        """`files` files of random bytes, named as the recorder names them, `imp` of them IMP."""
        n, imp, size_mb = kw.get("files", 5), kw.get("imp", 1), kw.get("size_mb", 2.0)
        t = dt.datetime.now().replace(microsecond=0) - dt.timedelta(hours=8)
        t -= dt.timedelta(seconds=self.rng.randrange(3600))
        for i in range(n):
            important = i < imp
            ext = self.rng.choice(("AVI", "AVI", "AVI", "JPG", "WAV"))
            folder = card / "DCIM" / ("101ANDRO" if important else "100ANDRO")
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{officer}_{serial}_{t:%Y%m%d%H%M%S}_{i + 1:04d}{'IMP' if important else ''}"
            size = int(size_mb * MB * self.rng.uniform(0.3, 1.7)) if ext == "AVI" else 300_000
            (folder / f"{name}.{ext}").write_bytes(self.rng.randbytes(max(size, 1)))
            t += dt.timedelta(seconds=self.rng.randint(60, 900))

    def _unique_names(self, serial: str, path: Path, gen: int) -> None:
        """A later card of the same recorder may repeat a name (the day's log): rename it,
        so the ledger's (serial, card path) keys stay unique."""
        old = self.ledger.sources.get(serial, ("", {}))[1]
        card = os.fsencode(path / "card")
        for rel in sorted(card_relpaths(path)):
            if rel in old:
                stem, dot, ext = rel.rpartition(b".")
                new = (stem + b"_g%d." % gen + ext) if dot else rel + b"_g%d" % gen
                os.rename(os.path.join(card, rel), os.path.join(card, new))

    def _ledger_add(self, serial: str, officer: str, path: Path) -> None:
        files = card_files(path)
        with self.lock:
            prev_officer, old = self.ledger.sources.get(serial, (officer, {}))
            assert prev_officer == officer and not files.keys() & old.keys()
            self.ledger.sources[serial] = (officer, {**old, **files})

    def add(self, serial: str, officer: str, port: int | None, **over: Any) -> Rec:
        path = self.new_card(serial, officer, 0, **over)
        rec = Rec(serial, officer, path, clock_offset_s=over.get("clock_offset_s", 0.0))
        self.own(rec)
        if port is not None:
            self.dock(rec, port)
        return rec

    def own(self, rec: Rec) -> None:
        """Take a recorder (its card already in the ledger) into the fleet."""
        with self.lock:
            rec.built = card_relpaths(rec.path)
            self.recs[rec.serial] = rec

    def swap_card(self, rec: Rec, new: Path) -> None:
        """Replace an emptied (undocked) card with a new one."""
        with self.lock:
            assert rec.port is None and not has_files(rec.path)
            self.retired.append((rec.serial, rec.built))
            shutil.rmtree(rec.path)
            rec.gen += 1
            rec.path = new
            rec.built = card_relpaths(new)

    def dock(self, rec: Rec, port: int) -> None:
        with self.lock:
            rec.path = dock(self.st.bus, port, rec.path)
            rec.port = rec.last_port = port

    def undock(self, rec: Rec) -> None:
        with self.lock:
            assert rec.port is not None
            rec.path = undock(self.st.bus, rec.port)
            rec.port = None

    def refill(self, rec: Rec, prepare: Callable[[Path], None] | None = None) -> None:
        """The officer is back with a full card: swap the emptied recorder for it."""
        new = self.new_card(rec.serial, rec.officer, rec.gen + 1)
        if prepare is not None:
            prepare(new)
        with self.lock:
            port = rec.port
            if port is not None:
                self.undock(rec)
            self.swap_card(rec, new)
            if port is not None:
                self.dock(rec, port)

    def refill_empty(self) -> int:
        n = 0
        for rec in list(self.recs.values()):
            if rec.port is not None and rec.path.exists() and not has_files(rec.path):
                self.refill(rec)
                n += 1
        return n

    def docked(self) -> list[Rec]:
        with self.lock:
            return [r for r in self.recs.values() if r.port is not None]

    def all_empty(self) -> bool:
        return not any(has_files(r.path) for r in self.recs.values())

    def cards(self) -> dict[str, Path]:
        with self.lock:
            return {r.serial: r.path for r in self.recs.values()}

    def free_ports(self, n_ports: int = 8) -> list[int]:
        used = {r.port for r in self.recs.values() if r.port is not None}
        return [
            p
            for p in range(1, n_ports + 1)
            if p not in used and not (self.st.bus / f"port-{p}").exists()
        ]


# --- invariant 2, directly: the early-wipe watcher -------------------------------------


class WipeWatch(threading.Thread):
    """Watches every card; each file that disappears must already be stored and committed.

    The station commits the catalog row before it deletes from the card, so a row read
    after the deletion was seen is a fair test: no row with the file's size and hash
    means the file left the recorder before it was safe.
    """

    def __init__(self, fleet: Fleet, db: Path, interval: float = 0.25) -> None:
        super().__init__(name="wipe-watch", daemon=True)
        self.fleet = fleet
        self.db = db
        self.interval = interval
        self.stop_ev = threading.Event()
        self.early: list[str] = []
        self.seen_deleted = 0
        self.checked: set[tuple[str, bytes]] = set()
        self.rounds = 0
        self.con: sqlite3.Connection | None = None

    def run(self) -> None:
        while not self.stop_ev.wait(self.interval):
            try:
                self._round()
            except Exception:
                log("wipe watcher: " + traceback.format_exc())
            self.rounds += 1
        with contextlib.suppress(Exception):
            self._round()  # the last deletions before the end
        if self.con is not None:
            self.con.close()

    def _round(self) -> None:
        """Every file a card held when it was built and no longer holds is checked, once: a
        recorder keeps its card across unplugs and ports, and a card is only replaced once
        the station has emptied it (then whatever was left unchecked is checked)."""
        gone: list[tuple[str, bytes]] = []
        with self.fleet.lock:  # no dock, undock or card swap of ours while we look
            for serial, built in self.fleet.retired:
                gone += [(serial, p) for p in built if (serial, p) not in self.checked]
            self.fleet.retired.clear()
            for rec in self.fleet.recs.values():
                files = card_relpaths(rec.path)
                if not (rec.path / "card").is_dir():  # unplugged by the simulator meanwhile
                    continue
                gone += [
                    (rec.serial, p)
                    for p in rec.built - files
                    if (rec.serial, p) not in self.checked
                ]
        for serial, rel in gone:
            self.checked.add((serial, rel))
            self._deleted(serial, rel)

    def _deleted(self, serial: str, rel: bytes) -> None:
        self.seen_deleted += 1
        expected = self.fleet.ledger.sources[serial][1].get(rel)
        if not self.db.exists():
            self.early.append(f"{serial} {rel!r}: no catalog at all")
            return
        if self.con is None:
            self.con = sqlite3.connect(self.db, timeout=60, isolation_level=None)
        rows = self.con.execute(
            "SELECT f.size, f.sha256 FROM files f JOIN recorders r ON r.id = f.recorder_id "
            "WHERE r.serial = ? AND f.card_path = ?",
            (serial, rel),
        ).fetchall()
        if expected is None or tuple(expected) not in {(s, h) for s, h in rows}:
            self.early.append(f"{serial} {rel!r}: deleted from the card, catalog has {rows}")

    def flush(self) -> None:
        """Wait until the watcher has looked at every card again."""
        target = self.rounds + 2
        deadline = now_s() + 300
        while self.rounds < target and self.is_alive() and now_s() < deadline:
            time.sleep(0.05)

    def finish(self) -> None:
        self.stop_ev.set()
        self.join(60)


# --- invariant 4: every resumed transfer ------------------------------------------------


@dataclass
class ResumeAudit:
    """Interrupted transfers with a durable prefix must resume at exactly that offset."""

    pending: dict[int, int] = field(default_factory=dict)  # job -> durable offset
    ok: int = 0
    bad: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    unexpected: int = 0  # resumes of jobs interrupted while the daemon ran (yanks)
    resumed_bytes: int = 0

    def after_run(self, text: str, db: Path) -> None:
        """Read one run's log, then note what the next run must resume (daemon stopped)."""
        resumed = set()
        for m in RESUME_RE.finditer(text):
            job, off = int(m.group(1)), int(m.group(2))
            resumed.add(job)
            self.resumed_bytes += off
            want = self.pending.pop(job, None)
            if want is None:
                self.unexpected += 1
            elif off == want:
                self.ok += 1
            else:
                self.bad.append(f"job {job} resumed at {off}, durable offset was {want}")
        for m in REJECT_RE.finditer(text):
            self.rejected.append(f"job {m.group(1)} at {m.group(2)}: {m.group(3)}")
            self.pending.pop(int(m.group(1)), None)
        states = dict(query(db, "SELECT id, state FROM ingest_jobs")) if db.exists() else {}
        for job in list(self.pending):
            if states.get(job) != "copying":
                self.bad.append(
                    f"job {job} had {self.pending[job]} durable bytes and went to "
                    f"{states.get(job)!r} without being resumed"
                )
                del self.pending[job]
        if db.exists():
            self.pending.update(
                query(
                    db,
                    "SELECT id, durable_offset FROM ingest_jobs "
                    "WHERE state = 'copying' AND durable_offset > 0",
                )
            )


# --- checking ---------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    seed: int
    command: str
    runs: str = ""  # "N kills", "N yanks"
    files: int = 0
    bytes: int = 0
    findings: dict[str, list[str]] = field(default_factory=dict)
    early_wipes: list[str] = field(default_factory=list)
    resume: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    status: str = "running"  # pass | VIOLATION | error

    def counts(self) -> dict[str, int]:
        f = self.findings
        return {
            "lost": len(f.get("lost", [])),
            "duplicated": len(f.get("duplicated", [])),
            "corrupted": len(f.get("corrupted", [])) + len(f.get("misattributed", [])),
            "early_wipes": len(self.early_wipes),
            "rows_without_file": len(f.get("rows_without_file", [])),
            "files_without_row": len(f.get("files_without_row", [])),
            "left_on_card": len(f.get("left_on_card", [])),
            "staging_left": len(f.get("staging_left", [])),
        }


def ledger_without(ledger: Ledger, gone: set[tuple[str, bytes]]) -> Ledger:
    """The ledger less the files retention was asked to delete (and did)."""
    out = Ledger()
    for serial, (officer, files) in ledger.sources.items():
        out.sources[serial] = (
            officer,
            {p: v for p, v in files.items() if (serial, p) not in gone},
        )
    return out


def tombstones(db: Path) -> dict[int, tuple[str, bytes, str]]:
    rows = query(
        db,
        "SELECT f.id, r.serial, f.card_path, f.deleted_by FROM files f "
        "JOIN recorders r ON r.id = f.recorder_id WHERE f.deleted_at IS NOT NULL",
    )
    return {i: (s, bytes(p), by) for i, s, p, by in rows}


def quarantined(st: StationProc) -> list[str]:
    out = []
    for d in st.disks:
        q = d / ".quarantine"
        if q.is_dir():
            out += [str(p) for p in q.rglob("*") if p.is_file()]
    return out


def full_check(
    st: StationProc,
    fleet: Fleet,
    res: Result,
    watch: WipeWatch,
    audit: ResumeAudit | None,
    aged: set[int] | None = None,
    aged_protected: set[int] | None = None,
) -> None:
    """All invariants, with the station stopped; raises Violation with the evidence."""
    aged = aged or set()
    aged_protected = aged_protected or set()
    watch.flush()
    dead = tombstones(st.db)
    unexpected = {i: v for i, v in dead.items() if i not in aged}
    expected_gone = {(s, p) for i, (s, p, _by) in dead.items() if i in aged}
    ledger = ledger_without(fleet.ledger, expected_gone)
    findings: Findings = check(st.db, st.disks, ledger, fleet.cards())
    res.findings = findings.problems()
    res.files, res.bytes = fleet.ledger.total_files, fleet.ledger.total_bytes
    res.early_wipes = list(watch.early)
    problems = dict(res.findings)
    if watch.early:
        problems["early_wipes"] = watch.early
    if unexpected:
        problems["deleted_without_being_aged"] = [str(v) for v in unexpected.values()]
    if aged_protected & set(dead):
        problems["protected_deleted"] = [str(dead[i]) for i in aged_protected & set(dead)]
    not_swept = aged - set(dead)
    q = quarantined(st)
    if q:
        problems["quarantined"] = q
    cv = st.cli("catalog", "verify", check=False)
    av = st.cli("audit", "verify", check=False)
    res.extra.update(
        retention_deleted=len(expected_gone),
        retention_aged_not_deleted=len(not_swept),
        protected_aged=len(aged_protected),
        quarantined=len(q),
        catalog_verify=cv.returncode,
        audit_verify=av.stdout.strip()[-200:] or av.stderr.strip()[-200:],
        card_deletions_checked=f"{watch.seen_deleted} of {fleet.ledger.total_files}",
    )
    if cv.returncode != 0:
        problems["catalog_verify"] = cv.stdout.splitlines()[-20:]
    if av.returncode != 0:
        problems["audit_verify"] = (av.stdout + av.stderr).splitlines()[-20:]
    if audit is not None:
        res.resume = {
            "resumed_at_durable_offset": audit.ok,
            "wrong_offset": len(audit.bad),
            "rejected": len(audit.rejected),
            "pending": len(audit.pending),
        }
        if audit.bad:
            problems["resume_wrong_offset"] = audit.bad
        if audit.rejected:
            problems["resume_rejected"] = audit.rejected
        if audit.pending:
            problems["resume_pending"] = [f"job {j} at {o}" for j, o in audit.pending.items()]
    if problems:
        raise Violation(json.dumps(problems, indent=1, default=str)[:20000])


def drain(
    st: StationProc,
    fleet: Fleet,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> float:
    """A clean run until every card is empty and every docked port says complete."""
    start_healthy(st, env or {})
    t0 = now_s()
    deadline = t0 + timeout
    ports = {r.port for r in fleet.docked()}
    while True:
        assert st.proc is not None
        rc = st.proc.poll()
        if rc == 0:
            foreign_stop(st, "clean run")
            start_healthy(st, env or {})
            continue
        if rc is not None:
            raise Violation(f"daemon died during a clean run ({rc}):\n{st.log()}")
        if fleet.all_empty():
            states = slot_states(st)
            if states and all(states.get(p) == "complete" for p in ports):
                break
            errors = {p: s for p, s in states.items() if s == "error"}
            if errors:
                raise Violation(f"slots in error: {errors}: {st.api('/api/v1/status')}")
        if now_s() > deadline:
            raise SoakError(f"cards not drained in {timeout} s: {slot_states(st)}\n{st.log()}")
        time.sleep(0.5)
    took = now_s() - t0
    rc = stop(st)
    if rc != 0:
        raise Violation(f"daemon stopped with {rc}:\n{st.log()}")
    return took


# --- scenario: kill ---------------------------------------------------------------------


def age_files(st: StationProc, fleet: Fleet, rng: random.Random) -> tuple[list[int], list[int]]:
    """Make a few stored files (no longer on any card) look 400 days old; a protected one too."""
    on_cards = {(s, p) for s, path in fleet.cards().items() for p in card_relpaths(path)}
    rows = query(
        st.db,
        "SELECT f.id, r.serial, f.card_path, f.important, f.level, f.legal_hold FROM files f "
        "JOIN recorders r ON r.id = f.recorder_id WHERE f.deleted_at IS NULL",
    )
    rows = [r for r in rows if (r[1], bytes(r[2])) not in on_cards]
    plain = [r[0] for r in rows if not r[3] and r[4] == "normal" and not r[5]]
    protected = [r[0] for r in rows if r[3] or r[4] != "normal"]
    if len(plain) < 2:
        return [], []
    pick = rng.sample(plain, min(len(plain), rng.randint(2, 8)))
    prot = rng.sample(protected, min(len(protected), 1))
    ids = ",".join(str(i) for i in pick + prot)
    st.query(
        f"UPDATE files SET collected_at = datetime(collected_at, '-400 days') WHERE id IN ({ids})"
    )
    return pick, prot


def pick_point(rng: random.Random) -> str:
    weights = {p: 9 for p in CRASHPOINTS if p != "retention_after_tombstone"}
    weights["copy_chunk"] = 24
    weights["external"] = 20
    weights["retention_daemon"] = 6
    weights["retention_cli"] = 4
    names = list(weights)
    return rng.choices(names, [weights[n] for n in names])[0]


def scenario_kill(args: argparse.Namespace, res: Result, root: Path) -> None:
    rng = random.Random(args.seed)
    st = make_station(
        root, store={"sync_every_mb": 2, "min_free_mb": 1}, retention={"sweep_interval_s": 3600.0}
    )
    fleet = Fleet(st, rng, files=4, imp=1, size_mb=0.6, read_mb_s=10, big_mb=5)
    for port in range(1, 9):
        fleet.add(f"K{args.seed % 100:02d}{port:04d}", f"7{args.seed % 100:02d}{port:03d}", port)
    watch = WipeWatch(fleet, st.db)
    watch.start()
    audit = ResumeAudit()
    aged: set[int] = set()
    aged_protected: set[int] = set()
    kills: Counter[str] = Counter()
    cli_kills = 0
    checks = 0
    it_log = open(root / "iterations.jsonl", "a")  # noqa: SIM115 - closed below
    i = 0
    try:
        while sum(kills.values()) < args.kills:
            i += 1
            point = pick_point(rng)
            rec: dict[str, Any] = {"i": i, "point": point}
            if point in ("retention_daemon", "retention_cli"):
                if not st.db.exists():
                    continue
                pick, prot = age_files(st, fleet, rng)
                if not pick:
                    continue
                aged |= set(pick)
                aged_protected |= set(prot)
                pending = len(aged - set(tombstones(st.db)))
                count = rng.randint(1, pending)
                rec.update(aged=pick, protected=prot, count=count)
                crash = f"retention_after_tombstone:{count}"
                if point == "retention_cli":
                    r = subprocess.run(
                        [*STATION, "retention", "sweep", "--config", str(st.config_path)],
                        env={**os.environ, "STATION_CRASHPOINTS": crash},
                        capture_output=True,
                        text=True,
                        timeout=300,
                        cwd=ROOT,
                    )
                    rec["rc"] = r.returncode
                    if r.returncode == -signal.SIGKILL:
                        cli_kills += 1
                    else:
                        rec["out"] = (r.stdout + r.stderr)[-2000:]
                    it_log.write(json.dumps(rec) + "\n")
                    continue
                env = {"STATION_CRASHPOINTS": crash}
                external_at = None
            elif point == "external":
                env, external_at = {}, rng.uniform(0.3, 12.0)
                rec["after_s"] = round(external_at, 2)
            else:
                count = rng.randint(1, 60) if point == "copy_chunk" else rng.randint(1, 8)
                env, external_at = {"STATION_CRASHPOINTS": f"{point}:{count}"}, None
                rec["count"] = count
            mark = log_size(st)
            start(st, env)
            t0 = now_s()
            assert st.proc is not None
            last_refill = 0.0
            while st.proc.poll() is None:
                t = now_s() - t0
                if external_at is not None and t >= external_at:
                    kill(st)
                    break
                if t > args.iteration_timeout:
                    rec["timeout"] = True
                    kill(st)
                    break
                if now_s() - last_refill > 1.0:
                    last_refill = now_s()
                    rec["refilled"] = rec.get("refilled", 0) + fleet.refill_empty()
                time.sleep(0.05)
            rc = st.proc.returncode
            rec.update(rc=rc, alive_s=round(now_s() - t0, 2))
            if rc == 0:  # stopped cleanly by something else: an interruption, not a kill
                foreign_stop(st, f"iteration {i} ({point})")
                audit.after_run(log_since(st, mark), st.db)
                it_log.write(json.dumps(rec) + "\n")
                continue
            if rc != -signal.SIGKILL:
                it_log.write(json.dumps(rec) + "\n")
                raise Violation(
                    f"iteration {i} ({point}): the daemon exited by itself with {rc}\n"
                    + log_since(st, mark)[-8000:]
                )
            label = "external(timeout)" if rec.get("timeout") else point
            kills[label] += 1
            audit.after_run(log_since(st, mark), st.db)
            rec["pending_resumes"] = len(audit.pending)
            it_log.write(json.dumps(rec) + "\n")
            it_log.flush()
            n = sum(kills.values())
            if n % 10 == 0:
                log(f"kill: {n}/{args.kills} kills, {fleet.cards_built} cards, {dict(kills)}")
            if watch.early:
                raise Violation("early wipes: " + "\n".join(watch.early))
            if args.check_every and n % args.check_every == 0 and n < args.kills:
                log(f"kill: checkpoint after {n} kills: draining every card")
                mark = log_size(st)
                drain(st, fleet)
                audit.after_run(log_since(st, mark), st.db)
                full_check(st, fleet, res, watch, audit, aged, aged_protected)
                checks += 1
                fleet.refill_empty()
        log("kill: final clean run")
        mark = log_size(st)
        res.extra["final_drain_s"] = round(drain(st, fleet), 1)
        audit.after_run(log_since(st, mark), st.db)
        checks += 1
        res.runs = f"{sum(kills.values())} kills"
        res.extra.update(
            kills=dict(kills),
            sweep_cli_kills=cli_kills,
            iterations=i,
            cards=fleet.cards_built,
            checks=checks,
            resumes_unexpected=audit.unexpected,
        )
        full_check(st, fleet, res, watch, audit, aged, aged_protected)
    finally:
        res.runs = res.runs or f"{sum(kills.values())} kills"
        res.extra.setdefault("kills", dict(kills))
        it_log.close()
        watch.finish()
        if st.proc is not None and st.proc.poll() is None:
            stop(st)


# --- scenario: yank ---------------------------------------------------------------------


def scenario_yank(args: argparse.Namespace, res: Result, root: Path) -> None:
    rng = random.Random(args.seed)
    st = make_station(root, store={"sync_every_mb": 2, "min_free_mb": 1})
    fleet = Fleet(st, rng, files=4, imp=1, size_mb=1.0, read_mb_s=15, big_mb=8)

    def arm(path: Path) -> None:
        """Before docking: unplug after a random number of card bytes (3 times in 4)."""
        serial = json.loads((path / "recorder.json").read_text("utf-8"))["serial"]
        files = fleet.ledger.sources[serial][1]
        left = sum(files.get(p, (0, ""))[0] for p in card_relpaths(path))
        if rng.random() < 0.75 and left > 0:
            set_faults(path, {"unplug_after_bytes": rng.randint(OVERLAP, int(left * 1.1))})
        else:
            set_faults(path, None)

    def yanked(rec: Rec) -> Path | None:
        """Where the simulator put a recorder it unplugged (None: not there yet)."""
        owned = {r.path for r in fleet.recs.values()}
        gone = [
            p for p in (st.bus / ".undocked").glob(f"port-{rec.port}-yanked-*") if p not in owned
        ]
        return gone[0] if len(gone) == 1 else None

    for port in range(1, 9):
        r = fleet.add(
            f"Y{args.seed % 100:02d}{port:04d}", f"6{args.seed % 100:02d}{port:03d}", None
        )
        arm(r.path)
        fleet.dock(r, port)
    watch = WipeWatch(fleet, st.db)
    start_healthy(st, {})
    watch.start()
    yanks: Counter[str] = Counter()
    redock_same = redock_other = 0
    last_logged = 0
    aside: dict[str, float] = {}  # serial -> when to dock it again
    next_timed = now_s() + rng.uniform(1, 6)
    t0 = now_s()
    mark = 0
    try:
        while sum(yanks.values()) < args.yanks:
            if now_s() - t0 > args.yank_timeout:
                raise SoakError(f"only {sum(yanks.values())} yanks in {args.yank_timeout} s")
            if st.proc is not None and st.proc.poll() is not None:
                if st.proc.returncode != 0:
                    raise Violation(f"daemon died ({st.proc.returncode}):\n{st.log()}")
                foreign_stop(st, "yank")
                start_healthy(st, {})
            with fleet.lock:
                for rec in fleet.docked():
                    if rec.path.exists():
                        continue
                    gone = yanked(rec)
                    if gone is None:
                        continue  # the rename is under way
                    rec.path, rec.port = gone, None
                    yanks["at a byte"] += 1
                    aside[rec.serial] = now_s() + rng.uniform(0, 2)
                if now_s() >= next_timed:
                    next_timed = now_s() + rng.uniform(1, 6)
                    busy = [r for r in fleet.docked() if has_files(r.path)]
                    if busy:
                        rec = rng.choice(busy)
                        fleet.undock(rec)
                        yanks["at a moment"] += 1
                        aside[rec.serial] = now_s() + rng.uniform(0, 2)
                for serial, when in list(aside.items()):
                    if now_s() < when:
                        continue
                    rec = fleet.recs[serial]
                    free = fleet.free_ports()
                    if not free:
                        continue
                    last = rec.last_port
                    port = last if last in free and rng.random() < 0.4 else rng.choice(free)
                    if port == last:
                        redock_same += 1
                    else:
                        redock_other += 1
                    if not has_files(rec.path):
                        fleet.swap_card(rec, fleet.new_card(rec.serial, rec.officer, rec.gen + 1))
                    arm(rec.path)
                    fleet.dock(rec, port)
                    del aside[serial]
                for rec in fleet.docked():
                    if rec.path.exists() and not has_files(rec.path):
                        fleet.refill(rec, arm)
            n = sum(yanks.values())
            if n >= last_logged + 10:
                last_logged = n
                log(f"yank: {n}/{args.yanks} unplugs, {fleet.cards_built} cards")
            if watch.early:
                raise Violation("early wipes: " + "\n".join(watch.early))
            time.sleep(0.1)
        log("yank: last re-docks, no more faults; waiting for every card to empty")
        deadline = now_s() + 600
        while aside or not fleet.all_empty():
            with fleet.lock:
                for rec in fleet.docked():
                    if not rec.path.exists():  # a yank armed before the end
                        gone = yanked(rec)
                        if gone is not None:
                            rec.path, rec.port = gone, None
                            yanks["at a byte"] += 1
                            aside[rec.serial] = now_s()
                for serial in list(aside):
                    free = fleet.free_ports()
                    if free:
                        rec = fleet.recs[serial]
                        set_faults(rec.path, None)
                        fleet.dock(rec, rng.choice(free))
                        redock_other += 1
                        del aside[serial]
            assert st.proc is not None
            if st.proc.poll() is not None:
                if st.proc.returncode != 0:
                    raise Violation(f"daemon died ({st.proc.returncode}):\n{st.log()}")
                foreign_stop(st, "yank, last re-docks")
                start_healthy(st, {})
            if now_s() > deadline:
                faulthandler.dump_traceback(all_threads=True)
                state = {
                    r.serial: (str(r.path), r.port, has_files(r.path)) for r in fleet.recs.values()
                }
                raise SoakError(
                    f"cards not emptied: {slot_states(st)}; recorders {state}; aside {aside}; "
                    f"free {fleet.free_ports()}; "
                    f"undocked {sorted(p.name for p in (st.bus / '.undocked').iterdir())}"
                )
            time.sleep(0.5)
        ports = {r.port for r in fleet.docked()}
        deadline = now_s() + 600
        while not all(slot_states(st).get(p) == "complete" for p in ports):
            if now_s() > deadline:
                raise SoakError(f"slots not complete: {slot_states(st)}")
            time.sleep(0.5)
        rc = stop(st)
        if rc != 0:
            raise Violation(f"daemon stopped with {rc}:\n{st.log()}")
        text = log_since(st, mark)
        rejected = REJECT_RE.findall(text)
        resumes = RESUME_RE.findall(text)
        total = fleet.ledger.total_bytes
        (read,) = query(st.db, "SELECT coalesce(sum(bytes_read), 0) FROM collection_sessions")[0]
        dup = query(
            st.db,
            "SELECT coalesce(sum(f.size), 0), count(*) FROM events e JOIN files f "
            "ON f.id = e.file_id WHERE e.kind = 'card_file_deleted' "
            "AND e.message LIKE 'duplicate%'",
        )[0]
        n_yanks = sum(yanks.values())
        recheck = fleet.ledger.recheck_bytes()  # the full second look, once per stored file
        allowed = (
            n_yanks * (2 * MIB + MIB + OVERLAP + fleet.ledger.largest_recheck())
            + fleet.ledger.total_files * 4 * OVERLAP
            + dup[0]
            + recheck
        )
        res.runs = f"{n_yanks} yanks"
        res.resume = {
            "resumes": len(resumes),
            "rejected": len(rejected),
            "card_bytes_read": read,
            "card_bytes": total,
            "reread": read - total,
            "reread_allowed": allowed,
            "full_second_look": recheck,
            "duplicate_proofs": dup[1],
        }
        res.extra.update(
            yanks=dict(yanks),
            redocked_same_port=redock_same,
            redocked_other_port=redock_other,
            cards=fleet.cards_built,
        )
        full_check(st, fleet, res, watch, None)
        if rejected or read - total > allowed:
            raise Violation(f"invariant 4: rejected resumes {rejected}; re-read {read - total}")
    finally:
        res.runs = res.runs or f"{sum(yanks.values())} yanks"
        watch.finish()
        if st.proc is not None and st.proc.poll() is None:
            stop(st)


# --- scenario: small files --------------------------------------------------------------


def small_card(fleet: Fleet, serial: str, officer: str, n: int, rng: random.Random) -> Path:
    """A recorder whose card holds `n` small files in folders of 1,000."""
    spec = RecorderSpec(serial=serial, officer_no=officer, files=0, imp=0)
    path = build_recorder(fleet.st.root / "spare", spec, seed=rng.randrange(1 << 30))
    t = dt.datetime.now().replace(microsecond=0) - dt.timedelta(days=2)
    for i in range(n):
        imp = rng.random() < 0.05
        ext = rng.choice(("JPG", "JPG", "JPG", "WAV", "AVI"))
        folder = path / "card" / "DCIM" / f"{100 + i // 1000}ANDRO"
        folder.mkdir(parents=True, exist_ok=True)
        t += dt.timedelta(seconds=rng.randint(1, 20))
        name = f"{officer}_{serial}_{t:%Y%m%d%H%M%S}_{i % 9999 + 1:04d}{'IMP' if imp else ''}.{ext}"
        (folder / name).write_bytes(rng.randbytes(rng.randint(500, 40_000)))
    fleet._ledger_add(serial, officer, path)
    fleet.own(Rec(serial, officer, path))
    return path


def kill_plan_run(
    st: StationProc,
    audit: ResumeAudit,
    plan: list[tuple[str, float]],
    res: Result,
    timeout: float,
    fleet: Fleet,
    base_env: dict[str, str] | None = None,
) -> Counter[str]:
    """Start the daemon once per planned kill: a crash point armed with its count, or an
    external SIGKILL after so many seconds. A run whose cards empty first is stopped and
    the rest of the plan dropped (the clean run that follows checks it all the same)."""
    kills: Counter[str] = Counter()
    todo = list(plan)
    while todo:
        point, arg = todo.pop(0)
        if fleet.all_empty():
            break
        mark = log_size(st)
        ours = False
        if point == "external":
            env, at = {}, arg
        else:
            env, at = {"STATION_CRASHPOINTS": f"{point}:{int(arg)}"}, None
        start(st, {**(base_env or {}), **env})
        t0 = now_s()
        assert st.proc is not None
        while st.proc.poll() is None:
            t = now_s() - t0
            if at is not None and t >= at:
                kill(st)
                break
            if t > timeout:
                raise SoakError(f"{point}:{arg} did not fire in {timeout} s:\n{st.log()}")
            if fleet.all_empty() and t > 5:
                ours = True
                rc = stop(st)
                if rc != 0:
                    raise Violation(f"daemon stopped with {rc}:\n{log_since(st, mark)[-8000:]}")
                log(f"{res.scenario}: {point}:{arg:g} did not fire before the cards emptied")
                break
            time.sleep(0.05)
        rc = st.proc.returncode
        if rc == 0:
            audit.after_run(log_since(st, mark), st.db)
            if ours:
                break
            foreign_stop(st, f"{point}:{arg:g}")
            todo.insert(0, (point, arg))
            continue
        if rc != -signal.SIGKILL:
            raise Violation(
                f"{point}:{arg}: daemon exited with {rc}\n{log_since(st, mark)[-8000:]}"
            )
        kills[point] += 1
        audit.after_run(log_since(st, mark), st.db)
        stored = query(st.db, "SELECT count(*) FROM files")[0][0] if st.db.exists() else 0
        log(
            f"{res.scenario}: killed at {point}:{arg:g} after {now_s() - t0:.1f} s, "
            f"{stored} files stored so far"
        )
    return kills


def scenario_small_files(args: argparse.Namespace, res: Result, root: Path) -> None:
    rng = random.Random(args.seed)
    st = make_station(root, store={"sync_every_mb": 2, "min_free_mb": 1})
    fleet = Fleet(st, rng)
    t = now_s()
    small_card(
        fleet, f"M{args.seed % 100:02d}0001", f"5{args.seed % 100:02d}001", args.small_files, rng
    )
    res.extra["card_build_s"] = round(now_s() - t, 1)
    fleet.dock(next(iter(fleet.recs.values())), 1)
    watch = WipeWatch(fleet, st.db, interval=1.0)
    watch.start()
    audit = ResumeAudit()
    n = args.small_files
    plan = [
        ("after_commit", rng.randint(n // 40, n // 12)),
        ("external", rng.uniform(15, 40)),
        ("after_card_delete", rng.randint(n // 40, n // 12)),
        ("copy_chunk", rng.randint(n // 40, n // 12)),
        ("after_link", rng.randint(n // 40, n // 12)),
        ("external", rng.uniform(15, 40)),
    ]
    try:
        t0 = now_s()
        kills = kill_plan_run(st, audit, plan, res, 1800, fleet)
        mark = log_size(st)
        before = query(st.db, "SELECT count(*) FROM files")[0][0]
        took = drain(st, fleet, timeout=3600)
        audit.after_run(log_since(st, mark), st.db)
        after = query(st.db, "SELECT count(*) FROM files")[0][0]
        res.runs = f"{sum(kills.values())} kills"
        res.extra.update(
            kills=dict(kills),
            files_on_card=n + 1,
            final_run_files=after - before,
            final_run_s=round(took, 1),
            files_per_s=round((after - before) / took, 1) if took else None,
            collect_total_s=round(now_s() - t0, 1),
        )
        full_check(st, fleet, res, watch, audit)
    finally:
        watch.finish()
        if st.proc is not None and st.proc.poll() is None:
            stop(st)


# --- scenario: big file -----------------------------------------------------------------


def big_card(fleet: Fleet, serial: str, officer: str, size: int, rng: random.Random) -> Path:
    """A card with one sparse file over 4 GiB, random bytes at its edges and across 4 GiB."""
    spec = RecorderSpec(serial=serial, officer_no=officer, files=0, imp=0)
    path = build_recorder(fleet.st.root / "spare", spec, seed=rng.randrange(1 << 30))
    when = dt.datetime.now() - dt.timedelta(hours=3)
    big = path / "card" / "DCIM" / "100ANDRO" / f"{officer}_{serial}_{when:%Y%m%d%H%M%S}_0001.AVI"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as f:
        f.truncate(size)
        for off in (0, size // 3, (1 << 32) - MIB // 2, size - MIB):
            f.seek(off)
            f.write(rng.randbytes(MIB))
    fleet._ledger_add(serial, officer, path)
    fleet.own(Rec(serial, officer, path))
    return path


def scenario_big_file(args: argparse.Namespace, res: Result, root: Path) -> None:
    rng = random.Random(args.seed)
    st = make_station(root, store={"min_free_mb": 1})  # station defaults: 16 MiB checkpoints
    fleet = Fleet(st, rng)
    size = args.big_bytes
    t = now_s()
    big_card(fleet, f"B{args.seed % 100:02d}0001", f"4{args.seed % 100:02d}001", size, rng)
    res.extra["ledger_hash_s"] = round(now_s() - t, 1)
    rec = next(iter(fleet.recs.values()))
    fleet.dock(rec, 1)
    watch = WipeWatch(fleet, st.db, interval=1.0)
    watch.start()
    audit = ResumeAudit()
    past_4g = (1 << 32) // MIB + rng.randint(20, (size >> 20) - 4096 - 40)
    plan = [
        ("copy_chunk", past_4g),
        ("external", rng.uniform(4, 15)),  # re-hashing the prefix, or copying the tail
        ("after_fsync", 1),
        ("after_verify", 1),
    ]
    try:
        t0 = now_s()
        kills = kill_plan_run(st, audit, plan, res, 1800, fleet)
        mark = log_size(st)
        took = drain(st, fleet, timeout=3600)
        audit.after_run(log_since(st, mark), st.db)
        res.runs = f"{sum(kills.values())} kills"
        res.extra.update(
            kills=dict(kills),
            file_bytes=size,
            chunk_killed_at_mib=past_4g,
            resume_offsets=[int(m.group(2)) for m in RESUME_RE.finditer(log_since(st, 0))],
            final_run_s=round(took, 1),
            total_s=round(now_s() - t0, 1),
        )
        full_check(st, fleet, res, watch, audit)
        rows = query(st.db, "SELECT size FROM files WHERE size > ?", 1 << 32)
        res.extra["stored_over_4gib"] = [r[0] for r in rows]
        if [r[0] for r in rows] != [size]:
            raise Violation(f"the big file's catalog row: {rows}")
    finally:
        watch.finish()
        if st.proc is not None and st.proc.poll() is None:
            stop(st)


# --- scenario: clock --------------------------------------------------------------------


def faketime_env(shift: str) -> dict[str, str]:
    """LD_PRELOAD libfaketime into the daemon itself: the `faketime` wrapper forks, so a
    SIGKILL sent to it would miss the daemon."""
    for lib in ("libfaketimeMT.so.1", "libfaketime.so.1"):
        for d in (
            "/usr/lib/x86_64-linux-gnu/faketime",
            "/usr/lib/aarch64-linux-gnu/faketime",
            "/usr/lib/faketime",
            "/usr/local/lib/faketime",
        ):
            if Path(d, lib).exists():
                return {"LD_PRELOAD": str(Path(d, lib)), "FAKETIME": shift}
    raise SoakError("libfaketime not found (apt-get install -y faketime)")


def fake_date(shift: str) -> str:
    return subprocess.run(
        ["faketime", "-f", shift, "date", "-u", "+%Y-%m-%d"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def scenario_clock(args: argparse.Namespace, res: Result, root: Path) -> None:
    if shutil.which("faketime") is None:
        raise SoakError("faketime is not installed (apt-get install -y faketime)")
    rng = random.Random(args.seed)
    shift = args.station_clock
    fake = faketime_env(shift)
    st = make_station(root, store={"sync_every_mb": 2, "min_free_mb": 1})
    fleet = Fleet(st, rng, files=4, imp=1, size_mb=1.0, read_mb_s=20, big_mb=4)
    y2000 = dt.datetime(2000, 1, 1, 8).timestamp() - time.time()
    clocks = {
        1: y2000,
        2: -3 * YEAR,
        3: 2 * YEAR,
        4: dt.datetime(2041, 6, 1).timestamp() - time.time(),
    }
    for port in range(1, 9):
        fleet.add(
            f"C{args.seed % 100:02d}{port:04d}",
            f"3{args.seed % 100:02d}{port:03d}",
            port,
            clock_offset_s=round(clocks.get(port, 0.0)),
        )
    watch = WipeWatch(fleet, st.db)
    watch.start()
    audit = ResumeAudit()
    dates = {fake_date(shift)}
    plan = []
    for _ in range(args.clock_kills):
        p = pick_point(rng)
        if p.startswith("retention"):
            p = "after_commit"
        arg = (
            rng.uniform(1, 8) if p == "external" else rng.randint(1, 40 if p == "copy_chunk" else 6)
        )
        plan.append((p, arg))
    try:
        kills = kill_plan_run(st, audit, plan, res, 600, fleet, base_env=fake)
        mark = log_size(st)
        drain(st, fleet, env=fake)
        audit.after_run(log_since(st, mark), st.db)
        dates.add(fake_date(shift))
        res.runs = f"{sum(kills.values())} kills"
        full_check(st, fleet, res, watch, audit)
        problems = []
        rows = query(
            st.db,
            "SELECT r.serial, f.rel_path, f.collected_at, f.recorded_at, f.disk FROM files f "
            "JOIN recorders r ON r.id = f.recorder_id",
        )
        years = {d[:4] for d in dates}
        for _serial, rel, collected, recorded, disk in rows:
            day = rel.split("/")[2]
            if day not in dates:
                problems.append(f"{rel}: stored under {day}, station date {dates}")
            if str(collected)[:4] not in years:
                problems.append(f"{rel}: collected_at {collected}")
            sc = json.loads((Path(disk) / ".meta" / f"{rel}.json").read_text())
            if sc["collected_at"][:4] not in years:
                problems.append(f"{rel}: sidecar collected_at {sc['collected_at']}")
            m = NAME_TIME_RE.match(os.fsencode(Path(rel).name))
            if m and recorded is not None:
                want = dt.datetime.strptime(m.group(2).decode(), "%Y%m%d%H%M%S")
                if str(recorded)[:19] != want.isoformat(sep=" "):
                    problems.append(f"{rel}: recorded_at {recorded}, name says {want}")
        drift = dict(
            query(
                st.db,
                "SELECT r.serial, max(abs(s.clock_drift_s)) FROM collection_sessions s "
                "JOIN recorders r ON r.id = s.recorder_id GROUP BY r.serial",
            )
        )
        alarms = {
            s
            for (s,) in query(
                st.db, "SELECT subject FROM alarms WHERE code = 'recorder_clock_drift'"
            )
        }
        for rec in fleet.recs.values():
            if (
                rec.clock_offset_s
                and abs((drift.get(rec.serial) or 0) - abs(rec.clock_offset_s)) > 1
            ):
                problems.append(
                    f"{rec.serial}: drift {drift.get(rec.serial)} != {rec.clock_offset_s}"
                )
            if rec.clock_offset_s and rec.serial not in alarms:
                problems.append(f"{rec.serial}: no recorder_clock_drift alarm")
        events = query(st.db, "SELECT min(at), max(at) FROM events")[0]
        res.extra.update(
            kills=dict(kills),
            station_clock=shift,
            station_dates=sorted(dates),
            recorder_clocks={
                r.serial: r.clock_offset_s for r in fleet.recs.values() if r.clock_offset_s
            },
            recorded_years=sorted({str(r[3])[:4] for r in rows if r[3]}),
            events_span=events,
        )
        if problems:
            raise Violation("clock: " + "\n".join(problems[:50]))
        res.extra["jump_probe"] = clock_jump_probe(st, fleet, shift, args, rng)
    finally:
        watch.finish()
        if st.proc is not None and st.proc.poll() is None:
            stop(st)


def clock_jump_probe(
    st: StationProc, fleet: Fleet, shift: str, args: argparse.Namespace, rng: random.Random
) -> dict[str, Any]:
    """Observation, not an invariant: footage collected at the true time, then the station
    restarted with its clock `shift` ahead. Retention trusts the clock."""
    new = []
    for port in (1, 2):
        rec = fleet.recs[f"C{args.seed % 100:02d}{port:04d}"]
        rec.clock_offset_s = 0.0
        fleet.refill(rec)  # the same recorder, its clock now right, with a new card
        new.append(rec.serial)
    before = {i for (i,) in query(st.db, "SELECT id FROM files")}
    drain(st, fleet)  # true time
    fresh = query(st.db, "SELECT id, important FROM files")
    fresh = {i: imp for i, imp in fresh if i not in before}
    start_healthy(st, faketime_env(shift))
    time.sleep(15)  # the first retention sweep runs at start-up
    stop(st)
    dead = tombstones(st.db)
    return {
        "collected_at_true_time": len(fresh),
        "of_which_important": sum(1 for v in fresh.values() if v),
        "deleted_by_retention_after_clock_jump": len([i for i in dead if i in fresh]),
        "important_deleted": len([i for i in dead if fresh.get(i)]),
        "other_deleted": len([i for i in dead if i not in fresh]),
    }


# --- main -------------------------------------------------------------------------------

RUNNERS = {
    "kill": scenario_kill,
    "yank": scenario_yank,
    "small-files": scenario_small_files,
    "big-file": scenario_big_file,
    "clock": scenario_clock,
}


def cleanup(root: Path) -> None:
    """After a pass: keep the catalog, the log and the config; drop the stored bytes."""
    for d in ("disk1", "disk2", "bus", "spare"):
        shutil.rmtree(root / d, ignore_errors=True)


def write_failure(root: Path, res: Result, err: BaseException, st_log: str) -> None:
    (root / "FAILURE.txt").write_text(
        f"scenario {res.scenario}, seed {res.seed}\nreproduce: {res.command}\n\n"
        f"{type(err).__name__}: {err}\n\n{traceback.format_exc()}\n\n"
        f"--- daemon log (tail) ---\n{st_log}\n"
    )


def print_table(results: list[Result]) -> None:
    cols = ("scenario", "runs", "files", "lost", "dup", "corrupt", "early wipes", "status", "time")
    rows = []
    for r in results:
        c = r.counts()
        rows.append(
            (
                r.scenario,
                r.runs,
                str(r.files),
                str(c["lost"]),
                str(c["duplicated"]),
                str(c["corrupted"]),
                str(c["early_wipes"]),
                r.status,
                f"{r.duration_s / 60:.1f} min",
            )
        )
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    print("\n" + line + "\n" + "-" * len(line))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=200, help="daemon SIGKILLs in 'kill'")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "soak")
    ap.add_argument("--check-every", type=int, default=50, help="drain and check every N kills")
    ap.add_argument("--iteration-timeout", type=float, default=120.0)
    ap.add_argument("--yanks", type=int, default=60, help="unplugs in 'yank'")
    ap.add_argument("--yank-timeout", type=float, default=3600.0)
    ap.add_argument("--small-files", type=int, default=10_000)
    ap.add_argument("--big-bytes", type=int, default=4_600_000_000)
    ap.add_argument("--clock-kills", type=int, default=10)
    ap.add_argument("--station-clock", default="+3y", help="faketime offset for 'clock'")
    ap.add_argument("--keep", action="store_true", help="keep stored bytes and cards")
    args = ap.parse_args(argv)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: where is it?
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    revision = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    results = []
    status = 0
    for name in chosen:
        root = args.out / f"{name}-s{args.seed}"
        cmd = ".venv/bin/python bench/soak.py " + shlex.join(
            [f"--scenarios={name}", f"--seed={args.seed}"]
            + ([f"--kills={args.kills}"] if name == "kill" else [])
            + ([f"--yanks={args.yanks}"] if name == "yank" else [])
        )
        res = Result(name, args.seed, cmd)
        FOREIGN_STOPS.clear()
        log(f"{name}: starting (seed {args.seed}) in {root}")
        t0 = now_s()
        try:
            RUNNERS[name](args, res, root)
            res.status = "pass"
            if not args.keep:
                cleanup(root)
        except Violation as e:
            res.status = "VIOLATION"
            status = max(status, 1)
            log(f"{name}: INVARIANT BROKEN (seed {args.seed}): {str(e)[:2000]}")
            write_failure(root, res, e, _tail(root))
        except Exception as e:
            res.status = "error"
            status = max(status, 2)
            log(f"{name}: soak error: {e!r}"[:3000])
            if root.exists():
                write_failure(root, res, e, _tail(root))
        res.duration_s = round(now_s() - t0, 1)
        res.extra["foreign_stops"] = list(FOREIGN_STOPS)
        results.append(res)
        summary = {
            "scenario": name,
            "status": res.status,
            "seed": args.seed,
            "command": res.command,
            "date": dt.date.today().isoformat(),
            "revision": revision,
            "runs": res.runs,
            "files": res.files,
            "bytes": res.bytes,
            **res.counts(),
            "resume": res.resume,
            "extra": res.extra,
            "duration_s": res.duration_s,
            "findings": {k: v[:20] for k, v in res.findings.items()},
            "early_wipes": res.early_wipes[:20],
        }
        out = args.out / f"summary-{name}-s{args.seed}-{stamp}.json"
        out.write_text(json.dumps(summary, indent=1, default=str))
        log(f"{name}: {res.status} in {res.duration_s / 60:.1f} min -> {out}")
        print(json.dumps(summary, indent=1, default=str)[:6000], flush=True)
    print_table(results)
    return status


def _tail(root: Path) -> str:
    p = root / "daemon.log"
    if not p.exists():
        return ""
    lines = p.read_text(errors="replace").splitlines()
    return "\n".join(lines[-300:])


if __name__ == "__main__":
    sys.exit(main())
