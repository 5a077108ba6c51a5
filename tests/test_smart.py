"""SMART: grading recorded smartctl outputs, running smartctl, history, finding the disk."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from station.store import smart
from station.store.smart import (
    Health,
    HealthHistory,
    assess,
    check_disk,
    device_for_path,
    read_smart,
)

DATA = Path(__file__).parent / "data" / "smart"


def load(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


def set_raw(doc: dict[str, Any], attr_id: int, raw: int) -> None:
    """Change an ATA attribute's raw count the way smartctl would print it."""
    for a in doc["ata_smart_attributes"]["table"]:
        if a["id"] == attr_id:
            a["raw"] = {"value": raw, "string": str(raw)}
            return
    raise KeyError(attr_id)


# --- assess() on the recorded outputs ---------------------------------------------------------


def test_recordings_cover_every_verdict() -> None:
    verdicts = {p.name: assess(json.loads(p.read_text())).verdict for p in DATA.glob("*.json")}
    assert verdicts == {
        "sata-hdd-healthy.json": "healthy",
        "sata-hdd-degraded.json": "degraded",
        "sata-hdd-failed.json": "failed",
        "nvme-healthy.json": "healthy",
        "nvme-degraded.json": "degraded",
        "usb-bridge-no-smart.json": "unknown",
    }


def test_healthy_sata_hdd() -> None:
    h = assess(load("sata-hdd-healthy.json"))
    assert h.verdict == "healthy"
    assert h.reasons == []
    assert h.smart_passed is True
    assert (h.model, h.serial, h.device, h.protocol) == (
        "WDC WD40PURZ-85AKKY0",
        "WD-WX12D81AB3C4",
        "/dev/sda",
        "ATA",
    )
    assert h.temperature_c == 36
    assert h.power_on_hours == 18234
    assert (h.reallocated_sectors, h.pending_sectors, h.offline_uncorrectable) == (0, 0, 0)
    assert h.unsafe_shutdowns == 41  # 192 Power-Off_Retract_Count
    assert h.media_errors is None and h.percentage_used is None


def test_degraded_sata_hdd() -> None:
    h = assess(load("sata-hdd-degraded.json"))
    assert h.verdict == "degraded"
    assert h.reasons == [
        "24 reallocated sector(s)",
        "8 pending sector(s) (unreadable, waiting to be remapped)",
        "8 offline-uncorrectable sector(s)",
        "temperature 58 °C (above 55 °C)",
        "attribute 190 Airflow_Temperature_Cel was at or below its threshold in the past "
        "(worst 36, threshold 40)",
    ]
    # Seagate packs extra bytes into raw.value; the counts come from smartctl's raw.string
    assert h.power_on_hours == 31876
    assert h.temperature_c == 58
    assert h.unsafe_shutdowns == 57


def test_failed_sata_hdd() -> None:
    h = assess(load("sata-hdd-failed.json"))
    assert h.verdict == "failed"
    assert h.smart_passed is False
    assert h.reasons[:5] == [
        "SMART overall-health self-assessment: FAILED",
        "attribute 5 Reallocated_Sector_Ct is failing now (value 1, threshold 140)",
        "2856 reallocated sector(s)",
        "312 pending sector(s) (unreadable, waiting to be remapped)",
        "305 offline-uncorrectable sector(s)",
    ]
    assert "the self-test log records a failed test" in h.reasons


def test_healthy_nvme() -> None:
    h = assess(load("nvme-healthy.json"))
    assert h.verdict == "healthy"
    assert h.reasons == []
    assert h.protocol == "NVMe"
    assert (h.temperature_c, h.power_on_hours, h.unsafe_shutdowns) == (41, 9127, 37)
    assert (h.media_errors, h.percentage_used, h.critical_warning) == (0, 3, 0)
    assert h.reallocated_sectors is None and h.pending_sectors is None


def test_degraded_nvme() -> None:
    h = assess(load("nvme-degraded.json"))
    assert h.verdict == "degraded"
    assert h.reasons == [
        "93% of rated write endurance used",
        "4 media and data integrity error(s)",
    ]
    assert h.smart_passed is True


def test_usb_bridge_without_smart_is_unknown() -> None:
    h = assess(load("usb-bridge-no-smart.json"))
    assert h.verdict == "unknown"
    assert h.reasons[0] == "/dev/sdd: Unknown USB bridge [0x152d:0x0578 (0x214)]"
    assert "exit status 1" in h.reasons[1]
    assert h.smart_passed is None and h.temperature_c is None


