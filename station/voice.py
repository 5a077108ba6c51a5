"""Spoken announcements through the station speaker (SPEC S32).

The station says when a port's collection starts, finishes ("3号端口采集完成，可以拔出"),
fails or is held for registration, and speaks its alarms. Speech is made by
espeak-ng into a WAV file and played with the system's audio player (`aplay`
by default). One worker thread plays one announcement at a time, so two never
overlap; identical pending announcements are collapsed, the queue is bounded,
and during the configured quiet hours only critical alarms are spoken.

Nothing here raises into the station: a missing synthesiser, a missing sound
card or a hanging player is logged and the announcement is dropped.

Mandarin uses espeak-ng's `cmn-latn-pinyin` voice. espeak-ng 1.51 (Debian 12)
turns Chinese characters into pinyin internally and its `cmn` voice then reads
that pinyin with English rules ("hao three"); `cmn-latn-pinyin` reads it as
Mandarin. Characters espeak-ng reads with the wrong tone in our phrases (it has
no word context for polyphones) are replaced by pinyin before synthesis.

Why one module of about 800 lines: most of it is the wording (every announcement and
reason in Mandarin and English, tested together); the player and its queue are the rest.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import wave
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

log = logging.getLogger(__name__)

Language = Literal["zh", "en"]
Severity = Literal["info", "warning", "critical"]

ESPEAK = "espeak-ng"
DEFAULT_VOICES: dict[Language, str] = {"zh": "cmn-latn-pinyin", "en": "en"}
#: players tried in this order when `VoiceConfig.player` is not set
DEFAULT_PLAYERS: tuple[tuple[str, ...], ...] = (("aplay", "-q"), ("paplay",), ("play", "-q"))
SYNTH_TIMEOUT_S = 20.0
PLAYER_GRACE_S = 10.0  # a player may run this much longer than the sound before it is killed

_QUIET_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
_VOICE_RE = re.compile(r"^[A-Za-z0-9_+./-]+$")


class VoiceConfig(BaseModel):
    """The `[voice]` section of the station configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    language: Language = "zh"
    # 0 = mute; 100 = espeak-ng's full undistorted level (the ALSA mixer sets the ceiling)
    volume: Annotated[int, Field(strict=True, ge=0, le=100)] = 80
    # "HH:MM-HH:MM" local time, may wrap midnight; only critical alarms are spoken then
    quiet_hours: str | None = None
    # command that plays a WAV file (its path is appended); None = aplay, paplay or sox play
    player: list[str] | None = None
    voice_zh: str = "cmn-latn-pinyin"
    voice_en: str = "en"
    rate_wpm: Annotated[int, Field(strict=True, ge=80, le=450)] = 160

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours(cls, v: str | None) -> str | None:
        if v is not None:
            parse_quiet_hours(v)
        return v

    @field_validator("player")
    @classmethod
    def _player(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or not all(a.strip() for a in v)):
            raise ValueError('must be a non-empty command, e.g. ["aplay", "-q"]')
        return v

    @field_validator("voice_zh", "voice_en")
    @classmethod
    def _voice(cls, v: str) -> str:
        if not _VOICE_RE.match(v):
            raise ValueError(f"not an espeak-ng voice name: {v!r}")
        return v

    def voice_for(self, language: Language) -> str:
        """The espeak-ng voice used for `language`."""
        return self.voice_zh if language == "zh" else self.voice_en


def parse_quiet_hours(spec: str) -> tuple[dt.time, dt.time]:
    """Parse "22:00-07:00" into (start, end); raises ValueError when malformed."""
    m = _QUIET_RE.match(spec.strip())
    if m is None:
        raise ValueError(f"quiet hours must look like 22:00-07:00, not {spec!r}")
    start = dt.time(int(m[1]), int(m[2]))
    end = dt.time(int(m[3]), int(m[4]))
    if start == end:
        raise ValueError("quiet hours start and end at the same time")
    return start, end


def in_quiet_hours(spec: str | None, now: dt.time) -> bool:
    """Whether `now` falls in the quiet hours `spec` (start inclusive, end exclusive)."""
    if spec is None:
        return False
    start, end = parse_quiet_hours(spec)
    now = now.replace(second=0, microsecond=0, tzinfo=None)
    if start < end:
        return start <= now < end
    return now >= start or now < end  # wraps midnight


