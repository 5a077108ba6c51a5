"""The on-disk record of a stored file, so the store can be trusted on its own.

Each stored file `<disk>/<rel>` has `<disk>/.meta/<rel>.json`, written durably
*before* the file is linked into place. It carries everything needed to
rebuild the file's catalog row (`station catalog rebuild`), so losing or
corrupting the database loses nothing.

Besides what collection knows, it carries what is added later and must outlive the
catalog: the grade, note, case and hold, the 2016 retention category (a permanent one
must never come back deletable) and the SM3 digest computed in the background. Every
place that changes one of them rewrites the sidecar from the row (`mirror_row`), and
start-up recovery does so for any that could not be written then. Fields added later
default to None, so older sidecars stay readable.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from station.retention.protection import CATEGORIES, LEVELS, is_protected
from station.store.durable import replace_file

META = ".meta"
MAX_SIDECAR = 64 * 1024  # a real one is about 1 KiB
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
    clock_untrusted: bool = False  # collected while the station clock could not be believed
    deleted_at: str | None = None  # set when retention or a person deleted the file
    deleted_by: str | None = None
    delete_reason: str | None = None
    # a 2016 category (station/retention/protection.py CATEGORIES)
    retention_category: str | None = None
    sm3: str | None = None  # SM3 (GB/T 32905) of the bytes, once computed (station/platform/sm3)
    mirror_disk: str | None = None  # the disk holding its second copy (station.store.mirror)
    version: int = VERSION

    @property
    def protected(self) -> bool:
        return is_protected(self.important, self.level, self.legal_hold, self.retention_category)

    @property
    def card_path(self) -> bytes:
        return bytes.fromhex(self.card_path_hex)

    @property
    def collected(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.collected_at)

    @property
    def recorded(self) -> dt.datetime | None:
        return dt.datetime.fromisoformat(self.recorded_at) if self.recorded_at else None


def mirror_row(sc: Sidecar, row: Any) -> Sidecar:
    """`sc` with what may change after collection (grade, note, case, hold, retention
    category, SM3, deletion) as the catalog row `row` (a StoredFile) has it: the row is the
    truth while it exists."""
    return replace(
        sc,
        important=bool(row.important),
        clock_untrusted=bool(row.clock_untrusted),
        level=row.level,
        note=row.note,
        case_no=row.case_no,
        legal_hold=row.legal_hold,
        retention_category=row.retention_category,
        sm3=row.sm3,
        deleted_at=row.deleted_at.isoformat() if row.deleted_at else None,
        deleted_by=row.deleted_by,
        delete_reason=row.delete_reason,
    )


def sidecar_path(disk: Path, rel: str | Path) -> Path:
    return disk / META / f"{rel}.json"


def write_sidecar(disk: Path, rel: str | Path, sc: Sidecar) -> Path:
    """Write (or replace) a sidecar durably (station.store.durable.replace_file)."""
    data = json.dumps(asdict(sc), ensure_ascii=False, indent=1).encode()
    return replace_file(sidecar_path(disk, rel), data, root=disk)


def read_sidecar(path: Path) -> Sidecar:
    """Read and validate every field of a sidecar; SidecarError says what is wrong."""
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_SIDECAR + 1)
        if len(text) > MAX_SIDECAR:
            raise ValueError(f"larger than {MAX_SIDECAR} bytes")
        raw = json.loads(text.decode("utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        known = {f.name for f in fields(Sidecar)}
        sc = Sidecar(**{k: v for k, v in raw.items() if k in known})
        _validate(sc)
        return sc
    except (OSError, ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
        raise SidecarError(f"{path}: {type(e).__name__}: {e}") from None


_TEXT = (
    "officer_no",
    "serial",
    "card_path_hex",
    "name",
    "collected_at",
    "officer_name",
    "unit_no",
    "unit_name",
    "id_code",
    "kind",
    "level",
    "station_id",
)
_OPTIONAL_TEXT = (
    "recorded_at",
    "note",
    "case_no",
    "legal_hold",
    "deleted_at",
    "deleted_by",
    "delete_reason",
    "retention_category",
    "sm3",
    "mirror_disk",
)
_SHA256 = re.compile(r"[0-9a-f]{64}")  # SM3 digests have the same form


def _validate(sc: Sidecar) -> None:
    for name in _TEXT:
        if not isinstance(getattr(sc, name), str):
            raise ValueError(f"{name} is not text")
    for name in _OPTIONAL_TEXT:
        if getattr(sc, name) is not None and not isinstance(getattr(sc, name), str):
            raise ValueError(f"{name} is not text")
    if not isinstance(sc.sha256, str) or not _SHA256.fullmatch(sc.sha256):
        raise ValueError("sha256 is not 64 hex digits")
    if type(sc.size) is not int or sc.size < 0:
        raise ValueError("size is not a byte count")
    if type(sc.important) is not bool or type(sc.version) is not int:
        raise ValueError("important or version has the wrong type")
    if type(sc.clock_untrusted) is not bool:
        raise ValueError("clock_untrusted has the wrong type")
    if sc.level not in LEVELS:
        raise ValueError(f"unknown level {sc.level!r}")
    if sc.retention_category is not None and sc.retention_category not in CATEGORIES:
        raise ValueError(f"unknown retention category {sc.retention_category!r}")
    if sc.sm3 is not None and not _SHA256.fullmatch(sc.sm3):
        raise ValueError("sm3 is not 64 hex digits")
    bytes.fromhex(sc.card_path_hex)
    for stamp in (sc.collected_at, sc.recorded_at, sc.deleted_at):
        if stamp is not None:
            dt.datetime.fromisoformat(stamp)
    if sc.collected.tzinfo is None:
        raise ValueError("collected_at has no time zone")
