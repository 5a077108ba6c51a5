"""The support bundle (`station diagnose`) and the settings backup (`station config ...`)."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from conftest import TOKEN, StationProc

from station import __version__, support
from station.catalog import Catalog
from station.catalog.db import append_event
from station.config import ConfigError, load_config, parse_config
from station.health.alarms import AlarmBook
from station.store import smart
from station.support import backup as settings_backup
from station.support import redaction
from station.support.backup import _key_id, _mac

REPO = Path(__file__).resolve().parent.parent
SECOND_TOKEN = "second-central-server-token-4f9c1a"
PASSWORD = "r3corder-pa55"
S3_SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"
PARTS = {
    "summary.json",
    "config.json",
    "events.json",
    "alarms.json",
    "settings.json",
    "disks.json",
    "smart-history.json",
    "ports.json",
    "status.json",
    "system.txt",
    "journal.txt",
    "kernel.txt",
    "errors.txt",
}
UI_SETTINGS = {"layout_cols": 2, "registration_mode": "manual", "voice_volume": 35}


def station_cli(*args: str, stdin: bytes | None = None, **env: str) -> subprocess.CompletedProcess:
    """`station ...` as a user runs it (STATION_CONFIG unset unless given)."""
    environ = {k: v for k, v in os.environ.items() if k != "STATION_CONFIG"} | env
    return subprocess.run(
        [sys.executable, "-m", "station", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        cwd=REPO,
        env=environ,
        check=False,
    )


def _settings(root: Path, port: int = 1) -> dict[str, Any]:
    return {
        "station": {"id": "PG-0007", "name": "Pinggu Station 7"},
        "store": {"disks": [str(root / "disk1"), str(root / "disk2")], "min_free_mb": 1},
        "database": {"url": f"sqlite:///{root / 'catalog.db'}"},
        "bus": {"kind": "simulated", "path": str(root / "bus"), "ports": 4},
        "web": {"host": "127.0.0.1", "port": port},
        "api": {"tokens": [TOKEN, SECOND_TOKEN]},
        "recorders": {"passwords": [PASSWORD, "000000"]},
        "forward": {"access_key_id": "AKIAEXAMPLE", "secret_access_key": S3_SECRET},
    }


def _members(bundle: Path, station_id: str = "PG-0007") -> dict[str, bytes]:
    """The bundle's files by name; all of them in one folder named after the station."""
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        top = {n.split("/", 1)[0] for n in names}
        assert len(top) == 1 and next(iter(top)).startswith(f"station-support-{station_id}-")
        return {n.split("/", 1)[1]: tar.extractfile(n).read() for n in names}


def _events(db: Path, kind: str) -> list[dict[str, Any]]:
    from station import eventlog

    catalog = Catalog(db)
    try:
        return eventlog.search(catalog, kind=kind)
    finally:
        catalog.close()


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Any]:
    """A station's folders and catalog, with events, alarms, and secrets quoted in the log."""
    for d in ("disk1", "bus"):
        (tmp_path / d).mkdir()
    config = parse_config(_settings(tmp_path))
    catalog = Catalog(config.database_path)
    catalog.migrate()
    with catalog.write() as s:
        for i in range(30):
            append_event(s, "test_event", f"event number {i}", number=i)
        # A log line that quotes secrets: the bundle must blank them by value too.
        append_event(s, "test_event", f"central server used {TOKEN}, recorder pass {PASSWORD}")
    catalog.set_state(support.UI_SETTINGS_KEY, json.dumps(UI_SETTINGS))
    book = AlarmBook(catalog)
    book.raise_("disk_missing", "store disk disk2 is missing", str(tmp_path / "disk2"))
    book.raise_("network_down", "no route", "net")
    book.clear("network_down", "net")
    catalog.close()
    # SMART history the daemon recorded for a disk that has gone since
    history = smart.HealthHistory(tmp_path / "smart")
    t0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    history.record("WD-OLD1", smart.Health("healthy", reallocated_sectors=0), t0)
    history.record(
        "WD-OLD1",
        smart.Health("degraded", ["12 reallocated sectors"], reallocated_sectors=12),
        t0 + dt.timedelta(days=3),
    )
    return tmp_path, config


