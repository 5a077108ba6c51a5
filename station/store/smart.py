"""Disk health from SMART: read `smartctl --json`, grade it, keep a history per disk.

Three steps, each usable on its own:

- `device_for_path` finds the physical disk under a store folder (through
  /proc/self/mountinfo and sysfs), or None when there is no disk to ask
  (tmpfs, overlay, loop, RAID, network file systems);
- `read_smart` runs ``smartctl --json=c -a -d auto <disk>`` and always returns a
  dict: smartctl's own JSON, or one in the same shape describing why there is
  none (not installed, timed out, output not JSON);
- `assess` grades that dict, optionally against the previous reading of the
  same disk, into a `Health` verdict: healthy, degraded, failed or unknown, with
  the reasons in words an operator can act on.

`HealthHistory` keeps every reading in a JSON-lines file per disk serial, so a
new reallocated sector or an unsafe shutdown shows up as a change, and the
trend can be shown to the people on duty. `check_disk` strings it all together.

Grading (docs/disk-health.md has the table; the limits are the constants below):

failed
    SMART overall health FAILED; an attribute failing now (value at or below
    its threshold); any NVMe critical-warning bit; pending or
    offline-uncorrectable sectors at or above `PENDING_FAILED`; reallocated
    sectors at or above `REALLOCATED_FAILED`.
degraded
    any reallocated, pending or offline-uncorrectable sector; temperature above
    `TEMP_DEGRADED_C` (NVMe: at or above its warning threshold, else above
    `NVME_TEMP_DEGRADED_C`); NVMe wear at or above `WEAR_DEGRADED_PCT`; NVMe
    media errors; an attribute that failed in the past; errors in the
    self-test log; and, against the previous reading, new reallocated,
    pending, uncorrectable sectors or media errors, or `UNSAFE_SHUTDOWN_JUMP`
    or more new unsafe shutdowns.
unknown
    no SMART data at all: smartctl missing or unable to open the disk, a USB
    bridge it cannot talk through, a disk without SMART or with SMART off.

Why one module of about 700 lines: the three steps share smartctl's JSON shapes (ATA,
NVMe, SCSI) and the grading thresholds; each step is usable and tested on its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

__all__ = [
    "NVME_TEMP_DEGRADED_C",
    "PENDING_FAILED",
    "REALLOCATED_FAILED",
    "SMARTCTL",
    "TEMP_DEGRADED_C",
    "UNSAFE_SHUTDOWN_JUMP",
    "WEAR_DEGRADED_PCT",
    "Health",
    "HealthHistory",
    "Reading",
    "Trend",
    "Verdict",
    "assess",
    "check_disk",
    "device_for_path",
    "read_smart",
]

Verdict = Literal["healthy", "degraded", "failed", "unknown"]

# --- limits -----------------------------------------------------------------------------------

#: Pending (197) or offline-uncorrectable (198) sectors at or above this: failed. These are
#: sectors the disk cannot read right now; a handful can be a single bad spot that remaps
#: on the next write, this many means the surface is going.
PENDING_FAILED = 10
#: Reallocated sectors (5, or a SCSI grown defect list) at or above this: failed.
REALLOCATED_FAILED = 100
#: ATA/SCSI temperature above this many °C: degraded (hard disks want to stay below ~50).
TEMP_DEGRADED_C = 55
#: NVMe temperature above this many °C when the drive reports no warning threshold.
NVME_TEMP_DEGRADED_C = 70
#: NVMe "percentage used" (of rated write endurance) at or above this: degraded.
WEAR_DEGRADED_PCT = 90
#: This many unsafe shutdowns since the previous reading or more: degraded.
UNSAFE_SHUTDOWN_JUMP = 1

SMARTCTL = "smartctl"
#: How long one smartctl run may take; a disk that hangs this long is itself a finding.
SMARTCTL_TIMEOUT_S = 90.0

# smartctl exit status bits (smartctl(8), EXIT STATUS). Bits 0-1 mean smartctl itself could
# not do the job; bits 2-7 describe the disk and come with a complete JSON document.
BIT_CMDLINE = 1 << 0  # command line did not parse
BIT_OPEN = 1 << 1  # open failed, no IDENTIFY, or device asleep (-n)
BIT_SMART_CMD = 1 << 2  # some SMART command failed, or a SMART checksum error
BIT_FAILING = 1 << 3  # SMART status "DISK FAILING"
BIT_PREFAIL_NOW = 1 << 4  # prefail attribute <= threshold now
BIT_PAST = 1 << 5  # some attribute <= threshold in the past
BIT_ERROR_LOG = 1 << 6  # device error log has records
BIT_SELFTEST_LOG = 1 << 7  # self-test log has errors

_NVME_WARNINGS = {
    0x01: "available spare has fallen below threshold",
    0x02: "temperature is above or below threshold",
    0x04: "NVM subsystem reliability has been degraded",
    0x08: "media has been placed in read-only mode",
    0x10: "volatile memory backup device has failed",
    0x20: "persistent memory region has become read-only or unreliable",
}

_RANK: dict[str, int] = {"unknown": 0, "healthy": 1, "degraded": 2, "failed": 3}

# Block devices with no SMART of their own: loop files, RAM disks, RAID arrays (ask the
# members instead), network block devices, optical drives.
_NO_SMART = re.compile(r"^(loop|ram|zram|md|nbd|sr|fd|rbd|drbd)\d")


# --- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    """One graded SMART reading of one disk; counters are None when the disk has none."""

    verdict: Verdict
    reasons: list[str] = field(default_factory=list)
    temperature_c: int | None = None
    power_on_hours: int | None = None
    reallocated_sectors: int | None = None
    pending_sectors: int | None = None
    offline_uncorrectable: int | None = None
    unsafe_shutdowns: int | None = None
    smart_passed: bool | None = None
    model: str | None = None
    serial: str | None = None
    device: str | None = None
    protocol: str | None = None  # "ATA", "NVMe", "SCSI" as smartctl names it
    media_errors: int | None = None  # NVMe
    percentage_used: int | None = None  # NVMe
    critical_warning: int | None = None  # NVMe

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for JSON (the history file, the API)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Health:
        """The inverse of `to_dict`; unknown keys (from a newer station) are ignored."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["reasons"] = list(kw.get("reasons") or [])
        kw.setdefault("verdict", "unknown")
        return cls(**kw)


