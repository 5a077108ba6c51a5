"""Station configuration: one TOML file, validated strictly.

Unknown keys and bad values are refused with a message naming the key and the
file: a station that silently ignores a misspelt `min_free_mb` is a station that
fills its disk.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from station.drivers.android_adb import AndroidAdbConfig
from station.drivers.mass_storage import MassStorageConfig
from station.drivers.scsi_dv16 import ScsiDv16Config
from station.drivers.usb_vendor import UsbVendorConfig
from station.drivers.vendor_library import VendorLibraryConfig
from station.forward import ForwardConfig
from station.platform.config import IntegrityConfig, PlatformConfig
from station.voice import VoiceConfig


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and file."""

    exit_code = 2


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StationSection(_Section):
    id: str = "STATION-0001"
    name: str = "Collection station"
    timezone: str | None = None  # IANA name; None = the system's local time

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r}") from None
        return v


class StoreSection(_Section):
    disks: list[Path] = Field(default_factory=lambda: [Path("/srv/disk1"), Path("/srv/disk2")])
    min_free_mb: Annotated[int, Field(strict=True, ge=0)] = 1024
    # fdatasync and record the durable offset this often
    sync_every_mb: Annotated[int, Field(strict=True, ge=1, le=1024)] = 16
    chunk_kb: Annotated[int, Field(strict=True, ge=64, le=16384)] = 1024
    # after copying, read the card again: "sample" compares a few 64 KiB windows,
    # "full" re-reads and re-hashes the whole file (twice the USB time), "off" trusts it
    card_recheck: Literal["sample", "full", "off"] = "sample"
    # a new catalog may take empty plain folders into use as disks (the demo, tests); on a
    # station a new disk must be a mount point (station/store/identity.py), so an unmounted disk's
    # bare mount point is never written to
    folder_disks: bool = False
    # with "sample", IMP files and files up to this size are still re-read in full
    card_recheck_full_mb: Annotated[int, Field(strict=True, ge=0)] = 64
    # the background scrubber re-hashes stored files at this rate (0 = off) ...
    scrub_mb_s: Annotated[float, Field(ge=0)] = 20.0
    # ... so that each file is checked again after this many days
    scrub_every_days: Annotated[float, Field(gt=0)] = 30.0

    @field_validator("disks")
    @classmethod
    def _disks(cls, v: list[Path]) -> list[Path]:
        if not v:
            raise ValueError("at least one disk is needed")
        if not all(p.is_absolute() for p in v):
            raise ValueError("disk paths must be absolute")
        if len(set(v)) != len(v):
            raise ValueError("a disk is listed twice")
        return v


class DatabaseSection(_Section):
    url: str = "sqlite:////var/lib/station/catalog.db"

    @field_validator("url")
    @classmethod
    def _sqlite(cls, v: str) -> str:
        if not v.startswith("sqlite:///"):
            raise ValueError("only sqlite:/// URLs are supported")
        return v


class BusSection(_Section):
    kind: Literal["udev", "simulated"] = "udev"
    path: Path = Path("/run/station/simbus")
    ports: Annotated[int, Field(strict=True, ge=1, le=32)] = 8
    # physical port -> USB port path (kernel port name like "1-1.2" or udev ID_PATH)
    port_map: dict[int, str] = Field(default_factory=dict)
    debounce_ms: Annotated[int, Field(strict=True, ge=0, le=5000)] = 200
    mount_root: Path = Path("/run/station/cards")  # recorder cards are mounted below this
    mounter: Literal["kernel", "fuse"] = "kernel"
    # who mounts: "auto" = the mount helper (station/devices/mountd.py) when its socket is there,
    # "off" = the daemon itself (needs CAP_SYS_ADMIN), or the helper's socket path
    mount_helper: str = "auto"
    reenumerate_timeout_s: Annotated[float, Field(gt=0)] = 30.0  # SetMSDC -> disk appears
    # a collection with no sign of life for this long stops the systemd watchdog
    stall_s: Annotated[float, Field(gt=0)] = 300.0
    # what the ports sharing one USB 2.0 root port (behind one hub) read in all, MB/s
    # (docs/deploy.md, "USB topology"); the simulated bus takes its links.json instead
    link_mb_s: Annotated[float, Field(gt=0)] = 35.0
    # collect per shared link so officers get recorders back soonest (docs/benchmarks.md)
    link_scheduling: bool = True


