"""The `station` command: the simulated bus, and status, files and recorders of a station."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import StationProc, card_hashes, free_port, recorder_json, write_config

from station.names import parse_card_path
from station.sim.recorder import RecorderSpec, build_and_dock

STATION = [sys.executable, "-m", "station"]
REPO = Path(__file__).parent.parent
RECORDER_FIELDS = {
    "id_code",
    "serial",
    "officer_no",
    "officer_name",
    "unit_no",
    "unit_name",
    "password",
    "battery_percent",
    "clock_offset_s",
}


def station(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STATION, *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def _card_files(port_dir: Path) -> list[Path]:
    return sorted(p for p in (port_dir / "card").rglob("*") if p.is_file())


# --- the simulated bus ----------------------------------------------------------------------


def test_sim_dock_builds_a_recorder(tmp_path: Path) -> None:
    bus = tmp_path / "bus"
    r = station(
        "sim", "dock", "3", "--bus", str(bus), "--serial", "X0000001", "--officer-no", "900001",
        "--files", "3", "--imp", "1", "--size-mb", "0.5",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    port = bus / "port-3"
    assert Path(r.stdout.strip()) == port
    assert port.is_dir()
    assert [p.name for p in bus.iterdir() if p.name.startswith("port-")] == ["port-3"]

    meta = recorder_json(port)
    assert set(meta) >= RECORDER_FIELDS
    assert meta["serial"] == "X0000001"
    assert meta["officer_no"] == "900001"
    assert isinstance(meta["battery_percent"], int) and 0 <= meta["battery_percent"] <= 100
    assert isinstance(meta["clock_offset_s"], int | float)
    assert len(meta["id_code"]) == 5
    assert "read_mb_s" not in meta or meta["read_mb_s"] is None

    files = _card_files(port)
    card = port / "card"
    logs = [p for p in files if p.parent == card / "Log"]
    media = [p for p in files if p not in logs]
    assert len(logs) == 1 and logs[0].suffix.upper() in (".LOG", ".TXT")
    assert logs[0].stat().st_size > 0
    assert len(media) == 3
    name_form = re.compile(r"900001_X0000001_\d{14}_\d{4}(IMP)?\.(AVI|JPG|WAV)")
    imp = []
    for p in media:
        rel = p.relative_to(card).as_posix()
        assert name_form.fullmatch(p.name), rel
        parsed = parse_card_path(rel.encode())
        assert parsed.officer_no == "900001" and parsed.device_no == "X0000001"
        assert parsed.recorded_at is not None
        head = p.read_bytes()[:12]
        if p.suffix == ".AVI":
            assert head[:4] == b"RIFF" and head[8:12] == b"AVI "
            assert 0.3e6 <= p.stat().st_size <= 0.7e6
        elif p.suffix == ".JPG":
            assert head[:2] == b"\xff\xd8"
        else:
            assert head[:4] == b"RIFF" and head[8:12] == b"WAVE"
        if parsed.important:
            imp.append(p)
            assert rel.startswith("DCIM/101ANDRO/")
            assert p.stem.endswith("IMP")
        else:
            assert rel.startswith("DCIM/100ANDRO/")
            assert "IMP" not in p.name
    assert len(imp) == 1


def test_sim_dock_all_options(tmp_path: Path) -> None:
    bus = tmp_path / "bus"
    r = station(
        "sim", "dock", "1", "--bus", str(bus), "--serial", "Y1", "--officer-no", "1",
        "--officer-name", "张三", "--unit-no", "110101", "--unit-name", "城关派出所",
        "--files", "1", "--imp", "0", "--size-mb", "0.1", "--read-mb-s", "3.5",
        "--password", "654321", "--battery", "42", "--clock-offset-s", "-7.5",
        "--id-code", "ABCDE",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    meta = recorder_json(bus / "port-1")
    assert {k: meta[k] for k in RECORDER_FIELDS | {"read_mb_s"}} == {
        "id_code": "ABCDE",
        "serial": "Y1",
        "officer_no": "1",
        "officer_name": "张三",
        "unit_no": "110101",
        "unit_name": "城关派出所",
        "password": "654321",
        "battery_percent": 42,
        "clock_offset_s": -7.5,
        "read_mb_s": 3.5,
    }


def test_sim_dock_on_an_occupied_port_fails(tmp_path: Path) -> None:
    bus = tmp_path / "bus"
    first = build_and_dock(bus, 3, RecorderSpec(serial="Z1", files=1, size_mb=0.05))
    before = card_hashes(first)
    r = station("sim", "dock", "3", "--bus", str(bus), "--serial", "Z2", "--files", "1")
    assert r.returncode != 0
    assert "port 3 is occupied" in r.stderr
    assert "Traceback" not in r.stderr
    assert recorder_json(first)["serial"] == "Z1"
    assert card_hashes(first) == before
    assert not any((bus / ".building").iterdir())  # nothing left half-built


def test_sim_dock_from_onto_an_occupied_port_fails(tmp_path: Path) -> None:
    bus = tmp_path / "bus"
    first = build_and_dock(bus, 3, RecorderSpec(serial="Z1", files=1, size_mb=0.05))
    other = build_and_dock(bus, 4, RecorderSpec(serial="Z2", files=1, size_mb=0.05))
    r = station("sim", "undock", "4", "--bus", str(bus))
    assert r.returncode == 0, r.stderr
    aside = Path(r.stdout.strip())
    r = station("sim", "dock", "3", "--bus", str(bus), "--from", str(aside))
    assert r.returncode != 0
    assert "port 3 is occupied" in r.stderr
    assert "Traceback" not in r.stderr
    assert recorder_json(first)["serial"] == "Z1"
    assert recorder_json(aside)["serial"] == "Z2"  # the kept recorder is untouched
    assert not other.exists()


def test_sim_undock_and_dock_from(tmp_path: Path) -> None:
    bus = tmp_path / "bus"
    port = build_and_dock(
        bus, 5, RecorderSpec(serial="U1", officer_no="700007", files=2, size_mb=0.05)
    )
    meta = recorder_json(port)
    source = card_hashes(port)

    r = station("sim", "undock", "5", "--bus", str(bus))
    assert r.returncode == 0, r.stderr
    kept = Path(r.stdout.strip())
    assert kept.is_absolute()
    assert not port.exists()
    assert kept.is_dir()
    assert not kept.name.startswith("port-")
    assert recorder_json(kept) == meta
    assert card_hashes(kept) == source

    r = station("sim", "dock", "5", "--bus", str(bus), "--from", str(kept))
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == port
    assert not kept.exists()
    assert recorder_json(port) == meta
    assert card_hashes(port) == source


def test_sim_undock_an_empty_port_fails(tmp_path: Path) -> None:
    bus = tmp_path / "bus"
    bus.mkdir()
    r = station("sim", "undock", "2", "--bus", str(bus))
    assert r.returncode != 0
    assert "nothing is docked at port 2" in r.stderr
    assert "Traceback" not in r.stderr


def test_sim_dock_from_something_that_is_not_a_recorder(tmp_path: Path) -> None:
    bus = tmp_path / "bus"
    junk = tmp_path / "junk"
    junk.mkdir()
    r = station("sim", "dock", "1", "--bus", str(bus), "--from", str(junk))
    assert r.returncode != 0
    assert "not a simulated recorder" in r.stderr
    assert not (bus / "port-1").exists()


@pytest.mark.parametrize("port", ["0", "33", "x"])
def test_sim_dock_bad_port_is_usage_error(tmp_path: Path, port: str) -> None:
    r = station("sim", "dock", port, "--bus", str(tmp_path / "bus"))
    assert r.returncode == 2
    assert "PORT" in r.stderr


# --- against a running station ----------------------------------------------------------------


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StationProc]:
    """A running station that has collected one recorder (still docked at port 7)."""
    root = tmp_path_factory.mktemp("cli") / "station"
    for d in ("disk1", "disk2", "bus"):
        (root / d).mkdir(parents=True)
    port = free_port()
    st = StationProc(root, write_config(root, port), port)
    try:
        st.start()
        spec = RecorderSpec(
            serial="L000001", officer_no="810001", officer_name="赵六", files=3, imp=1,
            size_mb=0.2, battery_percent=71, clock_offset_s=3.0,
        )  # fmt: skip
        st.dock(7, st.build(spec))
        st.wait_state(7, "complete")
        yield st
    finally:
        st.stop()


def _volatile(status: dict[str, Any]) -> dict[str, Any]:
    """The status without what changes from one second to the next."""
    status["station"].pop("time")
    status.pop("log")  # the chain's head as last anchored: moves when the periodic round writes
    for d in status["disks"]:
        d.pop("free_bytes")
    for s in status["slots"]:
        s.pop("bytes_per_s", None)
    return status


def test_status_prints_the_station(collected: StationProc) -> None:
    r = collected.cli("status")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "TEST-0001" in out and "Test station" in out
    assert "mode=auto" in out
    for d in collected.disks:
        assert str(d) in out
    ports = re.findall(r"^\s*port (\d+): (\S+)", out, re.M)
    assert [int(p) for p, _ in ports] == list(range(1, 9))
    assert dict(ports)["7"] == "complete"
    assert "L000001" in out and "810001" in out


def test_status_json_equals_the_api(collected: StationProc) -> None:
    r = collected.cli("status", "--json")
    assert r.returncode == 0, r.stderr
    cli = json.loads(r.stdout)
    api = collected.api("/api/v1/status")
    assert _volatile(cli) == _volatile(api)
    assert cli["slots"][6]["recorder"]["serial"] == "L000001"


def test_status_reads_station_config_env(collected: StationProc) -> None:
    env = dict(os.environ)
    env["STATION_CONFIG"] = str(collected.config_path)
    r = subprocess.run(
        [*STATION, "status", "--json"],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["station"]["id"] == "TEST-0001"


def test_status_without_a_running_daemon(make_station) -> None:
    st = make_station(start=False)
    r = st.cli("status", check=False)
    assert r.returncode != 0
    assert "not answering" in r.stderr
    assert "Traceback" not in r.stderr


def test_files_list_json_equals_the_api(collected: StationProc) -> None:
    r = collected.cli("files", "list", "--json")
    assert r.returncode == 0, r.stderr
    cli = json.loads(r.stdout)
    assert cli == collected.api("/api/v1/files")
    assert cli["total"] == 4  # three files and the log
    assert {f["serial"] for f in cli["items"]} == {"L000001"}
    for f in cli["items"]:
        assert Path(f["stored_path"]).is_file()

    imp = json.loads(collected.cli("files", "list", "--json", "--important", "true").stdout)
    assert imp == collected.api("/api/v1/files", important="true")
    assert imp["total"] == 1 and imp["items"][0]["important"] is True

    page = json.loads(
        collected.cli("files", "list", "--json", "--limit", "2", "--offset", "1").stdout
    )
    assert page == collected.api("/api/v1/files", limit=2, offset=1)
    assert page["total"] == 4 and len(page["items"]) == 2

    none = json.loads(collected.cli("files", "list", "--json", "--officer-no", "1").stdout)
    assert none == {"total": 0, "items": []}


def test_files_list_text(collected: StationProc) -> None:
    r = collected.cli("files", "list", "--serial", "L000001")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "4 file(s)"
    assert sum("IMP" in line.split() for line in lines) == 1
    for item in collected.api("/api/v1/files")["items"]:
        assert item["stored_path"] in r.stdout


def test_recorders_list(collected: StationProc) -> None:
    r = collected.cli("recorders", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 1
    row = rows[0]
    assert row["serial"] == "L000001"
    assert row["status"] == "registered"
    assert row["officer_no"] == "810001"
    assert row["reported"]["officer_no"] == "810001"
    assert row["registered_how"] == "auto"
    assert row["last_port"] == 7
    assert row["battery_percent"] == 71
    assert row["clock_drift_s"] == 3.0
    text = collected.cli("recorders", "list").stdout
    assert "L000001" in text and "registered" in text


def test_files_and_recorders_on_a_fresh_catalog(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    root.mkdir()
    cfg = write_config(root, free_port())
    r = station("files", "list", "--json", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"total": 0, "items": []}
    r = station("recorders", "list", "--json", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
    assert (root / "catalog.db").is_file()  # migrated on first use


# --- the layout: thin commands, no SQL, no web ----------------------------------------------


def _imports(folder: Path) -> dict[str, set[str]]:
    """Every module a package's files import, by file (absolute names)."""
    import ast

    found: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        found[path.name] = names
    return found


