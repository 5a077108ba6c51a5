"""Decoding untrusted recorder video out of the daemon: the media worker.

A recorder's files are whatever its firmware (or whoever tampered with it) wrote, and
FFmpeg's demuxers and decoders are a large attack surface. So the daemon never opens
footage with PyAV itself: a worker process does, with nothing but the descriptors the
daemon hands it, and the worst a hostile file can do is crash or take over that worker.

On an installed station the worker is `station-media@.service`, started by systemd for
each connection on `/run/station-media.sock` (socket activation, `Accept=yes`): a
dynamic user with no capabilities, no network, no devices, no writable file system, a
system-call filter and a memory limit (systemd/station-media@.service). Elsewhere (tests,
the demo) the daemon starts `python -m station.media.worker` itself, as `nobody` when it
may, with the resource limits below set by the worker before it reads any input.

The protocol, on a Unix stream socket (systemd's fd 3, or the daemon's socket pair): the daemon
sends one JSON line with descriptors (SCM_RIGHTS), and the worker answers with JSON lines,
the last one `{"done": true, ...}` or `{"error": "..."}`; a worker that dies says nothing
more, and the daemon reports it:

- `{"op": "transcode", "max_bytes": N}` with three: the stored file (read), the
  fragmented MP4 to write (the file the browser follows while it grows) and the final
  MP4; answers `{"frames_total": N}`, `{"frames_done": n}` now and then. No file the
  worker writes may pass `max_bytes` (RLIMIT_FSIZE, hard, set before it reads a byte: a
  hostile file cannot make it fill the disk); past it, the answer is an error saying so;
- `{"op": "probe", "kind": "video"}` with one, the stored file: answers the file list's
  thumbnail (a base64 JPEG, or null) and length (`duration_s`, or null).
"""

from __future__ import annotations

import array
import base64
import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SOCKET = Path("/run/station-media.sock")
MAX_REQUEST = 4096
MAX_ANSWER = 1 << 20  # a line: a thumbnail in base64 at most
# When the worker limits itself (no systemd unit around it)
LIMITS = {
    resource.RLIMIT_AS: 3 << 30,  # address space: FFmpeg's threads reserve a lot
    resource.RLIMIT_CPU: 1800,  # seconds of CPU for one file
    resource.RLIMIT_FSIZE: 16 << 30,  # bytes it may write
    resource.RLIMIT_CORE: 0,
}
PROGRESS_EVERY = 25  # frames


class WorkerError(Exception):
    """The worker failed, refused, or died."""


class _Progress:
    """What transcode() updates, sent to the daemon as it changes."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._frames_total = 0
        self.frames_done_sent = 0
        self._frames_done = 0

    def send(self, **fields: Any) -> None:
        self._conn.sendall(json.dumps(fields).encode() + b"\n")

    @property
    def frames_total(self) -> int:
        return self._frames_total

    @frames_total.setter
    def frames_total(self, n: int) -> None:
        self._frames_total = n
        self.send(frames_total=n)

    @property
    def frames_done(self) -> int:
        return self._frames_done

    @frames_done.setter
    def frames_done(self, n: int) -> None:
        self._frames_done = n
        if n - self.frames_done_sent >= PROGRESS_EVERY:
            self.frames_done_sent = n
            self.send(frames_done=n)


OPERATIONS = {"transcode": 3, "probe": 1}  # operation: descriptors it comes with


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    fds = array.array("i")
    msg, ancdata, _flags, _addr = conn.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    try:
        request = json.loads(msg.split(b"\n", 1)[0] or b"null")
    except ValueError:
        request = None
    if not isinstance(request, dict) or OPERATIONS.get(request.get("op")) != len(fds):
        for fd in fds:
            os.close(fd)
        raise WorkerError("a request is one known operation with its descriptors")
    return request, list(fds)


def limit_output(max_bytes: int) -> int:
    """Cap every file this process writes at `max_bytes` (soft and hard: it cannot be
    raised again), writes past it failing with EFBIG instead of a signal. Returns the cap."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    cap = max_bytes if hard == resource.RLIM_INFINITY else min(max_bytes, hard)
    resource.setrlimit(resource.RLIMIT_FSIZE, (cap, cap))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return cap