class DriversSection(_Section):
    """Recorder families besides the simulated one (each off unless configured)."""

    vendor_library: list[VendorLibraryConfig] = Field(default_factory=list)
    usb_vendor: list[UsbVendorConfig] = Field(default_factory=list)
    scsi_dv16: ScsiDv16Config | None = None
    android_adb: list[AndroidAdbConfig] = Field(default_factory=list)
    mass_storage: MassStorageConfig = Field(default_factory=MassStorageConfig)

    @field_validator("vendor_library")
    @classmethod
    def _unique(cls, v: list[VendorLibraryConfig]) -> list[VendorLibraryConfig]:
        names = [c.name for c in v]
        if len(set(names)) != len(names):
            raise ValueError("vendor library names must be unique")
        return v


class RegistrationSection(_Section):
    mode: Literal["auto", "manual"] = "auto"


class RetentionSection(_Section):
    days: Annotated[int, Field(strict=True, ge=1)] = 180  # level "normal"
    # "important" and "evidence" files are never deleted automatically: their period
    # only puts them on the review list (None: kept until released)
    important_days: Annotated[int, Field(strict=True, ge=1)] | None = 365
    evidence_days: Annotated[int, Field(strict=True, ge=1)] | None = None
    high_water_percent: Annotated[float, Field(gt=0, le=100)] = 95.0
    low_water_percent: Annotated[float, Field(gt=0, le=100)] = 90.0
    sweep_interval_s: Annotated[float, Field(gt=0)] = 3600.0
    forecast_window_days: Annotated[float, Field(gt=0)] = 14.0
    storage_low_days: Annotated[float, Field(ge=0)] = 14.0  # alarm below this forecast
    # age-based sweeps pause when the clock moved further ahead than this since the last
    # believed time, until NTP syncs or `station retention resume` (station/health/clockguard.py)
    max_clock_jump_days: Annotated[float, Field(gt=0)] = 2.0
    # with forwarding or the platform link on, a file not deleted before its central copy
    # is verified; one still unverified this long after collection raises central_unverified
    central_stuck_hours: Annotated[float, Field(gt=0)] = 24.0
    # upcoming deletions are listed for administrators this many days ahead
    warn_days: Annotated[int, Field(strict=True, ge=0, le=365)] = 14

    @model_validator(mode="after")
    def _marks(self) -> RetentionSection:
        if self.low_water_percent >= self.high_water_percent:
            raise ValueError("low_water_percent must be below high_water_percent")
        return self


class WebSection(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(strict=True, ge=0, le=65535)] = 8080
    # what one listener serves at once (station/web/guard.py): more is refused with 503, so a
    # flood of connections never exhausts the daemon's descriptors
    max_connections: Annotated[int, Field(strict=True, ge=8, le=4096)] = 256
    max_per_client: Annotated[int, Field(strict=True, ge=2, le=4096)] = 64
    max_streams: Annotated[int, Field(strict=True, ge=1, le=1024)] = 32  # live /ui/stream
    max_streams_per_client: Annotated[int, Field(strict=True, ge=1, le=1024)] = 8
    header_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    body_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    max_header_bytes: Annotated[int, Field(strict=True, ge=4096, le=1 << 20)] = 32768
    max_body_kb: Annotated[int, Field(strict=True, ge=1, le=1 << 20)] = 64
    # names browsers may use for the pages besides loopback and `host` (DNS rebinding)
    allowed_hosts: list[str] = Field(default_factory=list)


class ApiSection(_Section):
    tokens: list[str] = Field(default_factory=list)
    # a listener of its own for the central server (e.g. the station's network address),
    # so the kiosk UI can stay on loopback; None: the API shares the [web] listener
    host: str | None = None
    port: Annotated[int, Field(strict=True, ge=0, le=65535)] | None = None

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, v: list[str]) -> list[str]:
        for t in v:
            if len(t) < 16:
                raise ValueError("each token must be at least 16 characters")
        return v


class RecordersSection(_Section):
    passwords: list[str] = Field(default_factory=lambda: ["000000", "123456"])
    clock_drift_alarm_s: Annotated[float, Field(ge=0)] = 60.0
    battery_critical_percent: Annotated[int, Field(strict=True, ge=0, le=100)] = 10
    # S30 "collect first": what all the other ports share meanwhile
    priority_others_mb_s: Annotated[float, Field(gt=0)] = 4.0

    @field_validator("passwords")
    @classmethod
    def _passwords(cls, v: list[str]) -> list[str]:
        if any(p == "" for p in v):
            raise ValueError("an empty device password is not allowed")
        return v