# --- the messages -------------------------------------------------------------------------

MESSAGES: dict[str, dict[Language, str]] = {
    "collection_started": {
        "zh": "{port}号端口开始采集",
        "en": "Port {port}, collection started",
    },
    "collection_complete": {
        "zh": "{port}号端口采集完成，可以拔出",
        "en": "Port {port} complete, you may unplug",
    },
    "collection_failed": {
        "zh": "{port}号端口采集失败{reason}",
        "en": "Port {port}, collection failed{reason}",
    },
    "collection_paused": {
        "zh": "{port}号端口暂停采集，存储空间已满",
        "en": "Port {port}, collection paused, storage is full",
    },
    "collection_resumed": {
        "zh": "{port}号端口继续采集",
        "en": "Port {port}, collection resumed",
    },
    "unregistered": {
        "zh": "{port}号端口的执法记录仪未注册，请联系管理员",
        "en": "Port {port}, recorder not registered, please call an administrator",
    },
    "recorder_held": {
        "zh": "{port}号端口的执法记录仪需要管理员确认",
        "en": "Port {port}, the recorder needs an administrator's check",
    },
    "alarm": {"zh": "警报，{text}", "en": "Alarm. {text}"},
}

#: why a collection failed, spoken after "port N collection failed"
REASONS: dict[str, dict[Language, str]] = {
    "not_a_recorder": {"zh": "，不是执法记录仪", "en": ", not a recorder"},
    "wrong_password": {"zh": "，设备密码错误", "en": ", wrong device password"},
    "storage_full": {"zh": "，存储空间已满", "en": ", storage is full"},
    "files_kept": {
        "zh": "，部分文件保留在记录仪上",
        "en": ", some files were kept on the recorder",
    },
    "internal_error": {"zh": "，系统内部错误", "en": ", internal error"},
    "removed_early": {
        "zh": "，记录仪在采集完成前被拔出，请重新插入",
        "en": ", the recorder was pulled out before collection finished, plug it back in",
    },
}

#: one sentence per alarm code (station.health.alarms); unknown codes get "_other"
ALARMS: dict[str, dict[Language, str]] = {
    "storage_full": {
        "zh": "存储空间已满，无法继续采集",
        "en": "Storage is full, collection cannot continue",
    },
    "storage_low": {
        "zh": "存储空间不足，请及时处理",
        "en": "Storage is running low",
    },
    "disk_unhealthy": {
        "zh": "存储硬盘故障，已停止使用",
        "en": "A storage disk has failed and was taken out of use",
    },
    "forward_failing": {
        "zh": "上传到中心存储失败，请检查网络",
        "en": "Uploading to central storage is failing, please check the network",
    },
    "disk_degraded": {
        "zh": "存储硬盘状态异常，请尽快检查",
        "en": "A storage disk is wearing out, please check it soon",
    },
    "disk_missing": {
        "zh": "找不到存储硬盘，请检查硬盘",
        "en": "A storage disk is missing, please check the disks",
    },
    "network_down": {
        "zh": "网络连接中断",
        "en": "The network connection is down",
    },
    "clock_unsynced": {
        "zh": "系统时钟未同步",
        "en": "The station clock is not synchronised",
    },
    "clock_jump": {
        "zh": "系统时间异常，已暂停按期删除，请管理员检查时钟",
        "en": "The station clock jumped: retention is paused, an administrator must check it",
    },
    "integrity": {
        "zh": "站点软件或配置被改动，请联系管理员",
        "en": "The station software or settings were changed, please call the administrator",
    },
    "collection_failed": {
        "zh": "采集失败，文件保留在记录仪上",
        "en": "Collection failed, files were kept on the recorder",
    },
    "recorder_clock_drift": {
        "zh": "执法记录仪时钟偏差过大",
        "en": "A recorder's clock is wrong",
    },
    "battery_critical": {
        "zh": "执法记录仪电量严重不足",
        "en": "A recorder's battery is critically low",
    },
    "verify_failed": {
        "zh": "文件校验失败",
        "en": "A file failed verification",
    },
    "store_corrupt": {
        "zh": "发现损坏的存储文件",
        "en": "A stored file is damaged",
    },
    "store_copy_restored": {
        "zh": "存储文件的一份副本已丢失，已从另一份恢复",
        "en": "A copy of a stored file was lost and restored from the other",
    },
    "store_inconsistent": {
        "zh": "存储数据与目录不一致",
        "en": "The store does not match the catalogue",
    },
    "_other": {"zh": "请查看屏幕", "en": "Please check the screen"},
}