# --- the support bundle -------------------------------------------------------------------------


def test_the_bundle_has_every_part_and_no_secret(site, tmp_path, monkeypatch):
    root, config = site
    monkeypatch.setattr(smart, "SMARTCTL", "/nonexistent/smartctl")  # smartctl missing
    out = support.diagnose(config, tmp_path / "out" / "bundle.tar.gz")
    assert out == tmp_path / "out" / "bundle.tar.gz"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not [p for p in out.parent.iterdir() if p != out]  # no temporary file left

    raw = gzip.decompress(out.read_bytes())  # names, headers and contents alike
    for secret in (TOKEN, SECOND_TOKEN, PASSWORD, S3_SECRET, "AKIAEXAMPLE"):
        assert secret.encode() not in raw, secret
    files = _members(out)
    assert set(files) == PARTS

    conf = json.loads(files["config.json"])
    assert conf["api"]["tokens"] == [support.REDACTED, support.REDACTED]
    assert conf["recorders"]["passwords"] == [support.REDACTED, support.REDACTED]
    assert conf["forward"]["secret_access_key"] == support.REDACTED
    assert conf["station"]["id"] == "PG-0007" and conf["store"]["min_free_mb"] == 1

    events = json.loads(files["events.json"])
    assert [e["message"] for e in events][:2] == ["event number 0", "event number 1"]
    quoted = [e["message"] for e in events if "central server" in e["message"]]
    assert quoted == [f"central server used {support.REDACTED}, recorder pass {support.REDACTED}"]

    alarms = json.loads(files["alarms.json"])
    assert [a["code"] for a in alarms["active"]] == ["disk_missing"]
    assert {a["code"] for a in alarms["history"]} == {"disk_missing", "network_down"}
    assert json.loads(files["settings.json"])["changed_on_screen"] == UI_SETTINGS

    disks = {d["path"]: d for d in json.loads(files["disks.json"])}
    d1, d2 = disks[str(root / "disk1")], disks[str(root / "disk2")]
    assert d1["exists"] and d1["writable"] and d1["total_bytes"] > 0
    assert d1["mount"]["mount_point"] and d1["mountpoint"] is False
    assert d1["smart"]["verdict"] == "unknown"
    assert not d2["exists"] and d2["smart"]["verdict"] == "unknown"
    old = json.loads(files["smart-history.json"])["WD-OLD1"]
    assert old["trend"]["readings"] == 2 and old["trend"]["worst_verdict"] == "degraded"
    assert old["trend"]["reallocated_added"] == 12
    assert [r["verdict"] for r in old["last_readings"]] == ["healthy", "degraded"]

    summary = json.loads(files["summary.json"])
    assert summary["configuration_valid"] is True
    versions = summary["versions"]
    assert versions["station"] == __version__
    assert versions["python"].startswith("3.")
    assert versions["kernel"].startswith("Linux ")
    assert versions["python_packages"]["fastapi"] not in ("", "not installed")
    assert "smartmontools" in versions["debian_packages"]

    ports = json.loads(files["ports.json"])
    assert (ports["bus"], ports["ports"], ports["docked"]) == ("simulated", 4, [])
    status = json.loads(files["status.json"])
    assert status["answering"] is False  # no daemon here: said, not fatal
    assert b"uname:" in files["system.txt"] and b"df:" in files["system.txt"]
    assert files["errors.txt"] == b"(none)\n"


