"""The central server's API (`/api/v1`) as the OpenAPI document describes it.

Pydantic models of what each endpoint answers (CONTRACT.md, README.md "HTTP API"), field
by field, as the station builds it in station/status.py, station/eventlog.py,
station/health/alarms.py, station/store/smart.py and station/forward/.
`tests/test_openapi.py` checks that they agree: no key the station sends is missing here,
and the running daemon answers as documented.

Timestamps are the station's own ISO 8601 strings with their UTC offset (`Timestamp`):
they go out as the station wrote them, not parsed and re-rendered.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, WithJsonSchema

# The range of SQLite's INTEGER (signed 64 bits): integer parameters are bounded to it, so
# that a larger one is a 422 instead of an OverflowError in the database driver (a 500).
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# a catalog id as SQLite stores it: larger numbers are a 422, not an overflow (500)
Id = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]

Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]

SlotState = Literal["empty", "identifying", "unregistered", "collecting", "complete", "error"]
DiskHealth = Literal["healthy", "degraded", "failed", "missing"]
Severity = Literal["critical", "warning"]


class ErrorDetail(BaseModel):
    """FastAPI's error body (401, 404)."""

    detail: str


class Health(BaseModel):
    status: Literal["ok"]
    station: str = Field(description="the station's id")


# --- GET /api/v1/status -------------------------------------------------------------------


class StationInfo(BaseModel):
    id: str
    name: str
    version: str = Field(description="the station software's version")
    time: Timestamp = Field(description="the station's clock, local time with its offset")
    mode: Literal["auto", "manual"] = Field(description="recorder registration mode")


class NetworkInfo(BaseModel):
    online: bool | None = Field(description="null until the first check")


class SmartReport(BaseModel):
    """The disk's last SMART reading (counters null when the disk has none)."""

    verdict: Literal["healthy", "degraded", "failed", "unknown"]
    reasons: list[str]
    temperature_c: int | None
    power_on_hours: int | None
    reallocated_sectors: int | None
    pending_sectors: int | None
    offline_uncorrectable: int | None
    unsafe_shutdowns: int | None
    smart_passed: bool | None
    model: str | None
    serial: str | None
    device: str | None
    protocol: str | None = Field(description="ATA, NVMe or SCSI, as smartctl names it")
    media_errors: int | None = Field(description="NVMe")
    percentage_used: int | None = Field(description="NVMe")
    critical_warning: int | None = Field(description="NVMe")


class DiskStatus(BaseModel):
    path: str = Field(description="the store folder on this disk")
    total_bytes: int
    free_bytes: int
    active: bool = Field(description="the disk new files are written to")
    health: DiskHealth
    smart: SmartReport | None = Field(description="null until the disk has been read")


class SlotRecorder(BaseModel):
    serial: str
    officer_no: str
    officer_name: str
    unit_no: str
    unit_name: str


class RemovedEarly(BaseModel):
    serial: str
    officer_no: str
    officer_name: str
    state: SlotState = Field(description="the state it was in when it was unplugged")


class SlotStatus(BaseModel):
    port: int
    state: SlotState = Field(
        description="`complete`: every file stored, verified and removed from the recorder"
    )
    recorder: SlotRecorder | None = Field(description="null when the port is empty")
    battery_percent: int | None
    files_total: int
    files_done: int
    bytes_total: int
    bytes_done: int
    bytes_per_s: int = Field(description="the copy rate of the last seconds")
    error: str | None
    reason: str | None = Field(
        description="why the port is in `error` or `unregistered` (held), as a kind: "
        "not_a_recorder, wrong_password, storage_full, files_kept, internal_error, "
        "recorder_error; waiting_approval, possible_clone, officer_changed, "
        "officer_has_recorder, block_changed, held; null otherwise"
    )
    reason_params: dict[str, str] = Field(
        description="the reason's details: files_kept {n}, possible_clone {other_port}, "
        "officer_changed {reported, registered}, officer_has_recorder {officer, other}"
    )
    priority: bool = Field(
        description='"collect first" (S30): this port\'s recorder has the bandwidth'
    )
    removed_early: RemovedEarly | None = Field(
        description="an empty port's last recorder, unplugged before its collection ended "
        "(shown for two minutes), or null"
    )
    expected_finish: Timestamp | None = Field(
        None,
        description="when this collecting window is expected to be done (ISO 8601, station "
        "time), from the measured rate of its USB link: on a link shared with other ports "
        "the ones ahead of it go first; null when not collecting or no rate yet",
    )
    expected_s: int | None = Field(None, description="the same, in seconds from now")


class StatusAlarm(BaseModel):
    code: str
    severity: Severity
    message: str
    since: Timestamp
    subject: str = Field(description="what the alarm is about (a disk, a port...), or ''")
    id: int = Field(description="the alarm's id (acknowledge it with this)")
    port: int | None = Field(description="the port it is about (a recorder's alarm), or null")
    acked: bool = Field(description="someone on duty has acknowledged it")


class ForwardCurrent(BaseModel):
    file_id: int
    key: str
    size: int
    bytes_done: int


class ForwardRefused(BaseModel):
    file_id: int
    key: str
    error: str | None


class ForwardStatus(BaseModel):
    """Forwarding to the central object store: only `enabled` when it is off."""

    enabled: bool
    endpoint: str | None = None
    bucket: str | None = None
    prefix: str | None = None
    window: str | None = Field(None, description="sending hours, e.g. 22:00-06:00")
    in_window: bool | None = None
    bandwidth_mb_s: float | None = None
    bytes_sent: int | None = Field(None, description="handed to the network since start")
    state: str | None = Field(
        None,
        description="starting, idle, uploading, outside_window, backing_off, error or stopped",
    )
    current: ForwardCurrent | None = Field(None, description="the file being sent")
    pending_files: int | None = None
    pending_bytes: int | None = None
    forwarded_files: int | None = None
    forwarded_bytes: int | None = None
    refused: list[ForwardRefused] | None = Field(None, description="files the object store refused")
    last_error: str | None = None
    last_forwarded_at: Timestamp | None = None


