"""The read-back check: the stored bytes must be the streamed bytes, or the card keeps them.

One cryptographic pass per byte (issue #15): SHA-256 of the bytes as they stream from the
card is the evidence hash, and the read-back compares a fast digest (XXH3-128) of the
stored file, read from the disk itself, with the one computed on the same buffers while
streaming. These tests change the stored bytes behind the station's back in every way
the check must see, with the card's second look switched off (so only the read-back can
catch it), and prove that nothing is committed and the card keeps its file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from sqlalchemy import select
from test_evidence_safety import Ingest, card_with

from station.catalog import IngestJob, StoredFile
from station.catalog.models import Event
from station.ingest import transfer as ingest_mod
from station.ingest.transfer import VerifyFailed

NAME = "100001_B1_20261201080000_0001.MP4"
SIZE = 3 * 1024 * 1024 + 4321  # whole chunks (direct writes) and an unaligned tail


def nothing_kept(catalog, root: Path, data: bytes) -> None:
    """The card still has its file, the catalog no stored row, and the job failed."""
    assert (root / "DCIM" / NAME).read_bytes() == data
    with catalog.read() as s:
        assert s.scalars(select(StoredFile)).all() == []
        jobs = s.scalars(select(IngestJob)).all()
        assert [j.state for j in jobs] == ["failed"]
        kinds = [e.kind for e in s.scalars(select(Event))]
    assert "verify_failed" in kinds
    assert "file_stored" not in kinds and "card_file_deleted" not in kinds


def flip_on_disk(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x01]))
        f.flush()
        os.fsync(f.fileno())


@pytest.mark.parametrize("at", [0, 1 << 20, SIZE - 1])
def test_a_stored_byte_changed_before_the_read_back_is_caught(store_env, tmp_path, at) -> None:
    """The temp file changes on the disk between the copy and its read-back (a bad sector,
    another writer): the read-back digest differs, nothing is committed or cleared."""
    catalog, disk = store_env
    data = os.urandom(SIZE)
    root = card_with(tmp_path, NAME, data)
    ing = Ingest(catalog, disk, root, card_recheck="off")
    cf = next(f for f in ing.card.list_files() if f.path == f"DCIM/{NAME}".encode())
    finish = ing.fi.copy(cf)
    with catalog.read() as s:
        (job,) = s.scalars(select(IngestJob)).all()
    flip_on_disk(Path(job.temp_path), at)
    with pytest.raises(VerifyFailed, match="read back"):
        finish()
    nothing_kept(catalog, root, data)


def test_bytes_written_unlike_the_bytes_hashed_are_caught(store_env, tmp_path, monkeypatch):
    """The write path stores other bytes than the ones that were hashed (a bad controller,
    a buffer reused too early): the digest of what the disk holds is not the streamed one."""
    catalog, disk = store_env
    data = os.urandom(SIZE)
    root = card_with(tmp_path, NAME, data)
    real = ingest_mod.write_all
    calls = []

    def bad_write(fd: int, piece) -> None:
        calls.append(len(piece))
        if len(calls) == 2:  # the second chunk reaches the disk with one bit changed
            changed = bytearray(piece)
            changed[12345] ^= 0x80
            piece[:] = changed  # the caller's buffer: hashed already, then overwritten
        real(fd, piece)

    monkeypatch.setattr(ingest_mod, "write_all", bad_write)
    ing = Ingest(catalog, disk, root, card_recheck="off")
    with pytest.raises(VerifyFailed, match="read back"):
        ing.collect(f"DCIM/{NAME}".encode())
    assert len(calls) >= 2
    nothing_kept(catalog, root, data)


def test_the_read_back_reads_the_disk_not_the_page_cache(store_env, tmp_path, monkeypatch):
    """The read-back of the stored file bypasses the page cache (O_DIRECT, or its pages
    dropped first where a filesystem refuses O_DIRECT): a copy that only the page cache
    holds right proves nothing about the disk."""
    catalog, disk = store_env
    data = os.urandom(SIZE)
    root = card_with(tmp_path, NAME, data)
    ing = Ingest(catalog, disk, root, card_recheck="off")
    cf = next(f for f in ing.card.list_files() if f.path == f"DCIM/{NAME}".encode())
    finish = ing.fi.copy(cf)
    with catalog.read() as s:
        (job,) = s.scalars(select(IngestJob)).all()
    temp = os.path.realpath(job.temp_path)
    seen: list[str] = []
    real_open, real_fadvise = os.open, os.posix_fadvise
    fds: dict[int, str] = {}

    def spy_open(path, flags, *a, **kw):
        fd = real_open(path, flags, *a, **kw)
        if os.path.realpath(path) == temp and not flags & (os.O_WRONLY | os.O_RDWR):
            fds[fd] = "direct" if flags & os.O_DIRECT else "cached"
        return fd

    def spy_fadvise(fd, offset, length, advice):
        if fds.get(fd) == "cached" and advice == os.POSIX_FADV_DONTNEED:
            fds[fd] = "dropped"
        return real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(ingest_mod.os, "open", spy_open)
    monkeypatch.setattr(ingest_mod.os, "posix_fadvise", spy_fadvise)
    out = finish()
    seen = list(fds.values())
    assert out.kind == "stored"
    assert seen and all(s in ("direct", "dropped") for s in seen), seen
    assert out.sha256 == hashlib.sha256(data).hexdigest()


def test_a_resumed_prefix_changed_after_its_check_is_caught(store_env, tmp_path) -> None:
    """A transfer resumes from its durable prefix; the prefix changes on the disk after the
    resume check read it and before the copy goes on from it: the hashes the copy carries
    on from are checked against the recorded prefix hash, so the changed prefix is never
    committed under a hash that would vouch for it."""
    catalog, disk = store_env
    data = os.urandom(SIZE)
    root = card_with(tmp_path, NAME, data)
    ing = Ingest(catalog, disk, root, card_recheck="off")
    fi = ing.fi
    fi.sync_every = 1 << 20
    cf = next(f for f in ing.card.list_files() if f.path == f"DCIM/{NAME}".encode())
    # the first docking is unplugged after two durable MiB
    done = []

    def progress(n: int) -> None:
        done.append(n)
        if sum(done) >= 2 << 20:
            fi.stop.set()

    fi.progress = progress
    with pytest.raises(ingest_mod.Interrupted):
        fi.copy(cf)
    with catalog.read() as s:
        (job,) = s.scalars(select(IngestJob)).all()
    assert job.durable_offset >= 1 << 20
    # the next docking resumes; the prefix is changed right after its resume check
    fi2 = ing.docking()
    real_resume = fi2._resume_offset

    def resume_then_change(job, cf):
        offset = real_resume(job, cf)
        assert offset > 0
        flip_on_disk(Path(job.temp_path), 100)
        return offset

    fi2._resume_offset = resume_then_change
    with pytest.raises(VerifyFailed):
        fi2.copy(cf)()
    assert (root / "DCIM" / NAME).read_bytes() == data
    with catalog.read() as s:
        assert s.scalars(select(StoredFile)).all() == []
    # and the docking after that collects the file whole
    out = ing.docking().copy(cf)()
    assert out.kind == "stored" and out.sha256 == hashlib.sha256(data).hexdigest()
    with catalog.read() as s:
        (f,) = s.scalars(select(StoredFile)).all()
    assert hashlib.sha256((disk / f.rel_path).read_bytes()).hexdigest() == out.sha256
    assert not (root / "DCIM" / NAME).exists()


def test_the_stored_sha256_is_of_the_stored_bytes(store_env, tmp_path) -> None:
    """The evidence hash in the catalog and the sidecar is the SHA-256 of the file as
    stored (what the scrubber, `catalog verify` and the central server check)."""
    catalog, disk = store_env
    data = os.urandom(SIZE)
    root = card_with(tmp_path, NAME, data)
    out = Ingest(catalog, disk, root).collect(f"DCIM/{NAME}".encode())
    with catalog.read() as s:
        (f,) = s.scalars(select(StoredFile)).all()
    assert f.sha256 == out.sha256 == hashlib.sha256(data).hexdigest()
    assert ingest_mod.hash_file(disk / f.rel_path).hexdigest() == f.sha256
