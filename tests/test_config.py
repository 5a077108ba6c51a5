"""The configuration file: every CONTRACT.md key, strict refusal of anything else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from pydantic import ValidationError

from station.config import ConfigError, StationConfig, load_config, parse_config

STATION = [sys.executable, "-m", "station"]
REPO = Path(__file__).parent.parent

# The example of CONTRACT.md, "Configuration (TOML)", with a real token.
CONTRACT_TOML = """\
[station]
id = "PG-0001"              # unique in the fleet
name = "Pinggu Station 1"

[store]
disks = ["/srv/disk1", "/srv/disk2"]   # in order of use
min_free_mb = 1024                     # switch disk below this

[database]
url = "sqlite:////var/lib/station/catalog.db"

[bus]
kind = "udev"               # or "simulated"
path = "/run/station/simbus" # for "simulated"

[registration]
mode = "auto"               # or "manual"

[retention]
days = 180

[web]
host = "127.0.0.1"
port = 8080

[api]
tokens = ["0123456789abcdef0123"]   # bearer tokens accepted from the central server
"""


def _write(tmp_path: Path, text: str, name: str = "station.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, "utf-8")
    return p


def test_defaults() -> None:
    c = StationConfig()
    assert c.station.id and c.station.name
    assert c.station.timezone is None
    assert c.store.disks == [Path("/srv/disk1"), Path("/srv/disk2")]
    assert c.store.min_free_mb == 1024
    assert c.database.url == "sqlite:////var/lib/station/catalog.db"
    assert c.database_path == Path("/var/lib/station/catalog.db")
    assert c.bus.kind == "udev"
    assert c.bus.path == Path("/run/station/simbus")
    assert c.bus.ports == 8
    assert c.registration.mode == "auto"
    assert c.retention.days == 180
    assert (c.web.host, c.web.port) == ("127.0.0.1", 8080)
    assert c.api.tokens == []
    # an empty file is the defaults
    assert parse_config({}) == c


def test_every_contract_key_parses(tmp_path: Path) -> None:
    c = load_config(_write(tmp_path, CONTRACT_TOML))
    assert (c.station.id, c.station.name) == ("PG-0001", "Pinggu Station 1")
    assert c.store.disks == [Path("/srv/disk1"), Path("/srv/disk2")]
    assert c.store.min_free_mb == 1024
    assert c.database.url == "sqlite:////var/lib/station/catalog.db"
    assert c.database_path == Path("/var/lib/station/catalog.db")
    assert c.bus.kind == "udev"
    assert c.bus.path == Path("/run/station/simbus")
    assert c.registration.mode == "auto"
    assert c.retention.days == 180
    assert (c.web.host, c.web.port) == ("127.0.0.1", 8080)
    assert c.api.tokens == ["0123456789abcdef0123"]


def test_the_other_allowed_values(tmp_path: Path) -> None:
    text = (
        CONTRACT_TOML.replace('kind = "udev"', 'kind = "simulated"')
        .replace('mode = "auto"', 'mode = "manual"')
        .replace("min_free_mb = 1024", "min_free_mb = 0")
        .replace("days = 180", "days = 1")
        .replace("port = 8080", "port = 0")
    )
    c = load_config(_write(tmp_path, text))
    assert c.bus.kind == "simulated"
    assert c.registration.mode == "manual"
    assert c.store.min_free_mb == 0
    assert c.retention.days == 1
    assert c.web.port == 0


def test_project_keys_beyond_the_contract_parse() -> None:
    c = parse_config(
        {
            "station": {"timezone": "Asia/Shanghai"},
            "store": {"sync_every_mb": 4, "chunk_kb": 256},
            "bus": {"ports": 4, "port_map": {"1": "1-1.2", "2": "1-1.3"}, "debounce_ms": 0},
            "recorders": {"passwords": ["000000"], "clock_drift_alarm_s": 30},
            "network": {"check": "10.0.0.1:443", "interval_s": 5},
        }
    )
    assert c.station.timezone == "Asia/Shanghai"
    assert (c.store.sync_every_mb, c.store.chunk_kb) == (4, 256)
    assert c.bus.ports == 4
    assert c.bus.port_map == {1: "1-1.2", 2: "1-1.3"}
    assert c.recorders.passwords == ["000000"]
    assert c.network.check == "10.0.0.1:443"


def test_no_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    # the file is the single source of truth
    for name in ("STATION", "station", "WEB", "web", "STORE", "store"):
        monkeypatch.setenv(name, '{"id": "FROM-ENV"}')
    monkeypatch.setenv("WEB__PORT", "1")
    assert parse_config({}).station.id != "FROM-ENV"
    assert parse_config({}).web.port == 8080


UNKNOWN = [
    ({"colour": "blue"}, "colour"),
    ({"store": {"min_free": 10}}, "store.min_free"),  # misspelt min_free_mb
    ({"station": {"id": "X", "nmae": "y"}}, "station.nmae"),
    ({"api": {"token": ["0123456789abcdef0123"]}}, "api.token"),
    ({"web": {"port": 8080, "bind": "0.0.0.0"}}, "web.bind"),
]


@pytest.mark.parametrize(("data", "key"), UNKNOWN)
def test_unknown_keys_are_refused(tmp_path: Path, data: dict, key: str) -> None:
    path = _write(tmp_path, tomli_w.dumps(data))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg
    assert key in msg
    assert "unknown key" in msg
    assert e.value.exit_code == 2


BAD_VALUES = [
    ({"store": {"min_free_mb": -1}}, "store.min_free_mb"),
    ({"store": {"min_free_mb": "lots"}}, "store.min_free_mb"),
    ({"store": {"disks": []}}, "store.disks"),
    ({"store": {"disks": ["/a", "/a"]}}, "store.disks"),
    ({"store": "disk1"}, "store"),
    ({"database": {"url": "postgresql://db/station"}}, "database.url"),
    ({"bus": {"kind": "usb"}}, "bus.kind"),
    ({"bus": {"ports": 0}}, "bus.ports"),
    ({"registration": {"mode": "automatic"}}, "registration.mode"),
    ({"retention": {"days": 0}}, "retention.days"),
    ({"web": {"port": 65536}}, "web.port"),
    ({"web": {"port": "http"}}, "web.port"),
    ({"api": {"tokens": "0123456789abcdef0123"}}, "api.tokens"),
    ({"api": {"tokens": ["short"]}}, "api.tokens"),
    ({"station": {"id": 5}}, "station.id"),
]


@pytest.mark.parametrize(("data", "key"), BAD_VALUES, ids=[k for _, k in BAD_VALUES])
def test_bad_values_are_refused_naming_key_and_file(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(data, "/etc/station/station.toml")
    msg = str(e.value)
    assert "/etc/station/station.toml" in msg
    assert f"  {key}:" in msg


ALSO_REFUSED = [
    pytest.param(
        {"station": {"timezone": "Mars/Olympus"}},
        "station.timezone",
        id="station.timezone",
    ),
    pytest.param(
        {"network": {"check": "central-server"}},
        "network.check",
        id="network.check",
    ),
    pytest.param(
        {"store": {"min_free_mb": True}},
        "store.min_free_mb",
        id="store.min_free_mb-bool",
    ),
]


@pytest.mark.parametrize(("data", "key"), ALSO_REFUSED)
def test_more_bad_values_are_refused(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(data, "/etc/station/station.toml")
    assert f"  {key}:" in str(e.value)


def test_every_bad_key_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"store": {"min_free_mb": -5, "disk": []}, "extra": 1}, "f.toml")
    msg = str(e.value)
    for key in ("store.min_free_mb", "store.disk", "extra"):
        assert key in msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value)
    assert "not found" in str(e.value)


def test_invalid_toml(tmp_path: Path) -> None:
    path = _write(tmp_path, "[store\nmin_free_mb = 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value)
    assert "TOML" in str(e.value)


def test_station_config_env_is_used_without_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, CONTRACT_TOML)
    monkeypatch.setenv("STATION_CONFIG", str(path))
    assert load_config(None).station.id == "PG-0001"
    # an explicit path wins over the environment
    other = _write(tmp_path, '[station]\nid = "OTHER"\n', "other.toml")
    assert load_config(other).station.id == "OTHER"


def test_no_path_and_no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATION_CONFIG", raising=False)
    with pytest.raises(ConfigError) as e:
        load_config(None)
    assert "STATION_CONFIG" in str(e.value)


# --- through the command line -------------------------------------------------------------

BAD_TOML = """\
[station]
id = "PG-0001"

