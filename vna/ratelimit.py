"""Failed authentications per client address, in a sliding window.

A bearer token has 256 bits: guessing one is hopeless, but a flood of bad tokens still costs
a hash, an index lookup and an audit record each. After `limit` failures from one address
within `window` seconds, that address is refused (HTTP 429) until its oldest failure in the
window has aged out. Kept per process, in memory: each `vna api` process counts for itself
(docs/security.md), which bounds an attacker at `limit` x processes per window.
"""

from __future__ import annotations

import threading
from collections import deque


class FailureWindow:
    """Failures by key (a client address) in the last `window` seconds; the caller passes
    the (monotonic) time, so the rule is testable without waiting."""

    def __init__(self, limit: int, window: float, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys  # a flood from many addresses cannot grow it without end
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until `key` may try again; 0 if it may now."""
        with self._lock:
            times = self._failures.get(key)
            if times is None:
                return 0.0
            self._expire(key, times, now)
            if len(times) < self.limit:
                return 0.0
            return max(times[0] + self.window - now, 0.0)

    def failed(self, key: str, now: float) -> None:
        with self._lock:
            times = self._failures.get(key)
            if times is None:
                if len(self._failures) >= self.max_keys:
                    self._sweep(now)
                times = self._failures[key] = deque(maxlen=self.limit)
            self._expire(key, times, now)
            times.append(now)
            self._failures[key] = times

    def _expire(self, key: str, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            self._failures.pop(key, None)

    def _sweep(self, now: float) -> None:
        for key in list(self._failures):
            self._expire(key, self._failures[key], now)
        if len(self._failures) >= self.max_keys:  # still full: forget the oldest half
            oldest = sorted(self._failures, key=lambda k: self._failures[k][-1])
            for key in oldest[: len(oldest) // 2]:
                del self._failures[key]
