"""Thumbnails of stored footage for the console's file list, made once, in the background.

`thumbnail(file)` decodes one picture of a video (about a second in, so not the black
first frame) or a photo with PyAV and returns a small JPEG; both it and `duration_s`
run in the media worker (station/media/worker.py), never in the daemon, which only hands
it the stored file's descriptor. `ThumbnailCache` keeps the results as files named by
the content hash (the catalog is not touched), and asks for missing ones one at a time
on a thread of its own so a page of results never waits for the decoder. The evidence
files are only read.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from station.media import worker as mediaworker

log = logging.getLogger(__name__)

WIDTH = 160  # px: two rows of text in the file list
SEEK_S = 1.0


@dataclass(frozen=True)
class MediaInfo:
    """What the file list shows of a file besides its catalog row."""

    thumbnail: bool
    duration_s: float | None


def thumbnail(source: BinaryIO, *, width: int = WIDTH) -> bytes:
    """A JPEG of one picture of the video or photo in `source`, `width` pixels wide (in
    the media worker). Raises ValueError when the file has no picture PyAV can decode."""
    import av

    image = None
    with av.open(source) as container:
        if not container.streams.video:
            raise ValueError("no picture")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if stream.duration and stream.time_base and stream.frames != 1:
            target = int(SEEK_S / stream.time_base)
            if stream.duration > 2 * target:
                container.seek(target, stream=stream)
        for frame in container.decode(stream):
            image = frame.to_image()
            break
    if image is None:
        raise ValueError("no decodable picture")
    height = max(1, round(image.height * width / image.width))
    out = io.BytesIO()
    image.convert("RGB").resize((width, height)).save(out, "JPEG", quality=80)
    return out.getvalue()


def duration_s(source: BinaryIO) -> float | None:
    """The length of a video or sound file in seconds, or None when it does not say (in
    the media worker)."""
    import av

    with av.open(source) as container:
        if container.duration:
            return container.duration / av.time_base
        for s in container.streams:
            if s.duration and s.time_base:
                return float(s.duration * s.time_base)
    return None


class ThumbnailCache:
    """Thumbnails and lengths as files in `folder` (`<sha256>.jpg`, `<sha256>.json`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="thumbnails")
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    def jpeg(self, sha256: str) -> Path:
        return self.folder / f"{sha256}.jpg"

    def info(self, sha256: str, path: Path, kind: str) -> MediaInfo | None:
        """What is known of a file; None while it is being made (asked for now if new)."""
        meta = self.folder / f"{sha256}.json"
        try:
            data = json.loads(meta.read_text("utf-8"))
            return MediaInfo(bool(data.get("thumbnail")), data.get("duration_s"))
        except (OSError, ValueError):
            pass
        with self._lock:
            if sha256 not in self._pending:
                self._pending.add(sha256)
                self._pool.submit(self._make, sha256, path, kind)
        return None

    def _make(self, sha256: str, path: Path, kind: str) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            data: dict[str, object] = {"thumbnail": False, "duration_s": None}
            if kind in ("video", "photo", "audio"):
                try:
                    jpeg, data["duration_s"] = mediaworker.run_probe(path, kind)
                    if jpeg is not None:
                        _write(self.jpeg(sha256), jpeg)
                        data["thumbnail"] = True
                except mediaworker.WorkerError as e:
                    log.info("no thumbnail or length for %s: %s", path.name, e)
            _write(self.folder / f"{sha256}.json", json.dumps(data).encode())
        except OSError as e:
            log.warning("thumbnail cache: %s", e)
        finally:
            with self._lock:
                self._pending.discard(sha256)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _write(target: Path, data: bytes) -> None:
    """A cache file appears whole or not at all (it is only a cache: no fsync)."""
    tmp = target.with_suffix(target.suffix + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
