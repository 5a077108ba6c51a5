"""The station-to-platform protocol: the messages both sides exchange (JSON over HTTPS).

The station always connects out; the platform never calls a station. Every request
carries `Authorization: Bearer <token>`. The reference platform
(station/platform/reference.py) serves exactly these models, and its OpenAPI
document is docs/platform-openapi.json (see docs/platform-protocol.md).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION = "1"
PREFIX = "/platform/v1"
KINDS = ("file", "alarm", "log", "receipt", "report")  # the outbox's kinds, each ordered
Kind = Literal["file", "alarm", "log", "receipt", "report"]
Answer = Literal["accepted", "duplicate", "rejected"]
COMMAND_KINDS = (
    "restart_collection",
    "stop_collection",
    "start_collection",
    "self_check",
    "sync_config",
    "support_bundle",
)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiskInfo(_Message):
    path: str
    total_bytes: int
    free_bytes: int


class Registration(_Message):
    """`POST /stations/register`: who the station is."""

    station_id: str
    name: str = ""
    fingerprint: str = Field(description="SHA-256 of the machine id: the same box registers again")
    software_version: str
    protocol: str = PROTOCOL_VERSION
    ports: int
    disks: list[DiskInfo] = Field(default_factory=list)


class Registered(_Message):
    platform_id: str = Field(description="the platform's own id for this station")
    config_version: int = Field(0, description="the newest configuration version for it")


class Heartbeat(_Message):
    """`POST /stations/{station_id}/heartbeat`: the short status, every `heartbeat_s`."""

    station_id: str
    time: str
    software_version: str
    config_version: int = 0
    outbox_depth: dict[str, int] = Field(default_factory=dict)
    slots: dict[str, int] = Field(default_factory=dict, description="ports per state")
    disks: list[DiskInfo] = Field(default_factory=list)
    alarms: list[str] = Field(default_factory=list, description="codes of the raised alarms")
    network_online: bool | None = None


class HeartbeatAnswer(_Message):
    config_version: int = 0
    commands_waiting: int = 0


class PushEntry(_Message):
    key: str = Field(description="idempotency key (file: '<station id>:<file id>')")
    seq: int = Field(description="the station's outbox sequence: increasing within a kind")
    body: dict[str, Any]


class Push(_Message):
    """`POST /stations/{station_id}/push`: the oldest undelivered entries of one kind, in order."""

    kind: Kind
    entries: list[PushEntry]


class PushResult(_Message):
    key: str
    result: Answer = Field(description="'duplicate': already held; counts as delivered")
    reason: str | None = None


class PushAnswer(_Message):
    results: list[PushResult]


class CentralFile(_Message):
    """`GET`/`PUT /stations/{station_id}/files/{file_id}/content`: the platform's copy."""

    key: str
    size: int
    sha256: str
    sm3: str | None = None


class ConfigVersion(_Message):
    """`GET /stations/{station_id}/config`: a versioned set of station settings.

    `settings` holds whole sections of the station's configuration file (only
    registration, retention, recorders, alarms and network); the station validates it as
    it validates its own file, applies it without a restart, and reports the outcome (an
    outbox entry of kind `report`)."""

    version: int
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Command(_Message):
    """A signed command: Ed25519 over `signed_bytes()` with the platform's command key."""

    id: str = Field(description="unique: a second command with the same id is a replay")
    station_id: str
    kind: str
    args: dict[str, Any] = Field(default_factory=dict)
    issued_at: str = Field(description="ISO 8601 with offset")
    signature: str | None = Field(None, description="base64 Ed25519 signature")

    def signed_bytes(self) -> bytes:
        return canonical(
            {
                "id": self.id,
                "station_id": self.station_id,
                "kind": self.kind,
                "args": self.args,
                "issued_at": self.issued_at,
            }
        )


class Commands(_Message):
    commands: list[Command] = Field(default_factory=list)


class Receipt(_Message):
    """What became of a command (an outbox entry of kind `receipt`, key = the command id)."""

    command_id: str
    kind: str
    status: Literal["done", "failed", "refused", "unsupported"]
    detail: str = ""
    at: str
    result: dict[str, Any] = Field(default_factory=dict)


class ConfigReport(_Message):
    """What became of a configuration version (an outbox entry of kind `report`)."""

    version: int
    result: Literal["applied", "rejected"]
    reason: str = ""
    at: str


def canonical(value: Any) -> bytes:
    """The one byte form that is signed: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