class AlarmsSection(_Section):
    check_clock: bool = True  # raise clock_unsynced when the station clock is not NTP-synced
    smart_interval_s: Annotated[float, Field(gt=0)] = 3600.0  # SMART check of the store disks


class NetworkSection(_Section):
    check: str | None = None  # "host:port" reached with a TCP connect; None = link state
    interval_s: Annotated[float, Field(gt=0)] = 10.0

    @field_validator("check")
    @classmethod
    def _check(cls, v: str | None) -> str | None:
        if v is not None:
            host, sep, port = v.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("must be host:port")
        return v


class AccountsSection(_Section):
    """The PIN and password policy (GB/T 22239 level 3: length, history, periodic change)."""

    min_secret_length: Annotated[int, Field(ge=6, le=64)] = 6
    secret_history: Annotated[int, Field(ge=0, le=24)] = 5  # the last N may not come back
    secret_max_age_days: Annotated[int, Field(ge=0, le=3650)] = 90  # 0: never expires
    # whose secret expires (the officers' keypad PINs only if listed here)
    secret_max_age_roles: list[str] = ["administrator", "security_admin", "audit_admin"]
    # a TOTP code after the PIN for these roles: "enrolled" once `station users totp` gave
    # the account one; "required": an account of these roles without one cannot log in
    second_factor: Literal["enrolled", "required"] = "enrolled"
    second_factor_roles: list[str] = ["administrator", "security_admin", "audit_admin"]

    @field_validator("secret_max_age_roles", "second_factor_roles")
    @classmethod
    def _roles(cls, v: list[str]) -> list[str]:
        from station.catalog.accounts_models import ROLES

        unknown = [r for r in v if r not in ROLES]
        if unknown:
            raise ValueError(f"unknown role(s) {', '.join(unknown)}: one of {', '.join(ROLES)}")
        return v


class StationConfig(BaseSettings):
    """The whole configuration file."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    station: StationSection = Field(default_factory=StationSection)
    store: StoreSection = Field(default_factory=StoreSection)
    database: DatabaseSection = Field(default_factory=DatabaseSection)
    bus: BusSection = Field(default_factory=BusSection)
    registration: RegistrationSection = Field(default_factory=RegistrationSection)
    retention: RetentionSection = Field(default_factory=RetentionSection)
    web: WebSection = Field(default_factory=WebSection)
    api: ApiSection = Field(default_factory=ApiSection)
    recorders: RecordersSection = Field(default_factory=RecordersSection)
    network: NetworkSection = Field(default_factory=NetworkSection)
    alarms: AlarmsSection = Field(default_factory=AlarmsSection)
    voice: VoiceConfig = Field(default_factory=VoiceConfig)
    drivers: DriversSection = Field(default_factory=DriversSection)
    forward: ForwardConfig = Field(default_factory=ForwardConfig)
    accounts: AccountsSection = Field(default_factory=AccountsSection)
    platform: PlatformConfig = Field(default_factory=PlatformConfig)
    integrity: IntegrityConfig = Field(default_factory=IntegrityConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file is the single source of truth: no environment overrides.
        return (init_settings,)

    @property
    def database_path(self) -> Path:
        return Path(self.database.url.removeprefix("sqlite:///"))


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<config>") -> StationConfig:
    """Validate a configuration mapping; ConfigError names the bad keys and the source."""
    try:
        return StationConfig(**data)
    except ValidationError as e:
        raise ConfigError(_describe(e, source)) from None


def load_config(path: str | os.PathLike[str] | None) -> StationConfig:
    """Read and validate a TOML file (`STATION_CONFIG` when `path` is None)."""
    if path is None:
        path = os.environ.get("STATION_CONFIG")
        if not path:
            raise ConfigError("no configuration: pass --config FILE or set STATION_CONFIG")
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{p}: configuration file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    from station.platform.secrets import SecretsError, reveal

    try:
        data = reveal(data, p)  # "enc:v1:" secrets, with a key kept outside this file
    except SecretsError as e:
        raise ConfigError(f"{p}: {e}") from None
    return parse_config(data, str(p))