# --- assess(): the rules one at a time --------------------------------------------------------


def test_nvme_critical_warning_fails() -> None:
    doc = load("nvme-degraded.json")
    doc["nvme_smart_health_information_log"]["critical_warning"] = 0x01 | 0x08
    doc["smart_status"] = {"passed": False, "nvme": {"value": 9}}
    doc["smartctl"]["exit_status"] = 8
    h = assess(doc)
    assert h.verdict == "failed"
    assert h.reasons[:2] == [
        "NVMe critical warning 0x01: available spare has fallen below threshold",
        "NVMe critical warning 0x08: media has been placed in read-only mode",
    ]
    # the overall FAILED comes from the same byte: not said twice
    assert not any("self-assessment" in r for r in h.reasons)


def test_nvme_temperature_uses_the_drives_warning_threshold() -> None:
    doc = load("nvme-healthy.json")
    doc["temperature"]["current"] = 70  # NVMe runs warm: below its 82 °C warning, fine
    assert assess(doc).verdict == "healthy"
    doc["temperature"]["current"] = 82
    assert assess(doc).reasons == ["temperature 82 °C (warning threshold 82 °C)"]
    del doc["nvme_composite_temperature_threshold"]
    doc["temperature"]["current"] = smart.NVME_TEMP_DEGRADED_C + 1
    assert assess(doc).verdict == "degraded"


@pytest.mark.parametrize(
    ("attr_id", "count", "verdict"),
    [
        (5, smart.REALLOCATED_FAILED - 1, "degraded"),
        (5, smart.REALLOCATED_FAILED, "failed"),
        (197, 1, "degraded"),
        (197, smart.PENDING_FAILED, "failed"),
        (198, smart.PENDING_FAILED - 1, "degraded"),
        (198, smart.PENDING_FAILED, "failed"),
    ],
)
def test_sector_limits(attr_id: int, count: int, verdict: str) -> None:
    doc = load("sata-hdd-healthy.json")
    set_raw(doc, attr_id, count)
    assert assess(doc).verdict == verdict


def test_temperature_limit() -> None:
    doc = load("sata-hdd-healthy.json")
    doc["temperature"]["current"] = smart.TEMP_DEGRADED_C
    assert assess(doc).verdict == "healthy"
    doc["temperature"]["current"] = smart.TEMP_DEGRADED_C + 1
    assert assess(doc).verdict == "degraded"


def test_temperature_from_attribute_194_when_no_summary() -> None:
    doc = load("sata-hdd-degraded.json")
    del doc["temperature"]
    del doc["power_on_time"]
    h = assess(doc)
    # raw.value is 1310778 (min/max packed above the low bytes); raw.string starts with 58
    assert h.temperature_c == 58
    assert h.power_on_hours == 31876


def test_ssd_unexpected_power_loss_attribute_wins_over_192() -> None:
    doc = load("sata-hdd-healthy.json")
    doc["ata_smart_attributes"]["table"].append(
        {
            "id": 174,
            "name": "Unexpect_Power_Loss_Ct",
            "value": 100,
            "worst": 100,
            "thresh": 0,
            "when_failed": "",
            "raw": {"value": 9, "string": "9"},
        }
    )
    assert assess(doc).unsafe_shutdowns == 9


def test_exit_status_bits_grade_when_json_lacks_detail() -> None:
    doc = load("sata-hdd-healthy.json")
    del doc["smart_status"]  # SMART RETURN STATUS failed (bit 2): grade the attributes
    doc["smartctl"]["exit_status"] = 4
    h = assess(doc)
    assert (h.verdict, h.smart_passed) == ("healthy", None)
    doc["smartctl"]["exit_status"] = 4 | 8  # DISK FAILING
    assert assess(doc).reasons == ["SMART overall-health self-assessment: FAILED"]
    doc["smartctl"]["exit_status"] = 16  # prefail attribute at threshold, none marked
    assert assess(doc).verdict == "failed"
    doc["smartctl"]["exit_status"] = 32
    assert assess(doc).verdict == "degraded"
    doc["smartctl"]["exit_status"] = 128
    assert assess(doc).reasons == ["the self-test log records a failed test"]
    doc["smartctl"]["exit_status"] = 64  # error log entries alone: not graded
    assert assess(doc).verdict == "healthy"


