"""Support bundle (`station diagnose`) and settings backup (`station config export|import`).

The bundle is a .tar.gz a technician can mail to support: versions, the
configuration with every secret removed, the settings changed on the screen,
the last events and alarms, the disks' usage and SMART verdicts (with their
recorded history), the dock's port map and what is plugged in, the daemon's
live status, the units' and the kernel's recent journal. Each part is collected
on its own: one that fails (no catalog yet, no smartctl, no journal, daemon
stopped, even an invalid configuration) is noted in ``errors.txt`` and the rest
is still written. Secrets are removed twice: by key name from the
configuration, then by value from every file of the bundle, so a token or
password quoted in a log line is blanked as well.

The settings backup is a .tar.gz too: the configuration file byte for byte
(comments kept) and the settings an administrator changed on the screen, which
the catalog keeps (`web/settings.py`), with a manifest of their SHA-256. An
import is validated exactly as the daemon validates its configuration (and the
screen its settings), and only then replaces the file atomically; an invalid
one is refused with the key named and leaves everything untouched. A bare
TOML file is accepted as well (the configuration alone).

Backups are signed: an HMAC-SHA256 of the manifest (which holds every member's
SHA-256) with the key kept beside the configuration file (`backup.key`, 0600,
made at the first export; copy it to a replacement station to restore there).
An unsigned file (a bare TOML), an altered backup or one signed with another key
is refused unless an administrator forces it (`--force`), which the system log
records as such.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from station import __version__
from station.config import ConfigError, StationConfig, load_config, parse_config
from station.durable import replace_file

REDACTED = "<redacted>"
# A configuration key whose name contains one of these holds a secret.
SECRET_WORDS = ("token", "password", "passwd", "passphrase", "secret", "credential", "key")
# Secrets shorter than this are not searched for in free text (they would blank dates);
# those shorter than ANYWHERE_LEN only where they stand alone (not inside a longer number).
MIN_SCRUB_LEN = 6
ANYWHERE_LEN = 12
EVENTS = 500  # the last events put in the bundle
JOURNAL_LINES = 2000
KERNEL_LINES = 1000
UI_SETTINGS_KEY = "ui.settings"  # web/settings.py STATE_KEY: the screen's settings
SETTINGS_FORMAT = "station-settings"
SETTINGS_VERSION = 1
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
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s:]+:[^/@\s]+@", re.I)


# --- secrets ------------------------------------------------------------------------------------


def _is_secret_key(name: str) -> bool:
    name = name.lower()
    return any(w in name for w in SECRET_WORDS)


def redact(value: Any, *, secret: bool = False) -> Any:
    """A copy of a configuration mapping with every secret value replaced by REDACTED.

    A value is secret when its key (or a key above it) names a secret (`SECRET_WORDS`);
    lists keep their length so the bundle still shows how many tokens are set. Credentials
    inside URLs (``scheme://user:password@host``) are removed wherever they appear.
    """
    if isinstance(value, dict):
        return {k: redact(v, secret=secret or _is_secret_key(str(k))) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secret=secret) for v in value]
    if value is None or isinstance(value, bool):
        return value
    if secret:
        return REDACTED
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(rf"\g<scheme>{REDACTED}@", value)
    return value


def secret_values(value: Any, *, secret: bool = False) -> set[str]:
    """Every string held under a secret key of a configuration mapping."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            found |= secret_values(v, secret=secret or _is_secret_key(str(k)))
    elif isinstance(value, list | tuple):
        for v in value:
            found |= secret_values(v, secret=secret)
    elif secret and isinstance(value, str | int) and not isinstance(value, bool):
        found.add(str(value))
    elif isinstance(value, str):
        found.update(m.group(0) for m in _URL_CREDENTIALS.finditer(value))
    return found


def _scrub(text: str, secrets: set[str]) -> str:
    """`text` with every secret value blanked, and credentials in URLs.

    A long secret is blanked wherever it appears; a short one (a six-digit device
    password) only where it stands alone, not inside a longer number or word, so
    sizes, hashes and ids stay readable.
    """
    for s in sorted(secrets, key=len, reverse=True):  # longest first: no partial leftovers
        if len(s) >= ANYWHERE_LEN:
            text = text.replace(s, REDACTED)
        elif len(s) >= MIN_SCRUB_LEN:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(s)}(?![A-Za-z0-9])", REDACTED, text)
    return _URL_CREDENTIALS.sub(rf"\g<scheme>{REDACTED}@", text)


