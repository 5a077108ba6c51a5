"""The tar.gz members and private files a support bundle and a settings backup are made of."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

from station.store.durable import replace_file


def add_member(tar: tarfile.TarFile, name: str, data: bytes, when: dt.datetime) -> None:
    """Add `data` as the regular file `name`, dated `when`, readable by its owner only."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(when.timestamp()), 0o600
    tar.addfile(info, io.BytesIO(data))


def to_json(value: Any) -> str:
    """`value` as the indented UTF-8 JSON of a bundle or backup member."""
    return json.dumps(value, ensure_ascii=False, indent=2, default=str) + "\n"


def safe_name(name: str) -> str:
    """`name` made safe for a file name (a station id as the operator typed it)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "station"


def write_private(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write a file only its owner can read (a backup with secrets, a bundle), atomically
    (mkstemp creates it 0600)."""
    return replace_file(Path(path), data, mode=0o600)


def default_name(kind: str, station_id: str, suffix: str = ".tar.gz") -> str:
    """`station-<kind>-<id>-<UTC time><suffix>`, the name of a bundle or a backup."""
    return (
        f"station-{kind}-{safe_name(station_id)}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}{suffix}"
    )