@pytest.mark.parametrize(
    ("support", "reason"),
    [
        ({"available": False}, "the disk has no SMART capability"),
        ({"available": True, "enabled": False}, "SMART is switched off"),
    ],
)
def test_smart_unavailable_or_off_is_unknown(support: dict[str, bool], reason: str) -> None:
    doc = load("sata-hdd-healthy.json")
    doc["smart_support"] = support
    h = assess(doc)
    assert h.verdict == "unknown"
    assert h.reasons[0].startswith(reason)
    assert h.serial == "WD-WX12D81AB3C4"


@pytest.mark.parametrize("doc", [{}, {"smartctl": None}, {"smartctl": {"messages": "x"}}, []])
def test_assess_survives_odd_documents(doc: Any) -> None:
    data = doc if isinstance(doc, dict) else {"ata_smart_attributes": {"table": doc}}
    h = assess(data)
    assert h.verdict == "unknown"
    assert h.reasons


def test_health_round_trips_through_a_dict() -> None:
    h = assess(load("sata-hdd-degraded.json"))
    assert Health.from_dict(json.loads(json.dumps(h.to_dict()))) == h
    assert Health.from_dict({**h.to_dict(), "from_a_newer_station": 1}) == h


# --- read_smart(): running smartctl -----------------------------------------------------------