def _transcode(fds: list[int], progress: _Progress, max_bytes: int) -> None:
    from station.media import playback  # PyAV is loaded here, in the worker only

    cap = limit_output(max_bytes)
    capped = WorkerError(
        f"the browser copy reached its size cap of {cap} bytes: "
        "the file decodes to far more than it holds"
    )
    try:
        with (
            os.fdopen(fds[0], "rb") as source,
            os.fdopen(fds[1], "w+b") as frag,
            os.fdopen(fds[2], "w+b") as final,
            # faststart moves the index to the front by reopening its output by name:
            # a file of the worker's own (its private /tmp), then copied to the daemon's
            tempfile.TemporaryDirectory(prefix="station-media-") as tmp,
        ):
            own = Path(tmp) / "final.mp4"
            try:
                playback.transcode(source, frag, progress)
                frag.flush()
                frag.seek(0)
                playback.remux_faststart(frag, own)
                with open(own, "rb") as f:
                    shutil.copyfileobj(f, final, 1 << 20)
                final.flush()
            except Exception:
                sizes = [os.fstat(f.fileno()).st_size for f in (frag, final)]
                with contextlib.suppress(OSError):
                    sizes.append(own.stat().st_size)
                if max(sizes) >= cap:
                    raise capped from None
                raise
    except OSError as e:  # a write past the cap outside the above (closing a file)
        if e.errno == errno.EFBIG:
            raise capped from None
        raise
    progress.send(frames_done=progress.frames_done, done=True)


def _probe(fds: list[int], kind: str, progress: _Progress) -> None:
    """A thumbnail (base64 JPEG) and the length of a stored file, for the file list."""
    from station.media import thumbnails

    answer: dict[str, Any] = {"done": True, "thumbnail": None, "duration_s": None}
    with os.fdopen(fds[0], "rb") as source:
        if kind in ("video", "photo"):
            with contextlib.suppress(Exception):  # no picture: no thumbnail
                answer["thumbnail"] = base64.b64encode(thumbnails.thumbnail(source)).decode()
        if kind in ("video", "audio"):
            source.seek(0)
            with contextlib.suppress(Exception):
                answer["duration_s"] = thumbnails.duration_s(source)
    progress.send(**answer)


def serve(conn: socket.socket) -> None:
    """Carry out the one request on `conn`."""
    progress = _Progress(conn)
    try:
        request, fds = _receive(conn)
        if request["op"] == "transcode":
            cap = request.get("max_bytes")
            if not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0:
                for fd in fds:
                    os.close(fd)
                raise WorkerError("a transcoding comes with its output cap (max_bytes)")
            _transcode(fds, progress, cap)
        else:
            _probe(fds, str(request.get("kind", "")), progress)
    except Exception as e:  # everything goes back to the daemon as words
        with contextlib.suppress(OSError):
            progress.send(error=str(e) or type(e).__name__)


def limit_self() -> None:
    for which, value in LIMITS.items():
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(which, (value, value))
    with contextlib.suppress(OSError):
        os.nice(10)  # collection first


def main() -> int:
    """systemd passes the connection as fd 3 (LISTEN_FDS=1); the daemon's own spawn
    names it in STATION_MEDIA_FD and asks for the self-imposed limits."""
    fd = os.environ.get("STATION_MEDIA_FD") or ("3" if os.environ.get("LISTEN_FDS") == "1" else "")
    if not fd.isdigit():
        print("station.media.worker: started without its connection", file=sys.stderr)
        return 2
    if os.environ.get("STATION_MEDIA_LIMITS") == "1":
        limit_self()
    with socket.socket(fileno=int(fd)) as conn:
        conn.settimeout(60)
        serve(conn)
    return 0


# --- the daemon's side ------------------------------------------------------------------------


