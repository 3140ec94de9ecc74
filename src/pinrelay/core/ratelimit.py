"""Slowing down repeated authentication failures (DESIGN, "Bad input").

A key (a source address, a PIN) that fails ``limit`` times within ``period``
seconds is refused until the oldest of those failures ages out.  One device
guessing tokens is slowed down; the rest of the relay is not.
"""

from __future__ import annotations

from collections import OrderedDict, deque


class FailureLimiter:
    __slots__ = ("_failures", "limit", "max_keys", "period")

    def __init__(self, limit: int = 10, period: float = 60.0, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.period = period
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again (0: it may now)."""
        times = self._failures.get(key)
        if times is None:
            return 0.0
        while times and times[0] <= now - self.period:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0.0
        if len(times) < self.limit:
            return 0.0
        return times[0] + self.period - now

    def failed(self, key: str, now: float) -> None:
        times = self._failures.get(key)
        if times is None:
            times = self._failures[key] = deque(maxlen=self.limit)
            if len(self._failures) > self.max_keys:  # bound memory: forget the oldest key
                self._failures.popitem(last=False)
        times.append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
