"""The settings backup (`station config export|import`): the settings, signed, and restored.

The backup is a .tar.gz: the configuration file byte for byte (comments kept)
and the settings an administrator changed on the screen, which the catalog
keeps (`station.settings`), with a manifest of their SHA-256. An import
is validated exactly as the daemon validates its configuration (and the screen
its settings), and only then replaces the file atomically; an invalid one is
refused with the key named and leaves everything untouched. A bare TOML file is
accepted as well (the configuration alone).

Backups are signed: an HMAC-SHA256 of the manifest (which holds every member's
SHA-256) with the key kept beside the configuration file (`backup.key`, 0600,
made at the first export; copy it to a replacement station to restore there).
An unsigned file (a bare TOML), an altered backup or one signed with another key
is refused unless an administrator forces it (`--force`), which the system log
records as such.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import io
import json
import os
import shutil
import tarfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from station import __version__
from station.catalog import Catalog
from station.catalog.admin import log_event
from station.config import ConfigError, StationConfig, parse_config
from station.health import integrity
from station.settings import STATE_KEY, Settings
from station.store.durable import replace_file
from station.support.tarball import add_member, to_json, write_private

UI_SETTINGS_KEY = STATE_KEY  # the catalog's key of the screen's settings
SETTINGS_FORMAT = "station-settings"
SETTINGS_VERSION = 1
CONFIG_MEMBER = "station.toml"
UI_MEMBER = "ui-settings.json"
MANIFEST_MEMBER = "manifest.json"
SIGNATURE_MEMBER = "signature.json"  # HMAC-SHA256 of manifest.json's bytes
KEY_FILE = "backup.key"  # beside the configuration file
MAX_MEMBER_BYTES = 4 << 20  # a configuration is a few kB: anything bigger is not one


@dataclass
class SettingsBackup:
    """What a settings backup holds, validated."""

    config_bytes: bytes  # the configuration file, byte for byte
    config: StationConfig
    ui_settings: dict[str, Any] | None  # None: the backup does not have them (a bare TOML)
    manifest: dict[str, Any]
    untrusted: str | None = None  # why its signature does not hold; None: signed by our key


@dataclass
class ImportResult:
    """What `import_settings` did (or, with dry_run, would do)."""

    config: StationConfig
    changed: list[str]  # configuration sections that differ from the current file
    new_file: bool  # there was no configuration file before
    ui_settings: dict[str, Any] | None  # the screen's settings restored (None: left alone)
    backup_path: Path | None  # where the previous file was kept
    untrusted: str | None = None  # restored (or to be) although its signature does not hold


def _validate(data: bytes, source: str) -> StationConfig:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not UTF-8 text ({e})") from None
    try:
        mapping = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    return parse_config(mapping, source)


def _validate_ui_settings(value: Any, source: str) -> dict[str, Any]:
    """The screen's settings as the settings screen would accept them, or ConfigError."""
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: not a JSON object")
    try:
        Settings(**value)
    except (TypeError, ValidationError) as e:
        if isinstance(e, ValidationError):
            keys = [
                f"  {'.'.join(str(p) for p in err['loc'])}: "
                + ("unknown setting" if err["type"] == "extra_forbidden" else err["msg"])
                for err in e.errors()
            ]
        else:
            keys = [f"  {e}"]
        raise ConfigError("\n".join([f"{source}: invalid settings", *keys])) from None
    return dict(value)


def parse_ui_settings(raw: str | None) -> dict[str, Any]:
    """The settings changed on the screen, as the catalog keeps them ({} when none)."""
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"{UI_SETTINGS_KEY} in the catalog is not a JSON object")
    return value


def read_ui_settings(config: StationConfig) -> dict[str, Any]:
    """The settings changed on the screen, from the catalog ({} when there is none yet)."""
    if not config.database_path.exists():
        return {}
    catalog = Catalog(config.database_path)
    try:
        return parse_ui_settings(catalog.get_state(UI_SETTINGS_KEY))
    finally:
        catalog.close()


def backup_key(config_path: str | os.PathLike[str], *, create: bool = False) -> bytes | None:
    """The station's backup signing key (`backup.key` beside the configuration), made on
    first use when `create`; None when there is none."""
    path = Path(config_path).parent / KEY_FILE
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        if not create:
            return None
        key = os.urandom(32).hex().encode()
        write_private(path, key + b"\n")
    if len(key) < 32:
        raise ConfigError(f"{path}: a backup key must be at least 32 characters")
    return key


def _mac(key: bytes, manifest: bytes) -> str:
    return hmac.new(key, manifest, hashlib.sha256).hexdigest()


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"station-backup-key:" + key).hexdigest()[:16]