#: default severity of the non-alarm kinds (only "critical" passes quiet hours)
KIND_SEVERITY: dict[str, Severity] = {
    "collection_started": "info",
    "collection_complete": "info",
    "collection_failed": "warning",
    "collection_paused": "warning",
    "collection_resumed": "info",
    "unregistered": "warning",
    "recorder_held": "warning",
}

# words espeak-ng 1.51 reads with the wrong tone (it maps characters one by one):
# written as pinyin, which the cmn-latn-pinyin voice reads as Mandarin
ZH_PRONUNCIATION: dict[str, str] = {
    "偏差": "pian1 cha1",  # 差 read cha4
    "校验": "jiao4 yan4",  # 校 read xiao4
    "部分": "bu4 fen4",  # 分 read fen1
    "处理": "chu3 li3",  # 处 read chu4
    "尽快": "jin3 kuai4",  # 尽 read jin4
}


def message(kind: str, language: Language, **params: object) -> str:
    """The text of announcement `kind` in `language`; ValueError for a bad kind or params."""
    if kind not in MESSAGES:
        raise ValueError(f"unknown announcement {kind!r}")
    values = {k: str(v) for k, v in params.items()}
    if kind == "collection_failed":
        reason = params.get("reason")
        values["reason"] = REASONS[str(reason)][language] if reason in REASONS else ""
    elif kind == "alarm":
        code = str(params.get("code", ""))
        values["text"] = ALARMS.get(code, ALARMS["_other"])[language]
    try:
        return MESSAGES[kind][language].format(**values)
    except KeyError as e:
        raise ValueError(f"announcement {kind!r} needs parameter {e}") from None


def severity_of(kind: str, **params: object) -> Severity:
    """The default severity of an announcement."""
    if kind == "alarm":
        from station.health.alarms import SEVERITY  # here: the alarm book may one day import us

        sev = SEVERITY.get(str(params.get("code", "")), "warning")
        return cast(Severity, sev) if sev in ("info", "warning", "critical") else "warning"
    return KIND_SEVERITY.get(kind, "info")


_ZH_DIGITS = "零一二三四五六七八九"


def _zh_below_10000(n: int) -> str:
    out, gap = "", False
    for power, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d = n // power % 10
        if d == 0:
            gap = bool(out)
            continue
        if gap:
            out += "零"
            gap = False
        out += _ZH_DIGITS[d] + unit
    return out


def zh_numeral(n: int) -> str:
    """A number in Chinese numerals as it is spoken: 3 → 三, 12 → 十二, 105 → 一百零五."""
    if n < 0:
        return "负" + zh_numeral(-n)
    if n == 0:
        return "零"
    if n >= 100_000_000:
        return "".join(_ZH_DIGITS[int(d)] for d in str(n))
    high, low = divmod(n, 10_000)
    if high:
        out = _zh_below_10000(high) + "万"
        if low:
            out += ("零" if low < 1000 else "") + _zh_below_10000(low)
    else:
        out = _zh_below_10000(low)
    return out[1:] if out.startswith("一十") else out  # 十二, not 一十二


def _zh_number_run(m: re.Match[str]) -> str:
    digits = m[0]
    if (len(digits) > 1 and digits.startswith("0")) or len(digits) > 8:
        return "".join(_ZH_DIGITS[int(d)] for d in digits)  # a code, read digit by digit
    return zh_numeral(int(digits))


def spoken_text(text: str, language: Language) -> str:
    """The text handed to the synthesiser.

    For Mandarin, numbers become Chinese numerals (espeak-ng reads "10号" with a
    pause, "十号" without) and polyphones that espeak-ng gets wrong become pinyin.
    """
    if language == "zh":
        text = re.sub(r"\d+", _zh_number_run, text)
        for word, pinyin in ZH_PRONUNCIATION.items():
            text = text.replace(word, f" {pinyin} ")
    text = " ".join(text.split())
    return text.lstrip("-")  # never let the text look like an option


# --- slot changes -------------------------------------------------------------------------


