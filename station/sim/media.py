"""Real, playable media for the simulated recorders: AVI video, JPEG photos, WAV audio, logs.

Everything is produced by the real libraries (PyAV/FFmpeg and Pillow), so the station's
probing, hashing and thumbnailing code paths see genuine files, and everything is
deterministic for a given ``seed`` (and library versions).

Video is the hot path (benchmarks fill gigabytes of cards), so :func:`make_video` encodes
only a small pool of distinct MJPEG frames and then muxes those already-encoded packets
over and over, with fresh timestamps, until the requested size is reached. The cost is
then dominated by writing bytes, not by JPEG encoding.
"""

from __future__ import annotations

import itertools
import random
import sys
from array import array
from datetime import datetime
from fractions import Fraction
from functools import lru_cache
from math import pi, sin
from pathlib import Path

import av
from PIL import Image, ImageDraw, ImageFont

__all__ = ["make_audio", "make_log", "make_photo", "make_video"]

VIDEO_WIDTH = 640
VIDEO_HEIGHT = 480
VIDEO_FPS = 30
# Distinct frames actually encoded; the file cycles through them.
_POOL_FRAMES = 6
# Fixed MJPEG quantiser (2 = best). Pinning qmin == qmax disables rate control, so every
# pool frame has a predictable size (~215 KB at 640x480 with the grainy background).
_VIDEO_QSCALE = 2
# Share of full-resolution grain blended over the smooth colour field (more = bigger JPEGs).
_VIDEO_GRAIN = 0.6
# AVI bytes that do not scale with frame count: RIFF/hdrl headers, the JUNK space
# reserved for the OpenDML super index, the INFO list and the idx1 header (measured).
_AVI_FIXED_BYTES = 5_800
# Per frame: the "00dc" chunk header (8 bytes) plus its idx1 entry (16 bytes).
_AVI_FRAME_BYTES = 24

AUDIO_RATE = 16_000

_DEFAULT_RECORDED_AT = datetime(2024, 1, 1, 8, 0, 0)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Return Pillow's bundled font at ``size`` px (no system fonts, so output is portable)."""
    return ImageFont.load_default(size=size)


def _scene(rng: random.Random, size: tuple[int, int], grain: float) -> Image.Image:
    """Return a noise-ish RGB picture: a smooth random colour field with ``grain`` of noise.

    The grain is what makes the JPEG big (noise does not compress); the colour field keeps
    it looking like a blurry scene rather than pure static.
    """
    w, h = size
    cw = 16  # colour blobs across the picture, whatever its resolution
    ch = max(2, round(cw * h / w))
    field = Image.frombytes("RGB", (cw, ch), rng.randbytes(cw * ch * 3))
    field = field.resize(size, Image.Resampling.BICUBIC)
    if grain <= 0:
        return field
    noise = Image.frombytes("RGB", size, rng.randbytes(w * h * 3))
    return Image.blend(field, noise, grain)


def _video_frame(
    rng: random.Random, index: int, label: str, recorded_at: datetime
) -> av.VideoFrame:
    """Render pool frame ``index``: grainy scene, burnt-in OSD text, counter and moving bar."""
    img = _scene(rng, (VIDEO_WIDTH, VIDEO_HEIGHT), _VIDEO_GRAIN)
    draw = ImageDraw.Draw(img)
    font = _font(22)
    # Body-worn-camera style on-screen display: black band with time and device label.
    draw.rectangle((0, 0, VIDEO_WIDTH, 34), fill=(0, 0, 0))
    draw.text((8, 5), f"{recorded_at:%Y-%m-%d %H:%M:%S}", font=font, fill=(255, 255, 255))
    if label:
        draw.text((VIDEO_WIDTH - 8, 5), label, font=font, fill=(255, 220, 0), anchor="ra")
    draw.rectangle((0, VIDEO_HEIGHT - 40, VIDEO_WIDTH, VIDEO_HEIGHT), fill=(0, 0, 0))
    draw.text((8, VIDEO_HEIGHT - 33), f"FRAME {index:02d}", font=font, fill=(255, 255, 255))
    bar_w = 80
    x = 150 + index * (VIDEO_WIDTH - 160 - bar_w) // max(1, _POOL_FRAMES - 1)
    draw.rectangle((x, VIDEO_HEIGHT - 30, x + bar_w, VIDEO_HEIGHT - 10), fill=(220, 30, 30))
    return av.VideoFrame.from_image(img)


