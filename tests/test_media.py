"""The simulated recorders' media really decode, hit their sizes and are deterministic."""

from __future__ import annotations

import sys
from array import array
from collections import deque
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import av
import pytest
from PIL import Image

from station.sim.media import (
    AUDIO_RATE,
    VIDEO_FPS,
    VIDEO_HEIGHT,
    VIDEO_WIDTH,
    make_audio,
    make_log,
    make_photo,
    make_video,
)


def _probe_video(path: Path) -> tuple[str, str, int, int, Fraction, int, list[bytes]]:
    """Decode every frame; return format, codec, size, rate, header frame count, frames."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_image().tobytes() for frame in container.decode(stream)]
        return (
            container.format.name,
            stream.codec_context.name,
            stream.codec_context.width,
            stream.codec_context.height,
            stream.average_rate,
            stream.frames,
            frames,
        )


def test_small_video_decodes_completely(tmp_path: Path) -> None:
    path = tmp_path / "small.avi"
    written = make_video(
        path, 2_000_000, label="DSJ-A1 000123", seed=5, recorded_at=datetime(2025, 3, 4, 5, 6, 7)
    )

    assert written == path.stat().st_size
    assert abs(written - 2_000_000) <= 0.1 * 2_000_000
    fmt, codec, width, height, rate, header_frames, frames = _probe_video(path)
    assert fmt == "avi"
    assert codec == "mjpeg"
    assert (width, height) == (VIDEO_WIDTH, VIDEO_HEIGHT)
    assert rate == VIDEO_FPS
    assert len(frames) > 1
    assert header_frames == len(frames)  # the AVI header was finalised by the trailer
    assert frames[0] != frames[1]  # the counter / bar moves
    with av.open(str(path)) as container:
        assert container.metadata["title"] == "DSJ-A1 000123"
        assert container.metadata["date"] == "2025-03-04 05:06:07"
        assert container.duration == pytest.approx(len(frames) / VIDEO_FPS * 1e6, rel=0.01)


@pytest.mark.parametrize("size", [0, 1, 50_000])
def test_tiny_video_still_has_one_frame(tmp_path: Path, size: int) -> None:
    path = tmp_path / "tiny.avi"
    written = make_video(path, size, seed=1)

    assert written == path.stat().st_size
    assert written < 400_000  # one frame, not a pool's worth
    fmt, codec, *_, header_frames, frames = _probe_video(path)
    assert (fmt, codec) == ("avi", "mjpeg")
    assert len(frames) == header_frames == 1


def test_video_hits_target_size(tmp_path: Path) -> None:
    target = 20 * 1024 * 1024
    path = tmp_path / "big.avi"
    written = make_video(path, target, label="cam", seed=2)

    assert written == path.stat().st_size
    assert abs(written - target) <= 0.1 * target
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        assert len(packets) == stream.frames > 60
        assert [p.pts for p in packets] == list(range(len(packets)))
        assert all(p.is_keyframe for p in packets)
        # The tail decodes as well as the head: muxed repeats are real frames.
        container.seek(0)
        tail = deque(container.decode(stream), maxlen=1)
        assert len(tail) == 1
        last = tail[0]
        assert (last.width, last.height) == (VIDEO_WIDTH, VIDEO_HEIGHT)


def test_video_is_deterministic(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.avi", tmp_path / "b.avi", tmp_path / "c.avi"
    make_video(a, 1_500_000, label="x", seed=9)
    make_video(b, 1_500_000, label="x", seed=9)
    make_video(c, 1_500_000, label="x", seed=10)

    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_video_rejects_negative_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_video(tmp_path / "v.avi", -1)
    assert not (tmp_path / "v.avi").exists()


def test_photo_is_a_valid_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "IMG_0001.JPG"
    written = make_photo(path, label="DSJ-A1 000123", seed=4)

    assert written == path.stat().st_size > 100_000
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "JPEG"
        assert img.size == (1920, 1080)
        img.load()


def test_photo_custom_size_and_determinism(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.jpg"
    make_photo(a, size=(320, 240), seed=1)
    make_photo(b, size=(320, 240), seed=1)
    make_photo(c, size=(320, 240), seed=2)

    with Image.open(a) as img:
        assert img.size == (320, 240)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def _decode_audio(path: Path) -> tuple[str, str, int, int, array]:
    """Decode a WAV; return format, codec, rate, channels and all samples."""
    samples = array("h")
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            samples.frombytes(bytes(frame.planes[0])[: 2 * frame.samples])
        info = (container.format.name, stream.codec_context.name, stream.rate, stream.channels)
    if sys.byteorder == "big":
        samples.byteswap()
    return (*info, samples)


def test_audio_decodes_with_right_duration(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    written = make_audio(path, 2.5, seed=3)

    assert written == path.stat().st_size
    assert 2 * int(2.5 * AUDIO_RATE) + 44 <= written < 2 * int(2.5 * AUDIO_RATE) + 1024
    fmt, codec, rate, channels, samples = _decode_audio(path)
    assert (fmt, codec, rate, channels) == ("wav", "pcm_s16le", AUDIO_RATE, 1)
    assert len(samples) == int(2.5 * AUDIO_RATE)
    assert len(samples) / rate == pytest.approx(2.5)
    assert max(abs(s) for s in samples) > 3_000  # there is a signal, not silence
    with av.open(str(path)) as container:
        assert container.duration == pytest.approx(2.5e6, abs=1e3)


def test_audio_edge_cases_and_determinism(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    make_audio(empty, 0)
    assert _decode_audio(empty)[-1] == array("h")

    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    make_audio(a, 1, seed=7)
    make_audio(b, 1, seed=7)
    assert a.read_bytes() == b.read_bytes()

    with pytest.raises(ValueError):
        make_audio(tmp_path / "neg.wav", -1)


def test_log_is_crlf_gbk(tmp_path: Path) -> None:
    path = tmp_path / "DEVICE.LOG"
    lines = ["2024-01-01 08:00:00 开机 power on", "2024-01-01 08:00:05 录像开始 REC"]
    written = make_log(path, lines)

    data = path.read_bytes()
    assert written == len(data)
    assert data == "\r\n".join(lines).encode("gbk") + b"\r\n"
    assert data.count(b"\r\n") == 2
    assert b"\n" not in data.replace(b"\r\n", b"")


def test_log_rejects_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "DEVICE.LOG"
    with pytest.raises(UnicodeEncodeError):
        make_log(path, ["ok", "emoji \U0001f4f7"])
    with pytest.raises(ValueError):
        make_log(path, ["two\nlines"])
    assert not path.exists()
    assert make_log(path, []) == 0
    assert path.read_bytes() == b""