def announcement_for_slot_change(
    old_state: str,
    new_state: str,
    port: int,
    reason: str | None = None,
    held: bool = False,
) -> tuple[str, dict[str, object]] | None:
    """The announcement (kind, params) for a port's Slot going from `old_state` to `new_state`.

    The states are those of station.ingest.collector.Slot. `error` is the slot's error
    after the change, if known: it picks the reason spoken with a failure and
    tells a held recorder (error set) from one waiting for registration (None).
    Transitions can be observed with gaps (identifying→complete), so the
    announcement depends mostly on the new state; when the slot's `generation`
    changed (a new docking), pass old_state="empty". None: say nothing.
    """
    if old_state == new_state:
        return None
    if new_state == "collecting":
        if old_state == "error":
            return "collection_resumed", {"port": port}  # e.g. space came back
        return "collection_started", {"port": port}  # from complete: a missed re-docking
    if new_state == "complete":
        return "collection_complete", {"port": port}
    if new_state == "error":
        if reason == "storage_full" and old_state == "collecting":
            return "collection_paused", {"port": port}
        params: dict[str, object] = {"port": port}
        if reason in REASONS:
            params["reason"] = str(reason)
        return "collection_failed", params
    if new_state == "unregistered":
        return ("recorder_held" if held else "unregistered"), {"port": port}
    return None  # empty, identifying


# --- synthesis ----------------------------------------------------------------------------


class SynthesisError(Exception):
    """espeak-ng is missing or failed."""


def amplitude(volume: int) -> int:
    """espeak-ng's -a amplitude for a volume of 0-100 (100 = espeak-ng's default, unclipped)."""
    return max(0, min(100, int(volume)))


def render(
    text: str,
    language: Language,
    path: Path,
    *,
    volume: int = 80,
    rate: int = 160,
    voice: str | None = None,
) -> Path:
    """Synthesise `text` into the WAV file `path` with espeak-ng; returns `path`.

    The text is passed as one argument (UTF-8), never through a shell. Raises
    SynthesisError when espeak-ng is missing, fails or writes no audio.
    """
    voice = voice or DEFAULT_VOICES[language]
    spoken = spoken_text(text, language)
    if not spoken:
        raise SynthesisError("nothing to say")
    exe = shutil.which(ESPEAK)
    if exe is None:
        raise SynthesisError(f"{ESPEAK} is not installed (Debian package espeak-ng)")
    if not voice_exists(voice):
        raise SynthesisError(f"{ESPEAK} has no voice {voice!r} (see espeak-ng --voices)")
    path = Path(path)
    cmd = [exe, "-v", voice, "-s", str(rate), "-a", str(amplitude(volume))]
    cmd += ["-b", "1", "-w", str(path), spoken]
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=SYNTH_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SynthesisError(f"{ESPEAK}: {e}") from e
    err = r.stderr.decode("utf-8", "replace").strip()
    if r.returncode != 0:
        raise SynthesisError(f"{ESPEAK} exited {r.returncode}: {err[:300]}")
    try:
        frames = wav_duration(path)
    except (OSError, wave.Error, EOFError) as e:
        raise SynthesisError(f"{ESPEAK} wrote no usable WAV: {e}") from e
    if frames <= 0:
        raise SynthesisError(f"{ESPEAK} wrote an empty WAV ({err[:300]})")
    return path


@functools.lru_cache(maxsize=4)
def _voices(exe: str) -> frozenset[str]:
    r = subprocess.run([exe, "--voices"], capture_output=True, timeout=SYNTH_TIMEOUT_S, check=True)
    names: set[str] = set()
    for line in r.stdout.decode("utf-8", "replace").splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5:
            names.update(c.lower() for c in (cols[1], cols[3], cols[4], cols[4].rsplit("/")[-1]))
            names.update(m.lower() for m in re.findall(r"\(([^ )]+) \d+\)", line))
    return frozenset(names)


def voice_exists(voice: str) -> bool:
    """Whether espeak-ng knows `voice` (it silently uses another voice for unknown names)."""
    exe = shutil.which(ESPEAK)
    if exe is None:
        return False
    try:
        names = _voices(exe)
    except (OSError, subprocess.SubprocessError):
        return False
    return voice.split("+")[0].lower() in names


