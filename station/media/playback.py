"""Playing stored footage in a browser: recorder AVI (MJPEG) transcoded to H.264 MP4 with PyAV.

Browsers do not play MJPEG AVI, the recorders' format. A `Transcoder` turns a
stored video into H.264 (libx264, from PyAV's own FFmpeg) in an MP4 that
Chromium plays, scaled down to at most 720 lines (the kiosk screen has 600),
with the sound as AAC when there is any:

1. While it works it writes a *fragmented* MP4 (`<sha256>.frag.mp4`), which a
   browser can start playing before it is finished: `follow()` streams that
   growing file to the player, so a long clip starts within a second.
2. When it is done the fragments are remuxed (packets copied, no re-encoding)
   into an ordinary MP4 with its index in front (`<sha256>.mp4`), served with
   HTTP range requests so the player can seek.

The decoding is done by the media worker (station/media/worker.py), a sandboxed process of
its own that gets only the descriptors of the stored file and of the two outputs: the
daemon never parses recorder video itself.

Cached files are named by the content hash of the original, so a file is
transcoded once, and the cache is trimmed to `max_bytes` (least recently used
first). A hostile file must not fill the disk: each output is capped at
`output_factor` times the stored file plus `output_extra` (the worker's RLIMIT_FSIZE),
a transcoding starts only when the cache can hold two such outputs (the growing and the
final copy) beside what is kept and what runs, and the disk has that much free; past
the cap the job fails saying so, and its partial outputs are deleted.

Everything else is played as stored: JPEG photos, WAV/MP3 audio, and
MP4 files already in H.264.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

from station.media import worker as mediaworker

log = logging.getLogger(__name__)

PROFILE = "h264-720-v1"  # change when the output changes, so old cache entries are not used
MAX_HEIGHT = 720
DIRECT_TYPES = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "m4a": "audio/mp4",
}
TEXT_EXTS = {"txt", "log", "csv"}


class PlaybackError(Exception):
    """The file cannot be played in a browser."""


@dataclass
class Job:
    """One transcoding, running or finished."""

    key: str
    source: Path
    frag: Path
    final: Path
    frames_total: int = 0
    frames_done: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    ended: float = 0.0  # time.monotonic() when it finished

    @property
    def progress(self) -> float:
        if self.done.is_set():
            return 1.0
        return min(0.99, self.frames_done / self.frames_total) if self.frames_total else 0.0


def ext_of(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def browser_type(name: str, kind: str) -> str | None:
    """The MIME type under which the stored file itself plays in a browser (None: it does not)."""
    return DIRECT_TYPES.get(ext_of(name))


def read_text(path: Path, limit: int = 2_000_000) -> str:
    """A device log as text: UTF-8, else GB18030 (recorders write GBK), never failing."""
    with open(path, "rb") as f:
        data = f.read(limit)
    for enc in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace")


def _even(n: float) -> int:
    return max(2, round(n / 2) * 2)


Media = Path | BinaryIO  # a path, or a file PyAV reads or writes through (the media worker's)


def _media(m: Media) -> str | BinaryIO:
    return str(m) if isinstance(m, Path) else m


def transcode(source: Media, dest: Media, job: Any = None) -> None:
    """Transcode any video PyAV can read into a fragmented H.264 (+AAC) MP4 at `dest`.
    Only the media worker calls this (station/media/worker.py): never the daemon."""
    import av  # FFmpeg is loaded in the media worker only

    with av.open(_media(source)) as inp:
        if not inp.streams.video:
            raise PlaybackError("the file holds no video stream")
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        ain = inp.streams.audio[0] if inp.streams.audio else None
        w, h = vin.codec_context.width, vin.codec_context.height
        if not w or not h:
            raise PlaybackError("the video has no picture size")
        if h > MAX_HEIGHT:
            w, h = _even(w * MAX_HEIGHT / h), MAX_HEIGHT
        else:
            w, h = _even(w), _even(h)
        rate = vin.average_rate or vin.guessed_rate or Fraction(30)
        if job is not None:
            job.frames_total = vin.frames or int(
                float(vin.duration * vin.time_base) * float(rate) if vin.duration else 0
            )
        with av.open(
            _media(dest),
            "w",
            format="mp4",
            options={"movflags": "frag_keyframe+empty_moov+default_base_moof"},
        ) as out:
            vo = out.add_stream(
                "libx264",
                rate=rate,
                options={
                    "preset": "ultrafast",
                    "tune": "zerolatency",
                    "crf": "26",
                    "threads": "2",  # leave the other core to collection
                    # a keyframe (and so a fragment the browser can play) every second
                    "g": str(max(1, round(float(rate)))),
                },
            )
            vo.width, vo.height, vo.pix_fmt = w, h, "yuv420p"
            vo.time_base = Fraction(1, 90_000)
            ao = None
            resampler = None
            if ain is not None:
                ao = out.add_stream("aac", rate=48_000)
                ao.layout = "stereo" if (ain.layout.nb_channels or 1) > 1 else "mono"
                resampler = av.AudioResampler(
                    format="fltp", layout=ao.layout.name, rate=48_000, frame_size=1024
                )
            streams = [vin] + ([ain] if ain is not None else [])
            t0: float | None = None
            for packet in inp.demux(streams):
                for frame in packet.decode():
                    if packet.stream is vin:
                        t = frame.time if frame.time is not None else 0.0
                        if t0 is None:
                            t0 = t
                        vf = frame.reformat(width=w, height=h, format="yuv420p")
                        vf.pts = round((t - t0) * 90_000)
                        vf.time_base = vo.time_base
                        for p in vo.encode(vf):
                            out.mux(p)
                        if job is not None:
                            job.frames_done += 1
                    elif ao is not None and resampler is not None:
                        frame.pts = None
                        for af in resampler.resample(frame):
                            for p in ao.encode(af):
                                out.mux(p)
            for p in vo.encode():
                out.mux(p)
            if ao is not None and resampler is not None:
                for af in resampler.resample(None):
                    for p in ao.encode(af):
                        out.mux(p)
                for p in ao.encode():
                    out.mux(p)


def remux_faststart(source: Media, dest: Media) -> None:
    """Copy the packets of a (fragmented) MP4 into an ordinary one with its index in front."""
    import av

    with (
        av.open(_media(source)) as inp,
        av.open(_media(dest), "w", format="mp4", options={"movflags": "+faststart"}) as out,
    ):
        mapping = {}
        for s in inp.streams:
            if s.type in ("video", "audio"):
                mapping[s.index] = out.add_stream_from_template(s)
        for packet in inp.demux(list(inp.streams)):
            if packet.dts is None or packet.stream.index not in mapping:
                continue
            packet.stream = mapping[packet.stream.index]
            out.mux(packet)


class Transcoder:
    """Transcodes videos for the browser on demand, one at a time per file, with a cache."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        max_bytes: int = 4_000_000_000,
        workers: int = 2,
        output_factor: float = 4.0,
        output_extra: int = 64 << 20,
    ):
        self.cache_dir = Path(cache_dir)
        self.max_bytes = max_bytes
        self.output_factor = output_factor
        self.output_extra = output_extra
        self._reserved: dict[str, int] = {}  # running jobs: the bytes they may write
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(workers)
        self._trim_lock = threading.Lock()

    def _paths(self, sha256: str) -> tuple[Path, Path]:
        key = f"{sha256}-{PROFILE}"
        return self.cache_dir / f"{key}.frag.mp4", self.cache_dir / f"{key}.mp4"

    def cached(self, sha256: str) -> Path | None:
        """The finished browser copy of a file, if there is one."""
        final = self._paths(sha256)[1]
        if final.exists():
            with contextlib.suppress(OSError):
                os.utime(final)  # least recently used goes first
            return final
        return None

    def start(self, source: Path, sha256: str) -> Job:
        """The job making the browser copy of `source` (started now if needed)."""
        frag, final = self._paths(sha256)
        with self._lock:
            job = self._jobs.get(sha256)
            if job is not None and not job.done.is_set():
                return job  # running
            if job is not None and job.error is not None and time.monotonic() - job.ended < 60:
                return job  # failed a moment ago: do not try again at every request
            job = Job(sha256, source, frag, final)
            self._jobs[sha256] = job
            if final.exists():
                job.done.set()
                return job
        threading.Thread(target=self._run, args=(job,), name=f"transcode-{sha256[:8]}").start()
        return job

    def job(self, sha256: str) -> Job | None:
        with self._lock:
            return self._jobs.get(sha256)

    def output_cap(self, source: Path) -> int:
        """The most one browser copy of `source` may take."""
        return int(source.stat().st_size * self.output_factor) + self.output_extra

    def _reserve(self, job: Job, cap: int) -> None:
        """Make room for the job's two outputs (the growing copy and the final one) in the
        cache and on the disk, or refuse it."""
        need = 2 * cap
        if need > self.max_bytes:
            raise PlaybackError(
                f"a browser copy of this file could take {need // 1_000_000} MB, more than "
                f"the playback cache's {self.max_bytes // 1_000_000} MB"
            )
        with self._lock:
            others = sum(self._reserved.values())
            self._reserved[job.key] = need
        self.trim(room=need + others)
        st = os.statvfs(self.cache_dir)
        free = st.f_bavail * st.f_frsize
        if free < need + others:
            raise PlaybackError(
                f"not enough free space for a browser copy: {need // 1_000_000} MB needed, "
                f"{free // 1_000_000} MB free"
            )

    def _run(self, job: Job) -> None:
        with self._slots:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = job.final.with_suffix(".tmp.mp4")
            try:
                t = time.monotonic()
                cap = self.output_cap(job.source)
                self._reserve(job, cap)
                mediaworker.run_transcode(job.source, job.frag, tmp, job, max_bytes=cap)
                os.replace(tmp, job.final)
                log.info(
                    "transcoded %s (%s frames) in %.1f s",
                    job.source.name,
                    job.frames_done,
                    time.monotonic() - t,
                )
            except Exception as e:
                log.warning("transcoding %s failed: %s", job.source, e)
                job.error = str(e) or type(e).__name__
                tmp.unlink(missing_ok=True)  # partial outputs go before the job is done
                job.frag.unlink(missing_ok=True)
            finally:
                with self._lock:
                    self._reserved.pop(job.key, None)
                job.ended = time.monotonic()
                job.done.set()
        # readers following the fragmented file keep it open; unlinking is safe
        job.frag.unlink(missing_ok=True)
        self.trim()

    def follow(self, job: Job, chunk: int = 256 * 1024) -> Iterator[bytes]:
        """The fragmented MP4 as it grows (for a player that starts before the end)."""
        deadline = time.monotonic() + 30
        f = None
        while f is None:
            try:
                f = open(job.frag, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                if job.done.is_set():
                    if job.error is None and job.final.exists():
                        f = open(job.final, "rb")  # noqa: SIM115 - closed below
                        break
                    return
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)
        with f:
            while True:
                data = f.read(chunk)
                if data:
                    yield data
                    continue
                if job.done.is_set():
                    data = f.read()
                    if data:
                        yield data
                    return
                time.sleep(0.05)

    def trim(self, room: int = 0) -> None:
        """Delete the least recently used browser copies beyond `max_bytes`, less `room`
        kept free for running jobs (one trim at a time: two at once each counted the
        other's deletion as still there, and went on to delete the newest copy too)."""
        with self._trim_lock:
            try:
                entries = [
                    (p.stat().st_mtime, p.stat().st_size, p)
                    for p in self.cache_dir.glob("*.mp4")
                    if not p.name.endswith((".frag.mp4", ".tmp.mp4"))
                ]
            except OSError:
                return
            total = sum(size for _, size, _ in entries)
            for _, size, p in sorted(entries):
                if total + room <= self.max_bytes:
                    break
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass  # gone already: its bytes are free all the same
                except OSError:
                    continue
                total -= size
