"""Logging that a storm of one error cannot flood: repeats are held back and counted.

A failure that repeats (a disk that errors on every check, a flood of bad connections,
EMFILE on every accept) would otherwise write tens of MB of identical tracebacks to
the journal. Each message (logger, level, text as formatted) may log `burst` times per
`window_s`; after that its records are dropped and counted, and the first record of the
next window says how many were held back. Messages that differ (one per job, one per
port) all pass: only true repeats are held back.
"""

from __future__ import annotations

import logging
import threading
import time


class RepeatFilter(logging.Filter):
    def __init__(self, burst: int = 5, window_s: float = 60.0) -> None:
        super().__init__()
        self.burst, self.window_s = burst, window_s
        self._seen: dict[tuple[str, int, str], list[float | int]] = {}  # [start, n, held]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or now - seen[0] >= self.window_s:
                held = int(seen[2]) if seen else 0
                self._seen[key] = [now, 1, 0]
                if len(self._seen) > 1000:  # forget the oldest templates
                    oldest = min(self._seen, key=lambda k: self._seen[k][0])
                    del self._seen[oldest]
                if held:
                    record.msg, record.args = f"{key[2]} [{held} more like this held back]", ()
                return True
            seen[1] = int(seen[1]) + 1
            if seen[1] <= self.burst:
                return True
            seen[2] = int(seen[2]) + 1
            return False
