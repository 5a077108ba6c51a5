"""What an administrator may change on the settings screen: the model and where it is kept.

The settings page (`web/settings.py`) stores the keys that were changed in the
catalog's small state under `STATE_KEY`, as a JSON object; a settings backup
(`station.support.backup`) carries the same object and is checked with the same
model before anything is restored. One model for both, on the station's side, so
the station never imports the web layer to validate a backup.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from station.accounts import DEFAULT_IDLE_MINUTES
from station.config import NetworkSection

STATE_KEY = "ui.settings"  # the catalog's station_state key of the screen's settings


class Settings(BaseModel):
    """Everything the settings page shows and changes."""

    model_config = ConfigDict(extra="forbid")

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
