"""The store: the disk policy, space promised to transfers, and where files land."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from station.store import durable as durable_mod
from station.store.disks import (
    MARKER,
    MB,
    DiskSpace,
    Store,
    choose_disk,
    stored_relpath,
    unique_target,
)
from station.store.durable import make_dirs_durable

# --- choose_disk: the pure policy ----------------------------------------------------------


def _disks(*free: int | None) -> list[DiskSpace]:
    """One DiskSpace per value: None is an unusable disk."""
    return [DiskSpace(False, 0) if f is None else DiskSpace(True, f) for f in free]


def test_active_disk_is_kept_while_it_has_room() -> None:
    disks = _disks(1000, 1000)
    assert choose_disk(disks, 0, 100, 0) == 0
    # disk 0 has room too, but the station has moved on to disk 1: stay there
    assert choose_disk(disks, 1, 100, 0) == 1


def test_exact_boundary_stays_one_byte_more_moves_on() -> None:
    # free - reserved - size == min_free: still room
    disks = [DiskSpace(True, 1000, reserved=200), DiskSpace(True, 10_000)]
    assert choose_disk(disks, 0, 700, 100) == 0
    # one byte more and disk 0 would fall below min_free: the next disk
    assert choose_disk(disks, 0, 701, 100) == 1
    # the same boundary with nothing reserved
    assert choose_disk(_disks(1000, 0), 0, 900, 100) == 0
    assert choose_disk(_disks(1000, 0), 0, 901, 100) is None


def test_reserved_space_counts_as_used() -> None:
    disks = [DiskSpace(True, 1000, reserved=950), DiskSpace(True, 1000)]
    assert choose_disk(disks, 0, 100, 0) == 1


def test_wraps_around_to_the_first_disk() -> None:
    disks = _disks(5000, 10, 10)
    assert choose_disk(disks, 2, 100, 0) == 0
    assert choose_disk(disks, 1, 100, 0) == 0


def test_skips_unusable_disks() -> None:
    # disk 1 is missing (reported with huge free space anyway): never chosen
    disks = [DiskSpace(True, 10), DiskSpace(False, 10**12), DiskSpace(True, 5000)]
    assert choose_disk(disks, 0, 100, 0) == 2
    assert choose_disk(disks, 1, 100, 0) == 2


def test_none_when_nothing_fits() -> None:
    assert choose_disk(_disks(100, 100), 0, 101, 0) is None
    assert choose_disk(_disks(None, None), 0, 1, 0) is None
    assert choose_disk([], 0, 1, 0) is None


def test_a_file_is_never_split_across_disks() -> None:
    # 600 + 600 bytes of room in all, but no single disk holds 700 bytes
    assert choose_disk(_disks(700, 700), 0, 700, 100) is None
    assert choose_disk(_disks(700, 800), 0, 700, 100) == 1


def test_zero_size_asks_whether_any_disk_is_above_min_free() -> None:
    assert choose_disk(_disks(99, 100), 0, 0, 100) == 1
    assert choose_disk(_disks(99, 99), 0, 0, 100) is None


space = st.builds(
    DiskSpace,
    usable=st.booleans(),
    free=st.integers(0, 10_000),
    reserved=st.integers(0, 3_000),
)


@given(
    disks=st.lists(space, min_size=1, max_size=5),
    active=st.integers(0, 4),
    size=st.integers(0, 10_000),
    min_free=st.integers(0, 3_000),
)
def test_choose_disk_is_the_first_with_room_from_active(
    disks: list[DiskSpace], active: int, size: int, min_free: int
) -> None:
    active %= len(disks)

    def room(d: DiskSpace) -> bool:
        return d.usable and d.free - d.reserved - size >= min_free

    order = [(active + k) % len(disks) for k in range(len(disks))]
    expected = next((i for i in order if room(disks[i])), None)
    assert choose_disk(disks, active, size, min_free) == expected


# --- Store: reservations --------------------------------------------------------------------


def _store(tmp_path: Path, free_mb: list[int], min_free_mb: int = 1) -> Store:
    """A store on real folders whose free space is fixed (statvfs patched per disk)."""
    paths = []
    for i in range(len(free_mb)):
        p = tmp_path / f"disk{i + 1}"
        p.mkdir()
        paths.append(p)
    s = Store(paths, min_free_mb)
    for d, free in zip(s.disks, free_mb, strict=True):
        d.usage = lambda free=free: (1000 * MB, free * MB)  # type: ignore[method-assign]
        (d.path / MARKER).write_text("{}")  # as station.store.identity leaves a disk in use
        d.identity = f"test-disk-{d.index}"
    s.prepare()
    return s


def test_reserve_promises_space_and_release_gives_it_back(tmp_path: Path) -> None:
    s = _store(tmp_path, [11, 100])  # 10 MB usable on disk 1 above min_free
    a = s.reserve(6 * MB)
    assert a is s.disks[0]
    # 4 MB left on disk 1: a second 6 MB file goes to disk 2, which becomes active
    b = s.reserve(6 * MB)
    assert b is s.disks[1]
    assert s.active == 1
    assert s._reserved == [6 * MB, 6 * MB]
    s.release(a, 6 * MB)
    s.release(b, 6 * MB)
    assert s._reserved == [0, 0]
    # disk 1 has room again, but the active disk is kept while it has room
    assert s.reserve(1 * MB) is s.disks[1]


def test_pick_promises_nothing(tmp_path: Path) -> None:
    s = _store(tmp_path, [11, 100])
    assert s.pick(10 * MB) is s.disks[0]
    assert s.pick(10 * MB) is s.disks[0]
    assert s._reserved == [0, 0]
    assert s.pick(11 * MB) is s.disks[1]
    assert s.active == 0  # only a promise moves the active disk
    assert s.pick(200 * MB) is None


def test_release_never_goes_negative(tmp_path: Path) -> None:
    s = _store(tmp_path, [100, 100])
    d = s.reserve(MB)
    assert d is not None
    s.release(d, 5 * MB)
    assert s._reserved == [0, 0]


def test_reserve_none_when_all_full_and_exclude_is_honoured(tmp_path: Path) -> None:
    s = _store(tmp_path, [5, 5])
    assert s.reserve(10 * MB) is None
    assert s._reserved == [0, 0]
    assert s.reserve(MB, exclude=frozenset({0})) is s.disks[1]
    assert s.reserve(MB, exclude=frozenset({0, 1})) is None


def test_reserve_on_checks_room_on_that_disk(tmp_path: Path) -> None:
    s = _store(tmp_path, [11, 100])
    assert s.reserve_on(s.disks[0], 10 * MB)
    assert not s.reserve_on(s.disks[0], 1)  # exactly at min_free now
    assert s._reserved == [10 * MB, 0]
    assert s.reserve_on(s.disks[1], 50 * MB)
    assert s._reserved == [10 * MB, 50 * MB]


def test_reserve_on_another_disk_does_not_move_the_active_disk(tmp_path: Path) -> None:
    s = _store(tmp_path, [20, 100])
    assert s.reserve(30 * MB) is s.disks[1]  # disk 1 cannot hold it: disk 2 is active now
    assert s.active == 1
    # a job placed on disk 1 before the switch resumes there
    assert s.reserve_on(s.disks[0], 5 * MB)
    assert s.active == 1
    assert s.reserve(MB) is s.disks[1]


def test_failed_or_missing_disk_is_not_used(tmp_path: Path) -> None:
    s = _store(tmp_path, [100, 100])
    s.take_out_of_use(s.disks[0], "I/O error")
    assert s.reserve(MB) is s.disks[1]
    (tmp_path / "two").mkdir()
    s2 = _store(tmp_path / "two", [100, 100])
    shutil.rmtree(s2.disks[0].path)
    assert s2.reserve(MB) is s2.disks[1]
    assert not s2.reserve_on(s2.disks[0], MB)


def test_concurrent_reservations_never_overcommit(tmp_path: Path) -> None:
    # 10 files of 1 MB fit on each disk above min_free; 40 workers ask at once
    s = _store(tmp_path, [11, 11], min_free_mb=1)
    n = 40
    barrier = threading.Barrier(n)
    got: list[int | None] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait(timeout=60)
        d = s.reserve(MB)
        with lock:
            got.append(None if d is None else d.index)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == n
    assert got.count(0) == 10
    assert got.count(1) == 10
    assert got.count(None) == 20
    assert s._reserved == [10 * MB, 10 * MB]


def test_concurrent_reserve_and_release_balance_out(tmp_path: Path) -> None:
    s = _store(tmp_path, [500, 500])
    errors: list[str] = []

    def worker(k: int) -> None:
        for i in range(200):
            size = (k * 7 + i) % 5 * 100_000 + 1
            d = s.reserve(size) if i % 2 else s.disks[k % 2]
            if d is None or (not i % 2 and not s.reserve_on(d, size)):
                errors.append(f"worker {k}: no room at step {i}")
                return
            s.release(d, size)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert s._reserved == [0, 0]


# --- where a file lands ------------------------------------------------------------------


def test_stored_relpath_is_officer_serial_date_name() -> None:
    rel = stored_relpath("100001", "B100001", dt.date(2026, 11, 21), "x_0001IMP.AVI")
    assert rel == Path("100001/B100001/2026-11-21/x_0001IMP.AVI")
    assert not rel.is_absolute()


def test_stored_relpath_without_officer_or_serial() -> None:
    rel = stored_relpath("", "", dt.date(2026, 1, 2), "a.AVI")
    assert rel.parts == ("unknown", "unknown", "2026-01-02", "a.AVI")


@pytest.mark.parametrize(
    "hostile",
    ["../x", "..", ".", "/etc", "a/b/c", "..\\..\\x", "~root", "-rf", "CON", "a\x00b", " "],
)
def test_hostile_officer_or_serial_stays_one_component(tmp_path: Path, hostile: str) -> None:
    rel = stored_relpath(hostile, hostile, dt.date(2026, 11, 21), "f.AVI")
    assert len(rel.parts) == 4
    assert rel.parts[2:] == ("2026-11-21", "f.AVI")
    for part in rel.parts[:2]:
        assert part not in ("", ".", "..")
        assert "/" not in part and "\\" not in part and "\x00" not in part
    root = tmp_path / "disk"
    assert (root / rel).resolve().is_relative_to(root.resolve())


def test_unique_target_numbers_taken_names(tmp_path: Path) -> None:
    assert unique_target(tmp_path, "a.AVI") == tmp_path / "a.AVI"
    (tmp_path / "a.AVI").touch()
    assert unique_target(tmp_path, "a.AVI") == tmp_path / "a~2.AVI"
    (tmp_path / "a~2.AVI").touch()
    assert unique_target(tmp_path, "a.AVI") == tmp_path / "a~3.AVI"
    # no extension
    (tmp_path / "LOG").touch()
    assert unique_target(tmp_path, "LOG") == tmp_path / "LOG~2"
    # only the last extension is kept apart
    (tmp_path / "x.tar.gz").touch()
    assert unique_target(tmp_path, "x.tar.gz") == tmp_path / "x.tar~2.gz"
    # a folder of that name is taken too
    (tmp_path / "d.AVI").mkdir()
    assert unique_target(tmp_path, "d.AVI") == tmp_path / "d~2.AVI"


def test_make_dirs_durable_creates_and_fsyncs_each_new_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    real = durable_mod.fsync_dir
    monkeypatch.setattr(durable_mod, "fsync_dir", lambda p: (synced.append(p), real(p)))
    root = tmp_path / "disk"
    root.mkdir()
    target = root / "100001" / "B100001" / "2026-11-21"
    make_dirs_durable(target, root)
    assert target.is_dir()
    # the folder holding each new entry is made durable, outermost first
    assert synced == [root, root / "100001", root / "100001" / "B100001"]

    synced.clear()
    make_dirs_durable(target, root)  # already there: nothing to do
    assert synced == []

    synced.clear()
    other = root / "100001" / "C2" / "2026-11-21"
    make_dirs_durable(other, root)
    assert other.is_dir()
    assert synced == [root / "100001", root / "100001" / "C2"]


def test_make_dirs_durable_tolerates_a_concurrent_mkdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "disk"
    root.mkdir()
    target = root / "a" / "b"
    real_mkdir = Path.mkdir

    def racing_mkdir(self: Path, *args: object, **kwargs: object) -> None:
        real_mkdir(self, *args, **kwargs)  # another worker made it first...
        real_mkdir(self, *args, **kwargs)  # ...so ours raises FileExistsError

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    make_dirs_durable(target, root)
    assert target.is_dir()


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 1 << 20, (1 << 20) + 7, 5 * (1 << 20) + 123])
def test_uncached_read_back_hashes_exactly(tmp_path: Path, size: int) -> None:
    """The read-back (O_DIRECT where the filesystem allows it) hashes every byte, tail included."""
    import hashlib
    import os

    from station.ingest.transfer import hash_file

    data = os.urandom(size)
    for folder in (tmp_path, Path("/dev/shm")):  # a disk filesystem, and tmpfs (no O_DIRECT)
        p = folder / f"readback-{os.getpid()}-{size}"
        p.write_bytes(data)
        try:
            assert hash_file(p, uncached=True).hexdigest() == hashlib.sha256(data).hexdigest()
        finally:
            p.unlink()
