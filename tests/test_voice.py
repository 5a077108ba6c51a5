"""Voice announcements (SPEC S32): real espeak-ng speech, one at a time, quiet hours.

Needs the Debian packages espeak-ng (and espeak-ng-data) installed; plays
nothing on a sound card: players here are fakes that record what they were given.
"""

from __future__ import annotations

import array
import datetime as dt
import itertools
import math
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import wave
from pathlib import Path

import pytest
from pydantic import ValidationError

from station import voice
from station.health.alarms import SEVERITY
from station.voice import (
    ALARMS,
    MESSAGES,
    REASONS,
    Announcer,
    SynthesisError,
    VoiceConfig,
    announcement_for_slot_change,
    in_quiet_hours,
    message,
    render,
    spoken_text,
)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
]

REQUIRED_ALARMS = [
    "storage_full",
    "disk_degraded",
    "storage_low",
    "disk_unhealthy",
    "disk_missing",
    "network_down",
    "clock_unsynced",
    "clock_jump",
    "collection_failed",
    "recorder_clock_drift",
    "battery_critical",
    "verify_failed",
    "store_corrupt",
    "store_inconsistent",
]


# --- audio helpers ----------------------------------------------------------------------


def read_wav(path: Path) -> tuple[int, list[int]]:
    """(sample rate, samples) of a 16-bit mono WAV."""
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 1
        assert w.getsampwidth() == 2
        rate = w.getframerate()
        data = array.array("h", w.readframes(w.getnframes()))
    if sys.byteorder == "big":
        data.byteswap()
    return rate, data.tolist()


def rms(samples: list[int]) -> float:
    return math.sqrt(sum(s * s for s in samples) / len(samples)) if samples else 0.0


def frame_rms(samples: list[int], rate: int, ms: int = 20) -> list[float]:
    n = rate * ms // 1000
    return [rms(samples[i : i + n]) for i in range(0, len(samples) - n + 1, n)]


