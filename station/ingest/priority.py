"""Bandwidth limits: a token bucket, the gate that gives one port priority (S30), and
the scheduler of the ports that share a USB link (`LinkScheduler`).

"Collect first" on one port: while that recorder is collected, every other port's
copying shares one small budget (`recorders.priority_others_mb_s`), so the store's
disk, the CPU and a shared USB hub go to the chosen recorder first. The others keep
moving (slower), and nothing changes for what is verified or cleared.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from station.devices.bus import Link

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


RATE_WINDOW_S = 1.0  # over how long a port's read rate is measured
ACTIVE_S = 1.0  # a port that has not read for this long is not collecting on its link
HEADROOM = 0.97  # the share of a link's rate that the ports ahead may fill before the next
GAP_S = 0.25  # the first port not reading for this long is between files: fill its share


@dataclass
class _PortState:
    left: int = 0  # bytes still to collect
    important: bool = False  # an IMP file being collected (they come first on a card)
    last: float = 0.0  # last time it read (or asked to)
    samples: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    solo: float = 0.0  # the best rate it reached reading first on its link, bytes/s

    def rate(self, now: float) -> float:
        while self.samples and now - self.samples[0][0] >= RATE_WINDOW_S:
            self.samples.popleft()
        return sum(n for _, n in self.samples) / RATE_WINDOW_S


class LinkScheduler:
    """Collection per shared USB link, so that officers get their recorders back soonest.

    Ports behind one hub share its link (`Bus.links`). Read all at once they share it
    equally and every recorder on it finishes late. Instead the collecting ports of a
    link are ranked: the collect-first port (S30) on top, then the ports still copying
    IMP files, then the least left to collect. The first reads freely; each next one
    only fills what the ones ahead leave of the link's rate (so the link stays full and
    nobody ahead slows down), and waits when they fill it. Nothing else changes: what
    is read, verified and cleared is the same, only when.

    Only the ports' own reads are paced (the `throttle` of the copy); the second look
    and duplicate proofs read without asking. A port on no shared link never waits.
    """

    def __init__(self, links: list[Link], *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.links = [x for x in links if len(x.ports) > 1]
        self._link_of: dict[int, Link] = {p: x for x in self.links for p in x.ports}
        self._ports: dict[int, _PortState] = {}
        self._first: dict[str, tuple[int, float]] = {}  # link -> (port first, since when)
        self._lock = threading.Lock()
        self.priority: Callable[[], int | None] = lambda: None

    def link_of(self, port: int) -> Link | None:
        return self._link_of.get(port)

    def _order(self, link: Link, now: float) -> list[int]:
        first = self.priority()
        active = [p for p in link.ports if (st := self._ports.get(p)) and now - st.last < ACTIVE_S]
        return sorted(
            active,
            key=lambda p: (p != first, not self._ports[p].important, self._ports[p].left, p),
        )

    def take(
        self,
        port: int,
        n: int,
        stop: threading.Event,
        *,
        left: int,
        important: bool,
        waiting: Callable[[], None] = lambda: None,
    ) -> bool:
        """`port` read `n` bytes and has `left` more to collect: wait until it may read on
        (calling `waiting` meanwhile: the port is alive). False if `stop` was set."""
        if port not in self._link_of:
            return True
        while not self.may_read(port, n, left=left, important=important):
            n = 0
            waiting()
            if stop.wait(0.02):
                return False
        return True

    def may_read(
        self, port: int, n: int, *, left: int, important: bool, now: float | None = None
    ) -> bool:
        """Account `n` bytes read by `port` (`left` more to go) and say whether it may read
        its next chunk now: the first of its link's order always, the others while the
        ones ahead of them leave room on the link."""
        link = self._link_of.get(port)
        if link is None:
            return True
        with self._lock:
            now = time.monotonic() if now is None else now
            st = self._ports.setdefault(port, _PortState())
            if n:
                st.samples.append((now, n))
            st.left, st.important, st.last = left, important, now
            if not self.enabled or link.mb_s is None:
                return True
            order = self._order(link, now)
            first, since = self._first.get(link.name, (0, now))
            if first != order[0]:
                first, since = self._first[link.name] = (order[0], now)
            rank = order.index(port)
            if rank == 0:
                if now - since >= RATE_WINDOW_S:  # a whole window of reading first
                    st.solo = max(st.solo, st.rate(now))
                return True
            # The first port's demand is what it reached reading first (until that is
            # known, the whole link: the others wait a second); the ports between take
            # what they measure. This port may fill what is left.
            cap = link.mb_s * MB
            lead = self._ports[first]
            # between two files (or in its last one's finishing step) it leaves its share
            reading = now - lead.last < GAP_S
            ahead = min(cap, lead.solo or cap) if reading else lead.rate(now)
            ahead += sum(self._ports[p].rate(now) for p in order[1:rank])
            budget = cap * HEADROOM - ahead
            return budget > 0 and st.rate(now) < budget

    def done(self, port: int) -> None:
        """`port` stopped collecting (complete, unplugged, failed)."""
        with self._lock:
            self._ports.pop(port, None)

    def expected_s(
        self, port: int, left: int, own_rate: float, now: float | None = None
    ) -> float | None:
        """Seconds until `port` (with `left` bytes to go, reading at `own_rate` now) is
        collected, from the measured rate of its link: on a shared link the ports ranked
        ahead go first at the link's rate; elsewhere its own rate. None: no rate yet."""
        link = self._link_of.get(port)
        with self._lock:
            now = time.monotonic() if now is None else now
            if link is None or port not in self._ports or not self.enabled:
                return left / own_rate if own_rate > 0 else None
            order = self._order(link, now)
            if port not in order:
                order.append(port)
            rate = sum(self._ports[p].rate(now) for p in link.ports if p in self._ports)
            if rate <= 0:
                return None
            rank = order.index(port)
            return sum(self._ports[p].left for p in order[:rank]) / rate + left / rate
