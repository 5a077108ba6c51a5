"""Browser playback of recorder footage: MJPEG AVI (with PCM sound) to H.264/AAC MP4 by PyAV."""

from __future__ import annotations

import contextlib
import math
import os
import resource
import struct
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import psutil
import pytest
from PIL import Image

from station.media import playback
from station.media import worker as mediaworker
from station.media.playback import Transcoder
from station.sim.media import make_video


def avi_with_sound(path: Path, *, frames: int = 45, size: tuple[int, int] = (1280, 720)) -> None:
    """An MJPEG AVI with 16 kHz mono PCM sound, as many recorders write."""
    with av.open(str(path), "w", format="avi") as c:
        v = c.add_stream("mjpeg", rate=30)
        v.width, v.height, v.pix_fmt = size[0], size[1], "yuvj420p"
        a = c.add_stream("pcm_s16le", rate=16000)
        a.layout = "mono"
        for i in range(frames):
            img = Image.new("RGB", size, ((i * 5) % 255, 80, 160))
            f = av.VideoFrame.from_image(img).reformat(format="yuvj420p")
            f.pts, f.time_base = i, Fraction(1, 30)
            for p in v.encode(f):
                c.mux(p)
        n = 16000 * frames // 30
        pcm = b"".join(struct.pack("<h", int(8000 * math.sin(i * 2 * math.pi * 440 / 16000)))
                       for i in range(n))  # fmt: skip
        af = av.AudioFrame(format="s16", layout="mono", samples=n)
        af.planes[0].update(pcm)
        af.sample_rate, af.pts = 16000, 0
        for p in a.encode(af):
            c.mux(p)
        for p in v.encode():
            c.mux(p)
        for p in a.encode():
            c.mux(p)


def probe(path: Path) -> dict[str, tuple]:
    with av.open(str(path)) as c:
        return {
            s.type: (s.codec_context.name, getattr(s.codec_context, "height", None))
            for s in c.streams
        } | {"duration": (c.duration / 1e6 if c.duration else 0.0,)}


def test_recorder_avi_becomes_h264_aac_mp4(tmp_path: Path) -> None:
    src = tmp_path / "REC.AVI"
    avi_with_sound(src)
    tr = Transcoder(tmp_path / "cache")
    job = tr.start(src, "a" * 64)
    assert job.done.wait(60)
    assert job.error is None
    out = tr.cached("a" * 64)
    assert out is not None and out.suffix == ".mp4"
    info = probe(out)
    assert info["video"] == ("h264", 720)
    assert info["audio"][0] == "aac"
    assert info["duration"][0] == pytest.approx(1.5, abs=0.2)
    assert job.frames_done == 45 and job.progress == 1.0
    # the index is in front (faststart), so a browser can seek with range requests
    head = out.read_bytes()[:4096]
    assert head.find(b"moov") < head.find(b"mdat") or b"mdat" not in head
    assert not list((tmp_path / "cache").glob("*.frag.mp4"))


def test_large_video_is_scaled_down_to_720_lines(tmp_path: Path) -> None:
    src = tmp_path / "BIG.AVI"
    avi_with_sound(src, frames=3, size=(1920, 1080))
    out = tmp_path / "o.mp4"
    playback.transcode(src, out)
    with av.open(str(out)) as c:
        v = c.streams.video[0].codec_context
        assert (v.width, v.height) == (1280, 720)


def test_follow_streams_the_copy_while_it_is_made(tmp_path: Path) -> None:
    src = tmp_path / "V.AVI"
    make_video(src, 4_000_000, label="TEST")
    tr = Transcoder(tmp_path / "cache")
    job = tr.start(src, "b" * 64)
    data = b"".join(tr.follow(job))
    assert job.done.is_set() and job.error is None
    assert data[4:8] == b"ftyp"
    streamed = tmp_path / "streamed.mp4"
    streamed.write_bytes(data)
    with av.open(str(streamed)) as c:  # the fragmented copy is a whole, playable file
        assert sum(1 for _ in c.decode(video=0)) == job.frames_done > 0