def _may_setuid() -> bool:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 7))  # CAP_SETUID
    return False


def _spawn() -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """A worker of our own, on a socket pair, as nobody when we may change user."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "STATION_MEDIA_FD": str(theirs.fileno()),
        "STATION_MEDIA_LIMITS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    user: dict[str, Any] = {}
    if os.geteuid() == 0 and _may_setuid():
        user = {"user": 65534, "group": 65534, "extra_groups": []}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "station.media.worker"],
            pass_fds=(theirs.fileno(),),
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            **user,
        )
    finally:
        theirs.close()
    return ours, proc


def _ask(
    op: str, fds: list[int], on_answer: Any, *, extra: dict[str, Any], timeout_s: float
) -> dict[str, Any]:
    """Send one request (closing `fds` here), feed each answer line to `on_answer`, and
    return the last one (`done`). Raises WorkerError when the worker fails or dies."""
    proc: subprocess.Popen[bytes] | None = None
    try:
        if SOCKET.exists():
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(str(SOCKET))
            except OSError as e:
                conn.close()
                raise WorkerError(f"the media worker ({SOCKET}) did not answer: {e}") from None
        elif os.environ.get("INVOCATION_ID"):  # under systemd: its sandbox or nothing
            raise WorkerError(f"the media worker's socket {SOCKET} is missing")
        else:
            conn, proc = _spawn()
        with conn:
            conn.settimeout(timeout_s)
            conn.sendmsg(
                [json.dumps({"op": op, **extra}).encode() + b"\n"],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
            )
            for fd in fds:
                os.close(fd)
            fds = []
            reader = conn.makefile("rb")
            while line := reader.readline(MAX_ANSWER):
                answer = json.loads(line)
                if "error" in answer:
                    raise WorkerError(str(answer["error"]))
                on_answer(answer)
                if answer.get("done"):
                    return dict(answer)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
            status = f" (status {proc.returncode})" if proc is not None else ""
            raise WorkerError(f"the media worker stopped before it was done{status}")
    except (OSError, ValueError) as e:  # a reset connection: it died (or sent nonsense)
        raise WorkerError(f"the media worker stopped before it was done: {e}") from None
    finally:
        for fd in fds:
            os.close(fd)
        if proc is not None:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_transcode(
    source: Path, frag: Path, final: Path, job: Any, *, max_bytes: int, timeout_s: float = 120.0
) -> None:
    """Have a worker transcode `source` into `frag` (growing, for the browser) and
    `final`, neither passing `max_bytes`; `job.frames_total` / `job.frames_done` follow
    its progress."""

    def progress(answer: dict[str, Any]) -> None:
        if "frames_total" in answer:
            job.frames_total = int(answer["frames_total"])
        if "frames_done" in answer:
            job.frames_done = int(answer["frames_done"])

    fds = [os.open(source, os.O_RDONLY | os.O_CLOEXEC)]
    try:
        for out in (frag, final):
            fds.append(os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    _ask("transcode", fds, progress, extra={"max_bytes": max_bytes}, timeout_s=timeout_s)
    for out in (frag, final):  # what the worker says is not taken on trust
        if out.stat().st_size > max_bytes:
            raise WorkerError(f"{out.name} passed its size cap of {max_bytes} bytes")


def run_probe(
    source: Path, kind: str, *, timeout_s: float = 60.0
) -> tuple[bytes | None, float | None]:
    """Have a worker make the thumbnail (JPEG) and find the length of `source`."""
    fds = [os.open(source, os.O_RDONLY | os.O_CLOEXEC)]
    answer = _ask("probe", fds, lambda _: None, extra={"kind": kind}, timeout_s=timeout_s)
    thumb = answer.get("thumbnail")
    length = answer.get("duration_s")
    return (
        base64.b64decode(thumb) if isinstance(thumb, str) else None,
        float(length) if isinstance(length, (int, float)) else None,
    )


if __name__ == "__main__":
    sys.exit(main())
