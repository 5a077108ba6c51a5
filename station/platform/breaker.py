"""Backoff and a circuit breaker for the platform link. Pure: the caller passes the time.

Closed: requests go out; each failure waits `base * 2**(n-1)` (capped, with jitter)
before the next try. After `open_after` failures in a row the breaker opens: nothing is
sent for `open_s`, then one probe (half-open) decides: a success closes it, a failure
opens it again. A week-long outage therefore costs one probe a minute, not a storm.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Breaker:
    base_s: float = 1.0
    max_s: float = 300.0
    open_after: int = 5
    open_s: float = 60.0
    failures: int = 0
    retry_at: float = 0.0  # monotonic time before which nothing is sent
    jitter: float = 0.2  # +- this fraction of each wait (stations out of step)

    @property
    def state(self) -> str:
        if self.failures >= self.open_after:
            return "open"
        return "closed" if self.failures == 0 else "backing_off"

    def ready(self, now: float) -> bool:
        """Whether a request may go out now (when open: the half-open probe, once due)."""
        return now >= self.retry_at

    def wait_s(self, now: float) -> float:
        return max(0.0, self.retry_at - now)

    def success(self) -> None:
        self.failures = 0
        self.retry_at = 0.0

    def failure(self, now: float) -> float:
        """Count a failure; return how long to wait before the next try."""
        self.failures += 1
        if self.failures >= self.open_after:
            wait = max(self.open_s, min(self.max_s, self.base_s * 2 ** (self.open_after - 1)))
        else:
            wait = min(self.max_s, self.base_s * 2 ** (self.failures - 1))
        wait *= 1 + random.uniform(-self.jitter, self.jitter)
        self.retry_at = now + wait
        return wait
