"""The on-disk record of a stored file, so the store can be trusted on its own.

Each stored file `<disk>/<rel>` has `<disk>/.meta/<rel>.json`, written durably
*before* the file is linked into place. It carries everything needed to
rebuild the file's catalog row (`station catalog rebuild`), so losing or
corrupting the database loses nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from station.store import fsync_dir, make_dirs_durable

META = ".meta"
VERSION = 1


class SidecarError(Exception):
    """A sidecar that cannot be read or does not describe its file."""


@dataclass
class Sidecar:
    sha256: str
    size: int
    officer_no: str
    serial: str
    card_path_hex: str  # the card path's exact bytes
    name: str  # the original file name, decoded for people
    collected_at: str  # ISO 8601, UTC
    officer_name: str = ""
    unit_no: str = ""
    unit_name: str = ""
    id_code: str = ""
    kind: str = "other"
    recorded_at: str | None = None  # recorder wall time, ISO 8601 without zone
    important: bool = False
    level: str = "normal"
    station_id: str = ""
    note: str | None = None
    case_no: str | None = None
    legal_hold: str | None = None
    deleted_at: str | None = None  # set when retention or a person deleted the file
    deleted_by: str | None = None
    delete_reason: str | None = None
    version: int = VERSION

    @property
    def card_path(self) -> bytes:
        return bytes.fromhex(self.card_path_hex)

    @property
    def collected(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.collected_at)

    @property
    def recorded(self) -> dt.datetime | None:
        return dt.datetime.fromisoformat(self.recorded_at) if self.recorded_at else None


def sidecar_path(disk: Path, rel: str | Path) -> Path:
    return disk / META / f"{rel}.json"


def write_sidecar(disk: Path, rel: str | Path, sc: Sidecar) -> Path:
    """Write (or replace) a sidecar durably: temp file, fsync, rename, fsync folder."""
    path = sidecar_path(disk, rel)
    make_dirs_durable(path.parent, disk)
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps(asdict(sc), ensure_ascii=False, indent=1).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def read_sidecar(path: Path) -> Sidecar:
    try:
        raw = json.loads(path.read_text("utf-8"))
        known = {f.name for f in fields(Sidecar)}
        sc = Sidecar(**{k: v for k, v in raw.items() if k in known})
        bytes.fromhex(sc.card_path_hex)
        sc.collected  # noqa: B018 - validates the timestamp
        return sc
    except (OSError, ValueError, TypeError) as e:
        raise SidecarError(f"{path}: {e}") from None