# --- which disk holds a folder ----------------------------------------------------------------


@dataclass(frozen=True)
class _Mount:
    mount_point: str
    major: int
    minor: int
    fstype: str
    source: str


def _unescape(s: str) -> str:
    """Undo mountinfo's octal escapes (space is \\040, tab \\011, newline \\012, \\ \\134)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _mount_for(path: str, mountinfo: Path) -> _Mount | None:
    """The mount holding `path`: the longest mount point above it, the latest on a tie."""
    best: _Mount | None = None
    for line in mountinfo.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if "-" not in parts[6:]:
            continue
        sep = parts.index("-", 6)
        if len(parts) < sep + 3:
            continue
        try:
            major, minor = (int(x) for x in parts[2].split(":"))
        except ValueError:
            continue
        mp = _unescape(parts[4])
        inside = path == mp or path.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = _Mount(mp, major, minor, parts[sep + 1], _unescape(parts[sep + 2]))
    return best


def _sys_block_dir(mount: _Mount, sys_root: Path) -> Path | None:
    """The sysfs folder of the block device behind a mount, None when there is none."""
    if mount.major != 0:
        p = sys_root / "dev" / "block" / f"{mount.major}:{mount.minor}"
        if p.exists():
            return p.resolve()
    # Device number 0 is an anonymous device: tmpfs, overlay, proc, NFS, but also btrfs,
    # whose mountinfo source still names the real device.
    if mount.source.startswith("/dev/"):
        p = sys_root / "class" / "block" / Path(mount.source).resolve().name
        if p.exists():
            return p.resolve()
    return None


def _whole_disk(sysdir: Path, depth: int = 0) -> str | None:
    """The /dev name of the physical disk holding this block device, None if not one disk."""
    if depth > 8:  # a stacking loop would be a kernel bug, but do not spin on it
        return None
    if (sysdir / "partition").exists():
        sysdir = sysdir.parent
    name = sysdir.name
    if name.startswith("dm-"):
        # dm-crypt (encryption at rest) or a one-disk LVM volume: the disk underneath
        # answers for it. Over several disks, or over a loop file, there is no one disk.
        slaves = sysdir / "slaves"
        below = (
            {_whole_disk(s.resolve(), depth + 1) for s in slaves.iterdir()}
            if slaves.is_dir()
            else set()
        )
        return below.pop() if len(below) == 1 else None
    if _NO_SMART.match(name):
        return None
    return "/dev/" + name.replace("!", "/")  # sysfs spells cciss/c0d0 as cciss!c0d0


def device_for_path(
    path: str | os.PathLike[str],
    *,
    mountinfo: Path = Path("/proc/self/mountinfo"),
    sys_root: Path = Path("/sys"),
) -> str | None:
    """The physical disk (``/dev/sda``, ``/dev/nvme0n1``) holding `path`, or None.

    A partition answers with its whole disk, NVMe with its namespace device, a
    dm-crypt or single-disk LVM volume with the disk underneath. None means
    there is no disk that could answer SMART: tmpfs, overlay, loop files, RAID
    arrays, network file systems, or anything that could not be worked out.
    Never raises.
    """
    try:
        mount = _mount_for(os.path.realpath(path), mountinfo)
        if mount is None:
            return None
        sysdir = _sys_block_dir(mount, sys_root)
        return None if sysdir is None else _whole_disk(sysdir)
    except (OSError, ValueError) as e:
        log.info("no disk found for %s: %s", path, e)
        return None


# --- running smartctl -------------------------------------------------------------------------

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def _no_data(device: str, exit_status: int, why: str) -> dict[str, Any]:
    """A smartctl-shaped document for a run that gave no JSON, so `assess` says why."""
    return {
        "json_format_version": [1, 0],
        "smartctl": {
            "exit_status": exit_status,
            "messages": [{"string": why, "severity": "error"}],
        },
        "device": {"name": device},
    }


def read_smart(device: str, *, runner: Runner = subprocess.run) -> dict[str, Any]:
    """Run ``smartctl --json=c -a -d auto <device>`` and return its JSON document.

    smartctl's exit status is a bitmask, not success/failure: bits 0-1 mean it
    could not do the job (the JSON then only carries its messages), bits 2-7
    report findings about the disk alongside a full document. So a non-zero
    status is never an error here; the status is kept in
    ``["smartctl"]["exit_status"]`` for `assess`. When there is no usable JSON
    at all (smartctl missing, timed out, killed, printed something else) the
    result is a document of the same shape with an error message, which
    `assess` grades as unknown. Never raises for any of these.
    """
    cmd = [SMARTCTL, "--json=c", "-a", "-d", "auto", device]
    try:
        proc = runner(cmd, capture_output=True, text=True, timeout=SMARTCTL_TIMEOUT_S, check=False)
    except FileNotFoundError:
        return _no_data(device, -1, f"{SMARTCTL} is not installed (Debian: smartmontools)")
    except subprocess.TimeoutExpired:
        return _no_data(device, -1, f"{SMARTCTL} did not answer in {SMARTCTL_TIMEOUT_S:.0f} s")
    except OSError as e:
        return _no_data(device, -1, f"{SMARTCTL} could not be run: {e}")
    rc = proc.returncode
    try:
        data = json.loads(proc.stdout or "")
    except ValueError:
        data = None
    if not isinstance(data, dict):
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()
        why = f"{SMARTCTL} output is not valid JSON (exit status {rc})"
        if detail:
            why += f": {detail[0][:200]}"
        return _no_data(device, rc, why)
    meta = data.setdefault("smartctl", {})
    if isinstance(meta, dict):
        meta.setdefault("exit_status", rc)
    data.setdefault("device", {"name": device})  # absent when smartctl could not open it
    return data


# --- grading ----------------------------------------------------------------------------------


def _obj(v: Any) -> Mapping[str, Any]:
    """A JSON object, or an empty one for anything else (missing, null, a stray list)."""
    return v if isinstance(v, dict) else {}


def _int(v: Any) -> int | None:
    """An int from JSON, None for anything else (bool included)."""
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _attr_raw(attr: Mapping[str, Any]) -> int | None:
    """An ATA attribute's raw count.

    The leading number of ``raw.string`` first: vendors pack extra fields into
    the upper bytes of ``raw.value`` (Seagate power-on hours, min/max
    temperatures) and smartctl's string already unpacks them.
    """
    raw = attr.get("raw") or {}
    m = re.match(r"\s*(\d+)", str(raw.get("string", "")))
    if m:
        return int(m.group(1))
    return _int(raw.get("value"))


def _plausible_temp(t: int | None) -> int | None:
    return t if t is not None and 0 < t < 130 else None


def _ata_attrs(data: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    table = _obj(data.get("ata_smart_attributes")).get("table")
    if not isinstance(table, list):
        return {}
    return {a["id"]: a for a in table if isinstance(a, dict) and isinstance(a.get("id"), int)}


def _messages(data: Mapping[str, Any]) -> list[str]:
    messages = _obj(data.get("smartctl")).get("messages")
    if not isinstance(messages, list):
        return []
    return [
        str(m.get("string", "")).strip()
        for m in messages
        if isinstance(m, dict) and m.get("severity", "error") == "error" and m.get("string")
    ]


def _compare(cur: Health, previous: Health | None) -> list[str]:
    """Degrading changes since the previous reading of the same disk."""
    if previous is None or previous.serial != cur.serial or cur.serial is None:
        return []
    out = []

    def grew(now: int | None, before: int | None) -> int:
        return now - before if now is not None and before is not None and now > before else 0

    if d := grew(cur.reallocated_sectors, previous.reallocated_sectors):
        out.append(f"{d} new reallocated sector(s) since the last reading")
    if d := grew(cur.pending_sectors, previous.pending_sectors):
        out.append(f"{d} new pending sector(s) since the last reading")
    if d := grew(cur.offline_uncorrectable, previous.offline_uncorrectable):
        out.append(f"{d} new offline-uncorrectable sector(s) since the last reading")
    if d := grew(cur.media_errors, previous.media_errors):
        out.append(f"{d} new media error(s) since the last reading")
    d = grew(cur.unsafe_shutdowns, previous.unsafe_shutdowns)
    if d >= UNSAFE_SHUTDOWN_JUMP:
        out.append(
            f"{d} unsafe shutdown(s) since the last reading (power lost without a clean stop)"
        )
    return out


def assess(data: Mapping[str, Any], previous: Health | None = None) -> Health:
    """Grade one ``smartctl --json -a`` document (see the module docstring for the rules).

    `previous` is the last reading of the same disk (`HealthHistory.last`);
    with it, new bad sectors and new unsafe shutdowns since then also degrade
    the verdict. A reading of another serial is ignored. Pure: no I/O.
    """
    status = _int(_obj(data.get("smartctl")).get("exit_status")) or 0
    status = status if status >= 0 else 0
    device = _obj(data.get("device")).get("name")
    protocol = _obj(data.get("device")).get("protocol")
    model = data.get("model_name") or data.get("scsi_model_name") or data.get("scsi_product")
    serial = data.get("serial_number")
    passed = _obj(data.get("smart_status")).get("passed")
    passed = passed if isinstance(passed, bool) else None
    attrs = _ata_attrs(data)
    nvme = data.get("nvme_smart_health_information_log")
    nvme = nvme if isinstance(nvme, dict) else None
    support = _obj(data.get("smart_support"))

    ident: dict[str, Any] = {
        "model": model,
        "serial": serial,
        "device": device,
        "protocol": protocol,
        "smart_passed": passed,
    }

    # --- unknown: nothing to grade ---
    if support.get("available") is False:
        return Health("unknown", ["the disk has no SMART capability"], **ident)
    if support.get("enabled") is False:
        return Health(
            "unknown", ["SMART is switched off on the disk (smartctl -s on enables it)"], **ident
        )
    if passed is None and not attrs and nvme is None:
        why = _messages(data)
        if status & BIT_CMDLINE:
            why.append(
                f"smartctl refused the command or could not tell the device type "
                f"(exit status {status})"
            )
        if status & BIT_OPEN:
            why.append(
                f"smartctl could not open the disk or read its identity (exit status {status})"
            )
        return Health("unknown", why or ["smartctl returned no SMART data"], **ident)

    # --- the counters ---
    def attr(*ids: int) -> int | None:
        for i in ids:
            if i in attrs:
                return _attr_raw(attrs[i])
        return None

    temp = _int(_obj(data.get("temperature")).get("current"))
    if temp is None:
        temp = attr(194, 190)
    if temp is None and nvme is not None:
        temp = _int(nvme.get("temperature"))
    temp = _plausible_temp(temp)

    hours = _int(_obj(data.get("power_on_time")).get("hours"))
    if hours is None:
        hours = attr(9)
    if hours is None and nvme is not None:
        hours = _int(nvme.get("power_on_hours"))

    reallocated = attr(5)
    if reallocated is None:
        reallocated = _int(data.get("scsi_grown_defect_list"))
    pending = attr(197)
    offline = attr(198)
    # 174 Unexpect_Power_Loss_Ct (SSDs) names exactly this; 192 Power-Off_Retract_Count is
    # the hard-disk equivalent (heads retracted in an emergency because power went away).
    unsafe = attr(174, 192)
    media = crit = used = None
    if nvme is not None:
        unsafe = _int(nvme.get("unsafe_shutdowns"))
        media = _int(nvme.get("media_errors"))
        crit = _int(nvme.get("critical_warning"))
        used = _int(nvme.get("percentage_used"))

    failed: list[str] = []
    degraded: list[str] = []

    # --- failed ---
    if crit:
        for bit, what in _NVME_WARNINGS.items():
            if crit & bit:
                failed.append(f"NVMe critical warning 0x{bit:02x}: {what}")
        if crit & ~0x3F:
            failed.append(f"NVMe critical warning 0x{crit & ~0x3F:02x}: unknown warning")
    elif passed is False or (passed is None and status & BIT_FAILING):
        failed.append("SMART overall-health self-assessment: FAILED")

    failing_now = [a for a in attrs.values() if a.get("when_failed") == "now"]
    for a in failing_now:
        failed.append(
            f"attribute {a['id']} {a.get('name', '?')} is failing now "
            f"(value {a.get('value')}, threshold {a.get('thresh')})"
        )
    if status & BIT_PREFAIL_NOW and not failing_now:
        failed.append("a pre-failure attribute is at or below its threshold")

    def sectors(n: int | None, what: str, limit: int) -> None:
        if n:
            (failed if n >= limit else degraded).append(f"{n} {what}")

    sectors(reallocated, "reallocated sector(s)", REALLOCATED_FAILED)
    sectors(pending, "pending sector(s) (unreadable, waiting to be remapped)", PENDING_FAILED)
    sectors(offline, "offline-uncorrectable sector(s)", PENDING_FAILED)

    # --- degraded ---
    if temp is not None:
        if nvme is not None:
            warn = _int(_obj(data.get("nvme_composite_temperature_threshold")).get("warning"))
            if warn and temp >= warn:
                degraded.append(f"temperature {temp} °C (warning threshold {warn} °C)")
            elif not warn and temp > NVME_TEMP_DEGRADED_C:
                degraded.append(f"temperature {temp} °C (above {NVME_TEMP_DEGRADED_C} °C)")
        elif temp > TEMP_DEGRADED_C:
            degraded.append(f"temperature {temp} °C (above {TEMP_DEGRADED_C} °C)")
    if used is not None and used >= WEAR_DEGRADED_PCT:
        degraded.append(f"{used}% of rated write endurance used")
    if media:
        degraded.append(f"{media} media and data integrity error(s)")

    failed_past = [a for a in attrs.values() if a.get("when_failed") == "past"]
    for a in failed_past:
        degraded.append(
            f"attribute {a['id']} {a.get('name', '?')} was at or below its threshold "
            f"in the past (worst {a.get('worst')}, threshold {a.get('thresh')})"
        )
    if status & BIT_PAST and not failed_past:
        degraded.append("an attribute was at or below its threshold in the past")
    if status & BIT_SELFTEST_LOG:
        degraded.append("the self-test log records a failed test")
    # BIT_ERROR_LOG alone is not graded: old cable CRC errors and aborted commands fill
    # that log on healthy disks; the counters that matter are graded directly above.

    health = Health(
        "healthy",
        temperature_c=temp,
        power_on_hours=hours,
        reallocated_sectors=reallocated,
        pending_sectors=pending,
        offline_uncorrectable=offline,
        unsafe_shutdowns=unsafe,
        media_errors=media,
        percentage_used=used,
        critical_warning=crit,
        **ident,
    )
    degraded += _compare(health, previous)
    verdict: Verdict = "failed" if failed else "degraded" if degraded else "healthy"
    return Health.from_dict({**health.to_dict(), "verdict": verdict, "reasons": failed + degraded})


# --- history ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One recorded `Health`, with when it was taken."""

    at: dt.datetime
    health: Health