def test_smartctl_missing_is_a_verdict_not_an_error(site, tmp_path, monkeypatch):
    _, config = site
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no smartctl, no journalctl
    files = _members(support.diagnose(config, tmp_path / "b.tar.gz"))
    disk1 = json.loads(files["disks.json"])[0]
    assert disk1["smart"]["verdict"] == "unknown"
    assert "journalctl is not installed" in files["journal.txt"].decode()
    assert "journalctl is not installed" in files["kernel.txt"].decode()


def test_a_disk_check_that_fails_is_reported_in_the_disk(site, tmp_path):
    _, config = site

    def broken(path: Path) -> Any:
        raise TimeoutError("smartctl hung")

    files = _members(support.diagnose(config, tmp_path / "b.tar.gz", smart_check=broken))
    disk1 = json.loads(files["disks.json"])[0]
    assert disk1["smart"] == {
        "verdict": "unknown",
        "reasons": ["SMART check failed: smartctl hung"],
    }


def test_the_bundle_holds_the_last_events_only(site, tmp_path):
    _, config = site
    files = _members(support.diagnose(config, tmp_path / "b.tar.gz", events=5))
    events = json.loads(files["events.json"])
    assert len(events) == 5
    ids = [e["id"] for e in events]
    assert ids == list(range(ids[0], ids[0] + 5))
    assert events[-1]["kind"] == "alarm_cleared"  # the newest event of the catalog


def test_a_station_without_catalog_still_gets_a_bundle(tmp_path):
    config = parse_config(_settings(tmp_path))
    files = _members(support.diagnose(config, tmp_path / "b.tar.gz"))
    for name in ("events.json", "alarms.json", "settings.json"):
        assert name not in files
    assert "no catalog" in files["errors.txt"].decode()
    assert json.loads(files["smart-history.json"]) == {}
    assert not config.database_path.exists()  # diagnose never creates a catalog


