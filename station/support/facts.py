"""What a support bundle says of the machine: versions, disks, SMART, ports, the daemon, logs.

Each function collects one part on its own and never needs the catalog; the
bundle (`station.support.bundle`) notes a part that fails and goes on.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from station import __version__
from station.config import StationConfig
from station.store.smart import HealthHistory, check_disk

JOURNAL_LINES = 2000
KERNEL_LINES = 1000
COMMAND_TIMEOUT_S = 30.0
DEBIAN_PACKAGES = (
    "python3",
    "systemd",
    "udev",
    "util-linux",
    "smartmontools",
    "espeak-ng",
    "alsa-utils",
    "dosfstools",
    "exfatprogs",
    "fuse3",
    "fusefat",
    "exfat-fuse",
    "libusb-1.0-0",
    "cage",
    "xwayland",
    "chromium",
)


def _run(cmd: list[str], timeout: float = COMMAND_TIMEOUT_S) -> str:
    """A command's output, or why there is none (never raises)."""
    if shutil.which(cmd[0]) is None:
        return f"({cmd[0]} is not installed)\n"
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({' '.join(cmd)}: {e})\n"
    out = r.stdout
    if r.returncode != 0:
        out += f"\n({' '.join(cmd)} exited with {r.returncode}: {r.stderr.strip()[:500]})\n"
    return out


def _installed() -> dict[str, str]:
    """/opt/station/INSTALLED, written by systemd/install.sh (empty outside an install)."""
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in (Path(sys.prefix) / "INSTALLED").read_text().splitlines():
            k, sep, v = line.partition("=")
            if sep:
                info[k.strip()] = v.strip()
    return info


def _python_packages() -> dict[str, str]:
    """The station's Python dependencies and their installed versions."""
    try:
        requires = metadata.requires("station") or []
    except metadata.PackageNotFoundError:
        requires = []
    names = {re.split(r"[ <>=!~;\[(]", r, maxsplit=1)[0] for r in requires if "extra ==" not in r}
    out: dict[str, str] = {}
    for name in sorted(names | {"station"}, key=str.lower):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _debian_packages() -> dict[str, str]:
    if shutil.which("dpkg-query") is None:
        return {}
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package}\t${Version}\t${db:Status-Status}\n", *DEBIAN_PACKAGES],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    found = {}
    for line in r.stdout.splitlines():
        name, _, rest = line.partition("\t")
        version, _, status = rest.partition("\t")
        found[name] = version if status == "installed" else f"({status or 'not installed'})"
    return {p: found.get(p, "(not installed)") for p in DEBIAN_PACKAGES}


def _os_release() -> dict[str, str]:
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            k, sep, v = line.partition("=")
            if sep:
                info[k] = v.strip().strip('"')
    return info


def versions() -> dict[str, Any]:
    """What runs here: the station, Python and its packages, the kernel, the Debian packages."""
    uname = platform.uname()
    return {
        "station": __version__,
        "installed": _installed(),
        "python": sys.version,
        "python_executable": sys.executable,
        "kernel": f"{uname.system} {uname.release} {uname.version} {uname.machine}",
        "hostname": uname.node,
        "os": _os_release().get("PRETTY_NAME", platform.platform()),
        "python_packages": _python_packages(),
        "debian_packages": _debian_packages(),
    }


def _mount_of(path: Path) -> dict[str, str] | None:
    """The /proc/self/mountinfo entry a folder lives on (device, fs type, options)."""
    best: dict[str, str] | None = None
    real = os.path.realpath(path)
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 6 or len(rfields) < 2:
                continue
            point = fields[4].encode().decode("unicode_escape")
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and (best is None or len(point) >= len(best["mount_point"])):
                best = {
                    "mount_point": point,
                    "source": rfields[1],
                    "fstype": rfields[0],
                    "options": fields[5],
                }
    return best


def disks(config: StationConfig, check: Callable[[Path], Any] | None = None) -> list[dict]:
    """Each store disk: present, mounted where, usage, and its SMART verdict."""
    check = check or (lambda p: check_disk(p))
    out = []
    for path in config.store.disks:
        d: dict[str, Any] = {"path": str(path), "exists": path.is_dir()}
        if not path.is_dir():
            d["smart"] = {"verdict": "unknown", "reasons": [f"{path} does not exist"]}
            out.append(d)
            continue
        d["mountpoint"] = os.path.ismount(path)
        d["mount"] = _mount_of(path)
        d["writable"] = os.access(path, os.W_OK)
        try:
            usage = shutil.disk_usage(path)
            d.update(total_bytes=usage.total, used_bytes=usage.used, free_bytes=usage.free)
        except OSError as e:
            d["usage_error"] = str(e)
        try:
            health = check(path)
            d["smart"] = health.to_dict() if hasattr(health, "to_dict") else health
        except Exception as e:  # smartctl missing, a hung disk: never fail the bundle
            d["smart"] = {"verdict": "unknown", "reasons": [f"SMART check failed: {e}"]}
        out.append(d)
    return out