def _check_signature(members: dict[str, bytes], key: bytes | None, source: str) -> str | None:
    """Why the backup's signature does not hold, or None."""
    raw = members.get(SIGNATURE_MEMBER)
    if raw is None:
        return f"{source} is not signed"
    try:
        sig = json.loads(raw)
        mac, key_id = str(sig["mac"]), str(sig["key_id"])
    except (ValueError, KeyError, TypeError):
        return f"{source}: unreadable {SIGNATURE_MEMBER}"
    if key is None:
        return f"{source} is signed (key {key_id}), but this station has no {KEY_FILE}"
    if key_id != _key_id(key):
        return f"{source} is signed with another key ({key_id}, this station's is {_key_id(key)})"
    if not hmac.compare_digest(mac, _mac(key, members[MANIFEST_MEMBER])):
        return f"{source} was altered after it was signed (its signature does not match)"
    return None


def export_settings(config_path: str | os.PathLike[str]) -> tuple[bytes, SettingsBackup]:
    """The station's settings as a .tar.gz: the configuration file byte for byte
    (comments and secrets included) and the settings changed on the screen.

    ConfigError (naming the key) when the file is missing or invalid: what is exported
    can always be imported again. When the catalog cannot be read, the backup holds
    the file alone and its manifest says why.
    """
    path = Path(config_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    config = _validate(data, str(path))
    manifest: dict[str, Any] = {
        "format": SETTINGS_FORMAT,
        "version": SETTINGS_VERSION,
        "station": {"id": config.station.id, "name": config.station.name},
        "exported_at": dt.datetime.now(dt.UTC).isoformat(),
        "station_version": __version__,
        "config_file": str(path.resolve()),
        "files": {},
    }
    members = {CONFIG_MEMBER: data}
    ui: dict[str, Any] | None
    try:
        ui = read_ui_settings(config)
    except Exception as e:  # a damaged catalog must not stop the configuration's backup
        ui = None
        manifest["ui_settings_error"] = f"{type(e).__name__}: {e}"
    if ui is not None:
        members[UI_MEMBER] = to_json(ui).encode()
    manifest["files"] = {n: hashlib.sha256(b).hexdigest() for n, b in members.items()}
    key = backup_key(path, create=True)
    assert key is not None
    manifest_bytes = to_json(manifest).encode()
    signature = {"alg": "HMAC-SHA256", "key_id": _key_id(key), "mac": _mac(key, manifest_bytes)}
    now = dt.datetime.now(dt.UTC)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        add_member(tar, MANIFEST_MEMBER, manifest_bytes, now)
        add_member(tar, SIGNATURE_MEMBER, to_json(signature).encode(), now)
        for name, body in members.items():
            add_member(tar, name, body, now)
    return buf.getvalue(), SettingsBackup(data, config, ui, manifest)


def read_backup(data: bytes, source: str = "backup", key: bytes | None = None) -> SettingsBackup:
    """A settings backup (`export_settings`) or a bare TOML configuration, validated,
    its signature checked against `key` (`untrusted` says why it does not hold).

    ConfigError naming the file and the key when anything in it is invalid, damaged
    (a checksum that does not match) or not a station's settings at all.
    """
    if not data.startswith(b"\x1f\x8b"):  # not gzip: a bare configuration file
        config = _validate(data, source)
        return SettingsBackup(data, config, None, {}, f"{source} is not signed (a bare file)")
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for info in tar:
                if not info.isfile() or info.name not in (
                    MANIFEST_MEMBER,
                    SIGNATURE_MEMBER,
                    CONFIG_MEMBER,
                    UI_MEMBER,
                ):
                    raise ConfigError(f"{source}: unexpected {info.name!r}: not a settings backup")
                if info.size > MAX_MEMBER_BYTES or info.name in members:
                    raise ConfigError(f"{source}: {info.name}: not a settings backup")
                f = tar.extractfile(info)
                assert f is not None  # a regular file
                members[info.name] = f.read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ConfigError(f"{source}: damaged or not a settings backup ({e})") from None
    try:
        manifest = json.loads(members[MANIFEST_MEMBER])
    except (KeyError, ValueError):
        raise ConfigError(
            f"{source}: no readable {MANIFEST_MEMBER}: not a settings backup"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != SETTINGS_FORMAT:
        raise ConfigError(f"{source}: not a station settings backup")
    version = manifest.get("version")
    if not isinstance(version, int) or version > SETTINGS_VERSION:
        raise ConfigError(
            f"{source}: settings backup version {version!r}, this station reads up to "
            f"{SETTINGS_VERSION}: upgrade the station first"
        )
    listed = manifest.get("files")
    if (
        not isinstance(listed, dict)
        or CONFIG_MEMBER not in listed
        or set(listed) != (set(members) - {MANIFEST_MEMBER, SIGNATURE_MEMBER})
    ):
        raise ConfigError(f"{source}: the manifest does not list the backup's files")
    for name, digest in listed.items():
        if hashlib.sha256(members[name]).hexdigest() != digest:
            raise ConfigError(f"{source}: {name} is damaged (its SHA-256 does not match)")
    config = _validate(members[CONFIG_MEMBER], f"{source}: {CONFIG_MEMBER}")
    ui = None
    if UI_MEMBER in members:
        try:
            value = json.loads(members[UI_MEMBER])
        except ValueError as e:
            raise ConfigError(f"{source}: {UI_MEMBER}: not valid JSON ({e})") from None
        ui = _validate_ui_settings(value, f"{source}: {UI_MEMBER}")
    untrusted = _check_signature(members, key, source)
    return SettingsBackup(members[CONFIG_MEMBER], config, ui, manifest, untrusted)


def import_settings(
    data: bytes,
    config_path: str | os.PathLike[str],
    *,
    source: str = "imported settings",
    dry_run: bool = False,
    by: str = "cli",
    force: bool = False,
) -> ImportResult:
    """Restore a settings backup (or a bare TOML file) as the station's settings.

    Everything is validated before anything is written (ConfigError naming the file
    and the key): an invalid backup leaves the configuration and the catalog untouched.
    Then the screen's settings, when the backup has them, replace those in the catalog
    of the restored configuration (created if the station has none yet), with a
    `settings_imported` event in the system log; and the configuration file is
    replaced atomically (written beside it, fsynced, renamed, folder fsynced) with the
    old file's owner and mode (0600 for a new one), the old one kept as
    ``<name>.bak``. The running daemon applies it on restart (the configuration's
    live sections also on `systemctl reload station`).
    """
    path = Path(config_path)
    backup = read_backup(bytes(data), source, backup_key(path))
    if backup.untrusted and not (force or dry_run):
        raise ConfigError(
            f"{backup.untrusted}: not restored. An administrator who knows where it comes "
            "from may restore it anyway with --force (the system log records it)"
        )
    try:
        current_bytes: bytes | None = path.read_bytes()
    except FileNotFoundError:
        current_bytes = None
    changed = list(StationConfig.model_fields)
    if current_bytes is not None:
        with contextlib.suppress(ConfigError):
            current = _validate(current_bytes, str(path))
            changed = [
                n
                for n in StationConfig.model_fields
                if getattr(current, n) != getattr(backup.config, n)
            ]
    result = ImportResult(
        backup.config,
        changed,
        current_bytes is None,
        backup.ui_settings,
        path.with_name(path.name + ".bak") if current_bytes is not None else None,
        backup.untrusted,
    )
    if dry_run:
        return result
    restore_ui = _record_import(backup, result, source, by)
    try:
        _replace_file(path, backup.config_bytes)
    except BaseException:
        restore_ui()
        raise
    integrity.update_config(integrity.default_manifest(), path)  # the station's own change
    return result


def _record_import(
    backup: SettingsBackup, result: ImportResult, source: str, by: str
) -> Callable[[], None]:
    """Put the screen's settings into the catalog and log the import; return the undo."""
    db = backup.config.database_path
    if backup.ui_settings is None and not db.exists() and not result.untrusted:
        return lambda: None  # nothing to restore there, no catalog to log to
    catalog = Catalog(db)
    catalog.migrate()
    message = (
        (f"FORCED, {result.untrusted}; " if result.untrusted else "")
        + f"settings imported from {source}: "
        + (", ".join(result.changed) or "no configuration change")
        + (
            f"; screen settings restored ({len(backup.ui_settings)})"
            if backup.ui_settings is not None
            else ""
        )
    )
    state: dict[str, str | None] | None = None
    if backup.ui_settings is not None:
        value = json.dumps(backup.ui_settings, sort_keys=True, ensure_ascii=False)
        state = {UI_SETTINGS_KEY: value}
    try:
        before = log_event(
            catalog,
            "settings_imported",
            message,
            actor=by,
            state=state,
            sections=result.changed,
            ui_settings=sorted(backup.ui_settings or {}),
            exported_at=backup.manifest.get("exported_at"),
            forced=bool(result.untrusted),
        )
    finally:
        catalog.close()

    def undo() -> None:
        undo_catalog = Catalog(db)
        try:
            log_event(
                undo_catalog,
                "settings_import_failed",
                f"settings from {source} not imported: the configuration file "
                "could not be written; the previous settings are back",
                actor=by,
                state=before if state is not None else None,  # None: the old value removed
            )
        finally:
            undo_catalog.close()

    return undo


def _replace_file(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically, keeping its owner and mode and a .bak."""
    try:
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        st = None
    if st is not None:
        backup = path.with_name(path.name + ".bak")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(backup)
        try:
            os.link(path, backup)
        except OSError:  # no hard links here: a copy will do
            shutil.copy2(path, backup)
    replace_file(path, data, mode=(st.st_mode & 0o7777) if st else 0o600)
    if st is not None and os.geteuid() == 0:
        os.chown(path, st.st_uid, st.st_gid)
