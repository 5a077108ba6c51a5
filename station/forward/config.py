"""`[forward]`: the configuration of forwarding, and its time window."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

MiB = 1024 * 1024
MB = 1_000_000

_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_window(text: str) -> tuple[dt.time, dt.time]:
    """`"HH:MM-HH:MM"` -> (start, end); the end may be earlier (the window wraps midnight)."""
    m = _WINDOW.match(text.strip())
    if not m:
        raise ValueError(f"window {text!r} is not HH:MM-HH:MM")
    start = dt.time(int(m[1]), int(m[2]))
    end = dt.time(int(m[3]), int(m[4]))
    if start == end:
        raise ValueError(f"window {text!r} is empty (leave it out to forward at any time)")
    return start, end


def in_window(window: tuple[dt.time, dt.time] | None, now: dt.time) -> bool:
    """Whether `now` is inside [start, end); a window with end < start wraps midnight."""
    if window is None:
        return True
    start, end = window
    if start < end:
        return start <= now < end
    return now >= start or now < end


def seconds_until_open(window: tuple[dt.time, dt.time] | None, now: dt.datetime) -> float:
    """How long until the window opens (0 when it is open)."""
    if window is None or in_window(window, now.time()):
        return 0.0
    start = now.replace(hour=window[0].hour, minute=window[0].minute, second=0, microsecond=0)
    if start <= now:
        start += dt.timedelta(days=1)
    return (start - now).total_seconds()


class ForwardConfig(BaseModel):
    """`[forward]`: sending collected files on to the central S3-compatible object store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    endpoint_url: str | None = None  # https://s3.example.police:443
    bucket: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None  # never logged, never shown
    prefix: str = "{station_id}/"  # "{station_id}" is replaced by station.id
    part_size_mb: Annotated[int, Field(strict=True, ge=5, le=5120)] = 16  # MiB
    bandwidth_mb_s: Annotated[float, Field(gt=0)] | None = None  # MB/s sent; None: no limit
    window: str | None = None  # "01:00-06:00", station local time, may wrap midnight
    verify: bool = True  # re-hash the local file against the catalog before sending
    # "auto": SHA-256 per part when the server supports additional checksums, plus
    # Content-MD5 always; "md5": Content-MD5 only (servers that reject checksum headers)
    checksum: Literal["auto", "md5"] = "auto"
    addressing_style: Literal["path", "virtual"] = "path"
    ca_bundle: str | None = None  # PEM file of the force's CA; None: the system's
    poll_interval_s: Annotated[float, Field(gt=0)] = 30.0

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str | None) -> str | None:
        if v is not None and not _BUCKET.match(v):
            raise ValueError("not a valid bucket name (3-63 of a-z, 0-9, '.', '-')")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        try:
            sample = v.format(station_id="S")
        except (KeyError, IndexError, ValueError):
            raise ValueError("only {station_id} may be used in the prefix") from None
        if sample.startswith("/") or "//" in sample or ".." in sample.split("/"):
            raise ValueError("must not start with '/' nor contain '//' or '..'")
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is not None:
            parse_window(v)
        return v

    @model_validator(mode="after")
    def _complete(self) -> ForwardConfig:
        if self.enabled:
            missing = [
                k
                for k in ("endpoint_url", "bucket", "access_key_id", "secret_access_key")
                if getattr(self, k) in (None, "")
            ]
            if missing:
                raise ValueError(f"forwarding is enabled but {', '.join(missing)} is not set")
        return self

    def key_prefix(self, station_id: str) -> str:
        """The prefix of this station's object keys."""
        return self.prefix.format(station_id=station_id)