@dataclass(frozen=True)
class Trend:
    """How one disk changed over its recorded readings (first to last)."""

    serial: str
    readings: int
    first_at: dt.datetime
    last_at: dt.datetime
    verdict: Verdict  # of the last reading
    worst_verdict: Verdict
    reallocated_added: int | None
    pending_change: int | None
    unsafe_shutdowns_added: int | None
    media_errors_added: int | None
    power_on_hours_added: int | None
    max_temperature_c: int | None
    changes: list[tuple[dt.datetime, Verdict]]  # every reading whose verdict differs


def _delta(first: int | None, last: int | None) -> int | None:
    return None if first is None or last is None else last - first


class HealthHistory:
    """Every reading of every disk, as one JSON-lines file per disk serial in a folder.

    The file is append-only and survives a power cut: each line is written
    whole and fsynced, a torn last line is skipped when read and never glued
    to the next record. The station's catalog is not involved.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()

    def path(self, serial: str) -> Path:
        """The history file of one disk; the serial made safe as a file name."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", serial.strip()).lstrip(".") or "_"
        return self.folder / f"{safe[:120]}.jsonl"

    def record(self, serial: str, health: Health, at: dt.datetime | None = None) -> Reading:
        """Append one reading (time defaults to now, UTC)."""
        at = at or dt.datetime.now(dt.UTC)
        line = json.dumps({"at": at.isoformat(), **health.to_dict()}, ensure_ascii=False) + "\n"
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            p = self.path(serial)
            with open(p, "ab+") as f:
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":  # a torn line from a power cut: end it
                        f.write(b"\n")
                f.write(line.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        return Reading(at, health)

    def readings(self, serial: str, since: dt.datetime | None = None) -> list[Reading]:
        """All readings of one disk, oldest first; unreadable lines are skipped."""
        return [r for r in self._iter(self.path(serial)) if since is None or r.at >= since]

    def last(self, serial: str) -> Health | None:
        """The latest reading of one disk, None when it has none."""
        p = self.path(serial)
        try:
            with open(p, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 65536))
                tail = f.read().decode("utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return None
        for line in reversed(tail):
            r = _parse(line)
            if r is not None:
                return r.health
        return None

    def trend(self, serial: str, since: dt.datetime | None = None) -> Trend | None:
        """How the disk changed from its first reading (or `since`) to its last."""
        rs = self.readings(serial, since)
        if not rs:
            return None
        first, last = rs[0].health, rs[-1].health
        changes: list[tuple[dt.datetime, Verdict]] = []
        prev: Verdict | None = None
        for r in rs:
            if r.health.verdict != prev:
                if prev is not None:
                    changes.append((r.at, r.health.verdict))
                prev = r.health.verdict
        temps = [r.health.temperature_c for r in rs if r.health.temperature_c is not None]
        return Trend(
            serial=serial,
            readings=len(rs),
            first_at=rs[0].at,
            last_at=rs[-1].at,
            verdict=last.verdict,
            worst_verdict=max((r.health.verdict for r in rs), key=_RANK.__getitem__),
            reallocated_added=_delta(first.reallocated_sectors, last.reallocated_sectors),
            pending_change=_delta(first.pending_sectors, last.pending_sectors),
            unsafe_shutdowns_added=_delta(first.unsafe_shutdowns, last.unsafe_shutdowns),
            media_errors_added=_delta(first.media_errors, last.media_errors),
            power_on_hours_added=_delta(first.power_on_hours, last.power_on_hours),
            max_temperature_c=max(temps) if temps else None,
            changes=changes,
        )

    def _iter(self, p: Path) -> Iterator[Reading]:
        with (
            contextlib.suppress(FileNotFoundError),
            open(p, encoding="utf-8", errors="replace") as f,
        ):
            for line in f:
                r = _parse(line)
                if r is not None:
                    yield r


def _parse(line: str) -> Reading | None:
    try:
        d = json.loads(line)
        at = dt.datetime.fromisoformat(d["at"])
        return Reading(at, Health.from_dict(d))
    except (ValueError, KeyError, TypeError):
        return None


# --- all together -----------------------------------------------------------------------------


def check_disk(
    path: str | os.PathLike[str],
    history: HealthHistory | None = None,
    *,
    device: str | None = None,
    runner: Runner = subprocess.run,
) -> Health:
    """Find the disk under `path`, read its SMART, grade it against its last reading, record it.

    Blocking (runs smartctl, which can take seconds): call from an executor.
    `device` skips the lookup. Readings without a serial are not recorded.
    """
    dev = device or device_for_path(path)
    if dev is None:
        return Health(
            "unknown",
            [f"no SMART for {path}: not on a physical disk (tmpfs, overlay, loop, RAID, network)"],
        )
    data = read_smart(dev, runner=runner)
    serial = data.get("serial_number")
    previous = history.last(serial) if history is not None and serial else None
    health = assess(data, previous)
    if history is not None and serial:
        try:
            history.record(serial, health)
        except OSError as e:
            log.warning("could not record SMART history of %s (%s): %s", dev, serial, e)
    return health
