"""The stored files as the forwarder sees them: candidates, keys, metadata, part hashes."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import mimetypes
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import select

from station.catalog import Catalog, Officer, Recorder, StoredFile
from station.forward.errors import ForwardIntegrityError, Interrupted
from station.names import parse_card_path
from station.retention.protection import is_protected

READ_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Candidate:
    """A stored file as the forwarder needs it."""

    id: int
    disk: str
    rel_path: str
    size: int
    sha256: str
    name: str
    card_path: bytes
    officer_no: str
    serial: str
    collected_at: dt.datetime
    recorded_at: dt.datetime | None
    level: str
    important: bool
    legal_hold: str | None
    retention_category: str | None = None

    @property
    def path(self) -> Path:
        return Path(self.disk) / self.rel_path

    @property
    def protected(self) -> bool:
        return is_protected(self.important, self.level, self.legal_hold, self.retention_category)


def stored_files(catalog: Catalog) -> list[Candidate]:
    """Every stored, not deleted file, with its officer and recorder."""
    with catalog.read() as s:
        rows = s.execute(
            select(
                StoredFile.id,
                StoredFile.disk,
                StoredFile.rel_path,
                StoredFile.size,
                StoredFile.sha256,
                StoredFile.name,
                StoredFile.card_path,
                Officer.officer_no,
                Recorder.serial,
                StoredFile.collected_at,
                StoredFile.recorded_at,
                StoredFile.level,
                StoredFile.important,
                StoredFile.legal_hold,
                StoredFile.retention_category,
            )
            .join(Officer, StoredFile.officer_id == Officer.id)
            .join(Recorder, StoredFile.recorder_id == Recorder.id)
            .where(StoredFile.deleted_at.is_(None))
        ).all()
    return [Candidate(*r) for r in rows]


def still_stored(catalog: Catalog, f: Candidate) -> bool:
    """Whether `f` is still in the catalog, not deleted, with the same content."""
    with catalog.read() as s:
        row = s.get(StoredFile, f.id)
        return row is not None and row.deleted_at is None and row.sha256 == f.sha256


def alternate_key(key: str, sha256: str) -> str:
    """The key used when `key` already holds other content: `stem~<sha256[:16]>.ext`."""
    folder, slash, name = key.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    name = f"{stem}~{sha256[:16]}" + (f".{ext}" if ext else "")
    return f"{folder}{slash}{name}"


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def meta_value(text: str) -> str:
    """S3 user metadata travels in HTTP headers: ASCII only, so percent-encode the rest."""
    return quote(text, safe="/:+-_.~ ")


def object_args(f: Candidate, station_id: str) -> dict[str, Any]:
    """The object's user metadata and Content-Type (docs/forwarding.md, *What goes where*)."""
    meta = {
        "sha256": f.sha256,
        "size": str(f.size),
        "station": meta_value(station_id),
        "officer-no": meta_value(f.officer_no),
        "serial": meta_value(f.serial),
        "card-path": meta_value(parse_card_path(f.card_path).display),
        "file-name": meta_value(f.name),
        "collected-at": f.collected_at.isoformat(timespec="seconds"),
        "level": f.level,
        "important": "true" if f.important else "false",
    }
    if f.recorded_at is not None:
        meta["recorded-at"] = f.recorded_at.isoformat(timespec="seconds")
    if f.legal_hold:
        meta["legal-hold"] = meta_value(f.legal_hold)
    ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
    return {"Metadata": meta, "ContentType": ctype}


@dataclass
class Digests:
    """Whole-file SHA-256 and per-part SHA-256 (base64) / MD5 (hex)."""

    sha256: str
    parts: list[tuple[str, str]]


def hash_parts(path: Path, part_size: int, stop: threading.Event) -> Digests:
    """Hash a whole file and each of its parts in one pass."""
    whole = hashlib.sha256()
    parts = []
    with open(path, "rb") as f:
        while True:
            ps, pm, n = hashlib.sha256(), hashlib.md5(), 0
            while n < part_size:
                chunk = f.read(min(READ_CHUNK, part_size - n))
                if not chunk:
                    break
                if stop.is_set():
                    raise Interrupted()
                whole.update(chunk)
                ps.update(chunk)
                pm.update(chunk)
                n += len(chunk)
            if n == 0:
                break
            parts.append((b64(ps.digest()), pm.hexdigest()))
            if n < part_size:
                break
    return Digests(whole.hexdigest(), parts)


def read_part(path: Path, number: int, part_size: int, size: int) -> bytes:
    """Part `number` (from 1) of a stored file of `size` bytes."""
    offset = (number - 1) * part_size
    length = min(part_size, size - offset)
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise ForwardIntegrityError(f"{path}: is shorter than its catalogued {size} bytes")
    return data
