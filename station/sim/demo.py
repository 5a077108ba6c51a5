"""`station demo`: a whole station on a simulated bus, with recorders coming and going."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from pathlib import Path
from typing import Protocol

import tomli_w

from station.config import StationConfig, load_config
from station.ingest.collector import Slot
from station.sim.recorder import RecorderSpec, build_and_dock, undock

log = logging.getLogger(__name__)

# A small force: (officer no, name, unit no, unit name, recorder serial)
OFFICERS = [
    ("010231", "张伟", "110101", "城关派出所", "ZF10231"),
    ("010232", "王芳", "110101", "城关派出所", "ZF10232"),
    ("010455", "李娜", "110102", "交警大队", "ZF10455"),
    ("010456", "刘洋", "110102", "交警大队", "ZF10456"),
    ("010789", "陈静", "110103", "巡警支队", "ZF10789"),
    ("010790", "杨磊", "110103", "巡警支队", "ZF10790"),
    ("011002", "赵敏", "110104", "治安大队", "ZF11002"),
    ("011003", "黄强", "110104", "治安大队", "ZF11003"),
    ("011120", "周杰", "110105", "刑侦大队", "ZF11120"),
    ("011121", "吴霞", "110105", "刑侦大队", "ZF11121"),
    ("011305", "徐军", "110106", "特警支队", "ZF11305"),
    ("011306", "孙丽", "110106", "特警支队", "ZF11306"),
]


def prepare_demo(data: Path, port: int) -> tuple[StationConfig, str]:
    """Create the demo's folders and configuration (kept between runs); return it and a token."""
    data.mkdir(parents=True, exist_ok=True)
    config_file = data / "station.toml"
    if not config_file.exists():
        token = secrets.token_urlsafe(24)
        config_file.write_text(
            tomli_w.dumps(
                {
                    "station": {"id": "DEMO-0001", "name": "Demo station"},
                    "store": {
                        "disks": [str(data / "disk1"), str(data / "disk2")],
                        "folder_disks": True,
                        "min_free_mb": 256,
                    },
                    "database": {"url": f"sqlite:///{data / 'catalog.db'}"},
                    "bus": {"kind": "simulated", "path": str(data / "simbus"), "ports": 8},
                    "registration": {"mode": "auto"},
                    "retention": {"days": 180},
                    "web": {"host": "127.0.0.1", "port": port},
                    "api": {"tokens": [token]},
                }
            )
        )
    config = load_config(config_file)
    config = config.model_copy(update={"web": config.web.model_copy(update={"port": port})})
    _demo_users(config)
    for d in config.store.disks:
        d.mkdir(parents=True, exist_ok=True)
    return config, config.api.tokens[0]


DEMO_ADMIN = ("900001", "123456")  # printed at start: a demo has no secrets to keep
DEMO_SECURITY = ("900002", "123456")  # the security administrator: accounts


def _demo_users(config: StationConfig) -> None:
    """A demo administrator and security administrator, so the file console (footage,
    settings; accounts) can be tried at once."""
    from station.accounts import AccountError, create_user
    from station.catalog import Catalog

    catalog = Catalog(config.database_path)
    catalog.migrate()
    try:
        for (no, pin), role, name in (
            (DEMO_ADMIN, "administrator", "Demo administrator"),
            (DEMO_SECURITY, "security_admin", "Demo security administrator"),
        ):
            with contextlib.suppress(AccountError):  # already there from an earlier run
                create_user(catalog, no, pin, role=role, name=name, by="demo")
    finally:
        catalog.close()


class Docks(Protocol):
    """What the demo's traffic watches of the running station (`station.runtime.Station`)."""

    config: StationConfig
    slots: dict[int, Slot]


async def recorder_traffic(station: Docks, stop: asyncio.Event, interval: float) -> None:
    """Dock a recorder on a free port every `interval` seconds; unplug finished ones."""
    bus = station.config.bus.path
    rng = random.Random()
    loop = asyncio.get_running_loop()
    finished_at: dict[int, float] = {}
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval)
            return
        except TimeoutError:
            pass
        now = loop.time()
        docked = {s.recorder["serial"] for s in station.slots.values() if s.recorder}
        for slot in station.slots.values():
            if slot.state in ("complete", "error") and (bus / f"port-{slot.port}").exists():
                finished_at.setdefault(slot.port, now)
                if now - finished_at[slot.port] > 2 * interval:
                    await loop.run_in_executor(None, undock, bus, slot.port)
                    finished_at.pop(slot.port)
        free = [p for p in station.slots if not (bus / f"port-{p}").exists()]
        idle = [o for o in OFFICERS if o[4] not in docked]
        if not free or not idle:
            continue
        port = rng.choice(free)
        officer_no, name, unit_no, unit_name, serial = rng.choice(idle)
        spec = RecorderSpec(
            serial=serial,
            officer_no=officer_no,
            officer_name=name,
            unit_no=unit_no,
            unit_name=unit_name,
            battery_percent=rng.randint(8, 100),
            clock_offset_s=rng.uniform(-30, 30),
            read_mb_s=rng.choice([4.0, 8.0, 12.0]),
            files=rng.randint(3, 9),
            imp=rng.randint(0, 2),
            size_mb=rng.uniform(3, 12),
        )
        try:
            await loop.run_in_executor(
                None, build_and_dock, bus, port, spec, rng.randrange(1 << 30)
            )
        except Exception:
            log.exception("demo: docking a recorder on port %s failed", port)
