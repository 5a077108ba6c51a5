"""The two-disk store on real, really full filesystems (tmpfs in a private namespace)."""

from __future__ import annotations

from pathlib import Path

from conftest import StationProc, card_hashes, needs_root, tmpfs_disks, wait_for

from station.sim.recorder import RecorderSpec

pytestmark = needs_root


def _start_on_tmpfs(make_station, sizes: tuple[str, str], **overrides) -> StationProc:
    st = make_station(start=False, **overrides)
    st.wrapper = tmpfs_disks((st.disks[0], sizes[0]), (st.disks[1], sizes[1]))
    st.start()
    return st


def _stored_hashes(st: StationProc, paths: list[str]) -> dict[str, str]:
    out = st.in_namespace("sha256sum", *paths)
    return {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in out.splitlines()}


def test_switches_disk_when_the_first_fills(make_station) -> None:
    st = _start_on_tmpfs(make_station, ("24m", "256m"), store={"min_free_mb": 4})
    rec = st.build(
        RecorderSpec(serial="G000001", officer_no="600001", files=10, imp=2, size_mb=4.0), seed=7
    )
    source = card_hashes(rec)
    st.dock(1, rec)
    st.wait_state(1, "complete", timeout=240)

    items = st.api("/api/v1/files", limit=1000)["items"]
    assert len(items) == len(source)
    on = {str(d): [i for i in items if i["stored_path"].startswith(f"{d}/")] for d in st.disks}
    assert on[str(st.disks[0])] and on[str(st.disks[1])], "collection moved on to disk 2"
    assert sum(map(len, on.values())) == len(items)  # each file on exactly one disk
    stored = _stored_hashes(st, [i["stored_path"] for i in items])
    by_name = {Path(k).name: v for k, v in source.items()}
    for i in items:
        _size, digest = by_name[i["name"]]
        assert stored[i["stored_path"]] == digest == i["sha256"]  # whole, never split
    for d in st.disks:
        assert st.in_namespace("ls", "-A", str(d / ".staging")) == ""
    disks = st.api("/api/v1/status")["disks"]
    assert [d["active"] for d in disks] == [False, True]
    free0 = disks[0]["free_bytes"]
    assert free0 >= 4 * 1024 * 1024  # min_free_mb honoured


def test_all_disks_full_raises_storage_full_and_keeps_the_rest(make_station) -> None:
    st = _start_on_tmpfs(make_station, ("12m", "12m"), store={"min_free_mb": 2})
    rec = st.build(
        RecorderSpec(serial="H000001", officer_no="700001", files=12, imp=1, size_mb=3.0), seed=3
    )
    source = card_hashes(rec)
    docked = st.dock(6, rec)

    slot = st.wait_state(6, "error", timeout=240)
    assert "storage full" in slot["error"]
    status = st.api("/api/v1/status")
    assert "storage_full" in {a["code"] for a in status["alarms"]}

    items = st.api("/api/v1/files", limit=1000)["items"]
    left = card_hashes(docked)
    assert items and left, "some files stored, the rest still on the recorder"
    stored_names = {i["name"] for i in items}
    left_names = {Path(p).name for p in left}
    assert stored_names.isdisjoint(left_names)
    assert len(stored_names) + len(left_names) == len(source)
    for path, (size, digest) in left.items():
        assert source[path] == (size, digest)  # untouched on the card
    stored = _stored_hashes(st, [i["stored_path"] for i in items])
    assert sorted(stored.values()) == sorted(i["sha256"] for i in items)
    # still docked and waiting: nothing more is deleted from the card
    wait_for(lambda: st.slot(6)["state"] == "error", 10)
    assert card_hashes(docked) == left