def _config_mapping(config: StationConfig) -> dict[str, Any]:
    """The effective configuration (defaults included) as plain JSON-able data."""
    data = config.model_dump(mode="json")
    # SecretStr dumps as "**********"; get the real value too, so it can be scrubbed by value.
    for name, section in config:
        if hasattr(section, "model_dump"):
            data[name] = _reveal(section, data[name])
    return data


def _reveal(model: Any, dumped: Any) -> Any:
    from pydantic import BaseModel, SecretBytes, SecretStr

    if isinstance(model, SecretStr | SecretBytes):
        return str(model.get_secret_value())
    if isinstance(model, BaseModel) and isinstance(dumped, dict):
        return {k: _reveal(getattr(model, k, None), v) for k, v in dumped.items()}
    if isinstance(model, list | tuple) and isinstance(dumped, list):
        return [_reveal(m, d) for m, d in zip(model, dumped, strict=False)]
    return dumped


# --- collecting ---------------------------------------------------------------------------------


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


def _last_event_id(catalog: Any) -> int:
    from sqlalchemy import func, select

    from station.catalog import Event

    with catalog.read() as s:
        return int(s.scalar(select(func.max(Event.id))) or 0)


def _catalog_parts(config: StationConfig, events: int) -> Iterator[tuple[str, Any]]:
    """events.json, alarms.json and settings.json, from the catalog (never created here)."""
    from station import eventlog
    from station.alarms import AlarmBook
    from station.catalog import Catalog

    if not config.database_path.exists():
        raise FileNotFoundError(f"no catalog at {config.database_path} yet")
    catalog = Catalog(config.database_path)
    try:
        last = _last_event_id(catalog)
        yield "events.json", eventlog.search(catalog, after=max(0, last - events), limit=events)
        book = AlarmBook(catalog)
        yield (
            "alarms.json",
            {
                "active": [vars(a) for a in book.active()],
                "history": [vars(a) for a in book.history(limit=200)],
            },
        )
        yield (
            "settings.json",
            {
                "changed_on_screen": _ui_settings(catalog.get_state(UI_SETTINGS_KEY)),
                "note": "these win over the configuration file (web/settings.py)",
            },
        )
    finally:
        catalog.close()


def _ui_settings(raw: str | None) -> dict[str, Any]:
    """The settings changed on the screen, as the catalog keeps them ({} when none)."""
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"{UI_SETTINGS_KEY} in the catalog is not a JSON object")
    return value


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
    from station.smart import check_disk

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
    from station.smart import HealthHistory

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
    import pyudev

    from station.bus.udev import UdevBus

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
    import httpx

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


# --- the bundle ---------------------------------------------------------------------------------


@dataclass
class InvalidConfig:
    """A configuration file the daemon would refuse, as far as it could be read."""

    path: str
    error: str
    raw: dict[str, Any] | None  # the TOML as written, None when it is not TOML at all
    defaulted: list[str]  # sections left at their defaults because they are invalid


