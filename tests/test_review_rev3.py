"""Review of rev3 (mount helper peer checks, FUSE staging, playback caps): each test shows
a defect found in review and fails on the code as it is (xfail, strict)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from conftest import needs_root
from test_mountd import _start_helper, _target, cards, images  # noqa: F401 - fixtures

from station.devices import mountd
from station.media.playback import Job, PlaybackError, Transcoder

REPO = Path(__file__).resolve().parent.parent


def _cgroup2_root() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup2":
            return Path(left.split()[4])
    return None


# --- the mount helper -------------------------------------------------------------------------


@needs_root
@pytest.mark.xfail(
    strict=True,
    reason="cgroup membership is not proof of being the daemon: any root process can write "
    "its pid into station.service's cgroup.procs and is then served, in its own (host) "
    "namespace",
)
def test_a_root_process_that_moves_itself_into_the_daemons_cgroup_is_not_served(
    tmp_path: Path,
    cards: Path,  # noqa: F811
    images: Path,  # noqa: F811
) -> None:
    root = _cgroup2_root()
    if root is None:
        pytest.skip("no cgroup2 hierarchy")
    name = f"review-station-{uuid.uuid4().hex[:8]}"
    cg = root / name
    cg.mkdir()
    helper = _start_helper(tmp_path, cards, images, "--peer-cgroup", f"/{name}")
    sock = next(helper)
    target = _target(cards)
    try:
        # a root process of the host, not the daemon: it joins the daemon's cgroup (no
        # capability needed, root owns cgroup.procs) and asks in its own namespace
        intruder = textwrap.dedent(
            f"""
            from pathlib import Path
            from station.devices.mount import BlockDevice, HelperMounter, MountError
            Path({str(cg / "cgroup.procs")!r}).write_text("0")
            try:
                HelperMounter(Path({str(sock)!r}), "fuse").mount(
                    BlockDevice({str(images / "card.img")!r}, "vfat", "/sys/x"),
                    Path({str(target)!r}),
                )
                print("MOUNTED")
            except MountError as e:
                print("REFUSED", e)
            """
        )
        r = subprocess.run(
            [sys.executable, "-c", intruder], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr
        mounted = os.path.ismount(target)
        assert r.stdout.startswith("REFUSED") and not mounted, (r.stdout, mounted)
    finally:
        if os.path.ismount(target):
            subprocess.run(["umount", "-l", str(target)], check=False)
        next(helper, None)
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)


@needs_root
@pytest.mark.xfail(
    strict=True,
    reason="peer_of falls back to pidfd_open(SO_PEERCRED pid) when SO_PEERPIDFD fails "
    "(Debian 12's 6.1 kernel has none; 6.5-6.15 refuse it for a reaped peer): the pidfd "
    "then names whatever process got the asker's pid since, and that one is checked",
)
def test_a_connection_whose_pid_was_reused_by_the_daemon_is_not_served(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, socket, time
        from station.devices import mountd
        # Debian 12's kernel (6.1): no SO_PEERPIDFD, getsockopt fails (ENOPROTOOPT)
        mountd.SO_PEERPIDFD = 0x7FFF
        path = {str(tmp_path / "s.sock")!r}
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen()
        a = os.fork()
        if a == 0:  # the intruder connects, hands the connection to its child, exits
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(path)
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            os._exit(0)
        conn, _ = srv.accept()
        os.waitpid(a, 0)  # reaped: its pid is free again
        # the daemon's next process gets that pid (here by ns_last_pid; on a station the
        # intruder cycles the pid space with forks of its own and waits)
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(a - 1))
        b = os.fork()
        if b == 0:
            time.sleep(30)
            os._exit(0)
        assert b == a, (a, b)
        try:
            mountd.check_peer(mountd.peer_of(conn), mountd.Peers(cgroups=(), processes=(b,)))
            print("SERVED")
        except mountd.Refused as e:
            print("REFUSED", e)
        """
    )
    r = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("REFUSED"), r.stdout


@needs_root
@pytest.mark.xfail(
    strict=True,
    reason="the request picks the mounter: a production helper (no --images) runs a FUSE "
    "driver (fusefat, exfat-fuse) as root with CAP_SYS_ADMIN on a hostile card whenever the "
    "daemon asks kind=fuse, though stations mount with the kernel",
)
def test_a_production_helper_refuses_a_fuse_mount_before_looking_at_the_source(
    cards: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    looked: list[str] = []

    def check_source(node: str, *_: object) -> tuple[int, str]:
        looked.append(node)
        raise mountd.Refused("stop here")

    monkeypatch.setattr(mountd, "check_source", check_source)
    target = _target(cards)
    request = {"op": "mount", "kind": "fuse", "node": "/dev/sdz1", "target": str(target)}
    with pytest.raises(mountd.Refused):
        mountd.carry_out(request, cards, None, set())
    assert looked == [], "a FUSE request got as far as the source in a production helper"


# --- playback -------------------------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="_reserve checks one job's need against the cache, not the running ones' too: "
    "two jobs each under the bound together reserve more than the playback cache",
)
def test_running_copies_together_never_reserve_more_than_the_cache(tmp_path: Path) -> None:
    src = tmp_path / "V.AVI"
    src.write_bytes(b"\0" * (1 << 20))
    cache = tmp_path / "cache"
    cache.mkdir()
    tr = Transcoder(cache, max_bytes=10 << 20, output_factor=4.0, output_extra=0)
    cap = tr.output_cap(src)  # 4 MiB: 8 MiB for the two outputs, under the 10 MiB cache
    jobs = [Job(k * 64, src, cache / f"{k}.frag.mp4", cache / f"{k}.mp4") for k in ("a", "b")]
    tr._reserve(jobs[0], cap)
    with pytest.raises(PlaybackError):
        tr._reserve(jobs[1], cap)  # 16 MiB would be in flight in a 10 MiB cache


@needs_root
@pytest.mark.xfail(
    strict=True,
    reason="the worker writes a third full-size copy (faststart's final.mp4) in its own /tmp, "
    "which no reservation counts (PrivateTmp: the host's /tmp, the catalog's disk on Debian "
    "12) and which a worker taken over can fill with any number of capped files",
)
def test_the_worker_writes_only_through_its_descriptors(tmp_path: Path) -> None:
    from test_playback import avi_with_sound

    work = Path(tempfile.mkdtemp(prefix="review-media-", dir="/var/tmp"))
    try:
        src = work / "V.AVI"
        avi_with_sound(src, frames=30, size=(640, 360))
        script = textwrap.dedent(
            f"""
            import subprocess
            from pathlib import Path
            from station.media.playback import Transcoder
            # a /tmp with no room (the worker's share of a full disk)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "full", "/tmp"], check=True)
            tr = Transcoder(Path({str(work / "cache")!r}))
            job = tr.start(Path({str(src)!r}), "c" * 64)
            assert job.done.wait(120)
            print("ERROR", job.error)
            """
        )
        r = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            check=False,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "ERROR None", r.stdout
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