class PlatformStatus(BaseModel):
    """The link to the central platform (docs/platform-protocol.md): only `enabled` when off."""

    enabled: bool
    url: str | None = None
    registered: bool | None = None
    platform_id: str | None = Field(None, description="the platform's id for this station")
    state: Literal["connected", "offline"] | None = None
    breaker: Literal["closed", "backing_off", "open"] | None = None
    failures: int | None = Field(None, description="failed attempts in a row")
    last_error: str | None = None
    last_contact_at: Timestamp | None = None
    outbox_depth: dict[str, int] | None = Field(
        None, description="undelivered outbox entries per kind (file, alarm, log, receipt, report)"
    )
    outbox_pending: int | None = Field(None, description="undelivered outbox entries in all")
    delivered: int | None = Field(None, description="entries delivered since start")
    config_version: int | None = Field(None, description="the platform configuration applied")


class IntegrityStatus(BaseModel):
    """SM3 digests (`[integrity] sm3`), computed in the background: only `sm3` when off."""

    sm3: bool
    computed: int | None = Field(None, description="files digested since start")
    waiting: int | None = Field(None, description="stored files still without SM3 (up to 1000)")
    mb_s: float | None = Field(None, description="measured SM3 rate of this station")


class LogHead(BaseModel):
    """Keep it: a later head that does not extend it means entries were deleted."""

    last_id: int = Field(0, ge=0, le=2**63 - 1)
    hash: str = Field("", description="SHA-256 chain hash of that entry")
    count: int = Field(0, ge=0, le=2**63 - 1)


class ClockStatus(BaseModel):
    synchronized: bool | None = Field(None, description="NTP-synchronised, per the kernel")
    offset_s: float | None = Field(None, description="the kernel's last NTP offset")
    est_error_s: float | None = None
    servers: list[str] = Field(default_factory=list, description="set by install.sh --ntp")


class Status(BaseModel):
    station: StationInfo
    network: NetworkInfo
    disks: list[DiskStatus]
    slots: list[SlotStatus] = Field(description="one per configured port")
    alarms: list[StatusAlarm] = Field(description="the alarms still raised")
    forward: ForwardStatus
    platform: PlatformStatus
    integrity: IntegrityStatus
    log: LogHead = Field(description="the system log's newest entry, as anchored on the disks")
    clock: ClockStatus


# --- the other endpoints ------------------------------------------------------------------


class FileItem(BaseModel):
    id: int
    officer_no: str
    serial: str
    name: str = Field(description="the original file name")
    card_path: str = Field(description="where it was on the recorder's card")
    stored_path: str = Field(description="absolute")
    size: int
    sha256: str
    recorded_at: Timestamp | None = Field(description="from the file name")
    collected_at: Timestamp
    important: bool
    level: Literal["normal", "important", "evidence"]
    sm3: str | None = Field(description="SM3 (GB/T 32905), when `[integrity] sm3` computed it")
    central: Literal["pending", "verified", "failed"] | None = Field(
        description="the central copy (platform or object store): null when none is configured"
    )
    retention_category: str | None = Field(
        description="a 2016 permanent-retention category, or null"
    )


class FileList(BaseModel):
    total: int = Field(description="files matching the filters")
    items: list[FileItem] = Field(description="newest first, `limit` from `offset`")


class UpcomingDeletion(BaseModel):
    id: int
    name: str
    officer_no: str
    serial: str
    level: str
    collected_at: Timestamp
    delete_on: Timestamp = Field(description="when its retention period runs out")
    waiting_central: bool = Field(description="kept past that until its central copy verifies")


class UpcomingDeletions(BaseModel):
    days: int = Field(description="how far ahead (retention.warn_days unless given)")
    items: list[UpcomingDeletion] = Field(description="soonest first")


class EventItem(BaseModel):
    id: int
    at: Timestamp
    kind: str
    actor: str
    port: int | None
    serial: str | None
    officer_no: str | None
    file_id: int | None
    message: str
    data: dict[str, Any]
    hash: str = Field(description="this event's link in the log's hash chain")


class EventPage(BaseModel):
    items: list[EventItem] = Field(description="in log order")
    cursor: int = Field(description="pass it as `after` to get the next events")


class AlarmItem(BaseModel):
    id: int
    code: str
    subject: str
    severity: Severity
    message: str
    since: Timestamp
    count: int = Field(description="how many times it was raised while active")
    acked_by: str | None
    acked_at: Timestamp | None
    cleared_at: Timestamp | None = Field(description="null while it is raised")


class AlarmList(BaseModel):
    items: list[AlarmItem]


class Acknowledged(BaseModel):
    acknowledged: int = Field(description="the alarm's id")


class RecorderItem(BaseModel):
    serial: str
    id_code: str
    status: Literal["pending", "registered"]
    officer_no: str | None
    officer_name: str | None
    reported: dict[str, Any] = Field(description="the recorder's own information block")
    registered_how: str | None = Field(description="auto, manual or rebuilt")
    registered_by: str | None
    registered_at: Timestamp | None
    first_seen_at: Timestamp
    last_seen_at: Timestamp
    last_port: int | None
    battery_percent: int | None
    clock_drift_s: float | None = Field(description="recorder clock minus station clock")


class RecorderList(BaseModel):
    items: list[RecorderItem] = Field(description="every recorder seen, by serial")


class DiskList(BaseModel):
    items: list[DiskStatus]