def load_for_diagnose(
    path: str | os.PathLike[str] | None,
) -> tuple[StationConfig, InvalidConfig | None]:
    """The configuration for `diagnose`, also when it is invalid (the station will not
    start: exactly when a support bundle is wanted).

    An invalid file gives the configuration made of its valid sections, the rest left
    at their defaults, and what was wrong. ConfigError only when there is no path at
    all (no --config, no STATION_CONFIG).
    """
    try:
        return load_config(path), None
    except ConfigError as e:
        error = str(e)
    if path is None:
        path = os.environ.get("STATION_CONFIG")
        if not path:
            raise ConfigError(error) from None
    raw: dict[str, Any] | None = None
    with contextlib.suppress(OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        raw = tomllib.loads(Path(path).read_text("utf-8"))
    good: dict[str, Any] = {}
    for name, section in (raw or {}).items():
        with contextlib.suppress(ConfigError):
            parse_config({name: section})
            good[name] = section
    try:
        config = parse_config(good, str(path))
    except ConfigError:  # the valid sections disagree with each other
        good, config = {}, StationConfig()
    defaulted = sorted(set(raw or {}) - set(good))
    return config, InvalidConfig(str(path), error, raw, defaulted)


def diagnose(
    config: StationConfig,
    out_path: str | os.PathLike[str],
    *,
    invalid: InvalidConfig | None = None,
    events: int = EVENTS,
    journal_lines: int = JOURNAL_LINES,
    smart_check: Callable[[Path], Any] | None = None,
) -> Path:
    """Write the support bundle (.tar.gz) to `out_path` and return its path.

    `invalid` (from `load_for_diagnose`) when the configuration file is invalid:
    `config` is then what could be made of it; the bundle says so and holds the file
    as written, secrets removed. Only writing the bundle itself can fail (OSError);
    every part that cannot be collected is explained in ``errors.txt`` instead. The
    file is created 0600 (the event log names officers) and appears atomically.
    """
    out = Path(out_path)
    now = dt.datetime.now(dt.UTC)
    top = f"station-support-{_safe(config.station.id)}-{now:%Y%m%dT%H%M%SZ}"
    conf = _config_mapping(config)
    secrets = secret_values(conf)
    files: dict[str, str] = {}
    errors: list[str] = []
    if invalid is not None:
        secrets |= secret_values(invalid.raw or {})
        errors.append(
            f"the configuration is invalid, the station cannot start with it: {invalid.error}"
        )
        if invalid.defaulted:
            errors.append(
                "these sections were left at their defaults for the parts below: "
                + ", ".join(invalid.defaulted)
            )

    def part(name: str, produce: Callable[[], Any]) -> None:
        started = time.monotonic()
        try:
            value = produce()
        except Exception as e:
            errors.append(f"{name}: {type(e).__name__}: {e}")
            return
        text = value if isinstance(value, str) else _json(value)
        files[name] = text
        if time.monotonic() - started > 10:
            errors.append(f"{name}: took {time.monotonic() - started:.0f} s")

    part(
        "summary.json",
        lambda: {
            "station": {"id": config.station.id, "name": config.station.name},
            "created_at": now.isoformat(),
            "configuration_valid": invalid is None,
            "versions": versions(),
        },
    )
    if invalid is None:
        part("config.json", lambda: redact(conf))
    else:
        part(
            "config.json",
            lambda: {
                "valid": False,
                "file": invalid.path,
                "error": invalid.error,
                "as_written": redact(invalid.raw) if invalid.raw is not None else None,
                "used_for_this_bundle": redact(conf),
            },
        )
    try:
        for name, value in _catalog_parts(config, events):
            files[name] = _json(value)
    except Exception as e:
        errors.append(f"catalog (events.json, alarms.json, settings.json): {type(e).__name__}: {e}")
    part("disks.json", lambda: disks(config, smart_check))
    part("smart-history.json", lambda: smart_history(config))
    part("ports.json", lambda: port_map(config))
    part("status.json", lambda: daemon_status(config))
    part("system.txt", lambda: system_report(config))
    part("journal.txt", lambda: journal(journal_lines))
    part("kernel.txt", lambda: kernel_log())
    files["errors.txt"] = "".join(f"{e}\n" for e in errors) or "(none)\n"

    bundle = io.BytesIO()
    with tarfile.open(fileobj=bundle, mode="w:gz") as tar:
        for name, text in files.items():
            _add(tar, f"{top}/{name}", _scrub(text, secrets).encode(), now)
    return write_private(out, bundle.getvalue())


def _add(tar: tarfile.TarFile, name: str, data: bytes, when: dt.datetime) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(when.timestamp()), 0o600
    tar.addfile(info, io.BytesIO(data))


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, default=str) + "\n"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "station"


# --- settings backup ----------------------------------------------------------------------------

CONFIG_MEMBER = "station.toml"
UI_MEMBER = "ui-settings.json"
MANIFEST_MEMBER = "manifest.json"
SIGNATURE_MEMBER = "signature.json"  # HMAC-SHA256 of manifest.json's bytes
KEY_FILE = "backup.key"  # beside the configuration file
MAX_MEMBER_BYTES = 4 << 20  # a configuration is a few kB: anything bigger is not one


@dataclass
class SettingsBackup:
    """What a settings backup holds, validated."""

    config_bytes: bytes  # the configuration file, byte for byte
    config: StationConfig
    ui_settings: dict[str, Any] | None  # None: the backup does not have them (a bare TOML)
    manifest: dict[str, Any]
    untrusted: str | None = None  # why its signature does not hold; None: signed by our key