def test_the_cli_and_support_hold_no_sql_and_import_no_web() -> None:
    """No SQL in either; web only in cli/serve.py, the composition root's listeners."""
    for folder in (REPO / "station" / "cli", REPO / "station" / "support"):
        found = _imports(folder)
        assert "__init__.py" in found and len(found) > 3, f"{folder}: not a package of modules"
        for name, names in found.items():
            sql = {n for n in names if n.split(".")[0] == "sqlalchemy"}
            web = {n for n in names if n.startswith("station.web")}
            if (folder.name, name) == ("cli", "serve.py"):
                assert web, "cli/serve.py serves the web apps"
                web = set()
            assert not sql and not web, f"{folder.name}/{name} imports {sql | web}"


def test_the_command_modules_stay_small() -> None:
    for folder in (REPO / "station" / "cli", REPO / "station" / "support"):
        for path in folder.glob("*.py"):
            lines = len(path.read_text("utf-8").splitlines())
            assert lines <= 500, f"{path.relative_to(REPO)}: {lines} lines"


def test_the_catalog_state_and_its_event_change_in_one_transaction(tmp_path: Path) -> None:
    from station.catalog import Catalog
    from station.catalog.admin import last_event_id, log_event, verify_event_chain

    catalog = Catalog(tmp_path / "catalog.db")
    catalog.migrate()
    assert last_event_id(catalog) == 0
    before = log_event(catalog, "settings_imported", "first", actor="t", state={"k": "1"})
    assert before == {"k": None} and catalog.get_state("k") == "1"
    assert log_event(catalog, "settings_imported", "again", actor="t", state={"k": "2"}) == {
        "k": "1"
    }
    assert log_event(catalog, "settings_import_failed", "undo", actor="t", state={"k": None}) == {
        "k": "2"
    }
    assert catalog.get_state("k") is None  # None removes the key
    assert log_event(catalog, "integrity_recorded", "no state", actor="t") == {}
    assert last_event_id(catalog) == 4 and verify_event_chain(catalog) == []
    catalog.close()
