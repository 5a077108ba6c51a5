"""The station's own integrity: its installed code and configuration against a manifest.

`systemd/install.sh` runs `station integrity write` after installing: the SHA-256 of
every file of the station's packages (`station`, `drivers`, `web`: code, pages,
translations, compiled bytecode) and of the configuration file, in
`<venv>/INTEGRITY.json` (root's, read-only to the sandboxed daemon). At every start the
daemon compares (`check`): a changed, missing or added file raises the `integrity` alarm
and logs an `integrity_mismatch` event naming them. The station's own change of the
configuration (`station config import`) updates the configuration's entry, logged;
anything else stays an alarm until an administrator has looked and accepts the state
as it is (`station integrity accept --by ID`, logged).

New bytecode caches (`__pycache__`, written when a command runs without
PYTHONDONTWRITEBYTECODE) are not counted as added; a changed cached file is.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from station import __version__
from station.ingest.transfer import hash_file
from station.store.durable import replace_file

PACKAGES = ("station",)
MANIFEST_NAME = "INTEGRITY.json"
MAX_LISTED = 20  # paths named in one alarm or event


def default_manifest() -> Path:
    """`<venv>/INTEGRITY.json`: /opt/station/INTEGRITY.json on an installed station
    ($STATION_INTEGRITY_MANIFEST elsewhere: tests)."""
    return Path(os.environ.get("STATION_INTEGRITY_MANIFEST") or Path(sys.prefix) / MANIFEST_NAME)


def _package_root(name: str) -> Path:
    module = __import__(name)
    return Path(module.__file__).parent  # type: ignore[arg-type]


def _sha256(path: Path) -> str:
    return hash_file(path).hexdigest()


def code_files() -> dict[str, str]:
    """{"station/runtime.py": sha256, ...} over the installed packages."""
    out = {}
    for name in PACKAGES:
        root = _package_root(name)
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for f in sorted(files):
                path = Path(folder) / f
                out[str(path.relative_to(root.parent))] = _sha256(path)
    return out


def write_manifest(path: Path, config_path: Path | None) -> dict[str, object]:
    manifest = {
        "version": __version__,
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "files": code_files(),
        "config": _config_entry(config_path),
    }
    replace_file(path, json.dumps(manifest, indent=1, sort_keys=True).encode(), mode=0o644)
    return manifest


def _config_entry(config_path: Path | None) -> dict[str, str] | None:
    if config_path is None or not config_path.exists():
        return None
    return {"path": str(config_path.resolve()), "sha256": _sha256(config_path)}


def update_config(path: Path, config_path: Path) -> bool:
    """The station changed its configuration itself (an import): record its new hash.
    False when there is no manifest (not an installed station)."""
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return False
    manifest["config"] = _config_entry(config_path)
    replace_file(path, json.dumps(manifest, indent=1, sort_keys=True).encode(), mode=0o644)
    return True


@dataclass
class Findings:
    changed: list[str]
    missing: list[str]
    added: list[str]
    config: str | None  # why the configuration differs, or None

    def __bool__(self) -> bool:
        return bool(self.changed or self.missing or self.added or self.config)

    def summary(self) -> str:
        parts = []
        for what, paths in (("changed", self.changed), ("missing", self.missing),
                            ("added", self.added)):  # fmt: skip
            if paths:
                more = f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else ""
                parts.append(f"{len(paths)} {what}: {', '.join(paths[:MAX_LISTED])}{more}")
        if self.config:
            parts.append(self.config)
        return "; ".join(parts)


class ManifestError(Exception):
    """No usable manifest."""


def check(path: Path, config_path: Path | None) -> Findings:
    """Compare what is installed now with the manifest (ManifestError if there is none)."""
    try:
        manifest = json.loads(path.read_text("utf-8"))
        listed: dict[str, str] = manifest["files"]
    except FileNotFoundError:
        raise ManifestError(f"{path}: no integrity manifest (not an installed station?)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ManifestError(f"{path}: unreadable integrity manifest ({e})") from None
    now = code_files()
    changed = sorted(p for p in listed if p in now and now[p] != listed[p])
    missing = sorted(p for p in listed if p not in now)
    added = sorted(p for p in now if p not in listed and "__pycache__" not in Path(p).parts)
    config = None
    recorded = manifest.get("config")
    current = _config_entry(config_path)
    if config_path is None:  # run without a file (the demo): nothing to compare
        pass
    elif recorded and current and recorded.get("sha256") != current["sha256"]:
        config = f"the configuration {current['path']} changed since it was last recorded"
    elif recorded and not current:
        config = f"the configuration {recorded.get('path')} is missing"
    return Findings(changed, missing, added, config)
