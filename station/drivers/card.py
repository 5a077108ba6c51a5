"""The recorder's card: its mass-storage files, reached as a folder.

Once a recorder is in mass-storage mode its card is an ordinary FAT32/exFAT
disk; the station mounts it (read-write, since collected files are deleted)
and reads it through `FolderCard`. The simulated recorder's card is a folder
too, so both go through exactly this code. A card is hostile input: links,
device nodes and FIFOs are never followed or opened, and paths are walked
one component at a time with O_NOFOLLOW.
"""

from __future__ import annotations

import abc
import errno
import fcntl
import os
import stat
from collections.abc import Callable
from pathlib import Path

from station.drivers.base import CardFile, CardReadError, CardStream, DeviceGone

ALIGN = 4096  # O_DIRECT offsets, lengths and buffers are multiples of this


def set_direct(fd: int, on: bool) -> bool:
    """Switch O_DIRECT on or off for `fd`; False when the filesystem refuses it."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError:
        return False
    return True


def split_card_path(path: bytes) -> list[bytes]:
    """The components of a card path; `..`, `.`, empty and absolute paths are refused."""
    parts = [p for p in path.split(b"/") if p]
    if not parts or any(p in (b".", b"..") for p in parts) or path.startswith(b"/"):
        raise CardReadError(f"refusing card path {path!r}")
    return parts


class Card(abc.ABC):
    """The files on a docked recorder's card."""

    bytes_read: int = 0  # card bytes read, for resume accounting

    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the card is still attached."""

    @abc.abstractmethod
    def list_files(self) -> list[CardFile]:
        """Every regular file on the card; links and device nodes are never followed."""

    @abc.abstractmethod
    def open_file(self, path: bytes, offset: int = 0, *, direct: bool = False) -> CardStream:
        """Open a card file for reading, positioned at `offset`; `direct`: around the page
        cache where the card allows it (the caller's buffers are page-aligned)."""

    @abc.abstractmethod
    def stat_file(self, path: bytes) -> CardFile | None:
        """The file's current size and time, None if it is gone (it may still be growing)."""

    @abc.abstractmethod
    def delete_file(self, path: bytes) -> None:
        """Remove one file (never a format: GAT947.md section 4)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the card (the station unmounts it)."""

    def read_range(self, path: bytes, offset: int, size: int) -> bytes:
        """Read exactly `size` bytes at `offset` (short at end of file)."""
        stream = self.open_file(path, offset)
        try:
            out = bytearray(size)
            view = memoryview(out)
            got = 0
            while got < size:
                n = stream.readinto(view[got:])
                if n == 0:
                    break
                got += n
            return bytes(out[:got])
        finally:
            stream.close()


class FolderCard(Card):
    """A card whose root is a folder: a mounted card, or the simulated one."""

    def __init__(self, root: Path, alive: Callable[[], bool] = lambda: True) -> None:
        self.root = os.fsencode(root)
        self._alive = alive
        self.bytes_read = 0

    def alive(self) -> bool:
        return self._alive()

    def check(self) -> None:
        if not self._alive():
            raise DeviceGone(os.fsdecode(self.root))

    def _check_root(self) -> None:
        """The card's root must be the folder itself, not a link elsewhere (as a mount
        point never is): a simulated bus whose `card` links out of it is refused."""
        if os.path.islink(self.root):
            raise CardReadError(f"{os.fsdecode(self.root)} is a link, not the card's folder")

    def list_files(self) -> list[CardFile]:
        self.check()
        self._check_root()
        out: list[CardFile] = []
        stack = [b""]
        while stack:
            rel = stack.pop()
            try:
                entries = list(os.scandir(os.path.join(self.root, rel) if rel else self.root))
            except OSError as e:
                self.check()
                raise CardReadError(f"card folder {rel!r}: {e.strerror}") from None
            for e in entries:
                path = rel + b"/" + e.name if rel else e.name
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue  # vanished while listing
                if stat.S_ISDIR(st.st_mode):
                    stack.append(path)
                elif stat.S_ISREG(st.st_mode):
                    out.append(CardFile(path, st.st_size, st.st_mtime))
                # symlinks, device nodes, fifos: never followed, never collected
        out.sort(key=lambda f: f.path)
        return out

    def open_beneath(self, path: bytes) -> tuple[int, int, bytes]:
        """Walk to a regular file with O_NOFOLLOW at every step: (folder fd, file fd, name)."""
        parts = split_card_path(path)
        try:
            dfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as e:
            self._check_root()
            raise CardReadError(f"card folder: {e.strerror}") from None
        try:
            for p in parts[:-1]:
                nxt = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
                os.close(dfd)
                dfd = nxt
            # non-blocking, so a FIFO planted on the card cannot hang the open
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
        except OSError as e:
            os.close(dfd)
            self.check()
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise CardReadError(f"{path!r} is a link, not a file") from None
            raise CardReadError(f"{path!r}: {e.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            os.close(dfd)
            raise CardReadError(f"{path!r} is not a regular file")
        os.set_blocking(fd, True)
        return dfd, fd, parts[-1]

    def open_file(self, path: bytes, offset: int = 0, *, direct: bool = False) -> CardStream:
        dfd, fd, _ = self.open_beneath(path)
        os.close(dfd)
        os.lseek(fd, offset, os.SEEK_SET)
        return FolderStream(self, fd, direct=direct and offset % ALIGN == 0)

    def stat_file(self, path: bytes) -> CardFile | None:
        self.check()
        try:
            dfd, fd, _ = self.open_beneath(path)
        except CardReadError:
            return None
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
            os.close(dfd)
        return CardFile(path, st.st_size, st.st_mtime)

    def delete_file(self, path: bytes) -> None:
        self.check()
        dfd, fd, name = self.open_beneath(path)
        try:
            os.close(fd)
            os.unlink(name, dir_fd=dfd)
            os.fsync(dfd)
        except OSError as e:
            self.check()
            raise CardReadError(f"{path!r} could not be deleted: {e.strerror}") from None
        finally:
            os.close(dfd)


class FolderStream:
    """A card file open for reading; an error becomes DeviceGone if the card went away.

    Reads go around the page cache (O_DIRECT) while the offset and the caller's buffer
    allow it: the bytes come from the card, without a copy through cached pages that
    nobody reads again. The first read that does not fit (the file's tail, an unaligned
    buffer, a filesystem that refuses it) switches to ordinary reads.
    """

    def __init__(self, card: FolderCard, fd: int, *, direct: bool = False) -> None:
        self.card = card
        self.fd = fd
        self.direct = direct and set_direct(fd, True)

    def readinto(self, buffer: memoryview) -> int:
        self.card.check()
        try:
            try:
                n = os.readv(self.fd, [buffer])
            except OSError as e:
                if e.errno != errno.EINVAL or not self.direct:
                    raise
                set_direct(self.fd, False)
                self.direct = False
                n = os.readv(self.fd, [buffer])
        except OSError as e:
            self.card.check()
            raise CardReadError(f"read failed: {e.strerror}") from None
        self.card.bytes_read += n
        return n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
