"""The support bundle (`station diagnose`): one .tar.gz with all a technician sends support.

Versions, the configuration with every secret removed, the settings changed on
the screen, the last events and alarms, the disks' usage and SMART verdicts
(with their recorded history), the dock's port map and what is plugged in, the
daemon's live status, the units' and the kernel's recent journal. Each part is
collected on its own: one that fails (no catalog yet, no smartctl, no journal,
daemon stopped, even an invalid configuration) is noted in ``errors.txt`` and
the rest is still written. Secrets are removed twice (`station.support.redaction`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import tarfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from station import eventlog
from station.catalog import Catalog
from station.catalog.admin import last_event_id
from station.config import ConfigError, StationConfig, load_config, parse_config
from station.health.alarms import AlarmBook
from station.support.backup import UI_SETTINGS_KEY, parse_ui_settings
from station.support.facts import (
    JOURNAL_LINES,
    daemon_status,
    disks,
    journal,
    kernel_log,
    port_map,
    smart_history,
    system_report,
    versions,
)
from station.support.redaction import _config_mapping, _scrub, redact, secret_values
from station.support.tarball import add_member, safe_name, to_json, write_private

EVENTS = 500  # the last events put in the bundle


def _catalog_parts(config: StationConfig, events: int) -> Iterator[tuple[str, Any]]:
    """events.json, alarms.json and settings.json, from the catalog (never created here)."""
    if not config.database_path.exists():
        raise FileNotFoundError(f"no catalog at {config.database_path} yet")
    catalog = Catalog(config.database_path)
    try:
        last = last_event_id(catalog)
        yield "events.json", eventlog.search(catalog, after=max(0, last - events), limit=events)
        book = AlarmBook(catalog)
        yield (
            "alarms.json",
            {
                "active": [vars(a) for a in book.active()],
                "history": [vars(a) for a in book.history(limit=200)],
            },
        )
        yield (
            "settings.json",
            {
                "changed_on_screen": parse_ui_settings(catalog.get_state(UI_SETTINGS_KEY)),
                "note": "these win over the configuration file (station/settings.py)",
            },
        )
    finally:
        catalog.close()


@dataclass
class InvalidConfig:
    """A configuration file the daemon would refuse, as far as it could be read."""

    path: str
    error: str
    raw: dict[str, Any] | None  # the TOML as written, None when it is not TOML at all
    defaulted: list[str]  # sections left at their defaults because they are invalid


def load_for_diagnose(
    path: str | os.PathLike[str] | None,
) -> tuple[StationConfig, InvalidConfig | None]:
    """The configuration for `diagnose`, also when it is invalid (the station will not
    start: exactly when a support bundle is wanted).

    An invalid file gives the configuration made of its valid sections, the rest left
    at their defaults, and what was wrong. ConfigError only when there is no path at
    all (no --config, no STATION_CONFIG).
    """
    try:
        return load_config(path), None
    except ConfigError as e:
        error = str(e)
    if path is None:
        path = os.environ.get("STATION_CONFIG")
        if not path:
            raise ConfigError(error) from None
    raw: dict[str, Any] | None = None
    with contextlib.suppress(OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        raw = tomllib.loads(Path(path).read_text("utf-8"))
    good: dict[str, Any] = {}
    for name, section in (raw or {}).items():
        with contextlib.suppress(ConfigError):
            parse_config({name: section})
            good[name] = section
    try:
        config = parse_config(good, str(path))
    except ConfigError:  # the valid sections disagree with each other
        good, config = {}, StationConfig()
    defaulted = sorted(set(raw or {}) - set(good))
    return config, InvalidConfig(str(path), error, raw, defaulted)


def diagnose(
    config: StationConfig,
    out_path: str | os.PathLike[str],
    *,
    invalid: InvalidConfig | None = None,
    events: int = EVENTS,
    journal_lines: int = JOURNAL_LINES,
    smart_check: Callable[[Path], Any] | None = None,
) -> Path:
    """Write the support bundle (.tar.gz) to `out_path` and return its path.

    `invalid` (from `load_for_diagnose`) when the configuration file is invalid:
    `config` is then what could be made of it; the bundle says so and holds the file
    as written, secrets removed. Only writing the bundle itself can fail (OSError);
    every part that cannot be collected is explained in ``errors.txt`` instead. The
    file is created 0600 (the event log names officers) and appears atomically.
    """
    out = Path(out_path)
    now = dt.datetime.now(dt.UTC)
    top = f"station-support-{safe_name(config.station.id)}-{now:%Y%m%dT%H%M%SZ}"
    conf = _config_mapping(config)
    secrets = secret_values(conf)
    files: dict[str, str] = {}
    errors: list[str] = []
    if invalid is not None:
        secrets |= secret_values(invalid.raw or {})
        errors.append(
            f"the configuration is invalid, the station cannot start with it: {invalid.error}"
        )
        if invalid.defaulted:
            errors.append(
                "these sections were left at their defaults for the parts below: "
                + ", ".join(invalid.defaulted)
            )

    def part(name: str, produce: Callable[[], Any]) -> None:
        started = time.monotonic()
        try:
            value = produce()
        except Exception as e:
            errors.append(f"{name}: {type(e).__name__}: {e}")
            return
        text = value if isinstance(value, str) else to_json(value)
        files[name] = text
        if time.monotonic() - started > 10:
            errors.append(f"{name}: took {time.monotonic() - started:.0f} s")

    part(
        "summary.json",
        lambda: {
            "station": {"id": config.station.id, "name": config.station.name},
            "created_at": now.isoformat(),
            "configuration_valid": invalid is None,
            "versions": versions(),
        },
    )
    if invalid is None:
        part("config.json", lambda: redact(conf))
    else:
        part(
            "config.json",
            lambda: {
                "valid": False,
                "file": invalid.path,
                "error": invalid.error,
                "as_written": redact(invalid.raw) if invalid.raw is not None else None,
                "used_for_this_bundle": redact(conf),
            },
        )
    try:
        for name, value in _catalog_parts(config, events):
            files[name] = to_json(value)
    except Exception as e:
        errors.append(f"catalog (events.json, alarms.json, settings.json): {type(e).__name__}: {e}")
    part("disks.json", lambda: disks(config, smart_check))
    part("smart-history.json", lambda: smart_history(config))
    part("ports.json", lambda: port_map(config))
    part("status.json", lambda: daemon_status(config))
    part("system.txt", lambda: system_report(config))
    part("journal.txt", lambda: journal(journal_lines))
    part("kernel.txt", lambda: kernel_log())
    files["errors.txt"] = "".join(f"{e}\n" for e in errors) or "(none)\n"

    bundle = io.BytesIO()
    with tarfile.open(fileobj=bundle, mode="w:gz") as tar:
        for name, text in files.items():
            add_member(tar, f"{top}/{name}", _scrub(text, secrets).encode(), now)
    return write_private(out, bundle.getvalue())
