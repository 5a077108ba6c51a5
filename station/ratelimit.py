"""Bandwidth limits: a token bucket, and the gate that gives one port priority (S30).

"Collect first" on one port: while that recorder is collected, every other port's
copying shares one small budget (`recorders.priority_others_mb_s`), so the store's
disk, the CPU and a shared USB hub go to the chosen recorder first. The others keep
moving (slower), and nothing changes for what is verified or cleared.
"""

from __future__ import annotations

import threading
import time

MB = 1_000_000


class TokenBucket:
    """At most `rate` bytes per second on average, with bursts of at most `burst` bytes."""

    def __init__(self, rate: float | None, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(256.0 * 1024, (rate or 0) / 4)
        self.tokens = self.burst
        self.t = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int, stop: threading.Event) -> bool:
        """Wait until `n` bytes may pass; False if `stop` was set meanwhile."""
        if self.rate is None:
            return True
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
            self.t = now
            self.tokens -= n  # may go negative: the debt is waited out here
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        return not (wait > 0 and stop.wait(wait))


class PriorityGate:
    """Which port collects first, and the shared budget of the others meanwhile."""

    def __init__(self, others_mb_s: float) -> None:
        self._lock = threading.Lock()
        self.port: int | None = None
        self.set_budget(others_mb_s)

    def set_budget(self, others_mb_s: float) -> None:
        self._others = TokenBucket(others_mb_s * MB)

    def set(self, port: int | None) -> int | None:
        """Give `port` priority (None: nobody); returns the port that had it."""
        with self._lock:
            before, self.port = self.port, port
        return before

    def release(self, port: int) -> bool:
        """`port` is done (collected, unplugged): the others go back to full speed."""
        with self._lock:
            if self.port != port:
                return False
            self.port = None
        return True

    def take(self, port: int, n: int, stop: threading.Event) -> bool:
        """Let `port` copy `n` bytes: at once for the priority port or when there is
        none, else from the others' shared budget. False if `stop` was set meanwhile."""
        first = self.port
        if first is None or first == port:
            return True
        return self._others.take(n, stop)