def test_diagnose_a_running_station(station: StationProc, tmp_path):
    out = tmp_path / "bundle.tar.gz"
    r = station_cli("diagnose", "--config", str(station.config_path), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == str(out) and r.stderr == b""
    files = _members(out, "TEST-0001")
    status = json.loads(files["status.json"])
    assert status["answering"] is True
    assert len(status["body"]["slots"]) == 8
    assert TOKEN.encode() not in gzip.decompress(out.read_bytes())
    # the daemon's own events are there: it started
    assert any(e["kind"] == "station_started" for e in json.loads(files["events.json"])), [
        e["kind"] for e in json.loads(files["events.json"])
    ]


def test_diagnose_a_station_whose_configuration_is_invalid(site, tmp_path):
    root, _ = site
    settings = _settings(root)
    settings["web"]["port"] = "eighty"  # the daemon would refuse to start
    path = root / "station.toml"
    path.write_text(tomli_w.dumps(settings))
    r = station_cli("diagnose", "--out", str(tmp_path / "b.tar.gz"), STATION_CONFIG=str(path))
    assert r.returncode == 0, r.stderr
    assert b"warning:" in r.stderr and b"web.port" in r.stderr
    raw = gzip.decompress((tmp_path / "b.tar.gz").read_bytes())
    for secret in (TOKEN, SECOND_TOKEN, PASSWORD, S3_SECRET):
        assert secret.encode() not in raw, secret
    files = _members(tmp_path / "b.tar.gz")
    conf = json.loads(files["config.json"])
    assert conf["valid"] is False and "web.port" in conf["error"]
    assert conf["as_written"]["web"]["port"] == "eighty"
    assert conf["as_written"]["api"]["tokens"] == [support.REDACTED] * 2
    assert json.loads(files["summary.json"])["configuration_valid"] is False
    errors = files["errors.txt"].decode()
    assert "configuration is invalid" in errors and "defaults for the parts below: web" in errors
    # the valid sections were used: the catalog and disks of this station are in it
    assert len(json.loads(files["events.json"])) > 30
    assert str(root / "disk1") in {d["path"] for d in json.loads(files["disks.json"])}


def test_diagnose_needs_to_know_the_configuration(tmp_path):
    r = station_cli("diagnose", "--out", str(tmp_path / "b.tar.gz"))
    assert r.returncode == 2
    assert b"STATION_CONFIG" in r.stderr
    assert not (tmp_path / "b.tar.gz").exists()


def test_short_secrets_are_blanked_only_where_they_stand_alone():
    secrets = {"000000", "a-long-secret-token-1234"}
    text = (
        "size 1000000 sha 9f000000ab tried password 000000, failed; "
        "header Bearer a-long-secret-token-1234 and xa-long-secret-token-1234y"
    )
    assert redaction._scrub(text, secrets) == (
        "size 1000000 sha 9f000000ab tried password <redacted>, failed; "
        "header Bearer <redacted> and x<redacted>y"
    )
    assert redaction._scrub("pin 12345 stays", {"12345"}) == "pin 12345 stays"  # under 6


def test_redact_by_key_name_and_url_credentials():
    data = {
        "forward": {
            "url": "https://alice:hunter22@archive.example/upload",
            "access_key_id": "AKIA123",
            "secret_access_key": S3_SECRET,
            "bucket": "footage",
        },
        "api": {"tokens": ["a" * 20, "b" * 20]},
        "web": {"port": 8080, "enabled": True},
    }
    red = support.redact(data)
    assert red["forward"]["url"] == f"https://{support.REDACTED}@archive.example/upload"
    assert red["forward"]["secret_access_key"] == support.REDACTED
    assert red["forward"]["access_key_id"] == support.REDACTED
    assert red["forward"]["bucket"] == "footage"
    assert red["api"]["tokens"] == [support.REDACTED] * 2
    assert red["web"] == {"port": 8080, "enabled": True}
    assert S3_SECRET in support.secret_values(data)


# --- settings backup ----------------------------------------------------------------------------


ORIGINAL = """# the station's settings: comments survive a backup
[station]
id = "PG-0007"
name = "Pinggu Station 7"

[database]
url = "sqlite:///{db}"

[api]
tokens = ["{token}"]
"""


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "station.toml"
    path.parent.mkdir()
    path.write_text(ORIGINAL.format(token=TOKEN, db=tmp_path / "lib" / "catalog.db"))
    path.chmod(0o600)
    return path


def _catalog_with(settings_file: Path, ui: dict[str, Any] | None) -> Path:
    db = load_config(settings_file).database_path
    catalog = Catalog(db)
    catalog.migrate()
    if ui is not None:
        catalog.set_state(support.UI_SETTINGS_KEY, json.dumps(ui))
    catalog.close()
    return db


def _ui_in(db: Path) -> Any:
    catalog = Catalog(db)
    try:
        raw = catalog.get_state(support.UI_SETTINGS_KEY)
    finally:
        catalog.close()
    return json.loads(raw) if raw is not None else None


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _untar(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {n: tar.extractfile(n).read() for n in tar.getnames()}


def test_export_import_round_trip(settings_file, tmp_path):
    db = _catalog_with(settings_file, UI_SETTINGS)
    original = settings_file.read_bytes()
    out = tmp_path / "backup.tar.gz"
    r = station_cli("config", "export", "--config", str(settings_file), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == str(out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it holds the tokens
    members = _untar(out.read_bytes())
    assert set(members) == {"manifest.json", "signature.json", "station.toml", "ui-settings.json"}
    assert members["station.toml"] == original  # byte for byte, comments included
    assert json.loads(members["ui-settings.json"]) == UI_SETTINGS
    manifest = json.loads(members["manifest.json"])
    assert manifest["format"] == "station-settings" and manifest["version"] == 1
    assert manifest["station"] == {"id": "PG-0007", "name": "Pinggu Station 7"}

    # Someone changes the file and the screen's settings; the backup brings both back.
    changed = original.replace(b"Pinggu Station 7", b"Pinggu Station 7 (spare)")
    settings_file.write_bytes(changed)
    catalog = Catalog(db)
    catalog.set_state(support.UI_SETTINGS_KEY, json.dumps({"layout_cols": 8}))
    catalog.close()
    r = station_cli("config", "import", str(out), "--config", str(settings_file), "--by", "tech7")
    assert r.returncode == 0, r.stderr
    said = r.stdout.decode()
    assert "changed: station" in said and "restart the station" in said
    assert "screen settings restored: layout_cols, registration_mode, voice_volume" in said
    assert settings_file.read_bytes() == original
    assert stat.S_IMODE(settings_file.stat().st_mode) == 0o600
    assert settings_file.with_name("station.toml.bak").read_bytes() == changed
    assert _ui_in(db) == UI_SETTINGS
    (event,) = _events(db, "settings_imported")
    assert event["actor"] == "tech7" and "station" in event["message"]
    assert sorted(p.name for p in settings_file.parent.iterdir()) == [
        "backup.key",  # made by the first export, 0600
        "station.toml",
        "station.toml.bak",
    ]
    assert stat.S_IMODE(settings_file.with_name("backup.key").stat().st_mode) == 0o600
    # the system log's chain still holds with the new event in it
    r = station_cli("audit", "verify", "--config", str(settings_file))
    assert r.returncode == 0, r.stdout + r.stderr


def test_export_to_stdout(settings_file):
    r = station_cli("config", "export", "--out", "-", STATION_CONFIG=str(settings_file))
    assert r.returncode == 0, r.stderr
    members = _untar(r.stdout)
    assert members["station.toml"] == settings_file.read_bytes()
    assert json.loads(members["ui-settings.json"]) == {}  # no catalog yet: nothing changed


def test_restored_screen_settings_take_effect(make_station: Callable[..., StationProc]):
    st = make_station(start=False)  # file: registration mode auto
    db = _catalog_with(st.config_path, {"registration_mode": "manual"})
    data, _ = support.export_settings(st.config_path)
    for p in db.parent.glob(db.name + "*"):  # a new system disk: no catalog
        p.unlink()
    result = support.import_settings(data, st.config_path, source="backup.tar.gz")
    assert result.changed == [] and result.ui_settings == {"registration_mode": "manual"}
    st.start()
    assert st.api("/api/v1/status")["station"]["mode"] == "manual"


def test_import_into_a_new_file_is_private(tmp_path):
    path = tmp_path / "new" / "station.toml"
    db = tmp_path / "lib" / "catalog.db"
    bare = ORIGINAL.format(token=TOKEN, db=db).encode()
    with pytest.raises(ConfigError, match="not signed"):  # a bare file is never signed
        support.import_settings(bare, path)
    assert not path.exists() and not db.exists()
    result = support.import_settings(bare, path, force=True, by="tech7")
    assert result.new_file and result.backup_path is None and result.ui_settings is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_config(path).api.tokens == [TOKEN]
    (event,) = _events(db, "settings_imported")  # a forced import is always logged
    assert event["actor"] == "tech7" and event["message"].startswith("FORCED")


def _resigned(members: dict[str, bytes], key: bytes) -> dict[str, bytes]:
    """Members with the manifest re-hashed and signed again with `key`."""
    manifest = json.loads(members["manifest.json"])
    manifest["files"] = {
        n: hashlib.sha256(b).hexdigest()
        for n, b in members.items()
        if n not in ("manifest.json", "signature.json")
    }
    raw = json.dumps(manifest).encode()
    sig = {"alg": "HMAC-SHA256", "key_id": _key_id(key), "mac": _mac(key, raw)}
    return members | {"manifest.json": raw, "signature.json": json.dumps(sig).encode()}


@pytest.mark.parametrize(
    ("attack", "says"),
    [("edited and re-hashed", "altered"), ("another key", "another key"),
     ("signature removed", "not signed")],
)  # fmt: skip
def test_a_backup_not_signed_by_this_station_is_refused_unless_forced(settings_file, attack, says):
    """Someone edits a backup (an extra API token, say) and fixes its checksums, or signs
    it with a key of his own, or strips the signature: refused; `--force` restores it, and
    the system log says it was forced."""
    members = _backup(settings_file)
    evil = members["station.toml"].replace(b"tokens = [", b'tokens = ["' + b"e" * 40 + b'", ')
    assert evil != members["station.toml"]
    members = members | {"station.toml": evil}
    if attack == "edited and re-hashed":
        forged = _resigned(members, b"x" * 64)
        forged["signature.json"] = _backup(settings_file)["signature.json"]  # the real one
    elif attack == "another key":
        forged = _resigned(members, b"k" * 64)
    else:
        forged = {k: v for k, v in _resigned(members, b"k" * 64).items() if k != "signature.json"}
    before = settings_file.read_bytes()
    with pytest.raises(ConfigError, match=says):
        support.import_settings(_tar(forged), settings_file, source="b.tar.gz")
    assert settings_file.read_bytes() == before
    r = station_cli("config", "import", "-", "--config", str(settings_file), stdin=_tar(forged))
    assert r.returncode == 2 and b"--force" in r.stderr
    assert settings_file.read_bytes() == before
    r = station_cli(
        "config", "import", "-", "--force", "--by", "900001", "--config", str(settings_file),
        stdin=_tar(forged),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert settings_file.read_bytes() == evil
    (event,) = _events(load_config(settings_file).database_path, "settings_imported")
    assert event["actor"] == "900001" and event["message"].startswith("FORCED")


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"store": {"min_free_mb": "lots"}}, "store.min_free_mb"),
        ({"web": {"prot": 8080}}, "web.prot: unknown key"),
        ({"api": {"tokens": ["short"]}}, "api.tokens"),
        ({"retention": {"days": 30, "low_water_percent": 99}}, "low_water_percent"),
    ],
)
def test_an_invalid_import_is_refused_with_the_key_named(settings_file, data, named):
    db = _catalog_with(settings_file, UI_SETTINGS)
    before = settings_file.read_bytes()
    with pytest.raises(ConfigError) as err:
        support.import_settings(tomli_w.dumps(data).encode(), settings_file, source="backup.toml")
    assert named in str(err.value) and "backup.toml" in str(err.value)
    assert settings_file.read_bytes() == before
    assert os.listdir(settings_file.parent) == ["station.toml"]  # nothing else written
    assert _ui_in(db) == UI_SETTINGS and _events(db, "settings_imported") == []


def test_the_command_refuses_an_invalid_backup_with_exit_status_2(settings_file, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[web]\nport = "eighty"\n')
    before = settings_file.read_bytes()
    r = station_cli("config", "import", str(bad), "--config", str(settings_file))
    assert r.returncode == 2
    assert str(bad).encode() in r.stderr and b"web.port" in r.stderr
    assert settings_file.read_bytes() == before
    r = station_cli("config", "import", str(tmp_path / "missing.tar.gz"), "--config", "x.toml")
    assert r.returncode == 2 and b"missing.tar.gz" in r.stderr


def _backup(settings_file: Path) -> dict[str, bytes]:
    _catalog_with(settings_file, UI_SETTINGS)
    return _untar(support.export_settings(settings_file)[0])


def _with_manifest(members: dict[str, bytes], **changes: Any) -> dict[str, bytes]:
    manifest = json.loads(members["manifest.json"]) | changes
    return members | {"manifest.json": json.dumps(manifest).encode()}


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda m: m | {"station.toml": m["station.toml"] + b"\n# edited\n"}, "damaged"),
        (lambda m: {k: v for k, v in m.items() if k != "manifest.json"}, "manifest.json"),
        (lambda m: {k: v for k, v in m.items() if k != "ui-settings.json"}, "does not list"),
        (lambda m: m | {"../etc/passwd": b"x"}, "unexpected '../etc/passwd'"),
        (lambda m: _with_manifest(m, format="something-else"), "not a station settings"),
        (lambda m: _with_manifest(m, version=2), "upgrade the station first"),
    ],
)
def test_a_damaged_backup_is_refused(settings_file, damage, says):
    members = damage(_backup(settings_file))
    before = settings_file.read_bytes()
    with pytest.raises(ConfigError, match=says):
        support.import_settings(_tar(members), settings_file, source="b.tar.gz")
    assert settings_file.read_bytes() == before


