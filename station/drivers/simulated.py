"""A recorder on the simulated bus (CONTRACT.md): a `port-N` folder with
`recorder.json` and `card/`.

For the fault-injection harness, `recorder.json` may carry `faults`:
`{"unplug_after_bytes": N}` yanks the recorder (its folder leaves the bus)
once N card bytes were read; `{"unstable": ["DCIM/x.AVI"]}` flips a random
bit in every chunk read from those files, as a failing card does;
`{"bad_sectors": {"DCIM/x.AVI": 1048576}}` fails any read covering that byte
with an I/O error; `{"gone_while_docked": true}` makes every call raise
`DeviceGone` while the folder stays on the bus, as a driver that takes a
recorder's refusal for an unplugging does.

Shared links: `links.json` at the top of the bus folder,
`{"links": [{"name": "hub-1", "ports": [1, 2, 3, 4], "mb_s": 40}]}`, puts those
ports behind one USB link of that many MB/s (a USB 2.0 hub's upstream port, about
35-40 MB/s in all): every card read on its ports, whatever recorder, draws on the one
budget, work-conserving (an idle port leaves its share to the others) and in the order
the reads arrive, as a hub's round-robin does. A recorder's own `read_mb_s` applies
as well. The station reads the same file to know its topology (`station ports show`).

It follows GA/T 947.4 semantics (password check on every call, `SyncDevTime`
zeroes the clock offset, `WriteZFYInfo` rewrites the officer fields) and walks
the card the way a careful mass-storage reader must: no symlink or device node
is ever followed. Unplugging is the port folder disappearing; every call and
every chunk read checks for it, so a yanked recorder raises `DeviceGone`
mid-file exactly as a real one does.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from station.drivers.base import (
    AuthFailed,
    CardReadError,
    DeviceGone,
    DockedDevice,
    OfficerInfo,
    ProtocolError,
    RecorderDriver,
    RecorderSession,
)
from station.drivers.card import ALIGN, FolderCard, FolderStream

RECORDER_JSON = "recorder.json"
CARD = "card"
LINKS_JSON = "links.json"
BURST_S = 0.05  # how far an idle link's unused time may be spent at once


@dataclass(frozen=True)
class SimLink:
    """Ports of the simulated bus that share one USB link of `mb_s` MB/s."""

    name: str
    ports: tuple[int, ...]
    mb_s: float


def read_links(bus: Path) -> list[SimLink]:
    """The shared links of the simulated bus in folder `bus` (none if no links.json)."""
    try:
        data = json.loads((bus / LINKS_JSON).read_text("utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise ProtocolError(f"{bus / LINKS_JSON}: {e}") from None
    links = []
    for item in data.get("links", []) if isinstance(data, dict) else []:
        try:
            links.append(
                SimLink(str(item["name"]), tuple(int(p) for p in item["ports"]),
                        float(item["mb_s"]))
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"{bus / LINKS_JSON}: bad link {item!r}: {e}") from None
    return links


class _LinkClock:
    """One shared link's budget: a virtual clock that every read on the link advances by
    its bytes / rate; a read may go on once the clock has caught up with it."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.t = time.monotonic()
        self.lock = threading.Lock()

    def reserve(self, n: int) -> float:
        """Account `n` bytes; return the monotonic time they have passed the link."""
        with self.lock:
            self.t = max(self.t, time.monotonic() - BURST_S) + n / self.rate
            return self.t


_clocks: dict[tuple[str, str, float], _LinkClock] = {}
_clocks_lock = threading.Lock()


def link_clock(bus: Path, port: int) -> _LinkClock | None:
    """The budget of the shared link that `port` of the simulated bus `bus` is behind."""
    for link in read_links(bus):
        if port in link.ports and link.mb_s > 0:
            key = (str(bus.resolve()), link.name, link.mb_s)
            with _clocks_lock:
                return _clocks.setdefault(key, _LinkClock(link.mb_s * 1e6))
    return None