def smart_history(config: StationConfig, readings: int = 20) -> dict[str, Any]:
    """Every disk the daemon has graded (also one that is dead or gone by now): how it
    changed since its first reading, and its last readings."""
    history = HealthHistory(config.database_path.parent / "smart")
    out: dict[str, Any] = {}
    for path in sorted(history.folder.glob("*.jsonl")):
        serial = path.stem  # the file name is the serial made safe; read back through it
        trend = history.trend(serial)
        if trend is None:
            continue
        out[serial] = {
            "trend": asdict(trend),
            "last_readings": [
                {"at": r.at.isoformat(), **r.health.to_dict()}
                for r in history.readings(serial)[-readings:]
            ],
        }
    return out


def port_map(config: StationConfig) -> dict[str, Any]:
    """The configured dock ports, and the USB devices present with the port each is on."""
    info: dict[str, Any] = {
        "bus": config.bus.kind,
        "ports": config.bus.ports,
        "port_map": {str(k): v for k, v in sorted(config.bus.port_map.items())},
    }
    if config.bus.kind == "simulated":
        folder = config.bus.path
        info["docked"] = sorted(p.name for p in folder.glob("port-*")) if folder.is_dir() else []
        return info
    # a real dock only: a simulated bus has no udev to ask
    import pyudev

    from station.devices.udev import UdevBus

    bus = UdevBus(config.bus.port_map)
    devices = []
    for dev in pyudev.Context().list_devices(subsystem="usb", DEVTYPE="usb_device"):
        props = dev.properties
        id_path = props.get("ID_PATH")
        located = bus.locate(dev.sys_name, id_path)
        devices.append(
            {
                "sys_name": dev.sys_name,
                "id_path": id_path,
                "id": f"{props.get('ID_VENDOR_ID', '?')}:{props.get('ID_MODEL_ID', '?')}",
                "model": props.get("ID_MODEL_FROM_DATABASE") or props.get("ID_MODEL"),
                "port": located[0] if located else None,
            }
        )
    info["usb_devices"] = devices
    return info


def api_base(config: StationConfig) -> str:
    """Where this machine reaches the daemon's API: its own listener when it has one
    ([api] host/port), else the UI's; a wildcard address becomes loopback."""
    host = config.api.host or config.web.host
    port = config.api.port or config.web.port
    host = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def daemon_status(config: StationConfig) -> Any:
    """What the running daemon says (GET /api/v1/status), or why it does not answer."""
    headers = {"Authorization": f"Bearer {config.api.tokens[0]}"} if config.api.tokens else {}
    url = api_base(config) + "/api/v1/status"
    try:
        # straight to the station, never through a proxy from the environment
        r = httpx.get(url, headers=headers, timeout=5, trust_env=False)
    except httpx.HTTPError as e:
        return {"answering": False, "url": url, "error": str(e)}
    try:
        body = r.json()
    except ValueError:
        body = r.text[:2000]
    return {"answering": r.status_code == 200, "url": url, "http": r.status_code, "body": body}


def system_report(config: StationConfig | None) -> str:
    """Uptime, load, memory, clock, the units' state and the store disks' mounts, as text."""
    parts = [f"uname: {' '.join(platform.uname())}"]
    for name in ("/proc/uptime", "/proc/loadavg"):
        with contextlib.suppress(OSError):
            parts.append(f"{name}: {Path(name).read_text().strip()}")
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[:5]
        parts.append("meminfo:\n  " + "\n  ".join(mem))
    parts.append("timedatectl:\n" + _run(["timedatectl", "status"]))
    units = ["station.service", "station-kiosk.service"]
    parts.append(
        "systemctl status:\n"
        + _run(["systemctl", "status", "--no-pager", "--lines=0", "--full", *units])
    )
    parts.append("failed units:\n" + _run(["systemctl", "--failed", "--no-pager", "--plain"]))
    disks = [str(d) for d in config.store.disks] if config else []
    parts.append("df:\n" + _run(["df", "-hT", "/", *disks]))
    parts.append("lsblk:\n" + _run(["lsblk", "-o", "NAME,SIZE,TYPE,FSTYPE,MOUNTPOINT,MODEL,TRAN"]))
    return "\n".join(parts) + "\n"


def journal(lines: int = JOURNAL_LINES) -> str:
    """The recent journal of the station's units (journalctl), or why there is none."""
    return _run(
        [
            "journalctl",
            "--no-pager",
            "-o",
            "short-iso-precise",
            "-n",
            str(lines),
            "-u",
            "station.service",
            "-u",
            "station-kiosk.service",
        ]
    )


def kernel_log(lines: int = KERNEL_LINES) -> str:
    """The kernel's messages of this boot: USB resets and disconnects, disk I/O errors."""
    return _run(
        ["journalctl", "--no-pager", "-o", "short-iso-precise", "-k", "-b", "-n", str(lines)]
    )