def make_video(
    path: Path,
    size_bytes: int,
    *,
    label: str = "",
    seed: int = 0,
    recorded_at: datetime | None = None,
) -> int:
    """Write a real AVI (MJPEG 640x480 @ 30 fps, via PyAV) of about size_bytes; return its size.

    The frame count is the one that lands nearest ``size_bytes``: within half a frame
    (~110 KB, so within 1 % from ~11 MB up), except that there is always at least one
    frame, so a tiny request yields a one-frame file of ~220 KB. ``label`` and
    ``recorded_at`` are burnt into the picture and stored as the AVI ``INAM``/``ICRD``
    tags. The output is a pure function of the arguments (for fixed library versions).
    On error the partial file is removed.
    """
    if size_bytes < 0:
        raise ValueError(f"size_bytes must be >= 0, not {size_bytes}")
    when = recorded_at if recorded_at is not None else _DEFAULT_RECORDED_AT
    rng = random.Random(seed)
    tb = Fraction(1, VIDEO_FPS)
    try:
        with av.open(str(path), "w", format="avi") as container:
            container.metadata["date"] = when.isoformat(sep=" ", timespec="seconds")
            if label:
                container.metadata["title"] = label
            stream = container.add_stream(
                "mjpeg",
                rate=VIDEO_FPS,
                options={"qmin": str(_VIDEO_QSCALE), "qmax": str(_VIDEO_QSCALE)},
            )
            stream.width = VIDEO_WIDTH
            stream.height = VIDEO_HEIGHT
            stream.pix_fmt = "yuvj420p"

            pool: list[av.Packet] = []
            wanted_pool = _POOL_FRAMES
            while len(pool) < wanted_pool:
                frame = _video_frame(rng, len(pool), label, when)
                frame.pts = len(pool)
                frame.time_base = tb
                pool.extend(stream.encode(frame))
                if len(pool) == 1:
                    # Don't encode more distinct frames than the file will contain.
                    per_frame = pool[0].size + _AVI_FRAME_BYTES
                    estimate = round((size_bytes - _AVI_FIXED_BYTES) / per_frame)
                    wanted_pool = max(1, min(_POOL_FRAMES, estimate))
            pool.extend(stream.encode(None))  # MJPEG has no delay; drain for form's sake.

            written = _AVI_FIXED_BYTES
            for n, packet in enumerate(itertools.cycle(pool)):
                cost = packet.size + (packet.size & 1) + _AVI_FRAME_BYTES
                # Stop at the frame count nearest to the target, but write at least one.
                if n and written + cost // 2 > size_bytes:
                    break
                # Re-stamp the already-encoded packet and mux it again. mux() takes its
                # own reference to the packet's buffer, so the pool is never copied.
                packet.time_base = tb
                packet.pts = packet.dts = n
                packet.duration = 1
                container.mux(packet)
                written += cost
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path.stat().st_size