[store]
disks = ["/srv/disk1"]
min_fre_mb = 1024
"""


def _station(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "STATION_CONFIG"}
    full_env.update(env or {})
    return subprocess.run(
        [*STATION, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=full_env,
    )


@pytest.mark.parametrize(
    "command",
    [["run"], ["status"], ["files", "list"], ["recorders", "list"]],
    ids=" ".join,
)
def test_commands_refuse_a_bad_config_with_exit_2(tmp_path: Path, command: list[str]) -> None:
    bad = _write(tmp_path, BAD_TOML, "bad.toml")
    r = _station(*command, "--config", str(bad))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert str(bad) in r.stderr
    assert "store.min_fre_mb" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_config_from_station_config_env_exits_2(tmp_path: Path) -> None:
    bad = _write(tmp_path, BAD_TOML, "bad.toml")
    r = _station("status", env={"STATION_CONFIG": str(bad)})
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert str(bad) in r.stderr and "store.min_fre_mb" in r.stderr


@pytest.mark.parametrize("command", [["run"], ["status"]], ids=" ".join)
def test_commands_with_a_missing_config_exit_2(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "missing.toml"
    r = _station(*command, "--config", str(missing))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert str(missing) in r.stderr
    assert "Traceback" not in r.stderr


def test_run_with_invalid_toml_exits_2(tmp_path: Path) -> None:
    bad = _write(tmp_path, 'station = "unterminated\n', "broken.toml")
    r = _station("run", "--config", str(bad))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert str(bad) in r.stderr and "TOML" in r.stderr


def test_run_without_any_config_exits_2() -> None:
    r = _station("run")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "STATION_CONFIG" in r.stderr


def test_android_recorders_are_a_configured_family(tmp_path: Path) -> None:
    from station.drivers.android_adb import AndroidAdbDriver
    from station.runtime import build_drivers

    path = tmp_path / "station.toml"
    path.write_text(
        '[[drivers.android_adb]]\nname = "h6"\nusb_ids = ["2D95:6003"]\nformat = "e12"\n'
        "device_port = 8800\n"
    )
    config = load_config(path)
    (family,) = config.drivers.android_adb
    assert (family.usb_ids, family.format, family.require_serial_match) == (
        ["2d95:6003"],
        "e12",
        True,
    )
    registry = build_drivers(config, lambda device: None)  # type: ignore[arg-type,return-value]
    assert any(isinstance(d, AndroidAdbDriver) for d in registry.drivers)
    path.write_text(
        '[[drivers.android_adb]]\nusb_ids = ["nope"]\nformat = "e12"\ndevice_port = 1\n'
    )
    with pytest.raises(ConfigError, match="is not a USB id"):
        load_config(path)


def test_recorder_passwords_must_not_be_empty() -> None:
    from pydantic import ValidationError

    from station.config import RecordersSection

    with pytest.raises(ValidationError):
        RecordersSection(passwords=["000000", ""])
    assert RecordersSection(passwords=["000000"]).passwords == ["000000"]


def test_the_configuration_is_a_snapshot_never_changed_in_place() -> None:
    """A reload or a settings change replaces the configuration whole (model_copy);
    nothing may assign into the live one (a worker thread may be reading it)."""
    config = parse_config({"retention": {"days": 30}})
    with pytest.raises(ValidationError):
        config.retention.days = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.retention = config.retention  # type: ignore[misc]
    newer = config.model_copy(update={"retention": config.retention.model_copy(update={"days": 1})})
    assert (config.retention.days, newer.retention.days) == (30, 1)