def test_invalid_screen_settings_in_a_backup_are_refused(settings_file):
    members = _backup(settings_file)
    ui = json.dumps({"layout_cols": 99, "colour": "red"}).encode()
    manifest = json.loads(members["manifest.json"])
    manifest["files"]["ui-settings.json"] = hashlib.sha256(ui).hexdigest()
    members |= {"ui-settings.json": ui, "manifest.json": json.dumps(manifest).encode()}
    with pytest.raises(ConfigError) as err:
        support.import_settings(_tar(members), settings_file, source="b.tar.gz")
    said = str(err.value)
    assert "b.tar.gz: ui-settings.json" in said
    assert "layout_cols" in said and "colour: unknown setting" in said


@pytest.mark.parametrize(
    ("data", "says"),
    [(b'[station\nid = "x"', "not valid TOML"), (b"\xff\xfe[station]", "not UTF-8")],
)
def test_garbage_is_refused(settings_file, data, says):
    before = settings_file.read_bytes()
    with pytest.raises(ConfigError, match=says):
        support.import_settings(data, settings_file)
    assert settings_file.read_bytes() == before


def test_export_refuses_a_broken_file(settings_file):
    settings_file.write_text('[web]\nport = "eighty"\n')
    with pytest.raises(ConfigError, match=r"web\.port"):
        support.export_settings(settings_file)
    with pytest.raises(ConfigError, match="not found"):
        support.export_settings(settings_file.with_name("missing.toml"))
    r = station_cli("config", "export", "--config", str(settings_file))
    assert r.returncode == 2 and b"web.port" in r.stderr