class SimulatedSession(RecorderSession):
    """An open simulated recorder."""

    def __init__(self, port_dir: Path, password: str) -> None:
        self.port_dir = port_dir
        self.password = password
        self._ino = self._stat_port().st_ino
        self._json_lock = threading.Lock()
        self._msdc = False

    # --- presence and the recorder file --------------------------------------

    def _stat_port(self) -> os.stat_result:
        try:
            return os.stat(self.port_dir)
        except FileNotFoundError:
            raise DeviceGone(str(self.port_dir)) from None

    def alive(self) -> bool:
        try:
            return os.stat(self.port_dir).st_ino == self._ino
        except OSError:
            return False

    def _check(self) -> None:
        if not self.alive():
            raise DeviceGone(str(self.port_dir))

    def _load(self) -> dict[str, Any]:
        self._check()
        try:
            data = json.loads((self.port_dir / RECORDER_JSON).read_text("utf-8"))
        except FileNotFoundError:
            raise DeviceGone(str(self.port_dir)) from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ProtocolError(f"unreadable recorder.json: {e}") from None
        if not isinstance(data, dict):
            raise ProtocolError("recorder.json is not an object")
        if (data.get("faults") or {}).get("gone_while_docked"):
            raise DeviceGone(f"{self.port_dir}: reported gone while still docked (fault)")
        if str(data.get("password", "")) != self.password:
            raise AuthFailed("CHECK_PWD_FAILED")
        return data

    def _save(self, data: dict[str, Any]) -> None:
        self._check()
        target = self.port_dir / RECORDER_JSON
        tmp = target.with_name(RECORDER_JSON + ".tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2), "utf-8")
        os.replace(tmp, target)

    def _field(self, data: dict[str, Any], key: str) -> str:
        v = data.get(key, "")
        if not isinstance(v, str | int):
            raise ProtocolError(f"{key} is not text")
        return str(v)

    # --- GA/T 947.4 calls ---------------------------------------------------------

    def id_code(self) -> str:
        return self._field(self._load(), "id_code")

    def officer_info(self) -> OfficerInfo:
        d = self._load()
        info = OfficerInfo(
            serial=self._field(d, "serial"),
            officer_no=self._field(d, "officer_no"),
            officer_name=self._field(d, "officer_name"),
            unit_no=self._field(d, "unit_no"),
            unit_name=self._field(d, "unit_name"),
        )
        if not info.serial or not info.officer_no:
            raise ProtocolError("officer block without serial or officer number")
        return info

    def write_officer_info(self, info: OfficerInfo) -> None:
        with self._json_lock:
            d = self._load()
            d.update(
                serial=info.serial,
                officer_no=info.officer_no,
                officer_name=info.officer_name,
                unit_no=info.unit_no,
                unit_name=info.unit_name,
            )
            self._save(d)

    def battery_percent(self) -> int:
        v = self._load().get("battery_percent", 0)
        if not isinstance(v, int) or not 0 <= v <= 100:
            raise ProtocolError(f"battery level {v!r} out of range")
        return v

    def set_clock(self, now: dt.datetime) -> float | None:
        with self._json_lock:
            d = self._load()
            drift = float(d.get("clock_offset_s", 0.0))
            d["clock_offset_s"] = 0.0
            self._save(d)
            return drift

    def enter_mass_storage(self) -> None:
        self._load()
        self._msdc = True

    # --- the card -------------------------------------------------------------------

    def card(self) -> SimulatedCard:
        if not self._msdc:
            raise ProtocolError("card opened before SetMSDC")
        return SimulatedCard(self)

    def yank(self) -> None:
        """Fault injection: the recorder is pulled out (its folder leaves the bus)."""
        aside = self.port_dir.parent / ".undocked"
        aside.mkdir(exist_ok=True)
        target = aside / f"{self.port_dir.name}-yanked-{time.time_ns()}"
        data = json.loads((self.port_dir / RECORDER_JSON).read_text("utf-8"))
        data.get("faults", {}).pop("unplug_after_bytes", None)
        (self.port_dir / RECORDER_JSON).write_text(json.dumps(data, ensure_ascii=False))
        os.rename(self.port_dir, target)
        raise DeviceGone("yanked")


class SimulatedCard(FolderCard):
    """The simulated recorder's card folder, read at its speed limit, faults as configured."""

    def __init__(self, session: SimulatedSession) -> None:
        super().__init__(session.port_dir / CARD, session.alive)
        self.session = session

    def open_file(self, path: bytes, offset: int = 0, *, direct: bool = False) -> SimulatedStream:
        data = self.session._load()
        rate = data.get("read_mb_s")
        dfd, fd, _ = self.open_beneath(path)
        os.close(dfd)
        os.lseek(fd, offset, os.SEEK_SET)
        faults = data.get("faults") or {}
        name = os.fsdecode(path)
        port_dir = self.session.port_dir
        m = re.fullmatch(r"port-(\d+)", port_dir.name)
        return SimulatedStream(
            self,
            fd,
            float(rate) * 1e6 if rate else None,
            link=link_clock(port_dir.parent, int(m.group(1))) if m else None,
            offset=offset,
            direct=direct,
            unplug_after=faults.get("unplug_after_bytes"),
            unstable=name in (faults.get("unstable") or []),
            bad_sector=(faults.get("bad_sectors") or {}).get(name),
        )

    def delete_file(self, path: bytes) -> None:
        self.session._load()  # the recorder must still accept our password
        super().delete_file(path)


class SimulatedStream(FolderStream):
    """A card file being read, at most `rate` bytes per second, faults as configured."""

    def __init__(
        self,
        card: SimulatedCard,
        fd: int,
        rate: float | None,
        *,
        link: _LinkClock | None = None,
        offset: int = 0,
        unplug_after: int | None = None,
        unstable: bool = False,
        bad_sector: int | None = None,
        direct: bool = False,
    ) -> None:
        super().__init__(card, fd, direct=direct and offset % ALIGN == 0)
        self.sim = card
        self.rate = rate
        self.link = link
        self.pos = offset
        self.unplug_after = unplug_after
        self.unstable = unstable
        self.bad_sector = bad_sector
        self._t0 = time.monotonic()
        self._n = 0

    def readinto(self, buffer: memoryview) -> int:
        self.card.check()
        if self.unplug_after is not None and self.card.bytes_read >= self.unplug_after:
            self.sim.session.yank()
        if self.bad_sector is not None and self.pos <= self.bad_sector < self.pos + len(buffer):
            raise CardReadError(f"read failed at byte {self.bad_sector}: Input/output error")
        n = super().readinto(buffer)
        if self.unstable and n:
            i = random.randrange(n)
            buffer[i] ^= 1 << random.randrange(8)
        self.pos += n
        self._n += n
        due = self._t0 + self._n / self.rate if self.rate else 0.0
        if self.link is not None and n:
            due = max(due, self.link.reserve(n))
        # keep to the speed limits, but notice an unplug as a real device would
        while (ahead := due - time.monotonic()) > 0:
            time.sleep(min(ahead, 0.1))
            self.card.check()
        return n


class SimulatedDriver(RecorderDriver):
    """Recorders on the simulated bus."""

    name = "simulated"

    def match(self, device: DockedDevice) -> int:
        return 100 if device.kind == "simulated" else 0

    def open(self, device: DockedDevice, passwords: list[str]) -> SimulatedSession:
        port_dir = Path(device.path)
        for pw in passwords:
            session = SimulatedSession(port_dir, pw)
            try:
                session.id_code()
            except AuthFailed:
                continue
            return session
        raise AuthFailed(f"none of {len(passwords)} configured passwords accepted")