def wav_duration(path: Path) -> float:
    """The length of a WAV file in seconds."""
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / float(w.getframerate())


def find_player(configured: list[str] | None = None) -> list[str] | None:
    """The command that plays a WAV file: `configured`, or the first default found."""
    if configured:
        return list(configured)
    for cmd in DEFAULT_PLAYERS:
        if shutil.which(cmd[0]):
            return list(cmd)
    return None


# --- the announcer ------------------------------------------------------------------------


@dataclass
class Announcement:
    """One thing to say."""

    kind: str
    params: dict[str, object]
    text: str
    language: Language
    severity: Severity
    queued_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Spoken:
    """What happened to one announcement the worker took (kept in Announcer.history)."""

    text: str
    started: float  # time.time()
    ended: float
    ok: bool
    error: str | None = None


def _local_now() -> dt.datetime:
    return dt.datetime.now()


class Announcer:
    """Speaks announcements one at a time from a bounded queue in a worker thread.

    `clock` gives the local wall time used for quiet hours (pass the station's
    time-zone-aware `now`). `play`, when given, replaces the player command
    (it gets the WAV path and may raise). `max_wait_s`: an announcement that
    waited longer than this is dropped as stale.
    """

    def __init__(
        self,
        config: VoiceConfig,
        *,
        clock: Callable[[], dt.datetime] = _local_now,
        play: Callable[[Path], None] | None = None,
        max_pending: int = 8,
        max_wait_s: float = 60.0,
        history: int = 50,
    ) -> None:
        self.config = config
        self.clock = clock
        self.max_pending = max_pending
        self.max_wait_s = max_wait_s
        self.history: deque[Spoken] = deque(maxlen=history)
        self.dropped = 0
        self._play_fn = play
        self._player: list[str] | None = None
        self._pending: deque[Announcement] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._cut = False  # stop() without drain: start no more sound
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None
        self._warned_no_player = False

    # --- the station's side ---------------------------------------------------------------

    def say(self, kind: str, /, *, severity: Severity | None = None, **params: object) -> bool:
        """Queue an announcement; False (and a log line) when it will not be spoken.

        `severity` defaults to the kind's (an alarm's from its code). Never raises.
        """
        cfg = self.config
        if not cfg.enabled or cfg.volume == 0:
            return False
        try:
            text = message(kind, cfg.language, **params)
        except ValueError as e:
            log.error("voice: %s", e)
            return False
        sev = severity or severity_of(kind, **params)
        if sev != "critical" and self._quiet():
            log.info("voice: quiet hours, not saying %r", text)
            return False
        with self._cond:
            if self._stopping:
                return False
            if any(a.text == text for a in self._pending):
                log.debug("voice: %r is already queued", text)
                return False
            if len(self._pending) >= self.max_pending:
                victim = None
                if sev == "critical":  # a critical alarm displaces the oldest lesser one
                    victim = next((a for a in self._pending if a.severity != "critical"), None)
                if victim is None:
                    self.dropped += 1
                    log.warning("voice: queue full, dropping %r", text)
                    return False
                self._pending.remove(victim)
                self.dropped += 1
                log.warning("voice: queue full, dropping %r for %r", victim.text, text)
            self._pending.append(Announcement(kind, dict(params), text, cfg.language, sev))
            self._cond.notify_all()
        return True

    def alarm_raised(self, code: str) -> None:
        """Speak an alarm as it is raised (`AlarmBook`'s hook)."""
        if code != "collection_failed":  # the port's own failure announcement says it
            self.say("alarm", code=code)

    def say_slot_change(
        self,
        old_state: str,
        new_state: str,
        port: int,
        reason: str | None = None,
        held: bool = False,
    ) -> bool:
        """Announce a Slot state change, if it is worth saying."""
        a = announcement_for_slot_change(old_state, new_state, port, reason, held)
        return a is not None and self.say(a[0], **a[1])

    def _quiet(self) -> bool:
        try:
            return in_quiet_hours(self.config.quiet_hours, self.clock().time())
        except Exception:
            log.exception("voice: cannot tell the time for quiet hours")
            return False

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = self._cut = False
            self._tmpdir = Path(tempfile.mkdtemp(prefix="station-voice-"))
            if self._play_fn is None:
                self._player = find_player(self.config.player)
                if self._player is None:
                    log.warning("voice: no audio player (aplay, paplay, play) found: silent")
            self._thread = threading.Thread(target=self._run, name="voice", daemon=True)
            self._thread.start()

    def stop(self, *, drain: bool = False, timeout: float = 30.0) -> None:
        """Stop the worker: say what is queued first (`drain`) or drop it and cut the sound."""
        with self._cond:
            thread = self._thread
            if not drain:
                self._cut = True
                if self._pending:
                    log.info("voice: stopping, %d announcement(s) dropped", len(self._pending))
                self._pending.clear()
                if self._proc is not None:
                    with contextlib.suppress(OSError):
                        os.killpg(self._proc.pid, signal.SIGTERM)
            self._stopping = True
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("voice: worker did not stop within %.0f s", timeout)
        with self._cond:
            self._thread = None
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is queued or playing; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def pending(self) -> list[str]:
        """The texts waiting to be spoken."""
        with self._cond:
            return [a.text for a in self._pending]

    # --- the worker -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return  # stopping and drained
                item = self._pending.popleft()
                self._busy = True
            try:
                self._speak(item)
            except Exception:  # never let the worker die
                log.exception("voice: announcement %r failed", item.text)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _speak(self, item: Announcement) -> None:
        waited = time.monotonic() - item.queued_at
        if waited > self.max_wait_s:
            log.warning("voice: %r waited %.0f s, dropped as stale", item.text, waited)
            return
        if self._play_fn is None and self._player is None:
            if not self._warned_no_player:
                log.warning("voice: no audio player, not saying %r", item.text)
                self._warned_no_player = True
            return
        assert self._tmpdir is not None
        wav = self._tmpdir / "announcement.wav"
        started = time.time()
        error: str | None = None
        try:
            render(
                item.text,
                item.language,
                wav,
                volume=self.config.volume,
                rate=self.config.rate_wpm,
                voice=self.config.voice_for(item.language),
            )
            log.info("voice: %s", item.text)
            started = time.time()
            if self._play_fn is not None:
                self._play_fn(wav)
            else:
                self._play(wav)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            log.warning("voice: could not say %r: %s", item.text, error)
        finally:
            wav.unlink(missing_ok=True)
        self.history.append(Spoken(item.text, started, time.time(), error is None, error))

    def _play(self, wav: Path) -> None:
        assert self._player is not None
        timeout = wav_duration(wav) + PLAYER_GRACE_S
        with self._cond:
            if self._cut:
                raise RuntimeError("stopping: not played")
            proc = subprocess.Popen(
                [*self._player, str(wav)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group: killed with its children
            )
            self._proc = proc
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            msg = f"{self._player[0]} still playing after {timeout:.0f} s: killed"
            raise RuntimeError(msg) from None
        finally:
            with self._cond:
                self._proc = None
        if proc.returncode != 0:
            msg = err.decode("utf-8", "replace").strip()[:300]
            raise RuntimeError(f"{self._player[0]} exited {proc.returncode}: {msg}")


def main(argv: list[str] | None = None) -> int:
    """Speak one announcement here, e.g. `python -m station.voice collection_complete port=3`."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m station.voice", description=main.__doc__)
    ap.add_argument("kind", choices=sorted(MESSAGES))
    ap.add_argument("params", nargs="*", help="name=value, e.g. port=3 or code=storage_full")
    ap.add_argument("--language", choices=["zh", "en"], default="zh")
    ap.add_argument("--volume", type=int, default=80)
    ap.add_argument("--wav", type=Path, help="write the WAV here instead of playing it")
    args = ap.parse_args(argv)
    if any("=" not in p for p in args.params):
        ap.error("parameters are name=value")
    params = dict(p.split("=", 1) for p in args.params)
    cfg = VoiceConfig(language=args.language, volume=args.volume)
    text = message(args.kind, cfg.language, **params)
    print(text)
    if args.wav:
        render(text, cfg.language, args.wav, volume=cfg.volume, voice=cfg.voice_for(cfg.language))
        print(f"{args.wav}: {wav_duration(args.wav):.2f} s")
        return 0
    ann = Announcer(cfg)
    ann.start()
    ann.say(args.kind, **params)
    ann.wait_idle(60)
    ann.stop()
    spoken = list(ann.history)
    return 0 if spoken and spoken[-1].ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
