"""Every durable write of the station, in one place: what survives a power cut.

A write is durable when its bytes are on the medium (fsync) *and* the folder
entry that names it is too (fsync of the folder). A rename or link is only
durable once its folder is synced; a new folder only once its parent is.
Everything that must survive a power cut (stored footage, sidecars, disk
markers, anchors, configuration) goes through these functions, so the rule
lives once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from station import faults


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file, a removal) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(path: Path, root: Path) -> None:
    """Create `path` below `root` and fsync each parent whose entries changed."""
    missing = []
    p = path
    while not p.exists() and p != root and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        fsync_dir(d.parent)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until every byte is written (a short write is not an error)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "write returned no progress")
        view = view[n:]


def replace_file(path: Path, data: bytes, *, mode: int = 0o640, root: Path | None = None) -> Path:
    """Write `data` as `path` atomically and durably: a unique temp file in the same
    folder, every byte written and fsynced, renamed over `path`, the folder fsynced.

    `root`: create missing folders up to it durably. A crash leaves either the old
    file or the new one, never a torn one (a stray `.name.*` temp file at worst).
    """
    folder = path.parent
    if root is not None:
        make_dirs_durable(folder, root)
    else:
        folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        try:
            write_all(fd, data)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
    return path


def link_into_place(temp: Path, final: Path) -> None:
    """Give a finished temp file its final name, never replacing another file, durably."""
    try:
        os.link(temp, final)  # fails with EEXIST instead of overwriting evidence
        fsync_dir(final.parent)  # the new name is on the medium before the old one goes
        faults.crashpoint("link_before_unlink")
        os.unlink(temp)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if final.exists():
            raise FileExistsError(errno.EEXIST, "target exists", str(final)) from None
        os.rename(temp, final)  # filesystems without hard links
    fsync_dir(final.parent)
    fsync_dir(temp.parent)


def copy_prefix(src: Path, dst: Path, length: int) -> None:
    """Copy the first `length` bytes of `src` to a new file `dst`, durably (name included)."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        remaining = length
        while remaining:
            data = fi.read(min(remaining, 1 << 20))
            if not data:
                raise OSError(errno.EIO, f"{src} shorter than {length}")
            fo.write(data)
            remaining -= len(data)
        fo.flush()
        os.fdatasync(fo.fileno())
    fsync_dir(dst.parent)


def remove(path: Path) -> None:
    """Remove a file durably (gone already is fine)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_dir(path.parent)
