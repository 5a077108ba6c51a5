"""The mount helper: the one process that may mount, so the daemon does not need to.

Mounting needs CAP_SYS_ADMIN, and a process holding CAP_SYS_ADMIN can remount the
read-only file system of its own sandbox read-write. The daemon therefore runs without
it, and asks this helper (`station-mountd.service`, socket-activated on
`/run/station-mountd.sock`, root only) to attach and detach recorder cards.

A request is one JSON line on a Unix socket, with the daemon's mount namespace
(`/proc/self/ns/mnt`) passed alongside as a file descriptor (SCM_RIGHTS), since the
cards are mounted inside the daemon's private namespace, invisible to the rest of the
system:

    {"op": "mount", "kind": "kernel", "node": "/dev/sdb1",
     "target": "/run/station/cards/port-3.0123456789ab"}
    {"op": "unmount", "kind": "kernel", "lazy": false,
     "target": "/run/station/cards/port-3.0123456789ab"}

and the answer is `{"ok": true}` or `{"ok": false, "error": "..."}`. The helper trusts
nothing in the request: the target must be a plain folder `port-*` directly below the
card root it was started with; the source a block device below a USB device that is not
mounted anywhere (or, with `--images DIR`, a regular file below DIR: the installed
tests' card images); the filesystem is what blkid finds, vfat or exfat; and the mount
options are its own (`nosuid,nodev,noexec`, uid 0, umask 077, station/devices/mount.py). A
compromised daemon can therefore only ask for what the station does anyway: a USB card,
mounted harmlessly, in its own namespace.

Each request is served in a child process that enters the daemon's namespace
(setns(2) needs a single-threaded caller), checks there, and runs mount(8), umount(8) or
the FUSE driver.

Why one module of over 500 lines: it runs as root with CAP_SYS_ADMIN, so what a
privileged process executes is one file to audit (besides the standard library it takes
only the mount command line from station/devices/mount.py); every check it makes on a
request is here, next to the call it guards.

It serves the station daemon only: the asker (SO_PEERCRED, held as a pidfd) must be root
and in the daemon's cgroup (`/system.slice/station.service`, `--peer-cgroup`), or, outside
systemd (tests, the demo), the process given with `--peer-process` or one of its
descendants; and the namespace descriptor must be the asker's own (the root mount of the
namespace it opens is one of the asker's mounts, /proc/<pid>/mountinfo). Another root
process on the host, or a daemon passing on a namespace not its own, is refused, logged.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import ctypes
import json
import logging
import os
import re
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from station.devices.mount import CARD_FILESYSTEMS, HELPER_SOCKET, mount_command

log = logging.getLogger("station.devices.mountd")

CLONE_NEWNS = 0x00020000
MAX_REQUEST = 4096
TARGET_NAME = re.compile(r"port-[A-Za-z0-9_-]{1,32}\.[0-9a-f]{12}")
NODE = re.compile(r"/dev/[A-Za-z0-9_-]{1,32}")
CHILD_TIMEOUT_S = 60.0
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux 6.5
STATION_CGROUP = "/system.slice/station.service"


class Refused(Exception):
    """A request the helper does not carry out; the text goes back to the daemon."""


# --- who asks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peers:
    """Whom the helper serves: a process in one of `cgroups` (the daemon's unit), or one
    of `processes` or a descendant of one (outside systemd: tests, the demo)."""

    cgroups: tuple[str, ...] = (STATION_CGROUP,)
    processes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Peer:
    """The process at the other end of a connection: its pid, a pidfd that tells whether
    that very process is still there (a pid can be reused, a pidfd cannot), and the ids
    of the mounts of its namespace."""

    uid: int
    pid: int
    pidfd: int | None
    mount_ids: frozenset[int] = frozenset()

    def gone(self) -> bool:
        """Whether the asker has exited (its pid may now name another process)."""
        if self.pidfd is None:
            return not os.path.exists(f"/proc/{self.pid}")
        return bool(select.select([self.pidfd], [], [], 0)[0])


def _pidfd_pid(pidfd: int) -> int:
    with open(f"/proc/self/fdinfo/{pidfd}", encoding="ascii") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise OSError("no Pid in the pidfd's fdinfo")


def peer_of(conn: socket.socket) -> Peer:
    """Who is at the other end of `conn` (SO_PEERCRED; SO_PEERPIDFD where the kernel has
    it, else a pidfd opened at once)."""
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    pidfd: int | None = None
    try:
        pidfd = struct.unpack("i", conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4))[0]
        pid = _pidfd_pid(pidfd)
    except OSError:
        if pidfd is not None:
            os.close(pidfd)
            pidfd = None
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(pid)
    return Peer(uid, pid, pidfd)


def _cgroups(pid: int) -> list[str]:
    """The cgroup paths of `pid` that systemd keeps its units in: the unified hierarchy's
    (`0::`) and the legacy `name=systemd` one's."""
    paths = []
    with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
        for line in f:
            hid, controllers, path = line.rstrip("\n").split(":", 2)
            if (hid == "0" and not controllers) or controllers == "name=systemd":
                paths.append(path)
    return paths


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    return 0


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text(errors="replace").strip()
    except OSError:
        return "?"


def _mount_ids(pid: int) -> frozenset[int]:
    """The ids of the mounts in the namespace of `pid` (readable without ptrace access:
    the helper holds none of the daemon's capabilities, /proc/<pid>/ns/mnt needs them)."""
    ids = set()
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            with contextlib.suppress(IndexError, ValueError):
                ids.add(int(line.split()[0]))
    return frozenset(ids)


def check_peer(peer: Peer, peers: Peers) -> Peer:
    """Refuse unless `peer` is the station daemon; returns it with its mounts' ids."""
    if peer.uid != 0:
        raise Refused("only the station (root) may ask")
    who = f"process {peer.pid} ({_comm(peer.pid)})"
    try:
        cgroups = _cgroups(peer.pid)
        allowed = any(
            cg == want or cg.startswith(want.rstrip("/") + "/")
            for cg in cgroups
            for want in peers.cgroups
        )
        pid, hops = peer.pid, 0
        while not allowed and pid > 1 and hops < 64:
            allowed = pid in peers.processes
            pid, hops = _parent(pid), hops + 1
        ids = _mount_ids(peer.pid)
    except (OSError, ValueError) as e:
        raise Refused(f"{who}: cannot be checked: {e}") from None
    if not allowed:
        served = " or ".join(
            [*peers.cgroups, *(f"process {p} and its descendants" for p in peers.processes)]
        )
        raise Refused(
            f"{who} is not the station daemon: cgroup {' '.join(sorted(set(cgroups))) or '?'}, "
            f"the helper serves {served}"
        )
    if peer.gone():
        raise Refused(f"{who} went away")
    return Peer(peer.uid, peer.pid, peer.pidfd, ids)


def _root_mount_id() -> int:
    """The id of the root mount of this process's mount namespace (after setns)."""
    fd = os.open("/", os.O_PATH | os.O_CLOEXEC)
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
            for line in f:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    finally:
        os.close(fd)
    raise Refused("the namespace's root mount has no id")


def check_namespace(peer: Peer) -> None:
    """Called in the namespace the asker sent: refuse unless it is the asker's own. A live
    mount id belongs to one namespace only, and the asker (still there: its pidfd) pins
    its own namespace's root."""
    if _root_mount_id() not in peer.mount_ids:
        raise Refused(f"the namespace sent is not that of the asker (process {peer.pid})")
    if peer.gone():
        raise Refused(f"process {peer.pid} went away")


# --- the checks, made inside the daemon's namespace ------------------------------------------


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
UMOUNT_NOFOLLOW, MNT_DETACH = 8, 2


def _open_dir(path: Path) -> int:
    """A descriptor of the folder `path`, reached without following any symbolic link
    (component by component): the daemon may rename and replace what is below its
    writable /run/station between the helper's check and its use, a descriptor cannot
    be swapped."""
    fd = os.open("/", DIR_FLAGS)
    try:
        for part in path.parts[1:]:
            nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError as e:
        os.close(fd)
        raise Refused(f"{path}: {e.strerror} (a folder reached without a link)") from None
    return fd


def check_target(target: str, root: Path) -> tuple[int, int]:
    """Descriptors of `root` and of the card folder `target` (port-*.<12 hex> directly
    below it), both reached without a symbolic link."""
    path = Path(target)
    if not path.is_absolute() or path.parent != root or not TARGET_NAME.fullmatch(path.name):
        raise Refused(f"{target!r} is not a card folder below {root}")
    root_fd = _open_dir(root)
    try:
        return root_fd, os.open(path.name, DIR_FLAGS, dir_fd=root_fd)
    except OSError as e:
        os.close(root_fd)
        raise Refused(f"{target} is not a plain folder: {e.strerror}") from None


def _mounted_devices() -> set[int]:
    """st_rdev of every device mounted in this process's mount namespace."""
    devices: set[int] = set()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            with contextlib.suppress(IndexError, ValueError):
                major, minor = fields[2].split(":")
                devices.add(os.makedev(int(major), int(minor)))
    return devices


def check_source(node: str, images: Path | None, host_mounted: set[int]) -> tuple[int, str]:
    """A descriptor of `node` if it may be mounted as a card (a block device on USB
    that is mounted nowhere, or a regular file below `images`), and the filesystem blkid
    finds on it. Everything is checked, probed and later mounted through that one
    descriptor (`/proc/self/fd/N`): a name swapped meanwhile changes nothing."""
    if images is not None and node.startswith(str(images) + "/"):
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    elif NODE.fullmatch(node):
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    else:
        raise Refused(f"{node!r} is not a device node")
    try:
        fd = os.open(node, flags)
    except OSError as e:
        raise Refused(f"{node}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if images is not None and flags & os.O_RDWR:
            real = os.readlink(f"/proc/self/fd/{fd}")
            if not real.startswith(str(images) + "/") or not stat.S_ISREG(st.st_mode):
                raise Refused(f"{node} is not a card image below {images}")
        else:
            if not stat.S_ISBLK(st.st_mode):
                raise Refused(f"{node} is not a block device")
            dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            sys_path = os.path.realpath(f"/sys/dev/block/{dev}")
            if "/usb" not in sys_path:
                raise Refused(f"{node} is not a USB disk ({sys_path})")
            if st.st_rdev in host_mounted or st.st_rdev in _mounted_devices():
                raise Refused(f"{node} is mounted already")
        r = subprocess.run(
            ["blkid", "-p", "-o", "value", "-s", "TYPE", f"/proc/self/fd/{fd}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            pass_fds=(fd,),
        )
        fstype = r.stdout.strip()
        if fstype not in CARD_FILESYSTEMS:
            raise Refused(
                f"{node} holds {fstype or 'no known filesystem'}, not a card's FAT or exFAT"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, fstype


def _run(cmd: list[str], fds: tuple[int, ...] = ()) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=50, check=False, pass_fds=fds)
    if r.returncode != 0:
        raise Refused(f"{cmd[0]}: {r.stderr.strip() or f'status {r.returncode}'}")


def _umount2(root_fd: int, name: str, *, lazy: bool) -> None:
    """umount2(2) of `name` below the folder `root_fd`, without following a link: the
    path cannot be swapped for one to a mount of the sandbox (a masked /run/dbus)."""
    libc = ctypes.CDLL(None, use_errno=True)
    os.fchdir(root_fd)
    flags = UMOUNT_NOFOLLOW | (MNT_DETACH if lazy else 0)
    if libc.umount2(name.encode(), flags) != 0:
        err = ctypes.get_errno()
        if not lazy and libc.umount2(name.encode(), flags | MNT_DETACH) == 0:
            return
        raise Refused(f"umount {name}: {os.strerror(err)}")


MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 1 << 14, 1 << 18
SYS_OPEN_TREE, SYS_MOVE_MOUNT = 428, 429  # one number on every architecture (Linux 5.2)
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
STAGE = "/sys/card"


def _check(ok: int, what: str) -> int:
    if ok < 0:
        raise Refused(f"{what}: {os.strerror(ctypes.get_errno())}")
    return ok


def _fuse_mount(cmd: list[str], fds: tuple[int, int]) -> None:
    """Run the FUSE driver `cmd` (its last argument the mount point) so that it cannot
    be redirected: libfuse 2 resolves its mount point to a name (realpath) and mounts by
    that name, which the daemon could swap for a link meanwhile. So the driver mounts on
    a folder of a private namespace (a tmpfs over /sys there, which the daemon cannot
    reach, and /sys is a mount point it cannot rename), and the mount is then cloned
    and moved onto the card folder's descriptor (open_tree, move_mount: no name)."""
    source_fd, target_fd = fds
    if os.stat("/sys").st_dev == os.stat("/").st_dev:
        raise Refused("no /sys mount to stage a FUSE card on")
    home = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # single-threaded, as unshare and setns need
        os.close(rfd)
        error = ""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _check(libc.unshare(CLONE_NEWNS), "unshare")
            _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "private")
            flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
            _check(libc.mount(b"stage", b"/sys", b"tmpfs", flags, b"mode=0700"), "stage")
            os.mkdir(STAGE, 0o700)
            _run([*cmd[:-1], STAGE], (source_fd,))
            tree = _check(
                libc.syscall(SYS_OPEN_TREE, -100, STAGE.encode(), OPEN_TREE_CLONE | os.O_CLOEXEC),
                "open_tree",
            )
            _check(libc.umount2(STAGE.encode(), MNT_DETACH), "umount stage")
            _setns(home)
            flags = MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH
            _check(libc.syscall(SYS_MOVE_MOUNT, tree, b"", target_fd, b"", flags), "move_mount")
        except Refused as e:
            error = str(e) or "refused"
        except Exception as e:  # reported: a forked child never raises
            error = f"{type(e).__name__}: {e}"
        os.write(wfd, error.encode()[:4000])
        os._exit(0)
    os.close(wfd)
    os.close(home)
    with os.fdopen(rfd, "rb") as r:
        error = r.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if error or status != 0:
        raise Refused(error or f"the FUSE mount failed (status {status})")


def carry_out(
    request: dict[str, Any], root: Path, images: Path | None, host_mounted: set[int]
) -> None:
    """Check and carry out one request; called inside the daemon's namespace. The
    target and the source are held as descriptors from the check to the mount."""
    op, kind = request.get("op"), request.get("kind", "kernel")
    if kind not in ("kernel", "fuse"):
        raise Refused(f"unknown mounter {kind!r}")
    if op not in ("mount", "unmount"):
        raise Refused(f"unknown operation {op!r}")
    target = str(request.get("target", ""))
    root_fd, target_fd = check_target(target, root)
    try:
        mounted = os.fstat(target_fd).st_dev != os.fstat(root_fd).st_dev
        if op == "unmount":
            if mounted:
                _umount2(root_fd, Path(target).name, lazy=bool(request.get("lazy")))
            return
        if mounted or os.listdir(target_fd):
            raise Refused(f"{target} is in use")
        source_fd, fstype = check_source(str(request.get("node", "")), images, host_mounted)
        try:
            where = f"/proc/self/fd/{target_fd}"
            cmd = mount_command(kind, fstype, f"/proc/self/fd/{source_fd}", Path(where))
            if cmd[0] == "mount":
                cmd.insert(1, "--no-canonicalize")  # the descriptors' paths, as they are
                _run(cmd, (source_fd, target_fd))
            else:
                _fuse_mount(cmd, (source_fd, target_fd))
        finally:
            os.close(source_fd)
    finally:
        os.close(target_fd)
        os.close(root_fd)


# --- serving ----------------------------------------------------------------------------------


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise Refused(f"cannot enter the station's namespace: {os.strerror(err)}")


def _in_child(
    request: dict[str, Any], ns_fd: int, root: Path, images: Path | None, peer: Peer
) -> dict[str, Any]:
    """Fork, enter the daemon's namespace in the child, carry out the request there."""
    host_mounted = _mounted_devices()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: single-threaded, as setns(CLONE_NEWNS) requires
        os.close(rfd)
        answer: dict[str, Any]
        try:
            _setns(ns_fd)
            check_namespace(peer)
            carry_out(request, root, images, host_mounted)
            answer = {"ok": True}
        except Refused as e:
            answer = {"ok": False, "error": str(e)}
        except Exception as e:  # reported: a forked child never raises
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        os.write(wfd, json.dumps(answer).encode())
        os._exit(0)
    os.close(wfd)
    data = b""
    with os.fdopen(rfd, "rb") as r:
        # a card that stalls blkid or a FUSE driver that hangs must not stop all mounting
        if select.select([r], [], [], CHILD_TIMEOUT_S)[0]:
            data = r.read()
        else:
            os.kill(pid, signal.SIGKILL)
            data = json.dumps({"ok": False, "error": "timed out"}).encode()
    os.waitpid(pid, 0)
    try:
        return dict(json.loads(data))
    except ValueError:
        return {"ok": False, "error": "the helper's worker died"}


def _receive(conn: socket.socket) -> tuple[dict[str, Any], int]:
    fds = array.array("i")
    msg, ancdata, _flags, _addr = conn.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise Refused("a request carries exactly one namespace descriptor")
    try:
        request = json.loads(msg)
        if not isinstance(request, dict):
            raise ValueError("not an object")
    except ValueError as e:
        os.close(fds[0])
        raise Refused(f"not a request: {e}") from None
    return request, fds[0]


def serve_one(
    conn: socket.socket, root: Path, images: Path | None, peers: Peers | None = None
) -> None:
    conn.settimeout(10)
    peer = peer_of(conn)
    answer: dict[str, Any]
    try:
        request, ns_fd = _receive(conn)  # read first: the answer must reach the asker
        try:
            checked = check_peer(peer, peers or Peers())
            answer = _in_child(request, ns_fd, root, images, checked)
        finally:
            os.close(ns_fd)
        level = logging.INFO if answer["ok"] else logging.WARNING
        log.log(
            level,
            "%s %s for process %s: %s",
            request.get("op"),
            request.get("target"),
            peer.pid,
            answer,
        )
    except Refused as e:
        answer = {"ok": False, "error": str(e)}
        log.warning("refused (process %s): %s", peer.pid, e)
    finally:
        if peer.pidfd is not None:
            os.close(peer.pidfd)
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(answer).encode() + b"\n")


def listening_socket(path: Path) -> socket.socket:
    """The socket systemd passed (socket activation), or one bound at `path`."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS") == "1":
        return socket.socket(fileno=3)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(16)
    return sock


def serve(sock: socket.socket, root: Path, images: Path | None, peers: Peers) -> None:
    while True:
        conn, _ = sock.accept()
        with conn:
            try:
                serve_one(conn, root, images, peers)
            except OSError as e:
                log.warning("request dropped: %s", e)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="station-mountd", description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("/run/station/cards"))
    p.add_argument("--socket", type=Path, default=HELPER_SOCKET)
    p.add_argument("--images", type=Path, help="also mount card images below this folder")
    p.add_argument(
        "--peer-cgroup",
        action="append",
        default=[],
        metavar="CGROUP",
        help=f"serve processes in this cgroup (default {STATION_CGROUP})",
    )
    p.add_argument(
        "--peer-process",
        action="append",
        default=[],
        type=int,
        metavar="PID",
        help="serve this process and its descendants (outside systemd: tests, the demo)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    cgroups = args.peer_cgroup or ([] if args.peer_process else [STATION_CGROUP])
    peers = Peers(tuple(cgroups), tuple(args.peer_process))
    log.info("serving %s", peers)
    serve(listening_socket(args.socket), args.root, args.images, peers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