def test_a_dry_run_writes_nothing(settings_file, tmp_path):
    db = _catalog_with(settings_file, {"layout_cols": 3})
    backup = tmp_path / "new.toml"
    backup.write_bytes(settings_file.read_bytes() + b"\n[web]\nport = 9090\n")
    before = settings_file.read_bytes()
    r = station_cli("config", "import", str(backup), "--dry-run", "--config", str(settings_file))
    assert r.returncode == 0, r.stderr
    assert "would change: web" in r.stdout.decode() and "nothing written" in r.stdout.decode()
    assert settings_file.read_bytes() == before
    assert _ui_in(db) == {"layout_cols": 3} and _events(db, "settings_imported") == []


def test_a_failed_write_puts_the_screen_settings_back(settings_file, monkeypatch):
    db = _catalog_with(settings_file, UI_SETTINGS)
    data, _ = support.export_settings(settings_file)
    catalog = Catalog(db)
    catalog.set_state(support.UI_SETTINGS_KEY, json.dumps({"layout_cols": 5}))
    catalog.close()
    before = settings_file.read_bytes()

    def full_disk(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(settings_backup, "_replace_file", full_disk)
    with pytest.raises(OSError, match="No space"):
        support.import_settings(data, settings_file, source="b.tar.gz")
    assert settings_file.read_bytes() == before
    assert _ui_in(db) == {"layout_cols": 5}
    assert len(_events(db, "settings_imported")) == len(_events(db, "settings_import_failed")) == 1


def test_a_backup_is_checked_with_the_settings_screen_s_own_model() -> None:
    """The backup's check and the settings screen use one model (station.settings)."""
    from station import settings as screen
    from station.support import backup

    assert support.UI_SETTINGS_KEY == screen.STATE_KEY
    assert backup.Settings is screen.Settings