class FakeSmartctl:
    """Stands in for subprocess.run: records the command, answers with a canned result."""

    def __init__(self, rc: int = 0, stdout: str = "", stderr: str = "", raises: Any = None):
        self.rc, self.stdout, self.stderr, self.raises = rc, stdout, stderr, raises
        self.calls: list[list[str]] = []

    def __call__(self, cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(cmd)
        assert kw["check"] is False and kw["timeout"] > 0
        if self.raises is not None:
            raise self.raises
        return subprocess.CompletedProcess(cmd, self.rc, self.stdout, self.stderr)


def test_read_smart_runs_smartctl_json_auto() -> None:
    text = (DATA / "sata-hdd-healthy.json").read_text()
    run = FakeSmartctl(0, text)
    assert read_smart("/dev/sdx", runner=run) == json.loads(text)
    assert run.calls == [["smartctl", "--json=c", "-a", "-d", "auto", "/dev/sdx"]]


@pytest.mark.parametrize(
    ("name", "rc", "verdict"),
    [
        ("sata-hdd-failed.json", 216, "failed"),  # bits 3, 4, 6, 7: the disk, not smartctl
        ("sata-hdd-degraded.json", 96, "degraded"),  # bits 5, 6
        ("usb-bridge-no-smart.json", 1, "unknown"),  # bit 0: smartctl could not start
    ],
)
def test_non_zero_exit_is_not_an_error(name: str, rc: int, verdict: str) -> None:
    data = read_smart("/dev/sdx", runner=FakeSmartctl(rc, (DATA / name).read_text()))
    assert data["smartctl"]["exit_status"] == rc
    assert assess(data).verdict == verdict


def test_exit_status_filled_in_from_the_process_when_json_lacks_it() -> None:
    doc = load("sata-hdd-healthy.json")
    del doc["smartctl"]["exit_status"]
    data = read_smart("/dev/sdx", runner=FakeSmartctl(32, json.dumps(doc)))
    assert data["smartctl"]["exit_status"] == 32
    assert assess(data).verdict == "degraded"


@pytest.mark.parametrize(
    ("run", "words"),
    [
        (FakeSmartctl(2, "", "Smartctl open device: /dev/sdx failed"), "not valid JSON"),
        (FakeSmartctl(4, "{truncated", ""), "not valid JSON (exit status 4)"),
        (FakeSmartctl(0, "[1, 2]", ""), "not valid JSON"),
        (FakeSmartctl(-9, "", ""), "exit status -9"),
        (FakeSmartctl(raises=FileNotFoundError("smartctl")), "not installed"),
        (FakeSmartctl(raises=subprocess.TimeoutExpired("smartctl", 90)), "did not answer"),
        (FakeSmartctl(raises=PermissionError("smartctl")), "could not be run"),
    ],
)
def test_no_json_is_unknown_with_a_reason(run: FakeSmartctl, words: str) -> None:
    data = read_smart("/dev/sdx", runner=run)
    h = assess(data)
    assert h.verdict == "unknown"
    assert words in h.reasons[0]
    assert h.device == "/dev/sdx"


def test_open_failure_reason_mentions_smartctls_message() -> None:
    h = assess(read_smart("/dev/sdx", runner=FakeSmartctl(2, "", "open failed: No such device")))
    assert "open failed: No such device" in h.reasons[0]


@pytest.mark.skipif(shutil.which("smartctl") is None, reason="smartctl not installed")
def test_real_smartctl_on_a_missing_device_is_unknown() -> None:
    h = assess(read_smart("/dev/station-test-no-such-disk"))
    assert h.verdict == "unknown"
    assert h.reasons


# --- history ----------------------------------------------------------------------------------

T0 = dt.datetime(2025, 11, 18, 8, 0, tzinfo=dt.UTC)


def test_history_detects_a_new_reallocated_sector(tmp_path: Path) -> None:
    history = HealthHistory(tmp_path / "smart")
    doc = load("sata-hdd-healthy.json")
    first = assess(doc)
    history.record(first.serial, first, at=T0)

    set_raw(doc, 5, 1)  # one sector remapped since
    second = assess(doc, previous=history.last(first.serial))
    assert second.verdict == "degraded"
    assert second.reasons == [
        "1 reallocated sector(s)",
        "1 new reallocated sector(s) since the last reading",
    ]
    history.record(first.serial, second, at=T0 + dt.timedelta(hours=1))

    set_raw(doc, 5, 3)
    third = assess(doc, previous=history.last(first.serial))
    assert "2 new reallocated sector(s) since the last reading" in third.reasons
    history.record(first.serial, third, at=T0 + dt.timedelta(hours=2))

    trend = history.trend(first.serial)
    assert trend is not None
    assert trend.readings == 3
    assert trend.reallocated_added == 3
    assert (trend.verdict, trend.worst_verdict) == ("degraded", "degraded")
    assert trend.changes == [(T0 + dt.timedelta(hours=1), "degraded")]


def test_history_detects_unsafe_shutdowns(tmp_path: Path) -> None:
    history = HealthHistory(tmp_path)
    doc = load("nvme-healthy.json")
    h = assess(doc)
    history.record(h.serial, h, at=T0)

    # the same count again: nothing new
    assert assess(doc, previous=history.last(h.serial)).verdict == "healthy"

    doc["nvme_smart_health_information_log"]["unsafe_shutdowns"] += 2
    after = assess(doc, previous=history.last(h.serial))
    assert after.verdict == "degraded"
    assert after.reasons == [
        "2 unsafe shutdown(s) since the last reading (power lost without a clean stop)"
    ]
    history.record(h.serial, after, at=T0 + dt.timedelta(days=1))

    # the next reading with no further loss is healthy again; the history keeps the event
    calm = assess(doc, previous=history.last(h.serial))
    assert calm.verdict == "healthy"
    history.record(h.serial, calm, at=T0 + dt.timedelta(days=2))
    trend = history.trend(h.serial)
    assert trend is not None
    assert trend.unsafe_shutdowns_added == 2
    assert trend.worst_verdict == "degraded"
    assert [v for _, v in trend.changes] == ["degraded", "healthy"]


def test_ata_unsafe_shutdowns_from_power_off_retract_count(tmp_path: Path) -> None:
    doc = load("sata-hdd-healthy.json")
    before = assess(doc)
    set_raw(doc, 192, 42)
    assert assess(doc, previous=before).reasons == [
        "1 unsafe shutdown(s) since the last reading (power lost without a clean stop)"
    ]


def test_previous_reading_of_another_disk_is_ignored() -> None:
    other = assess(load("sata-hdd-degraded.json"))
    doc = load("sata-hdd-healthy.json")
    assert assess(doc, previous=other).verdict == "healthy"


def test_history_survives_a_torn_last_line(tmp_path: Path) -> None:
    history = HealthHistory(tmp_path)
    h = assess(load("sata-hdd-healthy.json"))
    history.record(h.serial, h, at=T0)
    path = history.path(h.serial)
    with open(path, "a") as f:
        f.write('{"at": "2025-11-18T09:00:00+00:00", "verdict": "fai')  # power cut mid-write
    assert history.last(h.serial) == h
    history.record(h.serial, h, at=T0 + dt.timedelta(hours=2))
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["verdict"] == "healthy"
    assert [r.at for r in history.readings(h.serial)] == [T0, T0 + dt.timedelta(hours=2)]


def test_history_per_serial_file_names_are_safe(tmp_path: Path) -> None:
    history = HealthHistory(tmp_path)
    p = history.path("../../etc/WD WX12/34")
    assert p.parent == tmp_path
    assert p.name == "_.._etc_WD_WX12_34.jsonl"
    assert history.last("never-seen") is None
    assert history.trend("never-seen") is None
    assert history.readings("never-seen") == []


def test_trend_since(tmp_path: Path) -> None:
    history = HealthHistory(tmp_path)
    doc = load("sata-hdd-healthy.json")
    for day in range(5):
        doc["temperature"]["current"] = 30 + day
        doc["power_on_time"]["hours"] = 18234 + 24 * day
        h = assess(doc)
        history.record(h.serial, h, at=T0 + dt.timedelta(days=day))
    trend = history.trend("WD-WX12D81AB3C4", since=T0 + dt.timedelta(days=2))
    assert trend is not None
    assert (trend.readings, trend.power_on_hours_added, trend.max_temperature_c) == (3, 48, 34)


# --- check_disk(): all together ---------------------------------------------------------------


def test_check_disk_records_and_compares(tmp_path: Path) -> None:
    history = HealthHistory(tmp_path)
    doc = load("sata-hdd-healthy.json")
    run = FakeSmartctl(0, json.dumps(doc))
    assert check_disk("/srv/disk1", history, device="/dev/sda", runner=run).verdict == "healthy"
    set_raw(doc, 197, 2)
    run.stdout = json.dumps(doc)
    h = check_disk("/srv/disk1", history, device="/dev/sda", runner=run)
    assert h.verdict == "degraded"
    assert "2 new pending sector(s) since the last reading" in h.reasons
    assert len(history.readings("WD-WX12D81AB3C4")) == 2


def test_check_disk_on_tmpfs_is_unknown_without_running_smartctl(tmp_path: Path) -> None:
    if not Path("/dev/shm").is_mount():
        pytest.skip("no tmpfs at /dev/shm here")
    run = FakeSmartctl(raises=AssertionError("smartctl must not run"))
    history = HealthHistory(tmp_path)
    h = check_disk("/dev/shm", history, runner=run)
    assert h.verdict == "unknown"
    assert "not on a physical disk" in h.reasons[0]
    assert run.calls == []
    assert list(tmp_path.iterdir()) == []  # nothing to record without a serial


# --- device_for_path() ------------------------------------------------------------------------


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


def _blockdev(sys: Path, devpath: str, majmin: str, partition: bool = False) -> Path:
    """A device folder under sys/devices with its /sys/dev/block and /sys/class/block links."""
    d = sys / "devices" / devpath
    d.mkdir(parents=True)
    (d / "dev").write_text(majmin + "\n")
    if partition:
        (d / "partition").write_text("1\n")
    _link(sys / "dev" / "block" / majmin, d)
    _link(sys / "class" / "block" / d.name, d)
    return d


@pytest.fixture
def fake_sys(tmp_path: Path) -> tuple[Path, Path]:
    """A small sysfs and mountinfo: SATA, NVMe, dm-crypt, LVM over two disks, loop, md, tmpfs."""
    sys = tmp_path / "sys"
    ata = "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block"
    ata2 = "pci0000:00/0000:00:17.0/ata2/host1/target1:0:0/1:0:0:0/block"
    ata3 = "pci0000:00/0000:00:17.0/ata3/host2/target2:0:0/2:0:0:0/block"
    nvme = "pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0"
    _blockdev(sys, f"{ata}/sda", "8:0")
    sda1 = _blockdev(sys, f"{ata}/sda/sda1", "8:1", partition=True)
    _blockdev(sys, f"{ata2}/sdb", "8:16")
    sdb1 = _blockdev(sys, f"{ata2}/sdb/sdb1", "8:17", partition=True)
    _blockdev(sys, f"{ata3}/sdc", "8:32")
    sdc2 = _blockdev(sys, f"{ata3}/sdc/sdc2", "8:34", partition=True)
    _blockdev(sys, f"{nvme}/nvme0n1", "259:0")
    _blockdev(sys, f"{nvme}/nvme0n1/nvme0n1p2", "259:2", partition=True)
    loop0 = _blockdev(sys, "virtual/block/loop0", "7:0")
    _blockdev(sys, "virtual/block/md0", "9:0")
    crypt = _blockdev(sys, "virtual/block/dm-0", "254:0")  # LUKS on sdb1
    _link(crypt / "slaves" / "sdb1", sdb1)
    lvm = _blockdev(sys, "virtual/block/dm-1", "254:1")  # one LV over sda1 and sdc2
    _link(lvm / "slaves" / "sda1", sda1)
    _link(lvm / "slaves" / "sdc2", sdc2)
    onloop = _blockdev(sys, "virtual/block/dm-2", "254:2")
    _link(onloop / "slaves" / "loop0", loop0)

    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "\n".join(
            [
                "27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw",
                "40 27 259:2 / /srv/store/disk1 rw,relatime - ext4 /dev/nvme0n1p2 rw",
                "41 27 254:0 / /srv/store/disk2 rw,relatime - ext4 /dev/mapper/store2 rw",
                "42 27 254:1 / /srv/lvm rw,relatime - xfs /dev/mapper/vg-lv rw",
                "43 27 254:2 / /srv/onloop rw,relatime - ext4 /dev/mapper/img rw",
                "44 27 7:0 / /srv/loop rw,relatime - ext4 /dev/loop0 rw",
                "45 27 9:0 / /srv/raid rw,relatime - ext4 /dev/md0 rw",
                "46 27 0:45 / /srv/tmp rw,relatime - tmpfs tmpfs rw,size=1024k",
                "47 27 0:46 / /srv/overlay rw - overlay overlay rw,lowerdir=/a,upperdir=/b",
                "48 27 0:47 / /srv/btrfs rw - btrfs /dev/sdc2 rw,subvol=/",
                "49 27 0:48 / /srv/nfs rw - nfs4 server:/export rw",
                r"50 27 8:17 / /srv/with\040space rw - ext4 /dev/sdb1 rw",
                # mounted over /srv/store/disk1 later: the later mount wins
                "51 40 0:49 / /srv/store/disk1 rw - tmpfs tmpfs rw",
                "52 27 8:1 /srv/real /srv/bind rw - ext4 /dev/sda1 rw",
                "garbage line",
            ]
        )
        + "\n"
    )
    return mountinfo, sys