def test_cache_is_reused_and_trimmed(tmp_path: Path) -> None:
    src = tmp_path / "V.AVI"
    make_video(src, 300_000)
    tr = Transcoder(tmp_path / "cache", max_bytes=10**9)
    first = tr.start(src, "c" * 64)
    first.done.wait(60)
    stamp = tr.cached("c" * 64).stat().st_mtime_ns
    again = tr.start(src, "c" * 64)
    assert again.done.is_set()  # no second transcoding
    assert tr.cached("c" * 64).stat().st_mtime_ns >= stamp
    time.sleep(0.01)
    other = tr.start(src, "d" * 64)
    other.done.wait(60)
    tr.cached("d" * 64)  # most recently used
    tr.max_bytes = tr.cached("d" * 64).stat().st_size
    tr.trim()
    assert tr.cached("c" * 64) is None and tr.cached("d" * 64) is not None


def test_a_broken_file_fails_cleanly(tmp_path: Path) -> None:
    src = tmp_path / "BAD.AVI"
    src.write_bytes(b"RIFF\0\0\0\0AVI garbage" * 100)
    tr = Transcoder(tmp_path / "cache")
    job = tr.start(src, "e" * 64)
    assert job.done.wait(30)
    assert job.error
    assert tr.cached("e" * 64) is None
    assert tr.start(src, "e" * 64) is job  # not retried at once
    assert list(tr.follow(job)) == []


def test_device_logs_read_in_utf8_or_gbk(tmp_path: Path) -> None:
    p = tmp_path / "a.LOG"
    p.write_bytes("2026-11-21 08:00:01 开机\r\n".encode("gbk"))
    assert "开机" in playback.read_text(p)
    p.write_bytes("2026-11-21 08:00:01 录像开始\r\n".encode())
    assert "录像开始" in playback.read_text(p)


def test_what_plays_as_stored() -> None:
    assert playback.browser_type("X.JPG", "photo") == "image/jpeg"
    assert playback.browser_type("X.WAV", "audio") == "audio/wav"
    assert playback.browser_type("X.AVI", "video") is None


# --- the media worker: recorder video is never decoded in the daemon's process ----------------


def test_the_daemon_process_never_loads_ffmpeg(tmp_path: Path) -> None:
    """A daemon-like process transcodes a file: PyAV (FFmpeg) is loaded only in the worker."""
    src = tmp_path / "REC.AVI"
    avi_with_sound(src, frames=10)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from station.media.playback import Transcoder\n"
        f"job = Transcoder(Path({str(tmp_path / 'cache')!r})).start(Path({str(src)!r}), 'f' * 64)\n"
        "job.done.wait(120)\n"
        "from station.media.thumbnails import ThumbnailCache\n"
        f"cache = ThumbnailCache(Path({str(tmp_path / 'thumbs')!r}))\n"
        "import time\n"
        f"while (info := cache.info('f' * 64, Path({str(src)!r}), 'video')) is None:\n"
        "    time.sleep(0.1)\n"
        "print(job.error, 'av' in sys.modules, info.thumbnail, round(info.duration_s, 1))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert r.stdout.split() == ["None", "False", "True", "0.3"], r.stdout + r.stderr


def _worker_of(parent: psutil.Process, timeout: float = 60) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in parent.children():
            with contextlib.suppress(psutil.Error):
                if "station.media.worker" in child.cmdline():
                    return child
        time.sleep(0.02)
    raise AssertionError("no media worker started")


