"""Fault runs: the daemon killed, recorders yanked, cards and disks that fail.

Every run ends by checking the evidence invariants of tests/evidence.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import StationProc, needs_root, tmpfs_disks, wait_for
from evidence import Ledger, check

from station.faults import CRASHPOINTS
from station.sim import media
from station.sim.recorder import RecorderSpec

MB = 1_000_000


def _fleet(
    st: StationProc,
    ledger: Ledger,
    n: int = 8,
    *,
    big_mb: float = 6,
    read_mb_s: float | None = None,
    seed: int = 0,
    files: int = 3,
) -> dict[str, Path]:
    """Build and dock `n` recorders, each with small files and one multi-checkpoint video."""
    cards = {}
    for port in range(1, n + 1):
        serial, officer = f"K{seed:02d}{port:04d}", f"8{seed:02d}{port:03d}"
        rec = st.build(
            RecorderSpec(
                serial=serial,
                officer_no=officer,
                files=files,
                imp=1,
                size_mb=0.6,
                read_mb_s=read_mb_s,
            ),
            seed=seed * 100 + port,
        )
        big = rec / "card" / "DCIM" / "100ANDRO" / f"{officer}_{serial}_20261120080000_0099.AVI"
        media.make_video(big, int(big_mb * MB), label=serial, seed=port)
        ledger.add(serial, officer, rec)
        cards[serial] = st.dock(port, rec)
    return cards


def _cards_empty(cards: dict[str, Path]) -> bool:
    return all(not any(p.is_file() for p in c.joinpath("card").rglob("*")) for c in cards.values())


def _assert_invariants(st: StationProc, ledger: Ledger, cards: dict[str, Path]) -> None:
    findings = check(st.db, st.disks, ledger, cards)
    assert findings.problems() == {}, findings.problems()


def _run_until_killed_or_done(st: StationProc, cards: dict[str, Path], timeout: float) -> bool:
    """Start the daemon; True if it was killed (by a crash point) before the cards emptied."""
    st.start(wait=False)
    assert st.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if st.proc.poll() is not None:
            assert st.proc.returncode == -signal.SIGKILL, st.log()
            return True
        if _cards_empty(cards):
            st.stop()
            return False
        time.sleep(0.1)
    raise AssertionError(f"neither killed nor done in {timeout} s\n{st.log()}")


def test_sigkill_at_every_crash_point_and_at_random(make_station) -> None:
    # only IMP files are re-read in full (not every small file), so that the bound on bytes
    # read below still shows that a resumed transfer re-reads little
    st = make_station(start=False, store={"card_recheck_full_mb": 0})
    ledger = Ledger()
    cards = _fleet(st, ledger, read_mb_s=40, files=6, big_mb=8)
    fired_log = st.root / "crashpoints-fired.log"
    rng = random.Random(4711)
    ingest_points = [p for p in CRASHPOINTS if p not in ("copy_chunk", "recovery_after_finish")]
    plan = [(p, rng.randint(1, 2)) for p in ingest_points for _ in "ab"]
    plan += [("copy_chunk", rng.randint(8, 30)) for _ in range(3)]
    plan += [("external", rng.uniform(1.0, 2.5)) for _ in range(3)]
    rng.shuffle(plan)
    kills, batch, after_verify = 0, 0, False

    def refill_if_empty() -> None:  # keep the station busy: new recorders replace emptied ones
        nonlocal batch, cards
        if _cards_empty(cards):
            batch += 1
            for port in range(1, 9):
                if (st.bus / f"port-{port}").exists():
                    st.undock(port)
            cards |= _fleet(st, ledger, read_mb_s=40, files=6, big_mb=8, seed=batch)

    for point, arg in plan:
        refill_if_empty()
        if point == "external":
            st.env = {"STATION_CRASHPOINT_LOG": str(fired_log)}
            st.start(wait=False)
            time.sleep(arg)
            if st.proc.poll() is None:
                st.proc.send_signal(signal.SIGKILL)
                st.proc.wait()
                kills += 1
            continue
        armed = f"{point}:{arg}"
        if after_verify:  # the last kill left a verified job: die inside its recovery too
            armed += ",recovery_after_finish:1"
        st.env = {"STATION_CRASHPOINTS": armed, "STATION_CRASHPOINT_LOG": str(fired_log)}
        # the cards can empty before an armed count runs out (few files were left): refill
        # them and arm the point again, so that every point is reached whatever the timing
        for _ in range(3):
            if _run_until_killed_or_done(st, cards, 180):
                kills += 1
                break
            refill_if_empty()
        fired = fired_log.read_text().split() if fired_log.exists() else []
        after_verify = bool(fired) and fired[-1] in ("after_verify", "link_before_unlink",
                                                     "after_link")  # fmt: skip
    assert kills >= 10, f"only {kills} kills landed"
    fired = set(fired_log.read_text().split())
    # every named point was reached and killed the daemon at least once
    assert fired >= {*ingest_points, "copy_chunk", "recovery_after_finish"}, fired
    st.env = {}
    st.start()
    wait_for(lambda: _cards_empty(cards), 300, "every card to be cleared")
    for port in range(1, 9):
        st.wait_state(port, "complete")
    st.stop()
    _assert_invariants(st, ledger, cards)
    # resumed transfers re-read little: checkpoints every 2 MB, 1 MiB chunks
    (read,) = st.query("SELECT coalesce(sum(bytes_read), 0) FROM collection_sessions")[0]
    dup = st.query(
        "SELECT count(*) FROM events WHERE kind = 'card_file_deleted' AND message LIKE 'duplicate%'"
    )[0][0]
    slack = kills * len(cards) * (2 * 2**20 + 2**20 + 64 * 1024) + ledger.total_files * 4 * 65536
    # the full second look (IMP files and files up to 64 MiB), once per collection attempt
    reread = ledger.recheck_bytes() * (1 + kills)
    assert read <= ledger.total_bytes + slack + reread + dup * 9 * MB, (read, ledger.total_bytes)


def test_yanked_at_random_bytes_and_redocked_on_other_ports(station: StationProc) -> None:
    ledger = Ledger()
    rng = random.Random(99)
    cards = _fleet(station, ledger, n=2, big_mb=8, read_mb_s=30, seed=1)
    yanks = 0
    ports = {serial: i + 1 for i, serial in enumerate(cards)}
    aside = station.bus / ".undocked"
    for _round in range(3):
        for path in cards.values():
            data = json.loads((path / "recorder.json").read_text())
            data["faults"] = {"unplug_after_bytes": rng.randint(1 * MB, 5 * MB)}
            tmp = path / "recorder.json.new"  # atomically: the recorder is in use
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path / "recorder.json")
        for serial in list(cards):
            path, port = cards[serial], ports[serial]
            try:
                wait_for(lambda p=path: _gone_or_done(p), 120, f"{serial} yanked or done")
            except AssertionError as e:
                raise AssertionError(f"{e}: {station.slot(port)}\n{station.log()}") from None
            if path.exists():
                continue
            new = max(aside.glob(f"port-{port}-yanked-*"), key=lambda p: p.stat().st_mtime)
            yanks += 1
            other = port + 2 if port <= 2 else port - 2
            wait_for(lambda o=other: not (station.bus / f"port-{o}").exists(), 60)
            ports[serial] = other
            cards[serial] = station.dock(other, new)
    assert yanks >= 3
    for port in ports.values():
        station.wait_state(port, "complete")
    _assert_invariants(station, ledger, cards)
    resumed = station.query("SELECT count(*) FROM events WHERE kind = 'resume_rejected'")
    assert resumed == [(0,)]


def _gone_or_done(path: Path) -> bool:
    if not path.exists():
        return True
    return not any(p.is_file() for p in (path / "card").rglob("*"))


def _dock_with_faults(st: StationProc, faults_for, serial: str, port: int) -> tuple[Path, dict]:
    rec = st.build(
        RecorderSpec(serial=serial, officer_no="810001", files=4, imp=0, size_mb=1.0), seed=5
    )
    files = sorted(p for p in (rec / "card").rglob("*.AVI"))
    victim = str(files[0].relative_to(rec / "card"))
    data = json.loads((rec / "recorder.json").read_text())
    data["faults"] = faults_for(victim)
    (rec / "recorder.json").write_text(json.dumps(data))
    ledger = Ledger()
    ledger.add(serial, "810001", rec)
    return st.dock(port, rec), {"victim": victim, "ledger": ledger}


@pytest.mark.parametrize("kind", ["unstable", "bad_sector"])
def test_card_that_lies_or_fails_keeps_the_file(station: StationProc, kind: str) -> None:
    faults = (
        (lambda v: {"unstable": [v]})
        if kind == "unstable"
        else (lambda v: {"bad_sectors": {v: 300_000}})
    )
    docked, info = _dock_with_faults(station, faults, "L000001", 4)
    slot = station.wait_state(4, "error")
    victim = info["victim"]
    assert Path(victim).name in slot["error"]
    # the failing file is still on the recorder, untouched; all the others were collected
    left = [
        str(p.relative_to(docked / "card")) for p in (docked / "card").rglob("*") if p.is_file()
    ]
    assert left == [victim]
    ledger = info["ledger"]
    stored = station.api("/api/v1/files", limit=100)["items"]
    assert len(stored) == ledger.total_files - 1
    assert Path(victim).name not in {f["name"] for f in stored}
    codes = {a["code"] for a in station.api("/api/v1/status")["alarms"]}
    assert ("verify_failed" if kind == "unstable" else "collection_failed") in codes
    # a transfer cut short by the bad read keeps its temp file only to resume later
    open_jobs = {
        p for (p,) in station.query("SELECT temp_path FROM ingest_jobs WHERE state = 'copying'")
    }
    assert {str(p) for p in (station.disks[0] / ".staging").iterdir()} <= open_jobs


def test_file_still_growing_is_stored_once_complete(station: StationProc) -> None:
    rec = station.build(
        RecorderSpec(serial="N000001", officer_no="820001", files=0, imp=0, read_mb_s=4), seed=2
    )
    folder = rec / "card" / "DCIM" / "100ANDRO"
    folder.mkdir(parents=True)
    growing = folder / "820001_N000001_20261120090000_0001.AVI"
    growing.write_bytes(os.urandom(2 * MB))
    media.make_video(folder / "820001_N000001_20261120090500_0002.AVI", 6 * MB)
    stop = threading.Event()

    def record() -> None:  # the recorder keeps writing for a few seconds after docking
        target = station.bus / "port-1" / "card" / growing.relative_to(rec / "card")
        for _ in range(12):
            if stop.wait(0.25):
                return
            with open(target, "ab") as f:
                f.write(os.urandom(200_000))

    station.dock(1, rec)
    t = threading.Thread(target=record)
    t.start()
    try:
        station.wait_state(1, "complete")
    finally:
        stop.set()
        t.join()
    items = station.api("/api/v1/files")["items"]
    grown = [i for i in items if i["name"] == growing.name]
    assert len(grown) == 1
    assert grown[0]["size"] == 2 * MB + 12 * 200_000  # the whole, final file


def test_odd_but_legal_cards(station: StationProc) -> None:
    """0-byte files, names differing only in case, the same name in two folders."""
    rec = station.build(RecorderSpec(serial="P000001", officer_no="830001", files=0, imp=0))
    card = rec / "card"
    for rel, data in {
        "DCIM/100ANDRO/830001_P000001_20261120100000_0001.AVI": b"",
        "DCIM/100ANDRO/a.jpg": b"lower",
        "DCIM/100ANDRO/A.JPG": b"upper",
        "DCIM/101ANDRO/a.jpg": b"important twin",
        "Record/a.jpg": b"other vendor twin",
    }.items():
        (card / rel).parent.mkdir(parents=True, exist_ok=True)
        (card / rel).write_bytes(data)
    ledger = Ledger()
    ledger.add("P000001", "830001", rec)
    docked = station.dock(2, rec)
    station.wait_state(2, "complete")
    _assert_invariants(station, ledger, {"P000001": docked})
    items = station.api("/api/v1/files")["items"]
    assert len({i["stored_path"] for i in items}) == ledger.total_files
    imp = {i["card_path"]: i["important"] for i in items}
    assert imp["DCIM/101ANDRO/a.jpg"] is True and imp["DCIM/100ANDRO/a.jpg"] is False


def test_hostile_names_stay_inside_the_recorders_folder(station: StationProc) -> None:
    rec = station.build(RecorderSpec(serial="Q000001", officer_no="840001", files=0, imp=0))
    card = os.fsencode(rec / "card")
    names = [
        b"..AVI",
        b"...",
        b"-rf.AVI",
        b"CON.AVI",
        b"nul",
        b"a\x01b\x1fc.AVI",
        b"tab\tname.JPG",
        b"\xff\xfe invalid utf8.AVI",
        "张三_0001.AVI".encode("gbk"),
        b"back\\slash.AVI",
        b"x" * 250 + b".AVI",
        b" .AVI",
        b"evil\xe2\x80\xaeIVA.exe",
    ]
    os.makedirs(os.path.join(card, b"DCIM", b"100ANDRO"))
    for i, n in enumerate(names):
        with open(os.path.join(card, b"DCIM", b"100ANDRO", n), "wb") as f:
            f.write(b"hostile %d" % i)
    ledger = Ledger()
    ledger.add("Q000001", "840001", rec)
    docked = station.dock(7, rec)
    station.wait_state(7, "complete")
    _assert_invariants(station, ledger, {"Q000001": docked})
    items = station.api("/api/v1/files")["items"]
    assert len(items) == ledger.total_files == len(names) + 1  # and the device log
    base = station.disks[0] / "840001" / "Q000001"
    for i in items:
        p = Path(i["stored_path"])
        assert p.resolve().is_relative_to(base.resolve()), p
        assert p.parent.parent == base
    rows = {bytes(r[0]) for r in station.query("SELECT card_path FROM files")}
    assert {b"DCIM/100ANDRO/" + n for n in names} <= rows  # the original bytes are kept


@needs_root
def test_links_and_device_nodes_on_the_card_are_never_followed(station: StationProc) -> None:
    rec = station.build(
        RecorderSpec(serial="R000001", officer_no="850001", files=1, imp=0, size_mb=0.5)
    )
    card = rec / "card"
    (card / "DCIM" / "passwd.JPG").symlink_to("/etc/passwd")
    (card / "linked").symlink_to("/etc")
    os.mkfifo(card / "DCIM" / "fifo.AVI")
    os.mknod(card / "DCIM" / "null.AVI", 0o600 | 0o020000, os.makedev(1, 3))
    docked = station.dock(8, rec)
    station.wait_state(8, "complete")
    names = {i["name"] for i in station.api("/api/v1/files")["items"]}
    assert not names & {"passwd.JPG", "fifo.AVI", "null.AVI", "passwd", "hosts"}
    assert (docked / "card" / "DCIM" / "passwd.JPG").is_symlink()  # left alone
    assert Path("/etc/passwd").exists()


def test_a_card_folder_that_links_out_of_the_bus_is_refused(station: StationProc,
                                                            tmp_path: Path) -> None:  # fmt: skip
    outside = tmp_path / "outside"
    (outside / "DCIM").mkdir(parents=True)
    (outside / "DCIM" / "secret.JPG").write_bytes(b"not the recorder's")
    rec = station.build(RecorderSpec(serial="L000001", officer_no="850002", files=0, imp=0))
    shutil.rmtree(rec / "card")
    (rec / "card").symlink_to(outside)
    station.dock(6, rec)
    slot = station.wait_state(6, "error", "held")
    assert "link" in json.dumps(slot), slot
    assert station.api("/api/v1/files")["total"] == 0
    assert (outside / "DCIM" / "secret.JPG").read_bytes() == b"not the recorder's"


@needs_root
def test_disk_full_mid_file_moves_the_whole_file(make_station) -> None:
    st = make_station(start=False, store={"min_free_mb": 1, "sync_every_mb": 2})
    st.wrapper = tmpfs_disks((st.disks[0], "40m"), (st.disks[1], "200m"))
    st.start()
    rec = st.build(RecorderSpec(serial="S000001", officer_no="860001", files=0, imp=0, read_mb_s=5))
    big = rec / "card" / "DCIM" / "100ANDRO" / "860001_S000001_20261120110000_0001.AVI"
    big.parent.mkdir(parents=True)
    media.make_video(big, 20 * MB)
    ledger = Ledger()
    ledger.add("S000001", "860001", rec)
    docked = st.dock(1, rec)
    wait_for(lambda: st.slot(1)["bytes_done"] > 6 * MB, 120, "the copy to be under way")
    # something else fills disk 1 while the file is being written to it
    st.in_namespace("sh", "-c", f"head -c 40M /dev/zero > {st.disks[0]}/filler || true")
    st.wait_state(1, "complete")
    items = [i for i in st.api("/api/v1/files")["items"] if i["name"] == big.name]
    assert len(items) == 1 and items[0]["stored_path"].startswith(str(st.disks[1]))
    assert (
        st.in_namespace("sha256sum", items[0]["stored_path"]).split()[0]
        == ledger.sources["S000001"][1][b"DCIM/100ANDRO/" + big.name.encode()][1]
    )
    moved = st.query("SELECT data FROM events WHERE kind = 'transfer_moved'")
    assert moved and json.loads(moved[0][0])["offset"] > 0  # the prefix travelled
    assert card_is_empty(docked)


def card_is_empty(path: Path) -> bool:
    return not any(p.is_file() for p in (path / "card").rglob("*"))


def test_disk_io_error_takes_the_disk_out_of_use(make_station) -> None:
    st = make_station(start=False)
    st.env = {"STATION_FAILPOINTS": f"store_write_eio:{st.disks[0]}"}
    st.start()
    rec = st.build(RecorderSpec(serial="T000001", officer_no="870001", files=4, imp=1, size_mb=1.0))
    ledger = Ledger()
    ledger.add("T000001", "870001", rec)
    docked = st.dock(3, rec)
    st.wait_state(3, "complete")
    _assert_invariants(st, ledger, {"T000001": docked})
    status = st.api("/api/v1/status")
    assert all(
        i["stored_path"].startswith(str(st.disks[1])) for i in st.api("/api/v1/files")["items"]
    )
    assert [d["health"] for d in status["disks"]] == ["failed", "healthy"]
    assert "disk_unhealthy" in {a["code"] for a in status["alarms"]}


def test_recorder_clock_years_off(station: StationProc) -> None:
    rec = station.build(
        RecorderSpec(
            serial="U000001",
            officer_no="880001",
            files=2,
            imp=0,
            size_mb=0.5,
            clock_offset_s=-3 * 365 * 86400,
        )
    )
    station.dock(5, rec)
    station.wait_state(5, "complete")
    alarms = {a["code"] for a in station.api("/api/v1/status")["alarms"]}
    assert "recorder_clock_drift" in alarms
    (drift,) = station.query("SELECT clock_drift_s FROM collection_sessions")[0]
    assert drift == -3 * 365 * 86400