@dataclass
class ImportResult:
    """What `import_settings` did (or, with dry_run, would do)."""

    config: StationConfig
    changed: list[str]  # configuration sections that differ from the current file
    new_file: bool  # there was no configuration file before
    ui_settings: dict[str, Any] | None  # the screen's settings restored (None: left alone)
    backup_path: Path | None  # where the previous file was kept
    untrusted: str | None = None  # restored (or to be) although its signature does not hold


def _validate(data: bytes, source: str) -> StationConfig:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not UTF-8 text ({e})") from None
    try:
        mapping = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    return parse_config(mapping, source)


def _validate_ui_settings(value: Any, source: str) -> dict[str, Any]:
    """The screen's settings as `web/settings.py` would accept them, or ConfigError."""
    from pydantic import ValidationError

    from web.settings import Settings

    if not isinstance(value, dict):
        raise ConfigError(f"{source}: not a JSON object")
    try:
        Settings(**value)
    except (TypeError, ValidationError) as e:
        if isinstance(e, ValidationError):
            keys = [
                f"  {'.'.join(str(p) for p in err['loc'])}: "
                + ("unknown setting" if err["type"] == "extra_forbidden" else err["msg"])
                for err in e.errors()
            ]
        else:
            keys = [f"  {e}"]
        raise ConfigError("\n".join([f"{source}: invalid settings", *keys])) from None
    return dict(value)


def read_ui_settings(config: StationConfig) -> dict[str, Any]:
    """The settings changed on the screen, from the catalog ({} when there is none yet)."""
    from station.catalog import Catalog

    if not config.database_path.exists():
        return {}
    catalog = Catalog(config.database_path)
    try:
        return _ui_settings(catalog.get_state(UI_SETTINGS_KEY))
    finally:
        catalog.close()


def backup_key(config_path: str | os.PathLike[str], *, create: bool = False) -> bytes | None:
    """The station's backup signing key (`backup.key` beside the configuration), made on
    first use when `create`; None when there is none."""
    path = Path(config_path).parent / KEY_FILE
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        if not create:
            return None
        key = os.urandom(32).hex().encode()
        write_private(path, key + b"\n")
    if len(key) < 32:
        raise ConfigError(f"{path}: a backup key must be at least 32 characters")
    return key


def _mac(key: bytes, manifest: bytes) -> str:
    return hmac.new(key, manifest, hashlib.sha256).hexdigest()


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"station-backup-key:" + key).hexdigest()[:16]


def _check_signature(members: dict[str, bytes], key: bytes | None, source: str) -> str | None:
    """Why the backup's signature does not hold, or None."""
    raw = members.get(SIGNATURE_MEMBER)
    if raw is None:
        return f"{source} is not signed"
    try:
        sig = json.loads(raw)
        mac, key_id = str(sig["mac"]), str(sig["key_id"])
    except (ValueError, KeyError, TypeError):
        return f"{source}: unreadable {SIGNATURE_MEMBER}"
    if key is None:
        return f"{source} is signed (key {key_id}), but this station has no {KEY_FILE}"
    if key_id != _key_id(key):
        return f"{source} is signed with another key ({key_id}, this station's is {_key_id(key)})"
    if not hmac.compare_digest(mac, _mac(key, members[MANIFEST_MEMBER])):
        return f"{source} was altered after it was signed (its signature does not match)"
    return None