def _soft_limits(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    return {line[:26].strip(): line[26:47].strip() for line in lines}


def test_the_worker_runs_unprivileged_and_limited(tmp_path: Path) -> None:
    src = tmp_path / "LONG.AVI"
    avi_with_sound(src, frames=600, size=(1920, 1080))
    src.chmod(0o600)  # a stored file: root's alone; the worker gets a descriptor, not a path
    tr = Transcoder(tmp_path / "cache")
    job = tr.start(src, "9" * 64)
    worker = _worker_of(psutil.Process())
    try:
        if os.geteuid() == 0:
            assert worker.uids().effective == 65534 and worker.gids().effective == 65534
        deadline = time.monotonic() + 60  # it limits itself first thing
        while (limits := _soft_limits(worker.pid)) and limits["Max cpu time"] == "unlimited":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert limits["Max address space"] == str(mediaworker.LIMITS[resource.RLIMIT_AS])
        assert limits["Max cpu time"] == str(mediaworker.LIMITS[resource.RLIMIT_CPU])
        assert worker.nice() >= 10
    finally:
        assert job.done.wait(300)
    assert job.error is None and tr.cached("9" * 64) is not None


def test_a_worker_that_dies_fails_the_job_and_nothing_else(tmp_path: Path) -> None:
    """What a hostile file that crashes FFmpeg does: the daemon reports it and goes on."""
    src = tmp_path / "LONG.AVI"
    avi_with_sound(src, frames=600, size=(1920, 1080))
    tr = Transcoder(tmp_path / "cache")
    job = tr.start(src, "8" * 64)
    _worker_of(psutil.Process()).kill()
    assert job.done.wait(60)
    assert job.error is not None and "stopped before it was done" in job.error
    assert tr.cached("8" * 64) is None
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp.mp4")]
    # and the next file plays
    ok = tmp_path / "OK.AVI"
    avi_with_sound(ok, frames=5)
    again = tr.start(ok, "7" * 64)
    assert again.done.wait(120) and again.error is None


def test_a_copy_that_passes_its_size_cap_is_refused_and_cleaned_up(tmp_path: Path) -> None:
    """A hostile file may decode to far more than it holds: the worker cannot write past
    its cap (RLIMIT_FSIZE, hard), the job fails saying so, nothing partial is left."""
    src = tmp_path / "LONG.AVI"
    avi_with_sound(src, frames=90, size=(1280, 720))
    cache = tmp_path / "cache"
    tr = Transcoder(cache, output_factor=0, output_extra=50_000)  # far below what it makes
    job = tr.start(src, "6" * 64)
    worker = _worker_of(psutil.Process())
    with contextlib.suppress(psutil.NoSuchProcess, FileNotFoundError):  # done already
        deadline = time.monotonic() + 60  # it caps itself before it reads a byte
        while (limits := _soft_limits(worker.pid))["Max file size"] != "50000":
            assert time.monotonic() < deadline, limits
            time.sleep(0.02)
    assert job.done.wait(120)
    # said by the worker, whose writes failed at the cap (not the daemon's check after it)
    assert job.error is not None and "reached its size cap of 50000 bytes" in job.error
    assert tr.cached("6" * 64) is None
    assert list(cache.iterdir()) == []  # neither the growing copy nor the partial final one
    # the same file under the default cap plays
    again = Transcoder(cache).start(src, "5" * 64)
    assert again.done.wait(120) and again.error is None


def test_a_copy_the_cache_or_the_disk_cannot_hold_is_not_started(tmp_path: Path) -> None:
    src = tmp_path / "V.AVI"
    avi_with_sound(src, frames=5)
    cache = tmp_path / "cache"
    tr = Transcoder(cache, max_bytes=1_000_000, output_extra=1_000_000)
    job = tr.start(src, "4" * 64)
    assert job.done.wait(60)
    assert job.error is not None and "more than the playback cache's 1 MB" in job.error
    assert not [p for p in cache.iterdir()]
    # older copies make room for a new one, least recently used first
    tr = Transcoder(cache, max_bytes=10**9, output_extra=1_000_000)
    for key in ("3", "2"):
        assert tr.start(src, key * 64).done.wait(60)
    size = tr.cached("3" * 64).stat().st_size  # "3" now most recently used
    tr.max_bytes = size + 2 * tr.output_cap(src)
    assert tr.start(src, "1" * 64).done.wait(60)
    assert tr.cached("2" * 64) is None and tr.cached("3" * 64) and tr.cached("1" * 64)
    # a disk without room for the two outputs: refused before anything is written
    free = os.statvfs(cache).f_bavail * os.statvfs(cache).f_frsize
    huge = Transcoder(cache, max_bytes=10 * free + 10**12, output_extra=free)
    job = huge.start(src, "0" * 64)
    assert job.done.wait(60)
    assert job.error is not None and "not enough free space" in job.error