@pytest.mark.parametrize(
    ("path", "device"),
    [
        ("/", "/dev/sda"),
        ("/home/somewhere/deep", "/dev/sda"),  # partition -> whole disk
        ("/srv/store/disk2/1234/x.mp4", "/dev/sdb"),  # dm-crypt -> the disk underneath
        ("/srv/lvm/a", None),  # a volume over two disks: no one disk answers
        ("/srv/onloop", None),
        ("/srv/loop/a", None),
        ("/srv/raid", None),
        ("/srv/tmp/disk1", None),
        ("/srv/overlay", None),
        ("/srv/btrfs/a", "/dev/sdc"),  # anonymous device number, real source
        ("/srv/nfs", None),
        ("/srv/with space/x", "/dev/sdb"),
        ("/srv/store/disk1", None),  # over-mounted by tmpfs
        ("/srv/bind/x", "/dev/sda"),
        ("/srv/tmpfoo", "/dev/sda"),  # /srv/tmp is not a prefix of /srv/tmpfoo
    ],
)
def test_device_for_path(fake_sys: tuple[Path, Path], path: str, device: str | None) -> None:
    mountinfo, sys = fake_sys
    assert device_for_path(path, mountinfo=mountinfo, sys_root=sys) == device


def test_device_for_path_nvme(fake_sys: tuple[Path, Path]) -> None:
    mountinfo, sys = fake_sys
    lines = mountinfo.read_text().splitlines()
    mountinfo.write_text("\n".join(x for x in lines if not x.startswith("51 ")) + "\n")
    assert device_for_path("/srv/store/disk1", mountinfo=mountinfo, sys_root=sys) == (
        "/dev/nvme0n1"
    )


def test_device_for_path_never_raises(tmp_path: Path) -> None:
    assert device_for_path(tmp_path, mountinfo=tmp_path / "missing") is None
    empty = tmp_path / "empty"
    empty.write_text("")
    assert device_for_path("/", mountinfo=empty) is None


def test_device_for_path_on_this_machine(tmp_path: Path) -> None:
    """On the real /proc and /sys: tmpfs gives None, anything else a /dev name or None."""
    if Path("/dev/shm").is_mount():
        assert device_for_path("/dev/shm") is None
    for p in (tmp_path, Path("/"), Path("/no/such/folder"), Path("/proc/self")):
        dev = device_for_path(p)
        assert dev is None or dev.startswith("/dev/")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting tmpfs needs root")
def test_device_for_path_on_a_real_tmpfs(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=False)
    if r.returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        (mnt / "disk1").mkdir()
        assert device_for_path(mnt / "disk1") is None
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_document_is_not_modified_by_assess() -> None:
    doc = load("sata-hdd-failed.json")
    before = copy.deepcopy(doc)
    assess(doc, previous=assess(doc))
    assert doc == before
