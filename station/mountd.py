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
options are its own (`nosuid,nodev,noexec`, uid 0, umask 077, station/mount.py). A
compromised daemon can therefore only ask for what the station does anyway: a USB card,
mounted harmlessly, in its own namespace.

Each request is served in a child process that enters the daemon's namespace
(setns(2) needs a single-threaded caller), checks there, and runs mount(8), umount(8) or
the FUSE driver.
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
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from station.mount import CARD_FILESYSTEMS, HELPER_SOCKET, mount_command, unmount_commands

log = logging.getLogger("station.mountd")

CLONE_NEWNS = 0x00020000
MAX_REQUEST = 4096
TARGET_NAME = re.compile(r"port-[A-Za-z0-9_-]{1,32}\.[0-9a-f]{12}")
NODE = re.compile(r"/dev/[A-Za-z0-9_-]{1,32}")
CHILD_TIMEOUT_S = 60.0


class Refused(Exception):
    """A request the helper does not carry out; the text goes back to the daemon."""


# --- the checks, made inside the daemon's namespace ------------------------------------------


def check_target(target: str, root: Path) -> Path:
    """`target` if it is a folder port-*.<12 hex> directly below `root`, reached without
    a symbolic link."""
    path = Path(target)
    if not path.is_absolute() or path.parent != root or not TARGET_NAME.fullmatch(path.name):
        raise Refused(f"{target!r} is not a card folder below {root}")
    try:
        st = os.lstat(path)
    except OSError as e:
        raise Refused(f"{target}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or os.path.realpath(path) != str(path):
        raise Refused(f"{target} is not a plain folder")
    return path


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


def check_source(node: str, images: Path | None, host_mounted: set[int]) -> str:
    """`node` if it may be mounted as a card: a block device on USB that is mounted
    nowhere, or a regular file below `images`. Returns the filesystem blkid finds."""
    if images is not None and node.startswith(str(images) + "/"):
        real = os.path.realpath(node)
        if not real.startswith(str(images) + "/") or not os.path.isfile(real):
            raise Refused(f"{node} is not a card image below {images}")
    else:
        if not NODE.fullmatch(node):
            raise Refused(f"{node!r} is not a device node")
        try:
            st = os.stat(node)
        except OSError as e:
            raise Refused(f"{node}: {e.strerror}") from None
        if not stat.S_ISBLK(st.st_mode):
            raise Refused(f"{node} is not a block device")
        sys_path = os.path.realpath(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
        if "/usb" not in sys_path:
            raise Refused(f"{node} is not a USB disk ({sys_path})")
        if st.st_rdev in host_mounted or st.st_rdev in _mounted_devices():
            raise Refused(f"{node} is mounted already")
    r = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "TYPE", node],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    fstype = r.stdout.strip()
    if fstype not in CARD_FILESYSTEMS:
        raise Refused(f"{node} holds {fstype or 'no known filesystem'}, not a card's FAT or exFAT")
    return fstype


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=50, check=False)
    if r.returncode != 0:
        raise Refused(f"{cmd[0]}: {r.stderr.strip() or f'status {r.returncode}'}")


def carry_out(
    request: dict[str, Any], root: Path, images: Path | None, host_mounted: set[int]
) -> None:
    """Check and carry out one request; called inside the daemon's namespace."""
    op, kind = request.get("op"), request.get("kind", "kernel")
    if kind not in ("kernel", "fuse"):
        raise Refused(f"unknown mounter {kind!r}")
    target = check_target(str(request.get("target", "")), root)
    if op == "mount":
        if os.path.ismount(target) or any(target.iterdir()):
            raise Refused(f"{target} is in use")
        node = str(request.get("node", ""))
        fstype = check_source(node, images, host_mounted)
        _run(mount_command(kind, fstype, node, target))
    elif op == "unmount":
        if not os.path.ismount(target):
            return  # gone already: nothing to let go of
        errors = []
        for cmd in unmount_commands(kind, target, lazy=bool(request.get("lazy"))):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=50, check=False)
            if r.returncode == 0:
                return
            errors.append(f"{cmd[0]}: {r.stderr.strip()}")
        raise Refused("; ".join(errors))
    else:
        raise Refused(f"unknown operation {op!r}")


# --- serving ----------------------------------------------------------------------------------


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise Refused(f"cannot enter the station's namespace: {os.strerror(err)}")


def _in_child(
    request: dict[str, Any], ns_fd: int, root: Path, images: Path | None
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
            carry_out(request, root, images, host_mounted)
            answer = {"ok": True}
        except Refused as e:
            answer = {"ok": False, "error": str(e)}
        except Exception as e:  # reported: a forked child never raises
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        os.write(wfd, json.dumps(answer).encode())
        os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        data = r.read()
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


def serve_one(conn: socket.socket, root: Path, images: Path | None) -> None:
    conn.settimeout(10)
    uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
    answer: dict[str, Any]
    try:
        if uid != 0:
            raise Refused("only the station (root) may ask")
        request, ns_fd = _receive(conn)
        try:
            answer = _in_child(request, ns_fd, root, images)
        finally:
            os.close(ns_fd)
        level = logging.INFO if answer["ok"] else logging.WARNING
        log.log(level, "%s %s: %s", request.get("op"), request.get("target"), answer)
    except Refused as e:
        answer = {"ok": False, "error": str(e)}
        log.warning("refused: %s", e)
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


def serve(sock: socket.socket, root: Path, images: Path | None) -> None:
    while True:
        conn, _ = sock.accept()
        with conn:
            try:
                serve_one(conn, root, images)
            except OSError as e:
                log.warning("request dropped: %s", e)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="station-mountd", description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("/run/station/cards"))
    p.add_argument("--socket", type=Path, default=HELPER_SOCKET)
    p.add_argument("--images", type=Path, help="also mount card images below this folder")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    serve(listening_socket(args.socket), args.root, args.images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
