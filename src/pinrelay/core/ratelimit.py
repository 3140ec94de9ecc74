"""Slowing down repeated authentication failures (DESIGN, "Bad input"; DECISIONS 31).

Each key (a source address; a source address and a PIN) may fail ``limit`` times
in a burst, then once every ``period / limit`` seconds: a leaky bucket, kept as one
number per key, the time at which the key's bucket is empty again (the "theoretical
arrival time" of GCRA).  A key that stops failing is forgotten once its bucket is
empty.

Memory is bounded by count and by bytes, whatever the keys: a key longer than
``MAX_KEY`` characters is kept as a 32-character digest, and past ``max_keys`` keys
or ``max_bytes`` the keys that failed least recently are forgotten first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

#: Keys longer than this are stored as a digest: a limiter key costs at most
#: MAX_KEY characters whatever a caller hands it.
MAX_KEY = 96
#: What one key costs besides its characters (the float, the ordered dict's
#: entry, the str header), rounded up from tracemalloc: 189 bytes a key of 30 characters.
ENTRY_OVERHEAD = 192


def _bounded(key: str) -> str:
    if len(key) <= MAX_KEY:
        return key
    return "#" + hashlib.blake2b(key.encode(errors="replace"), digest_size=16).hexdigest()


class FailureLimiter:
    __slots__ = ("_bytes", "_empty_at", "limit", "max_bytes", "max_keys", "period")

    def __init__(
        self,
        limit: int = 10,
        period: float = 60.0,
        max_keys: int = 50_000,
        max_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.limit = limit
        self.period = period
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        #: key -> when its bucket is empty again; least recently failed first.
        self._empty_at: OrderedDict[str, float] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._empty_at)

    @property
    def bytes(self) -> int:
        """What the keys cost, as counted against ``max_bytes``."""
        return self._bytes

    def retry_after(
        self, key: str, now: float, limit: int | None = None, cost: float = 1.0
    ) -> float:
        """Seconds until ``key`` may try again (0: it may now).

        ``limit``: this key's allowance, if not the limiter's; pass the same one to
        :meth:`failed` for the same key.  ``cost``: what this try counts for, in
        tries (the chat's byte budget counts bytes).  A try larger than the whole
        allowance may go once the bucket is empty; :meth:`failed` then counts all of
        it, and the key waits until it has paid it off.
        """
        empty_at = self._empty_at.get(_bounded(key))
        if empty_at is None:
            return 0.0
        allowance = limit or self.limit
        step = self.period / allowance
        # Full after ``limit`` failures: the bucket then empties ``period`` from now.
        wait = max(empty_at, now) + min(cost, allowance) * step - now - self.period
        return wait if wait > 1e-6 else 0.0  # not a rounding error's worth

    def failed(self, key: str, now: float, limit: int | None = None, cost: float = 1.0) -> None:
        key = _bounded(key)
        allowance = limit or self.limit
        step = self.period / allowance
        empty_at = self._empty_at.pop(key, None)
        if empty_at is None:
            self._bytes += len(key) + ENTRY_OVERHEAD
            empty_at = now
        self._empty_at[key] = max(empty_at, now) + cost * step
        self._forget(now)

    def refund(self, key: str, cost: float = 1.0, limit: int | None = None) -> None:
        """Take back what :meth:`failed` counted for a try that did not happen (a
        budget counted before an await, so that concurrent tries see each other)."""
        key = _bounded(key)
        empty_at = self._empty_at.get(key)
        if empty_at is not None:
            self._empty_at[key] = empty_at - cost * self.period / (limit or self.limit)

    def succeeded(self, key: str) -> None:
        key = _bounded(key)
        if self._empty_at.pop(key, None) is not None:
            self._bytes -= len(key) + ENTRY_OVERHEAD

    def _forget(self, now: float) -> None:
        """Drop keys whose bucket is empty (two at most: amortized), then the least
        recently failed ones while over a bound."""
        items = self._empty_at
        for _ in range(2):
            first = next(iter(items.items()), None)
            if first is None or first[1] > now:
                break
            self._drop_first()
        while len(items) > self.max_keys or self._bytes > self.max_bytes:
            self._drop_first()

    def _drop_first(self) -> None:
        key, _ = self._empty_at.popitem(last=False)
        self._bytes -= len(key) + ENTRY_OVERHEAD


def take(empty_at: int | None, now: int, limit: int, period: int) -> tuple[int, int | None]:
    """One try against a budget kept as one number (a store's record; the same leaky
    bucket as :class:`FailureLimiter`, in integer milliseconds): ``limit`` tries in a
    burst, then one every ``period / limit``.

    Returns (wait, new ``empty_at``): wait 0 and the number to store if the try fits;
    else the time until it would, and None (nothing to store: a refusal counts not).
    """
    start = now if empty_at is None else max(empty_at, now)
    step = -(-period // limit)  # rounded up: never more than ``limit`` a period
    wait = start + step - now - period
    if wait > 0:
        return wait, None
    return 0, start + step
