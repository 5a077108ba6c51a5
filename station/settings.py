"""Settings an administrator changes on the screen, kept in the catalog and applied live.

The configuration file gives the starting values; a value changed on the
settings page is stored in the catalog (`station_state`, key `ui.settings`, only
the keys that were changed) and wins over the file from then on, also after a
restart.

The live configuration is never changed in place: a change builds a new,
validated `StationConfig` (the current one with the changed sections replaced)
and hands it to the station's reload path (`Station.reload`, as SIGHUP does),
which swaps the sections whole. Applied at once: registration mode, retention
periods, network check address; the port layout and the session timeout are read
from here (`layout`, `current`). The voice settings go to the announcer as a new
`[voice]` snapshot.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from station.accounts import DEFAULT_IDLE_MINUTES, audit
from station.catalog import Catalog
from station.config import NetworkSection, StationConfig
from station.errors import SettingsError

log = logging.getLogger(__name__)

STATE_KEY = "ui.settings"

__all__ = ["STATE_KEY", "Settings", "SettingsError", "SettingsStore", "with_settings"]


class Settings(BaseModel):
    """Everything the settings page shows and changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registration_mode: Literal["auto", "manual"] = "auto"
    retention_days: Annotated[int, Field(strict=True, ge=1, le=36500)] = 180
    retention_important_days: Annotated[int, Field(strict=True, ge=1, le=36500)] | None = 365
    retention_evidence_days: Annotated[int, Field(strict=True, ge=1, le=36500)] | None = None
    layout_cols: Annotated[int, Field(strict=True, ge=1, le=8)] = 4
    layout_order: list[Annotated[int, Field(ge=0, le=32)]] = Field(default_factory=list)
    voice_enabled: bool = True
    voice_language: Literal["zh", "en"] = "zh"
    voice_volume: Annotated[int, Field(strict=True, ge=0, le=100)] = 80
    network_check: str | None = None
    session_idle_minutes: Annotated[int, Field(strict=True, ge=1, le=240)] = DEFAULT_IDLE_MINUTES

    @field_validator("network_check")
    @classmethod
    def _network(cls, v: str | None) -> str | None:
        v = (v or "").strip() or None
        return NetworkSection(check=v).check

    @field_validator("layout_order")
    @classmethod
    def _order(cls, v: list[int]) -> list[int]:
        ports = [p for p in v if p]
        if len(ports) != len(set(ports)):
            raise ValueError("a port is placed twice")
        return v


def _from_config(c: StationConfig) -> dict[str, Any]:
    return {
        "registration_mode": c.registration.mode,
        "retention_days": c.retention.days,
        "retention_important_days": c.retention.important_days,
        "retention_evidence_days": c.retention.evidence_days,
        "layout_order": list(range(1, c.bus.ports + 1)),
        "network_check": c.network.check,
        "voice_enabled": c.voice.enabled,
        "voice_language": c.voice.language,
        "voice_volume": c.voice.volume,
    }


SECTIONS = ("registration", "retention", "network", "voice")  # what the settings decide


def with_settings(c: StationConfig, s: Settings) -> StationConfig:
    """A new configuration: `c` with the sections the settings decide replaced by copies
    that hold them (`c` and its sections are left as they are), validated as a file is."""
    sections = {
        "registration": {"mode": s.registration_mode},
        "retention": {
            "days": s.retention_days,
            "important_days": s.retention_important_days,
            "evidence_days": s.retention_evidence_days,
        },
        "network": {"check": s.network_check},
        "voice": {
            "enabled": s.voice_enabled,
            "language": s.voice_language,
            "volume": s.voice_volume,
        },
    }
    data = {name: getattr(c, name).model_dump() | values for name, values in sections.items()}
    checked = StationConfig.model_validate(data)  # each section's own validators run
    return c.model_copy(update={name: getattr(checked, name) for name in sections})


class SettingsHost(Protocol):
    """What the settings need of the running station (`station.runtime.Station` is one)."""

    config: StationConfig  # the live snapshot, replaced whole by `reload`
    catalog: Catalog
    reload_hooks: list[Callable[[StationConfig], StationConfig]]

    def reload(self, config: StationConfig) -> list[str]:
        """Make `config` the live snapshot (after the reload hooks)."""

    def notify(self, progress: bool = False) -> None:
        """Something the screens show changed."""


class SettingsStore:
    """The settings of one station: what the screen changed, laid over the file's."""

    def __init__(self, station: SettingsHost) -> None:
        self.station = station
        self._lock = threading.Lock()
        self._stored: dict[str, Any] = {}
        raw = station.catalog.get_state(STATE_KEY)
        if raw:
            try:
                self._stored = dict(json.loads(raw))
                Settings(**(_from_config(station.config) | self._stored))
            except (ValueError, ValidationError) as e:
                log.error("stored settings ignored, they are not valid: %s", e)
                self._stored = {}
        self._current = Settings(**(_from_config(station.config) | self._stored))
        station.reload_hooks.append(self._reloaded)
        self._go_live(self._current)

    def _reloaded(self, config: StationConfig) -> StationConfig:
        """A reload hook: before a new configuration goes live (SIGHUP, the platform, or
        this store's own change), what was changed here is put over its values, so the
        screen's settings still win. The new configuration is not live yet: its sections
        are replaced by copies (as `station.platform.link.PlatformLink.reapply` does)."""
        with self._lock:
            try:
                merged = Settings(**(_from_config(config) | self._stored))
                checked = with_settings(config, merged)
            except ValidationError as e:
                log.error("settings changed on the screen do not fit the file, not kept: %s", e)
                return config
            self._current = merged
        return checked

    def _go_live(self, s: Settings) -> None:
        """Hand a configuration with `s` to the station's reload path (only if it differs
        from the live one)."""
        config = self.station.config
        new = with_settings(config, s)
        if any(getattr(new, n) != getattr(config, n) for n in SECTIONS):
            self.station.reload(new)

    def current(self) -> Settings:
        return self._current

    def update(self, changes: dict[str, Any], *, by: str) -> Settings:
        """Validate, store, apply and log a change of some settings."""
        with self._lock:
            unknown = set(changes) - set(Settings.model_fields)
            if unknown:
                raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
            try:
                new = Settings(**(self._current.model_dump() | changes))
                with_settings(self.station.config, new)
            except ValidationError as e:
                fields = ", ".join(str(err["loc"][0]) for err in e.errors() if err["loc"])
                raise SettingsError(f"invalid: {fields}") from None
            old = self._current.model_dump()
            diff = {k: (old[k], v) for k, v in new.model_dump().items() if old[k] != v}
            if not diff:
                return self._current
            self._stored |= {k: v for k, (_, v) in diff.items()}
            self.station.catalog.set_state(
                STATE_KEY, json.dumps(self._stored, sort_keys=True, ensure_ascii=False)
            )
            self._current = new
        self._go_live(new)
        audit(
            self.station.catalog,
            "settings_changed",
            "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()),
            actor=by,
        )
        self.station.notify()
        return new

    def layout(self) -> dict[str, Any]:
        """The port windows' grid for the station screen (SPEC S33)."""
        s = self._current
        return {"cols": s.layout_cols, "order": list(s.layout_order)}