def make_photo(
    path: Path, *, label: str = "", seed: int = 0, size: tuple[int, int] = (1920, 1080)
) -> int:
    """Write a real JPEG photo (Pillow); return bytes written.

    A grainy scene with ``label`` stamped in the corner, quality 90 (about 1-1.5 MB at
    1920x1080, like a real recorder snapshot). Deterministic for a given seed.
    """
    w, h = size
    if w < 1 or h < 1:
        raise ValueError(f"bad photo size {size!r}")
    rng = random.Random(seed)
    img = _scene(rng, (w, h), 0.35)
    if label:
        draw = ImageDraw.Draw(img)
        font = _font(max(10, h // 30))
        box = draw.textbbox((0, 0), label, font=font)
        pad = max(2, h // 100)
        draw.rectangle((0, 0, box[2] + 2 * pad, box[3] + 2 * pad), fill=(0, 0, 0))
        draw.text((pad, pad), label, font=font, fill=(255, 255, 255))
    try:
        img.save(path, format="JPEG", quality=90)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path.stat().st_size


def _syllable(rng: random.Random) -> array:
    """Synthesize one voiced, vowel-like syllable as 16-bit samples.

    A wavetable of harmonics shaped by two random "formants" is played at a gliding pitch
    (90-260 Hz) under a rise/fall envelope: enough to look and sound like speech cadence.
    """
    table_len = 512
    f1 = rng.uniform(300, 900)
    f2 = rng.uniform(900, 2500)
    f0 = rng.uniform(90, 260)
    harmonics = []
    for k in range(1, 13):
        freq = k * f0
        gain = 1 / (1 + ((freq - f1) / 150) ** 2) + 0.6 / (1 + ((freq - f2) / 250) ** 2)
        harmonics.append((k, gain / k**0.5, rng.uniform(0, 6.283)))
    # Build one period, normalised to unit peak.
    period = [
        sum(g * sin(2 * pi * k * i / table_len + ph) for k, g, ph in harmonics)
        for i in range(table_len)
    ]
    peak = max(abs(v) for v in period) or 1.0
    amp = rng.uniform(6_000, 14_000) / peak
    table = [v * amp for v in period]

    n = int(AUDIO_RATE * rng.uniform(0.12, 0.35))
    glide = rng.uniform(-0.3, 0.3)  # relative pitch change across the syllable
    out = array("h", bytes(2 * n))
    phase = 0.0
    for i in range(n):
        t = i / n
        phase = (phase + f0 * (1 + glide * t) / AUDIO_RATE * table_len) % table_len
        env = sin(pi * t) ** 0.7
        out[i] = int(table[int(phase)] * env)
    return out


def make_audio(path: Path, seconds: float, *, seed: int = 0) -> int:
    """Write a real WAV (PCM s16le mono 16 kHz, via PyAV) of a voice-like signal; return its size.

    The signal is a random sequence of synthetic syllables and pauses over a faint noise
    floor, built from a small pool of syllables so long recordings stay cheap. Exactly
    ``round(seconds * 16000)`` samples are written. Deterministic for a given seed.
    """
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, not {seconds}")
    total = round(seconds * AUDIO_RATE)
    rng = random.Random(seed)
    syllables = [_syllable(rng) for _ in range(8)]
    floor = array("h", [rng.randint(-40, 40) for _ in range(AUDIO_RATE // 10)])

    samples = array("h")
    while len(samples) < total:
        # A "word" of 1-4 syllables, then a pause of 50-600 ms of noise floor.
        for _ in range(rng.randint(1, 4)):
            samples.extend(rng.choice(syllables))
        pause = int(AUDIO_RATE * rng.uniform(0.05, 0.6))
        while pause > 0:
            samples.extend(floor[:pause])
            pause -= len(floor)
    del samples[total:]
    if sys.byteorder == "big":
        samples.byteswap()
    pcm = samples.tobytes()

    chunk = AUDIO_RATE  # one-second frames
    try:
        with av.open(str(path), "w", format="wav") as container:
            stream = container.add_stream("pcm_s16le", rate=AUDIO_RATE, layout="mono")
            container.start_encoding()  # header even if there are no samples at all
            for start in range(0, total, chunk):
                n = min(chunk, total - start)
                frame = av.AudioFrame(format="s16", layout="mono", samples=n)
                frame.planes[0].update(pcm[2 * start : 2 * (start + n)])
                frame.sample_rate = AUDIO_RATE
                frame.pts = start
                frame.time_base = Fraction(1, AUDIO_RATE)
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path.stat().st_size


def make_log(path: Path, lines: list[str]) -> int:
    """Write a recorder device log (plain text, CRLF, GBK-encodable).

    Every line is terminated by CRLF. Lines must not contain line breaks themselves, and
    the text must be encodable as GBK (as recorder firmware writes it): otherwise
    ``ValueError`` (``UnicodeEncodeError`` for the encoding) is raised and nothing is written.
    Returns the number of bytes written.
    """
    for line in lines:
        if "\r" in line or "\n" in line:
            raise ValueError(f"log line contains a line break: {line!r}")
    data = "".join(f"{line}\r\n" for line in lines).encode("gbk")
    path.write_bytes(data)
    return len(data)
