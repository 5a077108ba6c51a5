"""`[platform]` (the link to the central platform) and `[integrity]` (SM3) in the station file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

# what the platform may set through a pulled configuration version: the sections the
# daemon applies without a restart, but never the API tokens nor the account policy
PULLABLE_SECTIONS = ("registration", "retention", "recorders", "alarms", "network")


class PlatformConfig(BaseModel):
    """`[platform]`: the station connects out to the central platform (off by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    url: str | None = None  # https://platform.example.police/platform/v1
    token: SecretStr | None = None  # the station's credential (may be "enc:v1:...")
    ca_bundle: str | None = None  # PEM file of the force's CA; None: the system's
    # the platform's Ed25519 public key (PEM), installed on the station: commands signed
    # with another key, or not signed, are refused; None: every command is refused
    command_key: Path | None = None
    heartbeat_s: Annotated[float, Field(gt=0)] = 30.0
    poll_s: Annotated[float, Field(gt=0)] = 15.0  # configuration and commands pulled this often
    batch: Annotated[int, Field(strict=True, ge=1, le=1000)] = 100  # entries per push
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    backoff_base_s: Annotated[float, Field(gt=0)] = 1.0
    max_backoff_s: Annotated[float, Field(gt=0)] = 300.0
    breaker_after: Annotated[int, Field(strict=True, ge=1)] = 5  # failures that open it
    breaker_open_s: Annotated[float, Field(gt=0)] = 60.0  # then one probe after this
    command_max_age_s: Annotated[float, Field(gt=0)] = 86400.0  # older commands: refused
    upload_content: bool = True  # send the footage itself (else the platform only indexes)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _complete(self) -> PlatformConfig:
        if self.enabled:
            missing = [k for k in ("url", "token") if getattr(self, k) in (None, "")]
            if missing:
                raise ValueError(
                    f"the platform link is enabled but {', '.join(missing)} is not set"
                )
        if self.backoff_base_s > self.max_backoff_s:
            raise ValueError("backoff_base_s must not exceed max_backoff_s")
        return self


class IntegrityConfig(BaseModel):
    """`[integrity]`: digests kept beside SHA-256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sm3: bool = False  # SM3 (GB/T 32905) per file, computed in the background after storing
    sm3_mb_s: Annotated[float, Field(ge=0)] = 0.0  # rate limit of the SM3 pass (0: none)