def export_settings(config_path: str | os.PathLike[str]) -> tuple[bytes, SettingsBackup]:
    """The station's settings as a .tar.gz: the configuration file byte for byte
    (comments and secrets included) and the settings changed on the screen.

    ConfigError (naming the key) when the file is missing or invalid: what is exported
    can always be imported again. When the catalog cannot be read, the backup holds
    the file alone and its manifest says why.
    """
    path = Path(config_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    config = _validate(data, str(path))
    manifest: dict[str, Any] = {
        "format": SETTINGS_FORMAT,
        "version": SETTINGS_VERSION,
        "station": {"id": config.station.id, "name": config.station.name},
        "exported_at": dt.datetime.now(dt.UTC).isoformat(),
        "station_version": __version__,
        "config_file": str(path.resolve()),
        "files": {},
    }
    members = {CONFIG_MEMBER: data}
    ui: dict[str, Any] | None
    try:
        ui = read_ui_settings(config)
    except Exception as e:  # a damaged catalog must not stop the configuration's backup
        ui = None
        manifest["ui_settings_error"] = f"{type(e).__name__}: {e}"
    if ui is not None:
        members[UI_MEMBER] = _json(ui).encode()
    manifest["files"] = {n: hashlib.sha256(b).hexdigest() for n, b in members.items()}
    key = backup_key(path, create=True)
    assert key is not None
    manifest_bytes = _json(manifest).encode()
    signature = {"alg": "HMAC-SHA256", "key_id": _key_id(key), "mac": _mac(key, manifest_bytes)}
    now = dt.datetime.now(dt.UTC)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add(tar, MANIFEST_MEMBER, manifest_bytes, now)
        _add(tar, SIGNATURE_MEMBER, _json(signature).encode(), now)
        for name, body in members.items():
            _add(tar, name, body, now)
    return buf.getvalue(), SettingsBackup(data, config, ui, manifest)


def read_backup(data: bytes, source: str = "backup", key: bytes | None = None) -> SettingsBackup:
    """A settings backup (`export_settings`) or a bare TOML configuration, validated,
    its signature checked against `key` (`untrusted` says why it does not hold).

    ConfigError naming the file and the key when anything in it is invalid, damaged
    (a checksum that does not match) or not a station's settings at all.
    """
    if not data.startswith(b"\x1f\x8b"):  # not gzip: a bare configuration file
        config = _validate(data, source)
        return SettingsBackup(data, config, None, {}, f"{source} is not signed (a bare file)")
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for info in tar:
                if not info.isfile() or info.name not in (
                    MANIFEST_MEMBER,
                    SIGNATURE_MEMBER,
                    CONFIG_MEMBER,
                    UI_MEMBER,
                ):
                    raise ConfigError(f"{source}: unexpected {info.name!r}: not a settings backup")
                if info.size > MAX_MEMBER_BYTES or info.name in members:
                    raise ConfigError(f"{source}: {info.name}: not a settings backup")
                f = tar.extractfile(info)
                assert f is not None  # a regular file
                members[info.name] = f.read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ConfigError(f"{source}: damaged or not a settings backup ({e})") from None
    try:
        manifest = json.loads(members[MANIFEST_MEMBER])
    except (KeyError, ValueError):
        raise ConfigError(
            f"{source}: no readable {MANIFEST_MEMBER}: not a settings backup"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != SETTINGS_FORMAT:
        raise ConfigError(f"{source}: not a station settings backup")
    version = manifest.get("version")
    if not isinstance(version, int) or version > SETTINGS_VERSION:
        raise ConfigError(
            f"{source}: settings backup version {version!r}, this station reads up to "
            f"{SETTINGS_VERSION}: upgrade the station first"
        )
    listed = manifest.get("files")
    if (
        not isinstance(listed, dict)
        or CONFIG_MEMBER not in listed
        or set(listed) != (set(members) - {MANIFEST_MEMBER, SIGNATURE_MEMBER})
    ):
        raise ConfigError(f"{source}: the manifest does not list the backup's files")
    for name, digest in listed.items():
        if hashlib.sha256(members[name]).hexdigest() != digest:
            raise ConfigError(f"{source}: {name} is damaged (its SHA-256 does not match)")
    config = _validate(members[CONFIG_MEMBER], f"{source}: {CONFIG_MEMBER}")
    ui = None
    if UI_MEMBER in members:
        try:
            value = json.loads(members[UI_MEMBER])
        except ValueError as e:
            raise ConfigError(f"{source}: {UI_MEMBER}: not valid JSON ({e})") from None
        ui = _validate_ui_settings(value, f"{source}: {UI_MEMBER}")
    untrusted = _check_signature(members, key, source)
    return SettingsBackup(members[CONFIG_MEMBER], config, ui, manifest, untrusted)


def import_settings(
    data: bytes,
    config_path: str | os.PathLike[str],
    *,
    source: str = "imported settings",
    dry_run: bool = False,
    by: str = "cli",
    force: bool = False,
) -> ImportResult:
    """Restore a settings backup (or a bare TOML file) as the station's settings.

    Everything is validated before anything is written (ConfigError naming the file
    and the key): an invalid backup leaves the configuration and the catalog untouched.
    Then the screen's settings, when the backup has them, replace those in the catalog
    of the restored configuration (created if the station has none yet), with a
    `settings_imported` event in the system log; and the configuration file is
    replaced atomically (written beside it, fsynced, renamed, folder fsynced) with the
    old file's owner and mode (0600 for a new one), the old one kept as
    ``<name>.bak``. The running daemon applies it on restart (the configuration's
    live sections also on `systemctl reload station`).
    """
    path = Path(config_path)
    backup = read_backup(bytes(data), source, backup_key(path))
    if backup.untrusted and not (force or dry_run):
        raise ConfigError(
            f"{backup.untrusted}: not restored. An administrator who knows where it comes "
            "from may restore it anyway with --force (the system log records it)"
        )
    try:
        current_bytes: bytes | None = path.read_bytes()
    except FileNotFoundError:
        current_bytes = None
    changed = list(StationConfig.model_fields)
    if current_bytes is not None:
        with contextlib.suppress(ConfigError):
            current = _validate(current_bytes, str(path))
            changed = [
                n
                for n in StationConfig.model_fields
                if getattr(current, n) != getattr(backup.config, n)
            ]
    result = ImportResult(
        backup.config,
        changed,
        current_bytes is None,
        backup.ui_settings,
        path.with_name(path.name + ".bak") if current_bytes is not None else None,
        backup.untrusted,
    )
    if dry_run:
        return result
    restore_ui = _record_import(backup, result, source, by)
    try:
        _replace_file(path, backup.config_bytes)
    except BaseException:
        restore_ui()
        raise
    from station import integrity

    integrity.update_config(integrity.default_manifest(), path)  # the station's own change
    return result


def _record_import(
    backup: SettingsBackup, result: ImportResult, source: str, by: str
) -> Callable[[], None]:
    """Put the screen's settings into the catalog and log the import; return the undo."""
    from station.catalog import Catalog, StationState
    from station.catalog.db import append_event

    db = backup.config.database_path
    if backup.ui_settings is None and not db.exists() and not result.untrusted:
        return lambda: None  # nothing to restore there, no catalog to log to
    catalog = Catalog(db)
    catalog.migrate()
    message = (
        (f"FORCED, {result.untrusted}; " if result.untrusted else "")
        + f"settings imported from {source}: "
        + (", ".join(result.changed) or "no configuration change")
        + (
            f"; screen settings restored ({len(backup.ui_settings)})"
            if backup.ui_settings is not None
            else ""
        )
    )
    try:
        with catalog.write() as s:
            row = s.get(StationState, UI_SETTINGS_KEY)
            before = row.value if row is not None else None
            if backup.ui_settings is not None:
                value = json.dumps(backup.ui_settings, sort_keys=True, ensure_ascii=False)
                s.merge(StationState(key=UI_SETTINGS_KEY, value=value))
            append_event(
                s,
                "settings_imported",
                message,
                actor=by,
                sections=result.changed,
                ui_settings=sorted(backup.ui_settings or {}),
                exported_at=backup.manifest.get("exported_at"),
                forced=bool(result.untrusted),
            )
    finally:
        catalog.close()

    def undo() -> None:
        undo_catalog = Catalog(db)
        try:
            with undo_catalog.write() as s:
                if backup.ui_settings is not None:
                    if before is None:
                        row = s.get(StationState, UI_SETTINGS_KEY)
                        if row is not None:
                            s.delete(row)
                    else:
                        s.merge(StationState(key=UI_SETTINGS_KEY, value=before))
                append_event(
                    s,
                    "settings_import_failed",
                    f"settings from {source} not imported: the configuration file "
                    "could not be written; the previous settings are back",
                    actor=by,
                )
        finally:
            undo_catalog.close()

    return undo


def _replace_file(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically, keeping its owner and mode and a .bak."""
    try:
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        st = None
    if st is not None:
        backup = path.with_name(path.name + ".bak")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(backup)
        try:
            os.link(path, backup)
        except OSError:  # no hard links here: a copy will do
            shutil.copy2(path, backup)
    replace_file(path, data, mode=(st.st_mode & 0o7777) if st else 0o600)
    if st is not None and os.geteuid() == 0:
        os.chown(path, st.st_uid, st.st_gid)


def write_private(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write a file only its owner can read (a backup with secrets, a bundle), atomically
    (mkstemp creates it 0600)."""
    return replace_file(Path(path), data, mode=0o600)


def default_name(kind: str, station_id: str, suffix: str = ".tar.gz") -> str:
    """`station-<kind>-<id>-<UTC time><suffix>`, the name of a bundle or a backup."""
    return f"station-{kind}-{_safe(station_id)}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}{suffix}"
