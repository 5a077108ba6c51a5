"""The station checks its installed code and configuration against the manifest written at
install time (station/health/integrity.py), through the real daemon and the real commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import StationProc

from station.health import integrity


def _alarm(st: StationProc) -> dict | None:
    return next((a for a in st.api("/api/v1/status")["alarms"] if a["code"] == "integrity"), None)


def test_a_changed_installation_or_configuration_raises_the_integrity_alarm(
    make_station: Callable[..., StationProc], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "INTEGRITY.json"
    monkeypatch.setenv("STATION_INTEGRITY_MANIFEST", str(manifest))  # daemon and commands
    st = make_station(start=False)
    assert "recorded" in st.cli("integrity", "record", "--by", "install.sh").stdout
    assert st.cli("integrity", "check").returncode == 0
    st.start()
    assert _alarm(st) is None
    st.stop()

    # one installed file changed and one removed (as the check sees them: their recorded
    # hashes no longer match what is there), and the configuration edited by hand
    m = json.loads(manifest.read_text())
    assert "station/runtime.py" in m["files"] and "station/web/static/app.js" in m["files"]
    m["files"]["station/runtime.py"] = "0" * 64
    m["files"]["station/backdoor_removed.py"] = "1" * 64
    manifest.write_text(json.dumps(m))
    with open(st.config_path, "a") as f:
        f.write("\n# edited by hand\n")
    out = st.cli("integrity", "check", check=False)
    assert out.returncode == 1
    assert "1 changed: station/runtime.py" in out.stdout
    assert "1 missing: station/backdoor_removed.py" in out.stdout
    assert "configuration" in out.stdout

    st.start()
    alarm = _alarm(st)
    assert alarm is not None and alarm["severity"] == "critical"
    assert "station/runtime.py" in alarm["message"] and "configuration" in alarm["message"]
    (n,) = st.query("SELECT count(*) FROM events WHERE kind = 'integrity_mismatch'")[0]
    assert n == 1
    st.stop()

    # an administrator looks, and records the state as the known one (logged)
    st.cli("integrity", "record", "--by", "900001")
    st.start()
    assert _alarm(st) is None
    (actor,) = st.query(
        "SELECT actor FROM events WHERE kind = 'integrity_recorded' ORDER BY id DESC LIMIT 1"
    )[0]
    assert actor == "900001"


def test_an_added_file_is_found_but_new_bytecode_caches_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "INTEGRITY.json"
    integrity.write_manifest(manifest, None)
    listed = json.loads(manifest.read_text())["files"]
    extra = "station/__pycache__/new.cpython-311.pyc"
    planted = "station/web/static/planted.js"
    monkeypatch.setattr(
        integrity, "code_files", lambda: listed | {extra: "2" * 64, planted: "3" * 64}
    )
    found = integrity.check(manifest, None)
    assert found.added == [planted] and not found.changed and not found.missing
    assert found.config is None  # run without a configuration file: nothing to compare
