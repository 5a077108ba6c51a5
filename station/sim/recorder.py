"""Building simulated recorders and docking them on the simulated bus (CONTRACT.md).

A recorder is built in a hidden folder of the bus and renamed into `port-N`,
so the station never sees a half-written recorder. Its card holds real footage
named and laid out as recorders do (GAT947.md section 3).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from station.drivers.simulated import CARD, RECORDER_JSON
from station.sim import media

BUILDING = ".building"
UNDOCKED = ".undocked"
MB = 1_000_000


class SimError(Exception):
    """A simulated-bus request that cannot be carried out."""


@dataclass
class RecorderSpec:
    """What `station sim dock` is asked to build."""

    serial: str = "A000001"
    officer_no: str = "000001"
    officer_name: str = ""
    unit_no: str = ""
    unit_name: str = ""
    id_code: str = "ZFY01"
    password: str = "000000"
    battery_percent: int = 80
    clock_offset_s: float = 0.0
    read_mb_s: float | None = None
    files: int = 5
    imp: int = 1
    size_mb: float = 2.0  # about this much per video; photos and audio are smaller


def _card_plan(spec: RecorderSpec, rng: random.Random, start: dt.datetime) -> list[tuple]:
    """(relative path, kind, size in bytes, recorded time) for each file."""
    plan = []
    imp_slots = set(rng.sample(range(spec.files), min(spec.imp, spec.files)))
    t = start
    for i in range(spec.files):
        r = rng.random()
        kind = "video" if r < 0.7 or i in imp_slots else "photo" if r < 0.85 else "audio"
        ext = {"video": "AVI", "photo": "JPG", "audio": "WAV"}[kind]
        seq = i % 999 + 1
        imp = i in imp_slots
        name = f"{spec.officer_no}_{spec.serial}_{t:%Y%m%d%H%M%S}_{seq:04d}{'IMP' if imp else ''}"
        folder = "DCIM/101ANDRO" if imp else "DCIM/100ANDRO"
        size = int(spec.size_mb * MB * rng.uniform(0.8, 1.2))
        if kind == "audio":
            size //= 4
        plan.append((f"{folder}/{name}.{ext}", kind, max(size, 1), t))
        t += dt.timedelta(seconds=rng.randint(60, 900))
    return plan


def build_recorder(root: Path, spec: RecorderSpec, seed: int = 0) -> Path:
    """Create a recorder folder (recorder.json + card/) under `root`; return it."""
    rng = random.Random(seed)
    folder = root / f"{spec.serial}-{os.getpid()}-{rng.randrange(1 << 30):x}"
    card = folder / CARD
    card.mkdir(parents=True)
    start = dt.datetime.now().replace(microsecond=0) - dt.timedelta(hours=9)
    for rel, kind, size, when in _card_plan(spec, rng, start):
        path = card / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        label = f"{spec.officer_no} {spec.serial} {when:%Y-%m-%d %H:%M:%S}"
        s = rng.randrange(1 << 30)
        if kind == "video":
            media.make_video(path, size, label=label, seed=s, recorded_at=when)
        elif kind == "photo":
            media.make_photo(path, label=label, seed=s)
        else:
            media.make_audio(path, max(size / 32000, 0.5), seed=s)
        ts = when.timestamp()
        os.utime(path, (ts, ts))
    (card / "Log").mkdir()
    media.make_log(
        card / "Log" / f"{start:%Y%m%d}.LOG",
        [
            f"{start:%Y-%m-%d %H:%M:%S} POWER ON {spec.serial} {spec.officer_no}",
            f"{start:%Y-%m-%d %H:%M:%S} RECORD START",
        ],
    )
    meta = asdict(spec)
    for k in ("files", "imp", "size_mb"):
        meta.pop(k)
    if meta["read_mb_s"] is None:
        meta.pop("read_mb_s")
    (folder / RECORDER_JSON).write_text(json.dumps(meta, ensure_ascii=False, indent=2), "utf-8")
    return folder


def port_dir(bus: Path, port: int) -> Path:
    if not 1 <= port <= 32:
        raise SimError(f"port {port} is not a port number (1-32)")
    return bus / f"port-{port}"


def dock(bus: Path, port: int, recorder: Path) -> Path:
    """Plug the recorder folder into `port` (one atomic rename)."""
    target = port_dir(bus, port)
    if target.exists():
        raise SimError(f"port {port} is occupied")
    if not (recorder / RECORDER_JSON).is_file():
        raise SimError(f"{recorder} is not a simulated recorder (no {RECORDER_JSON})")
    bus.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(recorder, target)
    except OSError as e:  # another filesystem: copy beside the bus first
        if e.errno != 18:
            raise
        tmp = bus / BUILDING / recorder.name
        shutil.copytree(recorder, tmp, symlinks=True)
        os.rename(tmp, target)
        shutil.rmtree(recorder)
    return target


def build_and_dock(bus: Path, port: int, spec: RecorderSpec, seed: int = 0) -> Path:
    """Build a recorder beside the bus and dock it at `port`."""
    if port_dir(bus, port).exists():
        raise SimError(f"port {port} is occupied")
    building = bus / BUILDING
    building.mkdir(parents=True, exist_ok=True)
    folder = build_recorder(building, spec, seed)
    try:
        return dock(bus, port, folder)
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def undock(bus: Path, port: int) -> Path:
    """Unplug the recorder at `port`; return where its folder was put aside."""
    source = port_dir(bus, port)
    if not source.is_dir():
        raise SimError(f"nothing is docked at port {port}")
    aside = bus / UNDOCKED
    aside.mkdir(parents=True, exist_ok=True)
    try:
        serial = json.loads((source / RECORDER_JSON).read_text("utf-8")).get("serial", "x")
    except (OSError, ValueError):
        serial = "unknown"
    target = aside / f"{serial}-port{port}-{dt.datetime.now():%Y%m%d%H%M%S%f}"
    os.rename(source, target)
    return target