def assert_speech(path: Path, min_s: float = 0.8, max_s: float = 10.0) -> float:
    """The WAV is speech-like: plausible length and rate, loud, with pauses between sounds."""
    rate, samples = read_wav(path)
    assert 8000 <= rate <= 48000
    duration = len(samples) / rate
    assert min_s < duration < max_s, duration
    level = rms(samples)
    assert level > 1000, f"RMS {level:.0f}: that is silence"
    frames = frame_rms(samples, rate)
    voiced = sum(f > 300 for f in frames) / len(frames)
    # speech has syllables and gaps: neither all silence nor one constant tone
    assert 0.3 < voiced < 0.97, voiced
    assert max(frames) > 4 * (sorted(frames)[len(frames) // 2] + 1) or voiced < 0.9
    return duration


def phonemes(text: str, voice_name: str = "cmn-latn-pinyin") -> str:
    r = subprocess.run(
        ["espeak-ng", "-q", "-x", "-v", voice_name, text],
        capture_output=True,
        check=True,
        timeout=10,
    )
    return r.stdout.decode()


def bare(ph: str) -> str:
    """Phonemes without pauses, stress marks and spaces."""
    return "".join(c for c in ph.replace("_|", "") if c not in "',; \n")


# --- rendering ----------------------------------------------------------------------------


def test_render_mandarin_is_speech(tmp_path: Path) -> None:
    text = message("collection_complete", "zh", port=3)
    assert text == "3号端口采集完成，可以拔出"
    out = render(text, "zh", tmp_path / "zh.wav", volume=80, rate=160)
    assert out == tmp_path / "zh.wav"
    duration = assert_speech(out)
    # 12 syllables at 160 wpm: a few seconds, not a blip and not a minute
    assert 2.0 < duration < 8.0


def test_render_english_is_speech(tmp_path: Path) -> None:
    text = message("collection_complete", "en", port=3)
    assert text == "Port 3 complete, you may unplug"
    duration = assert_speech(render(text, "en", tmp_path / "en.wav", volume=80, rate=160))
    assert 1.0 < duration < 6.0


def test_silent_wav_is_not_speech(tmp_path: Path) -> None:
    """Volume 0 gives a WAV of the same length with nothing in it: the checks tell them apart."""
    text = message("collection_started", "zh", port=5)
    loud = render(text, "zh", tmp_path / "loud.wav", volume=80, rate=160)
    silent = render(text, "zh", tmp_path / "silent.wav", volume=0, rate=160)
    rate, s_loud = read_wav(loud)
    _, s_silent = read_wav(silent)
    assert abs(len(s_loud) - len(s_silent)) < rate // 10
    assert rms(s_silent) < 10 < 1000 < rms(s_loud)
    with pytest.raises(AssertionError, match="silence"):
        assert_speech(silent)


def test_longer_text_gives_longer_audio(tmp_path: Path) -> None:
    for lang, word, sep in (("zh", "好", "，"), ("en", "Yes", ". ")):
        short_s = voice.wav_duration(render(word, lang, tmp_path / "s.wav"))
        mid_text = message("unregistered", lang, port=7)
        long_text = mid_text + sep + message("alarm", lang, code="storage_full")
        mid_s = assert_speech(render(mid_text, lang, tmp_path / "m.wav"))
        long_s = assert_speech(render(long_text, lang, tmp_path / "l.wav"), max_s=15)
        assert short_s < mid_s < long_s
        assert long_s > 1.3 * mid_s


def test_volume_scales_the_level(tmp_path: Path) -> None:
    text = message("collection_complete", "zh", port=1)
    _, quiet = read_wav(render(text, "zh", tmp_path / "q.wav", volume=40))
    _, loud = read_wav(render(text, "zh", tmp_path / "l.wav", volume=80))
    assert 0.4 < rms(quiet) / rms(loud) < 0.6
    assert max(abs(s) for s in loud) < 32000  # 80 does not clip


def test_slower_rate_is_longer(tmp_path: Path) -> None:
    text = message("collection_complete", "en", port=2)
    slow = voice.wav_duration(render(text, "en", tmp_path / "a.wav", rate=120))
    fast = voice.wav_duration(render(text, "en", tmp_path / "b.wav", rate=240))
    assert slow > 1.4 * fast


def test_render_passes_text_as_one_argument(tmp_path: Path, monkeypatch) -> None:
    """No shell: metacharacters are just text, a leading dash is not an option."""
    monkeypatch.chdir(tmp_path)
    text = '-w x.wav "; touch a; $(touch b) `touch c` 3号端口'
    assert_speech(render(text, "zh", tmp_path / "out.wav"), max_s=40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


def test_render_errors_are_synthesis_errors(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(SynthesisError):
        render("   ", "zh", tmp_path / "e.wav")
    with pytest.raises(SynthesisError, match="no voice"):
        render("hello", "en", tmp_path / "e.wav", voice="no-such-voice")  # espeak-ng would not
    for name in (
        "cmn-latn-pinyin",
        "CMN-Latn-Pinyin",
        "en",
        "en-us",
        "en+f3",
        "sit/cmn-Latn-pinyin",
    ):
        assert voice.voice_exists(name), name
    monkeypatch.setattr(voice, "ESPEAK", "espeak-ng-not-here")
    with pytest.raises(SynthesisError, match="not installed"):
        render("hello", "en", tmp_path / "e.wav")


# --- Mandarin pronunciation ---------------------------------------------------------------


def all_texts(lang: str) -> list[str]:
    texts = [message(k, lang, port=3) for k in MESSAGES if k not in ("alarm",)]
    texts += [message("collection_failed", lang, port=3, reason=r) for r in REASONS]
    texts += [message("alarm", lang, code=c) for c in ALARMS]
    return texts


def test_every_mandarin_phrase_is_read_as_mandarin() -> None:
    """espeak-ng falls back to English letter-reading for what it cannot say: none of that."""
    for text in all_texts("zh"):
        ph = phonemes(spoken_text(text, "zh"))
        assert ph.strip(), text
        assert "(en)" not in ph, f"{text}: {ph}"


def test_cmn_voice_default_is_the_pinyin_one() -> None:
    """espeak-ng 1.51's plain `cmn` reads characters' pinyin with English rules."""
    assert VoiceConfig().voice_zh == "cmn-latn-pinyin"
    assert "(en)" not in phonemes("端口")


@pytest.mark.parametrize(
    ("digits", "hanzi"),
    [
        *[(1, "一"), (2, "二"), (3, "三"), (8, "八"), (9, "九"), (10, "十"), (11, "十一")],
        *[(12, "十二"), (16, "十六"), (20, "二十"), (24, "二十四"), (32, "三十二")],
    ],
)
def test_port_numbers_are_spoken_as_mandarin_numbers(digits: int, hanzi: str) -> None:
    assert spoken_text(f"{digits}号端口", "zh") == f"{hanzi}号端口"
    assert spoken_text(f"Port {digits}", "en") == f"Port {digits}"
    # espeak-ng reads the digits with the same sounds (it only pauses and stresses them apart)
    assert bare(phonemes(f"{digits}号")) == bare(phonemes(f"{hanzi}号"))


def test_zh_numerals() -> None:
    cases = {
        0: "零",
        7: "七",
        10: "十",
        19: "十九",
        40: "四十",
        105: "一百零五",
        110: "一百一十",
        1000: "一千",
        1010: "一千零一十",
        2048: "二千零四十八",
        10000: "一万",
        10010: "一万零一十",
        100000: "十万",
        123456: "十二万三千四百五十六",
    }
    for n, text in cases.items():
        assert voice.zh_numeral(n) == text, n
    assert spoken_text("编号007", "zh") == "编号零零七"


def test_polyphones_are_given_their_reading() -> None:
    # 差 in 偏差 is cha1 (espeak-ng alone says cha4), 校 in 校验 is jiao4 (not xiao4)
    assert phonemes(spoken_text("偏差", "zh")) == phonemes("pian1 cha1")
    assert phonemes(spoken_text("校验", "zh")) == phonemes("jiao4 yan4")
    assert phonemes(spoken_text("校验", "zh")) != phonemes("校验")
    for word, pinyin in voice.ZH_PRONUNCIATION.items():
        assert phonemes(spoken_text(f"请{word}。", "zh")) == phonemes(f"请 {pinyin}。"), word


# --- the catalogue ------------------------------------------------------------------------


def test_catalogue_is_complete() -> None:
    for table in (MESSAGES, REASONS, ALARMS):
        for key, texts in table.items():
            assert set(texts) == {"zh", "en"}, key
            assert all(t.strip() for t in texts.values()), key
    for code in [*REQUIRED_ALARMS, *SEVERITY]:
        assert code in ALARMS, code
    for kind in ("collection_started", "collection_complete", "collection_failed"):
        assert kind in MESSAGES
    assert "unregistered" in MESSAGES


def test_messages() -> None:
    assert message("collection_started", "zh", port=3) == "3号端口开始采集"
    assert message("collection_complete", "en", port=8) == "Port 8 complete, you may unplug"
    assert message("collection_failed", "zh", port=2) == "2号端口采集失败"
    assert message("collection_failed", "en", port=2, reason="wrong_password") == (
        "Port 2, collection failed, wrong device password"
    )
    assert message("collection_failed", "en", port=2, reason="???") == ("Port 2, collection failed")
    assert message("alarm", "zh", code="storage_full") == "警报，存储空间已满，无法继续采集"
    assert message("alarm", "en", code="no_such_code") == "Alarm. Please check the screen"
    assert message("unregistered", "zh", port=4).startswith("4号端口")
    with pytest.raises(ValueError, match="unknown"):
        message("dance", "zh")
    with pytest.raises(ValueError, match="port"):
        message("collection_complete", "zh")


def test_severity() -> None:
    assert voice.severity_of("alarm", code="storage_full") == "critical"
    assert voice.severity_of("alarm", code="network_down") == "warning"
    assert voice.severity_of("alarm", code="???") == "warning"
    assert voice.severity_of("collection_complete", port=1) == "info"
    for code, sev in SEVERITY.items():  # the alarm book's
        assert voice.severity_of("alarm", code=code) == sev


@pytest.mark.parametrize(
    ("old", "new", "why", "expected"),
    [
        ("identifying", "collecting", None, ("collection_started", {"port": 3})),
        ("unregistered", "collecting", None, ("collection_started", {"port": 3})),
        ("empty", "collecting", None, ("collection_started", {"port": 3})),
        ("collecting", "complete", None, ("collection_complete", {"port": 3})),
        ("identifying", "complete", None, ("collection_complete", {"port": 3})),
        ("collecting", "error", None, ("collection_failed", {"port": 3})),
        (
            "collecting",
            "error",
            "files_kept",
            ("collection_failed", {"port": 3, "reason": "files_kept"}),
        ),
        (
            "identifying",
            "error",
            "wrong_password",
            ("collection_failed", {"port": 3, "reason": "wrong_password"}),
        ),
        (
            "identifying",
            "error",
            "not_a_recorder",
            ("collection_failed", {"port": 3, "reason": "not_a_recorder"}),
        ),
        (
            "collecting",
            "error",
            "storage_full",
            ("collection_paused", {"port": 3}),
        ),
        ("error", "collecting", None, ("collection_resumed", {"port": 3})),
        ("identifying", "unregistered", None, ("unregistered", {"port": 3})),
        ("identifying", "unregistered", "held", ("recorder_held", {"port": 3})),
        ("empty", "identifying", None, None),
        ("complete", "empty", None, None),
        ("error", "empty", None, None),
        ("collecting", "collecting", None, None),
        ("complete", "complete", None, None),
        ("complete", "collecting", None, ("collection_started", {"port": 3})),
    ],
)
def test_slot_changes(old: str, new: str, why: str | None, expected: object) -> None:
    """`why`: the slot's reason kind, or "held" for a hold with a reason."""
    reason, held = (None, True) if why == "held" else (why, False)
    assert announcement_for_slot_change(old, new, 3, reason, held) == expected


# --- configuration ------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    c = VoiceConfig()
    assert (c.enabled, c.language, c.volume, c.quiet_hours, c.player) == (
        True,
        "zh",
        80,
        None,
        None,
    )
    assert (c.voice_en, c.rate_wpm) == ("en", 160)
    VoiceConfig(quiet_hours="22:00-07:00", language="en", volume=0, player=["aplay", "-q"])
    for bad in (
        {"volume": 101},
        {"volume": -1},
        {"volume": "80"},
        {"language": "fr"},
        {"quiet_hours": "22-7"},
        {"quiet_hours": "24:00-07:00"},
        {"quiet_hours": "07:00-07:00"},
        {"player": []},
        {"player": [""]},
        {"voice_zh": "cmn; rm -rf /"},
        {"rate_wpm": 10},
        {"colour": "red"},
    ):
        with pytest.raises(ValidationError):
            VoiceConfig(**bad)


def test_config_from_toml() -> None:
    import tomllib

    doc = tomllib.loads(
        textwrap.dedent(
            """
            [voice]
            language = "en"
            volume = 60
            quiet_hours = "22:30-06:30"
            player = ["aplay", "-q", "-D", "plughw:0,0"]
            """
        )
    )
    c = VoiceConfig(**doc["voice"])
    assert c.player == ["aplay", "-q", "-D", "plughw:0,0"]
    assert c.voice_for("en") == "en"


def test_quiet_hours() -> None:
    night = "22:00-07:00"
    assert in_quiet_hours(night, dt.time(23, 30))
    assert in_quiet_hours(night, dt.time(0, 0))
    assert in_quiet_hours(night, dt.time(6, 59, 59))
    assert in_quiet_hours(night, dt.time(22, 0))
    assert not in_quiet_hours(night, dt.time(7, 0))
    assert not in_quiet_hours(night, dt.time(12, 0))
    assert not in_quiet_hours(night, dt.time(21, 59))
    lunch = "12:00-13:30"
    assert in_quiet_hours(lunch, dt.time(12, 45))
    assert not in_quiet_hours(lunch, dt.time(13, 30))
    assert not in_quiet_hours(lunch, dt.time(23, 0))
    assert not in_quiet_hours(None, dt.time(23, 0))


# --- the announcer ------------------------------------------------------------------------

FAKE_PLAYER = """\
import sys, time, wave
log, path = sys.argv[1], sys.argv[-1]
start = time.time()
with wave.open(path, "rb") as w:
    seconds = w.getnframes() / w.getframerate()
time.sleep(float(sys.argv[2]))
with open(log, "a") as f:
    f.write(f"{start} {time.time()} {seconds}\\n")
"""


def fake_player(tmp_path: Path, seconds: float = 0.15) -> tuple[list[str], Path]:
    script = tmp_path / "player.py"
    script.write_text(FAKE_PLAYER)
    log = tmp_path / "played.log"
    return [sys.executable, str(script), str(log), str(seconds)], log


class Recorder:
    """A player callable: records what it played; can be held to let the queue fill."""

    def __init__(self, fail_first: int = 0) -> None:
        self.played: list[float] = []
        self.fail_first = fail_first
        self.calls = 0
        self.release = threading.Event()
        self.release.set()
        self.playing = threading.Event()

    def __call__(self, wav: Path) -> None:
        self.calls += 1
        self.playing.set()
        self.release.wait(10)
        if self.calls <= self.fail_first:
            raise RuntimeError("speaker on fire")
        self.played.append(voice.wav_duration(wav))


def texts(a: Announcer) -> list[str]:
    return [s.text for s in a.history]


def test_announcements_never_overlap_and_keep_their_order(tmp_path: Path) -> None:
    cmd, log = fake_player(tmp_path)
    a = Announcer(VoiceConfig(player=cmd))
    a.start()
    try:
        said = [
            a.say("collection_started", port=1),
            a.say("collection_started", port=2),
            a.say("collection_complete", port=1),
            a.say("alarm", code="network_down"),
            a.say("collection_complete", port=2),
        ]
        assert all(said)
        assert a.wait_idle(30)
    finally:
        a.stop()
    assert texts(a) == [
        "1号端口开始采集",
        "2号端口开始采集",
        "1号端口采集完成，可以拔出",
        "警报，网络连接中断",
        "2号端口采集完成，可以拔出",
    ]
    assert all(s.ok for s in a.history), list(a.history)
    runs = [tuple(map(float, line.split())) for line in log.read_text().splitlines()]
    assert len(runs) == 5
    for (_, end, _), (start, _, _) in itertools.pairwise(runs):
        assert start >= end, "two announcements overlapped"
    assert all(1.0 < seconds < 10 for _, _, seconds in runs)  # the player got real speech


def test_identical_pending_announcements_are_collapsed(tmp_path: Path) -> None:
    rec = Recorder()
    rec.release.clear()
    a = Announcer(VoiceConfig(), play=rec)
    a.start()
    try:
        assert a.say("collection_complete", port=1)
        assert rec.playing.wait(10)  # port 1 is being played; the rest wait
        assert a.say("collection_complete", port=2)
        assert not a.say("collection_complete", port=2)
        assert a.say("alarm", code="storage_low")
        assert not a.say("alarm", code="storage_low")
        assert not a.say("collection_complete", port=2)
        assert a.pending() == ["2号端口采集完成，可以拔出", "警报，存储空间不足，请及时处理"]
        rec.release.set()
        assert a.wait_idle(30)
    finally:
        a.stop()
    assert len(texts(a)) == 3
    assert len(rec.played) == 3


def test_queue_is_bounded_and_critical_alarms_get_in(tmp_path: Path, caplog) -> None:
    rec = Recorder()
    rec.release.clear()
    a = Announcer(VoiceConfig(), play=rec, max_pending=2)
    a.start()
    try:
        assert a.say("collection_started", port=1)
        assert rec.playing.wait(10)
        assert a.say("collection_started", port=2)
        assert a.say("collection_started", port=3)
        with caplog.at_level("WARNING", logger="station.voice"):
            assert not a.say("collection_started", port=4)
            assert "queue full" in caplog.text
            assert a.say("alarm", code="storage_full")  # critical: displaces port 2
        assert a.pending() == ["3号端口开始采集", "警报，存储空间已满，无法继续采集"]
        assert a.dropped == 2
        rec.release.set()
        assert a.wait_idle(30)
    finally:
        a.stop()


def test_quiet_hours_let_only_critical_alarms_through() -> None:
    now = [dt.datetime(2026, 3, 1, 23, 30)]
    rec = Recorder()
    a = Announcer(VoiceConfig(quiet_hours="22:00-07:00"), play=rec, clock=lambda: now[0])
    a.start()
    try:
        assert not a.say("collection_complete", port=1)
        assert not a.say("alarm", code="network_down")  # a warning
        assert a.say("alarm", code="disk_unhealthy")  # critical
        assert a.say("collection_failed", port=1, severity="critical")  # the caller insists
        assert a.wait_idle(30)
        now[0] = dt.datetime(2026, 3, 2, 7, 0)
        assert a.say("collection_complete", port=1)
        assert a.wait_idle(30)
    finally:
        a.stop()
    assert texts(a) == [
        "警报，存储硬盘故障，已停止使用",
        "1号端口采集失败",
        "1号端口采集完成，可以拔出",
    ]


def test_a_failing_player_does_not_kill_the_worker(tmp_path: Path) -> None:
    rec = Recorder(fail_first=1)
    a = Announcer(VoiceConfig(), play=rec)
    a.start()
    try:
        a.say("collection_started", port=1)
        a.say("collection_started", port=2)
        assert a.wait_idle(30)
    finally:
        a.stop()
    assert [s.ok for s in a.history] == [False, True]
    assert "speaker on fire" in (a.history[0].error or "")


def test_a_failing_player_command_is_logged(tmp_path: Path, caplog) -> None:
    fail = tmp_path / "fail.sh"
    fail.write_text("#!/bin/sh\necho 'cannot find card 0' >&2\nexit 1\n")
    fail.chmod(0o755)
    a = Announcer(VoiceConfig(player=[str(fail)]))
    a.start()
    with caplog.at_level("WARNING", logger="station.voice"):
        assert a.say("collection_started", port=1)
        assert a.wait_idle(30)
    assert "cannot find card 0" in caplog.text
    assert not a.history[0].ok
    a.stop()
    # missing player command: logged too, still no exception
    b = Announcer(VoiceConfig(player=["/nonexistent/player"]))
    b.start()
    assert b.say("collection_started", port=1)
    assert b.wait_idle(30)
    b.stop()
    assert not b.history[0].ok


def test_a_hanging_player_is_killed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(voice, "PLAYER_GRACE_S", 0.3)
    # a shell that starts a child: the whole process group goes
    a = Announcer(VoiceConfig(language="en", player=["sh", "-c", "sleep 60", "player"]))
    a.start()
    t0 = time.monotonic()
    try:
        assert a.say("collection_started", port=1)
        assert a.wait_idle(30)
    finally:
        a.stop()
    assert time.monotonic() - t0 < 10
    assert not a.history[0].ok
    assert "killed" in (a.history[0].error or "")


def test_a_failing_synthesiser_does_not_kill_the_worker(monkeypatch) -> None:
    rec = Recorder()
    a = Announcer(VoiceConfig(), play=rec)
    monkeypatch.setattr(voice, "ESPEAK", "espeak-ng-not-here")
    a.start()
    try:
        assert a.say("collection_started", port=1)
        assert a.wait_idle(30)
        monkeypatch.setattr(voice, "ESPEAK", "espeak-ng")
        assert a.say("collection_started", port=2)
        assert a.wait_idle(30)
    finally:
        a.stop()
    assert [s.ok for s in a.history] == [False, True]
    assert rec.calls == 1


def test_say_never_raises_and_respects_off_switches() -> None:
    rec = Recorder()
    a = Announcer(VoiceConfig(), play=rec)
    assert not a.say("no_such_kind", port=1)
    assert not a.say("collection_complete")  # missing port
    assert not Announcer(VoiceConfig(enabled=False), play=rec).say("alarm", code="storage_full")
    assert not Announcer(VoiceConfig(volume=0), play=rec).say("alarm", code="storage_full")
    assert rec.calls == 0


def test_stop_drains_or_drops(tmp_path: Path) -> None:
    cmd, log = fake_player(tmp_path, 0.05)
    a = Announcer(VoiceConfig(player=cmd))
    for port in (1, 2, 3):
        a.say("collection_started", port=port)  # queued before start: played after it
    a.start()
    a.stop(drain=True)
    assert len(texts(a)) == 3
    assert len(log.read_text().splitlines()) == 3

    b = Announcer(VoiceConfig(language="en", player=["sh", "-c", "sleep 60", "player"]))
    b.start()
    for port in (1, 2, 3):
        b.say("collection_started", port=port)
    time.sleep(0.3)  # the first one is playing
    t0 = time.monotonic()
    b.stop()
    assert time.monotonic() - t0 < 5
    assert len(b.history) <= 1
    assert not b.say("collection_started", port=4)


def test_stale_announcements_are_dropped() -> None:
    rec = Recorder()
    a = Announcer(VoiceConfig(), play=rec, max_wait_s=0.0)
    a.say("collection_started", port=1)
    time.sleep(0.01)
    a.start()
    a.stop(drain=True)
    assert rec.calls == 0


def test_command_line_writes_a_wav(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.wav"
    assert voice.main(["alarm", "code=storage_full", "--wav", str(out)]) == 0
    assert "警报，存储空间已满" in capsys.readouterr().out
    assert_speech(out)


def test_the_station_speaks_when_a_port_starts_and_completes(make_station, tmp_path) -> None:
    """Through the running daemon: docking and finishing are announced, in Mandarin, as speech."""
    import wave

    from conftest import wait_for

    from station.sim.recorder import RecorderSpec

    spoken = tmp_path / "spoken"
    spoken.mkdir()
    player = tmp_path / "player.sh"
    player.write_text(f'#!/bin/sh\ncp "$1" "{spoken}/$(date +%s%N).wav"\n')
    player.chmod(0o755)
    st = make_station(voice={"enabled": True, "player": [str(player)]})
    rec = st.build(RecorderSpec(serial="VO00001", officer_no="990001", files=2, imp=0, size_mb=0.3))
    st.dock(3, rec)
    st.wait_state(3, "complete")
    wavs = wait_for(
        lambda: sorted(spoken.iterdir()) if len(list(spoken.iterdir())) >= 2 else None,
        60,
        "two announcements",
    )
    for w in wavs:
        with wave.open(str(w)) as f:
            assert f.getnframes() / f.getframerate() > 0.8  # speech, not a click


def test_a_recorder_pulled_out_early_is_said_with_what_to_do() -> None:
    assert message("collection_failed", "zh", port=4, reason="removed_early").endswith(
        "记录仪在采集完成前被拔出，请重新插入"
    )
    assert "plug it back in" in message("collection_failed", "en", port=4, reason="removed_early")
